"""Typed configuration: YAML files under `configs/`, dotted `key=value` overrides, and
dataclass construction that rejects unknown keys with a suggestion."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar, Union

import yaml

from ovbench.errors import ConfigError, closest_name, unknown_name_error

T = TypeVar("T")


def configs_dir() -> Path:
    """The folder holding `methods/`, `datasets/`, `benchmarks/` YAML files.

    `OVBENCH_CONFIGS` points elsewhere (a user's own config tree); by default it is the
    package `ovbench.configs`: the repository's `configs/` folder, installed inside the
    distribution (an editable install maps it back to the checkout).
    """
    override = os.environ.get("OVBENCH_CONFIGS")
    if override:
        return Path(override)
    return _shipped_configs_dir()


@functools.lru_cache(maxsize=1)
def _shipped_configs_dir() -> Path:
    spec = importlib.util.find_spec("ovbench.configs")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError("the installed ovbench has no configs (ovbench.configs is missing); reinstall it, or set OVBENCH_CONFIGS=DIR")
    return Path(locations[0])


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        reason = str(exc).replace("\n", " ")
        raise ConfigError(f"{path}: cannot parse YAML ({reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- named config files

YAML_SUFFIXES = (".yaml", ".yml")


def is_yaml_path(name: str | Path) -> bool:
    """Whether a name given for a config is meant as the path of a YAML file."""
    return str(name).endswith(YAML_SUFFIXES)


def config_files(folder: str, recursive: bool = False) -> dict[str, Path]:
    """name -> YAML file under `configs_dir()/folder` (none when the folder is missing).

    Names are file stems; with `recursive`, paths relative to the folder without the suffix
    (`gsnet/E` for `configs/methods/gsnet/E.yaml`)."""
    root = configs_dir() / folder
    if not root.is_dir():
        return {}
    if recursive:
        return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def yaml_file(name: str | Path, kind: str) -> Path:
    """The YAML file a path names; a ConfigError saying what is missing when there is none."""
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {name}")
    return path


def find_config_file(folder: str, kind: str, name: str, paths: bool = False) -> tuple[Path, str]:
    """(file, name) of a named config: `configs/FOLDER/NAME.yaml`, or with `paths` the path of
    a YAML file (named by its stem). An unknown name is a RegistryError listing the names."""
    files = config_files(folder)
    if name in files:
        return files[name], name
    if paths and is_yaml_path(name):
        path = yaml_file(name, kind)
        return path, path.stem
    raise unknown_name_error(kind, name, files)


@contextlib.contextmanager
def naming_file(path: str | Path, errors: tuple[type[Exception], ...] = (ConfigError,)):
    """Errors about a config file's content name the file, so the user knows what to edit."""
    try:
        yield
    except errors as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from None


def load_config_file(cls: type[T], path: str | Path, kind: str, name: str) -> T:
    """The dataclass `cls` from a config file; `name` fills the `name` key the file leaves out."""
    raw = load_yaml(path)
    raw.setdefault("name", name)
    return build_dataclass(cls, raw, f"{kind} {name}")


def load_named_config(cls: type[T], folder: str, kind: str, name: str, paths: bool = False) -> T:
    """`find_config_file` + `load_config_file`: a config by name (or, with `paths`, by the path
    of a YAML file, whose errors then name that file)."""
    path, found = find_config_file(folder, kind, name, paths=paths)
    if found == name:  # by name: errors say "benchmark NAME: ..."
        return load_config_file(cls, path, kind, found)
    with naming_file(path):
        return load_config_file(cls, path, kind, found)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `update` laid over `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["model.width=64", "eval.batch_size=2"]` -> a nested dict; values parse as YAML
    scalars or flow collections (`[640, 640]`, `null`, `true`)."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override {item!r}: expected dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"bad override {item!r}: {part!r} is set as a value and a section")
            node = child
        node[parts[-1]] = value
    return nested


# YAML 1.1 (PyYAML) reads "1e-4" and "2E-6" as strings: it wants a dot before the exponent.
# Where a number is expected, every spelling Python accepts as a decimal literal counts.
_NUMBER = re.compile(r"^[+-]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?$")


def parse_number(value: Any) -> Any:
    """`value` as an int or float when it is a string spelling a number ("1e-4", "2E-6",
    ".5", "1_000"); anything else is returned unchanged."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d(?:_?\d)*", text):
            return int(text)
        return float(text)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where lossless (int -> float)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) or value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return build_dataclass(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            # tuple[int, int]: exactly that many values, each of its own type
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected a list of {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        value = parse_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        value = parse_number(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # train.iters=1e4
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def unknown_key_error(key: str, valid: Iterable[str], where: str = "") -> ConfigError:
    valid = sorted(valid)
    full = f"{where}.{key}" if where else key
    close = closest_name(key, valid)
    if close is not None:
        hint = f"did you mean '{f'{where}.{close}' if where else close}'?"
    else:
        hint = f"valid keys: {', '.join(valid)}" if valid else "this section takes no keys"
    return ConfigError(f"unknown config key '{full}' ({hint})")


def build_dataclass(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Construct the dataclass `cls` from a mapping, checking keys and value types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key_error(str(key), fields, where)
        kwargs[key] = _coerce(_over_field_default(fields[key], value), hints[key], f"{where}.{key}" if where else key)
    try:
        instance = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None
    return instance


def _over_field_default(field: dataclasses.Field, value: Any) -> Any:
    """A section given as a mapping for a field whose default is a dataclass: the mapping
    states changes to that default (a method's published criterion, say), not to the
    section class's own defaults."""
    if isinstance(value, dict) and field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            plain = {f.name: to_plain(getattr(default, f.name)) for f in dataclasses.fields(default) if f.init}
            return deep_merge(plain, value)
    return value


def check_instance(obj: T, where: str = "") -> T:
    """A dataclass built in code, checked as if it had come from a file (types, `Literal`
    choices, fixed-length tuples, its own `__post_init__`); returns the checked copy."""
    data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
    return build_dataclass(type(obj), data, where)


def to_plain(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists: the YAML/JSON form of a resolved config."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def config_hash(obj: Any) -> str:
    """A short, stable digest of a resolved config (key order does not matter)."""
    canonical = json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
