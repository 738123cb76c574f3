"""The proposal-network backbones of OV-Seg and SCAN: Swin-B and ResNet-101 "R101c".

Both return detectron2-style feature dicts ``{"res2": ..., "res5": ...}`` (NCHW, strides
4/8/16/32) from an already normalised image, and both load the authors' weight files.

Swin (`SwinBackbone`, docs/methods/backbones.md#swin-b)
    The D2SwinTransformer of MaskFormer/Mask2Former, which OV-Seg and SCAN copy: a patch embed
    (image zero-padded on the right/bottom to a multiple of the patch size), four stages of
    timm's `SwinTransformerBlock`, a LayerNorm per output (``norm0``..``norm3``), no absolute
    position embedding. Inputs of any size: inside every block the map is zero-padded to
    window multiples *before* the cyclic shift, and the shift mask is built for the padded
    map (docs/methods/backbones.md#swin-padding). timm rolls first and pads afterwards, and
    shrinks the window to small maps; `_PadThenShiftBlock` overrides exactly that step.
    Module names follow the official layout (downsampling at the *end* of ``layers.{i}``), so
    official state dicts need no renaming; `swin_from_official` only checks and drops the
    ``relative_position_index`` buffers the official module stores and this one recomputes.

R101c (`ResNetDeepLabBackbone`, docs/methods/backbones.md#r101c)
    detectron2's `build_resnet_deeplab_backbone` with OV-Seg's settings: DeepLab stem (three
    3x3 convs 3->64->64->128, max-pool), bottlenecks [3, 4, 23, 3] with the stride in the 3x3
    conv (STRIDE_IN_1X1 False), res5 multi-grid dilations [1, 2, 4] x RES5_DILATION (1) with
    padding = dilation, FrozenBN everywhere (NORM's default) and FREEZE_AT 2 (stem and res2
    not trained). Built on timm's `ResNet` (deep stem, Bottleneck), whose module names
    (``conv1.0``, ``layer1.0.bn1``, ...) differ from detectron2's (``stem.conv1``,
    ``res2.0.conv1.norm``, ...); `resnet_from_official` / `resnet_to_official` translate.

Weight files (docs/methods/backbones.md#pretrained-files)
    ``swin_base_patch4_window12_384_22k.pkl`` (MaskFormer's converter: ``{"model": {original
    Swin key: tensor}, "__author__": ..., "matching_heuristics": True}``), the original
    ``.pth`` (``{"model": state}``) and detectron2's ``R-103.pkl`` (``{"model": {key: numpy
    array}}``). Pickles are read by `_RestrictedUnpickler`, which only rebuilds numpy arrays,
    torch tensors and OrderedDicts (docs/methods/backbones.md#safe-pickle); ``.pth`` files go
    through ``torch.load(weights_only=not trusted)``.

Errors: `MethodConfigError` for settings or inputs, `WeightsError` for weight files; one line.
"""

from __future__ import annotations

import codecs
import collections
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.resnet import Bottleneck, ResNet
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformerBlock,
    get_relative_position_index,
    window_partition,
    window_reverse,
)
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError, WeightsError
from ovbench_methods.common.state_dict import state_dict_mismatch

__all__ = [
    "FrozenBatchNorm2d",
    "ResNetDeepLabBackbone",
    "ResNetDeepLabConfig",
    "SwinBackbone",
    "SwinConfig",
    "load_resnet_pretrained",
    "load_swin_pretrained",
    "read_weights_file",
    "resnet_from_official",
    "resnet_to_official",
    "shifted_window_mask",
    "swin_from_official",
    "swin_to_official",
]

FEATURE_NAMES: tuple[str, ...] = ("res2", "res3", "res4", "res5")


# ---------------------------------------------------------------------------------------------
# Swin
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwinConfig:
    """D2SwinTransformer settings; the defaults are Swin-B as OV-Seg and SCAN configure it."""

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    #: Only sizes the absolute position embedding (``ape``); the input may have any size.
    pretrain_img_size: int = 384
    patch_size: int = 4
    in_chans: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    #: None = head_dim ** -0.5 (official QK_SCALE default).
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    #: Stochastic depth, linear from 0 over all blocks (OV-Seg/SCAN configs: 0.3).
    drop_path_rate: float = 0.3
    #: Absolute position embedding (official APE; off for Swin-B).
    ape: bool = False
    patch_norm: bool = True
    #: Returned features; None = every stage (res2..res5 for four stages).
    out_features: tuple[str, ...] | None = None
    #: False = the official softmax(q k^T * scale + bias + mask) in explicit steps; True = the
    #: same attention through F.scaled_dot_product_attention (faster, not bit-identical).
    fused_attention: bool = False

    def __post_init__(self) -> None:
        depths, heads = tuple(self.depths), tuple(self.num_heads)
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "num_heads", heads)
        if not depths or len(depths) != len(heads) or min(depths) < 1:
            raise MethodConfigError(
                f"swin: depths {list(depths)} and num_heads {list(heads)} must be non-empty, "
                "positive and of equal length"
            )
        for i, h in enumerate(heads):
            if h < 1 or (self.embed_dim * 2**i) % h:
                raise MethodConfigError(
                    f"swin: stage {i} width {self.embed_dim * 2**i} is not divisible by {h} heads"
                )
        if self.window_size < 1 or self.patch_size < 1 or self.embed_dim < 1:
            raise MethodConfigError("swin: window_size, patch_size and embed_dim must be >= 1")
        names = [f"res{i + 2}" for i in range(len(depths))]
        object.__setattr__(self, "out_features", tuple(names if self.out_features is None else self.out_features))
        bad = [name for name in self.out_features if name not in names]
        if bad or not self.out_features:
            raise MethodConfigError(f"swin: out_features {list(self.out_features)} not among {names}")
        if self.fused_attention and self.qk_scale is not None:
            raise MethodConfigError("swin: qk_scale needs fused_attention=False")

    @property
    def num_features(self) -> tuple[int, ...]:
        """Channels of each stage's output."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


def shifted_window_mask(
    height: int,
    width: int,
    window_size: int,
    shift_size: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The (num_windows, ws*ws, ws*ws) additive mask of shifted-window attention.

    `height` and `width` are the *padded* map size (multiples of `window_size`). After the map
    is rolled by -shift, tokens of the three bands (0, -ws), (-ws, -shift), (-shift, end) of
    each axis come from different image regions; pairs in different bands get -100 (the
    official value, not -inf), pairs in the same band 0. Padding tokens are not masked.
    """
    labels = torch.zeros((1, height, width, 1), device=device, dtype=dtype)
    bands = (
        slice(0, -window_size),
        slice(-window_size, -shift_size),
        slice(-shift_size, None),
    )
    region = 0
    for rows in bands:
        for cols in bands:
            labels[:, rows, cols, :] = region
            region += 1
    per_window = window_partition(labels, (window_size, window_size)).view(-1, window_size * window_size)
    differs = per_window.unsqueeze(1) != per_window.unsqueeze(2)
    return torch.zeros_like(differs, dtype=dtype).masked_fill(differs, -100.0)


class _PadThenShiftBlock(SwinTransformerBlock):
    """timm's Swin block with the D2 Swin order: pad to window multiples, then roll.

    timm rolls the unpadded map and pads afterwards (and, unless `always_partition`, shrinks
    the window to maps smaller than it), which on sizes that are not window multiples mixes
    different tokens into each window. The official block zero-pads the normalised map on the
    right/bottom first, rolls the padded map, and masks with the bands of the padded size;
    padding tokens stay attendable (they are not masked, their keys are the qkv bias).
    """

    def _attn(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        win_h, win_w = self.window_size
        pad_b = (win_h - height % win_h) % win_h
        pad_r = (win_w - width % win_w) % win_w
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        padded_h, padded_w = height + pad_b, width + pad_r
        shift_h, shift_w = self.shift_size
        if shift_h or shift_w:
            x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
            mask = shifted_window_mask(padded_h, padded_w, win_h, shift_h, device=x.device, dtype=x.dtype)
        else:
            mask = None
        windows = window_partition(x, self.window_size).view(-1, win_h * win_w, channels)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, win_h, win_w, channels), self.window_size, padded_h, padded_w)
        if shift_h or shift_w:
            x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


class _SwinStage(nn.Module):
    """One official ``layers.{i}``: the blocks, then (except the last stage) patch merging."""

    def __init__(
        self,
        config: SwinConfig,
        stage: int,
        drop_path: list[float],
    ) -> None:
        super().__init__()
        dim = config.num_features[stage]
        window = config.window_size
        nominal = max(1, config.pretrain_img_size // config.patch_size // 2**stage)
        blocks = []
        for index in range(config.depths[stage]):
            block = _PadThenShiftBlock(
                dim=dim,
                input_resolution=(nominal, nominal),
                num_heads=config.num_heads[stage],
                window_size=window,
                shift_size=0 if index % 2 == 0 else window // 2,
                always_partition=True,  # official: the window never shrinks to the map
                dynamic_mask=True,  # the mask depends on the input size
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                proj_drop=config.drop_rate,
                attn_drop=config.attn_drop_rate,
                drop_path=drop_path[index],
                act_layer=nn.GELU,
                norm_layer=nn.LayerNorm,
            )
            block.attn.fused_attn = config.fused_attention
            if config.qk_scale is not None:
                block.attn.scale = config.qk_scale
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        last = stage == len(config.depths) - 1
        self.downsample = None if last else PatchMerging(dim=dim, norm_layer=nn.LayerNorm)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, H, W, C) -> (stage output before merging, input of the next stage)."""
        for block in self.blocks:
            x = block(x)
        return x, (x if self.downsample is None else self.downsample(x))


class SwinBackbone(nn.Module):
    """D2SwinTransformer on timm blocks: pixels (B, 3, H, W) -> {"res2": ..., "res5": ...}.

    Initialisation is the official one: the official `init_weights` is never applied, so
    Linear/Conv/LayerNorm keep PyTorch's defaults and only the relative-position tables (and
    the absolute position embedding) are drawn from a truncated normal with std 0.02.
    """

    def __init__(self, config: SwinConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SwinConfig()
        self.patch_embed = PatchEmbed(
            img_size=None,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            embed_dim=config.embed_dim,
            norm_layer=nn.LayerNorm if config.patch_norm else None,
            output_fmt="NHWC",
            strict_img_size=False,
            dynamic_img_pad=True,  # zero-pad right/bottom to a patch multiple, as official
        )
        if config.ape:
            grid = config.pretrain_img_size // config.patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, grid, grid))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = [x.item() for x in torch.linspace(0, config.drop_path_rate, sum(config.depths))]
        self.layers = nn.ModuleList()
        start = 0
        for stage, depth in enumerate(config.depths):
            self.layers.append(_SwinStage(config, stage, rates[start : start + depth]))
            start += depth
        for stage, channels in enumerate(config.num_features):
            self.add_module(f"norm{stage}", nn.LayerNorm(channels))

    def output_shapes(self) -> dict[str, tuple[int, int]]:
        """{feature name: (channels, stride)} of the returned features."""
        shapes = {
            f"res{i + 2}": (channels, self.config.patch_size * 2**i)
            for i, channels in enumerate(self.config.num_features)
        }
        return {name: shapes[name] for name in self.config.out_features}

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:
        if pixels.dim() != 4 or pixels.shape[1] != self.config.in_chans:
            raise MethodConfigError(
                f"swin: expected pixels (B, {self.config.in_chans}, H, W), got {tuple(pixels.shape)}"
            )
        x = self.patch_embed(pixels)  # (B, Wh, Ww, C), LayerNorm applied
        if self.absolute_pos_embed is not None:
            pos = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
            x = x + pos.permute(0, 2, 3, 1)
        x = self.pos_drop(x)
        features: dict[str, Tensor] = {}
        for stage, layer in enumerate(self.layers):
            out, x = layer(x)
            name = f"res{stage + 2}"
            if name in self.config.out_features:
                out = getattr(self, f"norm{stage}")(out)
                features[name] = out.permute(0, 3, 1, 2).contiguous()
        return features


def _window_from_table(rows: int) -> int | None:
    """The window side w of a relative-position table with (2w - 1)^2 rows."""
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        return None
    return (side + 1) // 2


def swin_from_official(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """Official D2SwinTransformer keys (``backbone.`` already stripped) -> `SwinBackbone` keys.

    The names are the same; the official module also stores each block's
    ``attn.relative_position_index``, which is derived from the window size and recomputed
    here: it is checked against the expected index and dropped (WeightsError if it differs).
    """
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        tensor = _as_tensor(key, value)
        if key.endswith("attn.relative_position_index"):
            side = math.isqrt(tensor.shape[0]) if tensor.dim() == 2 else 0
            expected = get_relative_position_index(side, side) if side else None
            if (
                expected is None
                or tuple(tensor.shape) != tuple(expected.shape)
                or not torch.equal(tensor.long(), expected)
            ):
                raise WeightsError(
                    f"swin: {key} is not the relative position index of a square window "
                    f"(shape {tuple(tensor.shape)})"
                )
            continue
        converted[key] = tensor
    return converted


def swin_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`SwinBackbone` keys -> the official D2SwinTransformer state dict, buffers included.

    Adds each block's ``attn.relative_position_index`` (int64, (w*w, w*w)), with the window
    side read from the block's relative-position table.
    """
    official: dict[str, Tensor] = {}
    suffix = "attn.relative_position_bias_table"
    for key, value in state.items():
        official[key] = value
        if key.endswith(suffix):
            side = _window_from_table(value.shape[0])
            if side is None:
                raise WeightsError(f"swin: {key} has {value.shape[0]} rows, not (2w-1)^2")
            official[key[: -len(suffix)] + "attn.relative_position_index"] = get_relative_position_index(
                side, side
            )
    return official


def _is_swin_classifier_extra(key: str) -> bool:
    """The original Swin classifier's final norm and head, which the backbone does not use."""
    return key.startswith("head.") or key in ("norm.weight", "norm.bias")


def load_swin_pretrained(backbone: SwinBackbone, path: str | Path, trusted: bool = False) -> list[str]:
    """Load the authors' pretrained Swin (``.pkl`` from MaskFormer's converter or ``.pth``).

    Original Swin keys equal the D2 names except for extras: the classifier's ``head.*`` and
    final ``norm.*`` are ignored; the ``attn_mask`` buffers of the classification model
    (fixed to its 384² input) are checked against the shift-mask rule and dropped; the
    ``relative_position_index`` buffers are checked and dropped. The per-output norms
    ``norm0``..``norm3`` are not in an ImageNet checkpoint and keep their initial values, as
    in the official model. Returns those model keys that were not in the file.
    """
    state = _state_from_payload(read_weights_file(path, trusted), path)
    kept: dict[str, Any] = {}
    for key, value in state.items():
        if _is_swin_classifier_extra(key):
            continue
        if key.endswith(".attn_mask"):
            _check_classifier_attn_mask(path, key, _as_tensor(key, value))
            continue
        kept[key] = value
    try:
        converted = swin_from_official(kept)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    expected = backbone.state_dict()
    allowed_missing = [key for key in expected if key.split(".")[0] in _output_norm_names(backbone)]
    check = {k: v for k, v in expected.items() if k not in allowed_missing or k in converted}
    problem = state_dict_mismatch(converted, check)
    if problem:
        raise WeightsError(f"{path}: does not fit the Swin backbone: {problem}")
    backbone.load_state_dict(converted, strict=False)
    return [key for key in allowed_missing if key not in converted]


def _output_norm_names(backbone: SwinBackbone) -> set[str]:
    return {f"norm{i}" for i in range(len(backbone.config.depths))}


def _check_classifier_attn_mask(path: str | Path, key: str, mask: Tensor) -> None:
    """A classification-model shift mask must be the rule's mask for a square, unpadded map."""
    ok = mask.dim() == 3 and mask.shape[1] == mask.shape[2]
    if ok:
        window = math.isqrt(mask.shape[1])
        per_side = math.isqrt(mask.shape[0])
        ok = window * window == mask.shape[1] and per_side * per_side == mask.shape[0] and window > 1
    if ok:
        side = per_side * window
        expected = shifted_window_mask(side, side, window, window // 2)
        ok = torch.equal(mask.float(), expected)
    if not ok:
        raise WeightsError(f"{path}: {key} is not a shifted-window mask (shape {tuple(mask.shape)})")


# ---------------------------------------------------------------------------------------------
# ResNet-101 "R101c"
# ---------------------------------------------------------------------------------------------

ResNetNorm = Literal["FrozenBN", "BN", "SyncBN"]
_BLOCKS_PER_DEPTH: dict[int, tuple[int, ...]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class FrozenBatchNorm2d(nn.Module):
    """detectron2's FrozenBatchNorm2d: fixed statistics and affine, all four as buffers.

    Buffers ``weight``, ``bias``, ``running_mean``, ``running_var`` (initialised to the
    identity: var = 1 - eps), eps 1e-5; ``num_batches_tracked`` is a None buffer unless a
    converted BatchNorm carried one. The forward is F.batch_norm in eval mode when no gradient
    flows to the input, otherwise the equivalent x * scale + shift, as in detectron2.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory) - eps)
        self.register_buffer("num_batches_tracked", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    @classmethod
    def from_batch_norm(cls, norm: nn.BatchNorm2d | nn.SyncBatchNorm) -> "FrozenBatchNorm2d":
        """detectron2's conversion when a stage is frozen: copies statistics, affine and eps."""
        frozen = cls(norm.num_features, eps=norm.eps)
        if norm.affine:
            frozen.weight.data = norm.weight.data.clone().detach()
            frozen.bias.data = norm.bias.data.clone().detach()
        frozen.running_mean.data = norm.running_mean.data
        frozen.running_var.data = norm.running_var.data
        frozen.num_batches_tracked = norm.num_batches_tracked
        return frozen

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


@dataclass(frozen=True)
class ResNetDeepLabConfig:
    """detectron2 MODEL.RESNETS / BACKBONE settings; defaults = OV-Seg's R101c.

    From configs/ovseg_R101c_vitB_bs32_120k.yaml (no _BASE_): DEPTH 101, STEM_TYPE "deeplab",
    STEM_OUT_CHANNELS 128, STRIDE_IN_1X1 False, RES5_MULTI_GRID [1, 2, 4] (NORM "SyncBN" is
    commented out); the rest are detectron2 defaults plus add_deeplab_config: NORM "FrozenBN",
    RES5_DILATION 1, RES4_DILATION 1, FREEZE_AT 2, NUM_GROUPS 1, WIDTH_PER_GROUP 64,
    RES2_OUT_CHANNELS 256.
    """

    depth: int = 101
    #: Blocks per stage; None = detectron2's table for `depth` (tests use small ones).
    layers: tuple[int, ...] | None = None
    stem_type: Literal["deeplab", "basic"] = "deeplab"
    stem_out_channels: int = 128
    res2_out_channels: int = 256
    num_groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = False
    res4_dilation: int = 1
    res5_dilation: int = 1
    res5_multi_grid: tuple[int, ...] = (1, 2, 4)
    norm: ResNetNorm = "FrozenBN"
    #: 0 = train everything, 1 = freeze the stem, k >= 2 = also res2..res{k}.
    freeze_at: int = 2
    in_chans: int = 3

    def __post_init__(self) -> None:
        if self.layers is None:
            if self.depth not in _BLOCKS_PER_DEPTH:
                raise MethodConfigError(
                    f"resnet: depth {self.depth} not in {sorted(_BLOCKS_PER_DEPTH)} (or give layers)"
                )
            object.__setattr__(self, "layers", _BLOCKS_PER_DEPTH[self.depth])
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "res5_multi_grid", tuple(self.res5_multi_grid))
        if len(layers) != 4 or min(layers) < 1:
            raise MethodConfigError(f"resnet: layers {list(layers)} must be four positive block counts")
        if self.stem_type not in ("deeplab", "basic"):
            raise MethodConfigError(f"resnet: stem_type {self.stem_type!r} not in ['deeplab', 'basic']")
        if self.stem_type == "deeplab" and (self.stem_out_channels < 2 or self.stem_out_channels % 2):
            raise MethodConfigError("resnet: the deeplab stem needs an even stem_out_channels")
        if self.stem_type == "basic" and self.stem_out_channels != 64:
            raise MethodConfigError("resnet: the basic stem is built with 64 channels only")
        if self.res2_out_channels % 4 or self.res2_out_channels < 4:
            raise MethodConfigError("resnet: res2_out_channels must be a positive multiple of 4")
        if self.res4_dilation not in (1, 2) or self.res5_dilation not in (1, 2, 4):
            raise MethodConfigError(
                f"resnet: res4_dilation {self.res4_dilation} must be 1 or 2 and res5_dilation "
                f"{self.res5_dilation} 1, 2 or 4"
            )
        if self.res4_dilation == 2 and self.res5_dilation != 4:
            raise MethodConfigError("resnet: res4_dilation 2 requires res5_dilation 4")
        if len(self.res5_multi_grid) != layers[3]:
            raise MethodConfigError(
                f"resnet: res5_multi_grid {list(self.res5_multi_grid)} needs one entry per res5 "
                f"block ({layers[3]})"
            )
        if self.norm not in ("FrozenBN", "BN", "SyncBN"):
            raise MethodConfigError(f"resnet: norm {self.norm!r} not in ['FrozenBN', 'BN', 'SyncBN']")
        if not 0 <= self.freeze_at <= 5:
            raise MethodConfigError(f"resnet: freeze_at {self.freeze_at} must be in 0..5")

    def stage_strides_and_dilations(self) -> list[list[tuple[int, int]]]:
        """(stride, dilation) of every block, by detectron2's rule.

        The first block of res3..res5 has stride 2 unless its stage is dilated; res5 block b
        has dilation RES5_DILATION x RES5_MULTI_GRID[b].
        """
        plan = []
        for index, blocks in enumerate(self.layers):
            stage = index + 2
            dilation = {4: self.res4_dilation, 5: self.res5_dilation}.get(stage, 1)
            first_stride = 1 if index == 0 or dilation > 1 else 2
            if stage == 5:
                dilations = [dilation * grid for grid in self.res5_multi_grid]
            else:
                dilations = [dilation] * blocks
            plan.append([(first_stride if b == 0 else 1, dilations[b]) for b in range(blocks)])
        return plan


def _norm_layer(norm: ResNetNorm) -> Callable[..., nn.Module]:
    if norm == "FrozenBN":
        return FrozenBatchNorm2d
    if norm == "BN":
        return nn.BatchNorm2d
    return nn.SyncBatchNorm


class ResNetDeepLabBackbone(ResNet):
    """timm's ResNet arranged as detectron2's DeepLab ResNet: pixels -> {"res2": ..., "res5": ...}.

    Changes to timm: FrozenBN (detectron2's, eps 1e-5), strides and dilations per block set
    after construction by detectron2's rule (multi-grid res5, padding = dilation, optional
    stride in the 1x1), no zero-init of the last BN, no classifier, and the freeze-at
    behaviour. Initialisation as detectron2: convs kaiming-normal (fan_out, ReLU).
    """

    def __init__(self, config: ResNetDeepLabConfig | None = None) -> None:
        config = config or ResNetDeepLabConfig()
        planes0 = config.res2_out_channels // 4
        super().__init__(
            block=Bottleneck,
            layers=config.layers,
            num_classes=0,
            in_chans=config.in_chans,
            stem_width=config.stem_out_channels // 2,
            stem_type="deep" if config.stem_type == "deeplab" else "",
            channels=tuple(planes0 * 2**i for i in range(4)),
            cardinality=config.num_groups,
            base_width=config.width_per_group * 64 / planes0,
            norm_layer=_norm_layer(config.norm),
            act_layer=nn.ReLU,
            zero_init_last=False,
        )
        self.config = config
        del self.global_pool, self.fc
        self._check_widths()
        self._apply_strides_and_dilations()
        self._freeze(config.freeze_at)

    def _stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _check_widths(self) -> None:
        """timm derives the bottleneck width from planes and base width; it must equal detectron2's."""
        config = self.config
        for index, stage in enumerate(self._stages()):
            want = config.num_groups * config.width_per_group * 2**index
            got = stage[0].conv2.out_channels
            if got != want:
                raise MethodConfigError(
                    f"resnet: width_per_group {config.width_per_group} with res2_out_channels "
                    f"{config.res2_out_channels} gives bottleneck width {got} in res{index + 2}, "
                    f"not {want}"
                )

    def _apply_strides_and_dilations(self) -> None:
        for stage, plan in zip(self._stages(), self.config.stage_strides_and_dilations()):
            for block, (stride, dilation) in zip(stage, plan):
                in_1x1 = self.config.stride_in_1x1
                block.conv1.stride = (stride, stride) if in_1x1 else (1, 1)
                block.conv2.stride = (1, 1) if in_1x1 else (stride, stride)
                block.conv2.dilation = (dilation, dilation)
                block.conv2.padding = (dilation, dilation)
                block.stride, block.dilation = stride, dilation
                if block.downsample is not None:
                    block.downsample[0].stride = (stride, stride)

    def _stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def _freeze(self, freeze_at: int) -> None:
        """detectron2's ResNet.freeze: no gradients for the stem (>= 1) and res2..res{k}, and
        their BatchNorms become FrozenBatchNorm2d."""
        groups: list[list[nn.Module]] = []
        if freeze_at >= 1:
            groups.append(self._stem_modules())
        groups += [[stage] for stage in self._stages()[: max(0, freeze_at - 1)]]
        for modules in groups:
            for module in modules:
                for param in module.parameters():
                    param.requires_grad = False
        for name in self._frozen_norm_names(freeze_at):
            parent_name, _, child = name.rpartition(".")
            parent = self.get_submodule(parent_name) if parent_name else self
            norm = getattr(parent, child)
            if isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                setattr(parent, child, FrozenBatchNorm2d.from_batch_norm(norm))

    def _frozen_norm_names(self, freeze_at: int) -> list[str]:
        prefixes = []
        if freeze_at >= 1:
            prefixes += ["conv1.", "bn1"]
        prefixes += [f"layer{i}." for i in range(1, max(0, freeze_at - 1) + 1)]
        return [
            name
            for name, module in self.named_modules()
            if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm))
            and any(name == p or name.startswith(p) for p in prefixes)
        ]

    def output_shapes(self) -> dict[str, tuple[int, int]]:
        """{feature name: (channels, stride)}."""
        shapes = {}
        stride = 4
        for index, plan in enumerate(self.config.stage_strides_and_dilations()):
            stride *= plan[0][0]
            shapes[f"res{index + 2}"] = (self.config.res2_out_channels * 2**index, stride)
        return shapes

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        if pixels.dim() != 4 or pixels.shape[1] != self.config.in_chans:
            raise MethodConfigError(
                f"resnet: expected pixels (B, {self.config.in_chans}, H, W), got {tuple(pixels.shape)}"
            )
        x = self.maxpool(self.act1(self.bn1(self.conv1(pixels))))
        features = {}
        for name, stage in zip(FEATURE_NAMES, self._stages()):
            x = stage(x)
            features[name] = x
        return features


#: timm stem module -> detectron2 stem module, per stem type.
_STEM_KEYS: dict[str, dict[str, str]] = {
    "deeplab": {
        "conv1.0": "stem.conv1",
        "conv1.1": "stem.conv1.norm",
        "conv1.3": "stem.conv2",
        "conv1.4": "stem.conv2.norm",
        "conv1.6": "stem.conv3",
        "bn1": "stem.conv3.norm",
    },
    "basic": {"conv1": "stem.conv1", "bn1": "stem.conv1.norm"},
}
_BLOCK_KEYS: dict[str, str] = {
    "conv1": "conv1",
    "bn1": "conv1.norm",
    "conv2": "conv2",
    "bn2": "conv2.norm",
    "conv3": "conv3",
    "bn3": "conv3.norm",
    "downsample.0": "shortcut",
    "downsample.1": "shortcut.norm",
}
_TENSOR_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _resnet_module_map(stem_type: str, to_official: bool) -> Callable[[str], str | None]:
    stem = _STEM_KEYS[stem_type]
    if not to_official:
        stem = {official: ours for ours, official in stem.items()}
    blocks = _BLOCK_KEYS if to_official else {official: ours for ours, official in _BLOCK_KEYS.items()}

    def convert(module: str) -> str | None:
        if module in stem:
            return stem[module]
        head, _, rest = module.partition(".")
        index, _, inner = rest.partition(".")
        if not index.isdigit() or inner not in blocks:
            return None
        if to_official and head.startswith("layer") and head[5:].isdigit():
            return f"res{int(head[5:]) + 1}.{index}.{blocks[inner]}"
        if not to_official and head.startswith("res") and head[3:].isdigit():
            return f"layer{int(head[3:]) - 1}.{index}.{blocks[inner]}"
        return None

    return convert


def _convert_resnet_keys(state: Mapping[str, Any], stem_type: str, to_official: bool) -> dict[str, Tensor]:
    convert = _resnet_module_map(stem_type, to_official)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        target = convert(module) if leaf in _TENSOR_NAMES else None
        if target is None:
            side = "detectron2" if not to_official else "backbone"
            raise WeightsError(f"resnet: {key!r} is not a {side} ResNet key")
        out[f"{target}.{leaf}"] = _as_tensor(key, value)
    return out


def resnet_from_official(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """detectron2 ResNet keys (``stem.conv1.weight``, ``res2.0.conv1.norm.running_var``,
    ``res2.0.shortcut.weight``, ...) -> `ResNetDeepLabBackbone` (timm) keys. The stem type is
    read from the keys (``stem.conv2`` exists only in the DeepLab stem)."""
    deeplab = any(k.startswith(("stem.conv2.", "stem.conv3.")) for k in state)
    stem_type = "deeplab" if deeplab else "basic"
    return _convert_resnet_keys(state, stem_type, to_official=False)


def resnet_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`ResNetDeepLabBackbone` keys -> detectron2 ResNet keys (the inverse)."""
    deeplab = any(k.split(".")[0] == "conv1" and k.split(".")[1].isdigit() for k in state)
    stem_type = "deeplab" if deeplab else "basic"
    return _convert_resnet_keys(state, stem_type, to_official=True)


def _is_resnet_extra(key: str) -> bool:
    """Entries of a pretrained ResNet file that are not part of the backbone."""
    return key.split(".")[0] in ("fc", "fc1000", "linear", "head") or key.endswith("num_batches_tracked")


def load_resnet_pretrained(
    backbone: ResNetDeepLabBackbone, path: str | Path, trusted: bool = False
) -> list[str]:
    """Load detectron2's ``R-103.pkl`` (or any detectron2-keyed ResNet file) into `backbone`.

    Classifier entries (``fc.*``, ``linear.*``) and ``num_batches_tracked`` are ignored. As
    detectron2 does for files without module versions, a norm whose ``running_mean`` /
    ``running_var`` are absent gets the identity statistics (0 / 1). Returns the keys so
    filled; any other missing, unexpected or mis-shaped key is one WeightsError.
    """
    state = _state_from_payload(read_weights_file(path, trusted), path)
    state = {key: value for key, value in state.items() if not _is_resnet_extra(key)}
    filled = []
    for key in list(state):
        if key.endswith(".norm.weight"):
            base = key[: -len("weight")]
            if base + "running_mean" not in state and base + "running_var" not in state:
                channels = _as_tensor(key, state[key]).shape[0]
                state[base + "running_mean"] = torch.zeros(channels)
                state[base + "running_var"] = torch.ones(channels)
                filled += [base + "running_mean", base + "running_var"]
    try:
        converted = resnet_from_official(state)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    expected = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    problem = state_dict_mismatch(converted, expected)
    if problem:
        raise WeightsError(f"{path}: does not fit the ResNet backbone: {problem}")
    backbone.load_state_dict(converted, strict=False)
    return filled


# ---------------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes: latin-1 only."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise WeightsError(f"pickle asks for codec {encoding!r}; only latin-1 is allowed")
    return codecs.encode(text, encoding, errors)


def _storage_from_bytes(data: bytes) -> Any:
    """A tensor storage pickled with plain pickle (MaskFormer's Swin converter pickles torch
    tensors); torch's own helper reads it with weights_only=False, this one with True."""
    return torch.load(io.BytesIO(data), weights_only=True)


def _pickle_allowlist() -> dict[tuple[str, str], Any]:
    import numpy  # only needed for pickled arrays; a dependency of torch and of the project

    core = getattr(numpy, "_core", None) or numpy.core
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): numpy.ndarray,
        ("numpy", "dtype"): numpy.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    # numpy dtype classes (numpy >= 1.25 pickles dtypes as e.g. numpy.dtypes.Float32DType)
    dtypes = getattr(numpy, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType"):
                allowed[("numpy.dtypes", name)] = getattr(dtypes, name)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays, torch tensors and OrderedDicts.

    `find_class` never imports: it answers from a fixed table, so a pickle naming anything
    else (os.system, builtins.eval, ...) is refused before it can run.
    """

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = _pickle_allowlist()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self._source}: pickle refers to {module}.{name}, which a weights file does not "
                "need; refusing to load it"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise WeightsError(f"{self._source}: pickle uses persistent ids; not a plain weights pickle")


def read_weights_file(path: str | Path, trusted: bool = False) -> Any:
    """Read a ``.pkl`` with `_RestrictedUnpickler` (always; `trusted` does not widen it) or any
    other file with ``torch.load(map_location="cpu", weights_only=not trusted)``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".pkl":
            with path.open("rb") as handle:
                return _RestrictedUnpickler(handle, str(path)).load()
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except WeightsError:
        raise
    except Exception as exc:  # pickle/torch raise many unrelated types for bad files
        text = str(exc).strip().splitlines()
        hint = ""
        if not trusted and "weights_only" in str(exc):
            hint = " (if you trust this file, load it with trusted=True)"
        raise WeightsError(
            f"cannot read weights {path}: {type(exc).__name__}: {text[0] if text else ''}{hint}"
        ) from None


def _state_from_payload(payload: Any, path: str | Path) -> dict[str, Any]:
    """The state dict inside ``{"model": state, ...}`` (detectron2 / Swin releases) or a bare one."""
    if isinstance(payload, Mapping) and isinstance(payload.get("model"), Mapping):
        payload = payload["model"]
    if not isinstance(payload, Mapping) or not payload:
        raise WeightsError(f"{path}: not a state dict (got {type(payload).__name__})")
    return {str(key): value for key, value in payload.items()}


def _as_tensor(key: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "__array__") and hasattr(value, "dtype"):  # numpy arrays from .pkl files
        flags = getattr(value, "flags", None)
        return torch.as_tensor(value if flags is None or flags.writeable else value.copy())
    raise WeightsError(f"entry {key!r} is a {type(value).__name__}, not an array")
