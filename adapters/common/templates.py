"""Prompt-template sets for the adapters: the ones methods/ ships with its models, plus the
sets ovbench keeps as data under configs/vocab/ (e.g. `remote-sensing`)."""

from __future__ import annotations

from ovbench_methods.common.prompts import TEMPLATE_SETS
from ovbench.data.catalog import load_template_set, template_set_names
from ovbench.errors import ConfigError


def template_choices() -> list[str]:
    return sorted(set(TEMPLATE_SETS) | set(template_set_names()))


def resolve_templates(value: str | list[str]) -> str | list[str]:
    """A name ovbench_methods knows stays a name; a data set's name becomes its list of
    templates; any other name is a ConfigError listing the sets there are."""
    if isinstance(value, str) and value not in TEMPLATE_SETS:
        if value not in template_set_names():
            raise ConfigError(f"unknown template set {value!r}; expected a list of templates or one of {', '.join(template_choices())}")
        return list(load_template_set(value))
    return value
