"""Inference modes: tiling geometry, equivalence with the official Unfold/Fold recipe,
batching of views, output shapes and config validation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench.errors import ConfigError, OvbenchError
from ovbench.eval.inference import (
    InferenceConfig,
    InferenceMode,
    MaskClassification,
    MaskScores,
    SlidingWindow,
    WholeImage,
    build_inference,
    shortest_edge_size,
    tile_offsets,
    tile_starts,
)

NUM_CLASSES = 4


def random_conv_model(seed: int = 0, stride: int = 4) -> nn.Module:
    """A model whose logits come out at 1/stride resolution, so upsampling matters."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, NUM_CLASSES, kernel_size=stride + 1, stride=stride, padding=stride // 2).eval()


def pixelwise_model(seed: int = 0) -> nn.Module:
    """A per-pixel linear map: translation-equivariant with no border effects."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, NUM_CLASSES, kernel_size=1)
    with torch.no_grad():
        conv.weight.mul_(0.02)  # keep logits O(1) for inputs in 0..255
    return conv.eval()


def random_images(batch: int, height: int, width: int, seed: int = 1) -> Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


def unfold_fold_reference(model: nn.Module, image: Tensor, kernel: int = 384, stride: int = 256,
                          out_res: int = 640) -> Tensor:
    """The CAT-Seg recipe written with nn.Unfold / nn.Fold, one image at a time."""
    unfold = nn.Unfold(kernel_size=kernel, stride=stride)
    fold = nn.Fold(output_size=(out_res, out_res), kernel_size=kernel, stride=stride)
    height, width = image.shape[-2:]
    canvas = F.interpolate(image, size=(out_res, out_res), mode="bilinear", align_corners=False)
    columns = unfold(canvas)[0]  # (3*k*k, L)
    tiles = columns.T.reshape(-1, 3, kernel, kernel)
    global_view = F.interpolate(image, size=(kernel, kernel), mode="bilinear", align_corners=False)
    views = torch.cat([tiles, global_view], dim=0)
    outputs = F.interpolate(model(views), size=(kernel, kernel), mode="bilinear", align_corners=False).sigmoid()
    global_scores = F.interpolate(outputs[-1:], size=(out_res, out_res), mode="bilinear", align_corners=False)
    tile_columns = outputs[:-1].flatten(1).T.unsqueeze(0)  # (1, T*k*k, L)
    coverage = fold(unfold(torch.ones(1, 1, out_res, out_res)))
    tiles_folded = fold(tile_columns) / coverage
    blended = (tiles_folded + global_scores) / 2
    return F.interpolate(blended, size=(height, width), mode="bilinear", align_corners=False)


class CountingForward:
    """Wraps a model and records the shape of every batch it is called with."""

    def __init__(self, model: Callable[[Tensor], Tensor]):
        self.model = model
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, views: Tensor) -> Tensor:
        self.calls.append(tuple(views.shape))
        return self.model(views)


# --------------------------------------------------------------------------- (1) tiling


TILING_CASES = [
    (length, window, max(1, int(window * stride_fraction)))
    for length in (1, 5, 64, 100, 383, 384, 385, 640, 641, 1000, 1023)
    for window in (1, 7, 64, 128, 384)
    for stride_fraction in (0.1, 0.5, 0.667, 1.0)
    if window <= length  # a window larger than the side is a config error, tested below
]


@pytest.mark.parametrize("length,window,stride", TILING_CASES)
def test_tile_starts_cover_every_pixel(length: int, window: int, stride: int) -> None:
    starts = tile_starts(length, window, stride)
    covered = torch.zeros(length, dtype=torch.int64)
    for start in starts:
        covered[start : start + window] += 1
    assert covered.min() >= 1, "a pixel is not covered"
    assert starts[0] == 0 and starts[-1] + window == length  # flush with both edges, never beyond
    assert starts == sorted(set(starts))
    steps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(step == stride for step in steps[:-1]) and all(0 < step <= stride for step in steps)


def test_tile_offsets_cover_every_pixel_in_2d() -> None:
    for height, width, window, stride in [(640, 640, 384, 256), (481, 737, 100, 67), (50, 33, 33, 1)]:
        covered = torch.zeros(height, width, dtype=torch.int64)
        for top, left in tile_offsets(height, width, window, stride):
            covered[top : top + window, left : left + window] += 1
        assert covered.min() >= 1


def test_official_grid_is_two_by_two_at_expected_offsets() -> None:
    assert tile_starts(640, 384, int(384 * 0.667)) == [0, 256]
    assert tile_offsets(640, 640, 384, 256) == [(0, 0), (0, 256), (256, 0), (256, 256)]


def test_non_divisible_grid_adds_one_flush_tile() -> None:
    # Unfold would stop at 200 and leave columns 584..699 unseen.
    assert tile_starts(700, 384, 200) == [0, 200, 316]
    assert tile_offsets(500, 384, 384, 256) == [(0, 0), (116, 0)]


@pytest.mark.parametrize("height,width", [(640, 640), (481, 737)])
def test_official_sliding_equals_unfold_fold_reference(height: int, width: int) -> None:
    model = random_conv_model()
    images = random_images(2, height, width)
    mode = SlidingWindow(size=(640, 640), window=384, stride=256, global_view=384, global_weight=0.5,
                         activation="sigmoid")
    with torch.no_grad():
        ours = mode(model, images)
        reference = torch.cat([unfold_fold_reference(model, image[None]) for image in images])
    assert ours.shape == (2, NUM_CLASSES, height, width)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- (2) equivalence


@pytest.mark.parametrize("height,width,window,stride", [(96, 80, 32, 20), (77, 101, 40, 40), (64, 64, 64, 8)])
def test_sliding_equals_whole_for_pixelwise_model(height: int, width: int, window: int, stride: int) -> None:
    model = pixelwise_model()
    images = random_images(2, height, width)
    whole = WholeImage(size=(height, width), activation="none")
    sliding = SlidingWindow(size=(height, width), window=window, stride=stride, global_view=None,
                            activation="none")
    with torch.no_grad():
        expected = whole(model, images)
        got = sliding(model, images)
    # The whole-image path must not be trivially zero for this to mean anything.
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_global_weight_one_is_the_global_view_alone() -> None:
    model = pixelwise_model()
    images = random_images(1, 90, 70)
    global_only = SlidingWindow(size=(90, 70), window=48, stride=32, global_view=48, global_weight=1.0,
                                activation="sigmoid")
    tiles_only = SlidingWindow(size=(90, 70), window=48, stride=32, global_view=None, activation="sigmoid")
    with torch.no_grad():
        got = global_only(model, images)
        expected_global = WholeImage(size=(48, 48), activation="sigmoid")(model, images)
        expected_tiles = tiles_only(model, images)
        half = SlidingWindow(size=(90, 70), window=48, stride=32, global_view=48, global_weight=0.5,
                             activation="sigmoid")(model, images)
    torch.testing.assert_close(got, expected_global, atol=1e-6, rtol=0)
    torch.testing.assert_close(half, (expected_tiles + expected_global) / 2, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- (3) batching


@pytest.mark.parametrize("batch", [1, 3])
def test_one_forward_call_with_all_views(batch: int) -> None:
    # A 1x1-output stand-in model: only the views matter here, not the compute.
    forward = CountingForward(lambda views: views.mean(dim=(2, 3), keepdim=True))
    mode = build_inference(InferenceConfig(mode="sliding", size=[640, 640], window=384, stride=256,
                                           global_view=384, activation="sigmoid"))
    with torch.no_grad():
        mode(forward, random_images(batch, 100, 120))
    assert forward.calls == [(batch * (4 + 1), 3, 384, 384)]


def test_views_are_grouped_per_image_with_the_global_view_last() -> None:
    seen: list[Tensor] = []

    def forward(views: Tensor) -> Tensor:
        seen.append(views)
        return views[:, :1]

    images = random_images(2, 64, 64)
    SlidingWindow(size=(64, 64), window=48, stride=16, global_view=48, activation="none")(forward, images)
    views = seen[0].unflatten(0, (2, 5))
    torch.testing.assert_close(views[1, 0], images[1, :, :48, :48])
    torch.testing.assert_close(views[0, 3], images[0, :, 16:, 16:])
    torch.testing.assert_close(
        views[1, 4], F.interpolate(images[1:], size=(48, 48), mode="bilinear", align_corners=False)[0]
    )


def test_global_view_of_another_size_costs_a_second_call() -> None:
    forward = CountingForward(random_conv_model())
    with torch.no_grad():
        out = SlidingWindow(size=(96, 96), window=64, stride=32, global_view=80)(forward, random_images(2, 50, 70))
    assert forward.calls == [(2 * 4, 3, 64, 64), (2, 3, 80, 80)]
    assert out.shape == (2, NUM_CLASSES, 50, 70)


# --------------------------------------------------------------------------- (4)/(5) shapes


@pytest.mark.parametrize("height,width", [(37, 53), (1, 1), (129, 31)])
@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_output_matches_odd_input_sizes(mode: str, height: int, width: int) -> None:
    config = InferenceConfig(mode=mode, size=[65, 47], window=33, stride=21, global_view=33, activation="sigmoid")
    with torch.no_grad():
        out = build_inference(config)(random_conv_model(), random_images(2, height, width))
    assert out.shape == (2, NUM_CLASSES, height, width)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert 0 <= out.min() and out.max() <= 1  # sigmoid scores stay probabilities through averaging


def test_whole_image_upsamples_quarter_resolution_logits() -> None:
    forward = CountingForward(random_conv_model(stride=4))
    with torch.no_grad():
        out = WholeImage(size=(64, 96))(forward, random_images(3, 50, 75))
    assert forward.calls == [(3, 3, 64, 96)]
    assert out.shape == (3, NUM_CLASSES, 50, 75)


def test_whole_image_equals_manual_recipe() -> None:
    model = random_conv_model(stride=4)
    images = random_images(1, 50, 75)
    with torch.no_grad():
        got = WholeImage(size=(64, 96), activation="sigmoid")(model, images)
        resized = F.interpolate(images, size=(64, 96), mode="bilinear", align_corners=False)
        logits = F.interpolate(model(resized), size=(64, 96), mode="bilinear", align_corners=False)
        expected = F.interpolate(logits.sigmoid(), size=(50, 75), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_whole_image_without_logit_upsampling_activates_at_model_resolution() -> None:
    """SED's order: sigmoid on the model's own output grid, then one resize to H x W."""
    model = random_conv_model(stride=4)
    images = random_images(1, 50, 75)
    with torch.no_grad():
        got = WholeImage(size=(64, 96), activation="sigmoid", upsample_logits=False)(model, images)
        resized = F.interpolate(images, size=(64, 96), mode="bilinear", align_corners=False)
        expected = F.interpolate(model(resized).sigmoid(), size=(50, 75), mode="bilinear", align_corners=False)
        upsampled_first = WholeImage(size=(64, 96), activation="sigmoid")(model, images)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (got - upsampled_first).abs().max() > 1e-4  # the two orders really differ


class FixedMasksForward:
    """A mask-classification forward: Q random masks at 1/4 of a canvas padded to x8."""

    def __init__(self, queries: int = 3, classes: int = NUM_CLASSES, seed: int = 0):
        self.queries, self.classes, self.seed = queries, classes, seed
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, views: Tensor) -> MaskScores:
        self.calls.append(tuple(views.shape))
        generator = torch.Generator().manual_seed(self.seed)
        n, _, h, w = views.shape
        padded = (-(-h // 8) * 8, -(-w // 8) * 8)
        probs = torch.rand(n, self.queries, self.classes, generator=generator)
        masks = torch.randn(n, self.queries, padded[0] // 4, padded[1] // 4, generator=generator)
        return MaskScores(probs, masks, padded)


def test_mask_classification_resizes_masks_before_combining_them() -> None:
    """Masks -> padded canvas -> crop to the (resized) view -> original size -> sigmoid, then
    sum_q p(q, t) * m(q): SAN's post-processing before semantic inference."""
    forward = FixedMasksForward()
    images = random_images(2, 45, 70)
    got = MaskClassification(short_side=30, max_size=1000)(forward, images)
    view = shortest_edge_size(45, 70, 30, 1000)
    assert forward.calls == [(2, 3, *view)]
    out = forward(F.interpolate(images, size=view, mode="bilinear", align_corners=False, antialias=True))
    masks = F.interpolate(out.mask_logits, size=out.padded_size, mode="bilinear", align_corners=False)
    masks = F.interpolate(masks[..., : view[0], : view[1]], size=(45, 70), mode="bilinear", align_corners=False)
    expected = torch.zeros(2, NUM_CLASSES, 45, 70)
    for q in range(3):
        expected += out.class_probs[:, q, :, None, None] * masks[:, q : q + 1].sigmoid()
    assert got.shape == (2, NUM_CLASSES, 45, 70)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_mask_classification_chunks_classes_without_changing_scores(monkeypatch) -> None:
    import ovbench.eval.inference as inference

    images = random_images(1, 40, 40)
    whole = MaskClassification(short_side=None)(FixedMasksForward(classes=7), images)
    monkeypatch.setattr(inference, "SCORE_CHUNK_ELEMENTS", 2 * 40 * 40)
    chunked = MaskClassification(short_side=None)(FixedMasksForward(classes=7), images)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)  # einsum sums in another order


def test_mask_classification_refuses_plain_logits() -> None:
    with pytest.raises(RuntimeError, match="MaskScores"):
        MaskClassification(short_side=None)(random_conv_model(), random_images(1, 16, 16))
    bad = lambda views: MaskScores(torch.rand(1, 3, 2), torch.rand(1, 4, 4, 4), (16, 16))  # noqa: E731
    with pytest.raises(RuntimeError, match="same N and Q"):
        MaskClassification(short_side=None)(bad, random_images(1, 16, 16))


def test_masks_mode_is_built_from_config() -> None:
    mode = build_inference(InferenceConfig(mode="masks", short_side=640, max_size=2560))
    assert isinstance(mode, MaskClassification) and (mode.short_side, mode.max_size) == (640, 2560)
    assert mode.wants_masks


def test_softmax_scores_sum_to_one_per_pixel() -> None:
    with torch.no_grad():
        out = WholeImage(size=(32, 32), activation="softmax")(random_conv_model(), random_images(2, 41, 23))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 41, 23), atol=1e-5, rtol=0)


def test_uint8_images_are_accepted() -> None:
    images = random_images(1, 20, 30)
    with torch.no_grad():
        from_float = WholeImage(size=(16, 16))(random_conv_model(), images.round())
        from_uint8 = WholeImage(size=(16, 16))(random_conv_model(), images.round().to(torch.uint8))
    torch.testing.assert_close(from_uint8, from_float)


# --------------------------------------------------------------------------- short side


def test_shortest_edge_size_follows_detectron2() -> None:
    assert shortest_edge_size(512, 512, 640, 2560) == (640, 640)
    assert shortest_edge_size(300, 400, 640, 2560) == (640, 853)  # 853.33 rounds down
    assert shortest_edge_size(3000, 4000, 640) == (640, 853)
    assert shortest_edge_size(600, 1001, 640) == (640, 1068)  # 1067.73 rounds up
    assert shortest_edge_size(100, 1000, 640, 2560) == (256, 2560)  # long side capped


def test_short_side_resize_feeds_forward_and_output_returns_to_original_size() -> None:
    forward = CountingForward(pixelwise_model())
    mode = build_inference(InferenceConfig(mode="whole", size=None, short_side=64, max_size=100))
    with torch.no_grad():
        out = mode(forward, random_images(1, 30, 60))
    assert forward.calls == [(1, 3, 50, 100)]  # 64x128 capped to a long side of 100
    assert out.shape == (1, NUM_CLASSES, 30, 60)


def test_catseg_preset_is_the_official_recipe() -> None:
    mode = build_inference(InferenceConfig.catseg_sliding())
    assert isinstance(mode, SlidingWindow) and isinstance(mode, InferenceMode)
    assert (mode.size, mode.window, mode.stride, mode.global_view) == ((640, 640), 384, 256, 384)
    assert (mode.global_weight, mode.activation, mode.short_side, mode.max_size) == (0.5, "sigmoid", 640, 2560)


# --------------------------------------------------------------------------- (6) errors


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"mode": "tiles"}, "mode"),
        ({"activation": "relu"}, "activation"),
        ({"mode": "sliding", "activation": "Sigmoid"}, "activation"),
        ({"size": [0, 640]}, "size"),
        ({"size": [640]}, "size"),
        ({"size": "640"}, "size"),
        ({"mode": "sliding", "size": [640, -1]}, "size"),
        ({"mode": "sliding", "window": 0}, "window"),
        ({"mode": "sliding", "window": True}, "window"),
        ({"mode": "sliding", "stride": -256}, "stride"),
        ({"mode": "sliding", "stride": 400}, "stride"),
        ({"mode": "sliding", "global_view": 0}, "global_view"),
        ({"mode": "sliding", "global_weight": 1.5}, "global_weight"),
        ({"mode": "sliding", "size": [640, 300]}, "window"),
        ({"short_side": 0}, "short_side"),
        ({"short_side": 640, "max_size": -1}, "max_size"),
        ({"upsample_logits": "no"}, "upsample_logits"),
        ({"mode": "masks", "short_side": -640}, "short_side"),
    ],
)
def test_bad_config_raises_config_error_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        build_inference(InferenceConfig(**overrides))
    assert "\n" not in str(info.value)


def test_image_smaller_than_window_after_resize_is_a_config_error() -> None:
    mode = build_inference(InferenceConfig(mode="sliding", size=None, window=64, stride=32))
    with pytest.raises(ConfigError, match="smaller than window 64"):
        mode(random_conv_model(), random_images(1, 40, 100))


def test_tile_starts_rejects_windows_that_cannot_cover() -> None:
    with pytest.raises(ConfigError, match="window"):
        tile_starts(100, 128, 64)
    with pytest.raises(ConfigError, match="stride"):
        tile_starts(1000, 384, 385)


def test_bad_images_and_bad_forward_outputs() -> None:
    mode = WholeImage(size=(16, 16))
    with pytest.raises(OvbenchError, match=r"\(B,3,H,W\)"):
        mode(random_conv_model(), torch.zeros(3, 16, 16))
    with pytest.raises(RuntimeError, match="N=2"):
        mode(lambda views: views[:1], random_images(2, 16, 16))
