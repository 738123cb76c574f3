"""Tests for building and rendering comparison tables from result records."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from ovbench.errors import ConfigError, OvbenchError
from ovbench.results.table import AVG_COLUMN, N_COLUMN, build_table, render_table, table_notes


def record(method: str, protocol: str, eval_set: str, miou: float | None, *, seed: int = 0, **extra) -> dict:
    fields = {
        "run_id": f"{method}-{protocol}-{seed}",
        "method": method,
        "protocol": protocol,
        "benchmark": "ovrsiss",
        "train_set": "LD50K",
        "eval_set": eval_set,
        "metrics": {"mIoU": miou, "mAcc": None if miou is None else miou + 10},
        "seed": seed,
    }
    fields.update(extra)
    return fields


def key_of(table: pd.DataFrame, **fields) -> tuple:
    """The one row label of ``table`` whose index levels match ``fields``."""
    names = table.index.names
    matches = [key for key in table.index if all(dict(zip(names, key))[f] == v for f, v in fields.items())]
    assert len(matches) == 1, matches
    return matches[0]


def method_protocol(table: pd.DataFrame) -> list[tuple]:
    names = list(table.index.names)
    return [(key[names.index("method")], key[names.index("protocol")]) for key in table.index]


def set_columns(table: pd.DataFrame) -> list[str]:
    return [name for name in dict.fromkeys(table.columns.get_level_values(0)) if name != N_COLUMN]


@pytest.fixture
def records() -> list[dict]:
    return [
        # GSNet, three seeds on both sets
        *(record("GSNet", "scratch", "FLAIR", value, seed=seed) for seed, value in enumerate([19.0, 20.0, 21.0])),
        *(record("GSNet", "scratch", "Potsdam", value, seed=seed) for seed, value in enumerate([45.0, 46.0, 47.0])),
        # CAT-Seg, one run on both sets
        record("CAT-Seg", "scratch", "FLAIR", 19.99),
        record("CAT-Seg", "scratch", "Potsdam", 38.79),
        # SAN fine-tuned, only evaluated on FLAIR
        record("SAN", "finetune", "FLAIR", 19.91),
        # another benchmark entirely
        record("GSNet", "scratch", "coast", 80.0, benchmark="toyland"),
    ]


def test_pivot_means_std_and_counts(records: list[dict]) -> None:
    table = build_table(records, benchmark="ovrsiss")
    assert method_protocol(table) == [("GSNet", "scratch"), ("CAT-Seg", "scratch"), ("SAN", "finetune")]
    assert list(dict.fromkeys(table.columns.get_level_values(0))) == [N_COLUMN, "FLAIR", "Potsdam", AVG_COLUMN]
    gsnet, catseg, san = key_of(table, method="GSNet"), key_of(table, method="CAT-Seg"), key_of(table, method="SAN")
    assert table.loc[gsnet, ("FLAIR", "mean")] == pytest.approx(20.0)
    assert table.loc[gsnet, ("FLAIR", "std")] == pytest.approx(1.0)  # sample std of 19, 20, 21
    assert table.loc[gsnet, ("Potsdam", "count")] == 3
    assert table.loc[gsnet, (N_COLUMN, "count")] == 3
    assert table.loc[catseg, ("Potsdam", "mean")] == pytest.approx(38.79)
    assert math.isnan(table.loc[catseg, ("Potsdam", "std")])
    assert table.loc[catseg, (N_COLUMN, "count")] == 1
    assert math.isnan(table.loc[san, ("Potsdam", "mean")])
    assert table.loc[san, ("Potsdam", "count")] == 0


def test_avg_only_for_rows_with_every_evaluation_set(records: list[dict]) -> None:
    table = build_table(records, benchmark="ovrsiss")
    assert table.loc[key_of(table, method="GSNet"), (AVG_COLUMN, "mean")] == pytest.approx((20.0 + 46.0) / 2)
    assert table.loc[key_of(table, method="CAT-Seg"), (AVG_COLUMN, "mean")] == pytest.approx((19.99 + 38.79) / 2)
    assert math.isnan(table.loc[key_of(table, method="SAN"), (AVG_COLUMN, "mean")])  # FLAIR only: not comparable
    assert table_notes(table) == ["Avg left blank for SAN/finetune: no result on Potsdam"]
    text = render_table(table, "plain", precision=2)
    san_line = next(line for line in text.splitlines() if line.startswith("SAN"))
    assert san_line.split() == ["SAN", "finetune", "1", "19.91"]
    assert text.splitlines()[-1] == "Avg left blank for SAN/finetune: no result on Potsdam"


def test_evaluation_sets_keep_first_appearance_order() -> None:
    rows = [record("A", "scratch", name, 1.0) for name in ["Potsdam", "FLAIR", "FloodNet", "FAST"]]
    table = build_table(rows)
    assert set_columns(table) == ["Potsdam", "FLAIR", "FloodNet", "FAST", "Avg"]


def test_filters_select_records(records: list[dict]) -> None:
    only_scratch = build_table(records, benchmark="ovrsiss", protocol="scratch")
    assert method_protocol(only_scratch) == [("GSNet", "scratch"), ("CAT-Seg", "scratch")]
    toyland = build_table(records, benchmark="toyland")
    assert method_protocol(toyland) == [("GSNet", "scratch")]
    assert set_columns(toyland) == ["coast", AVG_COLUMN]
    san = build_table(records, method="SAN")
    assert method_protocol(san) == [("SAN", "finetune")]


def test_custom_rows_and_value(records: list[dict]) -> None:
    by_method = build_table(records, rows="method", benchmark="ovrsiss", value="mAcc")
    assert by_method.index.name == "method"
    assert list(by_method.index) == ["GSNet", "CAT-Seg", "SAN"]
    assert by_method.loc["GSNet", ("FLAIR", "mean")] == pytest.approx(30.0)
    by_seed = build_table(records, rows=("method", "seed"), method="GSNet", benchmark="ovrsiss")
    assert by_seed.loc[("GSNet", 2), ("Potsdam", "mean")] == 47.0
    assert by_seed.loc[("GSNet", 2), ("Potsdam", "count")] == 1


def test_missing_row_field_groups_under_a_dash() -> None:
    rows = [record("CLIP", "zeroshot", "FLAIR", 10.0, train_set=None), record("GSNet", "scratch", "FLAIR", 20.0)]
    table = build_table(rows, rows=("method", "train_set"))
    assert list(table.index) == [("CLIP", "-"), ("GSNet", "LD50K")]


def test_null_metric_counts_as_no_value() -> None:
    rows = [record("A", "scratch", "FLAIR", 10.0, seed=0), record("A", "scratch", "FLAIR", None, seed=1)]
    table = build_table(rows)
    assert table.loc[key_of(table, method="A"), ("FLAIR", "mean")] == 10.0
    assert table.loc[key_of(table, method="A"), ("FLAIR", "count")] == 1
    assert table.loc[key_of(table, method="A"), (N_COLUMN, "count")] == 1  # a run without a value is no seed


def test_markdown_has_pipes_and_mean_plus_minus_std(records: list[dict]) -> None:
    text = render_table(build_table(records, benchmark="ovrsiss"), "markdown")
    lines = text.splitlines()
    table_lines, notes = lines[: lines.index("")], lines[lines.index("") + 1 :]
    assert all(line.startswith("|") and line.endswith("|") for line in table_lines)
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["method", "protocol", "n", "FLAIR", "Potsdam", "Avg"]
    gsnet = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert gsnet == ["GSNet", "scratch", "3", "20.0 ± 1.0", "46.0 ± 1.0", "33.0"]
    catseg = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert catseg == ["CAT-Seg", "scratch", "1", "20.0", "38.8", "29.4"]  # single runs: no ± part
    assert notes == ["Avg left blank for SAN/finetune: no result on Potsdam"]


def test_precision_controls_digits(records: list[dict]) -> None:
    text = render_table(build_table(records, method="CAT-Seg"), "markdown", precision=2)
    assert "19.99" in text and "38.79" in text and "29.39" in text


def test_latex_is_a_booktabs_tabular_with_escaping() -> None:
    rows = [
        record("A&B_net", "scratch", "FAST_v2", 12.34, seed=0),
        record("A&B_net", "scratch", "FAST_v2", 13.34, seed=1),
        record("A&B_net", "scratch", "10% split", 5.0),
    ]
    text = render_table(build_table(rows), "latex")
    lines = text.strip().splitlines()
    assert lines[0] == r"\begin{tabular}{llrrrr}"
    assert lines[1] == r"\toprule" and lines[3] == r"\midrule" and lines[-2] == r"\bottomrule"
    assert lines[-1] == r"\end{tabular}"
    assert lines[2] == r"method & protocol & n & FAST\_v2 & 10\% split & Avg \\"
    # two seeds; only seed 0 has the second set, which says so
    assert lines[4] == r"A\&B\_net & scratch & 2 & 12.8 $\pm$ 0.7 & 5.0 (n=1) & 8.9 \\"


def test_csv_parses_back_with_separate_numeric_columns(records: list[dict]) -> None:
    text = render_table(build_table(records, benchmark="ovrsiss"), "csv")
    frame = pd.read_csv(io.StringIO(text))
    assert list(frame.columns) == [
        "label", "method", "protocol", "benchmark", "train_set", "train_size", "iterations", "config_hash", "n",
        "FLAIR mean", "FLAIR std", "FLAIR n",
        "Potsdam mean", "Potsdam std", "Potsdam n",
        "Avg mean", "Avg std", "Avg n",
    ]  # fmt: skip
    gsnet = frame.set_index("method").loc["GSNet"]
    assert gsnet["FLAIR mean"] == pytest.approx(20.0) and gsnet["FLAIR std"] == pytest.approx(1.0)
    assert gsnet["Potsdam n"] == 3 and gsnet["n"] == 3
    assert "Avg left blank" not in text  # csv stays machine-readable; notes come from table_notes
    assert frame.set_index("method").loc["CAT-Seg", "Potsdam mean"] == pytest.approx(38.79)  # not rounded
    assert math.isnan(frame.set_index("method").loc["SAN", "Avg mean"])


def test_plain_is_an_aligned_terminal_table(records: list[dict]) -> None:
    text = render_table(build_table(records, benchmark="ovrsiss"))
    lines = text.splitlines()
    assert lines[0].split() == ["method", "protocol", "n", "FLAIR", "Potsdam", "Avg"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert "|" not in text
    assert lines[2].split() == ["GSNet", "scratch", "3", "20.0", "±", "1.0", "46.0", "±", "1.0", "33.0"]
    assert len({len(line) for line in lines[:3]}) == 1  # columns line up


def test_no_matching_results_is_one_line_error(records: list[dict]) -> None:
    with pytest.raises(OvbenchError, match=r"^no results match benchmark='ovrsiss', protocol='zeroshot'") as caught:
        build_table(records, benchmark="ovrsiss", protocol="zeroshot")
    assert "\n" not in str(caught.value)
    with pytest.raises(OvbenchError, match="store is empty"):
        build_table([])
    with pytest.raises(OvbenchError, match="none of the 10 records in the store has metric 'bogus'"):
        build_table(records, value="bogus")


def test_bad_arguments_raise_config_error(records: list[dict]) -> None:
    table = build_table(records, benchmark="ovrsiss")
    with pytest.raises(ConfigError, match="unknown table format 'html'"):
        render_table(table, "html")
    with pytest.raises(ConfigError, match="precision"):
        render_table(table, "plain", precision=-1)
    with pytest.raises(ConfigError, match="unknown table row field 'backbone'"):
        build_table(records, rows=("method", "backbone"))
    with pytest.raises(ConfigError, match="'eval_set' cannot label rows"):
        build_table(records, rows=("eval_set",))
    with pytest.raises(ConfigError, match="build_table"):
        render_table(pd.DataFrame({"a": [1]}))
