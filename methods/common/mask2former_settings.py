"""The Mask2Former head settings SCAN and EBSeg share (docs/methods/mask-proposal-core.md#query-decoders):
the deformable pixel decoder's and the masked-attention decoder's widths and depths, with the
published defaults (256-wide, 100 queries, 8 heads, FFN 2048; 6 deformable encoder layers with
8 heads, 4 points and FFN 1024). A method's config dataclass inherits them and overrides what
it publishes differently (SCAN builds 10 decoder layers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ovbench_methods.common.errors import MethodConfigError, require_positive_ints
from ovbench_methods.common.pixel_decoder import MSDeformAttnPixelDecoder

__all__ = ["Mask2FormerSettings"]


@dataclass
class Mask2FormerSettings:
    conv_dim: int = 256
    mask_dim: int = 256
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    #: masked-attention layers actually built (Mask2Former and EBSeg: DEC_LAYERS 10 - 1 = 9).
    dec_layers: int = 9
    pre_norm: bool = False
    #: deformable pixel decoder: encoder layers, heads, points, FFN width.
    transformer_layers: int = 6
    transformer_heads: int = 8
    transformer_points: int = 4
    transformer_ffn_dim: int = 1024

    def check_head_settings(self, error: type[MethodConfigError] = MethodConfigError) -> None:
        require_positive_ints(self, ("conv_dim", "mask_dim", "hidden_dim", "num_queries", "nheads", "dim_feedforward",
                                     "transformer_layers", "transformer_heads", "transformer_points", "transformer_ffn_dim"), error)
        if isinstance(self.dec_layers, bool) or not isinstance(self.dec_layers, int) or self.dec_layers < 0:
            raise error(f"dec_layers must be a non-negative integer, got {self.dec_layers!r}")

    def deformable_pixel_decoder(self, input_shapes: Mapping[str, tuple[int, int]]) -> MSDeformAttnPixelDecoder:
        return MSDeformAttnPixelDecoder(
            input_shapes,
            conv_dim=self.conv_dim,
            mask_dim=self.mask_dim,
            transformer_enc_layers=self.transformer_layers,
            transformer_nheads=self.transformer_heads,
            transformer_n_points=self.transformer_points,
            transformer_dim_feedforward=self.transformer_ffn_dim,
        )

    def masked_attention_settings(self) -> dict[str, Any]:
        """Keyword arguments of `MaskedAttentionDecoder` (its input width is `conv_dim`)."""
        return dict(in_channels=self.conv_dim, hidden_dim=self.hidden_dim, num_queries=self.num_queries, nheads=self.nheads,
                    dim_feedforward=self.dim_feedforward, dec_layers=self.dec_layers, pre_norm=self.pre_norm, mask_dim=self.mask_dim)
