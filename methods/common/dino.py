"""DINO ViT (Caron et al., ICCV 2021) as a dense feature stream, built on timm.

GSNet's specialist remote-sensing backbone (RSIB) is a DINO ViT-B/8 that stays frozen and
whose every block output, passed through the final LayerNorm, is read as a patch map
(docs/methods/gsnet.md#rsib-stream). `DinoVisionTransformer` is timm's `VisionTransformer`
with DINO's layout (qkv bias, LayerNorm eps 1e-6, GELU MLP x4, CLS token, learned pos-embed
for a 224² pretraining input) plus what GSNet needs on top:

- pixel normalisation on the 0..255 scale. GSNet feeds the RSIB the *CLIP*-normalised image
  (docs/methods/gsnet.md#rsib-sees-clip-normalised-input), so "clip" is the default;
  "imagenet" is DINO's own statistics;
- the positional embedding resized inside `forward`, CLS row kept (`POS_EMBED_RESIZE_MODES`).
  GSNet hard-codes the bicubic scale factor 1.717857142857143 (= 48.1 / 28, DINO's "+0.1"
  trick for a 48² grid frozen into a constant): that is only defined for a 384² input at
  patch 8, and because the factor, not the size, reaches `F.interpolate`, the sampling grid
  differs from a resize to exactly 48² (docs/methods/gsnet.md#rsib-pos-embed-scale-constant);
- `forward(images, blocks)`: the chosen blocks' tokens after the final norm, the way DINO's
  `get_intermediate_layers` returns them, as (B, C, h, w) maps plus the CLS rows;
- the DINO_FINETUNE policies of the official code: "freeze" (default; requires_grad off and
  the module stays in eval mode when a parent calls `.train()`), "attention" (qkv weights and
  the pos-embed train), "full".

The parameter names are DINO's own (`cls_token`, `pos_embed`, `patch_embed.proj`,
`blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`), so DINO and
GSNet RSIB checkpoints load without renaming; see `load_dino_checkpoint` for the wrappers
(`teacher`, `module.`, `backbone.`) and the key check. Block indices are 0-based: GSNet's
"layers 4, 8, 12" are blocks 3, 7, 11.

Failures are one line: `DinoConfigError` (bad architecture or option), `DinoInputError`
(bad images or block indices), `DinoCheckpointError` (a file that is missing, unreadable or
does not fit). The adapters translate them into `ovbench.errors`.
"""

from __future__ import annotations

from ovbench_methods.common.errors import MethodConfigError, WeightsError
import math
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, get_args, Iterable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

__all__ = [
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
    "DINO_VARIANTS",
    "FINETUNE_MODES",
    "IMAGENET_PIXEL_MEAN",
    "IMAGENET_PIXEL_STD",
    "INPUT_NORMS",
    "KEY_CHECKS",
    "OFFICIAL_POS_EMBED_SCALE",
    "POS_EMBED_RESIZE_MODES",
    "DinoArch",
    "DinoCheckpointError",
    "DinoConfigError",
    "DinoFeatures",
    "DinoInputError",
    "DinoLoadReport",
    "DinoVisionTransformer",
    "build_dino",
    "dino_arch",
    "extract_dino_state_dict",
    "load_dino_checkpoint",
    "load_dino_state_dict",
    "read_dino_checkpoint",
    "resize_pos_embed",
]

# Pixel statistics on the 0..255 scale (same values as methods/common/clip.py; repeated here so
# the DINO stream does not depend on the CLIP wrapper).
CLIP_PIXEL_MEAN: tuple[float, float, float] = (122.771, 116.746, 104.094)
CLIP_PIXEL_STD: tuple[float, float, float] = (68.501, 66.632, 70.323)
IMAGENET_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

#: Input normalisations: "clip" = what GSNet feeds its RSIB, "imagenet" = DINO's own
#: (docs/methods/gsnet.md#rsib-sees-clip-normalised-input).
INPUT_NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": (CLIP_PIXEL_MEAN, CLIP_PIXEL_STD),
    "imagenet": (IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD),
}
DinoInputNorm = Literal["clip", "imagenet"]

#: GSNet's hard-coded bicubic scale factor for the RSIB pos-embed (28² -> 48²).
OFFICIAL_POS_EMBED_SCALE: float = 1.717857142857143

#: How the pretrained pos-embed grid is resized to the input's patch grid:
#: - "official": GSNet — bicubic with the fixed scale factor `OFFICIAL_POS_EMBED_SCALE`; only
#:   defined where floor(side * scale) is the target grid (28 -> 48: a 384² input at patch 8);
#: - "dino": DINO's own code — bicubic with scale factor (grid + 0.1) / side per axis, the rule
#:   GSNet's constant was taken from (identical to "official" at 48², defined for any grid);
#: - "exact": bicubic to exactly the target grid (`size=`), the cleaner option.
PosEmbedResizeMode = Literal["official", "dino", "exact"]
POS_EMBED_RESIZE_MODES: tuple[str, ...] = get_args(PosEmbedResizeMode)

#: The official DINO_FINETUNE policies; GSNet uses "freeze".
DinoFinetuneMode = Literal["freeze", "attention", "full"]
FINETUNE_MODES: tuple[str, ...] = get_args(DinoFinetuneMode)

#: How `load_dino_state_dict` checks checkpoint keys against the model:
#: - "official": GSNet's strict=False — load what matches, report the rest, never fail on names;
#: - "missing": fail if any model tensor is absent; extra entries (DINO's projection head
#:   `head.*` in teacher dicts) are ignored. The default: it loads exactly what "official" loads
#:   whenever the official load was complete, and refuses the files it would half-load silently;
#: - "strict": fail on missing and on unexpected keys.
KeyCheck = Literal["official", "missing", "strict"]
KEY_CHECKS: tuple[str, ...] = get_args(KeyCheck)


class DinoConfigError(MethodConfigError):
    """An unknown DINO architecture or option."""


class DinoInputError(MethodConfigError):
    """Images or block indices the DINO stream cannot take."""


class DinoCheckpointError(WeightsError):
    """A DINO/RSIB checkpoint is missing, unreadable, or does not fit the model."""


@dataclass(frozen=True)
class DinoArch:
    """Architecture of a DINO ViT. `pretrain_img_size` fixes the stored pos-embed grid."""

    patch_size: int = 8
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    pretrain_img_size: int = 224

    def validate(self) -> None:
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "pretrain_img_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DinoConfigError(f"DINO {name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise DinoConfigError(f"DINO embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pretrain_img_size % self.patch_size:
            raise DinoConfigError(
                f"DINO pretrain_img_size {self.pretrain_img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if not self.mlp_ratio > 0 or not self.norm_eps > 0:
            raise DinoConfigError(f"DINO mlp_ratio and norm_eps must be positive, got {self.mlp_ratio}, {self.norm_eps}")

    @property
    def pretrained_grid(self) -> int:
        return self.pretrain_img_size // self.patch_size


#: The four released DINO ViTs. GSNet's RSIB is "vit_base_8".
DINO_VARIANTS: dict[str, DinoArch] = {
    "vit_small_16": DinoArch(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_small_8": DinoArch(patch_size=8, embed_dim=384, depth=12, num_heads=6),
    "vit_base_16": DinoArch(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_base_8": DinoArch(patch_size=8, embed_dim=768, depth=12, num_heads=12),
}


def dino_arch(arch: str | DinoArch | Mapping[str, Any] = "vit_base_8", **overrides: Any) -> DinoArch:
    """A validated `DinoArch` from a variant name, a mapping of fields (may hold `variant`), or a `DinoArch`.

    Overrides replace single fields, which is how a `scales: tiny:` overlay shrinks the model
    without changing its kind.
    """
    if isinstance(arch, DinoArch):
        base = arch
    elif isinstance(arch, str):
        if arch not in DINO_VARIANTS:
            raise DinoConfigError(f"unknown DINO variant {arch!r}; expected one of {', '.join(DINO_VARIANTS)}")
        base = DINO_VARIANTS[arch]
    elif isinstance(arch, Mapping):
        fields = dict(arch)
        variant = fields.pop("variant", "vit_base_8")
        base = dino_arch(variant)
        overrides = {**fields, **overrides}
    else:
        raise DinoConfigError(f"DINO architecture must be a variant name or a mapping, got {type(arch).__name__}")
    known = set(DinoArch.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise DinoConfigError(f"unknown DINO architecture field(s) {unknown}; expected some of {sorted(known)}")
    result = replace(base, **overrides) if overrides else base
    result.validate()
    return result


def _check_choice(value: str, choices: Iterable[str], what: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise DinoConfigError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], mode: str = "official") -> Tensor:
    """Resize a (1, 1 + n², C) DINO pos-embed to (1, 1 + h*w, C) for a patch grid (h, w).

    The CLS row is kept, patch rows are resized bicubically (align_corners False) as described
    for each mode in `POS_EMBED_RESIZE_MODES`. A grid equal to the stored one returns the
    table unchanged, as DINO's code does.
    """
    _check_choice(mode, POS_EMBED_RESIZE_MODES, "pos_embed_resize mode")
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise DinoInputError(f"pos_embed must be (1, 1+N, C), got {tuple(pos_embed.shape)}")
    count = pos_embed.shape[1] - 1
    side = math.isqrt(count)
    if side * side != count:
        raise DinoInputError(f"pos_embed holds {count} patch positions, not a square grid")
    height, width = int(grid[0]), int(grid[1])
    if (height, width) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_row, patch_rows = pos_embed[:, :1], pos_embed[:, 1:]
    square = patch_rows.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    if mode == "exact":
        resized = F.interpolate(square, size=(height, width), mode="bicubic", align_corners=False)
    else:
        if mode == "official":
            scale = (OFFICIAL_POS_EMBED_SCALE, OFFICIAL_POS_EMBED_SCALE)
        else:
            scale = ((height + 0.1) / side, (width + 0.1) / side)
        reached = (math.floor(side * scale[0]), math.floor(side * scale[1]))
        if reached != (height, width):
            raise DinoInputError(
                f"pos_embed_resize {mode!r} (bicubic scale factor {scale[0]:.6f}) turns the {side}x{side} "
                f"pos-embed into {reached[0]}x{reached[1]}, not the {height}x{width} patch grid of this input "
                "(GSNet's constant only fits a 384x384 input at patch 8); use pos_embed_resize='exact' or 'dino'"
            )
        # The factor itself (not the output size) is handed to F.interpolate, as in DINO/GSNet:
        # it sets the sampling positions, so this differs from `size=` resizing.
        resized = F.interpolate(square, scale_factor=scale, mode="bicubic", align_corners=False)
    resized = resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, height * width, dim)
    return torch.cat([cls_row, resized], dim=1)


@dataclass
class DinoFeatures:
    """Block outputs of one `DinoVisionTransformer` pass, after the final LayerNorm.

    `maps[i]`: patch tokens of block i as (B, C, h, w); `cls[i]`: its CLS token (B, C).
    """

    grid: tuple[int, int]
    maps: dict[int, Tensor] = field(default_factory=dict)
    cls: dict[int, Tensor] = field(default_factory=dict)


class DinoVisionTransformer(VisionTransformer):
    """timm ViT with DINO's layout, read densely (see the module docstring).

    Args:
        arch: a `DINO_VARIANTS` name, a `DinoArch`, or a mapping of its fields.
        input_norm: key of `INPUT_NORMS` ("clip", the default, is GSNet's official input;
            docs/methods/gsnet.md#rsib-sees-clip-normalised-input).
        pos_embed_resize: one of `POS_EMBED_RESIZE_MODES` ("official" by default).
        finetune: one of `FINETUNE_MODES` ("freeze" by default).
    """

    def __init__(
        self,
        arch: str | DinoArch | Mapping[str, Any] = "vit_base_8",
        *,
        input_norm: str = "clip",
        pos_embed_resize: str = "official",
        finetune: str = "freeze",
    ) -> None:
        arch = dino_arch(arch)
        _check_choice(input_norm, INPUT_NORMS, "DINO input_norm")
        _check_choice(pos_embed_resize, POS_EMBED_RESIZE_MODES, "pos_embed_resize mode")
        _check_choice(finetune, FINETUNE_MODES, "DINO finetune mode")
        # timm's defaults already match DINO: LayerNorm eps 1e-6, exact GELU, no layer scale,
        # no drop path, CLS token, learned pos-embed including the CLS position.
        super().__init__(
            img_size=arch.pretrain_img_size,
            patch_size=arch.patch_size,
            num_classes=0,
            global_pool="token",
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=arch.num_heads,
            mlp_ratio=arch.mlp_ratio,
            qkv_bias=arch.qkv_bias,
            norm_layer=partial(nn.LayerNorm, eps=arch.norm_eps),
        )
        self.arch = arch
        self.input_norm = input_norm
        self.pos_embed_resize = pos_embed_resize
        mean, std = INPUT_NORMS[input_norm]
        # Not persistent: the state dict stays exactly DINO's.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.finetune = finetune
        self.set_finetune(finetune)

    # ----------------------------------------------------------------- training policy
    def set_finetune(self, mode: str) -> None:
        """Apply a DINO_FINETUNE policy to requires_grad (and to the train/eval behaviour)."""
        _check_choice(mode, FINETUNE_MODES, "DINO finetune mode")
        self.finetune = mode
        for name, param in self.named_parameters():
            if mode == "full":
                param.requires_grad_(True)
            elif mode == "attention":
                param.requires_grad_(name.endswith("attn.qkv.weight") or name == "pos_embed")
            else:
                param.requires_grad_(False)
        if mode == "freeze":
            super().train(False)

    def train(self, mode: bool = True) -> "DinoVisionTransformer":
        # A frozen RSIB stays in eval mode when the model around it trains.
        return super().train(mode and self.finetune != "freeze")

    # ----------------------------------------------------------------- geometry
    @property
    def patch_size(self) -> int:
        return self.arch.patch_size

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return self.arch.embed_dim

    @property
    def pretrained_grid(self) -> tuple[int, int]:
        side = self.arch.pretrained_grid
        return side, side

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch_size or width % self.patch_size:
            raise DinoInputError(
                f"DINO input {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize it first (GSNet resizes to 384x384)"
            )
        return height // self.patch_size, width // self.patch_size

    def positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        """(1, 1 + h*w, C) pos-embed for a patch grid; computed in forward so it can train."""
        return resize_pos_embed(self.pos_embed, grid, self.pos_embed_resize)

    # ----------------------------------------------------------------- pixels and tokens
    def normalize(self, images: Tensor) -> Tensor:
        """(B,3,H,W) RGB on the 0..255 scale -> normalised pixels (`input_norm` statistics)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise DinoInputError(f"DINO expects images (B,3,H,W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            images = images.float()
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def embed(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Normalised pixels -> tokens (B, 1 + h*w, C) with CLS and the resized pos-embed."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise DinoInputError(f"DINO expects pixels (B,3,H,W), got {tuple(pixels.shape)}")
        grid = self.patch_grid(int(pixels.shape[-2]), int(pixels.shape[-1]))
        # The projection is called directly: timm's PatchEmbed would insist on the 224² input.
        patches = self.patch_embed.proj(pixels.to(self.patch_embed.proj.weight.dtype))
        tokens = self.patch_embed.norm(patches.flatten(2).transpose(1, 2))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.positional_embedding(grid)
        return self.norm_pre(self.pos_drop(tokens)), grid

    def _block_indices(self, blocks: Sequence[int] | None) -> list[int]:
        if blocks is None:
            return list(range(self.num_blocks))
        if isinstance(blocks, int):
            blocks = [blocks]
        chosen = []
        for index in blocks:
            if isinstance(index, bool) or not isinstance(index, int):
                raise DinoInputError(f"DINO block indices must be integers, got {index!r}")
            resolved = index + self.num_blocks if index < 0 else index
            if not 0 <= resolved < self.num_blocks:
                raise DinoInputError(f"DINO block index {index} is out of range for {self.num_blocks} blocks")
            chosen.append(resolved)
        if not chosen:
            raise DinoInputError("no DINO blocks requested")
        return sorted(set(chosen))

    def features(self, pixels: Tensor, blocks: Sequence[int] | None = None) -> DinoFeatures:
        """Already-normalised pixels -> the chosen blocks' outputs after the final norm.

        `blocks` are 0-based indices (negative counts from the end); None = every block, as
        GSNet's ``get_intermediate_layers(x, n=12)``. Blocks after the last one asked for are
        not run.
        """
        chosen = self._block_indices(blocks)
        tokens, grid = self.embed(pixels)
        out = DinoFeatures(grid=grid)
        wanted = set(chosen)
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in wanted:
                normed = self.norm(tokens)
                out.cls[index] = normed[:, 0]
                out.maps[index] = normed[:, 1:].transpose(1, 2).reshape(normed.shape[0], -1, grid[0], grid[1])
            if index == chosen[-1]:
                break
        return out

    def forward(self, images: Tensor, blocks: Sequence[int] | None = None) -> DinoFeatures:  # type: ignore[override]
        """(B,3,H,W) images on the 0..255 scale -> `DinoFeatures` of the chosen blocks."""
        return self.features(self.normalize(images), blocks)


# --------------------------------------------------------------------------- checkpoints
@dataclass
class DinoLoadReport:
    """What a checkpoint load did: keys the model lacked in the file, and file keys it ignored."""

    source: str
    missing: list[str]
    unexpected: list[str]
    took_teacher: bool = False

    @property
    def complete(self) -> bool:
        return not self.missing


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _strip_prefixes(key: str, prefixes: Sequence[str]) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def extract_dino_state_dict(payload: Any, source: str = "checkpoint") -> tuple[dict[str, Tensor], bool]:
    """DINO weights from a loaded checkpoint object, the way GSNet's RSIB loader reads them.

    Takes the ``teacher`` entry when there is one (DINO training checkpoints), then strips
    ``module.`` (DDP) and ``backbone.`` (DINO's multi-crop wrapper) prefixes. Returns the
    state dict and whether the teacher was taken.
    """
    took_teacher = False
    if isinstance(payload, Mapping) and "teacher" in payload:
        payload, took_teacher = payload["teacher"], True
    if not isinstance(payload, Mapping) or not payload:
        raise DinoCheckpointError(f"{source}: not a DINO state dict (got {type(payload).__name__})")
    non_tensors = [str(key) for key, value in payload.items() if not isinstance(value, Tensor)]
    if non_tensors:
        raise DinoCheckpointError(
            f"{source}: not a DINO state dict; non-tensor entries such as {non_tensors[:3]} "
            "(expected DINO weights, optionally under 'teacher')"
        )
    state: dict[str, Tensor] = {}
    for key, value in payload.items():
        state[_strip_prefixes(str(key), ("module.", "backbone."))] = value
    return state, took_teacher


def read_dino_checkpoint(path: str | Path, *, trusted: bool = False) -> tuple[dict[str, Tensor], bool]:
    """Read a DINO/RSIB checkpoint file (`weights_only=True` unless `trusted`); see `extract_dino_state_dict`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DinoCheckpointError(f"DINO/RSIB checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # unpickling raises arbitrary types for foreign or corrupt files
        raise DinoCheckpointError(_unreadable_message(path, exc, trusted)) from None
    return extract_dino_state_dict(payload, str(path))


def _unreadable_message(path: Path, exc: BaseException, trusted: bool) -> str:
    hint = ""
    if not trusted and "weights_only" in str(exc):
        hint = (
            " (DINO training checkpoints also pickle their arguments; if you trust this file, "
            "load it with trusted=True / --trust-checkpoint)"
        )
    return f"cannot read DINO/RSIB checkpoint {path}: {_first_line(exc)}{hint}"


def _preview(keys: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_dino_state_dict(
    model: DinoVisionTransformer,
    state: Mapping[str, Tensor],
    *,
    key_check: str = "missing",
    source: str = "checkpoint",
    took_teacher: bool = False,
) -> DinoLoadReport:
    """Copy DINO weights into `model` and report missing/unexpected keys.

    `key_check` is one of `KEY_CHECKS`. A tensor whose shape does not fit is always an
    error (the official strict=False load raises on it too). Tensors are cast to the
    model's dtype, as GSNet does with ``model.float()``.
    """
    _check_choice(key_check, KEY_CHECKS, "DINO key_check")
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    arch = model.arch
    what = f"DINO ViT (patch {arch.patch_size}, dim {arch.embed_dim}, depth {arch.depth})"
    shape_errors = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and tuple(state[key].shape) != tuple(own[key].shape)
    ]
    if shape_errors:
        raise DinoCheckpointError(
            f"{source} does not fit the {what}: shape mismatch in {len(shape_errors)} tensor(s): "
            f"{_preview(shape_errors, 3)}"
        )
    fails = bool(missing) if key_check != "official" else False
    if key_check == "strict" and unexpected:
        fails = True
    if fails:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_preview(unexpected)}")
        raise DinoCheckpointError(f"{source} does not fit the {what}: " + "; ".join(parts))
    with torch.no_grad():
        for key, target in own.items():
            if key in state:
                target.copy_(state[key].to(dtype=target.dtype))
    return DinoLoadReport(source=source, missing=missing, unexpected=unexpected, took_teacher=took_teacher)


def load_dino_checkpoint(
    model: DinoVisionTransformer,
    path: str | Path,
    *,
    key_check: str = "missing",
    trusted: bool = False,
) -> DinoLoadReport:
    """Load a DINO/RSIB checkpoint file into `model` (see `read_dino_checkpoint`, `load_dino_state_dict`)."""
    _check_choice(key_check, KEY_CHECKS, "DINO key_check")
    state, took_teacher = read_dino_checkpoint(path, trusted=trusted)
    return load_dino_state_dict(model, state, key_check=key_check, source=str(path), took_teacher=took_teacher)


def build_dino(
    arch: str | DinoArch | Mapping[str, Any] = "vit_base_8",
    weights: str | Path | None = None,
    *,
    input_norm: str = "clip",
    pos_embed_resize: str = "official",
    finetune: str = "freeze",
    key_check: str = "missing",
    trusted: bool = False,
) -> DinoVisionTransformer:
    """A `DinoVisionTransformer`, randomly initialised (`weights=None`) or loaded from a local file.

    Nothing is downloaded. The finetune policy is applied after loading, so a frozen model
    stays frozen whatever the file held.
    """
    model = DinoVisionTransformer(arch, input_norm=input_norm, pos_embed_resize=pos_embed_resize, finetune=finetune)
    if weights is not None:
        load_dino_checkpoint(model, weights, key_check=key_check, trusted=trusted)
        model.set_finetune(finetune)
    return model
