"""pixel-probe: the example method of docs/adding-a-method.md, a small trainable
open-vocabulary segmenter (conv encoder + character-trigram class embeddings)."""

from ovbench_methods.pixel_probe.config import PixelProbeConfig
from ovbench_methods.pixel_probe.model import PixelProbeModel

__all__ = ["PixelProbeConfig", "PixelProbeModel"]
