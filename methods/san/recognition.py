"""SAN's recognition head: CLIP's last blocks rerun with Q extra "SOS" tokens whose
attention the side adapter's bias steers, so that each SOS token pools CLIP features over
its mask proposal (docs/methods/san.md#recognition-head).

Sequence order: [Q SOS tokens; CLS; h*w patches], every SOS token a copy of CLIP's CLS token
after block `feature_last_layer`. The blocks are CLIP's own frozen blocks, called through
`ClipImageEncoder.run_blocks` with an additive float mask of shape (B*heads, L, L),
L = Q + 1 + h*w, batch-major over (image, head) as `nn.MultiheadAttention` reads it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ovbench_methods.common.clip import ClipImageEncoder

__all__ = ["BLOCKED", "build_attention_mask", "downsample_bias", "recognize"]

#: The additive mask value the official code uses for a blocked entry (not -inf: a row is
#: never fully blocked, and -100 stays finite in fp16).
BLOCKED = -100.0


def downsample_bias(bias: Tensor, grid: tuple[int, int], method: str = "max") -> Tensor:
    """(B, heads, Q, H, W) bias on the side grid -> (B, heads, Q, h, w) on the CLIP grid
    (docs/methods/san.md#max-pooled-attention-bias)."""
    batch, heads, queries, height, width = bias.shape
    flat = bias.reshape(batch, heads * queries, height, width)
    if method == "max":
        pooled = F.adaptive_max_pool2d(flat, output_size=tuple(grid))
    elif method == "avg":
        pooled = F.adaptive_avg_pool2d(flat, output_size=tuple(grid))
    else:
        pooled = F.interpolate(flat, size=tuple(grid), mode=method, align_corners=False if method != "nearest" else None)
    return pooled.reshape(batch, heads, queries, grid[0], grid[1])


def build_attention_mask(bias: Tensor, num_heads: int) -> Tensor:
    """The additive mask (B*num_heads, L, L) of one recognition pass
    (docs/methods/san.md#attention-mask-rules), from a bias (B, heads, Q, h, w) already on the
    CLIP grid, `heads` either 1 (shared) or `num_heads`:

    - every row is blocked (-100) from every SOS column, except SOS token i from itself;
    - SOS rows are blocked from the CLS column, and see patch j with the bias of their query;
    - CLS and patch rows see CLS and patches with 0, i.e. CLIP's own attention.
    """
    batch, heads, queries = bias.shape[:3]
    if heads not in (1, num_heads):
        raise ValueError(f"attention bias has {heads} heads; CLIP has {num_heads} (or use 1)")
    bias = bias.flatten(3)
    if heads == 1:
        bias = bias.expand(-1, num_heads, -1, -1)
    num_patches = bias.shape[-1]
    length = queries + 1 + num_patches
    template = bias.new_zeros(length, length)
    template[:, :queries] = BLOCKED
    sos = torch.arange(queries, device=bias.device)
    template[sos, sos] = 0.0
    template[:queries, queries] = BLOCKED
    mask = template.expand(batch * num_heads, -1, -1).clone()
    mask[:, :queries, queries + 1 :] = bias.reshape(batch * num_heads, queries, num_patches)
    return mask


def recognize(
    encoder: ClipImageEncoder,
    tokens: Tensor,
    grid: tuple[int, int],
    biases: Sequence[Tensor],
    first_block: int,
    downsample: str = "max",
    normalize: bool = True,
) -> Tensor:
    """One embedding per query: (B, Q, D), L2-normalised unless told otherwise.

    tokens: (B, 1 + h*w, C) CLIP tokens after block `first_block` (0-based index of the first
    block to rerun, i.e. `feature_last_layer`); biases: one (B, heads, Q, H, W) bias for all
    rerun blocks, or one per rerun block.
    """
    num_blocks = encoder.num_blocks - first_block
    if len(biases) not in (1, num_blocks):
        raise ValueError(f"got {len(biases)} attention biases for {num_blocks} recognition blocks")
    num_heads = int(encoder.blocks[first_block].attn.num_heads)
    masks = [build_attention_mask(downsample_bias(b, grid, downsample), num_heads) for b in biases]
    queries = biases[0].shape[2]
    cls = tokens[:, :1]
    x = torch.cat([cls.expand(-1, queries, -1), tokens], dim=1)
    if len(masks) == 1:
        x, _ = encoder.run_blocks(x, first_block, encoder.num_blocks, attn_mask=masks[0].to(x.dtype))
    else:
        for offset, mask in enumerate(masks):
            x, _ = encoder.run_blocks(x, first_block + offset, first_block + offset + 1, attn_mask=mask.to(x.dtype))
    embeddings = encoder.project(x[:, :queries])
    return F.normalize(embeddings, dim=-1) if normalize else embeddings
