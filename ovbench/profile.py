"""Model size at the published scale: parameter counts per part, trainable and frozen.

Backbone weights are never downloaded here: every `*_weights` setting of the method's model
config is set to null, so the published architecture is built with random weights (parameter
counts do not depend on the values).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from ovbench.registry import ResolvedMethod, build_segmenter, resolve_method


@dataclass
class PartCount:
    name: str
    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


@dataclass
class ModelProfile:
    method: str
    scale: str | None
    parts: list[PartCount]

    @property
    def trainable(self) -> int:
        return sum(p.trainable for p in self.parts)

    @property
    def frozen(self) -> int:
        return sum(p.frozen for p in self.parts)


def count_parameters(module: nn.Module, depth: int = 1) -> list[PartCount]:
    """Counts per submodule down to `depth` levels (shared parameters counted once, where first met)."""
    seen: set[int] = set()
    parts: list[PartCount] = []

    def visit(prefix: str, mod: nn.Module, level: int) -> None:
        if level == depth or not list(mod.named_children()):
            trainable = frozen = 0
            for param in mod.parameters():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                if param.requires_grad:
                    trainable += param.numel()
                else:
                    frozen += param.numel()
            if trainable or frozen:
                parts.append(PartCount(prefix or "(model)", trainable, frozen))
            return
        own_trainable = own_frozen = 0
        for param in mod.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                if param.requires_grad:
                    own_trainable += param.numel()
                else:
                    own_frozen += param.numel()
        if own_trainable or own_frozen:
            parts.append(PartCount(f"{prefix}(own)" if prefix else "(own)", own_trainable, own_frozen))
        for name, child in mod.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child, level + 1)

    visit("", module, 0)
    return parts


def random_weights_overrides(resolved: ResolvedMethod) -> dict:
    """model.<x>_weights = null for every weights setting the method's config has."""
    config = resolved.model_config
    if config is None or not dataclasses.is_dataclass(config):
        return {}
    fields = [f.name for f in dataclasses.fields(config) if f.name.endswith("_weights")]
    return {"model": {name: None for name in fields}} if fields else {}


def profile_method(method: str, scale: str | None = None, depth: int = 1) -> ModelProfile:
    resolved = resolve_method(method, scale=scale)
    overrides = random_weights_overrides(resolved)
    if overrides:
        resolved = resolve_method(method, scale=scale, overrides=overrides)
    segmenter = build_segmenter(resolved)
    return ModelProfile(method, scale, count_parameters(segmenter, depth=depth))
