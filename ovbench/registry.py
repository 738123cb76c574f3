"""Names -> things: methods (adapters + their YAML), datasets and benchmarks.

Built-in adapters are listed here; third-party packages add methods through the
`ovbench.adapters` entry-point group (name = method name, value = an OpenVocabSegmenter
subclass), so a new method needs no edit of ovbench.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import inspect
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ovbench.config import (
    build_dataclass,
    config_files,
    deep_merge,
    find_config_file,
    load_named_config,
    load_yaml,
    to_plain,
)
from ovbench.errors import ConfigError, OvbenchError, RegistryError, first_line, unknown_name_error
# the torch-free config dataclasses: listing and resolving configs loads neither torch nor the engine
from ovbench.engine.train_config import TrainConfig
from ovbench.inference_config import InferenceConfig

ENTRY_POINT_GROUP = "ovbench.adapters"

#: In-tree adapters are found by name, so adding one edits nothing here: `adapter: foo-bar` is
#: the module `ovbench_adapters.foo_bar`, and its segmenter class declares
#: `method_name = "foo-bar"`. Shared adapter code lives in `ovbench_adapters.common`.
ADAPTER_PACKAGE = "ovbench_adapters"


#: the benchmark every command runs when none is given (the embedded, data-free one); sweeps
#: and experiment files use it for jobs that name no benchmark
DEFAULT_BENCHMARK = "toyland"
#: the paper's benchmark: what `run` and `eval` choose instead once a data root is configured
REAL_BENCHMARK = "ovrsiss"


def build_inference(config: InferenceConfig):
    """`ovbench.eval.inference.build_inference`, imported on use (it needs torch)."""
    from ovbench.eval.inference import build_inference as build

    return build(config)


# --------------------------------------------------------------------------- adapters


def _entry_point_adapters() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def builtin_adapter_names() -> list[str]:
    """The adapter modules shipped in `ovbench_adapters` (listed without importing them)."""
    spec = importlib.util.find_spec(ADAPTER_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return sorted(
        info.name.replace("_", "-") for info in pkgutil.iter_modules(locations) if not info.ispkg and not info.name.startswith("_")
    )


def adapter_names() -> list[str]:
    return sorted(set(builtin_adapter_names()) | set(_entry_point_adapters()))


def _builtin_adapter(name: str) -> type | None:
    """The segmenter class of the in-tree adapter `name`, or None when there is no such module."""
    if name not in builtin_adapter_names():
        return None
    module_name = f"{ADAPTER_PACKAGE}.{name.replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"adapter '{name}' cannot be imported: {exc}") from None
    from ovbench.interface import OpenVocabSegmenter

    found = [
        obj for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, OpenVocabSegmenter) and obj.__module__ == module_name
        and getattr(obj, "method_name", None) == name
    ]
    if len(found) != 1:
        raise RegistryError(f"adapter module {module_name} must define one segmenter class with method_name = {name!r}, found {len(found)}")
    return found[0]


def _import_object(reference: str) -> Any:
    """`package.module:Attribute` -> the object; one clear error if it is not importable."""
    module_name, _, attr = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f"adapter '{reference}' cannot be imported: {exc}") from None


def adapter_class(name: str) -> type:
    """A registered adapter name, or `module:Class` for an adapter under development."""
    from ovbench.interface import OpenVocabSegmenter

    builtin = None if ":" in name else _builtin_adapter(name)
    if builtin is not None:
        cls = builtin
    elif ":" in name:
        cls = _import_object(name)
    else:
        plugins = _entry_point_adapters()
        if name not in plugins:
            raise unknown_name_error("adapter", name, adapter_names())
        try:
            cls = plugins[name].load()
        except Exception as exc:  # a broken plugin must not take the CLI down with a traceback
            raise RegistryError(f"adapter '{name}' from entry point {plugins[name].value} failed to load: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, OpenVocabSegmenter)):
        raise RegistryError(f"adapter '{name}' is not an OpenVocabSegmenter subclass: {cls!r}")
    return cls


# --------------------------------------------------------------------------- methods


@dataclass
class EvalSettings:
    batch_size: int = 1


@dataclass
class PublishedCheckpoint:
    """Where a method's authors publish a checkpoint the `finetune` protocol starts from."""

    file: str
    published: str


@dataclass
class MethodConfig:
    """A method's YAML: which adapter, its model settings, how it is trained and evaluated."""

    adapter: str
    model: dict[str, Any] = field(default_factory=dict)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: the official COCO-Stuff checkpoint (`finetune` protocol)
    coco_checkpoint: PublishedCheckpoint | None = None
    #: the authors' published COCO-Stuff training recipe, kept as data beside `train` (the
    #: recipe ovbench runs on the benchmark's training set); no run reads it, it records where
    #: the `train` figures came from.
    coco_recipe: TrainConfig | None = None
    description: str = ""
    #: named overlays (e.g. `tiny` for toyland and tests) applied on request
    scales: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResolvedMethod:
    name: str
    scale: str | None
    config: MethodConfig
    model_config: Any  # the adapter's own typed config

    def as_dict(self) -> dict[str, Any]:
        plain = to_plain(self.config)
        plain.pop("scales", None)
        plain["model"] = to_plain(self.model_config)
        return {"method": self.name, "scale": self.scale, **plain}


def _method_files() -> dict[str, Path]:
    return config_files("methods", recursive=True)


def method_names() -> list[str]:
    return sorted(set(_method_files()) | set(_entry_point_adapters()))


def _raw_method_config(name: str, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A method's YAML as a dict; `inherit: OTHER` lays the file over OTHER's config
    (deep-merged, so a variant states only what it changes, `scales:` included)."""
    files = _method_files()
    if name in files:
        raw = load_yaml(files[name])
    elif name.endswith((".yaml", ".yml")) and Path(name).is_file():
        raw = load_yaml(name)
    elif name in _entry_point_adapters():
        cls = adapter_class(name)
        return deep_merge({"adapter": name}, dict(getattr(cls, "default_method_config", {}) or {}))
    else:
        raise unknown_name_error("method", name, method_names())
    parent = raw.pop("inherit", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"method {name}: inherit must name one method, got {parent!r}")
    if parent in _chain or parent == name:
        raise ConfigError(f"method {name}: inherit cycle {' -> '.join((*_chain, name, parent))}")
    return deep_merge(_raw_method_config(parent, (*_chain, name)), raw)


def method_scales(name: str) -> list[str]:
    return list((_raw_method_config(name).get("scales") or {}).keys())


def resolve_method(name: str, scale: str | None = None, overrides: dict[str, Any] | None = None) -> ResolvedMethod:
    """YAML + scale overlay + command-line overrides -> typed, validated configs."""
    raw = _raw_method_config(name)
    scales = raw.get("scales") or {}
    if scale is not None:
        if scale not in scales:
            raise ConfigError(f"method {name} has no '{scale}' scale; available: {', '.join(scales) or 'none'}")
        raw = deep_merge(raw, scales[scale])
    if overrides:
        if "scales" in overrides:
            raise ConfigError("scales cannot be overridden; choose one with --scale")
        raw = deep_merge(raw, overrides)
    config = build_dataclass(MethodConfig, raw)
    cls = adapter_class(config.adapter)
    config_class = getattr(cls, "config_class", None)
    if config_class is None:
        if config.model:
            raise ConfigError(f"adapter {config.adapter} takes no model settings, got {sorted(config.model)}")
        model_config = None
    else:
        model_config = build_dataclass(config_class, config.model, "model")
    return ResolvedMethod(name, scale, config, model_config)


def build_segmenter(resolved: ResolvedMethod, trust_checkpoints: bool = False):
    """Instantiate the adapter for a resolved method."""
    cls = adapter_class(resolved.config.adapter)
    inference = build_inference(resolved.config.inference)
    kwargs: dict[str, Any] = {"inference": inference}
    if resolved.model_config is not None:
        kwargs["config"] = resolved.model_config
    if "trust_checkpoints" in inspect.signature(cls).parameters:
        kwargs["trust_checkpoints"] = trust_checkpoints
    try:
        return cls(**kwargs)
    except OvbenchError:
        raise
    except (ValueError, RuntimeError, OSError) as exc:
        # methods/ cannot raise ovbench errors; their plain errors about weights and shapes are user-facing
        raise OvbenchError(f"cannot build {resolved.name}: {first_line(exc)}") from None


# --------------------------------------------------------------------------- datasets


def _toyland_splits() -> tuple[str, ...]:
    from ovbench.data.toyland import TOYLAND_SPLITS

    return tuple(TOYLAND_SPLITS)


def dataset_names() -> list[str]:
    from ovbench.data.catalog import dataset_names as catalog_dataset_names

    return sorted(set(_toyland_splits()) | set(catalog_dataset_names()))


def resolve_data_root(data_root: str | Path | None) -> Path | None:
    if data_root is not None:
        return Path(data_root)
    env = os.environ.get("OVBENCH_DATA")
    return Path(env) if env else None


def build_dataset(name: str, data_root: str | Path | None = None):
    """A dataset by name: a toyland split, a catalog name (`configs/datasets/`, optionally with
    parameters such as `landdiscover50k:size=10000,seed=1` or `:list=FILE`), an official
    registration name, or the path of a dataset spec YAML."""
    if name in _toyland_splits():
        from ovbench.data.toyland import ToylandDataset

        return ToylandDataset(name)
    from ovbench.data.catalog import build_dataset as build_catalog_dataset

    return build_catalog_dataset(name, resolve_data_root(data_root))


# --------------------------------------------------------------------------- benchmarks


@dataclass
class BenchmarkSpec:
    name: str
    eval_sets: list[str]
    train_set: str | None = None
    #: model scale a method runs at on this benchmark by default (toyland: tiny)
    scale: str | None = None
    #: generated in process, needs no data root
    embedded: bool = False
    description: str = ""


def benchmark_names() -> list[str]:
    return sorted(config_files("benchmarks"))


def load_benchmark(name: str) -> BenchmarkSpec:
    """A benchmark by name (configs/benchmarks/NAME.yaml) or by the path of a benchmark YAML
    (named by its `name` key, else its file stem)."""
    spec = load_named_config(BenchmarkSpec, "benchmarks", "benchmark", name, paths=True)
    if not spec.eval_sets:
        raise ConfigError(f"benchmark {name}: eval_sets is empty")
    return spec


# --------------------------------------------------------------------------- protocols

START_POINTS = ("pretrained", "coco_checkpoint", "optional_checkpoint")


@dataclass
class ProtocolSpec:
    """How a run starts and whether it trains (configs/protocols/NAME.yaml)."""

    name: str
    train: bool = True
    #: pretrained: backbones from their weights, new modules random (no --checkpoint);
    #: coco_checkpoint: the method's COCO-Stuff checkpoint is required;
    #: optional_checkpoint: a checkpoint may be given (zero-shot evaluation)
    start_from: str = "pretrained"
    description: str = ""

    def __post_init__(self) -> None:
        if self.start_from not in START_POINTS:
            raise ConfigError(f"protocol {self.name}: start_from must be one of {', '.join(START_POINTS)}, got {self.start_from!r}")


def protocol_names() -> list[str]:
    return sorted(config_files("protocols"))


def load_protocol(name: str) -> ProtocolSpec:
    return load_named_config(ProtocolSpec, "protocols", "protocol", name)


# --------------------------------------------------------------------------- experiments


def experiment_names() -> list[str]:
    """The shipped experiments (configs/experiments/NAME.yaml: the paper's tables and figures)."""
    return sorted(config_files("experiments"))


def find_experiment(name: str | Path) -> Path:
    """An experiment file by name (`table2`) or by path; an unknown name lists the shipped ones."""
    text = str(name)
    if text not in config_files("experiments") and Path(text).is_file():
        return Path(text)
    return find_config_file("experiments", "experiment", text, paths=True)[0]
