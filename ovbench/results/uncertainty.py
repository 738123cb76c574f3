"""How sure a table cell is: percentile bootstrap over the images of an evaluation set.

mIoU is a dataset-level number (IoU per class from the summed confusion, then the mean over
classes with ground truth), so the bootstrap resamples *images* with replacement and
recomputes the summed TP / FP / FN of each replicate, never averages per-image mIoUs. The
95% interval is the 2.5th and 97.5th percentile of the replicates (percentile bootstrap).

A row of several seeds is the mean of its seeds: each replicate draws one image sample and
scores every seed's run on it, so the interval covers image sampling with the seeds held
fixed. A paired comparison of two rows draws the *same* images for both in each replicate,
which is what makes a small but consistent difference visible; the difference is significant
at 95% when its interval excludes 0. ``Avg`` replicates are the mean of the per-set
replicates, each set resampled on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ovbench.errors import DataError
from ovbench.results.per_image import PerImageCounts, miou_from_totals

__all__ = ["Interval", "bootstrap_row", "bootstrap_miou", "paired_difference", "align_runs", "DEFAULT_RESAMPLES"]

DEFAULT_RESAMPLES = 2000
#: replicates scored per block: bounds the (replicates x images) weight matrix in memory
_BLOCK = 256


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval (percent)."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    @property
    def width(self) -> float:
        return self.high - self.low

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


def align_runs(runs: Sequence[PerImageCounts], what: str) -> list[PerImageCounts]:
    """The runs with their images in one order (the first run's); refuses runs that were not
    evaluated on the same images or classes, which a paired resample could not pair."""
    if not runs:
        raise DataError(f"{what}: no per-image counts to resample")
    reference = runs[0]
    order = {name: position for position, name in enumerate(reference.image_names)}
    if len(order) != reference.num_images:
        raise DataError(f"{what}: image names repeat within one evaluation of {reference.eval_set}")
    aligned = [reference]
    for other in runs[1:]:
        if other.class_names != reference.class_names:
            raise DataError(f"{what}: {other.eval_set} was scored with different classes in two runs")
        if sorted(other.image_names) != sorted(reference.image_names):
            raise DataError(f"{what}: two runs were evaluated on different images of {reference.eval_set} "
                            f"({other.num_images} vs {reference.num_images}); they cannot be resampled together")
        permutation = np.argsort([order[name] for name in other.image_names])
        aligned.append(PerImageCounts(other.eval_set, other.class_names,
                                      [other.image_names[i] for i in permutation], other.counts[permutation]))
    return aligned


def _replicate_mious(groups: Sequence[Sequence[PerImageCounts]], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(len(groups), resamples): each group's mean-over-runs mIoU on each image resample; all
    groups and runs share the same resamples (the pairing)."""
    images = groups[0][0].num_images
    stacked = [np.stack([run.counts.reshape(images, -1) for run in group]).astype(np.float64) for group in groups]
    out = np.empty((len(groups), resamples))
    for start in range(0, resamples, _BLOCK):
        count = min(_BLOCK, resamples - start)
        draws = rng.integers(0, images, size=(count, images))
        # how often each image is drawn in each replicate: totals are then one matrix product
        offsets = (draws + np.arange(count)[:, None] * images).ravel()
        weights = np.bincount(offsets, minlength=count * images).reshape(count, images).astype(np.float64)
        for index, runs in enumerate(stacked):
            totals = np.einsum("bn,rnf->rbf", weights, runs)  # runs x replicates x (3*K)
            mious = miou_from_totals(totals.reshape(totals.shape[0], count, 3, -1))
            out[index, start:start + count] = mious.mean(axis=0)
    return out


def _interval(estimate: float, replicates: np.ndarray, level: float) -> Interval:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return Interval(estimate, math.nan, math.nan, level)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return Interval(estimate, float(low), float(high), level)


def _check(resamples: int, level: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise DataError(f"bootstrap resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise DataError(f"confidence level must lie strictly between 0 and 1, got {level!r}")


def bootstrap_miou(runs: Sequence[PerImageCounts], *, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                   seed: int = 0) -> Interval:
    """The CI of one row on one set: ``runs`` are its seeds' evaluations of that set."""
    return bootstrap_row({"set": list(runs)}, resamples=resamples, level=level, seed=seed)["set"]


def bootstrap_row(runs_by_set: dict[str, Sequence[PerImageCounts]], *, resamples: int = DEFAULT_RESAMPLES,
                  level: float = 0.95, seed: int = 0, average: str | None = None) -> dict[str, Interval]:
    """CIs of one row per evaluation set, and of their mean under the key ``average`` when given."""
    _check(resamples, level)
    rng = np.random.default_rng(seed)
    intervals: dict[str, Interval] = {}
    per_set_replicates = []
    for name, runs in runs_by_set.items():
        aligned = align_runs(list(runs), name)
        estimate = float(np.mean([run.miou() for run in aligned]))
        replicates = _replicate_mious([aligned], resamples, rng)[0]
        intervals[name] = _interval(estimate, replicates, level)
        per_set_replicates.append(replicates)
    if average is not None and intervals:
        estimate = float(np.mean([interval.estimate for interval in intervals.values()]))
        intervals[average] = _interval(estimate, np.mean(per_set_replicates, axis=0), level)
    return intervals


def paired_difference(first: dict[str, Sequence[PerImageCounts]], second: dict[str, Sequence[PerImageCounts]], *,
                      resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0,
                      average: str | None = None) -> dict[str, Interval]:
    """CIs of ``first - second`` per shared evaluation set (same image draws for both rows),
    and of the difference of their means over those sets under ``average``."""
    _check(resamples, level)
    shared = [name for name in first if name in second]
    if not shared:
        raise DataError("the two rows share no evaluation set with per-image counts")
    rng = np.random.default_rng(seed)
    intervals: dict[str, Interval] = {}
    differences = []
    for name in shared:
        aligned = align_runs(list(first[name]) + list(second[name]), name)
        split = len(first[name])
        group_a, group_b = aligned[:split], aligned[split:]
        estimate = float(np.mean([r.miou() for r in group_a]) - np.mean([r.miou() for r in group_b]))
        replicates = _replicate_mious([group_a, group_b], resamples, rng)
        difference = replicates[0] - replicates[1]
        intervals[name] = _interval(estimate, difference, level)
        differences.append(difference)
    if average is not None:
        estimate = float(np.mean([intervals[name].estimate for name in shared]))
        intervals[average] = _interval(estimate, np.mean(differences, axis=0), level)
    return intervals
