"""GSNet's Residual Information Preservation Decoder (RIPD; paper eqs. 4-6).

Notes: docs/methods/gsnet.md#ripd-decoder.

The aggregated cost embedding (B, 128, T, 24, 24) is upsampled twice; at each stage the
deconvolved class slice is concatenated with projected intermediate features of both image
streams and refined by two Conv3×3 → GroupNorm → ReLU layers:

    stage 1: ConvT(128→96) ‖ CLIP 32 ‖ RSIB 32 = 160 → DoubleConv 64 (GN 4 groups)   48²
    stage 2: ConvT(64→48)  ‖ CLIP 16 ‖ RSIB 16 = 80  → DoubleConv 32 (GN 2 groups)   96²
    head:    Conv3×3(32→1)                                                    (B, T, 96, 96)

The guidance maps are projected once per image (`CLIP_decoder_guidance_projection`,
`DINO_decoder_guidance_projection`: Conv3×3 + ReLU, 256→32 and 128→16) and repeated over
the classes, which are batched as B·T (image-major).

Table 3 rows G-I drop one or both guidance streams. The official code expresses that with
a guidance projection width of 0, and its Up block keeps the same channel arithmetic
(yecy749/GSNet, RIPD.py `FusionUP`): the ConvT narrows by the CLIP guidance width and the
DoubleConv widens by the RSIB guidance width. So without CLIP guidance the ConvT keeps its
input width (128→128, 64→64); without RSIB guidance the DoubleConv input loses the RSIB
channels:

    | guidance   | stage 1             | stage 2          |
    | both       | 128→96 ‖32‖32 = 160 | 64→48 ‖16‖16 = 80 |
    | CLIP only  | 128→96 ‖32    = 128 | 64→48 ‖16    = 64 |
    | RSIB only  | 128→128 ‖32   = 160 | 64→64 ‖16    = 80 |
    | neither    | 128→128       = 128 | 64→64        = 64 |

Parameter names are the official ones; in a GSNet state dict they sit under
``sem_seg_head.predictor.transformer.`` (`official_prefix`).
"""

from __future__ import annotations

from ovbench_methods.common.errors import MethodConfigError
from typing import Sequence

import torch
from torch import Tensor, nn

from ovbench_methods.common.cost_aggregation import DoubleConv

__all__ = ["DecoderInputError", "DoubleConv", "FusionUp", "RipdDecoder"]

TRANSFORMER_PREFIX = "sem_seg_head.predictor.transformer."


class DecoderInputError(MethodConfigError):
    """A decoder input or guidance map of the wrong shape, or a bad decoder setting."""


class FusionUp(nn.Module):
    """One RIPD stage: `up` ConvT(in → in − clip_width, k2, s2) ‖ CLIP ‖ RSIB → `conv` DoubleConv(in + rsib_width → out).

    Guidance maps arrive already projected, one per image: (B, width, 2H, 2W); x is (B·T, in, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, clip_guidance_channels: int, dino_guidance_channels: int) -> None:
        super().__init__()
        if not 0 <= clip_guidance_channels < in_channels or dino_guidance_channels < 0:
            raise DecoderInputError(
                f"guidance widths {clip_guidance_channels}/{dino_guidance_channels} do not fit a {in_channels}-channel stage"
            )
        self.in_channels = in_channels
        self.clip_guidance_channels = clip_guidance_channels
        self.dino_guidance_channels = dino_guidance_channels
        self.up = nn.ConvTranspose2d(in_channels, in_channels - clip_guidance_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels + dino_guidance_channels, out_channels)

    @staticmethod
    def _repeat(guidance: Tensor, slices: int, label: str, expected: tuple[int, int, int]) -> Tensor:
        if guidance.ndim != 4 or tuple(guidance.shape[1:]) != expected:
            raise DecoderInputError(
                f"RIPD {label} guidance must be (B,{expected[0]},{expected[1]},{expected[2]}), got {tuple(guidance.shape)}"
            )
        if slices % guidance.shape[0]:
            raise DecoderInputError(f"RIPD {label} guidance batch {guidance.shape[0]} does not divide {slices} class slices")
        return guidance.repeat_interleave(slices // guidance.shape[0], dim=0)

    def forward(self, x: Tensor, clip_guidance: Tensor | None, dino_guidance: Tensor | None) -> Tensor:
        x = self.up(x)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        parts = [x]
        if self.clip_guidance_channels:
            if clip_guidance is None:
                raise DecoderInputError("RIPD stage was built with CLIP guidance but got None")
            parts.append(self._repeat(clip_guidance, x.shape[0], "CLIP", (self.clip_guidance_channels, *size)))
        if self.dino_guidance_channels:
            if dino_guidance is None:
                raise DecoderInputError("RIPD stage was built with RSIB guidance but got None")
            parts.append(self._repeat(dino_guidance, x.shape[0], "RSIB", (self.dino_guidance_channels, *size)))
        return self.conv(torch.cat(parts, dim=1) if len(parts) > 1 else x)


def _projections(in_dims: Sequence[int], out_dims: Sequence[int]) -> nn.ModuleList:
    return nn.ModuleList(
        nn.Sequential(nn.Conv2d(d, p, kernel_size=3, stride=1, padding=1), nn.ReLU()) for d, p in zip(in_dims, out_dims)
    )


class RipdDecoder(nn.Module):
    """RIPD upsampling decoder: guidance projections, `Fusiondecoder1/2`, `head`.

    Args:
        hidden_dim: width of the aggregated cost embedding (128).
        decoder_dims: output widths of the two stages (64, 32).
        decoder_guidance_dims: widths of the raw guidance maps of both streams (256, 128).
        decoder_clip_guidance_proj_dims, decoder_dino_guidance_proj_dims: projected widths (32, 16).
        use_clip_guidance, use_dino_guidance: Table 3 rows G-I switch these off (see module docstring).

    `forward(x, clip_guidance, dino_guidance)`: x (B, hidden, T, H, W); each guidance a pair of
    raw maps per image, (B, 256, 2H, 2W) and (B, 128, 4H, 4W) — CLIP's `upsample1/2` outputs and
    the RSIB's `dino_decod_proj1/2` outputs. A stream the decoder was built without is ignored.
    Returns logits (B, T, 4H, 4W).
    """

    official_prefix: str = TRANSFORMER_PREFIX

    def __init__(
        self,
        hidden_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32),
        decoder_guidance_dims: Sequence[int] = (256, 128),
        decoder_clip_guidance_proj_dims: Sequence[int] = (32, 16),
        decoder_dino_guidance_proj_dims: Sequence[int] = (32, 16),
        *,
        use_clip_guidance: bool = True,
        use_dino_guidance: bool = True,
    ) -> None:
        super().__init__()
        lists = {
            "decoder_dims": decoder_dims,
            "decoder_guidance_dims": decoder_guidance_dims,
            "decoder_clip_guidance_proj_dims": decoder_clip_guidance_proj_dims,
            "decoder_dino_guidance_proj_dims": decoder_dino_guidance_proj_dims,
        }
        for name, dims in lists.items():
            dims = tuple(dims)
            if len(dims) != 2 or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims):
                raise DecoderInputError(f"RIPD {name} must be two positive integers, got {dims}")
        clip_proj = tuple(decoder_clip_guidance_proj_dims) if use_clip_guidance else (0, 0)
        dino_proj = tuple(decoder_dino_guidance_proj_dims) if use_dino_guidance else (0, 0)
        self.guidance_dims = tuple(decoder_guidance_dims)
        self.use_clip_guidance = use_clip_guidance
        self.use_dino_guidance = use_dino_guidance
        self.CLIP_decoder_guidance_projection = (
            _projections(decoder_guidance_dims, clip_proj) if use_clip_guidance else None
        )
        self.DINO_decoder_guidance_projection = (
            _projections(decoder_guidance_dims, dino_proj) if use_dino_guidance else None
        )
        self.Fusiondecoder1 = FusionUp(hidden_dim, decoder_dims[0], clip_proj[0], dino_proj[0])
        self.Fusiondecoder2 = FusionUp(decoder_dims[0], decoder_dims[1], clip_proj[1], dino_proj[1])
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, stride=1, padding=1)

    def _project(
        self, projections: nn.ModuleList | None, guidance: Sequence[Tensor | None] | None, label: str
    ) -> list[Tensor | None]:
        if projections is None:
            return [None, None]
        if guidance is None or len(guidance) != 2 or any(g is None for g in guidance):
            raise DecoderInputError(f"RIPD was built with {label} guidance and needs two {label} guidance maps")
        out = []
        for index, (proj, g) in enumerate(zip(projections, guidance)):
            expected = self.guidance_dims[index]
            if g.ndim != 4 or g.shape[1] != expected:
                raise DecoderInputError(
                    f"RIPD {label} guidance {index} must be (B,{expected},H,W), got {tuple(g.shape)}"
                )
            out.append(proj(g))
        return out

    def forward(
        self,
        x: Tensor,
        clip_guidance: Sequence[Tensor | None] | None = None,
        dino_guidance: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        if x.ndim != 5 or x.shape[1] != self.Fusiondecoder1.in_channels:
            raise DecoderInputError(
                f"RIPD input must be (B,{self.Fusiondecoder1.in_channels},T,H,W), got {tuple(x.shape)}"
            )
        batch, channels, classes, height, width = x.shape
        clip = self._project(self.CLIP_decoder_guidance_projection, clip_guidance, "CLIP")
        dino = self._project(self.DINO_decoder_guidance_projection, dino_guidance, "RSIB")
        slices = x.permute(0, 2, 1, 3, 4).reshape(batch * classes, channels, height, width)
        slices = self.Fusiondecoder1(slices, clip[0], dino[0])
        slices = self.Fusiondecoder2(slices, clip[1], dino[1])
        logits = self.head(slices)
        return logits.reshape(batch, classes, logits.shape[-2], logits.shape[-1])
