"""The set-prediction loss of mask-classification models (docs/methods/mask-classification.md#set-criterion).

Every output (the final one and each deep-supervision output) is matched to the targets on
its own, then scored with three weighted terms: cross-entropy over the K classes plus "no
object" for every query, and a binary mask loss plus dice for every matched (query, target)
pair. The mask terms are point-sampled ("mask2former": SAN, SCAN, EBSeg) or dense
("maskformer": OV-Seg).

The vocabulary is open, so K is read from the logits of each call and nothing depends on a
fixed class count: the module holds no buffers and no parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.matcher import HungarianMatcher, MatchIndices
from ovbench_methods.common.point_sampling import point_sample, uncertain_point_coords

__all__ = [
    "CriterionMode",
    "SetCriterion",
    "SetCriterionConfig",
    "average_num_masks",
    "class_loss_name",
    "dense_mask_losses",
    "dice_loss",
    "no_object_class_weights",
    "point_sampled_mask_losses",
    "sigmoid_bce_loss",
    "sigmoid_focal_loss",
]

#: "mask2former" (point-sampled BCE + dice; SAN, SCAN, EBSeg) or "maskformer" (dense focal + dice; OV-Seg).
CriterionMode = Literal["mask2former", "maskformer"]


@dataclass
class SetCriterionConfig:
    """Loss weights and sampling settings; the defaults are Mask2Former's (SAN, SCAN).

    `class_weight`, `mask_weight`, `dice_weight` scale the three losses and, unless the
    `matcher_*` fields say otherwise, are also the matching costs (the official codes build
    the matcher from the loss weights). `maskformer()` gives OV-Seg's setting.
    """

    #: which mask losses and matching costs (docs/methods/mask-classification.md#modes).
    mode: CriterionMode = "mask2former"
    #: weight of the K+1-way cross-entropy ("loss_ce").
    class_weight: float = 2.0
    #: weight of the binary mask loss ("loss_mask"): point BCE (mask2former) or dense focal (maskformer).
    mask_weight: float = 5.0
    #: weight of the dice loss ("loss_dice").
    dice_weight: float = 5.0
    #: cross-entropy weight of the "no object" class; every real class weighs 1.
    eos_coef: float = 0.1
    #: points per mask for the mask2former loss and matching (112 x 112).
    num_points: int = 12544
    #: candidates drawn per loss point before keeping the most uncertain.
    oversample_ratio: float = 3.0
    #: share of the loss points taken by uncertainty; the rest are uniform.
    importance_sample_ratio: float = 0.75
    #: focal loss balance (maskformer mode).
    focal_alpha: float = 0.25
    #: focal loss exponent (maskformer mode).
    focal_gamma: float = 2.0
    #: matching cost of the class term; None = class_weight (EBSeg matches with 2 but weighs CE 1.5).
    matcher_class_cost: float | None = None
    #: matching cost of the mask term; None = mask_weight.
    matcher_mask_cost: float | None = None
    #: matching cost of the dice term; None = dice_weight.
    matcher_dice_cost: float | None = None
    #: further class-logit outputs scored with the same matching: output key -> CE weight
    #: (EBSeg {"pred_logits_1": 1.5}); see `class_loss_name` for their loss keys.
    extra_class_heads: dict[str, float] = field(default_factory=dict)
    #: how many deep-supervision outputs are scored (the first n); None = all. SCAN's
    #: weight table covers one output fewer than its decoder makes.
    supervised_aux_outputs: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in get_args(CriterionMode):
            raise MethodConfigError(f"criterion mode must be one of {list(get_args(CriterionMode))}, got {self.mode!r}")
        weights = {"class_weight": self.class_weight, "mask_weight": self.mask_weight, "dice_weight": self.dice_weight}
        weights.update({f"matcher_{k}": v for k, v in self._matcher_overrides().items() if v is not None})
        for name, value in weights.items():
            if value < 0:
                raise MethodConfigError(f"{name} must not be negative, got {value}")
        for key, value in self.extra_class_heads.items():
            if value < 0:
                raise MethodConfigError(f"extra_class_heads[{key!r}] must not be negative, got {value}")
            if key in ("pred_logits", "pred_masks", "aux_outputs"):
                raise MethodConfigError(f"extra_class_heads cannot name the reserved output {key!r}")
        if not 0.0 <= self.eos_coef <= 1.0:
            raise MethodConfigError(f"eos_coef must be in [0, 1], got {self.eos_coef}")
        if self.num_points < 1:
            raise MethodConfigError(f"num_points must be positive, got {self.num_points}")
        if self.oversample_ratio < 1:
            raise MethodConfigError(f"oversample_ratio must be at least 1, got {self.oversample_ratio}")
        if not 0.0 <= self.importance_sample_ratio <= 1.0:
            raise MethodConfigError(f"importance_sample_ratio must be in [0, 1], got {self.importance_sample_ratio}")
        if not 0.0 <= self.focal_alpha <= 1.0:
            raise MethodConfigError(f"focal_alpha must be in [0, 1], got {self.focal_alpha}")
        if self.focal_gamma < 0:
            raise MethodConfigError(f"focal_gamma must not be negative, got {self.focal_gamma}")
        if self.supervised_aux_outputs is not None and self.supervised_aux_outputs < 0:
            raise MethodConfigError(f"supervised_aux_outputs must not be negative, got {self.supervised_aux_outputs}")

    def _matcher_overrides(self) -> dict[str, float | None]:
        return {"class_cost": self.matcher_class_cost, "mask_cost": self.matcher_mask_cost, "dice_cost": self.matcher_dice_cost}

    @classmethod
    def maskformer(cls, **overrides: Any) -> "SetCriterionConfig":
        """MaskFormer's setting (OV-Seg): CE 1, focal 20, dice 1, dense losses."""
        settings: dict[str, Any] = {"mode": "maskformer", "class_weight": 1.0, "mask_weight": 20.0, "dice_weight": 1.0}
        settings.update(overrides)
        return cls(**settings)

    def build_matcher(self) -> HungarianMatcher:
        """The matcher these settings describe."""
        return HungarianMatcher(
            class_cost=self.class_weight if self.matcher_class_cost is None else self.matcher_class_cost,
            mask_cost=self.mask_weight if self.matcher_mask_cost is None else self.matcher_mask_cost,
            dice_cost=self.dice_weight if self.matcher_dice_cost is None else self.matcher_dice_cost,
            num_points=self.num_points,
            mode=self.mode,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
        )


def class_loss_name(output_key: str) -> str:
    """The loss key of a class-logit output: "loss_ce" for "pred_logits"; an extra head
    "pred_logits_<tag>" gives "<tag>_loss_ce" (EBSeg's "1_loss_ce"), any other key "<key>_loss_ce".
    Deep-supervision copies then add "_<i>"."""
    if output_key == "pred_logits":
        return "loss_ce"
    prefix = "pred_logits_"
    tag = output_key[len(prefix):] if output_key.startswith(prefix) and len(output_key) > len(prefix) else output_key
    return f"{tag}_loss_ce"


def sigmoid_bce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sigmoid BCE of rows (N,P) against targets (N,P): mean over each row, summed, / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, num_masks: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """RetinaNet focal loss of rows (N,P): mean over each row, summed, / num_masks."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob_of_truth = prob * targets + (1 - prob) * (1 - targets)
    balance = alpha * targets + (1 - alpha) * (1 - targets)
    return (balance * (1 - prob_of_truth) ** gamma * bce).mean(1).sum() / num_masks


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss of sigmoid rows (N,P) against targets (N,P), smoothed by +1, summed, / num_masks
    (docs/methods/mask-classification.md#dice-smoothing)."""
    prob = logits.sigmoid()
    overlap = 2 * (prob * targets).sum(-1)
    total = prob.sum(-1) + targets.sum(-1)
    return (1 - (overlap + 1) / (total + 1)).sum() / num_masks


def point_sampled_mask_losses(
    pred_masks: Tensor, target_masks: Tensor, point_coords: Tensor, num_masks: float
) -> tuple[Tensor, Tensor]:
    """(BCE, dice) of matched mask logits (N,h,w) against targets (N,H,W) read at `point_coords`
    (N,P,2) in normalised (x, y); the sizes need not agree. Targets are read bilinearly too,
    without gradient (docs/methods/mask-classification.md#point-sampling)."""
    with torch.no_grad():
        target_points = point_sample(target_masks[:, None].to(pred_masks.dtype), point_coords)[:, 0]
    pred_points = point_sample(pred_masks[:, None], point_coords)[:, 0]
    return sigmoid_bce_loss(pred_points, target_points, num_masks), dice_loss(pred_points, target_points, num_masks)


def dense_mask_losses(
    pred_masks: Tensor, target_masks: Tensor, num_masks: float, alpha: float = 0.25, gamma: float = 2.0
) -> tuple[Tensor, Tensor]:
    """(focal, dice) of matched mask logits (N,h,w), bilinearly upsampled to the targets'
    (N,H,W) size, on every pixel (docs/methods/mask-classification.md#dense-mask-losses)."""
    upsampled = F.interpolate(pred_masks[:, None], size=target_masks.shape[-2:], mode="bilinear", align_corners=False)
    pred_pixels = upsampled.flatten(1)
    target_pixels = target_masks.to(pred_pixels.dtype).flatten(1)
    return (
        sigmoid_focal_loss(pred_pixels, target_pixels, num_masks, alpha, gamma),
        dice_loss(pred_pixels, target_pixels, num_masks),
    )


def no_object_class_weights(num_classes: int, eos_coef: float, device: torch.device | str | None = None) -> Tensor:
    """Cross-entropy class weights (K+1,): 1 for each class, `eos_coef` for "no object" (last)
    (docs/methods/mask-classification.md#no-object-weight)."""
    weights = torch.ones(num_classes + 1, device=device)
    weights[-1] = eos_coef
    return weights


def average_num_masks(targets: Sequence[dict[str, Tensor]], device: torch.device | str | None = None) -> float:
    """The loss normaliser: target masks in the batch, averaged over processes, at least 1
    (docs/methods/mask-classification.md#mask-count-normaliser)."""
    count = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        world_size = torch.distributed.get_world_size()
    return float(torch.clamp(count / world_size, min=1).item())


class SetCriterion(nn.Module):
    """Weighted set losses of a mask-classification model (docs/methods/mask-classification.md#set-criterion).

    `outputs` has ``"pred_logits"`` (B,Q,K+1), ``"pred_masks"`` (B,Q,h,w), optionally the
    extra class heads named in the config and ``"aux_outputs"``, a list of dicts with the
    same keys. `targets` has one ``{"labels": (G,) int64, "masks": (G,H,W)}`` per image.
    Returns the weighted losses: "loss_ce", "loss_mask", "loss_dice", one key per extra
    head (docs/methods/mask-classification.md#extra-class-heads), and the same with "_<i>"
    for deep-supervision output i (docs/methods/mask-classification.md#deep-supervision). With
    ``return_indices=True`` it also returns the matching of every output, deep-supervision
    outputs first and the final output last (the order EBSeg's criterion returns them in).
    """

    def __init__(self, config: SetCriterionConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else SetCriterionConfig()
        self.matcher = self.config.build_matcher()

    def weight_dict(self) -> dict[str, float]:
        """Base loss key -> weight, before any "_<i>" suffix."""
        weights = {
            "loss_ce": self.config.class_weight,
            "loss_mask": self.config.mask_weight,
            "loss_dice": self.config.dice_weight,
        }
        weights.update({class_loss_name(key): w for key, w in self.config.extra_class_heads.items()})
        return weights

    def forward(
        self,
        outputs: dict[str, Any],
        targets: Sequence[dict[str, Tensor]],
        return_indices: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], list[MatchIndices]]:
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        aux_outputs = list(outputs.get("aux_outputs") or [])
        if self.config.supervised_aux_outputs is not None:
            aux_outputs = aux_outputs[: self.config.supervised_aux_outputs]
        num_masks = average_num_masks(targets, device=final["pred_logits"].device)

        losses: dict[str, Tensor] = {}
        final_indices = self.matcher(final, targets, generator=generator)
        losses.update(self._output_losses(final, targets, final_indices, num_masks, generator))
        all_indices: list[MatchIndices] = []
        for i, aux in enumerate(aux_outputs):
            indices = self.matcher(aux, targets, generator=generator)
            all_indices.append(indices)
            losses.update({f"{k}_{i}": v for k, v in self._output_losses(aux, targets, indices, num_masks, generator).items()})
        all_indices.append(final_indices)
        if return_indices:
            return losses, all_indices
        return losses

    def _output_losses(
        self,
        output: dict[str, Tensor],
        targets: Sequence[dict[str, Tensor]],
        indices: MatchIndices,
        num_masks: float,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        weights = self.weight_dict()
        losses = {"loss_ce": self.class_loss(output["pred_logits"], targets, indices)}
        for key in self.config.extra_class_heads:
            if key in output:
                if output[key].shape != output["pred_logits"].shape:
                    raise MethodConfigError(
                        f"{key} must have the shape of pred_logits {tuple(output['pred_logits'].shape)}, "
                        f"got {tuple(output[key].shape)}"
                    )
                losses[class_loss_name(key)] = self.class_loss(output[key], targets, indices, output_key=key)
        mask_loss, dice = self.mask_losses(output["pred_masks"], targets, indices, num_masks, generator=generator)
        losses["loss_mask"], losses["loss_dice"] = mask_loss, dice
        return {name: value * weights[name] for name, value in losses.items()}

    def class_loss(
        self,
        class_logits: Tensor,
        targets: Sequence[dict[str, Tensor]],
        indices: MatchIndices,
        output_key: str = "pred_logits",
    ) -> Tensor:
        """Unweighted K+1-way cross-entropy of (B,Q,K+1) logits: a matched query's target is
        its mask's label, every other query's is K ("no object"); the mean is weighted by the
        class weights, as F.cross_entropy's weighted mean is (docs/methods/mask-classification.md#no-object-weight)."""
        if class_logits.dim() != 3 or class_logits.shape[-1] < 2:
            raise MethodConfigError(f"{output_key} must be (B,Q,K+1) with K >= 1, got {tuple(class_logits.shape)}")
        logits = class_logits.float()
        num_classes = logits.shape[-1] - 1
        device = logits.device
        query_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=device)
        images, queries = _matched_queries(indices, device)
        matched_labels = [t["labels"].to(device)[target_idx.to(device)] for t, (_, target_idx) in zip(targets, indices)]
        if matched_labels:
            query_classes[images, queries] = torch.cat(matched_labels)
        weights = no_object_class_weights(num_classes, self.config.eos_coef, device=device)
        return F.cross_entropy(logits.transpose(1, 2), query_classes, weights)

    def mask_losses(
        self,
        mask_logits: Tensor,
        targets: Sequence[dict[str, Tensor]],
        indices: MatchIndices,
        num_masks: float,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Unweighted (mask, dice) losses of the matched (B,Q,h,w) mask logits."""
        device = mask_logits.device
        images, queries = _matched_queries(indices, device)
        if images.numel() == 0:
            # Nothing matched (no targets anywhere): zero, still attached to the graph.
            zero = mask_logits.sum() * 0.0
            return zero, zero.clone()
        pred = mask_logits[images, queries]
        target = _matched_target_masks(targets, indices, device).to(pred.dtype)
        if self.config.mode == "maskformer":
            return dense_mask_losses(pred, target, num_masks, self.config.focal_alpha, self.config.focal_gamma)
        with torch.no_grad():
            coords = uncertain_point_coords(
                pred[:, None].detach(),
                self.config.num_points,
                self.config.oversample_ratio,
                self.config.importance_sample_ratio,
                generator=generator,
            )
        return point_sampled_mask_losses(pred, target, coords, num_masks)


def _matched_queries(indices: MatchIndices, device: torch.device) -> tuple[Tensor, Tensor]:
    """(image index, query index) of every matched query, image by image."""
    if not indices:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty.clone()
    images = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
    queries = torch.cat([q for q, _ in indices]).to(device)
    return images, queries


def _matched_target_masks(targets: Sequence[dict[str, Tensor]], indices: MatchIndices, device: torch.device) -> Tensor:
    """The matched target masks (N,H,W), in the order of `_matched_queries`. Images of
    different sizes are zero-padded at the bottom and right to the largest, as the official
    batching of targets does."""
    height = max(t["masks"].shape[-2] for t in targets)
    width = max(t["masks"].shape[-1] for t in targets)
    picked = []
    for target, (_, target_idx) in zip(targets, indices):
        masks = target["masks"].to(device)[target_idx.to(device)].float()
        if masks.shape[-2:] != (height, width):
            masks = F.pad(masks, (0, width - masks.shape[-1], 0, height - masks.shape[-2]))
        picked.append(masks)
    return torch.cat(picked)
