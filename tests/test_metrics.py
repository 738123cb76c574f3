"""ConfusionMatrix / SegmentationMetrics against detectron2 SemSegEvaluator semantics.

The random test compares with `reference_metrics`, a deliberately naive implementation
(one boolean mask per class, plain Python sums, no bincount and no shared code), so a
bug in the bincount indexing cannot hide behind the same bug in the oracle.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ovbench.errors import DataError
from ovbench.eval.metrics import ConfusionMatrix, LabelError, SegmentationMetrics


def reference_metrics(
    updates: list[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore_index: int
) -> dict | None:
    """The metric straight from its definition, one class at a time."""
    tp = [0] * num_classes
    gt_count = [0] * num_classes
    pred_count = [0] * num_classes
    valid_total = 0
    for pred, gt in updates:
        valid = gt != ignore_index
        valid_total += int(valid.sum())
        for c in range(num_classes):
            is_gt = (gt == c) & valid
            is_pred = (pred == c) & valid
            tp[c] += int((is_gt & is_pred).sum())
            gt_count[c] += int(is_gt.sum())
            pred_count[c] += int(is_pred.sum())
    iou: list[float | None] = []
    acc: list[float | None] = []
    for c in range(num_classes):
        if gt_count[c] == 0:
            iou.append(None)
            acc.append(None)
        else:
            iou.append(100.0 * tp[c] / (gt_count[c] + pred_count[c] - tp[c]))
            acc.append(100.0 * tp[c] / gt_count[c])
    present = [c for c in range(num_classes) if gt_count[c] > 0]
    if not present:
        return None  # nothing to score; ConfusionMatrix must refuse (checked in the caller)
    return {
        "mIoU": sum(iou[c] for c in present) / len(present),
        "mAcc": sum(acc[c] for c in present) / len(present),
        "pAcc": 100.0 * sum(tp) / valid_total,
        "fwIoU": sum(iou[c] * gt_count[c] / valid_total for c in present),
        "iou": iou,
        "acc": acc,
        "valid_pixels": valid_total,
        "tp": tp,
    }


def random_case(rng: np.random.Generator) -> tuple[int, int, list[tuple[np.ndarray, np.ndarray]]]:
    """A random evaluation: class count, ignore index, and several (pred, gt) updates."""
    num_classes = int(rng.integers(1, 13))
    ignore_choices = [255, -1, num_classes, 1000]  # outside the class range (num_classes is the edge)
    ignore_choices += list(range(num_classes))  # inside it, like LD50K's 0 or Potsdam's 5
    ignore_index = int(rng.choice(ignore_choices))
    # Models may offer fewer channels than the evaluator has classes (Potsdam 5 of 6).
    offered = int(rng.integers(1, num_classes + 1))
    # Some classes never appear in the ground truth, yet may still be predicted.
    gt_classes = rng.choice(num_classes, size=int(rng.integers(1, num_classes + 1)), replace=False)
    ignore_share = float(rng.choice([0.0, 0.2, 0.6]))
    updates = []
    for _ in range(int(rng.integers(1, 4))):
        shape = tuple(int(s) for s in rng.integers(1, 9, size=int(rng.choice([2, 3]))))
        gt = rng.choice(gt_classes, size=shape).astype(np.int64)
        gt[rng.random(shape) < ignore_share] = ignore_index
        pred = rng.integers(0, offered, size=shape)
        if rng.random() < 0.3:  # a fair share of correct pixels, so IoUs are not all near zero
            agree = (rng.random(shape) < 0.5) & (gt != ignore_index)
            pred[agree] = gt[agree]
        updates.append((pred, gt))
    return num_classes, ignore_index, updates


def test_matches_reference_on_random_cases():
    rng = np.random.default_rng(20250101)
    checked = 0
    for _case in range(1200):
        num_classes, ignore_index, updates = random_case(rng)
        expected = reference_metrics(updates, num_classes, ignore_index)
        matrix = ConfusionMatrix(num_classes, ignore_index)
        for i, (pred, gt) in enumerate(updates):
            # Mix numpy and torch inputs and narrow dtypes where the values fit.
            if i % 2:
                matrix.update(torch.from_numpy(pred), torch.from_numpy(gt))
            elif 0 <= ignore_index < 256:
                matrix.update(pred.astype(np.uint8), gt.astype(np.uint8))
            else:
                matrix.update(pred.astype(np.int32), gt.astype(np.int32))
        context = f"case {_case}: k={num_classes} ignore={ignore_index}"
        if expected is None:
            with pytest.raises(LabelError, match="no valid pixels"):
                matrix.compute()
            continue
        got = matrix.compute()
        for key in ("mIoU", "mAcc", "pAcc", "fwIoU"):
            assert abs(getattr(got, key) - expected[key]) <= 1e-9, f"{context} {key}"
        assert got.valid_pixels == expected["valid_pixels"], context
        assert list(got.per_class_iou) == [str(c) for c in range(num_classes)]
        for c in range(num_classes):
            for ours, theirs in ((got.per_class_iou[str(c)], expected["iou"][c]), (got.per_class_acc[str(c)], expected["acc"][c])):
                if theirs is None:
                    assert ours is None, context
                else:
                    assert abs(ours - theirs) <= 1e-9, context
        assert matrix.matrix.diagonal().tolist() == expected["tp"], context
        checked += 1
    assert checked >= 1000


def test_hand_computed_example_with_ignore_outside_range():
    # gt/pred pairs on valid pixels: (0,0) (0,1) (1,1) (1,1) (2,0); the ignored pixel predicts 2.
    gt = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    matrix = ConfusionMatrix(3, ignore_index=255)
    matrix.update(pred, gt)
    assert matrix.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    metrics = matrix.compute(["a", "b", "c"])
    # IoU a = 1/(2+2-1), b = 2/(2+3-2), c = 0 (its only prediction sits on an ignored pixel).
    assert metrics.per_class_iou == pytest.approx({"a": 100 / 3, "b": 200 / 3, "c": 0.0})
    assert metrics.per_class_acc == pytest.approx({"a": 50.0, "b": 100.0, "c": 0.0})
    assert metrics.mIoU == pytest.approx(100 / 3)
    assert metrics.mAcc == pytest.approx(50.0)
    assert metrics.pAcc == pytest.approx(60.0)
    assert metrics.fwIoU == pytest.approx(0.4 * 100 / 3 + 0.4 * 200 / 3)
    assert metrics.valid_pixels == 5


def test_class_without_gt_is_excluded_from_means_but_costs_the_true_class():
    # ignore 0 inside the range, like FloodNet's Background: it can be predicted, never scored.
    gt = np.array([1, 1, 2, 2, 0, 0]).reshape(2, 3)
    pred = np.array([1, 0, 2, 1, 0, 1]).reshape(2, 3)
    matrix = ConfusionMatrix(3, ignore_index=0)
    matrix.update(pred, gt)
    metrics = matrix.compute(["background", "road", "water"])
    assert metrics.per_class_iou["background"] is None
    assert metrics.per_class_acc["background"] is None
    # road: TP 1, GT 2, Pred 2 (pixels 0 and 3; the ignored pixel 5 does not count).
    assert metrics.per_class_iou["road"] == pytest.approx(100 / 3)
    assert metrics.per_class_iou["water"] == pytest.approx(50.0)
    assert metrics.mIoU == pytest.approx((100 / 3 + 50) / 2)  # 2 classes, not 3
    assert metrics.mAcc == pytest.approx(50.0)
    assert metrics.pAcc == pytest.approx(50.0)
    # The "background" prediction on a road pixel is a miss for road.
    assert matrix.matrix[1, 0] == 1
    iou, acc = matrix.per_class_iou_acc()
    assert math.isnan(iou[0]) and math.isnan(acc[0])


def test_fewer_offered_channels_than_evaluator_classes():
    # Potsdam: 5 queries, 6 evaluator classes, clutter (5) ignored; class 5 never predicted.
    gt = torch.tensor([[0, 1, 5, 4], [3, 2, 5, 4]])
    pred = torch.tensor([[0, 1, 4, 4], [3, 2, 0, 1]])
    matrix = ConfusionMatrix(6, ignore_index=5)
    matrix.update(pred, gt)
    metrics = matrix.compute()
    assert metrics.per_class_iou["5"] is None
    assert metrics.per_class_iou["4"] == pytest.approx(50.0)  # TP 1, GT 2, Pred 1
    assert metrics.per_class_iou["1"] == pytest.approx(50.0)  # TP 1, GT 1, Pred 2
    assert metrics.valid_pixels == 6


def test_batches_and_many_updates_accumulate():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 4, size=(3, 5, 7))
    gt = rng.integers(0, 5, size=(3, 5, 7))  # 4 is the ignore value, just past the classes
    batched = ConfusionMatrix(4, ignore_index=4)
    batched.update(pred, gt)
    one_by_one = ConfusionMatrix(4, ignore_index=4)
    for i in range(3):
        one_by_one.update(pred[i], gt[i])
    assert torch.equal(batched.matrix, one_by_one.matrix)
    assert batched.compute() == one_by_one.compute()


def test_merge_equals_single_accumulated_matrix():
    rng = np.random.default_rng(4)
    maps = [(rng.integers(0, 6, size=(9, 9)), rng.integers(0, 6, size=(9, 9))) for _ in range(6)]
    single = ConfusionMatrix(6, ignore_index=0)
    shards = [ConfusionMatrix(6, ignore_index=0) for _ in range(3)]
    for i, (pred, gt) in enumerate(maps):
        single.update(pred, gt)
        shards[i % 3].update(pred, gt)
    merged = ConfusionMatrix(6, ignore_index=0)
    for shard in shards:
        merged.merge(shard)
    assert torch.equal(merged.matrix, single.matrix)
    assert merged.compute().to_dict() == single.compute().to_dict()
    assert shards[0].matrix.sum() < single.matrix.sum()  # the shards did not share storage


def test_reset_forgets_counts():
    matrix = ConfusionMatrix(2, ignore_index=255)
    matrix.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    matrix.reset()
    assert matrix.matrix.sum() == 0
    matrix.update(torch.tensor([[1, 1]]), torch.tensor([[1, 1]]))
    assert matrix.compute().mIoU == pytest.approx(100.0)


def test_inputs_are_not_modified():
    gt = torch.tensor([[255, 1], [0, 255]])
    pred = torch.tensor([[1, 1], [0, 0]])
    ConfusionMatrix(2, ignore_index=255).update(pred, gt)
    assert gt.tolist() == [[255, 1], [0, 255]] and pred.tolist() == [[1, 1], [0, 0]]


def test_to_dict_is_json_and_round_trips():
    matrix = ConfusionMatrix(3, ignore_index=0)
    matrix.update(np.array([[1, 2], [2, 0]]), np.array([[1, 2], [2, 0]]))
    metrics = matrix.compute(["background", "road", "water"])
    as_dict = metrics.to_dict()
    text = json.dumps(as_dict, allow_nan=False)  # NaN would make this raise
    assert json.loads(text)["per_class_iou"] == {"background": None, "road": 100.0, "water": 100.0}
    assert SegmentationMetrics.from_dict(json.loads(text)) == metrics


@pytest.mark.parametrize(
    ("gt_value", "pred_value"),
    [(3, 0), (3, 2), (-1, 2), (-1, 0), (1000, 1), (-7, 0)],
)
def test_gt_outside_classes_and_not_ignored_is_a_label_error(gt_value, pred_value):
    # (3, 0) would alias the parking bin of ignored pixels in a k*(k+1) grid done wrong.
    matrix = ConfusionMatrix(3, ignore_index=255)
    gt = torch.tensor([[0, 1], [2, gt_value]])
    pred = torch.tensor([[0, 1], [2, pred_value]])
    with pytest.raises(LabelError, match=rf"\[{gt_value}\].*ignore index 255"):
        matrix.update(pred, gt)
    assert matrix.matrix.sum() == 0  # a refused update leaves no partial counts
    with pytest.raises(DataError):
        matrix.update(pred, gt)
    with pytest.raises(ValueError):
        matrix.update(pred, gt)


@pytest.mark.parametrize("pred_value", [3, -1, 50])
def test_pred_outside_classes_is_a_value_error(pred_value):
    matrix = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match=rf"pred holds class id {pred_value}, outside \[0, 3\)"):
        matrix.update(torch.tensor([[0, pred_value]]), torch.tensor([[0, 1]]))


def test_pred_outside_classes_on_ignored_pixel_is_still_an_error():
    # A model emitting out-of-range ids is broken even where the ground truth is ignored.
    matrix = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match="pred holds class id 7"):
        matrix.update(torch.tensor([[0, 7]]), torch.tensor([[0, 255]]))


def test_bad_shapes_and_dtypes():
    matrix = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match=r"pred shape \(2, 2\) does not match target shape \(2, 3\)"):
        matrix.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(H,W\) or \(B,H,W\)"):
        matrix.update(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="pred must hold integer class ids"):
        matrix.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target must hold integer class ids"):
        matrix.update(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="must be a torch.Tensor or numpy array"):
        matrix.update([[0]], [[0]])


def test_compute_without_valid_pixels_fails_clearly():
    matrix = ConfusionMatrix(3, ignore_index=0)
    with pytest.raises(LabelError, match="no valid pixels"):
        matrix.compute()
    matrix.update(torch.tensor([[1, 2]]), torch.tensor([[0, 0]]))  # all ignored
    with pytest.raises(LabelError, match="ignore index 0"):
        matrix.compute()


def test_constructor_and_merge_and_names_validation():
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        ConfusionMatrix(0, ignore_index=255)
    with pytest.raises(ValueError, match="ignore_index must be an int"):
        ConfusionMatrix(3, ignore_index=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot merge a matrix with num_classes=4"):
        ConfusionMatrix(3, ignore_index=255).merge(ConfusionMatrix(4, ignore_index=255))
    with pytest.raises(ValueError, match="ignore_index=0 into one"):
        ConfusionMatrix(3, ignore_index=255).merge(ConfusionMatrix(3, ignore_index=0))
    matrix = ConfusionMatrix(2, ignore_index=255)
    matrix.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="got 3 class names for 2 evaluator classes"):
        matrix.compute(["a", "b", "c"])
    with pytest.raises(ValueError, match="class names repeat: a"):
        matrix.compute(["a", "a"])
