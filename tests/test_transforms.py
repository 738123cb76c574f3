"""Training transforms: detectron2 semantics (sizes, interpolation, crop, SSD colour jitter with
OpenCV uint8 HSV, flip, padding) and determinism under an explicit generator."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovbench.config import build_dataclass
from ovbench.data.transforms import (
    ColorAugParams,
    TrainTransform,
    TrainTransformConfig,
    apply_color_aug_ssd,
    bgr_to_hsv_opencv,
    color_aug_ssd,
    hsv_to_bgr_opencv,
    random_crop_box,
    resize_image,
    resize_label,
    resize_shortest_edge_size,
    sample_color_aug_params,
)
from ovbench.errors import ConfigError, DataError

F32 = np.float32


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def coordinate_image(h: int, w: int) -> np.ndarray:
    """Each pixel holds (row, column, 7), so a window of it says where it was cut from."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def plain_config(**changes) -> TrainTransformConfig:
    """A config with every random step off; tests switch on the one they look at."""
    base = dict(crop_size=None, color_jitter=False, hflip=False, size_divisibility=0)
    base.update(changes)
    return TrainTransformConfig(**base)


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    "h, w, short, max_size, expected",
    [
        (480, 640, 384, 1333, (384, 512)),  # scale 0.8
        (640, 480, 384, 1333, (512, 384)),  # portrait
        (500, 500, 384, 1333, (384, 384)),
        (100, 1000, 384, 1333, (133, 1333)),  # 384 x 3840 capped: 384 * 1333 / 3840 = 133.3
        (1000, 100, 384, 1000, (1000, 100)),  # cap exactly reached: no change
        (4, 6, 3, 1333, (3, 5)),  # 4.5 rounds half up, not to even
        (3, 5, 2, 1333, (2, 3)),  # 3.33 rounds down
        (6, 10, 4, 1333, (4, 7)),  # 6.67 rounds up
        (1, 5000, 384, 1333, (1, 1333)),  # 0.27 rows would be empty: kept at one
    ],
)
def test_resize_shortest_edge_size_matches_hand_computed(h, w, short, max_size, expected):
    assert resize_shortest_edge_size(h, w, short, max_size) == expected


def test_resize_shortest_edge_size_rejects_bad_sizes():
    with pytest.raises(ConfigError, match="short side"):
        resize_shortest_edge_size(10, 10, 0, 1333)
    with pytest.raises(ConfigError, match="max_size"):
        resize_shortest_edge_size(10, 10, 384, -1)
    with pytest.raises(DataError, match="image size"):
        resize_shortest_edge_size(0, 10, 384, 1333)


def test_image_resize_is_pil_bilinear():
    image = random_image(50, 70)
    expected = np.asarray(Image.fromarray(image).resize((40, 29), Image.BILINEAR))
    resized = resize_image(image, 29, 40)
    assert resized.shape == (29, 40, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, expected)
    # Bilinear blends neighbours: a random image gains values nearest neighbour never makes.
    nearest = np.asarray(Image.fromarray(image).resize((40, 29), Image.NEAREST))
    assert not np.array_equal(resized, nearest)


@pytest.mark.parametrize(
    "in_hw, out_hw", [((5, 7), (3, 4)), ((50, 70), (29, 41)), ((13, 9), (26, 18)), ((17, 23), (40, 31))]
)
def test_label_resize_matches_official_float_label_path(in_hw, out_hw):
    # The official mapper reads labels as float64, which detectron2 resizes with
    # F.interpolate(mode="nearest"); that is the reference, down and up.
    mask = np.random.default_rng(1).integers(0, 40, in_hw).astype(np.int64)
    reference = F.interpolate(torch.from_numpy(mask.astype(np.float64))[None, None], out_hw, mode="nearest")
    resized = resize_label(mask, *out_hw)
    np.testing.assert_array_equal(resized, reference[0, 0].long().numpy())
    assert set(np.unique(resized)) <= set(np.unique(mask))


def test_label_resize_picks_rows_by_floor_not_pixel_centres():
    # 5 -> 3 rows: floor(i * 5/3) = 0, 1, 3 (PIL's centre rule would give 0, 2, 4).
    mask = np.arange(5)[:, None] * np.ones((1, 2), dtype=np.int64)
    assert resize_label(mask, 3, 2)[:, 0].tolist() == [0, 1, 3]


def test_resize_step_in_chain_keeps_label_values():
    mask = np.random.default_rng(3).choice([0, 3, 17, 255], size=(90, 130)).astype(np.int64)
    transform = TrainTransform(plain_config(short_side=[61]), ignore_index=255)
    image, resized = transform(random_image(90, 130), mask, np.random.default_rng(0))
    assert image.shape == (61, 88, 3) and resized.shape == (61, 88)  # 130 * 61/90 = 88.1
    assert set(np.unique(resized)) <= {0, 3, 17, 255}


def test_short_side_is_drawn_from_the_choices():
    transform = TrainTransform(plain_config(short_side=[32, 48, 64]), ignore_index=255)
    mask = np.zeros((100, 100), dtype=np.int64)
    sizes = {transform(random_image(100, 100), mask, np.random.default_rng(s))[0].shape[0] for s in range(40)}
    assert sizes == {32, 48, 64}


# --------------------------------------------------------------------------- crop


def test_crop_offsets_stay_inside_and_cover_every_position():
    rng = np.random.default_rng(0)
    tops, lefts = set(), set()
    for _ in range(400):
        top, left, crop_h, crop_w = random_crop_box(30, 25, (10, 20), rng)
        assert (crop_h, crop_w) == (10, 20)
        assert 0 <= top <= 20 and 0 <= left <= 5
        tops.add(top)
        lefts.add(left)
    assert tops == set(range(21)) and lefts == set(range(6))


def test_crop_larger_than_image_is_clipped_to_it():
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert random_crop_box(6, 40, (384, 384), rng)[::2] == (0, 6)  # top 0, crop_h 6


def test_chain_crop_cuts_the_same_window_from_image_and_mask():
    # short side 190 on a 200 x 190 image leaves the size unchanged, so the crop is all
    # that moves pixels; the coordinates stored in the image say where it was cut.
    image = coordinate_image(200, 190)
    mask = image[..., 0].astype(np.int64) * 1000 + image[..., 1]
    transform = TrainTransform(plain_config(short_side=[190], crop_size=[180, 170]), ignore_index=255)
    seen_tops = set()
    for seed in range(30):
        out_image, out_mask = transform(image, mask, np.random.default_rng(seed))
        assert out_image.shape == (180, 170, 3) and out_mask.shape == (180, 170)
        top, left = int(out_image[0, 0, 0]), int(out_image[0, 0, 1])
        assert 0 <= top <= 20 and 0 <= left <= 20
        np.testing.assert_array_equal(out_image, image[top : top + 180, left : left + 170])
        np.testing.assert_array_equal(out_mask, mask[top : top + 180, left : left + 170])
        seen_tops.add(top)
    assert len(seen_tops) > 5


# --------------------------------------------------------------------------- OpenCV HSV, naive reference


def reference_bgr_to_hsv(b: int, g: int, r: int) -> tuple[int, int, int]:
    """OpenCV's scalar uint8 BGR->HSV for one pixel, in plain Python integers."""
    v, low = max(b, g, r), min(b, g, r)
    diff = v - low
    sdiv = round((255 << 12) / v) if v else 0  # round() is half-to-even like cvRound
    s = (diff * sdiv + 2048) >> 12
    if v == r:
        h = g - b
    elif v == g:
        h = b - r + 2 * diff
    else:
        h = r - g + 4 * diff
    hdiv = round((180 << 12) / (6.0 * diff)) if diff else 0
    h = (h * hdiv + 2048) >> 12
    return (h + 180 if h < 0 else h), s, v


def reference_hsv_to_bgr(h: int, s: int, v: int, truncate: bool) -> tuple[int, int, int]:
    """OpenCV's float32 HSV->BGR for one pixel (AVX2 build: 1 - s*f fused; truncating in
    the vector loop, rounding in the scalar tail)."""
    hue = F32(h) * (F32(6) / F32(180))
    sat = F32(s) * (F32(1) / F32(255))
    val = F32(v) * (F32(1) / F32(255))
    sector = int(np.floor(hue))
    frac = hue - F32(sector)

    def fused(a, b):
        return F32(1.0 - float(a) * float(b))

    tab = [val, val * (F32(1) - sat), val * fused(sat, frac), val * fused(sat, F32(1) - frac)]
    order = [(1, 3, 0), (1, 0, 2), (3, 0, 1), (0, 2, 1), (0, 1, 3), (2, 1, 0)][sector % 6]
    out = []
    for index in order:
        level = float(tab[index] * F32(255))
        level = int(level) if truncate else round(level)
        out.append(min(max(level, 0), 255))
    return tuple(out)


def reference_affine(x: int, alpha: float = 1.0, beta: float = 0.0) -> int:
    return int(min(max(F32(x) * F32(alpha) + F32(beta), F32(0)), F32(255)))


def reference_color_aug(image_rgb: np.ndarray, params: ColorAugParams) -> np.ndarray:
    """The SSD jitter pixel by pixel, written from the detectron2/OpenCV semantics."""
    h, w, _ = image_rgb.shape
    truncated_cols = 32 * (w // 32)
    out = np.empty_like(image_rgb)
    for y in range(h):
        for x in range(w):
            r, g, b = (int(c) for c in image_rgb[y, x])
            bgr = [b, g, r]
            if params.brightness_delta is not None:
                bgr = [reference_affine(c, beta=params.brightness_delta) for c in bgr]
            steps = ["saturation", "hue"]
            steps = ["contrast", *steps] if params.contrast_first else [*steps, "contrast"]
            for step in steps:
                if step == "contrast" and params.contrast_alpha is not None:
                    bgr = [reference_affine(c, alpha=params.contrast_alpha) for c in bgr]
                elif step == "saturation" and params.saturation_alpha is not None:
                    hh, ss, vv = reference_bgr_to_hsv(*bgr)
                    ss = reference_affine(ss, alpha=params.saturation_alpha)
                    bgr = list(reference_hsv_to_bgr(hh, ss, vv, truncate=x < truncated_cols))
                elif step == "hue" and params.hue_delta is not None:
                    hh, ss, vv = reference_bgr_to_hsv(*bgr)
                    hh = (hh + params.hue_delta) % 180
                    bgr = list(reference_hsv_to_bgr(hh, ss, vv, truncate=x < truncated_cols))
            out[y, x] = bgr[::-1]
    return out


def test_hsv_conversions_match_the_naive_reference():
    bgr = random_image(4, 40, seed=5)
    # Black, white, grey, pure primaries, and ties between channels.
    special = [[0, 0, 0], [255, 255, 255], [90, 90, 90], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    bgr[0, :8] = special + [[10, 200, 10], [3, 1, 3]]
    hsv = bgr_to_hsv_opencv(bgr)
    back = hsv_to_bgr_opencv(hsv)
    for y in range(bgr.shape[0]):
        for x in range(bgr.shape[1]):
            assert tuple(hsv[y, x]) == reference_bgr_to_hsv(*(int(c) for c in bgr[y, x]))
            assert tuple(back[y, x]) == reference_hsv_to_bgr(*(int(c) for c in hsv[y, x]), truncate=x < 32)


def test_hsv_to_bgr_truncates_in_whole_blocks_and_rounds_the_row_tail():
    # Values observed from cv2 (AVX2): 121.9 and 181.9 truncate inside the first 32 pixels
    # of a row and round in the remaining ones.
    hsv = np.tile(np.array([37, 100, 200], dtype=np.uint8), (2, 33, 1))
    bgr = hsv_to_bgr_opencv(hsv)
    assert bgr[:, :32].reshape(-1, 3).tolist() == [[121, 200, 181]] * 64
    assert bgr[:, 32].tolist() == [[122, 200, 182]] * 2
    assert hsv_to_bgr_opencv(hsv, simd_block=0).reshape(-1, 3).tolist() == [[122, 200, 182]] * 66


def test_hsv_to_bgr_fuses_one_minus_s_times_f():
    # (1, 90, 85): G = v * (1 - s*(1-f)) * 255 is 56.000004 with a fused multiply-add
    # (OpenCV's AVX2 build; cv2 gives 56) and 55.999996 with a separately rounded product.
    hsv = np.tile(np.array([1, 90, 85], dtype=np.uint8), (1, 32, 1))
    assert hsv_to_bgr_opencv(hsv)[0, 0].tolist() == [55, 56, 85]


def test_hsv_round_trip_is_close_to_identity():
    bgr = random_image(64, 256, seed=2)
    back = hsv_to_bgr_opencv(bgr_to_hsv_opencv(bgr)).astype(int)
    error = np.abs(back - bgr)
    # H is stored at 2-degree steps, so strong colours move a few levels; most barely move.
    assert error.max() <= 8 and error.mean() < 1.0
    grey = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    np.testing.assert_array_equal(hsv_to_bgr_opencv(bgr_to_hsv_opencv(grey)), grey)
    hsv = bgr_to_hsv_opencv(bgr)
    assert hsv[..., 0].max() < 180


def test_hsv_rejects_non_uint8():
    with pytest.raises(DataError, match="BGR image must be a uint8"):
        bgr_to_hsv_opencv(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(DataError, match="HSV image must be a uint8"):
        hsv_to_bgr_opencv(np.zeros((2, 2), dtype=np.uint8))


def test_hsv_conversions_equal_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (512, 1000, 3), dtype=np.uint8)
    np.testing.assert_array_equal(bgr_to_hsv_opencv(colours), cv2.cvtColor(colours, cv2.COLOR_BGR2HSV))
    # Every (H < 180, S, V) triple, in rows whose widths exercise the vector loop and tail.
    h, s, v = np.meshgrid(np.arange(180), np.arange(256), np.arange(256), indexing="ij")
    every_hsv = np.stack([h, s, v], axis=-1).astype(np.uint8).reshape(-1, 3)
    for width in (1024, 45):
        rows = every_hsv[: len(every_hsv) // width * width].reshape(-1, width, 3)
        for chunk in np.array_split(rows, 8):
            np.testing.assert_array_equal(hsv_to_bgr_opencv(chunk), cv2.cvtColor(chunk, cv2.COLOR_HSV2BGR))


# --------------------------------------------------------------------------- colour jitter


def test_color_aug_matches_naive_reference_for_drawn_params():
    image = random_image(3, 40, seed=11)
    forced = [
        ColorAugParams(12.5, True, 1.3, 0.7, -11),
        ColorAugParams(-30.0, False, 0.6, 1.45, 17),
    ]
    drawn = [sample_color_aug_params(np.random.default_rng(seed)) for seed in range(6)]
    for params in forced + drawn:
        out = apply_color_aug_ssd(image, params)
        assert out.dtype == np.uint8 and out.shape == image.shape
        np.testing.assert_array_equal(out, reference_color_aug(image, params), err_msg=str(params))


def test_color_aug_draws_from_the_given_generator_only():
    image = random_image(20, 36, seed=4)
    for seed in range(5):
        expected = apply_color_aug_ssd(image, sample_color_aug_params(np.random.default_rng(seed)))
        np.testing.assert_array_equal(color_aug_ssd(image, np.random.default_rng(seed)), expected)
    np.random.seed(0)
    first = color_aug_ssd(image, np.random.default_rng(9))
    np.random.seed(1)
    assert np.array_equal(first, color_aug_ssd(image, np.random.default_rng(9)))


def test_color_aug_param_distribution():
    rng = np.random.default_rng(0)
    draws = [sample_color_aug_params(rng) for _ in range(2000)]
    for name in ("brightness_delta", "contrast_alpha", "saturation_alpha", "hue_delta"):
        applied = sum(getattr(p, name) is not None for p in draws) / len(draws)
        assert 0.45 < applied < 0.55, name
    assert 0.45 < sum(p.contrast_first for p in draws) / len(draws) < 0.55
    brightness = [p.brightness_delta for p in draws if p.brightness_delta is not None]
    assert -32 <= min(brightness) < -30 and 30 < max(brightness) <= 32
    for name in ("contrast_alpha", "saturation_alpha"):
        values = [getattr(p, name) for p in draws if getattr(p, name) is not None]
        assert 0.5 <= min(values) < 0.52 and 1.48 < max(values) <= 1.5
    hues = {p.hue_delta for p in draws if p.hue_delta is not None}
    assert hues == set(range(-18, 19))


def test_color_aug_changes_colour_not_layout():
    image = random_image(32, 32, seed=8)
    out = apply_color_aug_ssd(image, ColorAugParams(None, True, None, None, None))
    np.testing.assert_array_equal(out, image)  # nothing drawn: untouched
    brighter = apply_color_aug_ssd(image, ColorAugParams(20.0, True, None, None, None))
    np.testing.assert_array_equal(brighter, np.clip(image.astype(int) + 20, 0, 255))


# --------------------------------------------------------------------------- flip and pad


def test_flip_mirrors_image_and_mask_together():
    image = coordinate_image(40, 60)
    mask = image[..., 1].astype(np.int64)
    transform = TrainTransform(plain_config(short_side=[40], hflip=True), ignore_index=255)
    outcomes = set()
    for seed in range(20):
        out_image, out_mask = transform(image, mask, np.random.default_rng(seed))
        flipped = bool(out_image[0, 0, 1] == 59)
        expected = image[:, ::-1] if flipped else image
        np.testing.assert_array_equal(out_image, expected)
        np.testing.assert_array_equal(out_mask, expected[..., 1])
        outcomes.add(flipped)
    assert outcomes == {True, False}


@pytest.mark.parametrize(
    "ignore_index, label_pad_value, expected_pad",
    [(0, None, 0), (255, None, 255), (255, 7, 7)],  # GSNet, CAT-Seg, explicit
)
def test_padding_fills_bottom_right(ignore_index, label_pad_value, expected_pad):
    image = random_image(100, 150, seed=1)
    mask = np.full((100, 150), 3, dtype=np.int64)
    config = plain_config(short_side=[100], size_divisibility=384, label_pad_value=label_pad_value)
    out_image, out_mask = TrainTransform(config, ignore_index)(image, mask, np.random.default_rng(0))
    assert out_image.shape == (384, 384, 3) and out_mask.shape == (384, 384)
    np.testing.assert_array_equal(out_image[:100, :150], image)
    assert (out_image[100:] == 128).all() and (out_image[:, 150:] == 128).all()
    assert (out_mask[:100, :150] == 3).all()
    assert (out_mask[100:] == expected_pad).all() and (out_mask[:, 150:] == expected_pad).all()


def test_padding_leaves_longer_sides_alone_and_can_be_disabled():
    image = random_image(100, 500, seed=1)
    mask = np.zeros((100, 500), dtype=np.int64)
    rng = np.random.default_rng(0)
    padded, _ = TrainTransform(plain_config(short_side=[100], size_divisibility=384), 255)(image, mask, rng)
    assert padded.shape == (384, 500, 3)
    unpadded, _ = TrainTransform(plain_config(short_side=[100]), 255)(image, mask, rng)
    assert unpadded.shape == (100, 500, 3)
    custom, _ = TrainTransform(plain_config(short_side=[100], size_divisibility=200, image_pad_value=0), 255)(
        image, mask, np.random.default_rng(0)
    )
    assert custom.shape == (200, 500, 3) and (custom[100:] == 0).all()


def test_uint8_mask_is_widened_before_a_negative_pad():
    mask = np.ones((50, 50), dtype=np.uint8)
    _, out = TrainTransform(plain_config(short_side=[50], size_divisibility=64), -1)(
        random_image(50, 50), mask, np.random.default_rng(0)
    )
    assert out.dtype == np.int64 and out[60, 60] == -1 and out[0, 0] == 1


# --------------------------------------------------------------------------- the whole chain


def test_full_chain_shapes_dtypes_and_determinism():
    image = random_image(300, 420, seed=3)
    mask = np.random.default_rng(3).integers(0, 40, (300, 420)).astype(np.int64)
    image_before, mask_before = image.copy(), mask.copy()
    transform = TrainTransform(TrainTransformConfig(), ignore_index=0)
    first = transform(image, mask, np.random.default_rng([7, 2, 11]))  # (seed, epoch, index)
    second = transform(image, mask, np.random.default_rng([7, 2, 11]))
    for out in (first, second):
        assert out[0].shape == (384, 384, 3) and out[0].dtype == np.uint8
        assert out[1].shape == (384, 384) and out[1].dtype == np.int64
        for array in out:  # ready for torch.from_numpy
            assert array.flags.c_contiguous and array.flags.writeable
    assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()
    assert set(np.unique(first[1])) <= set(range(40))
    others = [transform(image, mask, np.random.default_rng([7, 2, i]))[0] for i in range(3)]
    assert not all(np.array_equal(first[0], other) for other in others)
    np.testing.assert_array_equal(image, image_before)  # inputs untouched
    np.testing.assert_array_equal(mask, mask_before)


def test_chain_with_every_step_off_returns_fresh_copies():
    image, mask = random_image(40, 50), np.ones((40, 50), dtype=np.int32)
    out_image, out_mask = TrainTransform(plain_config(short_side=[40]), 255)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    assert out_mask.dtype == np.int64
    assert not np.shares_memory(out_image, image) and out_image.flags.writeable


def test_full_chain_speed_on_512_sample():
    image = random_image(512, 512, seed=0)
    mask = np.random.default_rng(0).integers(0, 40, (512, 512)).astype(np.int64)
    transform = TrainTransform(TrainTransformConfig(), ignore_index=255)
    transform(image, mask, np.random.default_rng(0))  # build the lookup tables
    runs = 40
    start = time.perf_counter()
    for index in range(runs):
        transform(image, mask, np.random.default_rng(index))
    per_sample_ms = (time.perf_counter() - start) / runs * 1e3
    print(f"\nTrainTransform 512x512 -> 384x384: {per_sample_ms:.2f} ms/sample (mean of {runs})")
    assert per_sample_ms < 100  # generous: shared CI cores; a few ms on a free core


# --------------------------------------------------------------------------- config and input checks


def test_config_from_yaml_mapping_and_independent_defaults():
    values = {"short_side": [320, 384], "crop_size": None, "size_divisibility": 0}
    config = build_dataclass(TrainTransformConfig, values)
    assert config.short_side == [320, 384] and config.crop_size is None and config.max_size == 1333
    a, b = TrainTransformConfig(), TrainTransformConfig()
    a.short_side.append(999)
    assert b.short_side == [384] and b.crop_size == [384, 384]


@pytest.mark.parametrize(
    "values, field_name",
    [
        ({"short_side": []}, "short_side"),
        ({"short_side": [384, 0]}, "short_side"),
        ({"max_size": 0}, "max_size"),
        ({"crop_size": [384]}, "crop_size"),
        ({"crop_size": [384, -1]}, "crop_size"),
        ({"image_pad_value": 300}, "image_pad_value"),
        ({"size_divisibility": -32}, "size_divisibility"),
        ({"crop_sise": [384, 384]}, "crop_size"),  # unknown key: suggestion names the field
        ({"hflip": "yes"}, "hflip"),
    ],
)
def test_config_errors_name_the_field(values, field_name):
    with pytest.raises(ConfigError, match=field_name):
        build_dataclass(TrainTransformConfig, values)


def test_bad_inputs_raise_one_clear_error():
    transform = TrainTransform(plain_config(), ignore_index=255)
    mask = np.zeros((10, 10), dtype=np.int64)
    with pytest.raises(DataError, match="image must be a uint8"):
        transform(np.zeros((10, 10, 3), dtype=np.float32), mask, np.random.default_rng(0))
    with pytest.raises(DataError, match="does not match image size"):
        transform(random_image(10, 12), mask, np.random.default_rng(0))
    with pytest.raises(DataError, match="mask must be an integer"):
        transform(random_image(10, 10), mask.astype(np.float64), np.random.default_rng(0))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        transform(random_image(10, 10), mask, np.random)
    with pytest.raises(ConfigError, match="ignore_index"):
        TrainTransform(plain_config(), ignore_index="255")
