"""Multi-scale deformable attention in plain PyTorch (no compiled operator).

Deformable DETR's attention, as Mask2Former's pixel decoder uses it: every query reads a few
learned points around its reference point on every feature level of a flattened multi-level
map, bilinearly, and mixes them with weights softmaxed over all levels and points together
(docs/methods/mask-proposal-core.md#multi-scale-deformable-attention).

The official code runs a CUDA kernel and falls back to a `grid_sample` loop without one; the
loop below reads the values the same way (sampling locations in [0, 1] with pixel i of a side
of n covering [i/n, (i+1)/n], zeros outside the map), so weights trained with the kernel give
the same outputs here up to float rounding.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError

__all__ = ["MSDeformAttn", "level_start_index", "ms_deform_attn_sample", "spatial_shapes_tensor"]


def spatial_shapes_tensor(shapes: Sequence[tuple[int, int]] | Tensor, device: torch.device | str | None = None) -> Tensor:
    """The levels' (H, W) as the (L, 2) int64 tensor the module takes."""
    if isinstance(shapes, Tensor):
        return shapes.to(device=device, dtype=torch.long)
    return torch.as_tensor([[int(h), int(w)] for h, w in shapes], dtype=torch.long, device=device)


def level_start_index(spatial_shapes: Tensor) -> Tensor:
    """Where each level starts in the flattened sequence: 0, H0*W0, H0*W0 + H1*W1, ..."""
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def _level_sizes(spatial_shapes: Tensor | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_sample(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The attention core: weighted bilinear reads of per-head values at sampling locations.

    value (N, S, M, D) with S = sum of H_l*W_l (levels flattened row-major, level after level),
    sampling_locations (N, Lq, M, L, P, 2) as (x, y) in [0, 1], attention_weights
    (N, Lq, M, L, P) -> (N, Lq, M*D), heads concatenated.
    """
    if value.dim() != 4 or sampling_locations.dim() != 6 or attention_weights.dim() != 5:
        raise MethodConfigError(
            "ms_deform_attn_sample needs value (N,S,M,D), sampling_locations (N,Lq,M,L,P,2) and "
            f"attention_weights (N,Lq,M,L,P), got {tuple(value.shape)}, {tuple(sampling_locations.shape)} "
            f"and {tuple(attention_weights.shape)}"
        )
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = _level_sizes(spatial_shapes)
    if len(sizes) != num_levels or sum(h * w for h, w in sizes) != value.shape[1]:
        raise MethodConfigError(
            f"spatial shapes {sizes} do not cover the {value.shape[1]} values in {num_levels} levels"
        )
    per_level = value.split([h * w for h, w in sizes], dim=1)
    # grid_sample addresses a map in [-1, 1]; with align_corners=False its -1 is the outer
    # edge of the first pixel, which is location 0 here.
    grids = sampling_locations * 2.0 - 1.0
    sampled = []
    for level, (height, width) in enumerate(sizes):
        # (N, H*W, M, D) -> (N*M, D, H, W): every head of every image is its own map.
        level_map = per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2): queries are the rows of the output "image".
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries, num_points, 2)
        sampled.append(
            F.grid_sample(level_map, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (N*M, D, Lq, P)
    stacked = torch.stack(sampled, dim=3)  # (N*M, D, Lq, L, P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, num_levels, num_points)
    mixed = (stacked * weights).sum(dim=(3, 4))  # (N*M, D, Lq)
    return mixed.reshape(batch, heads * head_dim, num_queries).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the official module's parameters and their names.

    `sampling_offsets` (d_model -> heads*levels*points*2), `attention_weights`
    (d_model -> heads*levels*points), `value_proj` and `output_proj` (d_model -> d_model) are
    the four Linear layers of the official module, so its state dict loads unchanged. Defaults
    are Mask2Former's: 256 channels, 4 levels, 8 heads, 4 points (its pixel decoder passes 3
    levels).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        for name, number in (("d_model", d_model), ("n_levels", n_levels), ("n_heads", n_heads), ("n_points", n_points)):
            if number < 1:
                raise MethodConfigError(f"MSDeformAttn {name} must be positive, got {number}")
        if d_model % n_heads:
            raise MethodConfigError(f"MSDeformAttn d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: offsets start as a fixed star, attention uniform.

        Offset weights are zero and the bias puts head h's points on the ray at angle
        2*pi*h/heads, scaled so the larger coordinate is 1, point p at distance p+1 (in pixels
        of each level); attention weights and bias are zero (uniform after the softmax); the
        value and output projections are Xavier-uniform with zero bias.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        star = directions[:, None, None, :] * distances[None, None, :, None]  # (M, 1, P, 2)
        star = star.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(star.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def sampling_locations(self, query: Tensor, reference_points: Tensor, spatial_shapes: Tensor) -> Tensor:
        """Where each query reads: (N, Lq, M, L, P, 2), (x, y) in [0, 1] (outside is allowed).

        Reference points (N, Lq, L, 2) are moved by the offsets in pixels of each level;
        reference boxes (N, Lq, L, 4) as (cx, cy, w, h) are moved by offset / points * half
        the box size.
        """
        batch, num_queries, _ = query.shape
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        if reference_points.shape[-1] == 2:
            # (W, H) per level: offsets are in pixels, x along the width.
            normaliser = spatial_shapes.flip(-1).to(offsets.dtype)
            return reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        if reference_points.shape[-1] == 4:
            centres = reference_points[:, :, None, :, None, :2]
            half_sizes = reference_points[:, :, None, :, None, 2:] * 0.5
            return centres + offsets / self.n_points * half_sizes
        raise MethodConfigError(
            f"reference points must end in 2 (points) or 4 (boxes), got {tuple(reference_points.shape)}"
        )

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor | None = None,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """query (N, Lq, C), reference_points (N, Lq, L, 2 or 4) in [0, 1] of the padded map,
        input_flatten (N, S, C), input_spatial_shapes (L, 2) as (H, W), the levels' start
        indices (unused here: the shapes determine them; kept for the official signature),
        input_padding_mask (N, S) True on padding, whose values are zeroed -> (N, Lq, C)."""
        if query.dim() != 3 or input_flatten.dim() != 3 or query.shape[-1] != self.d_model:
            raise MethodConfigError(
                f"MSDeformAttn needs query (N,Lq,{self.d_model}) and input (N,S,{self.d_model}), "
                f"got {tuple(query.shape)} and {tuple(input_flatten.shape)}"
            )
        batch, num_queries, _ = query.shape
        spatial_shapes = spatial_shapes_tensor(input_spatial_shapes, device=query.device)
        if spatial_shapes.shape != (self.n_levels, 2):
            raise MethodConfigError(
                f"MSDeformAttn has {self.n_levels} levels, got spatial shapes {tuple(spatial_shapes.shape)}"
            )
        total = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
        if input_flatten.shape[:2] != (batch, total):
            raise MethodConfigError(
                f"input has {input_flatten.shape[1]} positions for batch {input_flatten.shape[0]}, "
                f"the spatial shapes say {total} for batch {batch}"
            )
        if reference_points.shape[:3] != (batch, num_queries, self.n_levels):
            raise MethodConfigError(
                f"reference points must be ({batch},{num_queries},{self.n_levels},2|4), got {tuple(reference_points.shape)}"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            if input_padding_mask.shape != (batch, total):
                raise MethodConfigError(
                    f"padding mask must be ({batch},{total}), got {tuple(input_padding_mask.shape)}"
                )
            value = value.masked_fill(input_padding_mask[..., None].bool(), 0.0)
        value = value.view(batch, total, self.n_heads, self.d_model // self.n_heads)
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(dim=-1).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        locations = self.sampling_locations(query, reference_points, spatial_shapes)
        output = ms_deform_attn_sample(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
