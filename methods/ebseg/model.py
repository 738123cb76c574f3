"""EBSeg (Shan et al., CVPR 2024): open-vocabulary semantic segmentation with image embedding
balancing.

Notes: docs/methods/ebseg.md; official code slonetime/EBSeg at f61977d. Pipeline at the
published scale (EBSeg-B: OpenAI CLIP ViT-B/16, SAM ViT-B, 640^2 crop, Q = 100, T classes):

1. Pixels: zero-padded to a multiple of 32 after normalisation, once with CLIP's statistics
   and once with ImageNet's (SAM's) -> (B, 3, 640, 640) each.
2. CLIP (frozen but its positional embedding, resized 14^2 -> 20^2 inside the forward) on the
   CLIP pixels resized by 0.5 (bilinear): blocks 1-9; outputs of blocks 3, 6, 9 kept as
   (B, 768, 20, 20) maps. At inference the v-v surgery stream runs beside blocks 3-12
   (`surgery.run_dual_blocks`; docs/methods/ebseg.md#surgery-path).
3. SAM ViT-B (frozen but its pos-embed, 64^2 -> 40^2) on the SAM pixels; its four global
   blocks resized to res2-res5 = 160^2, 80^2, 40^2, 20^2, 768 channels.
4. Fusion (`sem_seg_head.clip_fusion_layers`): each kept CLIP map -> channel LayerNorm ->
   1x1 conv 768 -> 768 -> bilinear resize -> added to res3, res4, res5.
5. Pixel decoder (deformable, 6 layers over res3-res5) -> mask features (B, 256, 160, 160).
6. AdaB decoder (`decoder.AdaBDecoder`, 9 layers, 10 predictions): masks, A embeddings
   (B, 100, 512) and attention biases (B, 12, 100, 160, 160).
7. B: CLIP blocks 10-12 rerun on [100 SOS; CLS; 400 patches] under each prediction's bias,
   max-pooled to 20^2 (SAN's recognition head) -> (B, 100, 512).
8. Classifier: ViLD-14 text embeddings and a learned `bg_embed`, all L2-normalised, times
   CLIP's `logit_scale.exp()` -> A and B logits (B, 100, T + 1).
9. Inference: D = the surgery map pooled under the final masks; A, B, D balanced per class by
   seen/unseen (`balancing.balanced_class_logits`), then the void step.

Trainable: both positional embeddings, the fusion layers, pixel decoder, AdaB decoder and
`bg_embed`. CLIP's image tower otherwise, its text tower, its `logit_scale` and SAM are frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.clip import (
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    normalize_pixels,
    pad_to_multiple,
    register_pixel_statistics,
)
from ovbench_methods.common.recognition_clip import RecognitionClipModel
from ovbench_methods.common.clip_cost_model import create_clip_and_tokenizer, resolve_template_list
from ovbench_methods.common.mask_pooling import mask_pool
from ovbench_methods.common.mask_semantic import criterion_outputs, pad_instance_targets
from ovbench_methods.common.open_vocab_classifier import cosine_class_logits
from ovbench_methods.common.sam_encoder import SamImageEncoder, load_sam_image_encoder
from ovbench_methods.common.set_criterion import SetCriterion
from ovbench_methods.common.text import ClassNames, Tokenizer
from ovbench_methods.ebseg.balancing import balanced_class_logits
from ovbench_methods.ebseg.config import EbsegConfig, EbsegConfigError
from ovbench_methods.ebseg.decoder import AdaBDecoder
from ovbench_methods.ebseg.ssc import ssc_loss, text_affinity
from ovbench_methods.ebseg.surgery import run_dual_blocks
from ovbench_methods.san.recognition import recognize
from ovbench_methods.san.side_adapter import ChannelLayerNorm

__all__ = ["EbsegModel", "EbsegOutputs", "EbsegPrediction", "build_ebseg_model"]

#: SAM levels the three kept CLIP maps are added to, in `fusion_layers` order.
FUSED_LEVELS = ("res3", "res4", "res5")


@dataclass
class EbsegOutputs:
    """One forward. Per prediction (initial queries first, final last): A and B class logits
    (B, Q, T+1), mask logits (B, Q, H/4, W/4) of the padded canvas, the A embeddings
    (B, Q, D). B logits are absent for predictions the recognition head skipped (None).
    `surgery_map` (B, D, h, w) is the unit-normalised dense CLIP map of the surgery path
    (inference only)."""

    class_logits_a: list[Tensor]
    class_logits_b: list[Tensor | None]
    mask_logits: list[Tensor]
    embeddings_a: list[Tensor]
    padded_size: tuple[int, int]
    image_size: tuple[int, int]
    surgery_map: Tensor | None = None
    classifier: Tensor | None = None


@dataclass
class EbsegPrediction:
    """What `MaskClassificationSegmenter` reads: the final (N, Q, T+1) class logits (after
    balancing and the void step at inference), the final (N, Q, h, w) mask logits and the
    canvas they cover; `extras` holds the A, B and D logits before balancing."""

    class_logits: Tensor
    mask_logits: Tensor
    padded_size: tuple[int, int]
    extras: dict[str, Any] = field(default_factory=dict)


class _SemSegHead(nn.Module):
    """The official `sem_seg_head`: CLIP fusion layers, pixel decoder, AdaB predictor."""

    def __init__(self, clip_width: int, sam_shapes: dict[str, tuple[int, int]], config: EbsegConfig, embed_dim: int) -> None:
        super().__init__()
        self.pixel_decoder = config.deformable_pixel_decoder(sam_shapes)
        # The 1x1 convs keep torch's default initialisation, as the official ones do.
        self.clip_fusion_layers = nn.ModuleList(
            nn.Sequential(ChannelLayerNorm(clip_width), nn.Conv2d(clip_width, sam_shapes[level][0], kernel_size=1))
            for level in FUSED_LEVELS
        )
        self.predictor = AdaBDecoder(
            embed_dim=embed_dim,
            attn_bias_heads=config.attn_bias_heads,
            embedding_scale_max=config.embedding_scale_max,
            **config.masked_attention_settings(),
        )

    def fuse(self, features: dict[str, Tensor], clip_maps: Sequence[Tensor]) -> dict[str, Tensor]:
        fused = dict(features)
        for level, layer, clip_map in zip(FUSED_LEVELS, self.clip_fusion_layers, clip_maps):
            target = fused[level]
            projected = F.interpolate(layer(clip_map), size=target.shape[-2:], mode="bilinear", align_corners=False)
            fused[level] = target + projected.to(target.dtype)
        return fused


class EbsegModel(RecognitionClipModel):
    """EBSeg; see the module docstring. Inputs are RGB floats on 0..255 of any size."""

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer, templates: Sequence[str], config: EbsegConfig) -> None:
        super().__init__()
        self.config = config
        self.init_clip(clip, tokenizer, templates, config.rec_first_layer)
        num_blocks = self.image_encoder.num_blocks
        if not config.rec_first_layer < num_blocks:
            raise EbsegConfigError(
                f"rec_first_layer must leave at least one of CLIP's {num_blocks} blocks for recognition, got {config.rec_first_layer}"
            )
        self.surgery_first_layer = num_blocks // 6 + 1 if config.surgery_first_layer is None else int(config.surgery_first_layer)
        if not 1 <= self.surgery_first_layer <= config.rec_first_layer:
            raise EbsegConfigError(
                f"the surgery path must start at a CLIP block up to rec_first_layer {config.rec_first_layer}, "
                f"got block {self.surgery_first_layer}"
            )
        clip_heads = int(self.image_encoder.blocks[config.rec_first_layer].attn.num_heads)
        if config.attn_bias_heads != clip_heads:
            raise EbsegConfigError(f"attn_bias_heads must be CLIP's head count {clip_heads}, got {config.attn_bias_heads}")
        self._ssc_affinity: Tensor | None = None
        register_pixel_statistics(self, IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD)
        self.backbone = SamImageEncoder(config.sam)
        if config.sam_weights:
            load_sam_image_encoder(self.backbone, config.sam_weights)
        sam_shapes = {name: (int(shape[0]), int(shape[1])) for name, shape in self.backbone.output_shapes().items()}
        self.sem_seg_head = _SemSegHead(self.image_encoder.width, sam_shapes, config, self.image_encoder.output_dim)
        self.criterion = SetCriterion(config.criterion)
        # docs/methods/ebseg.md#what-trains (official: the visual positional embedding alone).
        self.freeze_clip(config.clip_frozen_exclude, config.clip_deeper_frozen_exclude)

    # ------------------------------------------------------------------ text
    def clear_text_cache(self) -> None:
        super().clear_text_cache()
        self._ssc_affinity = None

    def ssc_affinity(self, classes: ClassNames) -> Tensor:
        """(T, T) cosine matrix of the text embeddings the SSC loss compares against
        (docs/methods/ebseg.md#text-affinity-of-the-first-vocabulary)."""
        if self.config.ssc_affinity == "loss_vocabulary" or self._ssc_affinity is None:
            affinity = text_affinity(self.class_embeddings(classes))
            if self.config.ssc_affinity == "loss_vocabulary":
                return affinity
            self._ssc_affinity = affinity
        return self._ssc_affinity

    # ----------------------------------------------------------------- image
    def clip_input(self, pixels: Tensor) -> Tensor:
        """The padded CLIP pixels resized by `clip_resolution` (F.interpolate with the scale
        factor, bilinear, align_corners False, as the official call)."""
        if self.config.clip_resolution == 1.0:
            return pixels
        return F.interpolate(pixels, scale_factor=self.config.clip_resolution, mode="bilinear", align_corners=False)

    def _clip_features(self, images: Tensor, surgery: bool) -> tuple[Tensor, Tensor | None, list[Tensor], tuple[int, int]]:
        """CLIP up to `rec_first_layer`: the tokens after it, the surgery stream after it
        (None without the surgery path), the fused blocks' maps and the patch grid."""
        encoder = self.image_encoder
        pixels = pad_to_multiple(encoder.normalize(images), self.config.size_divisibility)
        tokens, grid = encoder.embed(self.clip_input(pixels))
        split = self.config.rec_first_layer
        keep = {layer - 1 for layer in self.config.fusion_layers}
        if surgery:
            start = self.surgery_first_layer - 1
            tokens, collected = encoder.run_blocks(tokens, 0, start, collect=keep)
            tokens, stream, later = run_dual_blocks(encoder, tokens, None, start, split, collect=keep)
            collected.update(later)
        else:
            tokens, collected = encoder.run_blocks(tokens, 0, split, collect=keep)
            stream = None
        maps = [encoder.tokens_to_map(collected[layer - 1], grid) for layer in self.config.fusion_layers]
        return tokens, stream, maps, grid

    def _surgery_map(self, tokens: Tensor, stream: Tensor, grid: tuple[int, int]) -> Tensor:
        """The surgery stream through the recognition blocks, ln_post, proj, L2 -> (B, D, h, w).

        The official head runs this stream beside its SOS tokens under the attention bias;
        the bias only touches the SOS rows and every other row is blocked (-100) from the SOS
        columns, so running CLS and patches alone gives the same map (to e^-100)."""
        encoder = self.image_encoder
        _, stream, _ = run_dual_blocks(encoder, tokens, stream, self.config.rec_first_layer, encoder.num_blocks)
        return encoder.tokens_to_map(F.normalize(encoder.project(stream), dim=-1), grid)

    def forward_outputs(self, images: Tensor, classes: ClassNames, inference: bool | None = None) -> EbsegOutputs:
        if images.ndim != 4 or images.shape[1] != 3:
            raise EbsegConfigError(f"expected images of shape (N,3,H,W), got {tuple(images.shape)}")
        if len(classes) < 1:
            raise EbsegConfigError("EBSeg needs at least one class name")
        inference = (not self.training) if inference is None else bool(inference)
        tokens, stream, clip_maps, grid = self._clip_features(images, surgery=inference)
        sam_pixels = pad_to_multiple(normalize_pixels(self, images, self.backbone.dtype), self.config.size_divisibility)
        features = self.sem_seg_head.fuse(self.backbone(sam_pixels), clip_maps)
        decoded = self.sem_seg_head.pixel_decoder(features)
        heads = self.sem_seg_head.predictor.forward_heads(decoded.multi_scale_features, decoded.mask_features)

        weights = self.classifier_weights(classes)
        scale = self.logit_scale.exp()
        logits_a = [torch.einsum("bqc,nc->bqn", embedding, weights) * scale for embedding in heads.embeddings]
        recognised = range(len(heads.attn_biases))
        if inference and not self.config.rec_all_predictions_at_inference:
            recognised = range(len(heads.attn_biases) - 1, len(heads.attn_biases))
        logits_b: list[Tensor | None] = [None] * len(heads.attn_biases)
        for index in recognised:
            embeddings = recognize(
                self.image_encoder, tokens, grid, [heads.attn_biases[index]], self.config.rec_first_layer, self.config.rec_downsample
            )
            logits_b[index] = cosine_class_logits(embeddings, weights, scale)
        surgery_map = self._surgery_map(tokens, stream, grid) if stream is not None else None
        return EbsegOutputs(
            class_logits_a=logits_a,
            class_logits_b=logits_b,
            mask_logits=heads.mask_logits,
            embeddings_a=heads.embeddings,
            padded_size=(int(sam_pixels.shape[-2]), int(sam_pixels.shape[-1])),
            image_size=(int(images.shape[-2]), int(images.shape[-1])),
            surgery_map=surgery_map,
            classifier=weights,
        )

    def predict_masks(self, images: Tensor, classes: ClassNames, seen: Tensor | None = None) -> EbsegPrediction:
        """The final prediction with A, B and D balanced (docs/methods/ebseg.md#adab-balancing).
        `seen` (T,) flags the classes named in training; None = none of them."""
        outputs = self.forward_outputs(images, classes, inference=True)
        masks = outputs.mask_logits[-1]
        logits_a, logits_b = outputs.class_logits_a[-1], outputs.class_logits_b[-1]
        pooled = mask_pool(outputs.surgery_map, masks, binarize="sigmoid", resize_masks=True)
        logits_d = torch.einsum("bqc,nc->bqn", pooled, outputs.classifier) * self.logit_scale.exp()
        num_classes = len(classes)
        seen = torch.zeros(num_classes, dtype=torch.bool) if seen is None else torch.as_tensor(seen, dtype=torch.bool)
        if seen.shape != (num_classes,):
            raise EbsegConfigError(f"seen flags must be one per class ({num_classes}), got shape {tuple(seen.shape)}")
        balancing = self.config.balancing
        balanced = balanced_class_logits(
            logits_a.float(), logits_b.float(), logits_d.float(), seen.to(masks.device),
            balancing.alpha, balancing.beta, balancing.gamma,
        )
        return EbsegPrediction(
            class_logits=balanced,
            mask_logits=masks,
            padded_size=outputs.padded_size,
            extras={"logits_a": logits_a, "logits_b": logits_b, "logits_d": logits_d},
        )

    def forward(self, images: Tensor, classes: ClassNames) -> EbsegPrediction:
        return self.predict_masks(images, classes)

    # ------------------------------------------------------------------ loss
    def loss(self, images: Tensor, targets: Sequence[dict[str, Tensor]], classes: ClassNames) -> dict[str, Tensor]:
        """Weighted losses: A's "loss_ce" and B's "1_loss_ce" (1.5 each), "loss_mask" and
        "loss_dice" (5 each) for the final prediction and "_0" ... "_8" for the earlier ones;
        "loss_ssc" (10) on the final prediction (docs/methods/ebseg.md#losses). Target masks
        are zero-padded to the padded canvas, as the official code does."""
        outputs = self.forward_outputs(images, classes, inference=False)
        padded_targets = pad_instance_targets(targets, outputs.padded_size)
        criterion_input = criterion_outputs(outputs.class_logits_a, outputs.mask_logits)
        criterion_input["pred_logits_1"] = outputs.class_logits_b[-1]
        for aux, logits_b in zip(criterion_input["aux_outputs"], outputs.class_logits_b[:-1]):
            aux["pred_logits_1"] = logits_b
        losses, indices = self.criterion(criterion_input, padded_targets, return_indices=True)
        if self.config.ssc_weight > 0:
            embeddings = outputs.embeddings_a[-1]
            if not self.config.ssc_scaled_gram:
                embeddings = F.normalize(embeddings, dim=-1)
            labels = [target["labels"] for target in padded_targets]
            losses["loss_ssc"] = self.config.ssc_weight * ssc_loss(embeddings, indices[-1], labels, self.ssc_affinity(classes))
        return losses


def build_ebseg_model(config: EbsegConfig, templates: str | Sequence[str] | None = None, trusted: bool = False) -> EbsegModel:
    """An `EbsegModel` from its settings; `templates` overrides ``config.templates``."""
    clip, tokenizer = create_clip_and_tokenizer(
        config.arch, config.clip_weights, config.model_config, config.quick_gelu, trusted=trusted
    )
    if getattr(clip, "visual", None) is None or not hasattr(clip.visual, "transformer"):
        raise EbsegConfigError(f"EBSeg needs a ViT CLIP image tower; {config.arch} has none")
    template_list = resolve_template_list(templates if templates is not None else config.templates)
    return EbsegModel(clip, tokenizer, template_list, config)
