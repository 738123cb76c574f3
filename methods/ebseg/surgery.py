"""The v-v "surgery" path EBSeg adds to CLIP at inference (docs/methods/ebseg.md#surgery-path).

From the first surgery block on, every block computes, besides its ordinary output, a value-
value attention of its normed input: q = k = v = the block's value projection, the same
scale and additive mask as the ordinary attention, then the output projection. That result is
added to a second residual stream that has no feed-forward step and never feeds back into
CLIP; the ordinary stream is CLIP's own, unchanged. The surgery stream starts as the input of
the first surgery block. After the last block it goes through ln_post and proj and gives the
dense map EBSeg pools its third class embedding (D) from.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ovbench_methods.common.clip import ClipImageEncoder, qkv_projections

__all__ = ["run_dual_blocks", "value_value_attention"]


def value_value_attention(attn: nn.MultiheadAttention, normed: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """softmax(v v^T / sqrt(d) + mask) v, then out_proj, per head, on (N, L, C) normed tokens.

    `attn_mask` is additive, (L, L) or (N * heads, L, L) batch-major over (image, head), as
    `nn.MultiheadAttention` reads it.
    """
    _, _, (value_weight, value_bias) = qkv_projections(attn)
    batch, length, width = normed.shape
    heads = int(attn.num_heads)
    head_dim = width // heads
    values = torch.nn.functional.linear(normed, value_weight, value_bias)
    values = values.reshape(batch, length, heads, head_dim).transpose(1, 2)  # (N, heads, L, d)
    scores = (values @ values.transpose(-2, -1)) * head_dim**-0.5
    if attn_mask is not None:
        # (N * heads, L, L) -> (N, heads, L, L); an (L, L) mask broadcasts as it is.
        scores = scores + (attn_mask.reshape(batch, heads, length, length) if attn_mask.dim() == 3 else attn_mask)
    mixed = scores.softmax(dim=-1) @ values
    return attn.out_proj(mixed.transpose(1, 2).reshape(batch, length, width))


def run_dual_blocks(
    encoder: ClipImageEncoder,
    tokens: Tensor,
    surgery: Tensor | None,
    start: int,
    stop: int,
    attn_mask: Tensor | None = None,
    collect: tuple[int, ...] | set[int] = (),
) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
    """Blocks ``start .. stop-1`` (0-based) on (N, L, C) tokens with the surgery stream beside them.

    `surgery` is the surgery stream entering block `start`, or None when the path starts at
    `start` (it then starts as `tokens`). Returns the ordinary tokens, the surgery stream and
    ``{i: ordinary tokens after block i}`` for each i in `collect`.
    """
    stream = tokens if surgery is None else surgery
    collected: dict[int, Tensor] = {}
    for index in range(start, stop):
        block = encoder.blocks[index]
        layer_scale = getattr(block, "ls_1", nn.Identity())
        shifted = layer_scale(value_value_attention(block.attn, block.ln_1(tokens), attn_mask))
        tokens = encoder.run_blocks(tokens, index, index + 1, attn_mask=attn_mask)[0]
        stream = stream + shifted
        if index in collect:
            collected[index] = tokens
    return tokens, stream, collected
