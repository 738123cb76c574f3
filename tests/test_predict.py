"""`ovbench predict` (ovbench/predict.py, docs/predict.md): tiles that cover a scene once, labels
that agree with a direct `predict` of each tile, GeoTIFF outputs that keep CRS and transform,
one-line refusals from the installed executable, and the bounded memory of a 4000 x 4000 scene."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from cli_process import REPO, assert_one_error_line, cli_env, ovbench  # noqa: E402
from ovbench.data.raster import RasterSettings  # noqa: E402
from ovbench.errors import VocabularyError  # noqa: E402
from ovbench.predict import (  # noqa: E402
    PredictOptions,
    label_dtype,
    parse_classes,
    plan_tiles,
    predict_scene,
    prepare_inputs,
)

CRS = "EPSG:32631"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5_000_000.0)


def write_geotiff(path: Path, bands: np.ndarray, nodata=None, **extra) -> Path:
    count, height, width = bands.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=bands.dtype.name,
                       crs=CRS, transform=TRANSFORM, nodata=nodata, **extra) as dataset:
        dataset.write(bands)
    return path


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A 4-band uint16 scene with smooth structure, its left 5 columns nodata (0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    bands = np.stack([(xx * 37 + yy * 11) % 3000, (yy * 23) % 2800, ((xx // 17 + yy // 13) % 4) * 700,
                      rng.integers(100, 4000, (height, width))]).astype(np.uint16)
    bands[:, :, :5] = 0
    return bands


class ContextSegmenter:
    """Scores that depend on the pixel and on the whole view it is shown (its mean), so that a
    tile's labels differ from the same pixels predicted in another view: tiling is visible."""

    def __init__(self, classes: int):
        self.classes = classes
        self.calls: list[tuple[int, int]] = []

    def predict(self, images: torch.Tensor, vocabulary) -> torch.Tensor:
        assert images.ndim == 4 and images.shape[1] == 3 and images.dtype == torch.float32
        self.calls.append(tuple(images.shape[-2:]))
        centres = torch.linspace(0, 255, self.classes).view(1, -1, 1, 1)
        red, green = images[:, :1], images[:, 1:2]
        mean = green.mean(dim=(2, 3), keepdim=True)
        return -(red - centres).abs() + 0.3 * (green - mean) * torch.linspace(-1, 1, self.classes).view(1, -1, 1, 1)


def options(tmp_path: Path, **kw) -> PredictOptions:
    base = dict(out_dir=tmp_path / "out", raster=RasterSettings.from_values("3,2,1", {"percentiles": [2, 98]}), method="fake")
    base.update(kw)
    return PredictOptions(**base)


def vocabulary(classes: int):
    return parse_classes(",".join(f"class {i}" for i in range(classes)))


def direct_labels(segmenter, rgb: np.ndarray, vocab) -> np.ndarray:
    batch = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    return segmenter.predict(batch, vocab)[0].argmax(0).numpy()


# --------------------------------------------------------------------------- tiles and vocabulary


@pytest.mark.parametrize("height, width, tile, overlap", [(300, 200, 128, 32), (1000, 1000, 256, 0), (64, 900, 256, 100), (50, 40, 64, 16)])
def test_tiles_cover_every_pixel_once_at_full_size(height, width, tile, overlap):
    tiles = plan_tiles(height, width, tile, overlap)
    kept = np.zeros((height, width), np.int64)
    for t in tiles:
        assert t.height == min(tile, height) and t.width == min(tile, width)
        assert 0 <= t.top <= t.keep_top < t.keep_bottom <= t.top + t.height <= height
        assert 0 <= t.left <= t.keep_left < t.keep_right <= t.left + t.width <= width
        kept[t.keep_top:t.keep_bottom, t.keep_left:t.keep_right] += 1
        # an inner border keeps at least half the overlap of context
        for inner, margin in ((t.keep_top > 0, t.keep_top - t.top), (t.keep_left > 0, t.keep_left - t.left),
                              (t.keep_bottom < height, t.top + t.height - t.keep_bottom),
                              (t.keep_right < width, t.left + t.width - t.keep_right)):
            if inner:
                assert margin >= overlap // 2
    assert (kept == 1).all()


def test_classes_string_synonyms_and_errors(tmp_path):
    vocab = parse_classes("road, building|house , flooded road")
    assert vocab.names == ["road", "building", "flooded road"] and vocab[1].synonyms == ("house",)
    (tmp_path / "v.yaml").write_text("- water\n- [tree, forest]\n")
    assert parse_classes(str(tmp_path / "v.yaml")).to_list() == ["water", ["tree", "forest"]]
    for bad, fragment in (("  ", "--classes is empty"), ("a,,b", "empty class name at position 2"), ("a,A", "duplicate class")):
        with pytest.raises(VocabularyError, match=fragment):
            parse_classes(bad)
    assert label_dtype(255) == (np.dtype(np.uint8), 255) and label_dtype(256) == (np.dtype(np.uint16), 65535)


# --------------------------------------------------------------------------- tiled = direct


def test_a_tile_covering_the_image_is_exactly_predict_on_the_image(tmp_path):
    path = write_geotiff(tmp_path / "small.tif", scene(90, 120), nodata=0)
    opts = options(tmp_path, tile=128)
    item, = prepare_inputs([path], opts)
    segmenter, vocab = ContextSegmenter(6), vocabulary(6)
    result = predict_scene(segmenter, item, vocab, opts)
    assert result.tiles == 1 and segmenter.calls == [(90, 120)]
    with rasterio.open(path) as source:
        rgb, valid = item.plan.convert(source.read([3, 2, 1]))
    expected = direct_labels(segmenter, rgb, vocab)
    expected[~valid] = 255
    with rasterio.open(result.outputs["labels"]) as labels:
        np.testing.assert_array_equal(labels.read(1), expected)


@pytest.mark.parametrize("reader", ["rasterio", "tifffile"])
def test_tiled_labels_and_scores_agree_with_a_direct_predict_of_each_tile(tmp_path, reader):
    path = write_geotiff(tmp_path / "tiled.tif", scene(300, 200), nodata=0)
    opts = options(tmp_path, tile=128, overlap=32, score_maps=True, reader=reader)
    item, = prepare_inputs([path], opts)
    segmenter, vocab = ContextSegmenter(5), vocabulary(5)
    result = predict_scene(segmenter, item, vocab, opts)
    tiles = plan_tiles(300, 200, 128, 32)
    assert result.tiles == len(tiles) == 6 and set(segmenter.calls) == {(128, 128)}
    with rasterio.open(result.outputs["labels"]) as out, rasterio.open(result.outputs["scores"]) as scores, \
            rasterio.open(path) as source:
        labels, score_maps = out.read(1), scores.read()
        assert out.crs.to_string() == CRS and out.transform == TRANSFORM and out.nodata == 255
        assert scores.crs.to_string() == CRS and scores.transform == TRANSFORM and scores.count == 5
        raw = source.read([3, 2, 1])
    assert (labels[:, :5] == 255).all() and labels[:, 5:].max() < 5
    assert np.isnan(score_maps[:, :, :5]).all() and not np.isnan(score_maps[:, :, 5:]).any()
    whole = direct_labels(segmenter, item.plan.convert(raw)[0], vocab)
    assert (whole[:, 5:] != labels[:, 5:]).any(), "the context-dependent model should make tiling visible"
    for tile in tiles:
        window = raw[:, tile.top:tile.top + tile.height, tile.left:tile.left + tile.width]
        rgb, valid = item.plan.convert(window)
        batch = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        tile_scores = segmenter.predict(batch, vocab)[0].numpy()
        rows, cols = tile.kept_in_tile
        valid = np.ones(rgb.shape[:2], bool) if valid is None else valid
        expected = tile_scores.argmax(0)
        expected[~valid] = 255
        kept = labels[tile.keep_top:tile.keep_bottom, tile.keep_left:tile.keep_right]
        np.testing.assert_array_equal(kept, expected[rows, cols])
        got = score_maps[:, tile.keep_top:tile.keep_bottom, tile.keep_left:tile.keep_right]
        want = np.where(valid[None], tile_scores, np.nan)[:, rows, cols]
        np.testing.assert_array_equal(got, want)


def test_more_than_255_classes_give_uint16_labels_and_png_inputs_png_labels(tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "p.png")
    opts = options(tmp_path, raster=RasterSettings(), tile=64, overlay_max_side=20)
    item, = prepare_inputs([tmp_path / "p.png"], opts)
    segmenter, vocab = ContextSegmenter(300), vocabulary(300)
    result = predict_scene(segmenter, item, vocab, opts)
    assert item.reader == "pillow" and result.outputs["labels"].suffix == ".png"
    labels = np.asarray(Image.open(result.outputs["labels"]))
    assert labels.dtype == np.uint16 or labels.dtype == np.int32
    np.testing.assert_array_equal(labels, direct_labels(segmenter, image, vocab))
    assert Image.open(result.outputs["overlay"]).size == (20, 16)
    assert any("overlay reduced to 20x16" in note for note in result.notes)
    metadata = json.loads(result.outputs["metadata"].read_text())
    assert metadata["label_dtype"] == "uint16" and metadata["label_nodata"] == 65535 and len(metadata["classes"]) == 300


def test_a_failure_midway_leaves_no_outputs_and_no_temporary_files(tmp_path):
    path = write_geotiff(tmp_path / "f.tif", scene(200, 200))
    opts = options(tmp_path, tile=64, overlap=0, score_maps=True)
    item, = prepare_inputs([path], opts)

    class FailsOnThirdTile(ContextSegmenter):
        def predict(self, images, vocab):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().predict(images, vocab)

    with pytest.raises(KeyboardInterrupt):
        predict_scene(FailsOnThirdTile(3), item, vocabulary(3), opts)
    assert list((tmp_path / "out").iterdir()) == []


def test_two_inputs_with_one_stem_are_refused_before_predicting(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / folder / "x.png")
    with pytest.raises(Exception, match="would write the same outputs"):
        prepare_inputs([tmp_path / "a/x.png", tmp_path / "b/x.png"], options(tmp_path, raster=RasterSettings()))


# --------------------------------------------------------------------------- the executable


def test_cli_predicts_geotiff_png_and_jpeg_keeping_crs_and_transform(tmp_path):
    geotiff = write_geotiff(tmp_path / "scene.tif", scene(150, 170), nodata=0)
    pixels = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    Image.fromarray(pixels).save(tmp_path / "aerial.jpg")
    proc = ovbench(tmp_path / "home", "predict", "--method", "clip-dense", "--scale", "tiny", "--device", "cpu",
                   str(geotiff), str(tmp_path / "photo.png"), str(tmp_path / "aerial.jpg"),
                   "--classes", "road,building|house,flooded road,water", "--bands", "3,2,1", "--percentiles", "2,98",
                   "--tile", "128", "--overlap", "32", "--score-maps", "--out", str(tmp_path / "out"), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert f"{geotiff}: read with rasterio (4 bands of uint16, 170x150; bands 3,2,1; percentiles 2/98" in proc.stdout
    assert "photo.png: read with pillow" in proc.stdout and "aerial.jpg: read with pillow" in proc.stdout
    assert f"wrote labels: {out / 'scene_labels.tif'}" in proc.stdout
    with rasterio.open(out / "scene_labels.tif") as labels, rasterio.open(geotiff) as source:
        assert labels.crs == source.crs and labels.transform == source.transform
        assert (labels.width, labels.height, labels.dtypes[0], labels.nodata) == (170, 150, "uint8", 255)
        values = labels.read(1)
    assert (values[:, :5] == 255).all() and values[:, 5:].max() < 4
    with rasterio.open(out / "scene_scores.tif") as scores:
        assert scores.count == 4 and scores.descriptions == ("road", "building", "flooded road", "water")
        assert scores.crs == CRS
    for stem in ("photo", "aerial"):
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert labels.shape == (48, 64) and labels.max() < 4
        assert Image.open(out / f"{stem}_overlay.png").size == (64, 48)
    metadata = json.loads((out / "scene_prediction.json").read_text())
    assert metadata["crs"] == CRS and metadata["transform"] == list(TRANSFORM)[:6]
    assert metadata["classes"][1] == {"label": 1, "name": "building", "synonyms": ["house"], "colour": [60, 180, 75]}
    assert metadata["raster"]["bands"] == [3, 2, 1] and metadata["raster"]["nodata"] == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def refusal_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refusals")
    write_geotiff(folder / "multi.tif", scene(20, 20))
    write_geotiff(folder / "sixteen.tif", scene(20, 20)[:3])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "ok.png")
    return folder


@pytest.mark.parametrize("image, args, fragments", [
    ("missing.tif", ["--classes", "a"], ["missing.tif: image file not found"]),
    ("corrupt.png", ["--classes", "a"], ["corrupt.png: cannot decode image"]),
    ("ok.png", ["--classes", "a", "--method", "clip-dens"], ["unknown method 'clip-dens'", "did you mean 'clip-dense'"]),
    ("ok.png", ["--classes", " "], ["--classes is empty"]),
    ("multi.tif", ["--classes", "a"], ["multi.tif: 4 bands of uint16", "--bands 3,2,1"]),
    ("sixteen.tif", ["--classes", "a"], ["sixteen.tif: 3 bands of uint16 need scaling", "--percentiles 2,98"]),
    ("multi.tif", ["--classes", "a", "--bands", "3,2,9", "--percentiles", "2,98"], ["band 9 asked for, but the file has 4 bands"]),
    ("multi.tif", ["--classes", "a", "--bands", "3,2,1", "--percentiles", "2,98", "--scale-range", "0,1"], ["either --percentiles or --scale-range"]),
    ("ok.png", ["--classes", "a", "--tile", "8"], ["--tile must be an integer of at least 32"]),
])
def test_cli_refusals_are_one_line(tmp_path, refusal_files, image, args, fragments):
    if "--method" not in args:
        args = [*args, "--method", "clip-dense"]
    proc = ovbench(tmp_path / "home", "predict", str(refusal_files / image), *args, "--scale", "tiny",
                   "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_error_line(proc, *fragments)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- bounded memory

#: the bound the 4000 x 4000, 16-class run must stay under (docs/predict.md states the measured
#: figure, ~180 MiB on CPU): the full float32 score stack would be 977 MiB
PEAK_BOUND_MIB = 384

MEMORY_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    from ovbench.data.raster import RasterSettings
    from ovbench.predict import PredictOptions, full_stack_bytes, parse_classes, predict_scene, prepare_inputs
    from ovbench.runner import load_segmenter

    scene, out, classes = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    vocabulary = parse_classes(",".join(f"class {i}" for i in range(classes)))
    options = PredictOptions(out_dir=out, method="clip-dense",
                             raster=RasterSettings.from_values("3,2,1", {"percentiles": [2, 98]}))
    segmenter, _, device = load_segmenter("clip-dense", scale="tiny", device="cpu")
    # the baseline: imports and the model built, as `ovbench predict` has them before its first input
    baseline = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak (VmHWM) to the current resident size
    items = prepare_inputs([scene], options)
    result = predict_scene(segmenter, items[0], vocabulary, options, device)
    peak = status("VmHWM")
    print(json.dumps({"baseline": baseline, "peak": peak, "increase": peak - baseline, "tiles": result.tiles,
                      "full_stack": full_stack_bytes(classes, result.height, result.width)}))
''')


def _clear_refs_works() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def write_big_scene(path: Path, side: int) -> None:
    profile = dict(driver="GTiff", width=side, height=side, count=4, dtype="uint16", crs=CRS, transform=TRANSFORM,
                   nodata=0, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **profile) as dataset:
        for top in range(0, side, 500):
            rows = min(500, side - top)
            yy, xx = np.mgrid[top:top + rows, 0:side]
            bands = np.stack([(xx * 7 + yy) % 4000, (yy * 5) % 3500, ((xx // 300 + yy // 300) % 5) * 600 + 200,
                              np.full_like(xx, 900)]).astype(np.uint16)
            bands[:, xx < 100] = 0
            dataset.write(bands, window=Window(0, top, side, rows))


@pytest.mark.skipif(not _clear_refs_works(), reason="needs Linux /proc/self/clear_refs to measure a peak")
def test_a_4000_pixel_scene_keeps_crs_and_stays_far_below_the_full_score_stack(tmp_path):
    path = tmp_path / "big.tif"
    write_big_scene(path, 4000)
    script = tmp_path / "measure.py"
    script.write_text(MEMORY_SCRIPT)
    env = cli_env(tmp_path / "home")
    done = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "out"), "16"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    full_stack_mib, increase_mib = measured["full_stack"] / 2**20, measured["increase"] / 2**20
    print(f"peak RSS increase {increase_mib:.0f} MiB, full score stack {full_stack_mib:.0f} MiB")
    assert full_stack_mib >= 0.75 * 1024 and measured["tiles"] == 25
    assert increase_mib < PEAK_BOUND_MIB and increase_mib < full_stack_mib / 2.5, measured
    with rasterio.open(tmp_path / "out/big_labels.tif") as labels:
        assert labels.crs.to_string() == CRS and labels.transform == TRANSFORM
        assert (labels.width, labels.height) == (4000, 4000)
        corner = labels.read(1, window=Window(0, 0, 200, 200))
    assert (corner[:, :100] == 255).all() and corner[:, 100:].max() < 16
    assert Image.open(tmp_path / "out/big_overlay.png").size == (2048, 2048)
