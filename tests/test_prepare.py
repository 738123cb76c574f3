"""`ovbench data prepare potsdam|floodnet`: crop names, label ids from the ISPRS colours,
idempotent and atomic outputs, the FloodNet val+test merge. Raw releases are synthesised in
their published formats (TIFF tiles, zips, FloodNet-Supervised_v1.0 folders)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

import ovbench.fileio
from ovbench.cli_data import data_app
from ovbench.data.check import check_dataset
from ovbench.data.prepare import (
    POTSDAM_COLOURS,
    POTSDAM_VAL_TILES,
    potsdam_crop_boxes,
    potsdam_crop_name,
    potsdam_labels_from_colours,
    prepare_floodnet,
    prepare_potsdam,
)
from ovbench.errors import DataError
from ovbench.registry import build_dataset

runner = CliRunner()

SIDE = 1100  # not a multiple of 512: the last crop of each row and column is pulled back to 588


def synthetic_tile(raw, tile="2_13", side=SIDE, seed=0, as_zip=False):
    """An RGB tile and its colour-coded label; returns (rgb, class ids)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    ids = rng.integers(0, 6, (side // 50 + 1, side // 50 + 1)).repeat(50, 0).repeat(50, 1)[:side, :side]
    colours = np.array(POTSDAM_COLOURS, np.uint8)[ids]
    raw.mkdir(parents=True, exist_ok=True)
    names = (f"top_potsdam_{tile}_RGB.tif", f"top_potsdam_{tile}_label.tif")
    if as_zip:
        for archive, name, array in (("2_Ortho_RGB.zip", names[0], rgb), ("5_Labels_all.zip", names[1], colours)):
            staging = raw / f"_{name}"
            Image.fromarray(array).save(staging)
            with zipfile.ZipFile(raw / archive, "a") as zf:
                zf.write(staging, f"{archive[:-4]}/{name}")
            staging.unlink()
    else:
        Image.fromarray(rgb).save(raw / names[0])
        Image.fromarray(colours).save(raw / names[1])
    return rgb, ids.astype(np.uint8)


def snapshot(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def potsdam_spec(tmp_path):
    path = tmp_path / "potsdam-test.yaml"
    path.write_text(yaml.safe_dump(dict(
        image_dir="PotsdamSplit/img_dir/val", mask_dir="PotsdamSplit/ann_dir/val",
        vocabulary=["impervious surface", "building", "low vegetation", "tree", "car"],
        class_names=["impervious surface", "building", "low vegetation", "tree", "car", "clutter"], ignore_index=5,
    )))
    return str(path)


# --------------------------------------------------------------------------- geometry


def test_crop_boxes_follow_the_mmsegmentation_converter():
    boxes = potsdam_crop_boxes(6000, 6000)
    origins = sorted({x for x, _, _, _ in boxes})
    assert origins == list(range(0, 5121, 512)) + [5488]  # steps of the crop size, last pulled back
    assert len(boxes) == 144 and all(x1 - x0 == 512 and y1 - y0 == 512 for x0, y0, x1, y1 in boxes)
    assert potsdam_crop_name("2_10", (0, 2048, 512, 2560)) in {potsdam_crop_name("2_10", b) for b in boxes}
    assert potsdam_crop_boxes(SIDE, SIDE)[:3] == [(0, 0, 512, 512), (512, 0, 1024, 512), (588, 0, 1100, 512)]
    assert sorted({x for x, *_ in potsdam_crop_boxes(SIDE, SIDE, honor_stride=True)}) == [0, 256, 512, 588]
    assert potsdam_crop_boxes(1024, 1024) == [(0, 0, 512, 512), (512, 0, 1024, 512), (0, 512, 512, 1024), (512, 512, 1024, 1024)]
    with pytest.raises(DataError, match="smaller than"):
        potsdam_crop_boxes(500, 6000)


def test_label_colours_map_to_the_evaluator_order():
    colours = np.array(POTSDAM_COLOURS + ((0, 0, 0), (0, 170, 0)), np.uint8)[None]
    ids, unmatched = potsdam_labels_from_colours(colours)
    # impervious 0, building 1, low vegetation 2, tree 3, car 4, clutter 5; black -> ignore 5;
    # (0,170,0) has building's key 4R+3G+2B = 510: mmsegmentation's matching calls it building
    assert ids.tolist() == [[0, 1, 2, 3, 4, 5, 5, 1]] and unmatched == 1
    exact, unmatched = potsdam_labels_from_colours(colours, exact_colours=True)
    assert exact.tolist() == [[0, 1, 2, 3, 4, 5, 5, 5]] and unmatched == 2


# --------------------------------------------------------------------------- Potsdam


def test_potsdam_crops_names_pixels_and_labels(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    rgb, ids = synthetic_tile(raw)
    report = prepare_potsdam(raw, out)
    image_dir, mask_dir = out / "PotsdamSplit/img_dir/val", out / "PotsdamSplit/ann_dir/val"
    expected = {f"2_13_{x}_{y}_{x + 512}_{y + 512}.png" for x in (0, 512, 588) for y in (0, 512, 588)}
    assert {p.name for p in image_dir.iterdir()} == expected == {p.name for p in mask_dir.iterdir()}
    assert report.sources == 1 and report.written == 18 and report.skipped == 0 and not report.warnings
    for name in ("2_13_588_512_1100_1024.png", "2_13_0_0_512_512.png"):
        x0, y0, x1, y1 = map(int, name[:-4].split("_")[2:])
        with Image.open(image_dir / name) as img:
            assert img.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(img), rgb[y0:y1, x0:x1])
        with Image.open(mask_dir / name) as img:
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), ids[y0:y1, x0:x1])
    # the output is a valid benchmark set
    assert check_dataset(build_dataset(potsdam_spec(tmp_path), out)).ok


def test_potsdam_second_run_changes_nothing(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    synthetic_tile(raw)
    prepare_potsdam(raw, out)
    folders = (out / "PotsdamSplit/img_dir/val", out / "PotsdamSplit/ann_dir/val")
    before = [snapshot(f) for f in folders]
    report = prepare_potsdam(raw, out)
    assert report.written == 0 and report.skipped == 18
    assert [snapshot(f) for f in folders] == before


def test_interrupted_run_leaves_no_accepted_file_and_is_completed(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    synthetic_tile(raw)
    real_replace, calls = os.replace, []

    def crash_on_fifth(src, dst):
        calls.append(dst)
        if len(calls) == 5:
            raise KeyboardInterrupt  # killed between writing a crop and renaming it
        real_replace(src, dst)

    monkeypatch.setattr(ovbench.fileio.os, "replace", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        prepare_potsdam(raw, out)
    monkeypatch.setattr(ovbench.fileio.os, "replace", real_replace)
    mask_dir = out / "PotsdamSplit/ann_dir/val"
    image_dir = out / "PotsdamSplit/img_dir/val"
    assert not any(p.name.endswith(".tmp") for p in image_dir.iterdir())  # the writer cleaned up
    assert len([p for p in image_dir.iterdir()] + [p for p in mask_dir.iterdir()]) == 4

    # a temporary file left by a hard kill, and a final name holding a cut-off file (another tool)
    stale = image_dir / ".2_13_0_0_512_512.png.k3j2.tmp"
    stale.write_bytes(b"\x89PNG\r\n\x1a\n partial")
    victim = mask_dir / "2_13_588_588_1100_1100.png"
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    # no reader accepts the temporary file as a sample
    (out / "PotsdamSplit/img_dir/val/2_13_588_588_1100_1100.png").touch()
    listed = build_dataset(potsdam_spec(tmp_path), out).stems
    assert all(not stem.startswith(".") for stem in listed)

    report = prepare_potsdam(raw, out)
    assert report.removed_temporaries == 1 and not stale.exists()
    assert report.written == 18 - 4 and report.skipped == 4
    with Image.open(victim) as img:
        img.load()
        assert img.size == (512, 512)
    assert check_dataset(build_dataset(potsdam_spec(tmp_path), out)).ok


def test_potsdam_from_release_zips_and_val_split(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    rgb, ids = synthetic_tile(raw, tile="2_13", side=1024, as_zip=True)
    synthetic_tile(raw, tile="2_10", side=1024, seed=1, as_zip=True)  # an mmsegmentation train tile
    result = runner.invoke(data_app, ["prepare", "potsdam", "--raw", str(raw), "--out", str(out), "--tiles", "val", "-q"])
    assert result.exit_code == 0, result.output
    assert "2_13" in POTSDAM_VAL_TILES
    names = sorted(p.name for p in (out / "PotsdamSplit/ann_dir/val").iterdir())
    assert names == ["2_13_0_0_512_512.png", "2_13_0_512_512_1024.png", "2_13_512_0_1024_512.png", "2_13_512_512_1024_1024.png"]
    with Image.open(out / "PotsdamSplit/ann_dir/val/2_13_512_0_1024_512.png") as img:
        np.testing.assert_array_equal(np.asarray(img), ids[0:512, 512:1024])
    # default: every tile (the GSNet set is named potsdam_all)
    report = prepare_potsdam(raw, out)
    assert report.sources == 2 and report.written == 8 and report.skipped == 8


def test_potsdam_missing_label_and_noise_are_reported(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    synthetic_tile(raw, side=1024)
    Image.fromarray(np.zeros((1024, 1024, 3), np.uint8)).save(raw / "top_potsdam_7_13_RGB.tif")
    with Image.open(raw / "top_potsdam_2_13_label.tif") as img:
        colours = np.array(img)
    colours[:3, :3] = 0  # a black boundary pixel block
    Image.fromarray(colours).save(raw / "top_potsdam_2_13_label.tif")
    report = prepare_potsdam(raw, out)
    assert report.sources == 1
    assert any("7_13" in w and "no label" in w for w in report.warnings)
    assert any("9 label pixels match no class colour" in w for w in report.warnings)
    with Image.open(out / "PotsdamSplit/ann_dir/val/2_13_0_0_512_512.png") as img:
        assert (np.asarray(img)[:3, :3] == 5).all()
    with pytest.raises(DataError, match="no Potsdam tiles under"):
        prepare_potsdam(tmp_path / "out", tmp_path / "elsewhere")


# --------------------------------------------------------------------------- FloodNet


def write_floodnet(raw, split, ids, size=(40, 30), label_suffix="_lab.png"):
    image_dir = raw / "FloodNet-Supervised_v1.0" / split / f"{split}-org-img"
    label_dir = raw / "FloodNet-Supervised_v1.0" / split / f"{split}-label-img"
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for i in ids:
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(image_dir / f"{i}.jpg", quality=90)
        Image.fromarray(rng.integers(0, 10, (size[1], size[0]), dtype=np.uint8)).save(label_dir / f"{i}{label_suffix}")
    return image_dir, label_dir


def test_floodnet_merges_val_and_test(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    val_images, val_labels = write_floodnet(raw, "val", [6651, 7001])
    write_floodnet(raw, "test", [7577])
    write_floodnet(raw, "train", [10])  # not part of the evaluation set
    result = runner.invoke(data_app, ["prepare", "floodnet", "--raw", str(raw), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    img, lbl = out / "FloodNet/val+test/img", out / "FloodNet/val+test/lbl"
    assert sorted(p.name for p in img.iterdir()) == ["6651.jpg", "7001.jpg", "7577.jpg"]
    assert sorted(p.name for p in lbl.iterdir()) == ["6651.png", "7001.png", "7577.png"]
    assert (img / "6651.jpg").read_bytes() == (val_images / "6651.jpg").read_bytes()  # JPEG untouched
    assert (lbl / "7001.png").read_bytes() == (val_labels / "7001_lab.png").read_bytes()

    before = (snapshot(img), snapshot(lbl))
    report = prepare_floodnet(raw / "FloodNet-Supervised_v1.0", out)  # the release folder itself works too
    assert report.written == 0 and report.skipped == 6
    assert (snapshot(img), snapshot(lbl)) == before

    spec = tmp_path / "floodnet-test.yaml"
    spec.write_text(yaml.safe_dump(dict(
        image_dir="FloodNet/val+test/img", mask_dir="FloodNet/val+test/lbl", image_suffix=".jpg",
        vocabulary=["Background", "building-flooded", "building-non-flooded", "road-flooded", "road-non-flooded",
                    "water", "tree", "vehicle", "pool", "grass"], ignore_index=0,
    )))
    assert check_dataset(build_dataset(str(spec), out)).ok


def test_floodnet_orphans_collisions_and_wrong_layouts(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    val_images, val_labels = write_floodnet(raw, "val", [1, 2])
    write_floodnet(raw, "test", [3])
    (val_labels / "2_lab.png").unlink()
    report = prepare_floodnet(raw, out)
    assert report.sources == 2 and any("2.jpg" in w and "no label" in w for w in report.warnings)

    write_floodnet(raw, "test", [1])
    with pytest.raises(DataError, match="image id 1 is in both val and test"):
        prepare_floodnet(raw, tmp_path / "out2")

    colour = tmp_path / "colour"
    _, labels = write_floodnet(colour, "val", [5])
    write_floodnet(colour, "test", [6])
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(labels / "5_lab.png")
    with pytest.raises(DataError, match="label is a RGB image"):
        prepare_floodnet(colour, tmp_path / "out3")

    with pytest.raises(DataError, match="val/val-org-img and val/val-label-img"):
        prepare_floodnet(tmp_path / "out", tmp_path / "out4")


def test_prepare_rejects_unknown_dataset_and_misplaced_options(tmp_path):
    result = runner.invoke(data_app, ["prepare", "flair", "--raw", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "no converter for 'flair'" in str(result.exception)
    result = runner.invoke(data_app, ["prepare", "floodnet", "--raw", str(tmp_path), "--out", str(tmp_path), "--tiles", "val"])
    assert result.exit_code != 0 and "potsdam only" in str(result.exception)
