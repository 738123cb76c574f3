"""`ovbench table` never merges unlike runs: one row per configuration, only seeds averaged.

Hand-written store records in the layout of `ovbench.results.store.ResultRecord`; pure
Python (no torch), so the file runs in well under a second.
"""

from __future__ import annotations

import io
import math
import statistics

import pandas as pd
import pytest

from ovbench.errors import ConfigError
from ovbench.results.table import AVG_COLUMN, N_COLUMN, build_table, render_table, table_notes
from test_table import key_of

URBAN, FLOOD, OBJECTS = "toyland-urban", "toyland-flood", "toyland-objects"
TOYLAND_SETS = {"toyland": [URBAN, FLOOD, OBJECTS]}


def rec(
    run_id: str,
    eval_set: str,
    miou: float | None,
    *,
    method: str = "gsnet",
    protocol: str = "scratch",
    benchmark: str = "toyland",
    train_set: str | None = "toyland-train",
    train_size: int | None = 200,
    iterations: int | None = 1000,
    seed: int | None = 0,
    config_hash: str = "a1a1a1a1a1a1",
    label: str | None = None,
    timestamp: str = "2026-01-01T00:00:00Z",
) -> dict:
    return {
        "run_id": run_id,
        "method": method,
        "protocol": protocol,
        "benchmark": benchmark,
        "train_set": train_set,
        "train_size": train_size,
        "eval_set": eval_set,
        "metrics": {"mIoU": miou},
        "seed": seed,
        "iterations": iterations,
        "config_hash": config_hash,
        "code_version": "0.1.0",
        "host": "test",
        "timestamp": timestamp,
        "extra": {"label": label, "job_key": f"key-{run_id}", "scale": "tiny"},
    }


URBAN_1000 = [40.0, 42.0, 44.0]
FLOOD_1000 = [30.0, 31.0, 35.0]
OBJECTS_1000 = [50.0, 50.0, 53.0]


@pytest.fixture
def store() -> list[dict]:
    records: list[dict] = []
    # gsnet, 1000 iterations on toyland-train: seeds 0, 1, 2 of one configuration
    for seed in range(3):
        for eval_set, values in ((URBAN, URBAN_1000), (FLOOD, FLOOD_1000), (OBJECTS, OBJECTS_1000)):
            records.append(rec(f"gsnet-1000-s{seed}", eval_set, values[seed], seed=seed))
    # two concurrent resumes evaluated seed 0 again: the very same record twice
    records.append(rec("gsnet-1000-s0", URBAN, URBAN_1000[0]))
    # seed 2's flood result written again later in the file, but with an older timestamp (and
    # a different number): the latest by timestamp counts
    records.append(rec("gsnet-1000-s2", FLOOD, 99.0, seed=2, timestamp="2025-12-31T00:00:00Z"))
    # the same run also evaluated on a folder of the user's own: benchmark "custom"
    records.append(rec("gsnet-1000-s0", "my-eval", 12.5, benchmark="custom"))
    # gsnet, only 100 iterations (another configuration, another hash)
    for eval_set, value in ((URBAN, 5.0), (FLOOD, 4.0), (OBJECTS, 6.0)):
        records.append(rec("gsnet-100-s0", eval_set, value, iterations=100, config_hash="b2b2b2b2b2b2"))
    # gsnet trained on a user folder; never evaluated on the objects set
    for eval_set, value in ((URBAN, 20.0), (FLOOD, 21.0)):
        records.append(rec("gsnet-folder-s0", eval_set, value, train_set="my-folder", train_size=12,
                           config_hash="c3c3c3c3c3c3"))
    # a labelled sweep job, two seeds
    for seed, offset in ((0, 0.0), (1, 2.0)):
        for eval_set, value in ((URBAN, 60.0), (FLOOD, 50.0), (OBJECTS, 70.0)):
            records.append(rec(f"rc-s{seed}", eval_set, value + offset, method="catseg-remoteclip", seed=seed,
                               label="CAT-Seg (RemoteCLIP)", config_hash="d4d4d4d4d4d4"))
    return records


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_one_row_per_configuration(store: list[dict]) -> None:
    table = build_table(store, benchmark_sets=TOYLAND_SETS)
    assert len(table) == 5
    names = list(table.index.names)
    rows = [dict(zip(names, key)) for key in table.index]
    assert [(row["label"], row["benchmark"], row["train_set"], row["iterations"]) for row in rows] == [
        ("-", "toyland", "toyland-train", 1000),
        ("-", "custom", "toyland-train", 1000),
        ("-", "toyland", "toyland-train", 100),
        ("-", "toyland", "my-folder", 1000),
        ("CAT-Seg (RemoteCLIP)", "toyland", "toyland-train", 1000),
    ]
    assert [int(n) for n in table[(N_COLUMN, "count")]] == [3, 1, 1, 1, 2]


def test_mean_and_sample_std_over_seeds_only(store: list[dict]) -> None:
    table = build_table(store, benchmark_sets=TOYLAND_SETS)
    main = key_of(table, benchmark="toyland", iterations=1000, train_set="toyland-train", label="-")
    for eval_set, values in ((URBAN, URBAN_1000), (FLOOD, FLOOD_1000), (OBJECTS, OBJECTS_1000)):
        assert table.loc[main, (eval_set, "mean")] == pytest.approx(statistics.fmean(values))
        assert table.loc[main, (eval_set, "std")] == pytest.approx(statistics.stdev(values))
        assert table.loc[main, (eval_set, "count")] == 3  # the duplicated records count once
    assert table.loc[main, (URBAN, "std")] == pytest.approx(2.0)
    assert table.loc[main, (FLOOD, "mean")] == pytest.approx(32.0)  # not 99: the newer timestamp wins
    assert table.loc[main, (FLOOD, "std")] == pytest.approx(math.sqrt(7.0))
    assert table.loc[main, (OBJECTS, "std")] == pytest.approx(math.sqrt(3.0))
    # the extra "custom" set does not blank the toyland row's Avg
    assert table.loc[main, (AVG_COLUMN, "mean")] == pytest.approx((42.0 + 32.0 + 51.0) / 3)
    assert math.isnan(table.loc[main, ("my-eval", "mean")])

    short = key_of(table, iterations=100)
    assert table.loc[short, (URBAN, "mean")] == 5.0 and math.isnan(table.loc[short, (URBAN, "std")])
    assert table.loc[short, (AVG_COLUMN, "mean")] == pytest.approx(5.0)

    labelled = key_of(table, label="CAT-Seg (RemoteCLIP)")
    assert table.loc[labelled, (URBAN, "mean")] == pytest.approx(61.0)
    assert table.loc[labelled, (URBAN, "std")] == pytest.approx(math.sqrt(2.0))
    assert table.loc[labelled, (AVG_COLUMN, "mean")] == pytest.approx(61.0)

    custom = key_of(table, benchmark="custom")
    assert table.loc[custom, ("my-eval", "mean")] == 12.5
    assert table.loc[custom, (AVG_COLUMN, "mean")] == 12.5  # custom's own sets: just my-eval


def test_rendered_rows_show_what_distinguishes_them(store: list[dict]) -> None:
    text = render_table(build_table(store, benchmark_sets=TOYLAND_SETS), "markdown")
    lines = text.splitlines()
    blank = lines.index("")
    assert cells(lines[0]) == [
        "label", "method", "protocol", "benchmark", "train_set", "iterations", "n",
        URBAN, FLOOD, OBJECTS, "my-eval", "Avg",
    ]  # fmt: skip  (config_hash is hidden: the other columns already tell the rows apart)
    assert [cells(line) for line in lines[2:blank]] == [
        ["", "gsnet", "scratch", "toyland", "toyland-train (200)", "1000", "3",
         "42.0 ± 2.0", "32.0 ± 2.6", "51.0 ± 1.7", "", "41.7"],
        ["", "gsnet", "scratch", "custom", "toyland-train (200)", "1000", "1", "", "", "", "12.5", "12.5"],
        ["", "gsnet", "scratch", "toyland", "toyland-train (200)", "100", "1", "5.0", "4.0", "6.0", "", "5.0"],
        ["", "gsnet", "scratch", "toyland", "my-folder (12)", "1000", "1", "20.0", "21.0", "", "", ""],
        ["CAT-Seg (RemoteCLIP)", "catseg-remoteclip", "scratch", "toyland", "toyland-train (200)", "1000", "2",
         "61.0 ± 1.4", "51.0 ± 1.4", "71.0 ± 1.4", "", "61.0"],
    ]  # fmt: skip
    note = "Avg left blank for gsnet/scratch [benchmark=toyland, train_set=my-folder (12), iterations=1000]: " \
           "no result on toyland-objects"
    assert lines[blank + 1 :] == [note]


def test_union_of_seen_sets_without_benchmark_sets(store: list[dict]) -> None:
    # toyland's sets are then the union of toyland records' sets: the same three
    assert build_table(store).equals(build_table(store, benchmark_sets=TOYLAND_SETS))
    # ... and a mapping decides when it says otherwise
    table = build_table(store, benchmark_sets={"toyland": [URBAN, FLOOD]})
    folder = key_of(table, train_set="my-folder")
    assert table.loc[folder, (AVG_COLUMN, "mean")] == pytest.approx(20.5)
    assert table_notes(table) == []


def test_filters_still_select(store: list[dict]) -> None:
    table = build_table(store, method="catseg-remoteclip")
    assert len(table) == 1 and table.iloc[0][(N_COLUMN, "count")] == 2
    lines = render_table(table, "plain").splitlines()
    assert lines[0].split() == ["label", "method", "protocol", "n", URBAN, FLOOD, OBJECTS, "Avg"]
    toyland = build_table(store, benchmark="toyland", protocol="scratch")
    assert "custom" not in set(toyland.index.get_level_values("benchmark"))
    assert len(toyland) == 4
    # a filter does not shrink a benchmark's sets: the folder row still lacks objects
    folder = build_table(store, benchmark="toyland", method="gsnet")
    assert any("no result on toyland-objects" in note for note in table_notes(folder))


def test_fewer_row_fields_refuse_to_merge_configurations(store: list[dict]) -> None:
    merging = r"table row gsnet/scratch would average 4 different configurations"
    with pytest.raises(ConfigError, match=merging) as caught:
        build_table(store, rows=("method", "protocol"))
    message = str(caught.value)
    assert "\n" not in message
    assert "iterations: 1000, 100" in message and "add " in message and "leave rows unset" in message
    # fewer fields are fine while each row holds one configuration
    table = build_table(store, rows=("method", "protocol"), method="catseg-remoteclip")
    first_row = render_table(table, "plain").splitlines()[2].split()
    assert first_row[:5] == ["catseg-remoteclip", "scratch", "2", "61.0", "±"]
    # ... also per seed
    by_seed = build_table(store, rows=("method", "seed"), method="catseg-remoteclip")
    assert by_seed.loc[("catseg-remoteclip", 1), (URBAN, "mean")] == 62.0


def test_config_hash_shown_only_to_tell_rows_apart() -> None:
    records = [
        rec("plain", URBAN, 10.0, config_hash="0123456789ab"),
        rec("ablated", URBAN, 20.0, config_hash="ba9876543210"),
    ]
    lines = render_table(build_table(records), "plain").splitlines()
    assert lines[0].split() == ["method", "protocol", "config_hash", "n", URBAN, "Avg"]
    assert lines[2].split() == ["gsnet", "scratch", "0123456789ab", "1", "10.0", "10.0"]


def test_same_seed_run_again_counts_once_and_says_so() -> None:
    # `ovbench eval` twice: two run ids, same configuration and seed
    records = [
        rec("zs-1", URBAN, 30.0, protocol="zeroshot", train_set=None, train_size=None, iterations=None,
            timestamp="2026-01-01T00:00:00Z"),
        rec("zs-2", URBAN, 31.0, protocol="zeroshot", train_set=None, train_size=None, iterations=None,
            timestamp="2026-01-02T00:00:00Z"),
    ]
    table = build_table(records)
    assert table.iloc[0][(N_COLUMN, "count")] == 1 and table.iloc[0][(URBAN, "mean")] == 31.0
    assert table.iloc[0][(AVG_COLUMN, "mean")] == 31.0
    assert table_notes(table) == ["gsnet/zeroshot: seed 0 was run 2 times; only the latest run counts"]
    assert render_table(table, "plain").splitlines()[-1] == table_notes(table)[0]


def test_records_of_older_stores_still_render() -> None:
    old = [
        {"run_id": "r1", "method": "san", "protocol": "finetune", "benchmark": "ovrsiss", "eval_set": "FLAIR",
         "metrics": {"mIoU": 19.9}},
        {"run_id": "r2", "method": "san", "protocol": "finetune", "benchmark": "ovrsiss", "eval_set": "FLAIR",
         "metrics": {"mIoU": 20.1}, "extra": "not a dict"},
        {"method": "san", "protocol": "finetune", "eval_set": "FLAIR", "metrics": {"mIoU": 21.0}, "seed": None},
    ]
    table = build_table(old)
    text = render_table(table, "plain")
    assert len(table) == 2  # with and without a benchmark
    first = key_of(table, benchmark="ovrsiss")
    assert table.loc[first, (N_COLUMN, "count")] == 2  # two seedless runs
    assert table.loc[first, ("FLAIR", "mean")] == pytest.approx(20.0)
    assert "20.0 ± 0.1" in text
    for fmt in ("markdown", "latex", "csv"):
        assert render_table(table, fmt)


def test_notes_stay_out_of_csv_and_latex_unless_asked(store: list[dict]) -> None:
    table = build_table(store, benchmark_sets=TOYLAND_SETS)
    assert len(table_notes(table)) == 1 and table.attrs["notes"] == table_notes(table)
    csv_text = render_table(table, "csv")
    assert "Avg left blank" not in csv_text and "Avg left blank" not in render_table(table, "latex")
    frame = pd.read_csv(io.StringIO(csv_text))
    assert list(frame["n"]) == [3, 1, 1, 1, 2]
    assert list(frame["iterations"]) == [1000, 1000, 100, 1000, 1000]
    assert list(frame["config_hash"])[:3] == ["a1a1a1a1a1a1", "a1a1a1a1a1a1", "b2b2b2b2b2b2"]
    assert frame.loc[0, f"{FLOOD} std"] == pytest.approx(math.sqrt(7.0), abs=1e-9)
    assert frame.loc[0, f"{URBAN} n"] == 3
    assert render_table(table, "csv", notes=True).rstrip().splitlines()[-1].startswith("Avg left blank")
    assert "Avg left blank" not in render_table(table, "plain", notes=False)


def test_bad_benchmark_sets() -> None:
    records = [rec("r", URBAN, 1.0)]
    with pytest.raises(ConfigError, match="benchmark_sets"):
        build_table(records, benchmark_sets={"toyland": "toyland-urban"})
    with pytest.raises(ConfigError, match="benchmark_sets"):
        build_table(records, benchmark_sets=[URBAN])  # type: ignore[arg-type]
