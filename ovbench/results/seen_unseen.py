"""Seen and unseen classes of an evaluation set, relative to what a run was trained on.

Open-vocabulary results mix classes the model saw named during training with classes it did
not. A class of an evaluation set counts as *seen* when one of its names (the evaluator's
class name, or the query and synonyms it is asked with) equals a name of the training
vocabulary, after lower-casing, treating '-', '_' and runs of spaces alike
("impervious-surface" = "impervious surface") and folding a plain plural ("buildings" =
"building"). Everything else is *unseen*. The training
vocabulary is the run's training set's; a ``finetune`` run also saw COCO-Stuff's names (its
starting weights were trained on them). ``zeroshot`` runs saw no segmentation vocabulary.

The groups' mIoUs are the means of the per-class IoUs of each group (classes without ground
truth drop out, as in mIoU), and hIoU their harmonic mean, the usual summary of the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ovbench.errors import OvbenchError

__all__ = ["ClassSplit", "harmonic_mean", "normalise_name", "split_classes", "training_names"]

#: where a protocol's starting weights learnt extra names
_PROTOCOL_VOCABULARIES = {"finetune": ("coco-stuff",)}


def normalise_name(name: str) -> str:
    words = re.sub(r"[\s_-]+", " ", str(name).strip().lower()).split(" ")
    # a plain plural names the same class ("buildings" = "building"); "grass" keeps its s
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


@lru_cache(maxsize=64)
def _dataset_names(dataset: str) -> tuple[tuple[str, ...], ...]:
    """Per evaluator class of ``dataset``: every name it goes by (normalised)."""
    from ovbench.data.catalog import dataset_vocabulary

    vocabulary, evaluator = dataset_vocabulary(dataset)
    names = []
    for index, class_name in enumerate(evaluator):
        own = {normalise_name(class_name)}
        if index < len(vocabulary):
            own.update(normalise_name(n) for n in vocabulary[index].all_names)
        names.append(tuple(sorted(own)))
    return tuple(names)


@lru_cache(maxsize=64)
def training_names(train_set: str | None, protocol: str | None) -> frozenset[str]:
    """Every (normalised) class name a run of ``protocol`` on ``train_set`` was trained with."""
    from ovbench.data.catalog import load_vocabulary

    names: set[str] = set()
    if train_set and protocol != "zeroshot":
        for own in _dataset_names(train_set):
            names.update(own)
    for vocabulary in _PROTOCOL_VOCABULARIES.get(protocol or "", ()):
        for entry in load_vocabulary(vocabulary):
            names.update(normalise_name(n) for n in entry.all_names)
    return frozenset(names)


@dataclass(frozen=True)
class ClassSplit:
    eval_set: str
    seen: tuple[str, ...]
    unseen: tuple[str, ...]


def split_classes(eval_set: str, train_set: str | None, protocol: str | None) -> ClassSplit:
    """The evaluator classes of ``eval_set`` (their names as records key them) split into
    seen and unseen for a run of ``protocol`` trained on ``train_set``."""
    from ovbench.data.catalog import dataset_vocabulary

    try:
        _, evaluator = dataset_vocabulary(eval_set)
        known = training_names(train_set, protocol)
        names = _dataset_names(eval_set)
    except OvbenchError as exc:
        raise OvbenchError(f"cannot tell seen from unseen classes of {eval_set}: {exc}") from None
    seen = tuple(cls for cls, own in zip(evaluator, names) if known.intersection(own))
    unseen = tuple(cls for cls in evaluator if cls not in seen)
    return ClassSplit(eval_set, seen, unseen)


def group_miou(per_class_iou: dict[str, float | None], classes: tuple[str, ...]) -> float | None:
    values = [per_class_iou[name] for name in classes if per_class_iou.get(name) is not None]
    return sum(values) / len(values) if values else None


def harmonic_mean(first: float | None, second: float | None) -> float | None:
    if first is None or second is None:
        return None
    if first + second == 0:
        return 0.0
    return 2.0 * first * second / (first + second)
