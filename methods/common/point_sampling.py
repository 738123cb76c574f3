"""Reading mask logits at continuous points, and choosing which points to read.

Mask2Former-style losses and matching never compare whole masks: they compare mask values
at a few thousand points given in normalised image coordinates, so a prediction at 1/4
resolution and a target at full resolution are read at the same places without resizing
either (docs/methods/mask-classification.md#point-sampling).

Coordinates are (x, y) in [0, 1] x [0, 1], x along the width. Pixel i of a side of n pixels
covers [i/n, (i+1)/n], so its centre is (i + 0.5)/n; with ``align_corners=False`` reading a
centre returns that pixel exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ovbench_methods.common.errors import MethodConfigError

__all__ = [
    "mask_uncertainty",
    "pixel_centre_coords",
    "point_sample",
    "uncertain_point_coords",
    "uniform_point_coords",
]


def point_sample(inputs: Tensor, coords: Tensor, align_corners: bool = False) -> Tensor:
    """Bilinear values of `inputs` (N,C,H,W) at `coords` (N,P,2), (x, y) in [0, 1] -> (N,C,P).

    Points outside the image read zeros beyond the border pixels (grid_sample's zero padding),
    as detectron2's point_sample does.
    """
    if inputs.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != inputs.shape[0]:
        raise MethodConfigError(
            f"point_sample needs inputs (N,C,H,W) and coords (N,P,2), got {tuple(inputs.shape)} and {tuple(coords.shape)}"
        )
    # grid_sample addresses the image in [-1, 1] and wants a (N, H_out, W_out, 2) grid:
    # one output row of P points.
    grid = (2.0 * coords.to(inputs.dtype) - 1.0).unsqueeze(2)
    sampled = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return sampled.squeeze(3)


def uniform_point_coords(
    num_sets: int,
    num_points: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`num_sets` sets of `num_points` points drawn uniformly in the unit square -> (num_sets, P, 2).

    Draws from the global torch RNG unless a `generator` (on `device`) is given.
    """
    return torch.rand(num_sets, num_points, 2, device=device, dtype=dtype, generator=generator)


def pixel_centre_coords(
    height: int, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The centres of every pixel of a height x width grid, row-major -> (H*W, 2) as (x, y).

    Sampling a map at these points returns the map itself, flattened; the tests use this to
    check that point-sampled losses agree with the dense ones.
    """
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)


def mask_uncertainty(logits: Tensor) -> Tensor:
    """How unsure a binary mask logit is: -|logit|, largest (0) on the decision boundary."""
    return -logits.abs()


def uncertain_point_coords(
    mask_logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PointRend's training points for mask logits (N,1,H,W) -> (N, num_points, 2).

    Draws ``int(num_points * oversample_ratio)`` uniform candidates per mask, keeps the
    ``int(importance_sample_ratio * num_points)`` with the highest `mask_uncertainty` of the
    bilinearly read logit, and fills the rest with fresh uniform points (uncertain points
    first). The uncertainty is taken of the logit read at each candidate, not read from an
    uncertainty map, so a point between a +1 and a -1 pixel counts as maximally uncertain
    (docs/methods/mask-classification.md#importance-sampled-loss-points). The caller runs
    this under ``torch.no_grad()``; it draws from the global torch RNG unless given a
    `generator`.
    """
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise MethodConfigError(f"uncertain_point_coords needs mask logits (N,1,H,W), got {tuple(mask_logits.shape)}")
    if oversample_ratio < 1:
        raise MethodConfigError(f"oversample_ratio must be at least 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise MethodConfigError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    if num_points < 1:
        raise MethodConfigError(f"num_points must be positive, got {num_points}")
    num_masks = mask_logits.shape[0]
    device = mask_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = uniform_point_coords(num_masks, num_candidates, device=device, generator=generator)
    candidate_logits = point_sample(mask_logits, candidates, align_corners=False)  # (N,1,S)
    uncertainty = mask_uncertainty(candidate_logits[:, 0])
    chosen = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    coords = torch.gather(candidates, 1, chosen.unsqueeze(-1).expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        fresh = uniform_point_coords(num_masks, num_random, device=device, generator=generator)
        coords = torch.cat([coords, fresh], dim=1)
    return coords
