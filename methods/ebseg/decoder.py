"""EBSeg's AdaB decoder heads on the shared masked-attention decoder
(docs/methods/ebseg.md#adab-decoder).

The layers are Mask2Former's (`MaskedAttentionDecoder`, built without its class MLP). On the
learned initial queries and after every layer, three heads read the normed query states:

- masks: `mask_embed` dotted with the mask features, as in Mask2Former;
- embedding A: the mask features mean-pooled under the query's own binarised mask (logit > 0,
  no gradient through the mask), `pool_proj` (LayerNorm + Linear), plus the query state,
  `mask_embed1` into CLIP's joint space, L2-normalised and scaled by the learnable
  `logit_scale` clamped to at most 10;
- the attention bias of the recognition head (SAN's): `attn_proj` maps every mask-feature
  pixel to one vector per CLIP head, each dotted with the query's mask embedding, then the
  affine `bias_scaling` (a Linear(1, 1)) -> (B, heads, Q, H, W).

Module names follow the official predictor, so ``sem_seg_head.predictor.*`` of an official
file loads with no missing or unexpected keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.mask_pooling import mask_pool
from ovbench_methods.common.mlp import ProjectionMLP
from ovbench_methods.common.query_decoder import MaskedAttentionDecoder

__all__ = ["AdaBDecoder", "AdaBOutput"]


@dataclass
class AdaBOutput:
    """One entry per prediction, initial queries first, the final prediction last.

    embeddings: (B, Q, D) scaled unit A embeddings; mask_logits: (B, Q, H, W) at the mask
    features' resolution; attn_biases: (B, heads, Q, H, W)."""

    embeddings: list[Tensor]
    mask_logits: list[Tensor]
    attn_biases: list[Tensor]


class AdaBDecoder(MaskedAttentionDecoder):
    """`MaskedAttentionDecoder` plus EBSeg's A-embedding and attention-bias heads (module docstring)."""

    def __init__(
        self,
        in_channels: int = 256,
        *,
        embed_dim: int = 512,
        attn_bias_heads: int = 12,
        embedding_scale_max: float = 10.0,
        **decoder_settings,
    ) -> None:
        super().__init__(in_channels, class_head=False, **decoder_settings)
        if embed_dim < 1 or attn_bias_heads < 1:
            raise MethodConfigError(f"embed_dim and attn_bias_heads must be positive, got {embed_dim} and {attn_bias_heads}")
        hidden, mask_dim = self.hidden_dim, self.mask_dim
        if mask_dim != hidden:
            # The pooled mask features are added to the query states.
            raise MethodConfigError(f"EBSeg's decoder needs mask_dim == hidden_dim, got {mask_dim} and {hidden}")
        self.attn_bias_heads = int(attn_bias_heads)
        self.embedding_scale_max = float(embedding_scale_max)
        self.pool_proj = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden))
        self.mask_embed1 = ProjectionMLP(hidden, hidden, embed_dim, 3)
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.attn_proj = ProjectionMLP(mask_dim, mask_dim, mask_dim * self.attn_bias_heads, 3)
        self.bias_scaling = nn.Linear(1, 1)

    def forward_heads(self, multi_scale_features: Sequence[Tensor], mask_features: Tensor) -> AdaBOutput:
        """The decoder's predictions with the A embeddings and attention biases of each."""
        decoded = super().forward(multi_scale_features, mask_features)
        batch, channels, height, width = mask_features.shape
        # (B, H, W, C) -> (B, heads, C, H, W): one C-vector per CLIP head and pixel.
        per_head = self.attn_proj(mask_features.permute(0, 2, 3, 1))
        per_head = per_head.permute(0, 3, 1, 2).reshape(batch, self.attn_bias_heads, channels, height, width)
        scale = torch.clamp(self.logit_scale, max=self.embedding_scale_max)
        embeddings, biases = [], []
        for states, masks in zip(decoded.query_features, decoded.mask_logits):
            mask_embedding = self.mask_embed(states)
            bias = torch.einsum("bqc,bnchw->bnqhw", mask_embedding, per_head)
            biases.append(self.bias_scaling(bias.unsqueeze(-1)).squeeze(-1))
            pooled = self.pool_proj(mask_pool(mask_features, masks, binarize="logit"))
            embeddings.append(scale * F.normalize(self.mask_embed1(pooled + states), dim=-1))
        return AdaBOutput(embeddings=embeddings, mask_logits=list(decoded.mask_logits), attn_biases=biases)
