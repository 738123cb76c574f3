"""What the two-stage mask-proposal methods (OV-Seg, SCAN) share beyond the blocks
(docs/methods/mask-proposal-core.md#two-stage-inference):

- `ProposalTextClassifier`: the frozen CLIP text tower, the template-ensembled class
  embeddings (cached per vocabulary), the learned "no object" row appended after the
  normalised text rows, and cosine logits at a fixed temperature (100 in both methods);
- `ClipBranchSettings` and `two_stage_semantic`: the inference that turns proposals into a
  semantic map: mask logits upsampled to the padded canvas, cropped to the image, sigmoid;
  each proposal cropped and masked on the image and classified by CLIP (the method supplies
  how CLIP sees a crop); the geometric ensemble; the einsum of class and mask probabilities
  at the model's input size. The caller resizes that map to the original image afterwards,
  as the official code does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, Sequence

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
from ovbench_methods.common.clip_cost_model import create_clip_and_tokenizer, resolve_template_list
from ovbench_methods.common.crop_and_mask import MaskedCrops, crop_and_mask
from ovbench_methods.common.ensemble import clip_branch_probs, ensemble_class_probs, in_vocab_probs, suppress_void
from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.mask_semantic import criterion_outputs, pad_instance_targets
from ovbench_methods.common.open_vocab_classifier import BackgroundEmbedding
from ovbench_methods.common.text import ClassEmbeddingCache, ClassNames, ClipTextEncoder, Tokenizer, cached_class_embeddings

__all__ = [
    "ClipBranchSettings",
    "TwoStageModel",
    "TwoStageOutputs",
    "TwoStagePrediction",
    "create_vit_clip",
    "check_per_eval_set",
    "ProposalTextClassifier",
    "settings_for_eval_set",
    "two_stage_semantic",
    "upsampled_mask_probs",
]


class ProposalTextClassifier(nn.Module):
    """Text side of OV-Seg and SCAN: (T + 1, D) classifier rows and cosine logits.

    The class rows are CLIP text embeddings of every template, each L2-normalised, averaged
    and normalised again; the learned `non_object` row (N(0, text width^-0.5)) is normalised
    on its own and appended last. Logits are `temperature` x cosine(L2 embedding, row).
    """

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer, templates: Sequence[str], temperature: float = 100.0) -> None:
        super().__init__()
        self.text_encoder = ClipTextEncoder(clip)
        for param in self.text_encoder.parameters():
            param.requires_grad_(False)
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.temperature = float(temperature)
        width = int(getattr(getattr(clip, "transformer", None), "width", 0) or 0)
        dim = int(clip.text_projection.shape[-1]) if isinstance(clip.text_projection, Tensor) else int(clip.embed_dim)
        self.non_object = BackgroundEmbedding(dim, init_std=(width**-0.5) if width else None, normalization="background")
        self._cache = ClassEmbeddingCache()

    def train(self, mode: bool = True) -> "ProposalTextClassifier":
        super().train(mode)
        self.text_encoder.eval()  # frozen: no dropout, as the official code encodes text
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    def class_embeddings(self, classes: ClassNames) -> Tensor:
        """(T, D) normalised template-ensembled text embeddings, cached per vocabulary."""
        return cached_class_embeddings(self._cache, self.text_encoder, self.tokenizer, classes, self.templates)

    def weights(self, classes: ClassNames) -> Tensor:
        """(T + 1, D): the class rows and the normalised no-object row."""
        return self.non_object(self.class_embeddings(classes).to(self.non_object.embedding.device))

    def logits(self, embeddings: Tensor, weights: Tensor) -> Tensor:
        """(..., D) query or crop embeddings -> (..., T + 1) logits."""
        return self.temperature * F.normalize(embeddings, dim=-1) @ weights.to(embeddings.dtype).t()


@dataclass
class ClipBranchSettings:
    """How the CLIP branch scores proposals at inference (docs/methods/mask-proposal-core.md#two-stage-inference)."""

    #: run the CLIP branch at all (official CLIP_ENSEMBLE); False = in-vocabulary classes alone.
    enabled: bool = True
    #: λ of p_in^(1-λ) · p_clip^λ (CLIP_ENSEMBLE_WEIGHT).
    weight: float = 0.7
    #: a mask's pixels are those with probability above this (MASK_THR).
    mask_threshold: float = 0.5
    #: "mean" (CLIP's mean colour) or "zero" (MASK_FILL).
    fill: str = "mean"
    #: box scale about its centre (MASK_EXPAND_RATIO).
    expand_ratio: float = 1.0
    #: blend the crop with the soft mask instead of the binary one (MASK_MATTING).
    matting: bool = False
    #: λ = 0 keeps only CLIP-scored valid masks (official); False reads 0 as p_in alone.
    zero_weight_clip_only: bool = True
    #: SCAN's "no object" suppression after the ensemble (official: A-847 and PC-459 only).
    suppress_void: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.weight) <= 1.0:
            raise MethodConfigError(f"CLIP ensemble weight must be in [0, 1], got {self.weight}")
        if not 0.0 <= float(self.mask_threshold) < 1.0:
            raise MethodConfigError(f"mask threshold must be in [0, 1), got {self.mask_threshold}")
        if self.fill not in ("mean", "zero"):
            raise MethodConfigError(f"mask fill must be 'mean' or 'zero', got {self.fill!r}")
        if self.expand_ratio < 1.0:
            raise MethodConfigError(f"mask expand ratio must be at least 1, got {self.expand_ratio}")


def check_per_eval_set(per_eval_set: Mapping[str, Mapping[str, Any]], base: Any) -> None:
    """Every per-evaluation-set override names a field of `base` (a settings dataclass) and
    gives a value its checks accept; one error line otherwise."""
    known = {f.name for f in fields(base)}
    for name, overrides in per_eval_set.items():
        if not isinstance(overrides, Mapping):
            raise MethodConfigError(f"per_eval_set[{name!r}] must be a mapping of settings, got {overrides!r}")
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise MethodConfigError(f"per_eval_set[{name!r}] has unknown settings {unknown}; known: {sorted(known)}")
        try:
            replace(base, **overrides)
        except MethodConfigError as exc:
            raise MethodConfigError(f"per_eval_set[{name!r}]: {exc}") from None


def settings_for_eval_set(base: Any, per_eval_set: Mapping[str, Mapping[str, Any]], eval_set: str | None) -> Any:
    """`base` with the overrides of `eval_set` applied (unchanged for a set without any)."""
    overrides = per_eval_set.get(eval_set or "", {})
    return replace(base, **overrides) if overrides else base


def upsampled_mask_probs(mask_logits: Tensor, padded_size: Sequence[int], image_size: Sequence[int]) -> Tensor:
    """(N,Q,h,w) mask logits over the padded canvas -> (N,Q,H,W) probabilities over the image:
    bilinear upsample to the canvas (align_corners False), crop, sigmoid."""
    canvas = F.interpolate(mask_logits, size=tuple(int(s) for s in padded_size), mode="bilinear", align_corners=False)
    return canvas[..., : int(image_size[0]), : int(image_size[1])].sigmoid()


#: Given the image's index in the batch and its masked crops, the (V, T + 1) CLIP logits.
CropClassifier = Callable[[int, MaskedCrops], Tensor]


def two_stage_semantic(
    images: Tensor,
    class_logits: Tensor,
    mask_probs: Tensor,
    settings: ClipBranchSettings,
    classify_crops: CropClassifier,
) -> Tensor:
    """(N,3,H,W) images on 0..255 (as the proposal network saw them, unpadded), (N,Q,T+1)
    in-vocabulary logits and (N,Q,H,W) mask probabilities -> (N,T,H,W) semantic scores.

    Per image: p_in = softmax over T + 1, no-object dropped; with the CLIP branch, crops of
    the valid masks are classified (`classify_crops`), p_clip = softmax over T of their logits
    without the no-object column, and p = p_in^(1-λ) · p_clip^λ (p_clip = 1 for invalid
    masks; λ = 0 keeps only the valid masks with their CLIP probabilities); optionally the
    void suppression (λ > 0 only, as officially); then Σ_q p[q, t] · m[q]. No CLIP forward runs for an image without a
    valid mask: its probabilities are p_in^(1-λ) (λ = 0: an all-zero map).
    """
    results = []
    for index in range(images.shape[0]):
        logits = class_logits[index].float()
        probs = in_vocab_probs(logits)
        masks = mask_probs[index].float()
        if settings.enabled:
            crops = crop_and_mask(
                images[index].float(),
                masks,
                threshold=settings.mask_threshold,
                expand_ratio=settings.expand_ratio,
                fill=settings.fill,
                matting=settings.matting,
            )
            if int(crops.valid.sum()):
                clip_probs = clip_branch_probs(classify_crops(index, crops).float())
            else:
                clip_probs = probs.new_zeros((0, probs.shape[-1]))
            probs, kept = ensemble_class_probs(
                probs, clip_probs, crops.valid, settings.weight, zero_weight_clip_only=settings.zero_weight_clip_only
            )
            clip_only = settings.weight == 0 and settings.zero_weight_clip_only
            if settings.suppress_void and not clip_only:  # the official code suppresses only in the ensemble branch
                probs = suppress_void(probs, logits)
            masks = masks[kept]
        results.append(torch.einsum("qt,qhw->thw", probs, masks))
    return torch.stack(results)


@dataclass
class TwoStageOutputs:
    """One forward of a proposal network: per prediction (deep supervision first, final last)
    the class logits (B, Q, T + 1) and mask logits (B, Q, h, w) over the padded canvas, and
    whatever else the method keeps for its CLIP branch (`context`)."""

    class_logits: list[Tensor]
    mask_logits: list[Tensor]
    padded_size: tuple[int, int]
    image_size: tuple[int, int]
    context: Any = None


@dataclass
class TwoStagePrediction:
    """The final prediction (what the harness's mask-classification adapter reads)."""

    class_logits: Tensor
    mask_logits: Tensor
    padded_size: tuple[int, int]


def _clear_text_cache_after_load(module: "TwoStageModel", incompatible_keys: Any) -> None:
    # A module-level function rather than a lambda keeps the model picklable.
    module.classifier.clear_cache()


class TwoStageModel(nn.Module):
    """The part OV-Seg's and SCAN's models share: parameter groups, frozen CLIP towers, the
    final prediction, the set-criterion loss and the two-stage inference.

    Subclasses set `backbone`, `classifier` (`ProposalTextClassifier`), `criterion` and
    `frozen_towers` (module names kept frozen and in eval mode), and implement
    `forward_outputs(images, classes, all_predictions)` and `classify_crops(index, crops,
    outputs, weights, settings)`, the method's CLIP view of one image's masked crops.
    """

    frozen_towers: tuple[str, ...] = ()

    def __init__(self, config: Any, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config
        # the proposal network sees ImageNet-normalised pixels (both official configs' PIXEL_MEAN/STD)
        register_pixel_statistics(self, IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD)
        self.backbone = backbone
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)

    def prepare_pixels(self, images: Tensor) -> Tensor:
        """0..255 RGB -> ImageNet-normalised, zero-padded to `size_divisibility` (detectron2 ImageList)."""
        return pad_to_multiple(normalize_pixels(self, images, images.dtype), self.config.size_divisibility)

    def freeze_towers(self) -> None:
        for name in self.frozen_towers:
            for param in getattr(self, name).parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "TwoStageModel":
        super().train(mode)
        for name in self.frozen_towers:
            getattr(self, name).eval()  # frozen CLIP runs as at inference
        return self

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        backbone = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in backbone]

    def forward_outputs(self, images: Tensor, classes: ClassNames, all_predictions: bool = True) -> TwoStageOutputs:
        raise NotImplementedError

    @staticmethod
    def check_inputs(images: Tensor, classes: ClassNames, method: str) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise MethodConfigError(f"{method}: expected images of shape (N,3,H,W), got {tuple(images.shape)}")
        if len(classes) < 1:
            raise MethodConfigError(f"{method} needs at least one class name")

    def classify_crops(self, index: int, crops: MaskedCrops, outputs: TwoStageOutputs, weights: Tensor, settings: Any) -> Tensor:
        raise NotImplementedError

    def supervised_outputs(self, outputs: TwoStageOutputs) -> tuple[list[Tensor], list[Tensor]]:
        """The predictions the loss sees (all of them; OV-Seg without deep supervision: the last)."""
        return outputs.class_logits, outputs.mask_logits

    def predict_masks(self, images: Tensor, classes: ClassNames) -> TwoStagePrediction:
        outputs = self.forward_outputs(images, classes, all_predictions=False)
        return TwoStagePrediction(outputs.class_logits[-1], outputs.mask_logits[-1], outputs.padded_size)

    def forward(self, images: Tensor, classes: ClassNames) -> TwoStagePrediction:
        return self.predict_masks(images, classes)

    def predict_semantic(self, images: Tensor, classes: ClassNames, settings: ClipBranchSettings | None = None) -> Tensor:
        """(N,3,H,W) on 0..255 -> (N,T,H,W) semantic scores at the input size (`two_stage_semantic`)."""
        settings = settings or self.config.clip_branch
        outputs = self.forward_outputs(images, classes, all_predictions=False)
        mask_probs = upsampled_mask_probs(outputs.mask_logits[-1], outputs.padded_size, outputs.image_size)
        weights = self.classifier.weights(classes)

        def classify(index: int, crops: MaskedCrops) -> Tensor:
            return self.classify_crops(index, crops, outputs, weights, settings)

        return two_stage_semantic(images, outputs.class_logits[-1], mask_probs, settings, classify)

    def loss(self, images: Tensor, targets: Sequence[dict[str, Tensor]], classes: ClassNames) -> dict[str, Tensor]:
        """The weighted set-criterion losses of the last prediction ("loss_ce", "loss_mask",
        "loss_dice") and of the supervised earlier ones ("_0", "_1", ...), against target
        masks padded to the canvas."""
        outputs = self.forward_outputs(images, classes)
        class_logits, mask_logits = self.supervised_outputs(outputs)
        return self.criterion(criterion_outputs(class_logits, mask_logits), pad_instance_targets(targets, outputs.padded_size))


def create_vit_clip(config: Any, method: str, templates: str | Sequence[str] | None, trusted: bool) -> tuple[nn.Module, Tokenizer, list[str]]:
    """The CLIP (a ViT), its tokenizer and the template list a two-stage config describes."""
    clip, tokenizer = create_clip_and_tokenizer(config.arch, config.clip_weights, config.model_config, config.quick_gelu, trusted=trusted)
    if getattr(clip, "visual", None) is None or not hasattr(clip.visual, "transformer"):
        raise MethodConfigError(f"{method} needs a ViT CLIP image tower; {config.arch} has none")
    return clip, tokenizer, resolve_template_list(templates if templates is not None else config.templates)
