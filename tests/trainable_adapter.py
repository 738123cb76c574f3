"""A small trainable method, defined by the tests, that drives the real training engine.

It has the shape of the cost-volume methods at toy size: a convolutional image encoder, a
"text" embedding of each class name (a fixed hashed character-trigram bag through a learned
projection, so unseen names still get an embedding), cosine-like scores per pixel and the
per-pixel BCE of CAT-Seg/GSNet with ignored pixels as all-negative targets. GroupNorm, not
BatchNorm, so several processes compute exactly what one process does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ovbench.interface import OpenVocabSegmenter
from ovbench_methods.common.trigrams import trigram_bag

TRIGRAM_BINS = 256


@dataclass
class TinyTrainableConfig:
    width: int = 16
    embed_dim: int = 16
    #: multiply the loss by NaN from this iteration on (tests of divergence handling)
    nan_after: int | None = None


class TinyTrainableSegmenter(OpenVocabSegmenter):
    method_name = "tiny-trainable"
    config_class = TinyTrainableConfig

    def __init__(self, config: TinyTrainableConfig, inference=None):
        super().__init__(inference)
        self.config = config
        w = config.width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1), nn.GroupNorm(4, w), nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.GroupNorm(4, w), nn.ReLU(),
            nn.Conv2d(w, config.embed_dim, 1),
        )
        self.text_projection = nn.Linear(TRIGRAM_BINS, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward_logits(self, images, vocabulary):
        pixels = (images / 127.5) - 1.0
        features = F.normalize(self.encoder(pixels), dim=1)
        text = torch.stack([trigram_bag(c.name) for c in vocabulary]).to(images.device)
        classes = F.normalize(self.text_projection(text), dim=-1)
        return torch.einsum("nchw,tc->nthw", features, classes) * self.logit_scale.exp()

    def loss(self, images, targets, vocabulary):
        logits = F.interpolate(self.forward_logits(images, vocabulary), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        valid = (targets >= 0) & (targets < logits.shape[1])
        one_hot = F.one_hot(targets.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).float()
        one_hot = one_hot * valid.unsqueeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, one_hot)
        if self.training:
            self.steps += 1
            if self.config.nan_after is not None and int(self.steps) > self.config.nan_after:
                loss = loss * float("nan")
        return {"loss_bce": loss}
