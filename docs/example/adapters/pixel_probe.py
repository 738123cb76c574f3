"""Adapter for `pixel-probe`: binds `ovbench_methods.pixel_probe` to the harness interface.

It turns a `Vocabulary` into the name tuples the model takes and targets into a per-pixel
cross-entropy; the settings are `PixelProbeConfig`, defined with the model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ovbench.data.vocabulary import Vocabulary
from ovbench.interface import IGNORE_INDEX, ConfiguredSegmenter
from ovbench_methods.pixel_probe.config import PixelProbeConfig
from ovbench_methods.pixel_probe.model import PixelProbeModel

__all__ = ["PixelProbeConfig", "PixelProbeSegmenter"]


class PixelProbeSegmenter(ConfiguredSegmenter):
    """A conv encoder scored against character-trigram class embeddings."""

    method_name = "pixel-probe"
    config_class = PixelProbeConfig
    model: PixelProbeModel

    def build_model(self, config: PixelProbeConfig, trusted: bool) -> PixelProbeModel:
        return PixelProbeModel(config)  # no weight files to load, so `trusted` has nothing to do

    def forward_logits(self, images: Tensor, vocabulary: Vocabulary) -> Tensor:
        """(N,3,h,w) float RGB in 0..255 -> (N,T,h/s,w/s) logits (s = output_stride)."""
        return self.model(images, [cls.all_names for cls in vocabulary])

    def loss(self, images: Tensor, targets: Tensor, vocabulary: Vocabulary) -> dict[str, Tensor]:
        """Per-pixel cross-entropy over the T classes; IGNORE_INDEX and ids >= T are ignored."""
        logits = self.forward_logits(images, vocabulary)
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        targets = targets.masked_fill(targets >= logits.shape[1], IGNORE_INDEX)
        valid = (targets != IGNORE_INDEX).sum()
        # a sum over valid pixels, not a mean: a batch with every pixel ignored gives 0, not NaN
        loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum") / valid.clamp(min=1)
        return {"loss_ce": loss}
