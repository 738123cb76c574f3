"""Per-image counts and the bootstrap over images: CIs with known answers, the paired
comparison, and the store keeping per-image files and records in step (resume, full disk)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_process import assert_one_error_line, ovbench
from ovbench.errors import DataError
from ovbench.eval.metrics import ConfusionMatrix
from ovbench.results.per_image import PerImageCounts, load_record_counts, miou_from_totals, stage_counts
from ovbench.results.uncertainty import bootstrap_miou, bootstrap_row, paired_difference


def counts_of(*images):
    """images: per image a list of (tp, fp, fn) per class."""
    array = np.asarray(images, dtype=np.int64).transpose(0, 2, 1)  # (N, K, 3) -> (N, 3, K)
    return PerImageCounts("set", [f"c{k}" for k in range(array.shape[2])], [f"img{i}" for i in range(len(images))], array)


def test_per_image_counts_sum_to_the_confusion_matrix_and_give_its_miou():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (5, 16, 16), generator=generator)
    target = torch.randint(0, 5, (5, 16, 16), generator=generator)  # 4 = ignore
    matrix = ConfusionMatrix(4, ignore_index=4)
    per_image = matrix.update(pred, target, per_image=True)
    assert per_image.shape == (5, 3, 4)
    for i in range(5):
        single = ConfusionMatrix(4, ignore_index=4)
        single.update(pred[i], target[i])
        grid = single.matrix.numpy()
        tp = np.diag(grid)
        assert per_image[i].tolist() == [tp.tolist(), (grid.sum(0) - tp).tolist(), (grid.sum(1) - tp).tolist()]
    counts = PerImageCounts("set", list("abcd"), [str(i) for i in range(5)], per_image)
    assert counts.miou() == pytest.approx(matrix.compute().mIoU)


def test_bad_ground_truth_is_still_refused_with_per_image_counts():
    matrix = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(DataError, match=r"value\(s\) \[7\]"):
        matrix.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), 7), per_image=True)


def test_identical_images_give_a_zero_width_interval():
    same = counts_of(*[[(3, 1, 0), (2, 0, 2)]] * 6)
    interval = bootstrap_miou([same], resamples=500)
    assert interval.width == 0 and interval.estimate == pytest.approx(same.miou())


def test_two_image_case_matches_the_interval_computed_by_hand():
    # image a: TP 3, FP 1 (IoU 75 alone); image b: TP 1, FN 3 (IoU 25 alone).
    # A resample is {a,a} (IoU 75, p=1/4), {a,b} (4/8 = 50, p=1/2) or {b,b} (25, p=1/4): each
    # extreme has more than 2.5% mass, so the 95% interval is exactly [25, 75] around 50.
    two = counts_of([(3, 1, 0)], [(1, 0, 3)])
    interval = bootstrap_miou([two], resamples=4000, seed=1)
    assert (interval.estimate, interval.low, interval.high) == (50.0, 25.0, 75.0)


def test_a_class_missing_from_a_resample_drops_out_of_its_mean():
    totals = np.array([[[5, 0], [5, 0], [0, 0]]])  # class 1 has no TP, FP or FN at all
    assert miou_from_totals(totals)[0] == pytest.approx(50.0)


def test_paired_comparison_detects_a_true_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    base = rng.integers(100, 1000, size=(200, 3, 5))
    better = base.copy()
    better[:, 0] += 40  # more true positives on every image
    better[:, 2] = np.maximum(better[:, 2] - 40, 0)
    a = PerImageCounts("s", list("abcde"), [str(i) for i in range(200)], better)
    b = PerImageCounts("s", list("abcde"), [str(i) for i in range(200)], base)
    result = paired_difference({"s": [a]}, {"s": [b]}, resamples=500, average="Avg")
    assert result["s"].estimate > 0 and result["s"].excludes_zero() and result["s"].low > 0
    null = paired_difference({"s": [b]}, {"s": [b]}, resamples=500)
    assert not null["s"].excludes_zero() and null["s"].width == 0
    # pairing matters: the same two rows resampled independently would give a wider interval
    independent = bootstrap_row({"s": [a]}, resamples=500)["s"].width
    assert result["s"].width < independent


def test_runs_are_paired_by_image_name_not_position():
    a = counts_of([(3, 1, 0)], [(1, 0, 3)])
    shuffled = PerImageCounts("set", a.class_names, list(reversed(a.image_names)), a.counts[::-1])
    assert paired_difference({"s": [a]}, {"s": [shuffled]}, resamples=200)["s"].width == 0
    other = PerImageCounts("set", a.class_names, ["x", "y"], a.counts)
    with pytest.raises(DataError, match="different images"):
        paired_difference({"s": [a]}, {"s": [other]})


def test_staged_counts_appear_only_when_committed_and_mismatches_are_named(tmp_path):
    store = tmp_path / "results.jsonl"
    counts = counts_of([(3, 1, 0)], [(1, 0, 3)])
    staged = stage_counts(store, "run-1", counts)
    assert not staged.final_path.exists()
    staged.discard()  # what a failed append does
    assert list(staged.final_path.parent.iterdir()) == []
    staged = stage_counts(store, "run-1", counts)
    staged.commit()
    record = {"run_id": "run-1", "eval_set": "set", "extra": {"per_image": staged.reference}}
    assert load_record_counts(store, record).counts.tolist() == counts.counts.tolist()
    # a later evaluation of the same run and set replaces the file: the older record no longer matches
    stage_counts(store, "run-1", counts_of([(1, 1, 1)], [(2, 2, 2)])).commit()
    with pytest.raises(DataError, match="do not match the record"):
        load_record_counts(store, record)
    assert len(list(staged.final_path.parent.iterdir())) == 1  # one file per (run, set), never two


def test_eval_stores_per_image_counts_and_compare_runs_from_the_cli(tmp_path):
    home = tmp_path / "home"
    first = ovbench(home, "eval", "--method", "clip-dense", "--scale", "tiny", "-q", "--dataset", "toyland-objects")
    assert first.returncode == 0, first.stderr
    second = ovbench(home, "eval", "--method", "clip-dense", "--scale", "tiny", "-q", "--dataset", "toyland-objects",
                     "--seed", "3", "model.temperature=50")
    assert second.returncode == 0, second.stderr
    records = [json.loads(line) for line in (home / "results.jsonl").read_text().splitlines()]
    files = sorted((home / "results.per_image").rglob("*.npz"))
    assert len(files) == 2 and all(r["extra"]["per_image"]["images"] == 48 for r in records)
    counts = load_record_counts(home / "results.jsonl", records[0])
    assert counts.miou() == pytest.approx(records[0]["metrics"]["mIoU"])
    proc = ovbench(home, "compare", records[0]["run_id"], records[0]["run_id"], "--resamples", "200")
    assert proc.returncode == 0, proc.stderr
    assert "+0.00" in proc.stdout and "no" in proc.stdout
    assert_one_error_line(ovbench(home, "compare", "clip-dense", records[0]["run_id"]), "matches 2 configurations")
    assert_one_error_line(ovbench(home, "compare", "nope", "clip-dense:zeroshot"), "no results match 'nope'")
