"""Dense access to open_clip ViT image towers.

`ClipImageEncoder` wraps an open_clip `VisionTransformer` and exposes the pieces dense
open-vocabulary methods recombine, instead of the pooled image embedding CLIP returns:

- pixel normalisation on the 0..255 scale (CLIP statistics by default);
- patch embedding with the positional embedding resized bicubically to any patch grid,
  CLS position kept, computed inside `forward` so a trainable pos-embed keeps its gradient;
- `run_blocks`: any range of blocks on any token sequence, with an optional additive
  attention mask, collecting chosen block outputs (CAT-Seg/GSNet guidance, SAN/EBSeg reruns);
- `dense_last_block`: the last block with its attention replaced by a value path
  (MaskCLIP, CAT-Seg variants; see `LAST_BLOCK_MODES`);
- `project`: ln_post + proj on every token, the way CLIP treats its pooled CLS token;
- `encode_resized`: the cost-volume methods' input path (CAT-Seg, GSNet): normalise, pad to a
  multiple, stretch to a fixed CLIP resolution, then the dense pass (`forward_pixels`).

Block indices are 0-based: block ``i`` is ``visual.transformer.resblocks[i]`` and its
"output" is the token sequence after it.
"""

from __future__ import annotations

from ovbench_methods.common.errors import MethodConfigError
import math
from dataclasses import dataclass, field
from typing import Collection, get_args, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# CLIP's and ImageNet's pixel statistics on the 0..255 scale (images arrive as 0..255 floats).
CLIP_PIXEL_MEAN: tuple[float, float, float] = (122.771, 116.746, 104.094)
CLIP_PIXEL_STD: tuple[float, float, float] = (68.501, 66.632, 70.323)
IMAGENET_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

#: How the last block turns tokens into dense features.
#: - "maskclip": x + out_proj(v(ln_1 x)), then + MLP(ln_2 .) — MaskCLIP's official ViT code
#:   (chongzhou96/MaskCLIP, backbones/vit.py, `return_qkv` path): per-token residual and FFN kept.
#: - "catseg": CLS_in + out_proj(v(ln_1 x)), then + MLP(ln_2 .) — CAT-Seg/GSNet: the residual is
#:   the block input's CLS token broadcast to every position.
#: - "value": out_proj(v(ln_1 x)) alone — no residual, no FFN.
#: - "attention": the ordinary block (plain CLIP patch tokens; a baseline).
LastBlockMode = Literal["maskclip", "catseg", "value", "attention"]
LAST_BLOCK_MODES: tuple[str, ...] = get_args(LastBlockMode)


class DenseClipError(MethodConfigError):
    """The image tower cannot be run densely, or a dense call got bad arguments."""


@dataclass
class DenseImageFeatures:
    """What one dense pass of `ClipImageEncoder` produces.

    `dense` holds the last block's patch tokens after ln_post + proj, (N, D, h, w), not
    normalised. `block_maps[i]` / `block_cls[i]` hold the patch tokens (N, C, h, w) and the
    CLS token (N, C) after block i, for each block index the caller asked for.
    """

    dense: Tensor
    grid: tuple[int, int]
    block_maps: dict[int, Tensor] = field(default_factory=dict)
    block_cls: dict[int, Tensor] = field(default_factory=dict)
    #: `encode_resized` only: the (h, w) of the input and of the padded canvas that was
    #: stretched to the CLIP resolution; the feature grid covers the padded canvas.
    image_size: tuple[int, int] | None = None
    padded_size: tuple[int, int] | None = None


def register_pixel_statistics(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """Give an image encoder `pixel_mean` / `pixel_std` buffers (1,3,1,1) on the 0..255 scale;
    not persistent: they are settings, not weights, and no official file holds them."""
    module.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)


def normalize_pixels(module: nn.Module, images: Tensor, dtype: torch.dtype) -> Tensor:
    """(N,3,H,W) RGB on the 0..255 scale -> (images - mean) / std of `module`'s statistics
    (`register_pixel_statistics`), computed in float32 and returned in `dtype`."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DenseClipError(f"expected images of shape (N,3,H,W), got {tuple(images.shape)}")
    pixels = (images.float() - module.pixel_mean) / module.pixel_std
    return pixels.to(dtype)


def qkv_projections(attn: nn.Module) -> tuple[tuple[Tensor, Tensor | None], ...]:
    """The (weight, bias) pairs of the query, key and value projections of an attention layer.

    Packed `in_proj_weight` layers (OpenAI / open_clip) are sliced along dim 0 into views, so
    gradients still reach the packed parameter; layers that keep separate q/k/v weights
    (`q_proj_weight`, ...) are read as they are. Methods that fine-tune split q/k/v can
    therefore reuse every dense path here unchanged.
    """
    packed = getattr(attn, "in_proj_weight", None)
    bias = getattr(attn, "in_proj_bias", None)
    if packed is not None:
        weights = packed.chunk(3, dim=0)
    else:
        try:
            weights = (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight)
        except AttributeError:
            raise DenseClipError(
                f"attention layer {type(attn).__name__} has neither a packed in_proj_weight nor q/k/v_proj_weight"
            ) from None
    biases = bias.chunk(3, dim=0) if bias is not None else (None, None, None)
    return tuple(zip(weights, biases))


def value_path(attn: nn.Module, normed_tokens: Tensor) -> Tensor:
    """out_proj(W_v x + b_v): the attention output if every token attended only to itself."""
    # open_clip's custom attention can rescale heads or normalise before out_proj; the value
    # path here would silently skip those steps, so such layers are refused.
    inner_norm = getattr(attn, "ln_inner", None)
    if getattr(attn, "head_scale", None) is not None or not isinstance(inner_norm, (nn.Identity, type(None))):
        raise DenseClipError("the value path does not support attention with head scaling or an inner norm")
    _, _, (value_weight, value_bias) = qkv_projections(attn)
    values = F.linear(normed_tokens, value_weight, value_bias)
    return attn.out_proj(values)


class ClipImageEncoder(nn.Module):
    """An open_clip ViT image tower with dense, block-level access (see module docstring).

    Args:
        visual: `open_clip` `VisionTransformer` (``clip_model.visual``); owned by this module.
        pixel_mean, pixel_std: per-channel statistics on the 0..255 scale.
    """

    def __init__(
        self,
        visual: nn.Module,
        pixel_mean: Sequence[float] = CLIP_PIXEL_MEAN,
        pixel_std: Sequence[float] = CLIP_PIXEL_STD,
    ) -> None:
        super().__init__()
        required = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
        missing = [name for name in required if not hasattr(visual, name)]
        if missing:
            raise DenseClipError(
                f"dense CLIP needs an open_clip VisionTransformer image tower; {type(visual).__name__} lacks {missing}"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise DenseClipError("dense CLIP does not support attention-pooled image towers (CoCa-style attn_pool)")
        self.visual = visual
        register_pixel_statistics(self, pixel_mean, pixel_std)
        # The resized table of a frozen pos-embed is a constant: keep the last one.
        self._pos_cache: tuple[tuple, Tensor] | None = None

    # ----------------------------------------------------------------- geometry
    @property
    def patch_size(self) -> tuple[int, int]:
        height, width = self.visual.conv1.kernel_size
        return int(height), int(width)

    @property
    def width(self) -> int:
        """Token width C of the transformer."""
        return int(self.visual.conv1.out_channels)

    @property
    def output_dim(self) -> int:
        """Width D of the projected (joint image-text) space."""
        proj = getattr(self.visual, "proj", None)
        return int(proj.shape[1]) if proj is not None else self.width

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def pretrained_grid(self) -> tuple[int, int]:
        """The patch grid the positional embedding was trained for."""
        grid = getattr(self.visual, "grid_size", None)
        if grid is not None:
            return int(grid[0]), int(grid[1])
        side = math.isqrt(self.visual.positional_embedding.shape[0] - 1)
        return side, side

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid for an input of `height` x `width` pixels (rounded up, see `fit_to_patches`)."""
        patch_h, patch_w = self.patch_size
        return math.ceil(height / patch_h), math.ceil(width / patch_w)

    # ------------------------------------------------------------------ pixels
    def normalize(self, images: Tensor) -> Tensor:
        """(N,3,H,W) RGB on the 0..255 scale -> normalised pixels in the tower's dtype."""
        return normalize_pixels(self, images, self.visual.conv1.weight.dtype)

    def fit_to_patches(self, pixels: Tensor) -> Tensor:
        """Stretch an input whose sides are not multiples of the patch size up to the next multiple.

        A strided conv would silently drop the remainder rows/columns, and padding would put
        the grid cells out of register with the image once the scores are resized back to
        the input size; a slight stretch keeps every grid cell over its own image region.
        """
        patch_h, patch_w = self.patch_size
        height, width = pixels.shape[-2:]
        target = (math.ceil(height / patch_h) * patch_h, math.ceil(width / patch_w) * patch_w)
        if target == (height, width):
            return pixels
        return F.interpolate(pixels, size=target, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ tokens
    def positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The (1 + h*w, C) positional embedding for a patch grid; bicubic resize, CLS row kept.

        The resize runs here, inside the forward, so a trainable table keeps its gradient;
        for a frozen table the result is cached until the table's values change.
        """
        table = self.visual.positional_embedding
        pretrained = self.pretrained_grid
        if tuple(grid) == pretrained:
            return table
        if table.requires_grad:
            return self._resize_positional_embedding(table, pretrained, grid)
        # _version moves on every in-place write (load_state_dict, optimiser steps); a table
        # made under inference_mode must not leak into autograd-enabled code.
        key = (
            tuple(grid), table.data_ptr(), table._version, table.device, table.dtype, torch.is_inference_mode_enabled()
        )
        if self._pos_cache is None or self._pos_cache[0] != key:
            with torch.no_grad():
                self._pos_cache = (key, self._resize_positional_embedding(table, pretrained, grid))
        return self._pos_cache[1]

    @staticmethod
    def _resize_positional_embedding(table: Tensor, pretrained: tuple[int, int], grid: tuple[int, int]) -> Tensor:
        cls_row, patch_rows = table[:1], table[1:]
        patch_rows = patch_rows.reshape(1, pretrained[0], pretrained[1], -1).permute(0, 3, 1, 2)
        # Bicubic in float32: half-precision bicubic is unsupported on some devices.
        resized = F.interpolate(patch_rows.float(), size=tuple(grid), mode="bicubic", align_corners=False)
        resized = resized.to(table.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
        return torch.cat([cls_row, resized], dim=0)

    def embed(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Normalised pixels (sides multiples of the patch) -> tokens (N, 1 + h*w, C) after ln_pre."""
        patches = self.visual.conv1(pixels)
        grid = (int(patches.shape[-2]), int(patches.shape[-1]))
        tokens = patches.flatten(2).transpose(1, 2)
        cls = self.visual.class_embedding.to(tokens.dtype).view(1, 1, -1).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.positional_embedding(grid).to(tokens.dtype)
        # open_clip's patch dropout is skipped on purpose: dense outputs need every patch.
        return self.visual.ln_pre(tokens), grid

    @property
    def _blocks_batch_first(self) -> bool:
        # open_clip >= 2.24 runs its blocks batch-first; older releases expect (L, N, C).
        return bool(getattr(self.visual.transformer, "batch_first", False))

    def run_blocks(
        self,
        tokens: Tensor,
        start: int = 0,
        stop: int | None = None,
        attn_mask: Tensor | None = None,
        collect: Collection[int] = (),
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Run blocks ``start .. stop-1`` on (N, L, C) tokens.

        `attn_mask` is passed to every block (additive float, (L, L) or (N*heads, L, L)).
        Returns the final tokens and ``{i: tokens after block i}`` for each i in `collect`.
        """
        stop = self.num_blocks if stop is None else stop
        if not 0 <= start <= stop <= self.num_blocks:
            raise DenseClipError(f"block range {start}..{stop} outside 0..{self.num_blocks}")
        collected: dict[int, Tensor] = {}
        x = tokens if self._blocks_batch_first else tokens.transpose(0, 1)
        for index in range(start, stop):
            x = self.blocks[index](x, attn_mask=attn_mask)
            if index in collect:
                collected[index] = x if self._blocks_batch_first else x.transpose(0, 1)
        return (x if self._blocks_batch_first else x.transpose(0, 1)), collected

    def dense_last_block(self, tokens: Tensor, mode: str = "maskclip", block_index: int = -1) -> Tensor:
        """Apply block `block_index` (default: the last) in one of `LAST_BLOCK_MODES` to (N, L, C) tokens."""
        if mode not in LAST_BLOCK_MODES:
            raise DenseClipError(f"unknown last-block mode {mode!r}; expected one of {', '.join(LAST_BLOCK_MODES)}")
        block = self.blocks[block_index]
        if mode == "attention":
            index = block_index % self.num_blocks
            return self.run_blocks(tokens, index, index + 1)[0]
        values = value_path(block.attn, block.ln_1(tokens))
        if mode == "value":
            return values
        layer_scale_1 = getattr(block, "ls_1", nn.Identity())
        layer_scale_2 = getattr(block, "ls_2", nn.Identity())
        residual = tokens if mode == "maskclip" else tokens[:, :1]
        out = residual + layer_scale_1(values)
        return out + layer_scale_2(block.mlp(block.ln_2(out)))

    def project(self, tokens: Tensor) -> Tensor:
        """ln_post + proj on every token: (..., C) -> (..., D)."""
        tokens = self.visual.ln_post(tokens)
        proj = getattr(self.visual, "proj", None)
        return tokens @ proj if proj is not None else tokens

    @staticmethod
    def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """(N, 1 + h*w, C) tokens -> (N, C, h, w) patch map (CLS dropped)."""
        patches = tokens[:, 1:]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[-1], grid[0], grid[1])

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        images: Tensor,
        last_block: str = "maskclip",
        block_indices: Collection[int] = (),
    ) -> DenseImageFeatures:
        """(N,3,H,W) 0..255 images -> dense features on the ceil(H/p) x ceil(W/p) patch grid.

        `block_indices` selects block outputs to return as maps (ordinary blocks; asking for
        the last block gives its ordinary attention output, computed besides the dense one).
        """
        return self.forward_pixels(self.fit_to_patches(self.normalize(images)), last_block, block_indices)

    def forward_pixels(
        self,
        pixels: Tensor,
        last_block: str = "maskclip",
        block_indices: Collection[int] = (),
    ) -> DenseImageFeatures:
        """`forward` on already normalised pixels whose sides are multiples of the patch size."""
        last = self.num_blocks - 1
        for index in block_indices:
            if not 0 <= index <= last:
                raise DenseClipError(f"block index {index} outside 0..{last}")
        tokens, grid = self.embed(pixels)
        tokens, collected = self.run_blocks(tokens, 0, last, collect=block_indices)
        if last in block_indices:
            collected[last] = self.run_blocks(tokens, last, last + 1)[0]
        final = self.dense_last_block(tokens, last_block)
        dense = self.tokens_to_map(self.project(final), grid)
        return DenseImageFeatures(
            dense=dense,
            grid=grid,
            block_maps={i: self.tokens_to_map(t, grid) for i, t in collected.items()},
            block_cls={i: t[:, 0] for i, t in collected.items()},
        )

    def encode_resized(
        self,
        images: Tensor,
        size: tuple[int, int],
        pad_multiple: int = 0,
        last_block: str = "catseg",
        block_indices: Collection[int] = (),
    ) -> DenseImageFeatures:
        """The CAT-Seg / GSNet image path: (N,3,h,w) 0..255 -> dense features at a fixed size.

        Normalise, zero-pad bottom/right (i.e. with the mean colour) to a multiple of
        `pad_multiple` like detectron2's ImageList, stretch bilinearly to `size` (the CLIP
        resolution, e.g. 384 x 384), then the dense pass. The grid covers the padded canvas;
        `image_size` / `padded_size` in the result say which part of it holds the image.
        """
        height, width = int(images.shape[-2]), int(images.shape[-1])
        pixels = pad_to_multiple(self.normalize(images), pad_multiple)
        padded = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        patch_h, patch_w = self.patch_size
        if size[0] % patch_h or size[1] % patch_w:
            raise DenseClipError(f"CLIP input size {tuple(size)} is not a multiple of the patch size {self.patch_size}")
        if padded != tuple(size):
            pixels = F.interpolate(pixels, size=tuple(size), mode="bilinear", align_corners=False)
        features = self.forward_pixels(pixels, last_block, block_indices)
        features.image_size = (height, width)
        features.padded_size = padded
        return features


def pad_to_multiple(pixels: Tensor, multiple: int) -> Tensor:
    """Zero-pad (N,C,H,W) on the bottom and right up to the next multiple of `multiple` (0: none)."""
    if multiple <= 0:
        return pixels
    height, width = pixels.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return pixels
    return F.pad(pixels, (0, pad_w, 0, pad_h))
