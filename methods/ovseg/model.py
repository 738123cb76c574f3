"""OV-Seg (Liang et al., CVPR 2023): open-vocabulary segmentation with mask-adapted CLIP.

Notes: docs/methods/ovseg.md; official code facebookresearch/ov-seg at 36f49d4. Pipeline at
the published scale (R101c + CLIP ViT-B/16, 512 crop, Q = 100, T classes, batch B):

1. Pixels: ImageNet mean/std on 0..255, zero-padded to a multiple of 32 -> (B, 3, 512, 512).
2. Backbone (R101c or Swin-B) -> res2..res5; FPN pixel decoder -> mask features (B, 256, 128, 128).
3. DETR query decoder on res5 (6 layers, all supervised) -> per layer a class embedding
   (B, 100, 512) and mask logits (B, 100, 128, 128).
4. In-vocabulary classifier: 100 x cosine with [T ViLD-ensembled text embeddings; learned
   `non_object` row] -> (B, 100, T + 1).
5. Inference: every proposal with pixels above MASK_THR is cropped and masked on the image,
   classified by the mask-adapted CLIP through its mask prompts, and the two class
   distributions are mixed geometrically (`common.two_stage`).

Trainable: backbone, pixel decoder, query decoder and the non-object row. CLIP (both towers
and `mask_embedding`) is frozen: the mask-adapted CLIP is trained in a separate stage and
loaded from the authors' files (docs/methods/ovseg.md#two-training-stages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ovbench_methods.common.backbones import ResNetDeepLabBackbone, SwinBackbone
from ovbench_methods.common.clip import ClipImageEncoder
from ovbench_methods.common.clip_loading import read_clip_checkpoint
from ovbench_methods.common.crop_and_mask import MaskedCrops
from ovbench_methods.common.errors import WeightsError
from ovbench_methods.common.masked_clip import MaskPromptEmbedding, mask_prompted_image_embedding
from ovbench_methods.common.pixel_decoder import FPNPixelDecoder
from ovbench_methods.common.query_decoder import DetrQueryDecoder
from ovbench_methods.common.set_criterion import SetCriterion
from ovbench_methods.common.text import ClassNames, Tokenizer
from ovbench_methods.common.two_stage import (
    ClipBranchSettings,
    ProposalTextClassifier,
    TwoStageModel,
    TwoStageOutputs,
    create_vit_clip,
)
from ovbench_methods.ovseg.config import OvsegConfig, OvsegConfigError

__all__ = ["OvsegModel", "build_backbone", "build_ovseg_model"]


def build_backbone(name: str, resnet: Any, swin: Any) -> nn.Module:
    """The proposal backbone a config names ("r101c" or "swin")."""
    if name == "r101c":
        return ResNetDeepLabBackbone(resnet)
    if name == "swin":
        return SwinBackbone(swin)
    raise OvsegConfigError(f"unknown backbone {name!r}; choose r101c or swin")


class OvsegModel(TwoStageModel):
    """OV-Seg; see the module docstring. Inputs are RGB floats on 0..255 of any size."""

    frozen_towers = ("image_encoder", "mask_prompt")

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer, templates: Sequence[str], config: OvsegConfig) -> None:
        super().__init__(config, build_backbone(config.backbone, config.resnet, config.swin))
        shapes = self.backbone.output_shapes()
        self.pixel_decoder = FPNPixelDecoder(shapes, conv_dim=config.conv_dim, mask_dim=config.mask_dim)
        self.image_encoder = ClipImageEncoder(clip.visual)
        self.classifier = ProposalTextClassifier(clip, tokenizer, templates, config.temperature)
        embed_dim = self.image_encoder.output_dim
        self.predictor = DetrQueryDecoder(
            in_channels=shapes["res5"][0],
            hidden_dim=config.hidden_dim,
            num_queries=config.num_queries,
            nheads=config.nheads,
            dropout=config.dropout,
            dim_feedforward=config.dim_feedforward,
            dec_layers=config.dec_layers,
            pre_norm=config.pre_norm,
            mask_dim=config.mask_dim,
            class_embed_dim=embed_dim,
            class_hidden_dim=config.class_hidden_dim,
            class_layers=config.class_layers,
        )
        grid = self.image_encoder.pretrained_grid
        self.mask_prompt = MaskPromptEmbedding(config.mask_prompt_depth, grid[0] * grid[1], self.image_encoder.width)
        # CLIP's own temperature: unused (OV-Seg's classifiers use a fixed 100) but part of the
        # official file, so it is kept to load and write that file unchanged.
        self.clip_logit_scale = nn.Parameter(clip.logit_scale.detach().clone().reshape(()), requires_grad=False)
        self.criterion = SetCriterion(config.criterion)
        self.freeze_towers()

    # ----------------------------------------------------------- forward
    def forward_outputs(self, images: Tensor, classes: ClassNames, all_predictions: bool = True) -> TwoStageOutputs:
        self.check_inputs(images, classes, "OV-Seg")
        pixels = self.prepare_pixels(images)
        features = self.backbone(pixels)
        mask_features = self.pixel_decoder(features).mask_features
        decoded = self.predictor(features["res5"], mask_features)
        weights = self.classifier.weights(classes)
        embeddings, masks = decoded.class_embeddings, decoded.mask_logits
        if not all_predictions:
            embeddings, masks = embeddings[-1:], masks[-1:]
        return TwoStageOutputs(
            class_logits=[self.classifier.logits(embedding, weights) for embedding in embeddings],
            mask_logits=list(masks),
            padded_size=(int(pixels.shape[-2]), int(pixels.shape[-1])),
            image_size=(int(images.shape[-2]), int(images.shape[-1])),
        )

    def crop_embeddings(self, regions: Tensor, region_masks: Tensor) -> Tensor:
        """(V, D) CLIP embeddings of masked crops: through the mask prompts when
        `mask_prompt_fwd`, plain CLIP otherwise (docs/methods/ovseg.md#mask-prompts)."""
        prompts = self.mask_prompt.mask_embedding if self.config.mask_prompt_fwd else None
        return mask_prompted_image_embedding(self.image_encoder, prompts, regions, region_masks)

    def classify_crops(self, index: int, crops: MaskedCrops, outputs: TwoStageOutputs, weights: Tensor,
                       settings: ClipBranchSettings) -> Tensor:
        """(V, T + 1) logits of one image's crops through the mask-adapted CLIP (docs/methods/ovseg.md#inference)."""
        embeddings = self.crop_embeddings(crops.regions.to(weights.device), crops.region_masks.to(weights.device))
        return self.classifier.logits(embeddings, weights)

    def supervised_outputs(self, outputs: TwoStageOutputs) -> tuple[list[Tensor], list[Tensor]]:
        """MaskFormer supervises every layer with deep supervision, else the last only."""
        if self.config.deep_supervision:
            return outputs.class_logits, outputs.mask_logits
        return outputs.class_logits[-1:], outputs.mask_logits[-1:]

    # ------------------------------------------------------------ weights
    def load_mask_adapted_clip(self, path: str | Path, trusted: bool = False) -> None:
        """OV-Seg's CLIP-stage file (an open_clip checkpoint, keys ``module.*`` under
        ``state_dict``) into CLIP and `mask_embedding`, the way `ovseg_replace_clip.py`
        swaps it into a segmentation checkpoint (docs/methods/ovseg.md#checkpoint-layout)."""
        state, _ = read_clip_checkpoint(path, trusted=trusted)
        load_clip_stage_state(self, state, str(path))


def load_clip_stage_state(model: OvsegModel, state: Mapping[str, Tensor], source: str) -> None:
    """An OpenAI-named CLIP state dict (``visual.*``, text tower, ``logit_scale``; optionally
    ``visual.mask_embedding``) into the model's CLIP parts; strict, one error line."""
    state = {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}
    mask_embedding = state.pop("visual.mask_embedding", None)
    targets: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("visual."):
            targets["image_encoder." + key] = value
        elif key == "logit_scale":
            targets["clip_logit_scale"] = value.reshape(())
        else:
            targets["classifier.text_encoder." + key] = value
    if mask_embedding is not None:
        targets["mask_prompt.mask_embedding"] = mask_embedding
    own = model.state_dict()
    clip_keys = {k for k in own if k.startswith(("image_encoder.", "classifier.text_encoder.", "clip_logit_scale"))}
    if mask_embedding is not None:
        clip_keys.add("mask_prompt.mask_embedding")
    missing = sorted(clip_keys - set(targets))
    unexpected = sorted(set(targets) - set(own))
    if missing or unexpected:
        raise WeightsError(f"{source}: not an OV-Seg CLIP of this shape (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, value in targets.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}")
    with torch.no_grad():
        model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in targets.items()}}, strict=True)


def build_ovseg_model(config: OvsegConfig, templates: str | Sequence[str] | None = None, trusted: bool = False) -> OvsegModel:
    """An `OvsegModel` from its settings; `templates` overrides ``config.templates``."""
    clip, tokenizer, template_list = create_vit_clip(config, "OV-Seg", templates, trusted)
    model = OvsegModel(clip, tokenizer, template_list, config)
    if config.backbone_weights:
        from ovbench_methods.common.backbones import load_resnet_pretrained, load_swin_pretrained

        loader = load_resnet_pretrained if config.backbone == "r101c" else load_swin_pretrained
        loader(model.backbone, config.backbone_weights, trusted=trusted)
    if config.mask_adapted_clip:
        model.load_mask_adapted_clip(config.mask_adapted_clip, trusted=trusted)
    return model
