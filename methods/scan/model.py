"""SCAN (Liu et al., CVPR 2024): open-vocabulary segmentation with semantic-assisted calibration.

Notes: docs/methods/scan.md; official code yongliu20/SCAN at 097fbbd. Pipeline at the published
scale (Swin-B + DataComp CLIP ViT-B/16, 640 crop, Q = 100, T classes, batch B):

1. Pixels: ImageNet mean/std -> padded x32 -> Swin-B -> deformable pixel decoder (mask
   features (B, 256, 160, 160) and three levels) -> masked-attention decoder, 10 layers as
   the official config builds them, 11 predictions (docs/methods/scan.md#ten-decoder-layers).
2. The same image with CLIP's mean/std, padded x32, resized to 224 (nearest, as the official
   `F.interpolate` default) -> the frozen original CLIP: the patch maps of blocks 6/9/12, the
   CLS token after every block and the final image embedding (`full_image_context`).
3. Calibration of every prediction's class embeddings (B, 100, 512) with those maps and
   that embedding (`ScanCalibration`), then 100 x cosine with [ViLD text; non-object].
4. Inference: each proposal above MASK_THR is cropped and masked, classified by the crop
   CLIP (CS-CLIP once its weights are loaded) with contextual shift - a share of the crop's
   background patches replaced by the whole image's CLS after blocks 1, 3, 5 - and mixed
   with the in-vocabulary probabilities geometrically (`common.two_stage`).

Trainable: Swin-B, pixel decoder, decoder, heads, calibration stack, non-object row. Frozen:
the crop CLIP (text and visual) and the original CLIP.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Sequence

import torch
from torch import Tensor, nn

from ovbench_methods.common.backbones import SwinBackbone, load_swin_pretrained
from ovbench_methods.common.clip import (
    CLIP_PIXEL_MEAN,
    CLIP_PIXEL_STD,
    ClipImageEncoder,
    normalize_pixels,
    pad_to_multiple,
    register_pixel_statistics,
)
from ovbench_methods.common.clip_loading import read_clip_checkpoint
from ovbench_methods.common.crop_and_mask import MaskedCrops
from ovbench_methods.common.errors import WeightsError
from ovbench_methods.common.masked_clip import ClipContext, contextual_shift_image_embedding, full_image_context
from ovbench_methods.common.query_decoder import MaskedAttentionDecoder
from ovbench_methods.common.set_criterion import SetCriterion
from ovbench_methods.common.text import ClassNames, Tokenizer
from ovbench_methods.common.two_stage import ProposalTextClassifier, TwoStageModel, TwoStageOutputs, create_vit_clip
from ovbench_methods.scan.calibration import ScanCalibration
from ovbench_methods.scan.config import ScanClipBranchSettings, ScanConfig, ScanConfigError

__all__ = ["ScanModel", "build_scan_model"]


class _ClipPixels(nn.Module):
    """Holds CLIP's pixel statistics (the original-CLIP input is normalised with them)."""

    def __init__(self) -> None:
        super().__init__()
        register_pixel_statistics(self, CLIP_PIXEL_MEAN, CLIP_PIXEL_STD)


class ScanModel(TwoStageModel):
    """SCAN; see the module docstring. Inputs are RGB floats on 0..255 of any size."""

    frozen_towers = ("image_encoder", "original_clip")

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer, templates: Sequence[str], config: ScanConfig) -> None:
        super().__init__(config, SwinBackbone(config.swin))
        self.clip_pixels = _ClipPixels()
        shapes = self.backbone.output_shapes()
        self.pixel_decoder = config.deformable_pixel_decoder(shapes)
        # The original CLIP is a copy of the DataComp visual tower taken before any CS-CLIP
        # weights replace the crop branch's (the official adapter deep-copies it at build time).
        self.original_clip = ClipImageEncoder(copy.deepcopy(clip.visual))
        self.image_encoder = ClipImageEncoder(clip.visual)
        self.classifier = ProposalTextClassifier(clip, tokenizer, templates, config.temperature)
        embed_dim = self.image_encoder.output_dim
        if embed_dim != config.calibration.scan_dim:
            raise ScanConfigError(f"scan_dim {config.calibration.scan_dim} must equal CLIP's embedding width {embed_dim}")
        self.predictor = MaskedAttentionDecoder(
            **config.masked_attention_settings(),
            class_embed_dim=config.calibration.scan_dim,
            class_hidden_dim=config.class_hidden_dim,
            class_layers=config.class_layers,
        )
        grid = self.original_clip.pretrained_grid
        if grid[0] != grid[1]:
            raise ScanConfigError(f"SCAN needs a square CLIP grid, got {grid}")
        if max(config.calibration.clip_layers) > self.original_clip.num_blocks:
            raise ScanConfigError(f"clip_layers {config.calibration.clip_layers} exceed CLIP's {self.original_clip.num_blocks} blocks")
        if max(config.clip_branch.replace_layers) > self.image_encoder.num_blocks:
            raise ScanConfigError(f"replace_layers {config.clip_branch.replace_layers} exceed CLIP's blocks")
        self.calibration = ScanCalibration(replace(config.calibration, clip_width=self.original_clip.width, grid=grid[0]))
        self.clip_logit_scale = nn.Parameter(clip.logit_scale.detach().clone().reshape(()), requires_grad=False)
        self.criterion = SetCriterion(config.criterion)
        self.freeze_towers()

    # ----------------------------------------------------------- forward
    def clip_context(self, images: Tensor) -> ClipContext:
        """The original-CLIP pass on the CLIP-normalised, padded image (docs/methods/scan.md#original-clip-pass)."""
        pixels = pad_to_multiple(normalize_pixels(self.clip_pixels, images, images.dtype), self.config.size_divisibility)
        with torch.no_grad():
            return full_image_context(self.original_clip, pixels, resize_mode=self.config.context_resize)

    def forward_outputs(self, images: Tensor, classes: ClassNames, all_predictions: bool = True) -> TwoStageOutputs:
        self.check_inputs(images, classes, "SCAN")
        context = self.clip_context(images)
        clip_tokens = self.calibration.encode_clip_tokens([context.patch_map(layer) for layer in self.config.calibration.clip_layers])
        pixels = self.prepare_pixels(images)
        features = self.backbone(pixels)
        decoded_pixels = self.pixel_decoder(features)
        decoded = self.predictor(decoded_pixels.multi_scale_features, decoded_pixels.mask_features)
        embeddings = decoded.class_embeddings if all_predictions else decoded.class_embeddings[-1:]
        weights = self.classifier.weights(classes)
        class_logits = [
            self.classifier.logits(self.calibration.calibrate(embedding, clip_tokens, context.embedding), weights)
            for embedding in embeddings
        ]
        masks = list(decoded.mask_logits) if all_predictions else [decoded.mask_logits[-1]]
        return TwoStageOutputs(
            class_logits=class_logits,
            mask_logits=masks,
            padded_size=(int(pixels.shape[-2]), int(pixels.shape[-1])),
            image_size=(int(images.shape[-2]), int(images.shape[-1])),
            context=context,
        )

    def classify_crops(self, index: int, crops: MaskedCrops, outputs: TwoStageOutputs, weights: Tensor,
                       settings: ScanClipBranchSettings) -> Tensor:
        """(V, T + 1) logits of image `index`'s crops with contextual shift (docs/methods/scan.md#contextual-shift):
        the image's own CLS tokens (the official code reads image 0's, the same at its test
        batch of 1), drawn from a generator seeded with `shift_seed` for this image
        (docs/methods/scan.md#seeded-contextual-shift)."""
        device = weights.device
        generator = torch.Generator(device=device).manual_seed(int(settings.shift_seed))
        embeddings = contextual_shift_image_embedding(
            self.image_encoder,
            crops.regions.to(device),
            crops.region_masks.to(device),
            outputs.context.layer_cls(index),
            replace_layers=tuple(int(i) for i in settings.replace_layers),
            replace_ratio=float(settings.replace_ratio),
            generator=generator,
        )
        return self.classifier.logits(embeddings, weights)

    # ------------------------------------------------------------ weights
    def load_cs_clip(self, path: str, trusted: bool = False) -> None:
        """The released CS-CLIP (`state_dict` with ``module.clip_model.X`` or plain CLIP keys):
        its visual tower replaces the crop branch's, as `replace_clip.py` does; the text tower
        in such a file must equal the model's (it was locked during CS-CLIP training) and is
        not loaded (docs/methods/scan.md#checkpoint-layout)."""
        state, _ = read_clip_checkpoint(path, trusted=trusted)
        state = {key[len("clip_model."):] if key.startswith("clip_model.") else key: value for key, value in state.items()}
        visual = {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}
        own = self.image_encoder.visual.state_dict()
        missing, unexpected = sorted(set(own) - set(visual)), sorted(set(visual) - set(own))
        if missing or unexpected:
            raise WeightsError(f"{path}: not a CS-CLIP visual tower of this shape (missing {missing[:3]}, unexpected {unexpected[:3]})")
        for key, value in visual.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise WeightsError(f"{path}: visual.{key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}")
        self.image_encoder.visual.load_state_dict({k: v.to(own[k].dtype) for k, v in visual.items()}, strict=True)


def build_scan_model(config: ScanConfig, templates: str | Sequence[str] | None = None, trusted: bool = False) -> ScanModel:
    """A `ScanModel` from its settings; `templates` overrides ``config.templates``."""
    clip, tokenizer, template_list = create_vit_clip(config, "SCAN", templates, trusted)
    model = ScanModel(clip, tokenizer, template_list, config)
    if config.backbone_weights:
        load_swin_pretrained(model.backbone, config.backbone_weights, trusted=trusted)
    if config.cs_clip_weights:
        model.load_cs_clip(config.cs_clip_weights, trusted=trusted)
    return model
