"""Training-time augmentation with the semantics of the official detectron2 pipelines.

CAT-Seg and GSNet train through a MaskFormer-style semantic mapper whose chain is, in order:
resize the shortest edge, random crop, SSD colour jitter, horizontal flip, and padding to a
fixed size on the right and bottom. This module reproduces that chain without detectron2 or
OpenCV, keeping the numerical details that change pixels:

- the image is resized by PIL's bilinear filter (detectron2's uint8 path);
- the label map is resized by torch's legacy ``"nearest"`` index rule, because the official
  mapper reads labels as float64 and float maps take detectron2's ``F.interpolate`` path,
  not PIL's (PIL's nearest samples pixel centres and picks different rows and columns);
- the colour jitter follows OpenCV's uint8 HSV conversions bit for bit: the integer
  BGR->HSV tables, and the float32 HSV->BGR code as OpenCV's AVX2 build runs it (a fused
  multiply-add, and truncation in the vectorised loop where the scalar tail rounds; see
  `hsv_to_bgr_opencv`).

All randomness comes from a `numpy.random.Generator` passed per call, so one sample's
augmentation is a pure function of (image, mask, generator state); the training engine
derives the generator from (seed, epoch, sample index) and can resume exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image

from ovbench.errors import ConfigError, DataError

__all__ = [
    "TrainTransformConfig",
    "TrainTransform",
    "ColorAugParams",
    "resize_shortest_edge_size",
    "resize_image",
    "resize_label",
    "random_crop_box",
    "pad_bottom_right",
    "sample_color_aug_params",
    "apply_color_aug_ssd",
    "color_aug_ssd",
    "bgr_to_hsv_opencv",
    "hsv_to_bgr_opencv",
    "OPENCV_HSV2BGR_SIMD_BLOCK",
]


# --------------------------------------------------------------------------- configuration


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `crop_size: [true, 384]` is a typo, not a size.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass
class TrainTransformConfig:
    """Settings of the training augmentation chain (defaults: GSNet / CAT-Seg at 384).

    `short_side` lists the shortest-edge lengths one is drawn from per sample ("choice"
    sampling); `max_size` caps the longer edge after resizing. `crop_size` is (height,
    width) of the random crop, or None for no crop. `label_pad_value` None pads labels with
    the dataset's ignore index. `size_divisibility` is the size images and labels are padded
    up to on the bottom/right (0: no padding); like the official mapper it is a fixed target,
    not a multiple, and sides already at least that long are left alone.
    """

    short_side: list[int] = field(default_factory=lambda: [384])
    max_size: int = 1333
    crop_size: list[int] | None = field(default_factory=lambda: [384, 384])
    color_jitter: bool = True
    hflip: bool = True
    image_pad_value: int = 128
    label_pad_value: int | None = None
    size_divisibility: int = 384

    def __post_init__(self) -> None:
        if not isinstance(self.short_side, (list, tuple)) or not self.short_side:
            raise ConfigError(f"short_side: expected a non-empty list of lengths, got {self.short_side!r}")
        if not all(_is_int(s) and s > 0 for s in self.short_side):
            raise ConfigError(
                f"short_side: every length must be a positive integer, got {list(self.short_side)!r}"
            )
        self.short_side = [int(s) for s in self.short_side]
        if not _is_int(self.max_size) or self.max_size <= 0:
            raise ConfigError(f"max_size: expected a positive integer, got {self.max_size!r}")
        if self.crop_size is not None:
            if (
                not isinstance(self.crop_size, (list, tuple))
                or len(self.crop_size) != 2
                or not all(_is_int(c) and c > 0 for c in self.crop_size)
            ):
                raise ConfigError(
                    "crop_size: expected [height, width] of positive integers or null, "
                    f"got {self.crop_size!r}"
                )
            self.crop_size = [int(c) for c in self.crop_size]
        for name in ("color_jitter", "hflip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if not _is_int(self.image_pad_value) or not 0 <= self.image_pad_value <= 255:
            raise ConfigError(f"image_pad_value: expected an integer in 0..255, got {self.image_pad_value!r}")
        if self.label_pad_value is not None and not _is_int(self.label_pad_value):
            raise ConfigError(f"label_pad_value: expected an integer or null, got {self.label_pad_value!r}")
        if not _is_int(self.size_divisibility) or self.size_divisibility < 0:
            raise ConfigError(
                "size_divisibility: expected a non-negative integer (0 disables padding), "
                f"got {self.size_divisibility!r}"
            )


# --------------------------------------------------------------------------- geometry


def resize_shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) that detectron2's ResizeShortestEdge gives an (h, w) image.

    The short side goes to `short`; if the long side would then exceed `max_size`, both are
    scaled down so the long side equals it. Each side rounds half up (``int(x + 0.5)``).
    The floating-point steps follow detectron2's order so sizes agree to the last pixel.
    """
    if not (_is_int(h) and _is_int(w)) or h <= 0 or w <= 0:
        raise DataError(f"image size must be positive integers, got {h!r} x {w!r}")
    if not _is_int(short) or short <= 0:
        raise ConfigError(f"short side must be a positive integer, got {short!r}")
    if not _is_int(max_size) or max_size <= 0:
        raise ConfigError(f"max_size must be a positive integer, got {max_size!r}")
    size = float(short)
    scale = size / min(h, w)
    if h < w:
        new_h, new_w = size, scale * w
    else:
        new_h, new_w = scale * h, size
    longest = max(new_h, new_w)
    if longest > max_size:
        cap = max_size / longest
        new_h, new_w = new_h * cap, new_w * cap
    # A sliver (e.g. 1 x 5000) would round to zero rows, which no resizer accepts.
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize_image(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Resize a uint8 (H, W, 3) image with PIL's bilinear filter (detectron2's uint8 path)."""
    if image.shape[:2] == (new_h, new_w):
        return image  # PIL returns an unchanged copy for a same-size resize
    resized = Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)
    return np.array(resized)  # np.asarray would be read-only (a view of PIL's bytes)


def _legacy_nearest_source_index(in_size: int, out_size: int) -> np.ndarray:
    """Source row/column of each output index under torch's legacy "nearest" interpolation.

    torch computes ``floor(i * (in / out))`` in float32 and clamps to the last index, with
    exact shortcuts for equal sizes and for doubling; float32 matters at the boundaries.
    """
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)


def resize_label(mask: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Resize an (H, W) label map by nearest neighbour, picking the pixels that the official
    mapper's float64 label path (torch ``F.interpolate(mode="nearest")``) picks."""
    if mask.shape[:2] == (new_h, new_w):
        return mask
    rows = _legacy_nearest_source_index(mask.shape[0], new_h)
    cols = _legacy_nearest_source_index(mask.shape[1], new_w)
    return mask[rows[:, None], cols[None, :]]


def random_crop_box(
    h: int, w: int, crop_size: tuple[int, int] | list[int], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of detectron2's "absolute" RandomCrop.

    The crop is clipped to the image (``min(crop, side)``), and the top and left offsets are
    uniform over every position that keeps it inside, ends included; top is drawn first.
    """
    crop_h, crop_w = min(int(crop_size[0]), h), min(int(crop_size[1]), w)
    top = int(rng.integers(h - crop_h + 1))
    left = int(rng.integers(w - crop_w + 1))
    return top, left, crop_h, crop_w


def pad_bottom_right(array: np.ndarray, target: int, value: int) -> np.ndarray:
    """Pad the first two axes up to `target` on the bottom/right with `value`.

    Sides already at least `target` long are left as they are (the official mapper would
    crop them with a negative pad, which only happens when cropping is off).
    """
    h, w = array.shape[:2]
    pad_h, pad_w = max(0, target - h), max(0, target - w)
    if pad_h == 0 and pad_w == 0:
        return array
    padded = np.full((h + pad_h, w + pad_w) + array.shape[2:], value, dtype=array.dtype)
    padded[:h, :w] = array
    return padded


# --------------------------------------------------------------------------- OpenCV uint8 HSV
#
# Both conversions are computed through small lookup tables built once from OpenCV's own
# arithmetic. Every intermediate OpenCV forms is a function of a few bytes (max and spread of
# B, G, R; or H and S), so the tables give the same bits as evaluating per pixel, at a few
# gathers per pixel instead of a dozen array passes.

_HSV_SHIFT = 12
_OPENCV_HUE_RANGE = 180  # COLOR_BGR2HSV on uint8 stores hue/2, so H is 0..179

#: Pixels per row that OpenCV's AVX2 HSV->BGR loop handles per iteration (4 x 8 float lanes).
#: Whole blocks truncate to uint8; the remaining ``width % 32`` pixels of a row take the
#: scalar code, which rounds. Official training used OpenCV on AVX2 x86 machines.
OPENCV_HSV2BGR_SIMD_BLOCK = 32

# For each hue sector, which of OpenCV's four candidates feed B, G and R:
# tab0 = v, tab1 = v(1-s), tab2 = v(1-s*f), tab3 = v(1-s(1-f)), f the position in the sector.
_SECTOR_TO_TABLE = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]], dtype=np.intp)

# Hue numerators: g-b (red max) in [-spread, spread], b-r+2*spread (green max) and
# r-g+4*spread (blue max) up to 5*spread.
_HUE_NUMERATOR_MIN = -255
_HUE_NUMERATOR_SPAN = 5 * 255 - _HUE_NUMERATOR_MIN + 1


@lru_cache(maxsize=1)
def _bgr_to_hsv_tables() -> tuple[np.ndarray, np.ndarray]:
    """(saturation[v * 256 + spread], hue[spread * span + numerator - min]) as uint8.

    OpenCV divides with 12-bit fixed-point reciprocals rounded half to even (cvRound) and
    rounds the products back with ``+2048 >> 12``; ``>>`` floors negative numerators.
    """
    divisors = np.arange(1, 256, dtype=np.float64)
    saturation_div = np.concatenate([[0], np.rint((255 << _HSV_SHIFT) / divisors)]).astype(np.int64)
    hue_div = np.concatenate([[0], np.rint((_OPENCV_HUE_RANGE << _HSV_SHIFT) / (6.0 * divisors))])
    hue_div = hue_div.astype(np.int64)
    half = 1 << (_HSV_SHIFT - 1)

    value, spread = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    saturation = (spread * saturation_div[value] + half) >> _HSV_SHIFT

    spread, numerator = np.meshgrid(
        np.arange(256), np.arange(_HUE_NUMERATOR_MIN, _HUE_NUMERATOR_MIN + _HUE_NUMERATOR_SPAN), indexing="ij"
    )
    hue = (numerator * hue_div[spread] + half) >> _HSV_SHIFT
    hue = np.where(hue < 0, hue + _OPENCV_HUE_RANGE, hue)
    return (
        np.clip(saturation, 0, 255).astype(np.uint8).ravel(),
        np.clip(hue, 0, 255).astype(np.uint8).ravel(),
    )


def _check_three_channel_uint8(array: np.ndarray, what: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise DataError(f"{what} must be a uint8 (H, W, 3) array, got {got}")


def bgr_to_hsv_opencv(image_bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR (H, W, 3) -> uint8 HSV exactly as ``cv2.cvtColor(img, cv2.COLOR_BGR2HSV)``.

    H is hue/2 in 0..179, S and V in 0..255, from OpenCV's 12-bit fixed-point arithmetic
    (its vector and scalar code agree bit for bit on this conversion).
    """
    _check_three_channel_uint8(image_bgr, "BGR image")
    return _hsv_from_planes(image_bgr[..., 0], image_bgr[..., 1], image_bgr[..., 2])


def _hsv_from_planes(blue: np.ndarray, green: np.ndarray, red: np.ndarray) -> np.ndarray:
    """OpenCV uint8 HSV from three uint8 colour planes (any channel layout of the caller)."""
    saturation_table, hue_table = _bgr_to_hsv_tables()
    # int16 holds every intermediate below and halves the memory traffic of int32.
    b, g, r = blue.astype(np.int16), green.astype(np.int16), red.astype(np.int16)
    value = np.maximum(np.maximum(b, g), r)
    spread = value - np.minimum(np.minimum(b, g), r)
    # The max channel picks the hue sector; ties go to R, then G, as in OpenCV.
    numerator = np.where(value == r, g - b, np.where(value == g, b - r + 2 * spread, r - g + 4 * spread))
    hue_index = spread.astype(np.int32) * _HUE_NUMERATOR_SPAN
    hue_index += numerator
    hue_index -= _HUE_NUMERATOR_MIN

    hsv = np.empty(blue.shape + (3,), dtype=np.uint8)
    hsv[..., 0] = hue_table.take(hue_index)
    hsv[..., 1] = saturation_table.take((value.astype(np.int32) << 8) | spread)
    hsv[..., 2] = value
    return hsv


def _one_minus_product_fused(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 ``1 - a * b`` rounded once, as a fused multiply-add computes it.

    OpenCV's AVX2 build lets the compiler fuse this expression (in its vector and its scalar
    code); rounding the product separately changes about one HSV triple in 10^4 by one
    level. The float64 product of two float32 values is exact, so only the subtraction and
    the final cast round (checked against cv2 on every uint8 HSV triple).
    """
    return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)


@lru_cache(maxsize=1)
def _hsv_to_bgr_tables() -> tuple[np.ndarray, np.ndarray]:
    """(factor[channel, h * 256 + s] float32, value[v] float32) with B, G, R = value * factor.

    OpenCV scales s and v by the float32 1/255, finds the sector and in-sector position f
    of ``h * 6/180`` (wrapping hues >= 180 like its fmod), and multiplies v by one of
    1, 1-s, 1-s*f, 1-s*(1-f). Which one feeds each channel depends only on (h, s), so the
    factors are tabulated and only ``v * factor`` is left per pixel, in the same order.
    """
    one = np.float32(1.0)
    inverse_255 = one / np.float32(255.0)
    hue, sat = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    scaled_hue = hue.astype(np.float32) * (np.float32(6.0) / np.float32(_OPENCV_HUE_RANGE))
    s = sat.astype(np.float32) * inverse_255
    sector_start = np.floor(scaled_hue)
    position = scaled_hue - sector_start
    sector = sector_start.astype(np.intp) % 6

    candidates = np.stack(
        [
            np.ones_like(s),
            one - s,
            _one_minus_product_fused(s, position),
            _one_minus_product_fused(s, one - position),
        ],
        axis=-1,
    )
    per_channel = np.take_along_axis(candidates, _SECTOR_TO_TABLE[sector], axis=-1)
    factor = np.ascontiguousarray(per_channel.reshape(256 * 256, 3).T)
    value = np.arange(256).astype(np.float32) * inverse_255
    return factor, value


def hsv_to_bgr_opencv(hsv: np.ndarray, simd_block: int = OPENCV_HSV2BGR_SIMD_BLOCK) -> np.ndarray:
    """uint8 HSV (H in 0..179) -> uint8 BGR as ``cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)``.

    OpenCV works in float32: each channel is v times one of 1, 1-s, 1-s f, 1-s(1-f) (the
    last two fused as in its AVX2 build), times 255. Only the final cast differs between
    OpenCV's code paths: its vectorised loop *truncates* the first
    ``simd_block * (width // simd_block)`` pixels of each row and its scalar tail *rounds*
    the rest (half to even). `simd_block` reproduces that split; 0 rounds every pixel
    (OpenCV's scalar semantics).
    """
    _check_three_channel_uint8(hsv, "HSV image")
    if not _is_int(simd_block) or simd_block < 0:
        raise ValueError(f"simd_block must be a non-negative integer, got {simd_block!r}")
    bgr = np.empty(hsv.shape, dtype=np.uint8)
    _write_colour_planes(hsv, simd_block, bgr, channel_of_blue_green_red=(0, 1, 2))
    return bgr


def _write_colour_planes(
    hsv: np.ndarray, simd_block: int, out: np.ndarray, channel_of_blue_green_red: tuple[int, int, int]
) -> None:
    """Convert OpenCV uint8 HSV to colour, writing B, G, R into the given channels of `out`
    (so RGB callers need no channel-reversing copy)."""
    factor_table, value_table = _hsv_to_bgr_tables()
    hue_sat = (hsv[..., 0].astype(np.intp) << 8) | hsv[..., 1]
    value = value_table.take(hsv[..., 2])
    width = hsv.shape[1]
    rounded_from = simd_block * (width // simd_block) if simd_block else 0
    for table_row, channel in enumerate(channel_of_blue_green_red):
        level = factor_table[table_row].take(hue_sat)
        level *= value
        level *= np.float32(255.0)
        if rounded_from < width:
            np.rint(level[:, rounded_from:], out=level[:, rounded_from:])
        # v * factor lies in [0, 1] up to float error; the clip is OpenCV's saturating pack,
        # and the cast then truncates what was not rounded.
        np.clip(level, 0, 255, out=level)
        out[..., channel] = level


# --------------------------------------------------------------------------- colour jitter


@dataclass(frozen=True)
class ColorAugParams:
    """One draw of the SSD colour jitter; None means that step is skipped.

    `contrast_first` places the contrast step before saturation and hue instead of after.
    """

    brightness_delta: float | None
    contrast_first: bool
    contrast_alpha: float | None
    saturation_alpha: float | None
    hue_delta: int | None


# detectron2 PointRend ColorAugSSDTransform defaults.
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18


def sample_color_aug_params(rng: np.random.Generator) -> ColorAugParams:
    """Draw the jitter parameters in the order the detectron2 transform draws them:
    brightness (coin, value), step order (coin), then contrast, saturation and hue in the
    order they will run, each a fair coin followed by its value when applied."""
    brightness = float(rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)) if rng.integers(2) else None
    contrast_first = bool(rng.integers(2))

    def contrast() -> float | None:
        return float(rng.uniform(*CONTRAST_RANGE)) if rng.integers(2) else None

    contrast_alpha = contrast() if contrast_first else None
    saturation = float(rng.uniform(*SATURATION_RANGE)) if rng.integers(2) else None
    hue = int(rng.integers(-HUE_DELTA, HUE_DELTA, endpoint=True)) if rng.integers(2) else None
    if not contrast_first:
        contrast_alpha = contrast()
    return ColorAugParams(brightness, contrast_first, contrast_alpha, saturation, hue)


_BYTE_VALUES = np.arange(256, dtype=np.uint8)


def _affine_byte_table(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """uint8[256]: ``uint8(clip(float32(x) * alpha + beta, 0, 255))`` for every byte x.

    This is the SSD transform's per-element conversion (float32 throughout, truncating
    cast); being elementwise on bytes, a table lookup gives identical results.
    """
    scaled = _BYTE_VALUES.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def apply_color_aug_ssd(image: np.ndarray, params: ColorAugParams) -> np.ndarray:
    """Apply one drawn SSD colour jitter to a uint8 RGB (H, W, 3) image.

    The steps run as in the official transform configured for RGB input: brightness, then
    contrast/saturation/hue or saturation/hue/contrast. Saturation and hue each go through a
    full OpenCV uint8 HSV round trip of their own, which is lossy; that loss is part of the
    behaviour being reproduced.
    """
    _check_three_channel_uint8(image, "image")
    rgb = image
    # Brightness and contrast act on each byte alone, so consecutive ones compose into one
    # 256-entry table, applied once (bit-identical to applying them in turn).
    byte_table = _BYTE_VALUES
    if params.brightness_delta is not None:
        byte_table = _affine_byte_table(beta=params.brightness_delta)
    contrast_table = None
    if params.contrast_alpha is not None:
        contrast_table = _affine_byte_table(alpha=params.contrast_alpha)
    if params.contrast_first and contrast_table is not None:
        byte_table = contrast_table.take(byte_table)
    if byte_table is not _BYTE_VALUES:
        rgb = byte_table.take(rgb)

    # The official transform reverses RGB to BGR for OpenCV and back; reading and writing
    # the planes in RGB positions is the same arithmetic without the two copies.
    rgb_positions = (2, 1, 0)  # where B, G, R live in an RGB image
    if params.saturation_alpha is not None:
        hsv = _hsv_from_planes(rgb[..., 2], rgb[..., 1], rgb[..., 0])
        hsv[..., 1] = _affine_byte_table(alpha=params.saturation_alpha).take(hsv[..., 1])
        rgb = np.empty(image.shape, dtype=np.uint8)
        _write_colour_planes(hsv, OPENCV_HSV2BGR_SIMD_BLOCK, rgb, rgb_positions)
    if params.hue_delta is not None:
        hsv = _hsv_from_planes(rgb[..., 2], rgb[..., 1], rgb[..., 0])
        # Forward hues are < 180, so the shifted hue wraps into 0..179 like OpenCV's.
        hue_shift = ((np.arange(256) + params.hue_delta) % _OPENCV_HUE_RANGE).astype(np.uint8)
        hsv[..., 0] = hue_shift.take(hsv[..., 0])
        rgb = np.empty(image.shape, dtype=np.uint8)
        _write_colour_planes(hsv, OPENCV_HSV2BGR_SIMD_BLOCK, rgb, rgb_positions)
    if not params.contrast_first and contrast_table is not None:
        rgb = contrast_table.take(rgb)
    return rgb if rgb is not image else image.copy()


def color_aug_ssd(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD photometric jitter (detectron2 PointRend ``ColorAugSSDTransform``, RGB input):
    brightness +-32, contrast 0.5-1.5, saturation 0.5-1.5, hue +-18 (of 180), each with
    probability 1/2, contrast first or last at random. Returns a new uint8 RGB image."""
    return apply_color_aug_ssd(image, sample_color_aug_params(rng))


# --------------------------------------------------------------------------- the chain


class TrainTransform:
    """The training augmentation chain: resize shortest edge, random crop, SSD colour jitter,
    horizontal flip, pad bottom/right (image with `image_pad_value`, labels with
    `label_pad_value` or the dataset's `ignore_index`).

    ``transform(image, mask, rng)`` never modifies its inputs and returns contiguous arrays,
    so the result can go straight to ``torch.from_numpy``.
    """

    def __init__(self, config: TrainTransformConfig, ignore_index: int):
        if not isinstance(config, TrainTransformConfig):
            raise ConfigError(f"TrainTransform needs a TrainTransformConfig, got {type(config).__name__}")
        if not _is_int(ignore_index):
            raise ConfigError(f"ignore_index: expected an integer, got {ignore_index!r}")
        self.config = config
        self.ignore_index = int(ignore_index)
        self.label_pad_value = self.ignore_index if config.label_pad_value is None else config.label_pad_value

    def __repr__(self) -> str:
        settings = [f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config)]
        return f"TrainTransform({', '.join(settings)}, label_pad={self.label_pad_value})"

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one sample: uint8 (H, W, 3) RGB image and integer (H, W) mask in, uint8
        image and int64 mask of the crop (or padded) size out."""
        _check_three_channel_uint8(image, "image")
        if not isinstance(mask, np.ndarray) or mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
            raise DataError(f"mask must be an integer (H, W) array, got {got}")
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask size {mask.shape} does not match image size {image.shape[:2]}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        config = self.config
        original_image, original_mask = image, mask
        # int64 from the start: a uint8 mask could not hold a pad value such as -1.
        mask = mask.astype(np.int64, copy=False)

        short = config.short_side[int(rng.integers(len(config.short_side)))]
        new_h, new_w = resize_shortest_edge_size(image.shape[0], image.shape[1], short, config.max_size)
        image = resize_image(image, new_h, new_w)
        mask = resize_label(mask, new_h, new_w)

        if config.crop_size is not None:
            top, left, crop_h, crop_w = random_crop_box(new_h, new_w, config.crop_size, rng)
            image = image[top : top + crop_h, left : left + crop_w]
            mask = mask[top : top + crop_h, left : left + crop_w]

        if config.color_jitter:
            image = color_aug_ssd(image, rng)

        if config.hflip and rng.random() < 0.5:
            image = image[:, ::-1]
            mask = mask[:, ::-1]

        if config.size_divisibility > 0:
            image = pad_bottom_right(image, config.size_divisibility, config.image_pad_value)
            mask = pad_bottom_right(mask, config.size_divisibility, self.label_pad_value)

        return _detached_contiguous(image, original_image), _detached_contiguous(mask, original_mask)


def _detached_contiguous(array: np.ndarray, original: np.ndarray) -> np.ndarray:
    """`array` as a writable C-contiguous array that does not alias the caller's input,
    copying only when needed (a flip leaves negative strides; with every step off the input
    itself comes back)."""
    if array.flags.c_contiguous and array.flags.writeable and not np.may_share_memory(array, original):
        return array
    return np.array(array, order="C")
