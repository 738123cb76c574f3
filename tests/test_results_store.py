"""Tests for the append-only results store and the provenance helpers."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import ovbench
from ovbench.errors import DataError
from ovbench.results import store as store_module
from ovbench.results.store import (
    REQUIRED_FIELDS,
    ResultRecord,
    ResultStore,
    ResultStoreWarning,
    code_version,
    host_info,
    new_run_id,
    ovbench_home,
    utc_timestamp,
)

WORKERS = 8
RECORDS_PER_WORKER = 50
LARGE_CLASS_COUNT = 400  # ~8 KB per line: well past the 4096-byte pipe buffer


def make_record(**overrides) -> dict:
    record = {
        "run_id": "gsnet-20261127T051500-3f9a1c",
        "method": "gsnet",
        "protocol": "scratch",
        "benchmark": "toyland",
        "eval_set": "toyland-coast",
        "metrics": {"mIoU": 41.2, "mAcc": 50.0, "pAcc": 80.5, "fwIoU": 70.1},
        "config_hash": "c0ffee",
        "code_version": "0.1.0",
        "host": "testhost",
        "timestamp": "2026-11-27T05:15:00Z",
    }
    record.update(overrides)
    return record


def expected_per_class(worker: int, index: int) -> dict[str, float | None]:
    """Per-class IoU that identifies its record; every 5th record gets a large dict."""
    count = LARGE_CLASS_COUNT if index % 5 == 0 else 3
    return {f"class-{worker}-{index}-{k}": float(worker * 1000 + index + k / 1000) for k in range(count)}


def append_from_worker(path: str, worker: int, start_barrier) -> None:
    """Child process: append this worker's records, mixing single appends and small batches."""
    store = ResultStore(path)
    start_barrier.wait()
    index = 0
    while index < RECORDS_PER_WORKER:
        batch_size = 1 if index % 7 else 3
        batch = []
        for offset in range(min(batch_size, RECORDS_PER_WORKER - index)):
            i = index + offset
            batch.append(
                make_record(
                    run_id=f"worker{worker}-record{i}",
                    eval_set=f"set-{i % 4}",
                    seed=worker,
                    iterations=i,
                    per_class_iou=expected_per_class(worker, i),
                )
            )
        store.append(batch)
        index += len(batch)


def test_concurrent_appends_from_many_processes_are_whole_and_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    context = multiprocessing.get_context("spawn")
    start_barrier = context.Barrier(WORKERS)
    processes = [
        context.Process(target=append_from_worker, args=(str(path), worker, start_barrier)) for worker in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert all(process.exitcode == 0 for process in processes)

    raw_lines = path.read_bytes().split(b"\n")
    assert raw_lines[-1] == b""  # the file ends with a newline
    raw_lines = raw_lines[:-1]
    assert len(raw_lines) == WORKERS * RECORDS_PER_WORKER
    assert max(len(line) for line in raw_lines) > 4096
    parsed = [json.loads(line) for line in raw_lines]  # every line is one whole record

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = ResultStore(path).read()
    assert records == parsed
    seen = [record["run_id"] for record in records]
    expected = {f"worker{w}-record{i}" for w in range(WORKERS) for i in range(RECORDS_PER_WORKER)}
    assert len(seen) == len(set(seen)) and set(seen) == expected
    for record in records:
        worker, index = map(int, re.fullmatch(r"worker(\d+)-record(\d+)", record["run_id"]).groups())
        assert record["per_class_iou"] == expected_per_class(worker, index)
        assert record["seed"] == worker and record["iterations"] == index
        assert record["eval_set"] == f"set-{index % 4}"


def test_a_batch_with_one_bad_record_writes_nothing(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.jsonl")
    store.append([make_record(run_id="first")])
    before = store.path.read_bytes()
    bad = make_record(run_id="bad")
    del bad["eval_set"]
    with pytest.raises(DataError, match=r"record 2 of 3 .*'bad'.*missing required field 'eval_set'"):
        store.append([make_record(run_id="good-1"), bad, make_record(run_id="good-2")])
    assert store.path.read_bytes() == before

    with pytest.raises(DataError, match=r"'extra\.handle' is not JSON-serialisable"):
        store.append([make_record(run_id="good-3"), make_record(extra={"handle": object()})])
    with pytest.raises(DataError, match="metrics\\['mIoU'\\].*number"):
        store.append([make_record(metrics={"mIoU": "high"})])
    assert store.path.read_bytes() == before
    assert [record["run_id"] for record in store.read()] == ["first"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": ""}, "'method' must be a non-empty string"),
        ({"metrics": {}}, "'metrics' is empty"),
        ({"seed": True}, "'seed' must be an integer"),
        ({"train_size": -1}, "'train_size' must be >= 0"),
        ({"timestamp": "yesterday"}, "not ISO 8601"),
        ({"timestamp": "2026-11-27T05:15:00+01:00"}, "must be in UTC"),
        ({"timestamp": "2026-11-27T05:15:00"}, "must be in UTC"),
        ({"mIoU": 3.0}, "unknown result record field 'mIoU'"),
    ],
)
def test_invalid_records_are_rejected_with_the_field_named(overrides: dict, message: str) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        ResultRecord.from_dict(make_record(**overrides))


def test_nan_becomes_null_and_numpy_values_become_plain_json(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.jsonl")
    record = make_record(
        metrics={"mIoU": np.float32(41.5), "mAcc": float("nan"), "pAcc": math.inf, "fwIoU": 70},
        per_class_iou={"water": np.float64(80.25), "clutter": np.nan},
        seed=np.int64(3),
        extra={"lr": np.array([1e-4, np.nan]), "nested": {"steps": np.int32(5)}},
    )
    store.append([record])
    line = store.path.read_text(encoding="utf-8")
    assert "NaN" not in line and "Infinity" not in line
    (stored,) = store.read()
    assert stored["metrics"] == {"mIoU": 41.5, "mAcc": None, "pAcc": None, "fwIoU": 70.0}
    assert stored["per_class_iou"] == {"water": 80.25, "clutter": None}
    assert stored["seed"] == 3 and isinstance(stored["seed"], int)
    assert stored["extra"] == {"lr": [1e-4, None], "nested": {"steps": 5}}
    assert stored["schema_version"] == 1


def test_record_round_trips_through_dict_and_store(tmp_path: Path) -> None:
    record = ResultRecord(**make_record(train_set="toyland-train", train_size=64, seed=1, wall_time_s=12.5))
    as_dict = record.to_dict()
    assert list(as_dict)[:5] == ["run_id", "method", "protocol", "benchmark", "train_set"]
    assert set(REQUIRED_FIELDS) <= set(as_dict)
    assert ResultRecord.from_dict(as_dict) == record
    store = ResultStore(tmp_path / "results.jsonl")
    store.append(record)  # a single record is accepted as well as an iterable
    assert store.read() == [as_dict]
    # to_dict re-validates: a field broken after construction cannot reach the store
    record.metrics = {"mIoU": "oops"}
    with pytest.raises(DataError, match="metrics"):
        store.append([record])
    assert len(store.read()) == 1


def test_torn_trailing_line_is_skipped_with_a_warning_and_later_appends_survive(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.jsonl")
    store.append([make_record(run_id="a"), make_record(run_id="b")])
    with open(store.path, "ab") as handle:  # a writer killed mid-line
        handle.write(b'{"run_id": "torn", "metrics": {"mI')

    with pytest.warns(ResultStoreWarning, match=rf"line 3 of results file {re.escape(str(store.path))}"):
        records = store.read()
    assert [record["run_id"] for record in records] == ["a", "b"]

    store.append([make_record(run_id="c")])
    with pytest.warns(ResultStoreWarning, match="line 3"):
        records = store.read()
    assert [record["run_id"] for record in records] == ["a", "b", "c"]


def test_non_object_and_non_utf8_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    good = json.dumps(make_record(run_id="ok"))
    path.write_bytes(b"[1, 2]\n\xff\xfe\n\n" + good.encode() + b"\n")
    with pytest.warns(ResultStoreWarning) as caught:
        records = ResultStore(path).read()
    assert [record["run_id"] for record in records] == ["ok"]
    messages = [str(warning.message) for warning in caught]
    assert any("line 1" in message and "list" in message for message in messages)
    assert any("line 2" in message and "UTF-8" in message for message in messages)


def test_missing_store_reads_empty_and_first_append_creates_directories(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "deep" / "er" / "results.jsonl")
    assert store.read() == []
    assert not store.path.parent.exists()
    store.append([])
    assert not store.path.exists()
    store.append([make_record()])
    assert store.path.is_file() and len(store.read()) == 1


def test_home_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OVBENCH_HOME", str(tmp_path / "bench"))
    assert ovbench_home() == tmp_path / "bench"
    assert ResultStore().path == tmp_path / "bench" / "results.jsonl"
    monkeypatch.delenv("OVBENCH_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ovbench_home() == tmp_path / "home" / ".ovbench"
    assert not ovbench_home().exists()  # only writers create it


def test_code_version_adds_commit_and_dirty_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    repo_root = str(Path(ovbench.__file__).resolve().parent.parent)
    answers = {"--show-toplevel": repo_root, "HEAD": "3f9a1c2", "--porcelain": " M ovbench/cli.py"}

    def fake_git(cwd: Path, *args: str) -> str | None:
        return next((answer for flag, answer in answers.items() if flag in args), None)

    monkeypatch.setattr(store_module, "_git", fake_git)
    code_version.cache_clear()
    try:
        assert code_version() == f"{ovbench.__version__}+3f9a1c2-dirty"
        answers["--porcelain"] = ""
        code_version.cache_clear()
        assert code_version() == f"{ovbench.__version__}+3f9a1c2"
        answers["--show-toplevel"] = "/somewhere/else"  # an unrelated enclosing repository
        code_version.cache_clear()
        assert code_version() == ovbench.__version__

        def broken_git(cwd: Path, *args: str) -> str | None:
            raise RuntimeError("git exploded")

        monkeypatch.setattr(store_module, "_git", broken_git)
        code_version.cache_clear()
        assert code_version() == ovbench.__version__
    finally:
        code_version.cache_clear()


def test_code_version_without_git_on_path_is_the_package_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    code_version.cache_clear()
    try:
        assert code_version() == ovbench.__version__
    finally:
        code_version.cache_clear()


def test_host_info_describes_cpu_or_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_cuda_description", lambda: None)
    info = host_info()
    assert set(info) == {"host", "hardware"} and info["host"]
    assert re.fullmatch(rf"cpu: .+ x {os.cpu_count()}", info["hardware"])
    monkeypatch.setattr(store_module, "_cuda_description", lambda: "cuda: NVIDIA H100 x 2")
    assert host_info()["hardware"] == "cuda: NVIDIA H100 x 2"


def test_run_ids_are_readable_and_unique() -> None:
    run_id = new_run_id("CLIP Dense")
    assert re.fullmatch(r"clip-dense-\d{8}T\d{6}-[0-9a-f]{6}", run_id)
    ids = {new_run_id("gsnet") for _ in range(2000)}
    assert len(ids) == 2000
    with pytest.raises(DataError, match="method name"):
        new_run_id(" !! ")


def test_utc_timestamp_is_accepted_by_records() -> None:
    stamp = utc_timestamp()
    assert stamp.endswith("Z")
    assert ResultRecord(**make_record(timestamp=stamp)).timestamp == stamp


def test_an_append_that_runs_out_of_space_leaves_the_store_byte_identical(tmp_path: Path, monkeypatch) -> None:
    """A full disk fails part-way through a write: the bytes that did land are cut away again."""
    store = ResultStore(tmp_path / "results.jsonl")
    store.append([make_record(run_id="kept")])
    before = store.path.read_bytes()
    real_write = os.write

    def write_part_then_fail(descriptor, data):
        if len(data) > 100:
            real_write(descriptor, bytes(data[:100]))  # what fitted on the disk
            return 100
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, "write", write_part_then_fail)
    with pytest.raises(DataError, match=r"No space left on device; no record was written and the store is unchanged"):
        store.append([make_record(run_id="lost", per_class_iou={f"c{i}": 1.0 for i in range(50)})])
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    assert [r["run_id"] for r in store.read()] == ["kept"]
