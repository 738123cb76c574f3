"""Remote-sensing rasters (ovbench/data/raster.py, docs/datasets.md#raster-images): band
selection, scaling against hand-computed numbers, nodata masks, the readers, and folder
datasets whose specs map bands (nodata -> ignore_index in the mask)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402

from ovbench.data.catalog import load_dataset_spec  # noqa: E402
from ovbench.data.folder import FolderDataset, FolderDatasetSpec, read_rgb  # noqa: E402
from ovbench.data.raster import (  # noqa: E402
    RasterSettings,
    open_raster,
    parse_bands,
    parse_nodata,
    parse_scaling,
    plan_raster,
    read_raster_rgb,
)
from ovbench.errors import ConfigError, DataError  # noqa: E402

CRS = "EPSG:32631"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5_000_000.0)


def write_geotiff(path, bands: np.ndarray, nodata=None, **extra):
    count, height, width = bands.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=bands.dtype.name, crs=CRS,
                   transform=TRANSFORM, nodata=nodata, **extra)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(bands)
    return path


def constant_bands(values, shape=(6, 8), dtype=np.uint16) -> np.ndarray:
    return np.stack([np.full(shape, value, dtype) for value in values])


# --------------------------------------------------------------------------- scaling math


@pytest.mark.parametrize("reader", ["rasterio", "tifffile"])
def test_fixed_range_scaling_matches_hand_numbers(tmp_path, reader):
    # (x - 0) * 255 / 3000, clipped, halves rounded up: 750 -> 63.75 -> 64, 1500 -> 127.5 -> 128
    row = np.array([0, 750, 1500, 3000, 4000, 11], np.uint16)
    bands = np.stack([np.tile(row, (2, 1))] * 3)
    path = write_geotiff(tmp_path / "r.tif", bands)
    image = read_raster_rgb(path, RasterSettings.from_values(scaling={"range": [0, 3000]}), reader=reader)
    assert image.reader == reader
    assert image.rgb[0, :, 0].tolist() == [0, 64, 128, 255, 255, 1]  # 11 * 255 / 3000 = 0.935 -> 1
    assert image.valid is None


def test_per_band_ranges_and_band_order(tmp_path):
    bands = constant_bands([1000, 2000, 3000, 4000])
    path = write_geotiff(tmp_path / "b.tif", bands)
    settings = RasterSettings.from_values([4, 2, 1], {"range": [[0, 4000], [1000, 3000], [0, 2000]]})
    image = read_raster_rgb(path, settings)
    # R = band 4: 4000 of 0..4000 -> 255; G = band 2: 2000 of 1000..3000 -> 127.5 -> 128; B = band 1: 1000 of 0..2000 -> 128
    assert image.rgb[0, 0].tolist() == [255, 128, 128]
    assert image.plan.describe().startswith("bands 4,2,1; range 0..4000, 1000..3000, 0..2000")


def test_percentile_scaling_matches_numpy_hand_numbers(tmp_path):
    # one band 0..100: the 2nd and 98th percentiles are 2 and 98; 50 -> 48 * 255 / 96 = 127.5 -> 128,
    # 10 -> 21.25 -> 21, 99 clips to 255
    band = np.arange(101, dtype=np.uint16).reshape(1, 1, 101)
    path = write_geotiff(tmp_path / "p.tif", band)
    image = read_raster_rgb(path, RasterSettings.from_values([1], {"percentiles": [2, 98]}))
    grey = image.rgb[0, :, 0]
    assert image.plan.low == (2.0,) and image.plan.high == (98.0,)
    assert [int(grey[v]) for v in (0, 2, 10, 50, 98, 99)] == [0, 0, 21, 128, 255, 255]
    assert (image.rgb[..., 0] == image.rgb[..., 1]).all() and (image.rgb[..., 1] == image.rgb[..., 2]).all()


def test_percentiles_leave_nodata_out(tmp_path):
    # nodata 0 fills half the image: with it the 50th percentile would be ~0, without it 150
    band = np.zeros((1, 2, 200), np.uint16)
    band[0, :, 100:] = np.arange(100, 200)
    path = write_geotiff(tmp_path / "n.tif", band, nodata=0)
    image = read_raster_rgb(path, RasterSettings.from_values([1], {"percentiles": [0, 100]}))
    assert image.plan.low == (100.0,) and image.plan.high == (199.0,)
    assert not image.valid[:, :100].any() and image.valid[:, 100:].all()
    assert (image.rgb[:, :100] == 0).all() and image.rgb[0, 100, 0] == 0 and image.rgb[0, 199, 0] == 255


def test_float_imagery_with_nan_nodata_and_a_range(tmp_path):
    bands = np.full((3, 4, 4), 0.5, np.float32)
    bands[:, 0, 0] = np.nan
    bands[0, 1, 1] = 0.25
    path = write_geotiff(tmp_path / "f.tif", bands, nodata=float("nan"))
    image = read_raster_rgb(path, RasterSettings.from_values(scaling={"range": [0.0, 1.0]}))
    assert image.rgb[2, 2].tolist() == [128, 128, 128]  # 127.5 rounds up
    assert image.rgb[1, 1, 0] == 64  # 63.75
    assert not image.valid[0, 0] and image.valid.sum() == 15 and image.rgb[0, 0].tolist() == [0, 0, 0]


def test_scaling_none_takes_values_as_they_are_and_refuses_out_of_range(tmp_path):
    ok = write_geotiff(tmp_path / "ok.tif", constant_bands([0, 100, 255]))
    assert read_raster_rgb(ok, RasterSettings.from_values(scaling="none")).rgb[0, 0].tolist() == [0, 100, 255]
    high = write_geotiff(tmp_path / "high.tif", constant_bands([0, 100, 4095]))
    with pytest.raises(DataError, match=r"high\.tif: values 0\.\.4095 lie outside 0\.\.255 but scaling is none"):
        read_raster_rgb(high, RasterSettings.from_values(scaling="none"))


# --------------------------------------------------------------------------- nodata


def test_nodata_needs_every_selected_band_and_can_be_overridden_or_switched_off(tmp_path):
    bands = constant_bands([500, 600, 700, 800], shape=(2, 3))
    bands[:, 0, 0] = 0  # all bands nodata: missing
    bands[0, 0, 1] = 0  # one band at 0: a measurement
    path = write_geotiff(tmp_path / "m.tif", bands, nodata=0)
    scaling = {"range": [0, 1000]}
    from_file = read_raster_rgb(path, RasterSettings.from_values([1, 2, 3], scaling))
    assert from_file.valid.tolist() == [[False, True, True], [True, True, True]]
    overridden = read_raster_rgb(path, RasterSettings.from_values([1], scaling, nodata=500))
    assert overridden.valid.tolist() == [[True, True, False], [False, False, False]]
    switched_off = read_raster_rgb(path, RasterSettings.from_values([1, 2, 3], scaling, nodata="none"))
    assert switched_off.valid is None


def test_alpha_band_zero_is_missing_and_alpha_is_not_a_colour_band(tmp_path):
    rgba = np.full((4, 3, 3), 200, np.uint8)
    rgba[3, 1, 1] = 0
    path = tmp_path / "a.png"
    Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA").save(path)
    image = read_raster_rgb(path, RasterSettings.from_values(nodata="none"))
    assert image.reader == "pillow"
    assert image.valid.sum() == 8 and not image.valid[1, 1] and image.rgb[0, 0].tolist() == [200, 200, 200]


# --------------------------------------------------------------------------- refusals and parsing


def test_multiband_and_sixteen_bit_are_refused_until_mapped(tmp_path):
    path = write_geotiff(tmp_path / "ms.tif", constant_bands([1, 2, 3, 4]))
    with open_raster(path) as source:
        with pytest.raises(DataError, match=r"ms\.tif: 4 bands of uint16; multi-band images are read only when three"):
            plan_raster(source, RasterSettings())
        with pytest.raises(DataError, match=r"3 bands of uint16 need scaling to 8 bits"):
            plan_raster(source, RasterSettings.from_values([3, 2, 1]))
        with pytest.raises(DataError, match=r"band 5 asked for, but the file has 4 bands"):
            plan_raster(source, RasterSettings.from_values([5, 2, 1], {"range": [0, 10]}))


@pytest.mark.parametrize("value, fragment", [
    ("percent", "expected none"),
    ({"percentiles": [98, 2]}, "0 <= low < high <= 100"),
    ({"range": [3000, 0]}, "low < high"),
    ({"range": [0, "x"]}, "expected numbers"),
    ({"gamma": 2}, "unknown scaling 'gamma'"),
])
def test_bad_scaling_is_one_config_error(value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_scaling(value)


def test_band_and_nodata_parsing():
    assert parse_bands("3, 2, 1") == (3, 2, 1) and parse_bands([4]) == (4,) and parse_bands(None) is None
    for bad in ([3, 2], [0, 1, 2], "a,b,c"):
        with pytest.raises(ConfigError):
            parse_bands(bad)
    assert parse_nodata(None) == (None, True) and parse_nodata("none") == (None, False)
    assert parse_nodata(0) == (0.0, False) and math.isnan(parse_nodata("nan")[0])
    with pytest.raises(ConfigError, match="scaling gives 2"):
        RasterSettings.from_values([3, 2, 1], {"range": [[0, 1], [0, 2]]})


# --------------------------------------------------------------------------- readers


def test_rasterio_and_tifffile_agree_and_report_themselves(tmp_path):
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 4000, (4, 20, 30)).astype(np.uint16)
    bands[:, :3] = 0
    path = write_geotiff(tmp_path / "s.tif", bands, nodata=0, compress="deflate")
    settings = RasterSettings.from_values([3, 2, 1], {"percentiles": [2, 98]})
    by_rasterio = read_raster_rgb(path, settings, reader="rasterio")
    by_tifffile = read_raster_rgb(path, settings, reader="tifffile")
    assert (by_rasterio.reader, by_tifffile.reader) == ("rasterio", "tifffile")
    np.testing.assert_array_equal(by_rasterio.rgb, by_tifffile.rgb)
    np.testing.assert_array_equal(by_rasterio.valid, by_tifffile.valid)
    with open_raster(path, "tifffile") as source:
        assert source.file_nodata == 0 and source.georeferenced and source.count == 4
    with open_raster(path) as source:
        assert source.reader == "rasterio" and source.crs.to_string() == CRS and source.transform == TRANSFORM


def test_windowed_reads_are_crops_of_the_whole(tmp_path):
    bands = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    path = write_geotiff(tmp_path / "w.tif", bands, tiled=True, blockxsize=16, blockysize=16)
    for reader in ("rasterio", "tifffile"):
        with open_raster(path, reader) as source:
            np.testing.assert_array_equal(source.read([3, 1], (5, 7, 20, 30)), bands[[2, 0], 5:25, 7:37])


def test_pillow_reads_png_and_jpeg_like_read_rgb_with_exif_orientation(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    png = tmp_path / "x.png"
    Image.fromarray(pixels).save(png)
    jpeg = tmp_path / "x.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    Image.fromarray(pixels).save(jpeg, exif=exif)
    for path in (png, jpeg):
        image = read_raster_rgb(path, RasterSettings.from_values(nodata="none"))
        assert image.reader == "pillow"
        np.testing.assert_array_equal(image.rgb, read_rgb(path))
    with open_raster(jpeg) as source:
        assert (source.width, source.height) == (10, 14)


def test_corrupt_and_missing_files_are_one_line(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\0garbage")
    for reader in ("rasterio", "tifffile"):
        with pytest.raises(DataError, match=r"bad\.tif: cannot decode image"):
            open_raster(tmp_path / "bad.tif", reader)
    with pytest.raises(DataError, match=r"gone\.png: image file not found"):
        open_raster(tmp_path / "gone.png")


# --------------------------------------------------------------------------- folder datasets


def _scene_dataset(tmp_path, spec_lines: str):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    bands = constant_bands([1000, 2000, 3000, 4000], shape=(8, 10))
    bands[:, :2, :] = 0  # the scene's outside
    write_geotiff(root / "img" / "s1.tif", bands, nodata=0)
    Image.fromarray(np.ones((8, 10), np.uint8)).save(root / "ann" / "s1.png")
    spec = tmp_path / "scenes.yaml"
    spec.write_text(
        "image_dir: img\nmask_dir: ann\nimage_suffix: .tif\nvocabulary: [road, tree]\nignore_index: 255\n" + spec_lines
    )
    return spec, root


def test_folder_spec_maps_bands_and_nodata_becomes_ignore(tmp_path):
    spec_path, root = _scene_dataset(tmp_path, "bands: [3, 2, 1]\nscaling: {range: [0, 4000]}\n")
    spec = load_dataset_spec(str(spec_path))
    dataset = FolderDataset(spec, root)
    sample = dataset[0]
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (8, 10, 3)
    # 3000 / 4000 * 255 = 191.25 -> 191; 2000 -> 127.5 -> 128; 1000 -> 63.75 -> 64
    assert sample["image"][5, 5].tolist() == [191, 128, 64]
    assert (sample["mask"][:2] == 255).all() and (sample["mask"][2:] == 1).all()
    assert (sample["image"][:2] == 0).all()
    assert dataset.read_image(0).reader == "rasterio"


def test_folder_spec_nodata_override_and_switch_off(tmp_path):
    spec_path, root = _scene_dataset(tmp_path, "bands: [3, 2, 1]\nscaling: {range: [0, 4000]}\nnodata: none\n")
    assert (FolderDataset(load_dataset_spec(str(spec_path)), root)[0]["mask"] == 1).all()
    spec = FolderDatasetSpec(name="s", image_dir="img", mask_dir="ann", image_suffix=".tif", vocabulary=["a", "b"],
                             ignore_index=7, bands=[1, 1, 1], scaling={"range": [0, 4000]}, nodata=1000)
    mask = FolderDataset(spec, root)[0]["mask"]
    assert (mask[:2] == 1).all() and (mask[2:] == 7).all()  # 0 is now a value, 1000 is nodata


def test_folder_spec_without_raster_fields_keeps_the_refusal(tmp_path):
    spec_path, root = _scene_dataset(tmp_path, "")
    dataset = FolderDataset(load_dataset_spec(str(spec_path)), root)
    with pytest.raises(DataError, match=r"s1\.tif: unsupported image \(4 bands of uint16\); ovbench reads 8-bit RGB"):
        dataset[0]


def test_folder_spec_bands_without_scaling_is_refused_naming_the_spec_field(tmp_path):
    spec_path, root = _scene_dataset(tmp_path, "bands: [3, 2, 1]\n")
    with pytest.raises(DataError, match=r"need scaling to 8 bits: .*dataset spec scaling: \{percentiles"):
        FolderDataset(load_dataset_spec(str(spec_path)), root)[0]


def test_malformed_raster_fields_fail_when_the_spec_loads(tmp_path):
    spec_path, _ = _scene_dataset(tmp_path, "bands: [3, 2]\n")
    with pytest.raises(ConfigError, match=r"scenes\.yaml.*bands: expected three band numbers"):
        load_dataset_spec(str(spec_path))


def test_eight_bit_png_datasets_read_as_before(tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    pixels = np.random.default_rng(2).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "img" / "a.png")
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(root / "ann" / "a.png")
    dataset = FolderDataset(FolderDatasetSpec(name="p", image_dir="img", mask_dir="ann", vocabulary=["a"], ignore_index=255), root)
    assert dataset.spec.raster is None and dataset.read_image(0).reader == "pillow"
    np.testing.assert_array_equal(dataset[0]["image"], pixels)


def test_data_check_reads_raster_specs_through_the_raster_readers(tmp_path):
    from cli_process import ovbench

    spec_path, root = _scene_dataset(tmp_path, "bands: [3, 2, 1]\nscaling: {range: [0, 4000]}\n")
    proc = ovbench(tmp_path / "home", "data", "check", str(spec_path), "--data-root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unreadable" not in proc.stdout
    bare, root = _scene_dataset(tmp_path / "bare", "")
    proc = ovbench(tmp_path / "home", "data", "check", str(bare), "--data-root", str(root))
    assert proc.returncode == 1 and "1 unreadable" in proc.stdout  # without the fields: refused as before
