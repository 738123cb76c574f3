"""Between semantic maps and sets of (class, mask) pairs.

Mask-classification models predict Q (class distribution, mask) pairs; a semantic score
map is each class's probability mass summed over the queries' soft masks
(docs/methods/mask-classification.md#semantic-inference). Training goes the other way: a
semantic label map becomes one binary target mask per class present
(docs/methods/mask-classification.md#targets-from-semantic-labels).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ovbench_methods.common.errors import MethodConfigError

__all__ = [
    "combine_mask_probabilities",
    "criterion_outputs",
    "pad_instance_targets",
    "semantic_from_masks",
    "semantic_to_instance_targets",
]


def combine_mask_probabilities(class_probs: Tensor, mask_probs: Tensor) -> Tensor:
    """Semantic scores (B,K,H,W) = sum over queries of class probabilities (B,Q,K) times mask
    probabilities (B,Q,H,W). For methods that adjust the class probabilities first."""
    if class_probs.dim() != 3 or mask_probs.dim() != 4 or class_probs.shape[:2] != mask_probs.shape[:2]:
        raise MethodConfigError(
            f"need class probabilities (B,Q,K) and mask probabilities (B,Q,H,W), got "
            f"{tuple(class_probs.shape)} and {tuple(mask_probs.shape)}"
        )
    return torch.einsum("bqk,bqhw->bkhw", class_probs, mask_probs.to(class_probs.dtype))


def semantic_from_masks(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Mask2Former's semantic inference: softmax over the K+1 logits (B,Q,K+1), "no object"
    (last) dropped after the softmax, times sigmoid masks (B,Q,H,W), summed over queries -> (B,K,H,W)."""
    if class_logits.dim() != 3 or class_logits.shape[-1] < 2:
        raise MethodConfigError(f"class logits must be (B,Q,K+1) with K >= 1, got {tuple(class_logits.shape)}")
    class_probs = class_logits.softmax(-1)[..., :-1]
    return combine_mask_probabilities(class_probs, mask_logits.sigmoid())


def semantic_to_instance_targets(
    targets: Tensor, num_classes: int, ignore_index: int = 255
) -> list[dict[str, Tensor]]:
    """Per-image mask targets from semantic labels (B,H,W) int64.

    Each image gets ``{"labels": (G,) int64, "masks": (G,H,W) float32}``: one binary mask per
    class id present, in ascending id order; `ignore_index`, negative ids and ids >=
    `num_classes` get no mask (their pixels are background of every mask). An image with no
    valid pixel gets G = 0.
    """
    if targets.dim() != 3:
        raise MethodConfigError(f"semantic targets must be (B,H,W), got {tuple(targets.shape)}")
    if num_classes < 1:
        raise MethodConfigError(f"num_classes must be positive, got {num_classes}")
    result = []
    for label_map in targets:
        present = torch.unique(label_map)
        keep = (present >= 0) & (present < num_classes) & (present != ignore_index)
        labels = present[keep].to(torch.int64)
        masks = (label_map[None] == labels[:, None, None]).to(torch.float32)
        result.append({"labels": labels, "masks": masks})
    return result


def pad_instance_targets(targets: Sequence[dict[str, Tensor]], padded_size: Sequence[int]) -> list[dict[str, Tensor]]:
    """Target masks zero-padded at the bottom and right to the canvas the predicted masks
    cover (detectron2's ImageList padding; the official `prepare_targets` of MaskFormer,
    Mask2Former and SAN does the same)."""
    height, width = int(padded_size[0]), int(padded_size[1])
    padded = []
    for target in targets:
        masks = target["masks"]
        pad_h, pad_w = height - masks.shape[-2], width - masks.shape[-1]
        if pad_h < 0 or pad_w < 0:
            raise MethodConfigError(f"target masks {tuple(masks.shape[-2:])} are larger than the padded images {(height, width)}")
        if pad_h or pad_w:
            masks = F.pad(masks, (0, pad_w, 0, pad_h))
        padded.append({"labels": target["labels"], "masks": masks})
    return padded


def criterion_outputs(class_logits: Sequence[Tensor], mask_logits: Sequence[Tensor]) -> dict[str, Any]:
    """The set criterion's input from per-prediction lists (deep supervision first, final last)."""
    return {
        "pred_logits": class_logits[-1],
        "pred_masks": mask_logits[-1],
        "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(class_logits[:-1], mask_logits[:-1])],
    }
