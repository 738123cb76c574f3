"""The pixel decoders of the mask-proposal methods, with the official parameter names.

Two decoders turn a backbone's res2..res5 maps into per-pixel mask features at stride 4:

- `FPNPixelDecoder`: MaskFormer's plain top-down FPN (OV-Seg), nearest upsampling, a 3x3
  mask-feature conv (docs/methods/mask-proposal-core.md#fpn-pixel-decoder);
- `MSDeformAttnPixelDecoder`: Mask2Former's decoder (SCAN, EBSeg): a deformable-attention
  encoder over res3..res5, then one FPN step onto res2 with bilinear upsampling, a 1x1
  mask-feature conv; its three encoder levels feed the masked-attention query decoder
  (docs/methods/mask-proposal-core.md#deformable-pixel-decoder).

Parameter names equal the official ones below ``sem_seg_head.pixel_decoder.``, so an
official state dict loads with nothing missing or unexpected once that prefix is stripped.
Modules are also built and initialised in the official order, so the same seed gives the
same initial weights as the official classes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.ms_deform_attn import MSDeformAttn, level_start_index, spatial_shapes_tensor
from ovbench_methods.common.position_encoding import SinePositionEncoding

__all__ = [
    "FPNPixelDecoder",
    "MSDeformAttnPixelDecoder",
    "NormedConv2d",
    "PixelDecoderOutput",
    "c2_xavier_fill",
    "deformable_reference_points",
]

# detectron2's "GN" norm: always 32 groups, whatever the width.
GROUP_NORM_GROUPS = 32


@dataclass
class PixelDecoderOutput:
    """What a pixel decoder hands to the query decoder and the mask head.

    mask_features: (B, mask_dim, H/4, W/4), dotted with the query embeddings to give masks.
    multi_scale_features: the maps the masked-attention decoder cycles through, lowest
        resolution first (the deformable decoder's res5, res4, res3 levels, each
        (B, conv_dim, h, w)); empty for the FPN decoder, whose query decoder reads the
        backbone's res5 instead.
    transformer_features: the encoder's lowest-resolution level (the first multi-scale map),
        None without an encoder.
    """

    mask_features: Tensor
    multi_scale_features: list[Tensor]
    transformer_features: Tensor | None = None


def c2_xavier_fill(module: nn.Module) -> None:
    """detectron2's "Xavier" fill: Kaiming-uniform with a=1 (bound sqrt(3 / fan_in)), bias 0."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


def _make_norm(norm: str, channels: int) -> nn.Module | None:
    """detectron2's `get_norm` for the two settings these decoders are published with."""
    if norm == "":
        return None
    if norm == "GN":
        if channels % GROUP_NORM_GROUPS:
            raise MethodConfigError(
                f"GN norm uses {GROUP_NORM_GROUPS} groups, so conv_dim must be a multiple of it, got {channels}"
            )
        return nn.GroupNorm(GROUP_NORM_GROUPS, channels)
    raise MethodConfigError(f"pixel decoder norm must be 'GN' or '' (none), got {norm!r}")


class NormedConv2d(nn.Conv2d):
    """A convolution followed by an optional norm and ReLU, as detectron2's `Conv2d`.

    The norm is the submodule ``norm``, so keys read ``<name>.weight``, ``<name>.norm.weight``
    and ``<name>.norm.bias``, plus ``<name>.bias`` only when the conv has one.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        norm: nn.Module | None = None,
        relu: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2, bias=bias)
        self.norm = norm
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def _sorted_levels(input_shapes: Mapping[str, tuple[int, int]]) -> list[tuple[str, int, int]]:
    """(name, channels, stride) of every input, finest stride first (res2 ... res5)."""
    if not input_shapes:
        raise MethodConfigError("a pixel decoder needs at least one input feature")
    levels = []
    for name, shape in input_shapes.items():
        if len(shape) != 2 or int(shape[0]) < 1 or int(shape[1]) < 1:
            raise MethodConfigError(f"input shape of {name!r} must be (channels, stride), both positive, got {shape}")
        levels.append((str(name), int(shape[0]), int(shape[1])))
    return sorted(levels, key=lambda level: level[2])


def _require_inputs(features: Mapping[str, Tensor], names: Sequence[str]) -> None:
    """Name the missing inputs up front rather than fail with a KeyError mid-forward."""
    missing = [name for name in names if name not in features]
    if missing:
        raise MethodConfigError(f"pixel decoder inputs lack {missing}; it was built for {list(names)}")


class FPNPixelDecoder(nn.Module):
    """MaskFormer's `BasePixelDecoder`, the OV-Seg proposal network's pixel decoder.

    Top-down from the coarsest map: level n (res5) only gets `layer_n`, a 3x3 conv to
    conv_dim with norm and ReLU; each finer level i gets a 1x1 lateral conv `adapter_i` with
    norm, plus the coarser result upsampled (nearest) to its size, then `layer_i` (3x3, norm,
    ReLU). A 3x3 conv with bias, `mask_features`, maps the finest result to mask_dim. Convs
    with a norm have no bias; every conv is filled with `c2_xavier_fill`.
    """

    def __init__(
        self,
        input_shapes: Mapping[str, tuple[int, int]],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
    ) -> None:
        super().__init__()
        levels = _sorted_levels(input_shapes)
        self.in_features = [name for name, _, _ in levels]
        self.conv_dim = int(conv_dim)
        self.mask_dim = int(mask_dim)
        use_bias = norm == ""
        for index, (_, channels, _) in enumerate(levels):
            number = index + 1
            if index == len(levels) - 1:
                output_conv = NormedConv2d(
                    channels, conv_dim, 3, bias=use_bias, norm=_make_norm(norm, conv_dim), relu=True
                )
                c2_xavier_fill(output_conv)
                self.add_module(f"layer_{number}", output_conv)
            else:
                lateral_norm, output_norm = _make_norm(norm, conv_dim), _make_norm(norm, conv_dim)
                lateral_conv = NormedConv2d(channels, conv_dim, 1, bias=use_bias, norm=lateral_norm)
                output_conv = NormedConv2d(conv_dim, conv_dim, 3, bias=use_bias, norm=output_norm, relu=True)
                c2_xavier_fill(lateral_conv)
                c2_xavier_fill(output_conv)
                self.add_module(f"adapter_{number}", lateral_conv)
                self.add_module(f"layer_{number}", output_conv)
        self.mask_features = NormedConv2d(conv_dim, mask_dim, 3)
        c2_xavier_fill(self.mask_features)

    def forward(self, features: Mapping[str, Tensor]) -> PixelDecoderOutput:
        _require_inputs(features, self.in_features)
        result: Tensor | None = None
        for index in reversed(range(len(self.in_features))):
            x = features[self.in_features[index]]
            output_conv = getattr(self, f"layer_{index + 1}")
            if result is None:
                result = output_conv(x)
            else:
                lateral = getattr(self, f"adapter_{index + 1}")(x)
                result = output_conv(lateral + F.interpolate(result, size=lateral.shape[-2:], mode="nearest"))
        return PixelDecoderOutput(mask_features=self.mask_features(result), multi_scale_features=[])


def deformable_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor) -> Tensor:
    """Every encoder query's reference point on every level: (B, S, L, 2) as (x, y) in [0, 1].

    A query is a pixel centre of its own level, ((j + 0.5) / (r_w W), (i + 0.5) / (r_h H)) with
    (r_w, r_h) the valid (unpadded) fraction of its level, then rescaled by each level's valid
    ratios, so that it points at the same spot of the unpadded image on every level.
    spatial_shapes (L, 2) as (H, W); valid_ratios (B, L, 2) as (w, h).
    """
    per_level = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        rows, cols = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=valid_ratios.device),
            torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=valid_ratios.device),
            indexing="ij",
        )
        y = rows.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        x = cols.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        per_level.append(torch.stack((x, y), dim=-1))
    points = torch.cat(per_level, dim=1)  # (B, S, 2)
    return points[:, :, None] * valid_ratios[:, None]


class _DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention (queries carry the position
    encoding, values do not), residual, LayerNorm; ReLU FFN, residual, LayerNorm."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor, start_index: Tensor) -> Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, start_index)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(hidden))


class _EncoderStack(nn.Module):
    """Holds the layers as ``layers.<i>`` (the official ``transformer.encoder.layers.<i>``)."""

    def __init__(self, layer: _DeformableEncoderLayer, num_layers: int) -> None:
        super().__init__()
        # The official stack deep-copies one built layer, so before the encoder's own reset
        # every layer starts from the same weights (1-D ones, such as biases, stay shared).
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))


class _DeformableEncoder(nn.Module):
    """The encoder-only deformable transformer: ``encoder.layers`` and ``level_embed``."""

    def __init__(
        self, d_model: int, n_heads: int, num_layers: int, d_ffn: int, dropout: float, n_levels: int, n_points: int
    ) -> None:
        super().__init__()
        layer = _DeformableEncoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points)
        self.encoder = _EncoderStack(layer, num_layers)
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official order: Xavier-uniform on every matrix, then each attention's own
        reset (which redoes its matrices), then N(0, 1) level embeddings."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: Sequence[Tensor], pos_embeds: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Levels (B, C, h_l, w_l) and their encodings -> (B, S, C) memory, (L, 2) shapes, (L,) starts."""
        flat_src = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        flat_pos = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1) for level, pos in enumerate(pos_embeds)],
            dim=1,
        )
        shapes = spatial_shapes_tensor([tuple(src.shape[-2:]) for src in srcs], device=flat_src.device)
        starts = level_start_index(shapes)
        # No padding masks are passed, so every level is fully valid.
        valid_ratios = torch.ones(flat_src.shape[0], len(srcs), 2, dtype=torch.float32, device=flat_src.device)
        reference_points = deformable_reference_points(shapes, valid_ratios)
        output = flat_src
        for layer in self.encoder.layers:
            output = layer(output, flat_pos, reference_points, shapes, starts)
        return output, shapes, starts


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's `MSDeformAttnPixelDecoder` (SCAN's and EBSeg's proposal networks).

    The transformer inputs (res3..res5 by default), coarsest first, go through
    ``input_proj.<l>`` (1x1 conv to conv_dim + GroupNorm(32)), get a sine encoding of the
    raw map's size plus a learned level embedding, and pass through the deformable encoder.
    The finer backbone maps (res2 at common stride 4) then follow FPN-style: ``adapter_i``
    (1x1, norm) plus the previous level upsampled **bilinearly** (align_corners False), then
    ``layer_i`` (3x3, norm, ReLU). ``mask_features`` is a 1x1 conv with bias on the finest
    result. Everything runs in float32 with autocast off, as the official decoder does.
    """

    # The masked-attention decoder always reads three scales.
    num_multi_scale_levels = 3

    def __init__(
        self,
        input_shapes: Mapping[str, tuple[int, int]],
        *,
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        transformer_dropout: float = 0.0,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_enc_layers: int = 6,
        transformer_n_points: int = 4,
        common_stride: int = 4,
    ) -> None:
        super().__init__()
        levels = _sorted_levels(input_shapes)
        unknown = [name for name in transformer_in_features if name not in input_shapes]
        if unknown or not transformer_in_features:
            raise MethodConfigError(
                f"transformer_in_features {list(transformer_in_features)} must be a non-empty subset of the inputs {list(input_shapes)}"
            )
        if conv_dim % GROUP_NORM_GROUPS:
            raise MethodConfigError(
                f"the input projections use GroupNorm({GROUP_NORM_GROUPS}), so conv_dim must be a multiple of it, got {conv_dim}"
            )
        if transformer_enc_layers < 0:
            raise MethodConfigError(f"transformer_enc_layers must be >= 0, got {transformer_enc_layers}")
        self.in_features = [name for name, _, _ in levels]
        transformer_levels = [level for level in levels if level[0] in transformer_in_features]
        self.transformer_in_features = [name for name, _, _ in transformer_levels]
        self.conv_dim = int(conv_dim)
        self.mask_dim = int(mask_dim)
        self.common_stride = int(common_stride)

        # Coarsest level first: input_proj.0 projects res5.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, conv_dim, kernel_size=1), nn.GroupNorm(GROUP_NORM_GROUPS, conv_dim))
            for _, channels, _ in reversed(transformer_levels)
        )
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.constant_(projection[0].bias, 0)
        self.transformer = _DeformableEncoder(
            d_model=conv_dim,
            n_heads=transformer_nheads,
            num_layers=transformer_enc_layers,
            d_ffn=transformer_dim_feedforward,
            dropout=transformer_dropout,
            n_levels=len(transformer_levels),
            n_points=transformer_n_points,
        )
        self.pe_layer = SinePositionEncoding(conv_dim // 2, normalize=True)
        self.mask_features = NormedConv2d(conv_dim, mask_dim, 1)
        c2_xavier_fill(self.mask_features)

        finest_transformer_stride = min(stride for _, _, stride in transformer_levels)
        if common_stride < 1 or finest_transformer_stride < common_stride:
            raise MethodConfigError(
                f"common_stride must be in [1, {finest_transformer_stride}] (the finest transformer stride), got {common_stride}"
            )
        self.num_fpn_levels = int(math.log2(finest_transformer_stride) - math.log2(common_stride))
        fpn_levels = levels[: self.num_fpn_levels]
        if len(fpn_levels) < self.num_fpn_levels or any(name in self.transformer_in_features for name, _, _ in fpn_levels):
            raise MethodConfigError(
                f"reaching stride {common_stride} from stride {finest_transformer_stride} needs {self.num_fpn_levels} "
                f"finer inputs besides the transformer's, got {[name for name, _, _ in levels]}"
            )
        use_bias = norm == ""
        for index, (_, channels, _) in enumerate(fpn_levels):
            lateral_norm, output_norm = _make_norm(norm, conv_dim), _make_norm(norm, conv_dim)
            lateral_conv = NormedConv2d(channels, conv_dim, 1, bias=use_bias, norm=lateral_norm)
            output_conv = NormedConv2d(conv_dim, conv_dim, 3, bias=use_bias, norm=output_norm, relu=True)
            c2_xavier_fill(lateral_conv)
            c2_xavier_fill(output_conv)
            self.add_module(f"adapter_{index + 1}", lateral_conv)
            self.add_module(f"layer_{index + 1}", output_conv)

    def forward(self, features: Mapping[str, Tensor]) -> PixelDecoderOutput:
        _require_inputs(features, self.in_features[: self.num_fpn_levels] + self.transformer_in_features)
        device_type = next(iter(features.values())).device.type
        # Deformable attention is kept out of half precision, as in the official decoder.
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_float32(features)

    def _forward_float32(self, features: Mapping[str, Tensor]) -> PixelDecoderOutput:
        srcs, pos = [], []
        for projection, name in zip(self.input_proj, reversed(self.transformer_in_features)):
            x = features[name].float()
            srcs.append(projection(x))
            pos.append(self.pe_layer(x))
        memory, shapes, _ = self.transformer(srcs, pos)
        batch = memory.shape[0]
        sizes = (shapes[:, 0] * shapes[:, 1]).tolist()
        out = [
            level.transpose(1, 2).reshape(batch, -1, height, width)
            for level, (height, width) in zip(memory.split(sizes, dim=1), shapes.tolist())
        ]
        for index in reversed(range(self.num_fpn_levels)):
            lateral = getattr(self, f"adapter_{index + 1}")(features[self.in_features[index]].float())
            upsampled = F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(getattr(self, f"layer_{index + 1}")(lateral + upsampled))
        return PixelDecoderOutput(
            mask_features=self.mask_features(out[-1]),
            multi_scale_features=out[: self.num_multi_scale_levels],
            transformer_features=out[0],
        )
