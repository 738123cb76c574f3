"""The contract every dataset reader satisfies (folder datasets, toyland, ...)."""

from __future__ import annotations

from typing import Protocol, TypedDict, runtime_checkable

import numpy as np

from ovbench.data.vocabulary import Vocabulary


class Sample(TypedDict):
    image: np.ndarray  # uint8 (H, W, 3) RGB
    mask: np.ndarray  # int64 (H, W): evaluator class ids, or `ignore_index`
    name: str


@runtime_checkable
class SegmentationDataset(Protocol):
    """A sized, indexable source of samples with its vocabulary and ignore rule.

    `vocabulary` holds the text queries offered to a model (prediction channel i is
    vocabulary class i). `class_names` lists the evaluator's classes, which may extend the
    vocabulary with classes that are never queried (Potsdam clutter, FLAIR other); mask
    values index `class_names`. Pixels equal to `ignore_index` are left out of the metric.
    """

    name: str
    vocabulary: Vocabulary
    class_names: list[str]
    ignore_index: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...
