"""Comparing a checkpoint's state dict with a model's before loading it."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor


def state_dict_mismatch(state: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """None when `state` fits `expected` key for key and shape for shape; otherwise one line
    naming the missing, unexpected and mis-shaped keys (a few examples of each)."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in state and isinstance(state[key], Tensor) and state[key].shape != expected[key].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:2]})")
    return "; ".join(parts) or None
