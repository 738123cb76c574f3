"""Class colours shared by every picture ovbench draws (overlays, visual comparisons, legends).

A class keeps its colour wherever it is drawn in one figure because colours are assigned by
position in the vocabulary. The first twenty are well-separated hand-picked hues; beyond that
hues step by the golden angle so that neighbours in the list still look different.
"""

from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["IGNORE_COLOUR", "class_colours", "colourise"]

#: pixels outside the metric (ignore index, nodata) are drawn black
IGNORE_COLOUR = (0, 0, 0)

_BASE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)
_GOLDEN = 0.6180339887498949


def class_colours(count: int) -> np.ndarray:
    """``count`` RGB colours as uint8 (count, 3), the same for the same count every time."""
    if count < 0:
        raise ValueError(f"class count must be >= 0, got {count}")
    colours = list(_BASE[:count])
    for index in range(len(colours), count):
        hue = (index * _GOLDEN) % 1.0
        value = 0.95 if index % 2 else 0.75
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, value)
        colours.append((round(red * 255), round(green * 255), round(blue * 255)))
    return np.asarray(colours, dtype=np.uint8).reshape(count, 3)


def colourise(labels: np.ndarray, count: int, ignore_index: int | None = None) -> np.ndarray:
    """A label map (H,W) of class indices as an RGB image (H,W,3) uint8; indices outside
    ``0..count-1`` (and ``ignore_index``) are drawn in `IGNORE_COLOUR`."""
    labels = np.asarray(labels)
    table = np.concatenate([class_colours(count), np.asarray([IGNORE_COLOUR], dtype=np.uint8)])
    index = np.where((labels >= 0) & (labels < count), labels, count)
    if ignore_index is not None:
        index = np.where(labels == ignore_index, count, index)
    return table[index]
