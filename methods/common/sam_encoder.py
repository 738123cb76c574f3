"""The frozen SAM ViT-B image encoder that EBSeg uses as its backbone.

docs/methods/backbones.md#sam-vit-b-image-encoder. A ViTDet-style plain ViT
(Segment Anything, Kirillov et al. 2023), with EBSeg's changes: no neck, and the outputs of
the global-attention blocks read as a four-level pyramid `res2`..`res5`:

- patch embedding: a 16x16 stride-16 convolution, tokens kept channels-last (B, H, W, C);
- an absolute positional embedding stored for the pretraining grid (64x64 for 1024² input)
  and resized bicubically to the actual grid *inside every forward*, so it can train;
- blocks with pre-norm attention and MLP; most attend inside 14x14 windows (the grid padded
  bottom/right with zeros to a multiple of the window), the blocks in `global_attn_indexes`
  attend over the whole grid. Attention adds MViTv2's decomposed relative positions, whose
  tables are linearly resized when the attended extent differs from the stored one;
- the global blocks' outputs, permuted to (B, C, H, W) and bilinearly rescaled by
  `output_scales` (x4, x2, x1, x0.5 -> strides 4, 8, 16, 32).

Module and parameter names are those of the official `ImageEncoderViT`, so the
`image_encoder.*` tensors of SAM's `sam_vit_b_01ec64.pth` load with nothing missing or left
over once `image_encoder.neck.*` is set aside (`load_sam_image_encoder`). The construction
order is the official one too, so the same seed gives the same random initialisation.

Everything is frozen except `pos_embed`. There is no dropout and no batch norm, so train and
eval mode compute the same thing and no `train()` override is needed.

Attention is the explicit computation ((q * scale) @ k^T + relative bias, softmax, @ v),
not `F.scaled_dot_product_attention`: the fused kernel scales after the product and so
differs in the last bits, and the bias it would need as a mask is just as large as the
attention map, so it saves little here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError, WeightsError
from ovbench_methods.common.state_dict import state_dict_mismatch

__all__ = [
    "OUTPUT_NAMES",
    "SAM_CHECKPOINT_PREFIX",
    "SamEncoderConfig",
    "SamEncoderConfigError",
    "SamFeatureShape",
    "SamImageEncoder",
    "SamWeightsError",
    "load_sam_image_encoder",
    "sam_image_encoder_state_dict",
]

#: Names of the pyramid levels, in the order of the global blocks that produce them.
OUTPUT_NAMES: tuple[str, ...] = ("res2", "res3", "res4", "res5")

#: Prefix of the encoder's tensors in a full SAM state dict; its `neck.*` is not used.
SAM_CHECKPOINT_PREFIX = "image_encoder."
_NECK_PREFIX = "neck."


class SamEncoderConfigError(MethodConfigError):
    """Settings that do not describe a valid SAM image encoder."""


class SamWeightsError(WeightsError):
    """A SAM weights file that is missing, unreadable, or does not fit the encoder."""


class SamFeatureShape(NamedTuple):
    """Channels and stride (input pixels per output pixel) of one pyramid level."""

    channels: int
    stride: int | float


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SamEncoderConfig:
    """The encoder's architecture; the defaults are SAM ViT-B as EBSeg builds it."""

    #: pretraining input side; fixes the stored pos-embed grid (img_size // patch_size)²
    #: and the global blocks' relative-position tables (2 * grid - 1 rows).
    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    #: side of the attention windows of the non-global blocks (0: every block global).
    window_size: int = 14
    #: 0-based blocks with global attention; their outputs are the pyramid levels.
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    #: bilinear rescale factor of each global block's output (stride = patch_size / scale).
    output_scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    qkv_bias: bool = True
    use_rel_pos: bool = True
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        # Lists arrive from YAML; keep tuples so the config stays hashable and comparable.
        if isinstance(self.global_attn_indexes, list):
            self.global_attn_indexes = tuple(self.global_attn_indexes)
        if isinstance(self.output_scales, list):
            self.output_scales = tuple(self.output_scales)
        self.validate()

    def validate(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SamEncoderConfigError(f"SAM encoder {name} must be a positive integer, got {value!r}")
        if not _is_int(self.window_size) or self.window_size < 0:
            raise SamEncoderConfigError(f"SAM encoder window_size must be a non-negative integer, got {self.window_size!r}")
        if self.embed_dim % self.num_heads:
            raise SamEncoderConfigError(
                f"SAM encoder embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.img_size % self.patch_size:
            raise SamEncoderConfigError(
                f"SAM encoder img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if not _is_number(self.mlp_ratio) or not self.mlp_ratio > 0 or int(self.embed_dim * self.mlp_ratio) < 1:
            raise SamEncoderConfigError(f"SAM encoder mlp_ratio must be positive, got {self.mlp_ratio!r}")
        if not _is_number(self.layer_norm_eps) or not self.layer_norm_eps > 0:
            raise SamEncoderConfigError(f"SAM encoder layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        for name in ("qkv_bias", "use_rel_pos"):
            if not isinstance(getattr(self, name), bool):
                raise SamEncoderConfigError(f"SAM encoder {name} must be true or false, got {getattr(self, name)!r}")
        indexes = self.global_attn_indexes
        if not isinstance(indexes, tuple) or not all(_is_int(i) for i in indexes):
            raise SamEncoderConfigError(f"SAM encoder global_attn_indexes must be a list of block indices, got {indexes!r}")
        if any(not 0 <= i < self.depth for i in indexes):
            raise SamEncoderConfigError(
                f"SAM encoder global_attn_indexes must be 0-based blocks below depth {self.depth}, got {list(indexes)}"
            )
        if list(indexes) != sorted(set(indexes)):
            raise SamEncoderConfigError(
                f"SAM encoder global_attn_indexes must be increasing without repeats, got {list(indexes)}"
            )
        scales = self.output_scales
        if not isinstance(scales, tuple) or not all(_is_number(s) and s > 0 for s in scales):
            raise SamEncoderConfigError(f"SAM encoder output_scales must be positive numbers, got {scales!r}")
        if len(scales) != len(OUTPUT_NAMES):
            raise SamEncoderConfigError(
                f"SAM encoder output_scales needs one factor per output {list(OUTPUT_NAMES)}, got {len(scales)}"
            )
        if len(indexes) != len(OUTPUT_NAMES):
            raise SamEncoderConfigError(
                f"SAM encoder needs {len(OUTPUT_NAMES)} global blocks for the outputs {list(OUTPUT_NAMES)}, "
                f"got global_attn_indexes {list(indexes)}"
            )

    @property
    def grid_size(self) -> int:
        """Side of the pretraining patch grid: the stored pos-embed is (1, grid, grid, C)."""
        return self.img_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


# --------------------------------------------------------------------------- layers


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens, returned channels-last (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).permute(0, 2, 3, 1)


class MLPBlock(nn.Module):
    """Linear -> exact GELU -> Linear, under SAM's names `lin1`/`lin2`."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


def resize_rel_pos_table(table: Tensor, length: int) -> Tensor:
    """The (L, C) relative-position table at `length` rows: unchanged when it already has
    them, else linear interpolation along the rows (align_corners False, as SAM does)."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear")
    return resized.squeeze(0).t()


def relative_position_embeddings(q_size: int, k_size: int, table: Tensor) -> Tensor:
    """(q_size, k_size, C): the table row for every query/key offset along one axis.

    The offset is query position minus key position, shifted so the smallest one is row 0;
    when the two extents differ, the shorter axis' coordinates are stretched to the longer
    one's (the MViTv2 rule SAM follows, floored to an integer row).
    """
    table = resize_rel_pos_table(table, 2 * max(q_size, k_size) - 1)
    q_stretch = max(k_size / q_size, 1.0)
    k_stretch = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=table.device)[:, None] * q_stretch
    k_coords = torch.arange(k_size, device=table.device)[None, :] * k_stretch
    rows = (q_coords - k_coords + (k_size - 1) * k_stretch).long()
    return table[rows]


def add_relative_position_bias(
    logits: Tensor, q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> Tensor:
    """Add the decomposed relative-position bias (MViTv2) to attention `logits` (N, qh*qw, kh*kw)
    for queries `q` (N, qh*qw, C): each query's dot product with its row's vertical-offset
    embeddings, then with its column's horizontal ones (added in that order, as SAM does, so
    results agree to the bit)."""
    (qh, qw), (kh, kw) = q_size, k_size
    rel_h_table = relative_position_embeddings(qh, kh, rel_pos_h)  # (qh, kh, C)
    rel_w_table = relative_position_embeddings(qw, kw, rel_pos_w)  # (qw, kw, C)
    grid_q = q.reshape(q.shape[0], qh, qw, q.shape[-1])
    along_h = torch.einsum("nyxc,ykc->nyxk", grid_q, rel_h_table)
    along_w = torch.einsum("nyxc,xkc->nyxk", grid_q, rel_w_table)
    grid_logits = logits.view(-1, qh, qw, kh, kw) + along_h[:, :, :, :, None] + along_w[:, :, :, None, :]
    return grid_logits.view(-1, qh * qw, kh * kw)


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) token grid with decomposed relative
    positions; `rel_size` is the grid the tables are stored for (pretraining grid or window)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, rel_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            # Zero-initialised, as SAM's rel_pos_zero_init default.
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        # (3, batch * heads, tokens, head_dim)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, tokens, -1).unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            logits = add_relative_position_bias(logits, q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
        out = logits.softmax(dim=-1) @ v
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        return self.proj(out)


def partition_windows(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window, window, C), zero-padding the grid at the bottom
    and right to a multiple of `window`; also returns the padded (H, W)."""
    batch, height, width, channels = x.shape
    pad_h = -height % window
    pad_w = -width % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, channels)
    return windows, (padded_h, padded_w)


def merge_windows(windows: Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of `partition_windows`: reassemble the grid and crop the padding."""
    padded_h, padded_w = padded_hw
    height, width = hw
    rows, cols = padded_h // window, padded_w // window
    batch = windows.shape[0] // (rows * cols)
    x = windows.view(batch, rows, cols, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :].contiguous()
    return x


class Block(nn.Module):
    """Pre-norm transformer block; `window_size` 0 means global attention."""

    def __init__(self, config: SamEncoderConfig, window_size: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(
            dim,
            config.num_heads,
            config.qkv_bias,
            config.use_rel_pos,
            rel_size=window_size if window_size > 0 else config.grid_size,
        )
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = MLPBlock(dim, int(dim * config.mlp_ratio))
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = (x.shape[1], x.shape[2])
            # Padding comes after the norm: the padded tokens are zero vectors that the
            # window's real tokens still attend to (their keys are the qkv bias).
            windows, padded_hw = partition_windows(x, self.window_size)
            x = merge_windows(self.attn(windows), self.window_size, padded_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------- encoder


class SamImageEncoder(nn.Module):
    """SAM's ViT image encoder without its neck; `forward` returns {res2..res5} maps of
    `embed_dim` channels (see the module docstring). Only `pos_embed` requires grad."""

    def __init__(self, config: SamEncoderConfig | None = None) -> None:
        super().__init__()
        config = SamEncoderConfig() if config is None else config
        if isinstance(config, Mapping):
            config = SamEncoderConfig(**config)
        config.validate()
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dim)
        grid = config.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.embed_dim))
        self.blocks = nn.ModuleList(
            Block(config, 0 if index in config.global_attn_indexes else config.window_size)
            for index in range(config.depth)
        )
        self.freeze()

    def freeze(self) -> None:
        """EBSeg trains the positional embedding alone (docs/methods/ebseg.md#what-trains)."""
        for name, param in self.named_parameters():
            param.requires_grad_(name == "pos_embed")

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def output_shapes(self) -> dict[str, SamFeatureShape]:
        """Channels and stride of every output (stride = patch_size / scale: 4, 8, 16, 32)."""
        shapes = {}
        for name, scale in zip(OUTPUT_NAMES, self.config.output_scales):
            stride = self.config.patch_size / scale
            shapes[name] = SamFeatureShape(self.config.embed_dim, int(stride) if float(stride).is_integer() else stride)
        return shapes

    def output_shape(self) -> dict[str, SamFeatureShape]:
        """Alias of `output_shapes` under detectron2's backbone method name."""
        return self.output_shapes()

    def resized_pos_embed(self, grid_hw: tuple[int, int]) -> Tensor:
        """The stored pos-embed bicubically resized to `grid_hw`, channels-last (1, h, w, C).
        Done in every forward (also at the stored size, where it is the identity)."""
        channels_first = self.pos_embed.permute(0, 3, 1, 2).contiguous()
        resized = F.interpolate(channels_first, size=grid_hw, mode="bicubic", align_corners=False)
        return resized.permute(0, 2, 3, 1).contiguous()

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, in_chans, H, W) normalised pixels -> {name: (B, C, h * s, w * s)}, (h, w) the
        patch grid (H, W floored to the patch) and s the level's output scale."""
        if images.dim() != 4 or images.shape[1] != self.config.in_chans:
            raise SamEncoderConfigError(
                f"SAM encoder expects images of shape (B, {self.config.in_chans}, H, W), got {tuple(images.shape)}"
            )
        x = self.patch_embed(images)
        x = x + self.resized_pos_embed((x.shape[1], x.shape[2]))
        kept = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.config.global_attn_indexes:
                kept.append(x)
        outputs = {}
        for name, scale, feature in zip(OUTPUT_NAMES, self.config.output_scales, kept):
            # scale_factor (not a target size) reaches interpolate, as in EBSeg: on odd grids
            # the x0.5 level samples with step 2, not with the size ratio.
            outputs[name] = F.interpolate(
                feature.permute(0, 3, 1, 2), scale_factor=scale, mode="bilinear", align_corners=False
            )
        return outputs


# --------------------------------------------------------------------------- weights


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def sam_image_encoder_state_dict(state: Any, source: str = "SAM weights") -> dict[str, Tensor]:
    """The encoder's tensors out of a SAM state dict.

    A full SAM dict (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`, as in
    `sam_vit_b_01ec64.pth`) gives its `image_encoder.*` entries with the prefix removed; a dict
    without that prefix is taken as encoder keys already. `neck.*` is dropped either way:
    EBSeg's encoder has no neck.
    """
    if not isinstance(state, Mapping) or not state or not all(isinstance(key, str) for key in state):
        raise SamWeightsError(f"{source} is not a SAM state dict (expected a mapping of tensor names to tensors)")
    if any(key.startswith(SAM_CHECKPOINT_PREFIX) for key in state):
        state = {key[len(SAM_CHECKPOINT_PREFIX):]: value for key, value in state.items() if key.startswith(SAM_CHECKPOINT_PREFIX)}
    encoder = {key: value for key, value in state.items() if not key.startswith(_NECK_PREFIX)}
    not_tensors = [key for key, value in encoder.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise SamWeightsError(f"{source} is not a SAM state dict: {not_tensors[:3]} are not tensors")
    return encoder


def load_sam_image_encoder(encoder: SamImageEncoder, path: str | Path, *, trusted: bool = False) -> tuple[str, ...]:
    """Load SAM's image-encoder weights from `path` into `encoder`, strictly.

    Reads with `weights_only=True` unless `trusted`. Every encoder tensor must be present with
    the encoder's shape and no other encoder key may be left over (the official loader is
    strict=False, which would silently skip a misfit file); a misfit is one `SamWeightsError`
    line naming the file and the first problem keys. Returns the keys set aside (neck, prompt
    encoder, mask decoder). `requires_grad` stays as `freeze` set it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SamWeightsError(f"SAM weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # unpickling raises arbitrary types for foreign or corrupt files
        hint = " (if you trust this file, load it with trusted=True)" if not trusted and "weights_only" in str(exc) else ""
        raise SamWeightsError(f"cannot read SAM weights {path}: {_first_line(exc)}{hint}") from None
    state = sam_image_encoder_state_dict(payload, f"SAM weights {path}")
    expected = encoder.state_dict()
    problem = state_dict_mismatch(state, expected)
    if problem:
        config = encoder.config
        raise SamWeightsError(
            f"SAM weights {path} do not fit the image encoder (embed_dim {config.embed_dim}, depth {config.depth}, "
            f"img_size {config.img_size}): {problem}"
        )
    encoder.load_state_dict(state, strict=True)
    prefixed = any(key.startswith(SAM_CHECKPOINT_PREFIX) for key in payload)
    kept = {SAM_CHECKPOINT_PREFIX + key for key in state} if prefixed else set(state)
    return tuple(key for key in payload if key not in kept)
