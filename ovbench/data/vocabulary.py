"""Ordered class vocabularies: what a model is asked to segment."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from ovbench.errors import VocabularyError


@dataclass(frozen=True)
class VocabularyClass:
    """One class: the name used as the text query, plus optional synonyms."""

    name: str
    synonyms: tuple[str, ...] = field(default_factory=tuple)

    @property
    def all_names(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


def _parse_entry(entry: Any, position: int) -> VocabularyClass:
    if isinstance(entry, VocabularyClass):
        return entry
    if isinstance(entry, str):
        names = [entry]
    elif isinstance(entry, (list, tuple)):
        names = list(entry)
    elif isinstance(entry, dict):
        unknown = set(entry) - {"name", "synonyms"}
        if unknown:
            raise VocabularyError(
                f"vocabulary entry {position}: unknown key(s) {sorted(unknown)}; expected 'name' and 'synonyms'"
            )
        names = [entry.get("name"), *(entry.get("synonyms") or [])]
    else:
        raise VocabularyError(
            f"vocabulary entry {position}: expected a name, a list of names or a mapping, got {type(entry).__name__}"
        )
    cleaned = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise VocabularyError(f"vocabulary entry {position}: empty class name")
        cleaned.append(name.strip())
    return VocabularyClass(cleaned[0], tuple(cleaned[1:]))


class Vocabulary:
    """An ordered, duplicate-free list of classes; index i is class id i."""

    def __init__(self, classes: Iterable[Any]):
        parsed = tuple(_parse_entry(entry, i) for i, entry in enumerate(classes))
        if not parsed:
            raise VocabularyError("empty vocabulary: at least one class is needed")
        seen: dict[str, int] = {}
        for i, cls in enumerate(parsed):
            key = cls.name.casefold()
            if key in seen:
                raise VocabularyError(
                    f"duplicate class {cls.name!r} at positions {seen[key]} and {i}"
                )
            seen[key] = i
        self.classes: tuple[VocabularyClass, ...] = parsed

    @classmethod
    def from_file(cls, path: str | Path) -> "Vocabulary":
        """Read a YAML or JSON list (or a mapping with a `classes` list)."""
        path = Path(path)
        if not path.is_file():
            raise VocabularyError(f"vocabulary file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise VocabularyError(f"{path}: cannot parse vocabulary ({exc})") from None
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if not isinstance(data, list):
            raise VocabularyError(f"{path}: expected a list of classes")
        try:
            return cls(data)
        except VocabularyError as exc:
            raise VocabularyError(f"{path}: {exc}") from None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def to_list(self) -> list[Any]:
        """The YAML/JSON form: plain names, or [name, synonym, ...] lists."""
        return [c.name if not c.synonyms else list(c.all_names) for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[VocabularyClass]:
        return iter(self.classes)

    def __getitem__(self, index: int) -> VocabularyClass:
        return self.classes[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.classes == other.classes

    def __hash__(self) -> int:
        return hash(self.classes)

    def __repr__(self) -> str:
        return f"Vocabulary({self.names!r})"
