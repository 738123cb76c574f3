"""The study's tables (`ovbench table --kind ...`) from a store of known records: values, Avg,
computed bold / underline, mean ± std over seeds, published rows with deltas, seen / unseen.

Records are written by hand in the store's layout (on the paper's benchmark, whose data is
not needed to render tables); the CLI checks run the installed executable.
"""

from __future__ import annotations

import csv
import io
import json
import statistics

import numpy as np
import pytest

from cli_process import assert_one_error_line, ovbench
from ovbench.registry import benchmark_names, load_benchmark
from ovbench.results.per_image import PerImageCounts, stage_counts
from ovbench.results.reported import load_reported
from ovbench.results.study import build_study_tables, column_marks, render_study_table

SETS = ["flair", "fast", "potsdam", "floodnet"]


def rec(run_id, eval_set, miou, *, method="gsnet", protocol="scratch", train_set="landdiscover50k",
        train_size=51846, seed=0, iterations=30000, config_hash="c0ffee", per_class=None, label=None):
    return {
        "run_id": run_id, "method": method, "protocol": protocol, "benchmark": "ovrsiss", "train_set": train_set,
        "train_size": train_size, "eval_set": eval_set, "metrics": {"mIoU": miou}, "per_class_iou": per_class or {},
        "seed": seed, "iterations": iterations, "config_hash": config_hash, "code_version": "0.1.0+abc",
        "host": "test", "hardware": "cpu: test x 2", "timestamp": "2026-01-01T00:00:00Z",
        "extra": {"label": label},
    }


def add_run(records, run_id, values, **fields):
    for eval_set, value in zip(SETS, values):
        records.append(rec(run_id, eval_set, value, **fields))


GSNET_SEEDS = [[21.0, 17.0, 44.0, 42.0], [23.0, 15.0, 46.0, 40.0]]
CATSEG = [19.0, 14.0, 38.0, 38.0]
SAN = [22.0, 16.0, 10.0, 30.0]


@pytest.fixture
def records():
    out = []
    for seed, values in enumerate(GSNET_SEEDS):
        add_run(out, f"gsnet-s{seed}", values, seed=seed)
    add_run(out, "catseg-0", CATSEG, method="catseg", config_hash="cat")
    add_run(out, "san-0", SAN, method="san", config_hash="san")
    add_run(out, "catseg-ft", [18.0, 15.0, 36.0, 40.0], method="catseg", protocol="finetune", config_hash="catft")
    # Table 3 variants, Table 4 training sets, Fig. 5 subsets: never rows of Table 2
    add_run(out, "gsnet-a", [18.0, 14.0, 38.0, 40.0], method="gsnet/A", config_hash="va")
    add_run(out, "gsnet-c", [4.0, 3.0, 15.0, 7.0], method="gsnet/C", config_hash="vc")
    add_run(out, "gsnet-loveda", [9.0, 10.0, 19.0, 8.0], train_set="loveda", train_size=2522, config_hash="lv")
    add_run(out, "gsnet-10k", [10.0, 8.0, 30.0, 25.0], train_set="landdiscover10k", train_size=10000, config_hash="k10")
    add_run(out, "gsnet-10k-s1", [12.0, 10.0, 32.0, 27.0], train_set="landdiscover10k", train_size=10000,
            config_hash="k10", seed=1)
    return out


def tables(records, kind, **kwargs):
    specs = {name: load_benchmark(name) for name in benchmark_names()}
    return build_study_tables(
        records, kind, benchmark_sets={n: s.eval_sets for n, s in specs.items()},
        benchmark_train_sets={n: s.train_set for n, s in specs.items()}, study=load_reported(), **kwargs)


def by_method(table):
    return {(row.source, row.labels.get("protocol"), row.labels.get("method")): row for row in table.rows}


def test_main_table_rows_values_avg_and_seed_statistics(records):
    [table] = tables(records, "main")
    assert [(r.labels["protocol"], r.labels["method"]) for r in table.rows] == [
        ("finetune", "CAT-Seg"), ("scratch", "CAT-Seg"), ("scratch", "SAN"), ("scratch", "GSNet")]
    gsnet = by_method(table)[("ovbench", "scratch", "GSNet")]
    assert gsnet.labels["VLM"] == "CLIP-ViT-B/16"
    for index, name in enumerate(SETS):
        column = [values[index] for values in GSNET_SEEDS]
        assert gsnet.values[name].mean == pytest.approx(statistics.fmean(column))
        assert gsnet.values[name].std == pytest.approx(statistics.stdev(column))
        assert gsnet.values[name].n == 2
    assert gsnet.values["Avg"].mean == pytest.approx(statistics.fmean(np.mean(GSNET_SEEDS, axis=0)))
    assert by_method(table)[("ovbench", "scratch", "SAN")].values["Avg"].mean == pytest.approx(statistics.fmean(SAN))
    text = render_study_table(table, "plain")
    assert "22.00 ± 1.41" in text and "45.00 ± 1.41" in text


def test_best_and_second_best_are_computed_per_column(records):
    [table] = tables(records, "main")
    marks = column_marks(table)
    names = [r.labels["protocol"] + "/" + r.labels["method"] for r in table.rows]

    def marked(column, rank):
        return sorted(names[i] for (i, c), r in marks.items() if c == column and r == rank)

    # FLAIR: GSNet's mean 22.0 and SAN's 22.0 tie for best; then CAT-Seg scratch's 19.0
    assert marked("flair", 1) == ["scratch/GSNet", "scratch/SAN"]
    assert marked("flair", 2) == ["scratch/CAT-Seg"]
    assert marked("potsdam", 1) == ["scratch/GSNet"] and marked("potsdam", 2) == ["scratch/CAT-Seg"]
    markdown = render_study_table(table, "markdown")
    assert "**45.00 ± 1.41**" in markdown and "<u>38.00</u>" in markdown
    latex = render_study_table(table, "latex")
    assert r"\textbf{45.00 $\pm$ 1.41}" in latex and r"\underline{38.00}" in latex
    rows = list(csv.DictReader(io.StringIO(render_study_table(table, "csv"))))
    assert {r["method"]: r["Potsdam rank"] for r in rows if r["protocol"] == "scratch"} == {
        "CAT-Seg": "2", "SAN": "", "GSNet": "1"}


def test_marks_rank_rounded_values_so_cells_that_print_alike_rank_alike(records):
    records = [r for r in records if r["method"] in ("catseg", "san") and r["protocol"] == "scratch"]
    records[0]["metrics"]["mIoU"] = 22.004  # CAT-Seg FLAIR, prints as 22.00 like SAN's 22.0
    [table] = tables(records, "main")
    assert {column_marks(table)[(i, "flair")] for i in range(2)} == {1}


def test_reported_rows_sit_beside_reproduced_ones_with_the_delta(records):
    [table] = tables(records, "main")
    assert all(row.source == "ovbench" for row in table.rows)  # published rows only when asked
    [table] = tables(records, "main", with_reported=True)
    sources = [row.source for row in table.rows]
    assert "paper" in sources and "Δ" in sources
    position = next(i for i, r in enumerate(table.rows) if r.source == "ovbench" and r.labels["method"] == "GSNet")
    ours, paper, delta = table.rows[position:position + 3]
    assert (paper.source, delta.source) == ("paper", "Δ")
    assert paper.values["potsdam"].mean == 45.75
    assert delta.values["potsdam"].mean == pytest.approx(45.0 - 45.75)
    assert delta.values["Avg"].mean == pytest.approx(ours.values["Avg"].mean - 31.25)
    # the paper's own marks are recomputed among the paper rows: FLAIR best is SAN's 22.48
    marks = column_marks(table)
    best_flair = [table.rows[i] for (i, c), r in marks.items() if c == "flair" and r == 1 and table.rows[i].source == "paper"]
    assert [(r.labels["method"], r.values["flair"].mean) for r in best_flair] == [("SAN", 22.48)]
    second_fast = [table.rows[i] for (i, c), r in marks.items() if c == "fast" and r == 2 and table.rows[i].source == "paper"]
    assert [r.values["fast"].mean for r in second_fast] == [16.61]
    assert any(r.source.startswith("retrained") and r.values["potsdam"].mean == 35.51 for r in table.rows)
    assert "+" in render_study_table(table, "plain")  # deltas are signed


def test_ablation_trainset_and_size_tables(records):
    [ablation] = tables(records, "ablation")
    reproduced = [r for r in ablation.rows if r.source == "ovbench"]
    assert [r.labels["row"] for r in reproduced] == ["A", "C", "full"]
    assert reproduced[0].labels["CLIP"] == "yes" and reproduced[1].labels["RSIB"] == "yes"
    assert reproduced[1].values["Avg"].mean == pytest.approx(7.25)
    [trainset] = tables(records, "trainset")
    names = [r.labels["training set"] for r in trainset.rows if r.source == "ovbench"]
    assert names == ["LoveDA", "LandDiscover50K"]  # the 10K subset belongs to the size table
    [size] = tables(records, "size")
    assert [r.labels["training images"] for r in size.rows] == ["10K", "51.85K"]  # as the size plot ticks them
    ten_k = size.rows[0]
    assert ten_k.values["flair"].mean == 11.0 and ten_k.values["flair"].std == pytest.approx(2 ** 0.5)
    assert ten_k.values["Avg"].mean == pytest.approx(statistics.fmean([11.0, 9.0, 31.0, 26.0]))


def test_classes_table_splits_seen_and_unseen_by_the_training_vocabulary():
    flair = {"building": 50.0, "pervious surface": 10.0, "impervious surface": 20.0, "water": 70.0, "other": None}
    records = [rec("gsnet-0", "flair", 30.0, per_class=flair)]
    [table] = tables(records, "classes", eval_set="flair")
    [row] = table.rows
    # LandDiscover50K names "buildings" and "water"; FLAIR's other classes are unseen
    assert row.values["seen"].mean == pytest.approx(60.0)
    assert row.values["unseen"].mean == pytest.approx(15.0)
    assert row.values["hIoU"].mean == pytest.approx(2 * 60 * 15 / 75)
    assert row.values["building"].mean == 50.0 and row.values["other"].mean is None
    assert any("seen for scratch on landdiscover50k: building, water;" in note for note in table.notes)


def test_intervals_come_from_the_per_image_counts(tmp_path):
    store = tmp_path / "results.jsonl"
    records = []
    for eval_set in SETS:
        counts = np.zeros((3, 3, 1), dtype=np.int64)
        counts[:, 0, 0] = 5  # every image: TP 5, FP 5 -> IoU 50 on each, so the interval has no width
        counts[:, 1, 0] = 5
        staged = stage_counts(store, "gsnet-0", PerImageCounts(eval_set, ["x"], ["a", "b", "c"], counts))
        staged.commit()
        record = rec("gsnet-0", eval_set, 50.0)
        record["extra"]["per_image"] = staged.reference
        records.append(record)
    [table] = tables(records, "main", ci=True, store_path=store, resamples=200)
    cells = table.rows[0].values
    assert cells["flair"].ci == (50.0, 50.0) and cells["Avg"].ci == (50.0, 50.0)
    assert "50.00 [50.00, 50.00]" in render_study_table(table, "plain")


def test_cli_table_kinds_formats_and_errors(records, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = ovbench(home, "table", "--kind", "main", "--reported", "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in proc.stdout.splitlines() if line.startswith("|")]
    assert ["paper", "scratch", "GSNet", "CLIP-ViT-B/16"] in [cells[:4] for cells in lines]
    assert "**22.48**" in proc.stdout
    assert "-0.75" in proc.stdout  # GSNet Potsdam: 45.00 reproduced - 45.75 published
    proc = ovbench(home, "table", "--kind", "classes", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert_one_error_line(ovbench(home, "table", "--kind", "nonsense"), "unknown table kind 'nonsense'")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_error_line(ovbench(empty, "table", "--kind", "main"), "results store is empty")
