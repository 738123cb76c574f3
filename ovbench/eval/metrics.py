"""Semantic-segmentation metrics with detectron2 ``SemSegEvaluator`` semantics.

The published OVRSISS numbers were computed by detectron2's evaluator, so this module
reproduces its conventions rather than any other library's:

- one confusion matrix over the evaluator's classes, counting only pixels whose ground truth
  is not the ignore label (predictions on ignored pixels never count against anything);
- per class, IoU = TP / (GT + Pred - TP) and Acc = TP / GT;
- mIoU and mAcc average only over classes that have ground-truth pixels, which is how
  catch-all or unlabeled classes (Potsdam clutter, FLAIR other, FloodNet Background) drop
  out; a prediction of such a class on a valid pixel is still a miss for the true class;
- fwIoU weights each counted class's IoU by its share of valid pixels; pAcc = sum TP / valid;
- everything in percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovbench.errors import DataError

__all__ = ["ConfusionMatrix", "LabelError", "SegmentationMetrics"]


class LabelError(DataError, ValueError):
    """Ground truth that cannot be scored.

    Raised for a ground-truth value that is neither an evaluator class nor the ignore label
    (usually a wrong ignore index or an unmapped mask value in a dataset spec), and for a
    matrix with no valid pixel at all. It is a `DataError` so the CLI reports it as one line,
    and a `ValueError` for callers that treat it as bad input to a function.
    """


@dataclass
class SegmentationMetrics:
    """Scores of one evaluation set, all in percent.

    ``per_class_iou`` / ``per_class_acc`` map each evaluator class name to its score, or to
    None for a class without ground-truth pixels (it takes no part in the means).
    """

    mIoU: float
    mAcc: float
    pAcc: float
    fwIoU: float
    per_class_iou: dict[str, float | None]
    per_class_acc: dict[str, float | None]
    valid_pixels: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (plain floats, ints, None; no NaN)."""
        return {
            "mIoU": float(self.mIoU),
            "mAcc": float(self.mAcc),
            "pAcc": float(self.pAcc),
            "fwIoU": float(self.fwIoU),
            "per_class_iou": {name: _optional_float(v) for name, v in self.per_class_iou.items()},
            "per_class_acc": {name: _optional_float(v) for name, v in self.per_class_acc.items()},
            "valid_pixels": int(self.valid_pixels),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmentationMetrics":
        """Inverse of `to_dict`, e.g. for records read back from the results store."""
        missing = [key for key in _METRIC_KEYS if key not in data]
        if missing:
            raise DataError(f"metrics record lacks key(s): {', '.join(missing)}")
        return cls(
            mIoU=float(data["mIoU"]),
            mAcc=float(data["mAcc"]),
            pAcc=float(data["pAcc"]),
            fwIoU=float(data["fwIoU"]),
            per_class_iou={str(k): _optional_float(v) for k, v in data["per_class_iou"].items()},
            per_class_acc={str(k): _optional_float(v) for k, v in data["per_class_acc"].items()},
            valid_pixels=int(data["valid_pixels"]),
        )


_METRIC_KEYS = ("mIoU", "mAcc", "pAcc", "fwIoU", "per_class_iou", "per_class_acc", "valid_pixels")


def _optional_float(value: float | None) -> float | None:
    """NaN and None both mean "no ground truth"; JSON has no NaN, so both become None."""
    if value is None or math.isnan(value):
        return None
    return float(value)


class ConfusionMatrix:
    """A streaming confusion matrix over ``num_classes`` evaluator classes.

    ``matrix[g, p]`` counts valid pixels (ground truth != ``ignore_index``) whose ground
    truth is class ``g`` and prediction is class ``p``. ``ignore_index`` may lie inside the
    class range (LD50K and FloodNet ignore 0, Potsdam 5) or outside it (FAST ignores 255).

    Call `update` once per batch of label maps, `merge` to add another matrix's counts
    (e.g. gathered from other processes), and `compute` for the metrics.
    """

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str = "cpu"):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.device = torch.device(device)
        self.matrix: torch.Tensor = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=self.device)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"valid_pixels={int(self.matrix.sum())})"
        )

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
               *, per_image: bool = False) -> np.ndarray | None:
        """Add one (H,W) label map or a (B,H,W) batch of them.

        With ``per_image=True`` it also returns each image's own counts as an int64 array
        (B, 3, num_classes): true positives, false positives and false negatives per class
        over that image's valid pixels. Summed over images they give the dataset's counts,
        which is all a bootstrap over images needs to recompute mIoU (see
        `ovbench.results.per_image`).

        ``pred`` holds class ids in [0, num_classes) (argmax over the offered classes, which
        may be fewer than the evaluator's); ``target`` holds ground-truth class ids or the
        ignore label. Both are integer arrays of the same shape, on any device (they are
        moved to the matrix's device).
        """
        pred = _as_integer_tensor(pred, "pred", self.device)
        target = _as_integer_tensor(target, "target", self.device)
        if pred.shape != target.shape:
            raise ValueError(
                f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}"
            )
        if pred.ndim not in (2, 3):
            raise ValueError(f"expected (H,W) or (B,H,W) label maps, got shape {tuple(pred.shape)}")
        batched = pred.ndim == 3
        images = pred.shape[0] if batched else 1
        if pred.numel() == 0:
            return np.zeros((images, 3, self.num_classes), dtype=np.int64) if per_image else None

        k = self.num_classes
        lowest, highest = torch.aminmax(pred)
        lowest, highest = int(lowest), int(highest)
        if lowest < 0 or highest >= k:
            bad = lowest if lowest < 0 else highest
            raise ValueError(f"pred holds class id {bad}, outside [0, {k}) for {k} evaluator classes")

        # Every pixel becomes one bin of a k x (k+1) grid: index = gt*(k+1) + pred. With pred
        # already known to lie in [0, k), column k of the grid is never hit by a valid pixel,
        # so ignored pixels can be parked in bin k (row 0, column k) instead of being removed
        # with a boolean-mask copy. Bad ground truth is looked for explicitly: with per-image
        # grids side by side, a value past the class range would land in the next image's grid.
        stride = k + 1
        flat_pred = pred.reshape(-1)
        flat_target = target.reshape(-1)
        bins = torch.add(flat_pred, flat_target, alpha=stride)
        bins.masked_fill_(flat_target == self.ignore_index, k)
        # a bad ground-truth value leaves [0, k*stride) however large the image offset below
        if bool(((flat_target < 0) | (flat_target >= k)).logical_and_(flat_target != self.ignore_index).any()):
            self._raise_bad_target(flat_target)
        if per_image:
            # one k x (k+1) grid per image, side by side: the same single bincount pass
            offsets = torch.arange(images, device=bins.device).repeat_interleave(flat_pred.numel() // images)
            bins = bins + offsets * (k * stride)
        counts = torch.bincount(bins, minlength=images * k * stride if per_image else k * stride)
        grids = counts.reshape(-1, k, stride)[:, :, :k]
        self.matrix += grids.sum(dim=0)
        if not per_image:
            return None
        grids = grids.cpu().numpy()
        true_positive = np.diagonal(grids, axis1=1, axis2=2)
        false_positive = grids.sum(axis=1) - true_positive
        false_negative = grids.sum(axis=2) - true_positive
        return np.stack([true_positive, false_positive, false_negative], axis=1).astype(np.int64)

    def _raise_bad_target(self, flat_target: torch.Tensor) -> None:
        """Slow path, only after the fast path saw bad ground truth: name an offending value."""
        in_range = (flat_target >= 0) & (flat_target < self.num_classes)
        bad = flat_target[~in_range & (flat_target != self.ignore_index)]
        if bad.numel():
            values = sorted({int(v) for v in bad.unique()[:5]})
            raise LabelError(
                f"ground truth holds value(s) {values} that are neither a class id in "
                f"[0, {self.num_classes}) nor the ignore index {self.ignore_index}"
            )

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add ``other``'s counts to this matrix (e.g. shards of one evaluation set)."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a matrix with num_classes={other.num_classes}, "
                f"ignore_index={other.ignore_index} into one with num_classes={self.num_classes}, "
                f"ignore_index={self.ignore_index}"
            )
        self.matrix += other.matrix.to(self.device)

    def reset(self) -> None:
        """Forget all counts (keeps classes, ignore index and device)."""
        self.matrix.zero_()

    def per_class_iou_acc(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class IoU and Acc in percent, float64 arrays with NaN for classes without GT."""
        counts = self.matrix.detach().cpu().numpy().astype(np.float64)
        true_positive = np.diag(counts)
        gt_pixels = counts.sum(axis=1)
        # Counting predictions from the matrix (not from the raw maps) is what keeps
        # predictions on ignored pixels out of every denominator.
        pred_pixels = counts.sum(axis=0)
        has_gt = gt_pixels > 0
        iou = np.full(self.num_classes, np.nan)
        acc = np.full(self.num_classes, np.nan)
        union = gt_pixels + pred_pixels - true_positive
        iou[has_gt] = 100.0 * true_positive[has_gt] / union[has_gt]
        acc[has_gt] = 100.0 * true_positive[has_gt] / gt_pixels[has_gt]
        return iou, acc

    def compute(self, class_names: list[str] | None = None) -> SegmentationMetrics:
        """The metrics of everything accumulated so far.

        ``class_names`` labels the per-class dicts (default "0", "1", ...); it must name
        every evaluator class once. Raises `LabelError` when no valid pixel was seen.
        """
        names = self._class_names(class_names)
        counts = self.matrix.detach().cpu().numpy()
        valid_pixels = int(counts.sum())
        if valid_pixels == 0:
            raise LabelError(
                f"no valid pixels to score: every ground-truth pixel was the ignore index "
                f"{self.ignore_index} (or nothing was added)"
            )
        iou, acc = self.per_class_iou_acc()
        gt_pixels = counts.sum(axis=1).astype(np.float64)
        has_gt = gt_pixels > 0
        gt_frequency = gt_pixels / valid_pixels
        return SegmentationMetrics(
            mIoU=float(iou[has_gt].mean()),
            mAcc=float(acc[has_gt].mean()),
            pAcc=float(100.0 * np.trace(counts) / valid_pixels),
            fwIoU=float((iou[has_gt] * gt_frequency[has_gt]).sum()),
            per_class_iou={name: _optional_float(value) for name, value in zip(names, iou.tolist())},
            per_class_acc={name: _optional_float(value) for name, value in zip(names, acc.tolist())},
            valid_pixels=valid_pixels,
        )

    def _class_names(self, class_names: list[str] | None) -> list[str]:
        if class_names is None:
            return [str(i) for i in range(self.num_classes)]
        names = [str(name) for name in class_names]
        if len(names) != self.num_classes:
            raise ValueError(f"got {len(names)} class names for {self.num_classes} evaluator classes")
        if len(set(names)) != len(names):
            repeated = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"class names repeat: {', '.join(repeated)}")
        return names


def _as_integer_tensor(values: torch.Tensor | np.ndarray, what: str, device: torch.device) -> torch.Tensor:
    """An int64 tensor on ``device``; floats and booleans are refused rather than truncated."""
    if isinstance(values, np.ndarray):
        if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{what} must hold integer class ids, got numpy dtype {values.dtype}")
        # Going through int64 in numpy sidesteps unsigned dtypes torch handles only partly.
        values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
    elif isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.dtype.is_floating_point or values.dtype.is_complex:
            raise ValueError(f"{what} must hold integer class ids, got {values.dtype}")
    else:
        raise ValueError(f"{what} must be a torch.Tensor or numpy array, got {type(values).__name__}")
    # int64 before the index arithmetic: uint8 masks would wrap around at gt*(k+1).
    return values.to(device=device, dtype=torch.int64)
