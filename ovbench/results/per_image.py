"""Per-image counts beside the results store: what a bootstrap over images needs.

A record holds dataset-level metrics. To tell two methods apart one needs how those metrics
vary with the images drawn, and mIoU is not a mean over images: it is computed from the
summed confusion. Summed true positives, false positives and false negatives per class are
enough to recompute it (IoU = TP / (TP + FP + FN), over classes with TP + FN > 0), so each
evaluation keeps, per image, those three counts per class: an (N, 3, K) integer array, not N
confusion matrices.

Layout: for a store ``.../results.jsonl`` the counts of run R on set S live in
``.../results.per_image/R/<S>.npz`` (compressed numpy arrays: counts, image names, class
names). The record points at its file and carries the file's SHA-256 in
``extra.per_image``. One file per (run, evaluation set): a resumed or repeated evaluation
replaces it, never adds a second, so the store's "latest record wins" rule and the file
always agree; a digest that does not match says the two went out of step.

Write order: the file is staged under a temporary name, the record is appended, and only
then is the file moved into place. A failed append (full disk) removes the staged file, so a
failed evaluation leaves neither.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ovbench.errors import DataError, StorageError, describe_os_error
from ovbench.fileio import TEMP_PREFIX, TEMP_SUFFIX

__all__ = ["PerImageCounts", "StagedCounts", "load_record_counts", "per_image_dir", "stage_counts"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class PerImageCounts:
    """One evaluation's per-image counts: ``counts[i, 0|1|2, k]`` = TP | FP | FN of class k
    on image i (valid pixels only, as in the confusion matrix)."""

    eval_set: str
    class_names: list[str]
    image_names: list[str]
    counts: np.ndarray

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64)
        expected = (len(self.image_names), 3, len(self.class_names))
        if self.counts.shape != expected:
            raise DataError(f"per-image counts of {self.eval_set} have shape {self.counts.shape}, expected {expected}")

    @property
    def num_images(self) -> int:
        return len(self.image_names)

    def totals(self) -> np.ndarray:
        """(3, K) summed TP, FP, FN: the dataset-level counts."""
        return self.counts.sum(axis=0)

    def miou(self) -> float:
        """mIoU (percent) of the whole set, as the confusion matrix computes it."""
        return float(miou_from_totals(self.totals()[None])[0])

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        # the smallest unsigned type that holds every count keeps the file compact
        dtype = np.uint32 if self.counts.size == 0 or int(self.counts.max()) < 2**32 else np.int64
        np.savez_compressed(
            buffer, counts=self.counts.astype(dtype), image_names=np.asarray(self.image_names, dtype=str),
            class_names=np.asarray(self.class_names, dtype=str), eval_set=np.asarray(self.eval_set),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> PerImageCounts:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                return cls(
                    eval_set=str(arrays["eval_set"]), class_names=[str(n) for n in arrays["class_names"]],
                    image_names=[str(n) for n in arrays["image_names"]], counts=arrays["counts"].astype(np.int64),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{where}: cannot read per-image counts ({exc})") from None


def miou_from_totals(totals: np.ndarray) -> np.ndarray:
    """mIoU in percent of each (3, K) TP/FP/FN block of ``totals`` (..., 3, K): the mean IoU
    over classes with ground truth (TP + FN > 0); NaN where no class has any."""
    true_positive, false_positive, false_negative = totals[..., 0, :], totals[..., 1, :], totals[..., 2, :]
    has_gt = (true_positive + false_negative) > 0
    union = true_positive + false_positive + false_negative
    iou = np.where(has_gt, true_positive / np.maximum(union, 1), 0.0)
    classes = has_gt.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(classes > 0, 100.0 * iou.sum(axis=-1) / classes, np.nan)


def per_image_dir(store_path: str | Path) -> Path:
    """Where the per-image files of a store live: ``results.jsonl`` -> ``results.per_image/``."""
    store_path = Path(store_path)
    return store_path.parent / f"{store_path.stem}.per_image"


def _relative_path(run_id: str, eval_set: str) -> str:
    safe = _SAFE.sub("_", eval_set).strip("._") or "set"
    if safe != eval_set:
        # parametrised names (ld50k:size=1000,seed=0) must not collide once sanitised
        safe += "-" + hashlib.sha256(eval_set.encode("utf-8")).hexdigest()[:8]
    return f"{_SAFE.sub('_', run_id)}/{safe}.npz"


@dataclass
class StagedCounts:
    """A per-image file written under a temporary name, waiting for its record."""

    temp_path: Path
    final_path: Path
    #: what the record keeps in ``extra.per_image``
    reference: dict[str, Any]

    def commit(self) -> None:
        """Move the file into place (after its record was appended)."""
        try:
            os.replace(self.temp_path, self.final_path)
        except OSError as exc:
            self.discard()
            raise StorageError(describe_os_error(exc, "cannot write per-image counts")) from None

    def discard(self) -> None:
        self.temp_path.unlink(missing_ok=True)


def stage_counts(store_path: str | Path, run_id: str, counts: PerImageCounts) -> StagedCounts:
    """Write ``counts`` beside the store under a temporary name; `StagedCounts.commit` it
    once the record is appended, `StagedCounts.discard` it when the append failed."""
    relative = _relative_path(run_id, counts.eval_set)
    final = per_image_dir(store_path) / relative
    data = counts.to_bytes()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write the per-image counts beside results file {store_path}: {exc.strerror or exc}; "
                           "no record was written and the store is unchanged") from None
    reference = {"file": relative, "sha256": hashlib.sha256(data).hexdigest(), "images": counts.num_images}
    return StagedCounts(Path(temp), final, reference)


def load_record_counts(store_path: str | Path, record: dict) -> PerImageCounts:
    """The per-image counts a record points at; one clear error when it has none, the file is
    missing, or the file no longer matches the record."""
    extra = record.get("extra") if isinstance(record.get("extra"), dict) else {}
    reference = extra.get("per_image")
    name = f"run {record.get('run_id')} on {record.get('eval_set')}"
    if not isinstance(reference, dict) or not isinstance(reference.get("file"), str):
        raise DataError(f"{name}: the record has no per-image counts (it predates them); evaluate the run again to get them")
    path = per_image_dir(store_path) / reference["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{name}: per-image counts {path} are missing") from None
    except OSError as exc:
        raise DataError(describe_os_error(exc, "cannot read per-image counts")) from None
    if hashlib.sha256(data).hexdigest() != reference.get("sha256"):
        raise DataError(f"{name}: per-image counts {path} do not match the record (a later evaluation replaced them); "
                        "evaluate the run again")
    return PerImageCounts.from_bytes(data, str(path))
