"""Helpers for the tests that write checkpoints in official layouts and load them back."""

from __future__ import annotations

import torch
from torch import nn


def perturb_parameters(module: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    """Add seeded noise to every parameter, so that no zero-initialised entry is left: a loader
    that skipped a tensor would then change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return module
