"""The vocabularies under configs/vocab/ match the official lists exactly (count, order, spelling).

The expected lists are literals copied from docs/datasets.md#label-encoding and
docs/datasets.md#evaluation-sets, which quote the official GSNet json files and registrations;
COCO-Stuff's 171 names are those of the CAT-Seg / SAN / GSNet COCO-Stuff registrations.
"""

from __future__ import annotations

import json

import pytest
import yaml

from ovbench.config import configs_dir
from ovbench.data.catalog import (
    dataset_names,
    load_dataset_spec,
    load_template_set,
    load_vocabulary,
    load_vocabulary_file,
    template_set_names,
    vocabulary_names,
)
from ovbench.errors import ConfigError, RegistryError, VocabularyError

LANDDISCOVER = [
    "background", "bare land", "grass", "pavement", "road", "tree", "water", "agriculture land",
    "buildings", "forest land", "barren land", "urban land", "large-vehicle", "swimming-pool",
    "helicopter", "bridge", "plane", "ship", "soccer-ball-field", "basketball-court",
    "ground-track-field", "small-vehicle", "baseball-diamond", "tennis-court", "roundabout",
    "storage-tank", "harbor", "container-crane", "airport", "helipad", "chimney",
    "expressway service area", "expresswalltoll station", "dam", "golf field", "overpass",
    "stadium", "train station", "vehicle", "windmill",
]
POTSDAM_QUERIES = ["impervious surface", "building", "low vegetation", "tree", "car"]
POTSDAM_EVALUATOR = POTSDAM_QUERIES + ["clutter"]
FLOODNET = [
    "Background", "building-flooded", "building-non-flooded", "road-flooded", "road-non-flooded",
    "water", "tree", "vehicle", "pool", "grass",
]
FLAIR_QUERIES = [
    "building", "pervious-surface", "impervious-surface", "bare soil", "water", "coniferous",
    "deciduous", "brushwood", "vineyard", "herbaceous vegetation", "agricultural land", "plowed land",
]
FLAIR_EVALUATOR = [
    "building", "pervious surface", "impervious surface", "bare soil", "water", "coniferous",
    "deciduous", "brushwood", "vineyard", "herbaceous vegetation", "agricultural land", "plowed land",
    "other",
]
FAST = [
    "A220", "A321", "A330", "A350", "ARJ21", "Baseball-Field", "Basketball-Court", "Boeing737",
    "Boeing747", "Boeing777", "Boeing787", "Bridge", "Bus", "C919", "Cargo-Truck", "Dry-Cargo-Ship",
    "Dump-Truck", "Engineering-Ship", "Excavator", "Fishing-Boat", "Football-Field", "Intersection",
    "Liquid-Cargo-Ship", "Motorboat", "other-airplane", "other-ship", "other-vehicle",
    "Passenger-Ship", "Roundabout", "Small-Car", "Tennis-Court", "Tractor", "Trailer",
    "Truck-Tractor", "Tugboat", "Van", "Warship",
]
COCO_STUFF = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other",
    "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel",
    "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]

#: vocabulary file -> (queries, evaluator classes)
EXPECTED = {
    "landdiscover": (LANDDISCOVER, LANDDISCOVER),
    "potsdam": (POTSDAM_QUERIES, POTSDAM_EVALUATOR),
    "floodnet": (FLOODNET, FLOODNET),
    "flair": (FLAIR_QUERIES, FLAIR_EVALUATOR),
    "fast": (FAST, FAST),
    "coco-stuff": (COCO_STUFF, COCO_STUFF),
}

#: dataset -> (vocabulary file, ignore index) as the official registrations set them
DATASET_VOCABULARIES = {
    "landdiscover50k": ("landdiscover", 0),
    "landdiscover10k": ("landdiscover", 0),
    "landdiscover20k": ("landdiscover", 0),
    "landdiscover30k": ("landdiscover", 0),
    "landdiscover40k": ("landdiscover", 0),
    "loveda": ("landdiscover", 0),
    "deepglobe": ("landdiscover", 0),
    "sior": ("landdiscover", 0),
    "sota": ("landdiscover", 0),
    "oem": ("landdiscover", 0),
    "potsdam": ("potsdam", 5),
    "floodnet": ("floodnet", 0),
    "flair": ("flair", 12),
    "fast": ("fast", 255),
    "coco-stuff-train": ("coco-stuff", 255),
    "coco-stuff-val": ("coco-stuff", 255),
}


def test_expected_counts():
    assert [len(EXPECTED[k][0]) for k in EXPECTED] == [40, 5, 10, 12, 37, 171]
    assert [len(EXPECTED[k][1]) for k in EXPECTED] == [40, 6, 10, 13, 37, 171]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vocabulary_files_match_the_official_lists(name):
    vocab_file = load_vocabulary_file(name)
    queries, evaluator = EXPECTED[name]
    assert list(vocab_file.classes) == queries
    assert load_vocabulary(name).names == queries
    assert vocab_file.class_names() == evaluator
    # the default vocabulary carries no synonyms: the queried strings are exactly the official ones
    assert all(cls.synonyms == () for cls in load_vocabulary(name))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_yaml_reads_every_entry_as_the_literal_string(name):
    """Plain YAML scalars can turn into booleans or numbers (`no`, `on`, `1e3`); none may."""
    raw = yaml.safe_load((configs_dir() / "vocab" / f"{name}.yaml").read_text())
    for key in ("classes", "evaluator_classes"):
        assert all(isinstance(item, str) for item in raw.get(key, []))


def test_every_vocabulary_file_is_tested():
    assert set(vocabulary_names()) == set(EXPECTED)


@pytest.mark.parametrize("dataset", sorted(DATASET_VOCABULARIES))
def test_dataset_specs_name_their_vocabulary(dataset):
    spec = load_dataset_spec(dataset)
    vocab_name, ignore = DATASET_VOCABULARIES[dataset]
    assert spec.vocabulary == vocab_name and spec.ignore_index == ignore
    assert spec.vocabulary_aliases == "off"


def test_every_dataset_spec_is_checked():
    assert set(dataset_names()) == set(DATASET_VOCABULARIES)


def test_ignore_values_are_the_documented_classes():
    # Potsdam clutter, FLAIR other, FloodNet Background: the ignore value names an evaluator class
    assert load_vocabulary_file("potsdam").class_names()[5] == "clutter"
    assert load_vocabulary_file("flair").class_names()[12] == "other"
    assert load_vocabulary_file("floodnet").class_names()[0] == "Background"
    assert load_vocabulary_file("landdiscover").class_names()[0] == "background"
    # ...but only Background (FloodNet) and background (LD50K) are offered as queries
    assert "clutter" not in load_vocabulary("potsdam").names
    assert "other" not in load_vocabulary("flair").names


def test_expresswalltoll_typo_is_kept_and_the_alias_is_opt_in():
    default = load_vocabulary("landdiscover")
    assert default[32].name == "expresswalltoll station" and default[32].synonyms == ()
    as_synonym = load_vocabulary("landdiscover", aliases="synonyms")
    assert as_synonym[32].name == "expresswalltoll station"
    assert as_synonym[32].synonyms == ("expressway toll station",)
    assert as_synonym.names == LANDDISCOVER
    replaced = load_vocabulary("landdiscover", aliases="replace")
    assert replaced[32].name == "expressway toll station"
    assert replaced.names[:32] == LANDDISCOVER[:32] and replaced.names[33:] == LANDDISCOVER[33:]
    with pytest.raises(ConfigError, match="aliases must be one of off, synonyms, replace"):
        load_vocabulary("landdiscover", aliases="fix")


def test_template_set():
    assert "remote-sensing" in template_set_names()
    templates = load_template_set("remote-sensing")
    assert templates == load_template_set("templates-remote-sensing")
    assert 8 <= len(templates) <= 16 and len(set(templates)) == len(templates)
    for template in templates:
        assert template.count("{}") == 1
        assert "harbor" in template.format("harbor")
    assert any("aerial" in t for t in templates) and any("satellite" in t for t in templates)
    with pytest.raises(RegistryError, match="unknown template set 'remote-sensin' \\(did you mean 'remote-sensing'\\?\\)"):
        load_template_set("remote-sensin")


def test_bad_template_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("templates: ['a photo of {}.', 'no placeholder']\n")
    with pytest.raises(ConfigError, match="template 1 .* exactly one '\\{\\}' placeholder"):
        load_template_set(str(path))


def test_official_json_vocabulary_loads_by_path(tmp_path):
    path = tmp_path / "potsdam.json"
    path.write_text(json.dumps(POTSDAM_QUERIES))
    assert load_vocabulary(str(path)).names == POTSDAM_QUERIES


@pytest.mark.parametrize(
    "content, message",
    [
        ("classes: [water, Water]\n", "duplicate class 'Water'"),
        ("classes: [water, tree]\naliases: {road: street}\n", "alias for 'road', which is not one of its classes"),
        ("classes: [water, tree]\nevaluator_classes: [water]\n", "evaluator_classes has 1 entries, fewer than the 2"),
        ("classes: [water, yes]\n", r"classes\[1\]: expected a class name"),
        ("classes: [water]\ncolours: [blue]\n", "unknown key"),
        ("classes: []\n", "non-empty list"),
    ],
)
def test_bad_vocabulary_files(tmp_path, content, message):
    path = tmp_path / "v.yaml"
    path.write_text(content)
    with pytest.raises(VocabularyError, match=message):
        load_vocabulary_file(str(path))


def test_unknown_vocabulary_name():
    with pytest.raises(RegistryError, match="unknown vocabulary 'potsdm' \\(did you mean 'potsdam'\\?\\)"):
        load_vocabulary("potsdm")
