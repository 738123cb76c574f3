"""One-to-one matching of predicted (class, mask) queries to ground-truth masks.

Each image is matched on its own: a (Q, G) cost of every query against every target mask,
solved exactly by scipy's `linear_sum_assignment` on the CPU. Unmatched queries are the
"no object" ones. Two cost recipes exist, one per official code base
(docs/methods/mask-classification.md#matcher):

- ``"mask2former"``: -p(class) x class_cost + sigmoid BCE x mask_cost + dice x dice_cost, the
  mask terms on `num_points` uniform points shared by all predictions and targets of the
  image (docs/methods/mask-classification.md#shared-matching-points);
- ``"maskformer"``: -p(class) x class_cost + sigmoid focal x mask_cost + dice x dice_cost on
  every pixel of the prediction grid, targets nearest-downsampled to it.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.point_sampling import point_sample, uniform_point_coords

__all__ = [
    "HungarianMatcher",
    "MatchMode",
    "MatchIndices",
    "pairwise_dice_cost",
    "pairwise_sigmoid_bce_cost",
    "pairwise_sigmoid_focal_cost",
]

#: "mask2former" (point-sampled BCE + dice; SAN, SCAN, EBSeg) or "maskformer" (dense focal + dice; OV-Seg).
MatchMode = Literal["mask2former", "maskformer"]

#: Per image: (query indices, target indices), int64, equally long, query indices ascending.
MatchIndices = list[tuple[Tensor, Tensor]]


def pairwise_sigmoid_bce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid BCE of every prediction row (Q,P) against every target row (G,P) -> (Q,G).

    BCE(x, t) = t * BCE(x, 1) + (1 - t) * BCE(x, 0), so the pairwise means are two matrix
    products instead of a Q x G x P tensor.
    """
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (positive @ targets.T + negative @ (1 - targets).T) / logits.shape[1]


def pairwise_sigmoid_focal_cost(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Mean sigmoid focal loss of every prediction row (Q,P) against every target row (G,P) -> (Q,G).

    The RetinaNet focal loss: alpha weights the positive term and 1 - alpha the negative one.
    """
    prob = logits.sigmoid()
    positive = alpha * (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(
        logits, torch.ones_like(logits), reduction="none"
    )
    negative = (1 - alpha) * prob**gamma * F.binary_cross_entropy_with_logits(
        logits, torch.zeros_like(logits), reduction="none"
    )
    return (positive @ targets.T + negative @ (1 - targets).T) / logits.shape[1]


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss of every sigmoid prediction row (Q,P) against every target row (G,P) -> (Q,G).

    1 - (2|p.t| + 1) / (|p| + |t| + 1): the +1 keeps an empty target against an empty
    prediction at zero cost (docs/methods/mask-classification.md#dice-smoothing).
    """
    prob = logits.sigmoid()
    overlap = 2 * prob @ targets.T
    total = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (overlap + 1) / (total + 1)


class HungarianMatcher(nn.Module):
    """Matches queries to target masks, image by image (docs/methods/mask-classification.md#matcher).

    `outputs` holds ``"pred_logits"`` (B,Q,K+1), the last column being "no object", and
    ``"pred_masks"`` (B,Q,h,w) logits; `targets` holds one ``{"labels": (G,) int64, "masks":
    (G,H,W) float or bool}`` per image. The result is one (query indices, target indices)
    pair per image, min(Q, G) long; an image with G = 0 gets two empty tensors.
    """

    def __init__(
        self,
        class_cost: float = 2.0,
        mask_cost: float = 5.0,
        dice_cost: float = 5.0,
        num_points: int = 12544,
        mode: MatchMode = "mask2former",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if mode not in get_args(MatchMode):
            raise MethodConfigError(f"matcher mode must be one of {list(get_args(MatchMode))}, got {mode!r}")
        if min(class_cost, mask_cost, dice_cost) < 0 or class_cost == mask_cost == dice_cost == 0:
            raise MethodConfigError(
                f"matcher costs must be non-negative and not all zero, got class {class_cost}, mask {mask_cost}, dice {dice_cost}"
            )
        if mode == "mask2former" and num_points < 1:
            raise MethodConfigError(f"matcher num_points must be positive, got {num_points}")
        self.class_cost = float(class_cost)
        self.mask_cost = float(mask_cost)
        self.dice_cost = float(dice_cost)
        self.num_points = int(num_points)
        self.mode: MatchMode = mode
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    @torch.no_grad()
    def cost_matrix(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        labels: Tensor,
        masks: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The (Q, G) matching cost of one image: class logits (Q,K+1), mask logits (Q,h,w),
        labels (G,), masks (G,H,W). Computed in float32 with autocast off."""
        device = mask_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            class_prob = class_logits.float().softmax(-1)
            # -p rather than -log p: the constant 1 of "1 - p" changes no assignment.
            class_term = -class_prob[:, labels]
            pred = mask_logits.float()
            target = masks.to(device=device, dtype=torch.float32)
            if self.mode == "mask2former":
                coords = uniform_point_coords(1, self.num_points, device=device, generator=generator)
                pred_points = point_sample(pred[:, None], coords.expand(pred.shape[0], -1, -1))[:, 0]
                target_points = point_sample(target[:, None], coords.expand(target.shape[0], -1, -1))[:, 0]
                mask_term = pairwise_sigmoid_bce_cost(pred_points, target_points)
                dice_term = pairwise_dice_cost(pred_points, target_points)
            else:
                target = F.interpolate(target[:, None], size=pred.shape[-2:], mode="nearest")[:, 0]
                pred_pixels, target_pixels = pred.flatten(1), target.flatten(1)
                mask_term = pairwise_sigmoid_focal_cost(pred_pixels, target_pixels, self.focal_alpha, self.focal_gamma)
                dice_term = pairwise_dice_cost(pred_pixels, target_pixels)
            return self.class_cost * class_term + self.mask_cost * mask_term + self.dice_cost * dice_term

    @torch.no_grad()
    def forward(
        self,
        outputs: dict[str, Tensor],
        targets: Sequence[dict[str, Tensor]],
        *,
        generator: torch.Generator | None = None,
    ) -> MatchIndices:
        class_logits, mask_logits = outputs["pred_logits"], outputs["pred_masks"]
        if class_logits.dim() != 3 or mask_logits.dim() != 4 or class_logits.shape[:2] != mask_logits.shape[:2]:
            raise MethodConfigError(
                f"matcher needs pred_logits (B,Q,K+1) and pred_masks (B,Q,h,w), got "
                f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}"
            )
        if len(targets) != class_logits.shape[0]:
            raise MethodConfigError(f"matcher got {len(targets)} targets for a batch of {class_logits.shape[0]}")
        num_classes = class_logits.shape[-1] - 1
        matches: MatchIndices = []
        for image, target in enumerate(targets):
            labels = target["labels"]
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                matches.append((empty, empty.clone()))
                continue
            if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
                raise MethodConfigError(
                    f"target labels must lie in [0, {num_classes}) for {num_classes} classes, got "
                    f"{int(labels.min())}..{int(labels.max())}"
                )
            cost = self.cost_matrix(
                class_logits[image], mask_logits[image], labels, target["masks"], generator=generator
            )
            query_idx, target_idx = linear_sum_assignment(cost.cpu().numpy())
            matches.append((torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64)))
        return matches

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, class_cost={self.class_cost}, mask_cost={self.mask_cost}, "
            f"dice_cost={self.dice_cost}, num_points={self.num_points}"
        )
