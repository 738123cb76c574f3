"""CLIP image-tower passes on masked crops that overwrite the crop's background patch tokens.

OV-Seg and SCAN classify each mask proposal by running CLIP on a masked crop of it
(`ovbench_methods.common.crop_and_mask`). Both then treat the crop's background patches
specially inside the image tower, and share one rule for which patches are background
(docs/methods/mask-proposal-core.md#outside-patches):

- OV-Seg, mask prompts (docs/methods/ovseg.md#mask-prompts): background patch tokens are
  replaced by learned embeddings, once before the CLS token and the positional embedding are
  added, and again after each of the first ``depth - 1`` blocks
  (`mask_prompted_image_embedding`, `MaskPromptEmbedding`).
- SCAN, contextual shift (docs/methods/scan.md#contextual-shift): a frozen copy of the tower
  first sees the whole image (`full_image_context`); then, in the crop pass, after chosen
  blocks a random fraction of the crop's background tokens is overwritten with that block's
  CLS token from the whole-image pass (`contextual_shift_image_embedding`).

Layer numbering follows the official code, and differs from `ClipImageEncoder`'s 0-based
block indices: *layer* 0 is the token sequence after ln_pre and layer ``d`` (1 ..
num_blocks) the sequence after the ``d``-th block, i.e. after ``resblocks[d - 1]``. Mask
prompt ``mask_embedding[d]`` and the contextual-shift layers ``replace_layers`` use this
numbering.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.clip import ClipImageEncoder
from ovbench_methods.common.errors import MethodConfigError

__all__ = [
    "ClipContext",
    "ContextResizeMode",
    "MASK_PROMPT_INIT_STD",
    "MaskPromptEmbedding",
    "MaskPromptInit",
    "clip_image_embedding",
    "contextual_shift_image_embedding",
    "full_image_context",
    "mask_prompted_image_embedding",
    "outside_patch_flags",
    "replaced_token_counts",
    "sample_background_tokens",
]

#: Standard deviation of the mask-prompt training initialisation (MAE's mask-token init).
MASK_PROMPT_INIT_STD = 0.02

#: "zeros": the official inference code's initialisation (the trained values are then loaded);
#: "normal": N(0, 0.02), what mask prompt tuning starts from.
MaskPromptInit = Literal["zeros", "normal"]

#: How the whole image is resized to CLIP's input size for SCAN's original-CLIP pass:
#: "nearest" is the official `F.interpolate` default; "bilinear" (align_corners False) the
#: cleaner option (docs/methods/scan.md#nearest-resize).
ContextResizeMode = Literal["nearest", "bilinear"]


# ------------------------------------------------------------------ outside patches
def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def outside_patch_flags(region_masks: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """Which patches of each crop lie outside its mask: (V,1,S,S) masks -> (V, g*g) bool.

    The official rule: ``ceil(avg_pool2d(mask, kernel_size=patch, stride=patch))``, so a patch
    with at least one mask pixel counts as inside and only patches with no mask pixel are
    outside. The (V,1,g,g) result is flattened row-major (row by row, left to right within a
    row), the order of CLIP's patch tokens (``conv1`` output flattened over (g_h, g_w)).
    The pooling runs in float32; SCAN pools in float16, which gives the same flags for 0/1
    masks (the smallest non-zero patch mean, 1/patch², is representable in float16).
    """
    patch = _pair(patch_size)
    if region_masks.dim() != 4 or region_masks.shape[1] != 1:
        raise MethodConfigError(f"region masks must be (V,1,S,S), got {tuple(region_masks.shape)}")
    height, width = region_masks.shape[-2:]
    if height % patch[0] or width % patch[1]:
        raise MethodConfigError(f"region mask size {(height, width)} is not a multiple of the patch size {patch}")
    pooled = F.avg_pool2d(region_masks.float(), kernel_size=patch, stride=patch)
    return (torch.ceil(pooled) == 0).flatten(1)


def _replace_patch_tokens(tokens: Tensor, where: Tensor, values: Tensor) -> Tensor:
    """Tokens (V, 1+N, C) with patch token n of crop v set to `values` where ``where[v, n]``;
    the CLS token (position 0) is never touched. `values` broadcasts to (V, N, C)."""
    patches = torch.where(where.unsqueeze(-1), values.to(tokens.dtype), tokens[:, 1:])
    return torch.cat([tokens[:, :1], patches], dim=1)


# ------------------------------------------------------------------ plain CLIP
def _check_cls_pooling(encoder: ClipImageEncoder) -> None:
    # Both methods read the CLS token; an average-pooled tower would make the official
    # and this code disagree about what "the image embedding" is.
    pool_type = getattr(encoder.visual, "pool_type", "tok")
    if pool_type != "tok":
        raise MethodConfigError(f"masked-crop CLIP needs a CLS-pooled image tower (pool_type 'tok'), got {pool_type!r}")


def _check_regions(encoder: ClipImageEncoder, regions: Tensor, region_masks: Tensor | None) -> None:
    if regions.dim() != 4 or regions.shape[1] != 3:
        raise MethodConfigError(f"regions must be (V,3,S,S), got {tuple(regions.shape)}")
    patch = encoder.patch_size
    if regions.shape[-2] % patch[0] or regions.shape[-1] % patch[1]:
        raise MethodConfigError(f"region size {tuple(regions.shape[-2:])} is not a multiple of the patch size {patch}")
    if region_masks is not None and (
        region_masks.dim() != 4
        or region_masks.shape[0] != regions.shape[0]
        or region_masks.shape[1] != 1
        or region_masks.shape[-2:] != regions.shape[-2:]
    ):
        raise MethodConfigError(
            f"region masks must be (V,1,S,S) matching regions {tuple(regions.shape)}, got {tuple(region_masks.shape)}"
        )


def _pooled_embedding(encoder: ClipImageEncoder, tokens: Tensor) -> Tensor:
    """CLIP's image embedding from final tokens (N, 1+L, C): ln_post + proj of the CLS token."""
    return encoder.project(tokens[:, 0])


def clip_image_embedding(encoder: ClipImageEncoder, regions: Tensor) -> Tensor:
    """Plain CLIP image embedding (V, D) of normalised crops (V,3,S,S), not L2-normalised.

    What OV-Seg computes with mask prompts switched off, and what both paths below reduce
    to when nothing is replaced.
    """
    _check_cls_pooling(encoder)
    _check_regions(encoder, regions, None)
    tokens, _ = encoder.embed(regions)
    tokens, _ = encoder.run_blocks(tokens)
    return _pooled_embedding(encoder, tokens)


# ------------------------------------------------------------------ OV-Seg mask prompts
class MaskPromptEmbedding(nn.Module):
    """OV-Seg's learned mask prompts: one embedding per (depth, patch position).

    The parameter is ``mask_embedding`` of shape (depth, grid_tokens, width), the name the
    official checkpoints use under ``clip_adapter.clip_model.visual.mask_embedding``. A
    middle dimension of 1 (one prompt shared by all positions) is accepted as the official
    forward accepts it. ``mask_embedding[0]`` is applied before the positional embedding,
    ``mask_embedding[d]`` after layer d (docs/methods/ovseg.md#mask-prompts).
    """

    def __init__(self, depth: int, grid_tokens: int, width: int, init: MaskPromptInit = "zeros") -> None:
        super().__init__()
        if depth < 1 or grid_tokens < 1 or width < 1:
            raise MethodConfigError(
                f"mask prompts need depth, grid_tokens and width >= 1, got {depth}, {grid_tokens}, {width}"
            )
        if init not in get_args(MaskPromptInit):
            raise MethodConfigError(f"mask prompt init must be one of {list(get_args(MaskPromptInit))}, got {init!r}")
        self.mask_embedding = nn.Parameter(torch.zeros(depth, grid_tokens, width))
        if init == "normal":
            nn.init.normal_(self.mask_embedding, std=MASK_PROMPT_INIT_STD)

    @property
    def depth(self) -> int:
        return int(self.mask_embedding.shape[0])

    def forward(self, encoder: ClipImageEncoder, regions: Tensor, region_masks: Tensor) -> Tensor:
        """(V, D) image embeddings of the crops with these prompts (`mask_prompted_image_embedding`)."""
        return mask_prompted_image_embedding(encoder, self.mask_embedding, regions, region_masks)


def mask_prompted_image_embedding(
    encoder: ClipImageEncoder,
    mask_embedding: Tensor | None,
    regions: Tensor,
    region_masks: Tensor | None,
) -> Tensor:
    """OV-Seg's crop embedding (V, D), not L2-normalised.

    regions (V,3,S,S) CLIP-normalised crops, region_masks (V,1,S,S) 0/1 masks;
    mask_embedding (depth, g*g or 1, C), or None for plain CLIP (MASK_PROMPT_FWD off). In
    the official order:

    1. patch tokens from ``conv1``; outside patches (`outside_patch_flags`) set to
       ``mask_embedding[0]``, so the prompt itself then receives the positional embedding
       and ln_pre (docs/methods/ovseg.md#depth-0-prompt-before-pos-embed);
    2. CLS prepended, positional embedding added, ln_pre;
    3. after layer d (the d-th block, 1-based) for d = 1 .. depth-1, outside patch tokens set
       to ``mask_embedding[d]``; the CLS token is never replaced;
    4. CLS -> ln_post -> proj.
    """
    if mask_embedding is None:
        return clip_image_embedding(encoder, regions)
    _check_cls_pooling(encoder)
    if region_masks is None:
        raise MethodConfigError("mask prompts need region masks")
    _check_regions(encoder, regions, region_masks)
    grid = encoder.patch_grid(int(regions.shape[-2]), int(regions.shape[-1]))
    tokens_per_crop = grid[0] * grid[1]
    if (
        mask_embedding.dim() != 3
        or mask_embedding.shape[0] < 1
        or mask_embedding.shape[1] not in (1, tokens_per_crop)
        or mask_embedding.shape[2] != encoder.width
    ):
        raise MethodConfigError(
            f"mask_embedding must be (depth >= 1, {tokens_per_crop} or 1, {encoder.width}) for a {grid[0]}x{grid[1]} "
            f"patch grid, got {tuple(mask_embedding.shape)}"
        )
    outside = outside_patch_flags(region_masks, encoder.patch_size)
    visual = encoder.visual
    patches = visual.conv1(regions).flatten(2).transpose(1, 2)  # (V, g*g, C), row-major
    patches = torch.where(outside.unsqueeze(-1), mask_embedding[0].to(patches.dtype), patches)
    cls = visual.class_embedding.to(patches.dtype).view(1, 1, -1).expand(patches.shape[0], -1, -1)
    tokens = torch.cat([cls, patches], dim=1) + encoder.positional_embedding(grid).to(patches.dtype)
    tokens = visual.ln_pre(tokens)
    depth = int(mask_embedding.shape[0])
    for index in range(encoder.num_blocks):
        tokens, _ = encoder.run_blocks(tokens, index, index + 1)
        layer = index + 1
        if layer < depth:
            tokens = _replace_patch_tokens(tokens, outside, mask_embedding[layer])
    return _pooled_embedding(encoder, tokens)


# ------------------------------------------------------------------ SCAN contextual shift
@dataclass
class ClipContext:
    """What SCAN keeps from the frozen original-CLIP pass on the whole image.

    `layer_tokens[d]` is the full token sequence (B, 1 + g*g, C), CLS first, after layer d:
    d = 0 after ln_pre, d = 1 .. num_blocks after the d-th block (the official numbering;
    SCAN's calibration reads the patches of layers 6, 9, 12 for ViT-B and 12, 18, 24 for
    ViT-L, its contextual shift the CLS tokens). `embedding` (B, D) is the projected final
    CLS token, not L2-normalised (docs/methods/scan.md#original-clip-pass).
    """

    layer_tokens: tuple[Tensor, ...]
    embedding: Tensor
    grid: tuple[int, int]

    @property
    def num_blocks(self) -> int:
        return len(self.layer_tokens) - 1

    def _tokens(self, layer: int) -> Tensor:
        if not 0 <= layer <= self.num_blocks:
            raise MethodConfigError(f"layer {layer} outside 0..{self.num_blocks} (0 = after ln_pre)")
        return self.layer_tokens[layer]

    def cls(self, layer: int) -> Tensor:
        """CLS token (B, C) after layer `layer`."""
        return self._tokens(layer)[:, 0]

    def patches(self, layer: int) -> Tensor:
        """Patch tokens (B, g*g, C) after layer `layer`, row-major."""
        return self._tokens(layer)[:, 1:]

    def patch_map(self, layer: int) -> Tensor:
        """Patch tokens after layer `layer` as a (B, C, g_h, g_w) map."""
        return ClipImageEncoder.tokens_to_map(self._tokens(layer), self.grid)

    def layer_cls(self, image_index: int = 0) -> Tensor:
        """(num_blocks + 1, C): image `image_index`'s CLS token after every layer, the
        `context_cls` of `contextual_shift_image_embedding` (official inference uses image 0)."""
        return torch.stack([tokens[image_index, 0] for tokens in self.layer_tokens])


def full_image_context(
    encoder: ClipImageEncoder,
    images: Tensor,
    resize_mode: ContextResizeMode = "nearest",
    size: int | tuple[int, int] = 224,
) -> ClipContext:
    """SCAN's original-CLIP pass: whole images -> `ClipContext`.

    images (B,3,H,W) are CLIP-normalised and zero-padded (i.e. padded with the mean colour)
    to the model's size divisibility, as SCAN builds them. They are resized to `size` with
    `resize_mode` (official: nearest, `F.interpolate`'s default) and run through the plain
    tower, keeping the tokens after ln_pre and after every block and the final embedding.
    """
    if resize_mode not in get_args(ContextResizeMode):
        raise MethodConfigError(f"resize mode must be one of {list(get_args(ContextResizeMode))}, got {resize_mode!r}")
    _check_cls_pooling(encoder)
    if images.dim() != 4 or images.shape[1] != 3:
        raise MethodConfigError(f"images must be (B,3,H,W), got {tuple(images.shape)}")
    target = _pair(size)
    patch = encoder.patch_size
    if target[0] % patch[0] or target[1] % patch[1]:
        raise MethodConfigError(f"context size {target} is not a multiple of the patch size {patch}")
    if tuple(images.shape[-2:]) != target:
        align = None if resize_mode == "nearest" else False
        images = F.interpolate(images, size=target, mode=resize_mode, align_corners=align)
    tokens, grid = encoder.embed(images)
    layer_tokens = [tokens]
    for index in range(encoder.num_blocks):
        tokens, _ = encoder.run_blocks(tokens, index, index + 1)
        layer_tokens.append(tokens)
    return ClipContext(layer_tokens=tuple(layer_tokens), embedding=_pooled_embedding(encoder, tokens), grid=grid)


def replaced_token_counts(outside: Tensor, replace_ratio: float) -> Tensor:
    """How many background tokens each crop gets replaced: ``int(replace_ratio * count)``.

    outside (V, N) bool -> (V,) int64. The official code truncates the Python float product;
    float64 multiplication and floor reproduce it exactly for non-negative values.
    """
    counts = outside.sum(dim=1).to(torch.float64)
    return torch.floor(counts * float(replace_ratio)).to(torch.int64)


def sample_background_tokens(outside: Tensor, replace_ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """Choose the tokens one contextual-shift layer overwrites: (V, N) bool -> (V, N) bool.

    Per crop, independently, ``int(replace_ratio * background_count)`` distinct background
    tokens, uniformly without replacement, as the official ``random.sample`` over each crop's
    background positions. Only the random source differs: the official code draws from
    Python's unseeded `random`; here every crop gets float64 keys from `generator` (None: the
    global torch generator) and its lowest-keyed background tokens are chosen, so a seeded
    generator gives a reproducible choice (docs/methods/scan.md#seeded-contextual-shift).
    Nothing is drawn when no crop has a token to replace.
    """
    if outside.dim() != 2 or outside.dtype != torch.bool:
        raise MethodConfigError(f"outside flags must be a (V,N) bool tensor, got {tuple(outside.shape)} {outside.dtype}")
    if not 0.0 <= replace_ratio <= 1.0:
        raise MethodConfigError(f"replace ratio must be in [0, 1], got {replace_ratio}")
    counts = replaced_token_counts(outside, replace_ratio)
    if outside.numel() == 0 or int(counts.max()) == 0:
        return torch.zeros_like(outside)
    key_device = generator.device if generator is not None else outside.device
    keys = torch.rand(outside.shape, generator=generator, dtype=torch.float64, device=key_device).to(outside.device)
    keys = keys.masked_fill(~outside, float("inf"))
    order = keys.argsort(dim=1)
    rank_kept = torch.arange(outside.shape[1], device=outside.device).unsqueeze(0) < counts.unsqueeze(1)
    return torch.zeros_like(outside).scatter(1, order, rank_kept)


def contextual_shift_image_embedding(
    encoder: ClipImageEncoder,
    regions: Tensor,
    region_masks: Tensor,
    context_cls: Tensor | ClipContext,
    replace_layers: Collection[int] = (1, 3, 5),
    replace_ratio: float = 0.15,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SCAN's crop embedding (V, D) with contextual shift, not L2-normalised.

    regions (V,3,S,S) CLIP-normalised crops, region_masks (V,1,S,S) 0/1 masks. The plain
    tower, except after each layer d in `replace_layers` (official numbering: the d-th block,
    1-based; SCAN-B uses 1, 3, 5, SCAN-L 1, 3, 5, 7, 9): a fresh random `replace_ratio`
    share of each crop's outside patches (`sample_background_tokens`) is overwritten with
    the whole-image CLS token after the same layer d. All other tokens, the crop's CLS
    included, are untouched; the output is CLS -> ln_post -> proj.

    `context_cls` is (num_blocks + 1, C), one image's CLS per layer (`ClipContext.layer_cls`;
    a `ClipContext` means its image 0, as official inference with batch 1), or
    (num_blocks + 1, V, C) for one context image per crop (the official fine-tuning path).
    """
    _check_cls_pooling(encoder)
    _check_regions(encoder, regions, region_masks)
    layers = set(int(layer) for layer in replace_layers)
    bad = sorted(layer for layer in layers if not 1 <= layer <= encoder.num_blocks)
    if bad:
        raise MethodConfigError(f"replace layers {bad} outside 1..{encoder.num_blocks} (1 = after the first block)")
    if not 0.0 <= replace_ratio <= 1.0:
        raise MethodConfigError(f"replace ratio must be in [0, 1], got {replace_ratio}")
    if isinstance(context_cls, ClipContext):
        context_cls = context_cls.layer_cls(0)
    expected_layers = encoder.num_blocks + 1
    per_crop = context_cls.dim() == 3
    if (
        context_cls.dim() not in (2, 3)
        or context_cls.shape[0] != expected_layers
        or context_cls.shape[-1] != encoder.width
        or (per_crop and context_cls.shape[1] != regions.shape[0])
    ):
        raise MethodConfigError(
            f"context CLS must be ({expected_layers}, {encoder.width}) or ({expected_layers}, V, {encoder.width}), "
            f"got {tuple(context_cls.shape)}"
        )
    outside = outside_patch_flags(region_masks, encoder.patch_size)
    tokens, _ = encoder.embed(regions)
    for index in range(encoder.num_blocks):
        tokens, _ = encoder.run_blocks(tokens, index, index + 1)
        layer = index + 1
        if layer in layers:
            chosen = sample_background_tokens(outside, replace_ratio, generator)
            values = context_cls[layer].unsqueeze(-2)  # (1, C) shared or (V, 1, C) per crop
            tokens = _replace_patch_tokens(tokens, chosen, values)
    return _pooled_embedding(encoder, tokens)
