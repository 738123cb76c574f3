"""The pixel-probe model: plain torch, no harness imports.

Images go through a small residual conv encoder to one unit-length embedding per output
pixel; each class (its name and synonyms, in every prompt template) is a hashed bag of
character trigrams through a learned projection, so any name, seen in training or not, gets
an embedding. The logits are the scaled cosines between the two: (N,T,h/s,w/s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.trigrams import trigram_bag
from ovbench_methods.pixel_probe.config import PixelProbeConfig

__all__ = ["PixelProbeModel"]


def _norm(config: PixelProbeConfig, channels: int) -> nn.Module:
    return nn.GroupNorm(config.groups, channels) if config.norm == "group" else nn.Identity()


class ResidualBlock(nn.Module):
    def __init__(self, config: PixelProbeConfig, dilation: int):
        super().__init__()
        w = config.width
        self.body = nn.Sequential(
            nn.Conv2d(w, w, 3, padding=dilation, dilation=dilation), _norm(config, w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), _norm(config, w),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class PixelProbeModel(nn.Module):
    def __init__(self, config: PixelProbeConfig):
        super().__init__()
        self.config = config
        w = config.width
        # one stride-2 conv per factor of 2 of output_stride (a stride-1 conv for 1)
        strides = [2] * int(math.log2(config.output_stride)) or [1]
        stem: list[nn.Module] = []
        for i, stride in enumerate(strides):
            stem += [nn.Conv2d(3 if i == 0 else w, w, 3, stride=stride, padding=1), _norm(config, w), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.Sequential(*(ResidualBlock(config, 2 ** (i % 3)) for i in range(config.depth)))
        self.image_head = nn.Conv2d(w, config.embed_dim, 1)
        self.text_head = nn.Sequential(
            nn.Linear(config.trigram_bins, config.embed_dim), nn.ReLU(), nn.Linear(config.embed_dim, config.embed_dim)
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale)))

    def encode_images(self, images: Tensor) -> Tensor:
        """(N,3,h,w) RGB in 0..255 -> (N,E,h/s,w/s) unit-length pixel embeddings."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise MethodConfigError(f"expected images of shape (N,3,h,w), got {tuple(images.shape)}")
        if min(images.shape[-2:]) < self.config.output_stride:
            raise MethodConfigError(f"images of {tuple(images.shape[-2:])} are smaller than output_stride {self.config.output_stride}")
        x = self.blocks(self.stem(images / 127.5 - 1.0))
        return F.normalize(self.image_head(x), dim=1)

    def encode_classes(self, class_names: Sequence[Sequence[str]]) -> Tensor:
        """T classes, each (name, *synonyms) -> (T,E) unit-length class embeddings."""
        if not class_names or any(not names or not all(isinstance(n, str) for n in names) for names in class_names):
            raise MethodConfigError("expected at least one class, each with at least one name")
        bins = self.config.trigram_bins
        bags = torch.stack([
            torch.stack([trigram_bag(t.format(n), bins) for t in self.config.templates for n in names]).mean(0)
            for names in class_names
        ])
        return F.normalize(self.text_head(bags.to(self.log_scale.device)), dim=-1)

    def forward(self, images: Tensor, class_names: Sequence[Sequence[str]]) -> Tensor:
        """(N,3,h,w) RGB in 0..255, T classes -> (N,T,h/s,w/s) scaled cosine logits."""
        pixels = self.encode_images(images)
        classes = self.encode_classes(class_names)
        return torch.einsum("nehw,te->nthw", pixels, classes) * self.log_scale.exp()
