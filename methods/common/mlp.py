"""The small multi-layer perceptron of the DETR family (docs/methods/mask-proposal-core.md#heads).

DETR, MaskFormer, Mask2Former, SAN, OV-Seg and SCAN all use the same head: `num_layers` affine
layers held in a ModuleList called ``layers`` (so official keys read ``<head>.layers.<i>.weight``),
ReLU between them and none after the last.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError

__all__ = ["ProjectionMLP"]


class ProjectionMLP(nn.Module):
    """`num_layers` affine layers with ReLU between them; linear on (..., C) or 1x1 convs on
    (N, C, H, W) (``dense=True``). Hidden layers have `hidden_dim` channels."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, dense: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise MethodConfigError(f"an MLP needs at least one layer, got {num_layers}")
        widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        make = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if dense else nn.Linear
        self.layers = nn.ModuleList(make(i, o) for i, o in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = F.relu(x)
        return x
