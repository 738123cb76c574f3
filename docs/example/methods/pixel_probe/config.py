"""Settings of pixel-probe. The defaults are the method's own setting; its YAML
(configs/methods/pixel-probe.yaml) states only what a scale changes, plus the recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ovbench_methods.common.errors import MethodConfigError

__all__ = ["PixelProbeConfig"]


@dataclass
class PixelProbeConfig:
    #: channels of the convolutional image encoder.
    width: int = 64
    #: residual blocks after the stem (dilations 1, 2, 4, 1, 2, 4, ...).
    depth: int = 4
    #: how much the stem downsamples: logits come at 1/output_stride of the view.
    output_stride: Literal[1, 2, 4] = 4
    #: normalisation inside the encoder ("group": GroupNorm with `groups` groups).
    norm: Literal["group", "none"] = "group"
    groups: int = 8
    #: dimension of the space image features and class embeddings meet in.
    embed_dim: int = 64
    #: hash bins of the character-trigram bag each class name is encoded as.
    trigram_bins: int = 512
    #: prompt templates, each with one "{}"; a class is the mean over templates x its names.
    templates: tuple[str, ...] = ("{}",)
    #: initial factor on the cosine scores (learned, kept in log space).
    logit_scale: float = 10.0

    def __post_init__(self) -> None:
        for name in ("width", "embed_dim", "trigram_bins", "groups"):
            if getattr(self, name) < 1:
                raise MethodConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.depth < 0:
            raise MethodConfigError(f"depth must be >= 0, got {self.depth}")
        if self.norm == "group" and self.width % self.groups:
            raise MethodConfigError(f"width {self.width} is not divisible by groups {self.groups} (norm: group)")
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise MethodConfigError(f"templates must be a non-empty list of strings with one '{{}}' each, got {list(self.templates)}")
        if not self.logit_scale > 0:
            raise MethodConfigError(f"logit_scale must be positive, got {self.logit_scale}")
