"""Optimiser groups of the methods that fine-tune CLIP at a fraction of the base rate
(CAT-Seg and GSNet: q/v weights at 0.01x; SED: the whole image tower at 0.01x)."""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

__all__ = ["head_and_clip_groups"]


def head_and_clip_groups(
    head: Sequence[nn.Parameter], clip: Sequence[nn.Parameter], base_lr: float, weight_decay: float, clip_multiplier: float
) -> list[dict[str, Any]]:
    """New modules at `base_lr`, trainable CLIP weights at `base_lr * clip_multiplier`; frozen
    weights belong to neither list and so to no group. Empty groups are left out."""
    groups = []
    if head:
        groups.append({"params": list(head), "lr": base_lr, "weight_decay": weight_decay})
    if clip:
        groups.append({"params": list(clip), "lr": base_lr * float(clip_multiplier), "weight_decay": weight_decay})
    return groups
