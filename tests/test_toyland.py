"""toyland: determinism, sample format, and the cross-dataset label semantics of its splits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ovbench.data import toyland
from ovbench.data.base import SegmentationDataset
from ovbench.data.toyland import (
    OBJECT_ELEMENTS,
    TOYLAND_EVAL_SPLITS,
    TOYLAND_SPLITS,
    TOYLAND_TRAIN_SPLIT,
    SceneElement,
    SceneStatistics,
    ToylandDataset,
    ToylandSplit,
    render_toyland_scene,
)
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import ConfigError, RegistryError

E = SceneElement
ALL_SPLITS = list(TOYLAND_SPLITS)


def _element_label(dataset: ToylandDataset, position: int, element: SceneElement) -> int | None:
    """The mask value `dataset` gives `element` in tile `position`, or None if absent there."""
    sample = dataset[position]
    _, elements = dataset.render(position)
    values = np.unique(sample["mask"][elements == element])
    assert values.size <= 1, f"{element.name} got several labels {values} in {sample['name']}"
    return int(values[0]) if values.size else None


def _find_label(dataset: ToylandDataset, element: SceneElement, limit: int = 48) -> int:
    """The label of `element` in the first tile of `dataset` that shows it (and is fully annotated)."""
    for position in range(min(limit, len(dataset))):
        if dataset.is_objects_only(position):
            continue
        label = _element_label(dataset, position, element)
        if label is not None:
            return label
    raise AssertionError(f"{element.name} never appears in the first {limit} tiles of {dataset.name}")


# -- split registry ------------------------------------------------------------------------------


def test_split_names_and_order():
    assert TOYLAND_TRAIN_SPLIT == "toyland-train"
    assert TOYLAND_EVAL_SPLITS == ("toyland-urban", "toyland-flood", "toyland-objects")
    assert ALL_SPLITS[0] == TOYLAND_TRAIN_SPLIT
    assert set(ALL_SPLITS) == {TOYLAND_TRAIN_SPLIT, *TOYLAND_EVAL_SPLITS}
    # Each split draws from its own stream, otherwise two splits would repeat the same tiles.
    assert len({s.stream_id for s in TOYLAND_SPLITS.values()}) == len(TOYLAND_SPLITS)


def test_default_lengths():
    assert len(ToylandDataset(TOYLAND_TRAIN_SPLIT)) == 256
    for split in TOYLAND_EVAL_SPLITS:
        assert len(ToylandDataset(split)) == 48
    assert len(ToylandDataset("toyland-flood", num_images=5)) == 5


# -- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_same_seed_same_bytes_in_any_access_order(split):
    forward = ToylandDataset(split, seed=7, num_images=6)
    first = [forward[i] for i in range(6)]
    backward = ToylandDataset(split, seed=7, num_images=6)
    # Touch a late tile first and walk backwards: no tile may depend on what was generated before.
    second = {i: backward[i] for i in (5, 3, 0, 4, 2, 1)}
    for i, sample in enumerate(first):
        assert sample["image"].tobytes() == second[i]["image"].tobytes()
        assert sample["mask"].tobytes() == second[i]["mask"].tobytes()
        assert sample["name"] == second[i]["name"]
    # Repeated access on one instance is stable as well.
    assert forward[2]["image"].tobytes() == first[2]["image"].tobytes()


def test_tiles_ignore_global_random_state():
    np.random.seed(1)
    a = ToylandDataset("toyland-urban", seed=3)[4]
    np.random.seed(2)
    b = ToylandDataset("toyland-urban", seed=3)[4]
    assert a["image"].tobytes() == b["image"].tobytes()


def test_a_dataset_of_different_length_keeps_the_same_tiles():
    short = ToylandDataset("toyland-flood", seed=2, num_images=3)
    long = ToylandDataset("toyland-flood", seed=2, num_images=30)
    assert short[2]["image"].tobytes() == long[2]["image"].tobytes()


def test_different_seeds_indices_and_splits_give_different_tiles():
    base = ToylandDataset("toyland-urban", seed=0)[0]["image"]
    other_seed = ToylandDataset("toyland-urban", seed=1)[0]["image"]
    other_index = ToylandDataset("toyland-urban", seed=0)[1]["image"]
    other_split = ToylandDataset("toyland-flood", seed=0)[0]["image"]
    for other in (other_seed, other_index, other_split):
        # Not just a few pixels: a different scene differs almost everywhere.
        assert np.mean(np.any(base != other, axis=-1)) > 0.5


# -- sample format -------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_sample_shapes_dtypes_and_name(split):
    dataset = ToylandDataset(split, num_images=3)
    assert isinstance(dataset, SegmentationDataset)
    assert dataset.name == split
    sample = dataset[2]
    assert set(sample) == {"image", "mask", "name"}
    assert sample["image"].shape == (128, 128, 3) and sample["image"].dtype == np.uint8
    assert sample["mask"].shape == (128, 128) and sample["mask"].dtype == np.int64
    assert sample["name"] == f"{split}/00002"
    # A tile is a picture, not a flat fill: it uses a good part of the intensity range.
    assert sample["image"].std() > 15


def test_size_argument_scales_the_tile():
    sample = ToylandDataset("toyland-train", num_images=1, size=64)[0]
    assert sample["image"].shape == (64, 64, 3)
    assert sample["mask"].shape == (64, 64)


def test_negative_index_and_iteration():
    dataset = ToylandDataset("toyland-objects", num_images=3)
    assert dataset[-1]["name"] == "toyland-objects/00002"
    assert [s["name"] for s in dataset] == [f"toyland-objects/{i:05d}" for i in range(3)]


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_every_mask_value_is_a_class_or_ignore(split):
    dataset = ToylandDataset(split, num_images=12)
    valid = set(range(len(dataset.class_names))) | {dataset.ignore_index}
    for sample in dataset:
        assert set(np.unique(sample["mask"]).tolist()) <= valid, sample["name"]


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_mask_is_the_split_labelling_of_the_rendered_scene(split):
    dataset = ToylandDataset(split, num_images=4)
    lookup = dataset.split.label_lookup()
    for position in range(4):
        _, elements = dataset.render(position)
        expected = lookup[elements]
        if dataset.is_objects_only(position):
            unannotated = ~np.isin(elements, [int(e) for e in OBJECT_ELEMENTS])
            expected[unannotated] = dataset.ignore_index
        np.testing.assert_array_equal(dataset[position]["mask"], expected)


# -- vocabularies and ignore rules per split -----------------------------------------------------


def test_train_split_is_landdiscover_like():
    train = ToylandDataset(TOYLAND_TRAIN_SPLIT)
    assert train.ignore_index == 0 and train.class_names[0] == "background"
    # Background is a query (a channel the model predicts) even though its pixels are ignored.
    assert train.vocabulary.names == train.class_names
    assert isinstance(train.vocabulary, Vocabulary)
    for novel in ("storage tank", "pool", "ship", "impervious surface", "clutter"):
        assert novel not in train.class_names
    # Scene elements outside the training vocabulary are in the images but labelled background.
    assert _find_label(train, E.STORAGE_TANK, limit=256) == 0
    assert _find_label(train, E.POOL) == 0
    assert _find_label(train, E.CAR) == _find_label(train, E.TRUCK) == train.class_names.index("vehicle")


def test_train_split_has_object_only_tiles_like_samrs():
    train = ToylandDataset(TOYLAND_TRAIN_SPLIT, num_images=64)
    partial = [i for i in range(64) if train.is_objects_only(i)]
    assert 0 < len(partial) < 32
    mask = train[partial[0]]["mask"]
    _, elements = train.render(partial[0])
    assert np.all(mask[elements == E.GRASS] == 0) and np.all(mask[elements == E.ROAD] == 0)


def test_urban_split_renames_classes_and_hides_clutter():
    urban = ToylandDataset("toyland-urban")
    train_names = set(TOYLAND_SPLITS[TOYLAND_TRAIN_SPLIT].class_names)
    renamed = {"impervious surface", "low vegetation", "tree", "car"}
    assert renamed <= set(urban.class_names) and not renamed & train_names
    # Clutter is an evaluator class the model is never asked for, and it is the ignore index.
    assert "clutter" in urban.class_names and "clutter" not in urban.vocabulary.names
    assert urban.ignore_index == urban.class_names.index("clutter")
    assert urban.vocabulary.names == urban.class_names[: len(urban.vocabulary)]
    assert _find_label(urban, E.ROAD) == urban.class_names.index("impervious surface")
    assert _find_label(urban, E.GRASS) == urban.class_names.index("low vegetation")
    assert _find_label(urban, E.FOREST) == urban.class_names.index("tree")
    assert _find_label(urban, E.TRUCK) == urban.class_names.index("car")
    # Land covers Potsdam does not name fall into clutter.
    assert _find_label(urban, E.FARMLAND) == urban.ignore_index
    assert _find_label(urban, E.BARE_SOIL) == urban.ignore_index


def test_flood_split_queries_background_and_adds_pool():
    flood = ToylandDataset("toyland-flood")
    assert flood.class_names[0] == "background" and flood.ignore_index == 0
    assert "background" in flood.vocabulary.names and flood.vocabulary.names == flood.class_names
    assert {"water", "building", "road", "tree", "grass", "vehicle", "pool"} <= set(flood.class_names)
    assert "pool" not in TOYLAND_SPLITS[TOYLAND_TRAIN_SPLIT].class_names
    assert _find_label(flood, E.POOL) == flood.class_names.index("pool")
    assert _find_label(flood, E.FOREST) == flood.class_names.index("tree")
    assert _find_label(flood, E.FARMLAND) == 0


def test_objects_split_is_fast_like():
    objects = ToylandDataset("toyland-objects")
    assert objects.ignore_index == 255
    assert objects.vocabulary.names == objects.class_names
    assert {"storage tank", "car", "truck"} <= set(objects.class_names)
    train_names = set(TOYLAND_SPLITS[TOYLAND_TRAIN_SPLIT].class_names)
    assert "storage tank" not in train_names and "truck" not in train_names
    # Cars and trucks, one "vehicle" in training, are told apart here.
    assert _find_label(objects, E.CAR) != _find_label(objects, E.TRUCK)
    for element in (E.WATER, E.ROAD, E.BUILDING, E.GRASS):
        assert _find_label(objects, element) == 255


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_every_class_appears_over_the_split(split):
    # The training split is cut to 96 tiles to keep the test fast; every class shows up well before.
    dataset = ToylandDataset(split, num_images=96 if split == TOYLAND_TRAIN_SPLIT else None)
    seen = np.zeros(256, dtype=bool)
    for sample in dataset:
        seen[np.unique(sample["mask"])] = True
    missing = [name for i, name in enumerate(dataset.class_names) if not seen[i]]
    assert not missing, f"{split}: classes never seen: {missing}"


def test_eval_splits_bias_scene_statistics():
    def mean_fraction(split: str, element: SceneElement) -> float:
        dataset = ToylandDataset(split, num_images=24)
        return float(np.mean([np.mean(dataset.render(i)[1] == element) for i in range(24)]))

    assert mean_fraction("toyland-urban", E.BUILDING) > 1.5 * mean_fraction(TOYLAND_TRAIN_SPLIT, E.BUILDING)
    assert mean_fraction("toyland-flood", E.WATER) > 1.5 * mean_fraction("toyland-urban", E.WATER)


# -- image content -------------------------------------------------------------------------------


def test_colours_carry_class_signal_but_not_the_whole_answer():
    """A nearest-mean-colour pixel classifier beats chance clearly, yet is far from perfect."""
    dataset = ToylandDataset(TOYLAND_TRAIN_SPLIT, num_images=24)

    def pixels(positions: range) -> tuple[np.ndarray, np.ndarray]:
        samples = [dataset[i] for i in positions]
        keep = [s["mask"] != dataset.ignore_index for s in samples]
        colours = np.concatenate([s["image"][k] for s, k in zip(samples, keep)]).astype(np.float32)
        labels = np.concatenate([s["mask"][k] for s, k in zip(samples, keep)])
        return colours, labels

    colours, labels = pixels(range(12))
    classes = np.unique(labels)
    means = np.stack([colours[labels == c].mean(axis=0) for c in classes])
    test_colours, test_labels = pixels(range(12, 24))
    predicted = classes[np.argmin(((test_colours[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    accuracy = float(np.mean(predicted == test_labels))
    assert 0.45 < accuracy < 0.9, accuracy


def test_shadows_darken_the_ground_beside_buildings_and_keep_its_label(monkeypatch):
    dataset = ToylandDataset("toyland-urban", num_images=1)
    image, elements = dataset.render(0)
    # The same tile (same random draws) rendered with shadows switched off.
    monkeypatch.setattr(toyland, "_SHADOW_DARKENING", 1.0)
    lit_image, lit_elements = dataset.render(0)
    np.testing.assert_array_equal(elements, lit_elements)
    shaded = image.astype(np.float32).mean(-1) < lit_image.astype(np.float32).mean(-1) - 10
    assert shaded.sum() > 50
    assert not np.isin(elements[shaded], [E.BUILDING, E.STORAGE_TANK]).any()
    # Every shadow pixel lies within a shadow's length (at most 4 px) of something that casts one.
    casters = np.isin(elements, [E.BUILDING, E.STORAGE_TANK, E.CAR, E.TRUCK])
    near = np.zeros_like(casters)
    for dy in range(-5, 6):
        for dx in range(-5, 6):
            near |= np.roll(casters, (dy, dx), axis=(0, 1))
    assert near[shaded].all()


def test_generation_is_fast():
    dataset = ToylandDataset("toyland-urban", num_images=64)
    start = time.perf_counter()
    for position in range(64):
        dataset[position]
    assert time.perf_counter() - start < 2.0


# -- bad input -----------------------------------------------------------------------------------


def test_unknown_split_names_the_valid_ones():
    with pytest.raises(RegistryError, match="toyland-nowhere") as error:
        ToylandDataset("toyland-nowhere")
    message = str(error.value)
    assert "\n" not in message
    for split in ALL_SPLITS:
        assert split in message


def test_index_out_of_range():
    dataset = ToylandDataset("toyland-flood", num_images=4)
    with pytest.raises(IndexError, match="index 4"):
        dataset[4]
    with pytest.raises(IndexError):
        dataset[-5]
    with pytest.raises(TypeError):
        dataset[1.5]


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"num_images": 0}, "num_images"),
        ({"size": 16}, "size"),
        ({"size": True}, "size"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, bad):
    with pytest.raises(ConfigError, match=bad):
        ToylandDataset("toyland-train", **kwargs)


def test_render_rejects_tiny_tiles():
    with pytest.raises(ConfigError, match="size"):
        render_toyland_scene(np.random.default_rng(0), SceneStatistics(), size=8)


def test_split_definition_is_validated():
    labels = {element: "thing" for element in SceneElement}
    with pytest.raises(ConfigError, match="not in its class_names"):
        ToylandSplit("bad", 99, "", ("other",), 1, 0, labels)
    with pytest.raises(ConfigError, match="no label"):
        ToylandSplit("bad", 99, "", ("thing",), 1, 0, {E.WATER: "thing"})
    with pytest.raises(ConfigError, match="land_cover_weights"):
        SceneStatistics(land_cover_weights=(1.0, 0.0))
    with pytest.raises(ConfigError, match="pool_probability"):
        SceneStatistics(pool_probability=1.5)
