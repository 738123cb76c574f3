"""SAN (Xu et al., CVPR 2023): Side Adapter Network for open-vocabulary semantic segmentation.

Notes: docs/methods/san.md; official code MendelXu/SAN at e19262d. Pipeline at the published
scale (ViT-B/16, 640^2 crop, Q = 100, T classes, batch B):

1. Pixels: CLIP mean/std on 0..255, zero-padded to a multiple of 32 -> (B, 3, 640, 640).
2. CLIP input: the padded image resized by 0.5 (bilinear) -> (B, 3, 320, 320)
   (docs/methods/san.md#clip-input-at-half-resolution); pos-embed resized 14^2 -> 20^2 inside
   the forward (docs/methods/san.md#positional-embedding-resized-in-forward); blocks 1-9;
   outputs 0 (after ln_pre), 3, 6, 9 as (B, 768, 20, 20) maps.
3. Side adapter (`SideAdapter`) on the full padded image: 1600 patch tokens + 100 queries,
   CLIP outputs fused in before side block 1 and after blocks 1-3; side blocks 7 and 8 decoded
   into masks (B, 100, 40, 40) and biases (B, 12, 100, 40, 40); evaluation decodes block 8 only.
4. Recognition (`recognize`): CLIP blocks 10-12 rerun on [100 SOS; CLS; 400 patches] under
   the max-pooled bias -> ln_post -> proj -> L2 -> (B, 100, 512).
5. Classifier: cosine with [T ViLD-ensembled text embeddings; learned `bg_embed`], all rows
   L2-normalised, times CLIP's `logit_scale.exp()` -> (B, 100, T + 1).

Trainable: the side adapter (queries, fusion, decoder included), `bg_embed` and CLIP's
visual positional embedding. Everything else of CLIP is frozen; the text side is encoded
without gradients and cached per vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.clip import pad_to_multiple
from ovbench_methods.common.mask_semantic import criterion_outputs, pad_instance_targets
from ovbench_methods.common.recognition_clip import RecognitionClipModel
from ovbench_methods.common.clip_cost_model import create_clip_and_tokenizer, resolve_template_list
from ovbench_methods.common.open_vocab_classifier import cosine_class_logits
from ovbench_methods.common.set_criterion import SetCriterion
from ovbench_methods.common.text import ClassNames, Tokenizer
from ovbench_methods.san.config import SanConfig, SanConfigError
from ovbench_methods.san.recognition import recognize
from ovbench_methods.san.side_adapter import SideAdapter

__all__ = ["SanModel", "SanOutputs", "SanPrediction", "build_san_model"]


@dataclass
class SanOutputs:
    """Everything one forward decodes, one entry per decoded side block (deep supervision
    first, the prediction last): class logits (B, Q, T+1), mask logits (B, Q, h, w) on the
    side grid, the raw biases [(B, heads, Q, h, w)] of each block; `padded_size` is the
    (Hp, Wp) canvas the masks cover, `image_size` the input's (H, W)."""

    class_logits: list[Tensor]
    mask_logits: list[Tensor]
    attn_biases: list[list[Tensor]]
    padded_size: tuple[int, int]
    image_size: tuple[int, int]
    clip_grid: tuple[int, int] = (0, 0)
    side_grid: tuple[int, int] = (0, 0)


@dataclass
class SanPrediction:
    """The final prediction (what `MaskClassificationSegmenter` reads)."""

    class_logits: Tensor
    mask_logits: Tensor
    padded_size: tuple[int, int]
    extras: dict[str, Any] = field(default_factory=dict)


class SanModel(RecognitionClipModel):
    """SAN; see the module docstring. Inputs are RGB floats on 0..255 of any size."""

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer, templates: Sequence[str], config: SanConfig) -> None:
        super().__init__()
        self.config = config
        self.init_clip(clip, tokenizer, templates, config.feature_last_layer)
        num_blocks = self.image_encoder.num_blocks
        if not 1 <= config.feature_last_layer < num_blocks:
            raise SanConfigError(
                f"feature_last_layer must leave at least one of CLIP's {num_blocks} blocks for recognition, "
                f"got {config.feature_last_layer}"
            )
        clip_heads = int(self.image_encoder.blocks[config.feature_last_layer].attn.num_heads)
        if config.attn_bias_heads not in (1, clip_heads):
            raise SanConfigError(f"attn_bias_heads must be 1 or CLIP's head count {clip_heads}, got {config.attn_bias_heads}")
        rec_blocks = num_blocks - config.feature_last_layer
        if config.attn_bias_layers not in (1, rec_blocks):
            raise SanConfigError(
                f"attn_bias_layers must be 1 or the number of recognition blocks {rec_blocks}, got {config.attn_bias_layers}"
            )
        self.side_adapter = SideAdapter(
            clip_width=self.image_encoder.width,
            width=config.side_width,
            depth=config.side_depth,
            heads=config.side_heads,
            patch_size=config.side_patch_size,
            mlp_ratio=config.side_mlp_ratio,
            image_size=config.side_image_size,
            drop_path=config.side_drop_path,
            num_queries=config.num_queries,
            fusion_map=config.fusion_map,
            deep_supervision_idxs=config.deep_supervision_idxs,
            decoder_embed_channels=config.decoder_embed_channels,
            decoder_mlp_channels=config.decoder_mlp_channels,
            decoder_mlp_layers=config.decoder_mlp_layers,
            attn_bias_heads=config.attn_bias_heads,
            attn_bias_layers=config.attn_bias_layers,
            rescale_attn_bias=config.rescale_attn_bias,
        )
        self.criterion = SetCriterion(config.criterion)
        # docs/methods/san.md#what-trains (official default: the visual positional embedding alone).
        self.freeze_clip(config.clip_frozen_exclude, config.clip_deeper_frozen_exclude)

    # ----------------------------------------------------------------- image
    def prepare_pixels(self, images: Tensor) -> Tensor:
        """0..255 RGB -> CLIP-normalised, zero-padded to `size_divisibility` (detectron2 ImageList)."""
        return pad_to_multiple(self.image_encoder.normalize(images), self.config.size_divisibility)

    def clip_input(self, pixels: Tensor) -> Tensor:
        """docs/methods/san.md#clip-input-at-half-resolution: the official call is
        F.interpolate(scale_factor=clip_resolution, mode="bilinear"), align_corners False and
        the factor itself used for the sampling grid."""
        if self.config.clip_resolution == 1.0:
            return pixels
        return F.interpolate(pixels, scale_factor=self.config.clip_resolution, mode="bilinear", align_corners=False)

    def forward_outputs(self, images: Tensor, classes: ClassNames) -> SanOutputs:
        if images.ndim != 4 or images.shape[1] != 3:
            raise SanConfigError(f"expected images of shape (N,3,H,W), got {tuple(images.shape)}")
        if len(classes) < 1:
            raise SanConfigError("SAN needs at least one class name")
        encoder = self.image_encoder
        pixels = self.prepare_pixels(images)
        tokens, grid = encoder.embed(self.clip_input(pixels))
        last = self.config.feature_last_layer
        needed = self.side_adapter.clip_outputs_needed
        # Official output k (1-based) is the sequence after block k, i.e. run_blocks index k - 1.
        tokens_last, collected = encoder.run_blocks(tokens, 0, last, collect={k - 1 for k in needed if k > 0})
        clip_maps = {
            k: encoder.tokens_to_map(tokens if k == 0 else collected[k - 1], grid) for k in needed
        }
        decoded = self.side_adapter(pixels, clip_maps)
        weights = self.classifier_weights(classes)
        scale = self.logit_scale.exp()
        class_logits, mask_logits, biases = [], [], []
        for masks, block_biases in decoded:
            embeddings = recognize(encoder, tokens_last, grid, block_biases, last, self.config.rec_downsample)
            class_logits.append(cosine_class_logits(embeddings, weights, scale))
            mask_logits.append(masks)
            biases.append(block_biases)
        return SanOutputs(
            class_logits=class_logits,
            mask_logits=mask_logits,
            attn_biases=biases,
            padded_size=(int(pixels.shape[-2]), int(pixels.shape[-1])),
            image_size=(int(images.shape[-2]), int(images.shape[-1])),
            clip_grid=grid,
            side_grid=tuple(mask_logits[-1].shape[-2:]),
        )

    def predict_masks(self, images: Tensor, classes: ClassNames) -> SanPrediction:
        """The last decoded block's (N, Q, T+1) class logits and (N, Q, h, w) mask logits."""
        outputs = self.forward_outputs(images, classes)
        return SanPrediction(outputs.class_logits[-1], outputs.mask_logits[-1], outputs.padded_size)

    def forward(self, images: Tensor, classes: ClassNames) -> SanPrediction:
        return self.predict_masks(images, classes)

    # ------------------------------------------------------------------ loss
    def loss(self, images: Tensor, targets: Sequence[dict[str, Tensor]], classes: ClassNames) -> dict[str, Tensor]:
        """The weighted set-criterion losses: "loss_ce", "loss_mask", "loss_dice" of the last
        decoded block, "_0", "_1", ... for the deep-supervision blocks before it.

        targets: per image {"labels": (G,), "masks": (G, H, W)} at the input size; the masks
        are zero-padded to the padded canvas the predicted masks cover, as the official code does.
        """
        outputs = self.forward_outputs(images, classes)
        padded_targets = pad_instance_targets(targets, outputs.padded_size)
        return self.criterion(criterion_outputs(outputs.class_logits, outputs.mask_logits), padded_targets)


def build_san_model(config: SanConfig, templates: str | Sequence[str] | None = None, trusted: bool = False) -> SanModel:
    """A `SanModel` from its settings; `templates` overrides ``config.templates`` (a set name
    or a list, e.g. a set ovbench resolved from its data)."""
    clip, tokenizer = create_clip_and_tokenizer(
        config.arch, config.clip_weights, config.model_config, config.quick_gelu, trusted=trusted
    )
    if getattr(clip, "visual", None) is None or not hasattr(clip.visual, "transformer"):
        raise SanConfigError(f"SAN needs a ViT CLIP image tower; {config.arch} has none")
    template_list = resolve_template_list(templates if templates is not None else config.templates)
    return SanModel(clip, tokenizer, template_list, config)
