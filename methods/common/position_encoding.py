"""The fixed sine positional encoding of DETR-style decoders (docs/methods/mask-proposal-core.md#sine-positional-encoding).

MaskFormer's query decoder, Mask2Former's masked-attention decoder and its deformable pixel
decoder all add the same encoding to their image features: for each pixel its row and column
position (cumulative count of unpadded pixels, 1-based), optionally normalised to (0, 2π]
by the last count plus eps 1e-6, divided by temperature^(2⌊i/2⌋/F) for feature i of F, with
sine on even and cosine on odd features, interleaved; the y half comes before the x half.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError

__all__ = ["SinePositionEncoding"]


class SinePositionEncoding(nn.Module):
    """(N, C, H, W) features (and an optional (N, H, W) padding mask, True = padding) ->
    (N, 2·num_pos_feats, H, W) encodings. No parameters, nothing in a state dict."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True, scale: float | None = None) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise MethodConfigError("a sine encoding scale needs normalize=True")
        self.num_pos_feats = int(num_pos_feats)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.scale = 2 * math.pi if scale is None else float(scale)

    def forward(self, features: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        height, width = features.shape[-2:]
        if padding_mask is None:
            padding_mask = torch.zeros(features.shape[0], height, width, device=features.device, dtype=torch.bool)
        not_padding = (~padding_mask).to(torch.float32)
        y_embed = not_padding.cumsum(1)
        x_embed = not_padding.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        index = torch.arange(self.num_pos_feats, dtype=torch.float32, device=features.device)
        dim_t = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(features.dtype)
