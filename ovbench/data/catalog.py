"""The catalog of real datasets: names -> specs -> readers, plus vocabularies and prompt templates.

- Dataset specs are YAML files under `configs/datasets/` (one per name: `landdiscover50k`,
  `flair`, `fast`, `potsdam`, `floodnet`, `coco-stuff-train`, ...). The names the official
  code registers (`LandDiscover_50K`, `potsdam_all`, `FAST_val`, ...) resolve to the same specs.
- A name may carry parameters after a colon, comma-separated:
  `landdiscover50k:size=10000,seed=1` (a reproducible random subset; seed defaults to 0),
  `landdiscover50k:list=splits/mine.txt` (the stems named by a file, one per line),
  `landdiscover50k:aliases=replace` (use the vocabulary's documented corrected spellings).
- Vocabularies are YAML files under `configs/vocab/` (`classes`, optional `evaluator_classes`
  and `aliases`); a spec names one with `vocabulary: potsdam`.
- Prompt-template sets are `configs/vocab/templates-NAME.yaml` (`load_template_set(NAME)`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ovbench.config import config_files, is_yaml_path, load_config_file, load_yaml, naming_file, yaml_file
from ovbench.data.folder import (
    VOCABULARY_ALIAS_MODES,
    FolderDataset,
    FolderDatasetSpec,
    read_file_list,
)
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import ConfigError, DataError, VocabularyError, unknown_name_error

#: parameters a dataset name may carry, in the order a canonical name lists them
DATASET_PARAMETERS = ("list", "size", "seed", "aliases")
TEMPLATE_PREFIX = "templates-"

# A parameter section starts at the first colon followed by `key=`; so do its items after commas.
_PARAMETERS_START = re.compile(r":(?=[A-Za-z_][A-Za-z0-9_]*=)")
_ITEM_SEPARATOR = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_]*=)")


def _toyland_splits() -> tuple[str, ...]:
    from ovbench.data.toyland import TOYLAND_SPLITS

    return tuple(TOYLAND_SPLITS)


# --------------------------------------------------------------------------- dataset names


@dataclass(frozen=True)
class DatasetRequest:
    """A dataset name split into its base name and its parameters."""

    base: str
    file_list: str | None = None
    size: int | None = None
    seed: int = 0
    aliases: str | None = None

    @property
    def has_parameters(self) -> bool:
        return self.file_list is not None or self.size is not None or self.aliases is not None

    def canonical(self, base: str | None = None) -> str:
        """`base:list=...,size=N,seed=S,aliases=...` with only the parameters in use."""
        parts = []
        if self.file_list is not None:
            parts.append(f"list={self.file_list}")
        if self.size is not None:
            parts.append(f"size={self.size},seed={self.seed}")
        if self.aliases is not None:
            parts.append(f"aliases={self.aliases}")
        head = base or self.base
        return f"{head}:{','.join(parts)}" if parts else head


def parse_dataset_name(name: str) -> DatasetRequest:
    """`landdiscover50k:size=10000,seed=1` -> DatasetRequest('landdiscover50k', size=10000, seed=1)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"dataset name must be a non-empty string, got {name!r}")
    match = _PARAMETERS_START.search(name)
    if match is None:
        return DatasetRequest(name)
    base, section = name[: match.start()], name[match.end():]
    if not base:
        raise ConfigError(f"dataset '{name}': the dataset name before ':' is missing")
    values: dict[str, str] = {}
    for item in _ITEM_SEPARATOR.split(section):
        key, _, value = item.partition("=")
        if key not in DATASET_PARAMETERS:
            raise ConfigError(f"dataset '{name}': unknown parameter '{key}' (expected {', '.join(DATASET_PARAMETERS)})")
        if key in values:
            raise ConfigError(f"dataset '{name}': parameter '{key}' given twice")
        if not value:
            raise ConfigError(f"dataset '{name}': parameter '{key}' has no value")
        values[key] = value
    numbers: dict[str, int] = {}
    for key, lowest in (("size", 1), ("seed", 0)):
        if key in values:
            text = values[key]
            if not text.isdigit() or int(text) < lowest:
                raise ConfigError(f"dataset '{name}': {key} must be an integer >= {lowest}, got '{text}'")
            numbers[key] = int(text)
    if "seed" in numbers and "size" not in numbers:
        raise ConfigError(f"dataset '{name}': seed picks a random subset and needs size=N")
    aliases = values.get("aliases")
    if aliases is not None and aliases not in VOCABULARY_ALIAS_MODES:
        raise ConfigError(f"dataset '{name}': aliases must be one of {', '.join(VOCABULARY_ALIAS_MODES)}, got '{aliases}'")
    return DatasetRequest(
        base, file_list=values.get("list"), size=numbers.get("size"), seed=numbers.get("seed", 0), aliases=aliases
    )


# --------------------------------------------------------------------------- dataset specs


def dataset_spec_files() -> dict[str, Path]:
    """name -> spec YAML under configs/datasets/."""
    return config_files("datasets")


def dataset_names() -> list[str]:
    """The catalog's dataset names (without parameters and registered aliases)."""
    return sorted(dataset_spec_files())


def registered_names() -> dict[str, str]:
    """The official code's registration names -> catalog names (e.g. potsdam_all -> potsdam)."""
    mapping: dict[str, str] = {}
    for name, path in dataset_spec_files().items():
        raw = load_yaml(path)
        for registered in raw.get("registered_names") or []:
            if isinstance(registered, str) and registered != name:
                mapping[registered] = name
    return mapping


def _find_spec(name: str) -> tuple[Path, str]:
    """(spec file, dataset name) of a catalog name, an official registration name or a spec path."""
    files = dataset_spec_files()
    if name in files:
        return files[name], name
    if is_yaml_path(name):
        return yaml_file(name, "dataset spec"), Path(name).stem
    registered = registered_names()
    if name not in registered:
        raise unknown_name_error("dataset", name, set(files) | set(_toyland_splits()))
    return files[registered[name]], registered[name]


def load_dataset_spec(name: str) -> FolderDatasetSpec:
    """The spec of a catalog name, an official registration name, or a spec YAML path."""
    return _load_spec(*_find_spec(name))


def _load_spec(path: Path, spec_name: str) -> FolderDatasetSpec:
    with _naming_spec_file(path):
        spec = load_config_file(FolderDatasetSpec, path, "dataset", spec_name)
        if isinstance(spec.vocabulary, list):
            Vocabulary(spec.vocabulary)  # an empty or repeated inline vocabulary is the spec's fault
    return spec


def _naming_spec_file(path: Path):
    """Errors about a spec's content name the spec file, so the user knows what to edit."""
    return naming_file(path, (ConfigError, VocabularyError))


def build_dataset(name: str, data_root: str | Path | None):
    """A dataset reader by (parameterised) name; `data_root` is the folder the spec paths are under."""
    request = parse_dataset_name(name)
    if request.base in _toyland_splits():
        if request.has_parameters:
            raise ConfigError(
                f"dataset '{name}': {request.base} is an embedded toyland split; name parameters "
                f"({', '.join(DATASET_PARAMETERS)}) apply to folder datasets"
            )
        from ovbench.data.toyland import ToylandDataset

        return ToylandDataset(request.base)
    spec_path, spec_name = _find_spec(request.base)
    spec = _load_spec(spec_path, spec_name)
    if request.aliases is not None:
        spec = dataclasses.replace(spec, vocabulary_aliases=request.aliases)
    if data_root is None:
        raise DataError(f"dataset {spec.name} needs its data: pass --data-root DIR or set OVBENCH_DATA")
    with _naming_spec_file(spec_path):
        dataset = FolderDataset(spec, data_root)
    if request.file_list is not None:
        stems = read_file_list(request.file_list, (spec.image_suffix, *spec.mask_suffixes))
        dataset = dataset.restrict(stems, source=f"file list {request.file_list}", name=dataset.name)
    if request.size is not None:
        dataset = dataset.random_subset(request.size, request.seed)
    dataset.name = request.canonical(spec.name)
    return dataset


def dataset_vocabulary(name: str) -> tuple[Vocabulary, list[str]]:
    """(text queries, evaluator class names) of a dataset, read from its spec alone: no data
    folder is needed (seen/unseen splits of a table ask this of sets that are not on disk)."""
    request = parse_dataset_name(name)
    if request.base in _toyland_splits():
        from ovbench.data.toyland import TOYLAND_SPLITS

        split = TOYLAND_SPLITS[request.base]
        return split.vocabulary, list(split.class_names)
    spec_path, spec_name = _find_spec(request.base)
    spec = _load_spec(spec_path, spec_name)
    if request.aliases is not None:
        spec = dataclasses.replace(spec, vocabulary_aliases=request.aliases)
    from ovbench.data.folder import _resolve_vocabulary

    vocabulary, evaluator = _resolve_vocabulary(spec)
    return vocabulary, list(spec.class_names or evaluator)


# --------------------------------------------------------------------------- vocabularies

_VOCAB_KEYS = {"description", "classes", "evaluator_classes", "aliases"}


@dataclass(frozen=True)
class VocabularyFile:
    """A vocabulary file: the text queries in class-id order, the evaluator's classes when they
    differ (Potsdam, FLAIR), and documented aliases that are used only on request."""

    name: str
    path: Path
    classes: tuple[str, ...]
    evaluator_classes: tuple[str, ...] | None = None
    aliases: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    description: str = ""

    def vocabulary(self, aliases: str = "off") -> Vocabulary:
        """The queries. `aliases`: off (official strings only), synonyms (aliases become extra
        names of their class), replace (the first alias is queried instead of the official string)."""
        _check_alias_mode(aliases)
        if aliases == "off":
            return Vocabulary(self.classes)
        if aliases == "synonyms":
            return Vocabulary([{"name": c, "synonyms": list(self.aliases.get(c, ()))} for c in self.classes])
        return Vocabulary([self._replaced(c) for c in self.classes])

    def class_names(self, aliases: str = "off") -> list[str]:
        """The evaluator's classes (mask value i is class i)."""
        _check_alias_mode(aliases)
        names = self.evaluator_classes if self.evaluator_classes is not None else self.classes
        return [self._replaced(c) if aliases == "replace" else c for c in names]

    def _replaced(self, name: str) -> str:
        return self.aliases[name][0] if self.aliases.get(name) else name


def _check_alias_mode(mode: str) -> None:
    if mode not in VOCABULARY_ALIAS_MODES:
        raise ConfigError(f"aliases must be one of {', '.join(VOCABULARY_ALIAS_MODES)}, got {mode!r}")


def vocabulary_names() -> list[str]:
    return sorted(n for n in config_files("vocab") if not n.startswith(TEMPLATE_PREFIX))


def _name_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise VocabularyError(f"{where}: expected a non-empty list of class names")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip() or item != item.strip():
            raise VocabularyError(f"{where}[{i}]: expected a class name without surrounding spaces, got {item!r}")
    return tuple(value)


def load_vocabulary_file(name: str | Path) -> VocabularyFile:
    """A vocabulary by name (configs/vocab/NAME.yaml) or by the path of a YAML/JSON file; a
    plain JSON list (like the official GSNet datasets/*.json) is a list of classes."""
    files = config_files("vocab")
    text_name = str(name)
    if text_name in files and not text_name.startswith(TEMPLATE_PREFIX):
        path = files[text_name]
    elif text_name.endswith((".yaml", ".yml", ".json")) and Path(text_name).is_file():
        path = Path(text_name)
    else:
        raise unknown_name_error("vocabulary", text_name, vocabulary_names())
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise VocabularyError(f"{path}: cannot parse vocabulary ({reason})") from None
    if isinstance(data, list):
        data = {"classes": data}
    if not isinstance(data, dict):
        raise VocabularyError(f"{path}: expected a list of classes or a mapping with 'classes'")
    unknown = sorted(set(data) - _VOCAB_KEYS)
    if unknown:
        raise VocabularyError(f"{path}: unknown key(s) {unknown}; expected {sorted(_VOCAB_KEYS)}")
    classes = _name_list(data.get("classes"), f"{path}: classes")
    evaluator = data.get("evaluator_classes")
    evaluator_classes = None if evaluator is None else _name_list(evaluator, f"{path}: evaluator_classes")
    if evaluator_classes is not None and len(evaluator_classes) < len(classes):
        raise VocabularyError(
            f"{path}: evaluator_classes has {len(evaluator_classes)} entries, fewer than the {len(classes)} classes"
        )
    raw_aliases = data.get("aliases") or {}
    if not isinstance(raw_aliases, dict):
        raise VocabularyError(f"{path}: aliases must map a class name to its alias(es)")
    aliases: dict[str, tuple[str, ...]] = {}
    for key, value in raw_aliases.items():
        if key not in classes:
            raise VocabularyError(f"{path}: alias for {key!r}, which is not one of its classes")
        aliases[key] = _name_list([value] if isinstance(value, str) else value, f"{path}: aliases[{key!r}]")
    try:
        Vocabulary(classes)  # duplicates and empty names fail here, with the file named
        if evaluator_classes is not None:
            Vocabulary(evaluator_classes)
    except VocabularyError as exc:
        raise VocabularyError(f"{path}: {exc}") from None
    return VocabularyFile(
        name=path.stem, path=path, classes=classes, evaluator_classes=evaluator_classes,
        aliases=aliases, description=str(data.get("description", "")),
    )


def load_vocabulary(name: str | Path, aliases: str = "off") -> Vocabulary:
    """The text queries of a named vocabulary (official strings unless `aliases` says otherwise)."""
    return load_vocabulary_file(name).vocabulary(aliases)


# --------------------------------------------------------------------------- prompt templates


def template_set_names() -> list[str]:
    return sorted(n[len(TEMPLATE_PREFIX):] for n in config_files("vocab") if n.startswith(TEMPLATE_PREFIX))


def load_template_set(name: str | Path) -> list[str]:
    """Prompt templates (`"an aerial photo of {}."`, ...) by set name (`remote-sensing`, the file
    configs/vocab/templates-remote-sensing.yaml) or by the path of such a YAML file."""
    files = config_files("vocab")
    text_name = str(name)
    key = text_name if text_name.startswith(TEMPLATE_PREFIX) else TEMPLATE_PREFIX + text_name
    if key in files:
        path = files[key]
    elif is_yaml_path(text_name) and Path(text_name).is_file():
        path = Path(text_name)
    else:
        raise unknown_name_error("template set", text_name, template_set_names())
    data = load_yaml(path)
    unknown = sorted(set(data) - {"description", "templates"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; expected description, templates")
    templates = data.get("templates")
    if not isinstance(templates, list) or not templates:
        raise ConfigError(f"{path}: templates must be a non-empty list")
    for i, template in enumerate(templates):
        if not isinstance(template, str) or template.count("{}") != 1 or _format_fails(template):
            raise ConfigError(f"{path}: template {i} ({template!r}) must be a string with exactly one '{{}}' placeholder")
    if len(set(templates)) != len(templates):
        raise ConfigError(f"{path}: templates repeat")
    return list(templates)


def _format_fails(template: str) -> bool:
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        return True
    return False


__all__ = [
    "DATASET_PARAMETERS",
    "DatasetRequest",
    "VocabularyFile",
    "build_dataset",
    "dataset_names",
    "dataset_spec_files",
    "load_dataset_spec",
    "load_template_set",
    "load_vocabulary",
    "load_vocabulary_file",
    "parse_dataset_name",
    "registered_names",
    "template_set_names",
    "vocabulary_names",
]
