"""CLIP inputs from mask proposals: one masked, cropped, normalised 224 x 224 image per mask.

OV-Seg and SCAN classify each proposal a second time by showing CLIP only that proposal:
binarise the mask, cut the image to the mask's tight box, paint everything outside the mask
with CLIP's mean colour, CLIP-normalise, and resize to CLIP's input size (bicubic for the
image, nearest for the mask, which OV-Seg's mask prompts and SCAN's contextual shift read).
A mask with no pixel above the threshold has no crop and is flagged invalid
(docs/methods/mask-proposal-core.md#crop-and-mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ovbench_methods.common.errors import MethodConfigError

__all__ = [
    "CLIP_MEAN_UNIT",
    "CLIP_STD_UNIT",
    "MaskedCrops",
    "crop_and_mask",
    "expand_box",
    "mask_boxes",
]

#: OpenAI CLIP's pixel statistics on the 0..1 scale, to full precision: the official crop
#: code scales these by 255 itself, for the fill colour and for the normalisation alike.
CLIP_MEAN_UNIT: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD_UNIT: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class MaskedCrops:
    """The CLIP inputs of the valid masks, in mask order.

    regions (V,3,S,S) CLIP-normalised crops; region_masks (V,1,S,S) their binary masks (0/1
    floats); boxes (V,4) int64 (left, top, right, bottom), right and bottom exclusive, after
    expansion and clipping to the image; valid (Q,) bool, which of the Q masks have a crop.
    """

    regions: Tensor
    region_masks: Tensor
    boxes: Tensor
    valid: Tensor


def mask_boxes(binary_masks: Tensor) -> Tensor:
    """Tight boxes (Q,4) float32 (x0, y0, x1, y1) of binary masks (Q,H,W), x1 and y1 one past
    the last mask column and row; an empty mask gets (0, 0, 0, 0)."""
    if binary_masks.dim() != 3:
        raise MethodConfigError(f"masks must be (Q,H,W), got {tuple(binary_masks.shape)}")
    count = binary_masks.shape[0]
    boxes = torch.zeros(count, 4, dtype=torch.float32, device=binary_masks.device)
    if count == 0:
        return boxes
    columns = binary_masks.any(dim=1)  # (Q,W)
    rows = binary_masks.any(dim=2)  # (Q,H)
    width, height = columns.shape[1], rows.shape[1]
    column_index = torch.arange(width, device=binary_masks.device)
    row_index = torch.arange(height, device=binary_masks.device)
    nonempty = columns.any(dim=1)
    x0 = torch.where(columns, column_index, width).amin(dim=1)
    x1 = torch.where(columns, column_index, -1).amax(dim=1) + 1
    y0 = torch.where(rows, row_index, height).amin(dim=1)
    y1 = torch.where(rows, row_index, -1).amax(dim=1) + 1
    stacked = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return torch.where(nonempty[:, None], stacked, boxes)


def expand_box(box: Tensor, ratio: float) -> tuple[int, int, int, int]:
    """Scale a (x0, y0, x1, y1) float32 box about its centre by `ratio`, then truncate each
    coordinate toward zero, as the official code does (in float32, so 1.0 returns the box)."""
    x0, y0, x1, y1 = box.to(torch.float32).unbind()
    centre_x, centre_y = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    width, height = (x1 - x0) * ratio, (y1 - y0) * ratio
    corners = (centre_x - 0.5 * width, centre_y - 0.5 * height, centre_x + 0.5 * width, centre_y + 0.5 * height)
    return tuple(int(value) for value in corners)  # type: ignore[return-value]


def crop_and_mask(
    image: Tensor,
    mask_probs: Tensor,
    *,
    threshold: float,
    expand_ratio: float = 1.0,
    fill: str | tuple[float, float, float] = "mean",
    size: int = 224,
    normalize: bool = True,
    matting: bool = False,
) -> MaskedCrops:
    """Crop-and-mask CLIP inputs of Q proposals.

    image (3,H,W) on the 0..255 scale, RGB, as the model saw it (not normalised, not padded);
    mask_probs (Q,H,W) probabilities at the image's size. A mask's binary form is
    ``mask_probs > threshold``; its box is the tight box of that, scaled about its centre by
    `expand_ratio` and clipped to the image. Inside the box the crop is
    ``image * m + fill * (1 - m)`` with m the binary mask (`matting`: the probabilities), in
    the masks' float dtype; `fill` "mean" is CLIP's mean colour x 255, "zero" black, or an
    RGB triple. The crop is then normalised with CLIP's mean and std x 255 (unless
    `normalize` is off) and resized to size x size: bicubic (align_corners False, no
    antialiasing) for the crop, nearest for its mask.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise MethodConfigError(f"image must be (3,H,W), got {tuple(image.shape)}")
    if mask_probs.dim() != 3 or mask_probs.shape[-2:] != image.shape[-2:]:
        raise MethodConfigError(
            f"masks must be (Q,H,W) at the image's size {tuple(image.shape[-2:])}, got {tuple(mask_probs.shape)}"
        )
    if size < 1:
        raise MethodConfigError(f"crop size must be positive, got {size}")
    if expand_ratio < 1:
        # Below 1 a thin mask's box can truncate to zero pixels, which has no crop.
        raise MethodConfigError(f"expand_ratio must be at least 1, got {expand_ratio}")
    dtype = mask_probs.dtype if mask_probs.is_floating_point() else torch.float32
    fill_colour = _fill_colour(fill)
    binary = mask_probs > threshold
    valid = binary.flatten(1).any(dim=1)
    kept_binary = binary[valid]
    weights = (mask_probs[valid] if matting else kept_binary).to(dtype)
    boxes = mask_boxes(kept_binary)
    image = image.to(dtype)
    _, height, width = image.shape
    # The fill is a float32 constant per channel and the normalisation statistics are the
    # unit-scale values times 255 in the crop's dtype, so the painted background normalises
    # to (almost exactly) zero, as in the official code.
    fill_values = torch.tensor(fill_colour, dtype=dtype, device=image.device).view(3, 1, 1)
    mean = torch.tensor(CLIP_MEAN_UNIT, dtype=dtype, device=image.device).view(3, 1, 1) * 255.0
    std = torch.tensor(CLIP_STD_UNIT, dtype=dtype, device=image.device).view(3, 1, 1) * 255.0
    regions, region_masks, pixel_boxes = [], [], []
    for box, weight in zip(boxes, weights):
        left, top, right, bottom = expand_box(box, expand_ratio)
        left, top = max(left, 0), max(top, 0)
        right, bottom = min(right, width), min(bottom, height)
        pixel_boxes.append([left, top, right, bottom])
        cut_mask = weight[None, top:bottom, left:right]
        region = image[:, top:bottom, left:right] * cut_mask + (1 - cut_mask) * fill_values
        if normalize:
            region = (region - mean) / std
        # Each crop has its own size, so each is resized on its own.
        regions.append(F.interpolate(region[None], size=(size, size), mode="bicubic", align_corners=False))
        region_masks.append(F.interpolate(cut_mask[None], size=(size, size), mode="nearest"))
    if regions:
        return MaskedCrops(
            regions=torch.cat(regions),
            region_masks=torch.cat(region_masks),
            boxes=torch.tensor(pixel_boxes, dtype=torch.long, device=image.device),
            valid=valid,
        )
    return MaskedCrops(
        regions=image.new_zeros(0, 3, size, size),
        region_masks=image.new_zeros(0, 1, size, size),
        boxes=torch.zeros(0, 4, dtype=torch.long, device=image.device),
        valid=valid,
    )


def _fill_colour(fill: str | tuple[float, float, float]) -> tuple[float, float, float]:
    if fill == "mean":
        return tuple(255.0 * channel for channel in CLIP_MEAN_UNIT)  # type: ignore[return-value]
    if fill == "zero":
        return (0.0, 0.0, 0.0)
    if isinstance(fill, str) or len(fill) != 3:
        raise MethodConfigError(f"fill must be 'mean', 'zero' or an RGB triple, got {fill!r}")
    return tuple(float(channel) for channel in fill)  # type: ignore[return-value]
