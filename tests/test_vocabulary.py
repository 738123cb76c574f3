import json

import pytest

from ovbench.data.vocabulary import Vocabulary, VocabularyClass
from ovbench.errors import VocabularyError


def test_entries_forms_and_order():
    vocab = Vocabulary(["water", ["tree", "forest"], {"name": "road", "synonyms": ["street"]}])
    assert vocab.names == ["water", "tree", "road"]
    assert vocab[1] == VocabularyClass("tree", ("forest",))
    assert vocab[2].all_names == ("road", "street")
    assert len(vocab) == 3
    assert vocab.to_list() == ["water", ["tree", "forest"], ["road", "street"]]
    assert Vocabulary(vocab.to_list()) == vocab


def test_names_are_stripped():
    assert Vocabulary(["  bare soil "]).names == ["bare soil"]


@pytest.mark.parametrize(
    "entries, message",
    [
        ([], "empty vocabulary"),
        (["water", ""], "entry 1: empty class name"),
        (["water", ["tree", "  "]], "entry 1: empty class name"),
        (["water", "Water"], "duplicate class 'Water' at positions 0 and 1"),
        ([3], "entry 0: expected a name"),
        ([{"name": "a", "colour": "red"}], "unknown key"),
    ],
)
def test_bad_vocabularies_are_rejected(entries, message):
    with pytest.raises(VocabularyError, match=message):
        Vocabulary(entries)


def test_from_yaml_and_json(tmp_path):
    (tmp_path / "v.yaml").write_text("- building\n- [low vegetation, grass]\n")
    (tmp_path / "v.json").write_text(json.dumps({"classes": ["building", "tree"]}))
    assert Vocabulary.from_file(tmp_path / "v.yaml").names == ["building", "low vegetation"]
    assert Vocabulary.from_file(tmp_path / "v.json").names == ["building", "tree"]
    (tmp_path / "empty.yaml").write_text("[]\n")
    with pytest.raises(VocabularyError, match="empty.yaml: empty vocabulary"):
        Vocabulary.from_file(tmp_path / "empty.yaml")
    with pytest.raises(VocabularyError, match="not found"):
        Vocabulary.from_file(tmp_path / "missing.yaml")
