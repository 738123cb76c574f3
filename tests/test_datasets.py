"""The real datasets' readers, on tiny copies written in their exact on-disk formats.

Every layout below is written from docs/datasets.md (docs/datasets.md#landdiscover50k,
docs/datasets.md#subsets-and-per-source-sets, docs/datasets.md#evaluation-sets and
docs/datasets.md#coco-stuff), not from the spec YAML files, so a spec that drifts from the
published layout fails here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovbench.data.folder import FolderDataset
from ovbench.errors import ConfigError, DataError, RegistryError
from ovbench.eval.metrics import ConfusionMatrix
from ovbench.registry import build_dataset, dataset_names, load_benchmark

H, W = 6, 8

#: name -> (image folder, mask folder, image suffix, queries, evaluator classes, ignore, example stems)
EVAL_SETS = {
    "potsdam": ("PotsdamSplit/img_dir/val", "PotsdamSplit/ann_dir/val", ".png", 5, 6, 5,
                ["2_10_0_0_512_512", "2_10_0_2048_512_2560", "7_12_1024_512_1536_1024"]),
    "floodnet": ("FloodNet/val+test/img", "FloodNet/val+test/lbl", ".jpg", 10, 10, 0, ["10165", "6651", "7577"]),
    "flair": ("FLAIR/test/image", "FLAIR/test/mask", ".png", 12, 13, 12, ["IMG_061946", "IMG_061947", "IMG_078123"]),
    "fast": ("SAMRS/FAST/val/images", "SAMRS/FAST/val/semlabels/gray", ".png", 37, 37, 255, ["10009", "1012", "2"]),
    "coco-stuff-train": ("coco/train2017", "coco/stuffthingmaps_detectron2/train2017", ".jpg", 171, 171, 255,
                         ["000000000009", "000000000025", "000000000030"]),
    "coco-stuff-val": ("coco/val2017", "coco/stuffthingmaps_detectron2/val2017", ".jpg", 171, 171, 255,
                       ["000000000139", "000000000285", "000000000632"]),
}
#: LD50K-derived sets: name -> flat image folder (masks always LandDiscover50K/GT_ID)
LD_DERIVED = {
    "landdiscover10k": "LandDiscover10K",
    "landdiscover20k": "LandDiscover20K",
    "landdiscover30k": "LandDiscover30K",
    "landdiscover40k": "LandDiscover40K",
    "loveda": "loveda",
    "deepglobe": "deepglobe",
    "sior": "sior",
    "sota": "sota",
    "oem": "oem",
}
LD_STEMS = [f"{source}_{i:04d}" for source in ("deepglobe", "loveda", "oem", "sior", "sota") for i in range(6)]


def write_image(path: Path, rng: np.random.Generator, size=(H, W)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    if path.suffix == ".jpg":  # lossy: what the file holds is what a reader must return
        with Image.open(path) as saved:
            assert saved.format == "JPEG"
            return np.asarray(saved.convert("RGB"))
    return image


def write_mask(path: Path, mask: np.ndarray, mode: str = "L") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(mask.astype(np.uint8))
    if mode == "P":  # a palette PNG (mmseg-style): the stored values are the palette indices
        img = img.convert("P")
        img.putpalette(list(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8)))
    img.save(path)
    return mask


def label_values(classes: int, ignore: int, rng: np.random.Generator, size=(H, W)) -> np.ndarray:
    """Every pixel a valid value (class id or ignore); each map holds the ignore value and
    at least two classes."""
    values = np.array(sorted(set(range(classes)) | {ignore}))
    mask = rng.choice(values, size)
    mask[0, 0], mask[0, 1], mask[0, 2] = ignore, values[values != ignore][0], values[values != ignore][-1]
    return mask


def write_eval_set(root: Path, name: str, rng=None, image_dir=None, mask_dir=None, mask_name="{}.png"):
    image_folder, mask_folder, suffix, _, classes, ignore, stems = EVAL_SETS[name]
    rng = rng or np.random.default_rng(len(name))
    written = {}
    for stem in stems:
        image = write_image(root / (image_dir or image_folder) / f"{stem}{suffix}", rng)
        mask = write_mask(root / (mask_dir or mask_folder) / mask_name.format(stem), label_values(classes, ignore, rng))
        written[stem] = (image, mask)
    return written


def write_landdiscover(root: Path, stems=LD_STEMS, size=(H, W), rng=None):
    rng = rng or np.random.default_rng(50)
    written = {}
    for stem in stems:
        image = write_image(root / "LandDiscover50K" / "TR_Image" / f"{stem}.png", rng, size)
        mask = write_mask(root / "LandDiscover50K" / "GT_ID" / f"{stem}.png", label_values(40, 0, rng, size))
        written[stem] = (image, mask)
    return written


def perfect_prediction(mask: np.ndarray, queries: int, ignore: int, rng: np.random.Generator) -> np.ndarray:
    """The true class wherever it is a query; a random (often wrong) query on ignored pixels and
    on evaluator-only classes (Potsdam clutter, FLAIR other are never offered)."""
    pred = mask.copy()
    unscored = (mask == ignore) | (mask >= queries)
    pred[unscored] = rng.integers(0, queries, int(unscored.sum()))
    return pred


def score(dataset, predictions) -> dict:
    matrix = ConfusionMatrix(len(dataset.class_names), dataset.ignore_index)
    for pred, index in predictions:
        matrix.update(pred, dataset[index]["mask"])
    return matrix.compute(dataset.class_names)


# --------------------------------------------------------------------------- evaluation sets


@pytest.mark.parametrize("name", sorted(EVAL_SETS))
def test_evaluation_sets_read_back_exactly(tmp_path, name):
    written = write_eval_set(tmp_path, name)
    _, _, suffix, queries, classes, ignore, stems = EVAL_SETS[name]
    ds = build_dataset(name, tmp_path)
    assert isinstance(ds, FolderDataset) and ds.name == name
    assert ds.stems == sorted(stems) and len(ds) == 3
    assert len(ds.vocabulary) == queries and len(ds.class_names) == classes and ds.ignore_index == ignore
    assert ds.unpaired_images == [] and ds.unpaired_masks == []
    for i, stem in enumerate(ds.stems):
        sample = ds[i]
        image, mask = written[stem]
        assert sample["name"] == stem and ds.image_path(i).name == f"{stem}{suffix}"
        assert sample["image"].dtype == np.uint8 and sample["image"].shape == (H, W, 3)
        np.testing.assert_array_equal(sample["image"], image)
        assert sample["mask"].dtype == np.int64 and sample["mask"].shape == (H, W)
        np.testing.assert_array_equal(sample["mask"], mask)


@pytest.mark.parametrize("name", sorted(EVAL_SETS))
def test_perfect_prediction_scores_100_and_ignored_pixels_drop_out(tmp_path, name):
    write_eval_set(tmp_path, name)
    ds = build_dataset(name, tmp_path)
    rng = np.random.default_rng(1)
    queries = len(ds.vocabulary)
    preds = [(perfect_prediction(ds[i]["mask"], queries, ds.ignore_index, rng), i) for i in range(len(ds))]
    metrics = score(ds, preds)
    assert metrics.mIoU == pytest.approx(100.0) and metrics.pAcc == pytest.approx(100.0)
    masks = [ds[i]["mask"] for i in range(len(ds))]
    assert metrics.valid_pixels == sum(int((m != ds.ignore_index).sum()) for m in masks)
    present = {int(v) for m in masks for v in np.unique(m) if v != ds.ignore_index}
    scored = {ds.class_names.index(k) for k, v in metrics.per_class_iou.items() if v is not None}
    assert scored == present  # the mean runs over the classes with ground truth, nothing else
    if ds.ignore_index < len(ds.class_names):
        assert metrics.per_class_iou[ds.class_names[ds.ignore_index]] is None


def test_documented_ignore_classes(tmp_path):
    for name in EVAL_SETS:
        write_eval_set(tmp_path, name)
    potsdam, flair = build_dataset("potsdam", tmp_path), build_dataset("flair", tmp_path)
    floodnet, fast = build_dataset("floodnet", tmp_path), build_dataset("fast", tmp_path)
    # Potsdam clutter and FLAIR other: evaluator classes, never queried, ignored
    assert potsdam.class_names[potsdam.ignore_index] == "clutter" and "clutter" not in potsdam.vocabulary.names
    assert flair.class_names[flair.ignore_index] == "other" and "other" not in flair.vocabulary.names
    assert flair.class_names[1] == "pervious surface" and flair.vocabulary.names[1] == "pervious-surface"
    # FloodNet Background: queried, ignored; FAST: 255 lies outside the 37 classes
    assert floodnet.vocabulary.names[floodnet.ignore_index] == "Background"
    assert fast.ignore_index == 255 and len(fast.class_names) == 37


def test_predicting_an_ignored_class_on_a_valid_pixel_still_costs(tmp_path):
    write_eval_set(tmp_path, "floodnet")
    ds = build_dataset("floodnet", tmp_path)
    mask = ds[0]["mask"]
    pred = perfect_prediction(mask, 10, 0, np.random.default_rng(0))
    first_valid = tuple(np.argwhere(mask != 0)[0])
    pred[first_valid] = 0  # "Background" on a labelled pixel
    metrics = score(ds, [(pred, 0)])
    assert metrics.mIoU < 100.0
    assert metrics.per_class_iou["Background"] is None  # no Background ground truth is ever counted


def test_fast_readme_layout_and_precedence(tmp_path):
    readme = write_eval_set(tmp_path, "fast", image_dir="FAST/val/images", mask_dir="FAST/val/semlabels")
    ds = build_dataset("fast", tmp_path)
    assert ds.image_dir == tmp_path / "FAST/val/images" and ds.mask_dir == tmp_path / "FAST/val/semlabels"
    np.testing.assert_array_equal(ds[0]["mask"], readme[ds.stems[0]][1])
    # an incomplete code layout (images but no semlabels/gray) does not shadow the complete one
    (tmp_path / "SAMRS/FAST/val/images").mkdir(parents=True)
    assert build_dataset("fast", tmp_path).image_dir == tmp_path / "FAST/val/images"
    # when both are complete, the official code's layout wins
    write_eval_set(tmp_path, "fast")
    assert build_dataset("fast", tmp_path).mask_dir == tmp_path / "SAMRS/FAST/val/semlabels/gray"


def test_fast_without_data_names_every_expected_path(tmp_path):
    (tmp_path / "FAST/val/images").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        build_dataset("fast", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for rel in ("SAMRS/FAST/val/images", "SAMRS/FAST/val/semlabels/gray", "FAST/val/images", "FAST/val/semlabels"):
        assert str(tmp_path / rel) in message
    assert f"missing {tmp_path / 'FAST/val/semlabels'})" in message


def test_coco_stuff_catseg_layout(tmp_path):
    written = write_eval_set(tmp_path, "coco-stuff-val", image_dir="coco-stuff/images/val2017",
                             mask_dir="coco-stuff/annotations_detectron2/val2017")
    ds = build_dataset("coco-stuff-val", tmp_path)
    assert ds.image_dir == tmp_path / "coco-stuff/images/val2017"
    assert ds.class_names[0] == "person" and ds.class_names[170] == "wood" and ds.vocabulary.names[80] == "banner"
    np.testing.assert_array_equal(ds[1]["mask"], written[ds.stems[1]][1])
    assert build_dataset("coco_2017_test_stuff_all_sem_seg", tmp_path).stems == ds.stems
    with pytest.raises(DataError, match="none of its 2 layouts found"):
        build_dataset("coco-stuff-train", tmp_path)


def test_floodnet_original_label_names(tmp_path):
    """The original FloodNet release names labels <id>_lab.png; they pair with <id>.jpg."""
    written = write_eval_set(tmp_path, "floodnet", mask_name="{}_lab.png")
    ds = build_dataset("floodnet", tmp_path)
    assert ds.stems == sorted(written) and ds.mask_path(0).name == f"{ds.stems[0]}_lab.png"
    np.testing.assert_array_equal(ds[0]["mask"], written[ds.stems[0]][1])


def test_exif_orientation_is_applied_like_detectron2(tmp_path):
    """detectron2's read_image honours the EXIF orientation tag (drone JPEGs may carry one)."""
    stored = np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = tmp_path / "FloodNet/val+test/img/7577.jpg"
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(stored).save(path, exif=exif)
    write_mask(tmp_path / "FloodNet/val+test/lbl/7577.png", np.ones((W, H), np.uint8))
    sample = build_dataset("floodnet", tmp_path)[0]
    assert sample["image"].shape == (W, H, 3) and sample["mask"].shape == (W, H)
    with Image.open(path) as raw:
        np.testing.assert_array_equal(sample["image"], np.rot90(np.asarray(raw.convert("RGB")), k=-1))


def test_palette_masks_read_as_indices(tmp_path):
    rng = np.random.default_rng(3)
    for stem in ("2_10_0_0_512_512", "2_11_0_0_512_512"):
        write_image(tmp_path / "PotsdamSplit/img_dir/val" / f"{stem}.png", rng)
        write_mask(tmp_path / "PotsdamSplit/ann_dir/val" / f"{stem}.png", label_values(6, 5, rng), mode="P")
    ds = build_dataset("potsdam", tmp_path)
    assert Image.open(ds.mask_path(0)).mode == "P"
    assert set(np.unique(ds[0]["mask"])) <= set(range(6))


def test_official_registration_names_resolve(tmp_path):
    for name in ("potsdam", "floodnet", "flair", "fast"):
        write_eval_set(tmp_path, name)
    write_landdiscover(tmp_path)
    for registered, name in [("potsdam_all", "potsdam"), ("FloodNet", "floodnet"), ("FLAIR_test", "flair"),
                             ("FAST_val", "fast"), ("LandDiscover_50K", "landdiscover50k")]:
        ds = build_dataset(registered, tmp_path)
        assert ds.name == name and ds.stems == build_dataset(name, tmp_path).stems


def test_ovrsiss_benchmark_resolves(tmp_path):
    for name in ("potsdam", "floodnet", "flair", "fast"):
        write_eval_set(tmp_path, name)
    write_landdiscover(tmp_path)
    bench = load_benchmark("ovrsiss")
    assert build_dataset(bench.train_set, tmp_path).name == "landdiscover50k"
    for name in bench.eval_sets:
        assert len(build_dataset(name, tmp_path)) == 3
    assert set(bench.eval_sets) | {bench.train_set} <= set(dataset_names())


def test_out_of_range_mask_value_is_one_clear_error(tmp_path):
    write_eval_set(tmp_path, "potsdam")
    ds = build_dataset("potsdam", tmp_path)
    bad = ds[0]["mask"].astype(np.uint8)
    bad[1, 1] = 7
    write_mask(ds.mask_path(0), bad)
    with pytest.raises(DataError, match=r"2_10_0_0_512_512\.png: mask holds value\(s\) 7 that are neither class ids 0\.\.5 nor the ignore value 5"):
        ds[0]
    write_eval_set(tmp_path / "f", "fast")
    fast = build_dataset("fast", tmp_path / "f")
    mask = fast[0]["mask"].astype(np.uint8)
    mask[2, 2] = 37  # one past the last FAST class; 255 stays legal
    write_mask(fast.mask_path(0), mask)
    with pytest.raises(DataError, match="value\\(s\\) 37 "):
        fast[0]


# --------------------------------------------------------------------------- LandDiscover50K and its parts


def test_landdiscover50k(tmp_path):
    written = write_landdiscover(tmp_path)
    ds = build_dataset("landdiscover50k", tmp_path)
    assert ds.stems == sorted(LD_STEMS) and ds.ignore_index == 0
    assert len(ds.vocabulary) == 40 and ds.class_names == ds.vocabulary.names
    assert ds.vocabulary.names[0] == "background" and ds.vocabulary.names[32] == "expresswalltoll station"
    sample = ds[3]
    np.testing.assert_array_equal(sample["image"], written[ds.stems[3]][0])
    np.testing.assert_array_equal(sample["mask"], written[ds.stems[3]][1])
    assert sample["mask"].dtype == np.int64 and sample["mask"].max() <= 39
    rng = np.random.default_rng(0)
    metrics = score(ds, [(perfect_prediction(ds[i]["mask"], 40, 0, rng), i) for i in range(5)])
    assert metrics.mIoU == pytest.approx(100.0) and metrics.per_class_iou["background"] is None


@pytest.mark.parametrize("name", sorted(LD_DERIVED))
def test_subsets_and_per_source_sets_take_masks_from_ld50k(tmp_path, name):
    written = write_landdiscover(tmp_path)
    folder = tmp_path / LD_DERIVED[name]
    folder.mkdir()
    chosen = [s for s in LD_STEMS if s.startswith(name)] or LD_STEMS[::3]
    for stem in chosen:
        os.link(tmp_path / "LandDiscover50K/TR_Image" / f"{stem}.png", folder / f"{stem}.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "no_mask_for_me.png")
    ds = build_dataset(name, tmp_path)
    assert ds.stems == sorted(chosen)
    assert ds.image_dir == folder and ds.mask_dir == tmp_path / "LandDiscover50K/GT_ID"
    assert ds.unpaired_images == ["no_mask_for_me"]
    assert ds.unpaired_masks == []  # the other LD50K masks are expected, not a problem
    assert len(ds.vocabulary) == 40 and ds.ignore_index == 0
    np.testing.assert_array_equal(ds[0]["mask"], written[ds.stems[0]][1])
    np.testing.assert_array_equal(ds[0]["image"], written[ds.stems[0]][0])


def test_landdiscover_aliases_parameter(tmp_path):
    write_landdiscover(tmp_path)
    ds = build_dataset("landdiscover50k:aliases=replace", tmp_path)
    assert ds.vocabulary.names[32] == "expressway toll station" and ds.name == "landdiscover50k:aliases=replace"
    syn = build_dataset("landdiscover50k:aliases=synonyms", tmp_path)
    assert syn.vocabulary[32].all_names == ("expresswalltoll station", "expressway toll station")


def test_wrong_layouts_name_the_expected_path(tmp_path):
    write_landdiscover(tmp_path)
    (tmp_path / "LandDiscover50K/GT_ID").rename(tmp_path / "LandDiscover50K/gt_id")
    with pytest.raises(DataError) as info:
        build_dataset("landdiscover50k", tmp_path)
    assert str(info.value) == f"dataset landdiscover50k: mask folder not found: {tmp_path / 'LandDiscover50K/GT_ID'}"
    # Potsdam images put where mmsegmentation's converter does not
    write_eval_set(tmp_path, "potsdam", image_dir="Potsdam/img_dir/val")
    with pytest.raises(DataError, match=f"image folder not found: {tmp_path / 'PotsdamSplit/img_dir/val'}$"):
        build_dataset("potsdam", tmp_path)
    # FloodNet images saved as PNG: the folders exist but nothing pairs
    write_eval_set(tmp_path, "floodnet")
    for jpg in (tmp_path / "FloodNet/val+test/img").glob("*.jpg"):
        jpg.rename(jpg.with_suffix(".png"))
    with pytest.raises(DataError, match=r"no image/mask pairs \(0 '\*\.jpg' in .*FloodNet/val\+test/img"):
        build_dataset("floodnet", tmp_path)
    with pytest.raises(DataError, match="data root not found"):
        build_dataset("flair", tmp_path / "nowhere")


def test_needs_a_data_root(monkeypatch, tmp_path):
    with pytest.raises(DataError, match="dataset potsdam needs its data: pass --data-root DIR or set OVBENCH_DATA"):
        build_dataset("potsdam")
    write_eval_set(tmp_path, "potsdam")
    monkeypatch.setenv("OVBENCH_DATA", str(tmp_path))
    assert len(build_dataset("potsdam")) == 3


# --------------------------------------------------------------------------- subsets and file lists


def test_seeded_subsets_are_reproducible_and_differ_per_seed(tmp_path):
    write_landdiscover(tmp_path)
    a = build_dataset("landdiscover50k:size=10,seed=1", tmp_path)
    b = build_dataset("landdiscover50k:size=10,seed=1", tmp_path)
    c = build_dataset("landdiscover50k:size=10,seed=2", tmp_path)
    assert len(a) == 10 and a.file_list() == b.file_list() and a.file_list() != c.file_list()
    assert set(a.stems) <= set(LD_STEMS) and a.stems == sorted(a.stems)
    assert a.name == "landdiscover50k:size=10,seed=1"
    assert build_dataset("landdiscover50k:size=10", tmp_path).name == "landdiscover50k:size=10,seed=0"
    # nested: for one seed a smaller subset is part of a larger one
    assert set(build_dataset("landdiscover50k:size=4,seed=1", tmp_path).stems) <= set(a.stems)
    # samples decode from the subset's own stems
    assert a[0]["name"] == a.stems[0]


def test_subset_draw_is_pinned(tmp_path):
    """The draw hashes (seed, stem): it must not change with numpy or code refactors, or old
    file lists and results stop matching their names."""
    write_landdiscover(tmp_path)
    assert build_dataset("landdiscover50k:size=4,seed=0", tmp_path).stems == [
        "deepglobe_0005", "sior_0003", "sota_0001", "sota_0002"]


def test_file_list_round_trip(tmp_path):
    write_landdiscover(tmp_path)
    subset = build_dataset("landdiscover50k:size=7,seed=3", tmp_path)
    path = subset.save_file_list(tmp_path / "lists" / "ld7.txt")
    assert path.read_text().splitlines() == subset.file_list()
    again = build_dataset(f"landdiscover50k:list={path}", tmp_path)
    assert again.stems == subset.stems and again.name == f"landdiscover50k:list={path}"
    # a list may name files and carry comments; a subset of a list is a subset of it
    hand = tmp_path / "hand.txt"
    hand.write_text("# my split\nsota_0001.png\n\nsior_0002\n  oem_0003  \n")
    assert build_dataset(f"landdiscover50k:list={hand}", tmp_path).stems == ["oem_0003", "sior_0002", "sota_0001"]
    assert set(build_dataset(f"landdiscover50k:list={hand},size=2,seed=5", tmp_path).stems) < {
        "oem_0003", "sior_0002", "sota_0001"}


def test_file_list_errors(tmp_path):
    write_landdiscover(tmp_path)
    missing = tmp_path / "missing.txt"
    missing.write_text("sota_0001\nnot_there\n")
    with pytest.raises(DataError, match="1 of the 2 stems in file list .*missing.txt have no image/mask pair .*first: not_there"):
        build_dataset(f"landdiscover50k:list={missing}", tmp_path)
    twice = tmp_path / "twice.txt"
    twice.write_text("sota_0001\nsota_0001\n")
    with pytest.raises(DataError, match=r"twice.txt:2: stem 'sota_0001' repeats line 1"):
        build_dataset(f"landdiscover50k:list={twice}", tmp_path)
    with pytest.raises(DataError, match="file list not found"):
        build_dataset(f"landdiscover50k:list={tmp_path / 'nope.txt'}", tmp_path)


@pytest.mark.parametrize(
    "name, error, message",
    [
        ("landdiscover50k:size=31", DataError, "random subset of 31 asks for more than its 30 image/mask pairs"),
        ("landdiscover50k:size=0", ConfigError, "size must be an integer >= 1"),
        ("landdiscover50k:size=ten", ConfigError, "size must be an integer >= 1, got 'ten'"),
        ("landdiscover50k:seed=3", ConfigError, "seed picks a random subset and needs size=N"),
        ("landdiscover50k:sz=3", ConfigError, "unknown parameter 'sz' \\(expected list, size, seed, aliases\\)"),
        ("landdiscover50k:size=3,size=4", ConfigError, "parameter 'size' given twice"),
        ("landdiscover50k:aliases=fix", ConfigError, "aliases must be one of off, synonyms, replace"),
        ("landdiscovr50k:size=3", RegistryError, "unknown dataset 'landdiscovr50k' \\(did you mean 'landdiscover50k'\\?\\)"),
        ("toyland-train:size=3", ConfigError, "embedded toyland split"),
    ],
)
def test_bad_parameters(tmp_path, name, error, message):
    write_landdiscover(tmp_path)
    with pytest.raises(error, match=message) as info:
        build_dataset(name, tmp_path)
    assert "\n" not in str(info.value)


def test_spec_file_by_path_can_name_a_vocabulary(tmp_path):
    write_eval_set(tmp_path, "potsdam")
    spec = tmp_path / "my_potsdam.yaml"
    spec.write_text("image_dir: PotsdamSplit/img_dir/val\nmask_dir: PotsdamSplit/ann_dir/val\n"
                    "vocabulary: potsdam\nignore_index: 5\n")
    ds = build_dataset(f"{spec}:size=2,seed=0", tmp_path)
    assert len(ds) == 2 and ds.class_names[-1] == "clutter" and len(ds.vocabulary) == 5
    assert ds.name == "my_potsdam:size=2,seed=0"


# --------------------------------------------------------------------------- streaming


def test_listing_50k_files_is_fast_and_decodes_nothing(tmp_path):
    """50K empty files per folder: construction lists names only (an empty file cannot decode)."""
    count = 50_000
    for sub in ("LandDiscover50K/TR_Image", "LandDiscover50K/GT_ID"):
        folder = tmp_path / sub
        folder.mkdir(parents=True)
        for i in range(count):
            os.close(os.open(folder / f"{i:06d}.png", os.O_CREAT | os.O_WRONLY, 0o644))
    start = time.perf_counter()
    ds = build_dataset("landdiscover50k", tmp_path)
    listed = time.perf_counter() - start
    start = time.perf_counter()
    subset = build_dataset("landdiscover50k:size=10000,seed=0", tmp_path)
    with_subset = time.perf_counter() - start
    print(f"\nlisting 2 x {count} files: {listed:.3f} s; with a 10K random subset: {with_subset:.3f} s")
    assert len(ds) == count and len(subset) == 10_000
    # "well under a second per 10K files": allow 0.2 s per 10K on a loaded machine
    assert listed < 0.2 * count / 10_000 and with_subset < 0.2 * count / 10_000
    with pytest.raises(DataError, match="cannot decode image"):
        ds[0]


# --------------------------------------------------------------------------- data check on every set


def _expected_histogram(masks: list[np.ndarray], num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=np.int64)
    for mask in masks:
        values, hits = np.unique(mask, return_counts=True)
        for value, hit in zip(values, hits):
            if value < num_classes:
                counts[value] += hit
    return counts


@pytest.mark.parametrize("name", sorted(EVAL_SETS) + ["landdiscover50k"] + sorted(LD_DERIVED))
def test_data_check_passes_on_every_clean_dataset_with_exact_histogram(tmp_path, name):
    from ovbench.data.check import check_dataset

    if name in EVAL_SETS:
        written = write_eval_set(tmp_path, name)
    else:
        written = write_landdiscover(tmp_path)
        if name in LD_DERIVED:
            folder = tmp_path / LD_DERIVED[name]
            folder.mkdir()
            for stem in LD_STEMS[::2]:
                os.link(tmp_path / "LandDiscover50K/TR_Image" / f"{stem}.png", folder / f"{stem}.png")
            written = {stem: written[stem] for stem in LD_STEMS[::2]}
    dataset = build_dataset(name, tmp_path)
    report = check_dataset(dataset)
    assert report.ok, report.counts
    assert report.pairs == report.decoded_pairs == len(written)
    expected = _expected_histogram([mask for _, mask in written.values()], len(dataset.class_names))
    np.testing.assert_array_equal(report.class_pixels, expected)
