from dataclasses import dataclass, field

import pytest

from ovbench.config import build_dataclass, config_hash, deep_merge, parse_overrides
from ovbench.errors import ConfigError


@dataclass
class Inner:
    width: int = 64
    size: list[int] = field(default_factory=lambda: [640, 640])


@dataclass
class Outer:
    name: str = "x"
    lr: float = 1e-4
    weights: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_overrides_parse_as_yaml_values():
    assert parse_overrides(["inner.width=32", "inner.size=[384, 384]", "weights=null", "name=a=b"]) == {
        "inner": {"width": 32, "size": [384, 384]},
        "weights": None,
        "name": "a=b",
    }


@pytest.mark.parametrize("bad", ["noequals", "=3", "a..b=1"])
def test_malformed_overrides(bad):
    with pytest.raises(ConfigError, match="bad override"):
        parse_overrides([bad])


def test_build_typed_with_merge():
    data = deep_merge({"inner": {"width": 8, "size": [1, 2]}}, parse_overrides(["inner.width=16", "lr=1"]))
    cfg = build_dataclass(Outer, data)
    assert cfg.inner == Inner(width=16, size=[1, 2])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_unknown_key_names_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.widht' \(did you mean 'inner\.width'\?\)"):
        build_dataclass(Outer, {"inner": {"widht": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz' \(valid keys: inner, lr, name, weights\)"):
        build_dataclass(Outer, {"zzz": 3})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"width": "wide"}}, "inner.width: expected an integer"),
        ({"inner": {"width": True}}, "inner.width: expected an integer"),
        ({"lr": "fast"}, "lr: expected a number"),
        ({"inner": 3}, "inner: expected a section"),
        ({"inner": {"size": 640}}, "inner.size: expected a list"),
        ({"weights": 5}, "weights: expected a string"),
    ],
)
def test_type_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        build_dataclass(Outer, data)


def test_config_hash_is_order_independent_and_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert config_hash(Outer()) == config_hash(Outer())


@pytest.mark.parametrize("text, number", [("1e-4", 1e-4), ("2E-6", 2e-6), (".5", 0.5), ("1_000", 1000), ("-3", -3), ("+1.5e+2", 150.0)])
def test_every_numeric_spelling_parses_where_a_number_is_expected(text, number):
    @dataclass
    class Optim:
        lr: float = 0.1
        steps: int = 1

    key = "steps" if isinstance(number, int) else "lr"
    built = getattr(build_dataclass(Optim, parse_overrides([f"{key}={text}"])), key)
    assert built == number and type(built) is type(number)


def test_number_like_text_stays_text_where_text_is_expected_and_junk_is_refused():
    @dataclass
    class Named:
        tag: str = ""
        lr: float = 0.1

    assert build_dataclass(Named, {"tag": "1e-4"}).tag == "1e-4"
    for junk in ("1e", "_1", "1__0", "abc", "1.2.3"):
        with pytest.raises(ConfigError, match="expected a number"):
            build_dataclass(Named, {"lr": junk})
    assert build_dataclass(Named, {"lr": "1e4"}).lr == 1e4


@dataclass
class _Loss:
    mode: str = "plain"
    weight: float = 1.0
    extra: int = 0


@dataclass
class _Method:
    # a method whose published loss differs from the loss class's own defaults
    loss: _Loss = field(default_factory=lambda: _Loss(mode="published", weight=20.0))
    plain_loss: _Loss = field(default_factory=_Loss)


def test_a_section_states_changes_to_the_fields_own_default():
    built = build_dataclass(_Method, {"loss": {"extra": 3}, "plain_loss": {"weight": 2.0}})
    assert built.loss == _Loss(mode="published", weight=20.0, extra=3)
    assert built.plain_loss == _Loss(weight=2.0)
    assert build_dataclass(_Method, {}).loss.mode == "published"
    with pytest.raises(ConfigError, match="loss.wieght"):
        build_dataclass(_Method, {"loss": {"wieght": 1.0}})
