"""`ovbench plot size` (Fig. 5) and `ovbench plot compare`: the numbers behind them and the
PNG/SVG files the installed executable writes."""

from __future__ import annotations

import math
import statistics
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_process import assert_one_error_line, ovbench
from ovbench.errors import OvbenchError
from ovbench.results.plots import (
    compare_data,
    compare_figure,
    format_size,
    render_figure,
    size_data,
    size_figure,
)
from ovbench.results.store import ResultRecord, ResultStore
from ovbench.results.table import AVG_COLUMN, build_table

SETS = ["toyland-urban", "toyland-flood", "toyland-objects"]
BENCHMARK_SETS = {"toyland": SETS}
BENCHMARK_TRAIN_SETS = {"toyland": "toyland-train"}
#: tab10's first colour, the first evaluation set's line / the first series' bars
TAB_BLUE = (31, 119, 180)


def record(method: str, eval_set: str, miou: float, *, seed: int, size: int | None = 256,
           train_set: str | None = None, iterations: int = 100, benchmark: str = "toyland",
           protocol: str = "scratch", label: str | None = None) -> ResultRecord:
    train_set = train_set or (f"toyland-train:size={size}" if size is not None else None)
    return ResultRecord(
        run_id=f"{method}-{train_set}-{iterations}-{label}-{seed}", method=method, protocol=protocol,
        benchmark=benchmark, train_set=train_set, train_size=size, eval_set=eval_set, metrics={"mIoU": miou},
        seed=seed, iterations=iterations, config_hash=f"{method}-{train_set}-{iterations}-{label}",
        code_version="0.1.0", host="test", timestamp="2026-01-01T00:00:00Z", extra={"label": label},
    )


def value(size: int, set_index: int, seed: int) -> float:
    """A known mIoU: grows with the size, differs per set, spreads over seeds."""
    return 10.0 + size / 16 + (0, 3, 9)[set_index] + (seed - 1) * (0.5 + set_index)


@pytest.fixture
def size_records() -> list[ResultRecord]:
    made = [record("gsnet", name, value(size, index, seed), seed=seed, size=size)
            for size in (64, 128, 256) for seed in (0, 1, 2) for index, name in enumerate(SETS)]
    # other methods, for the compare plot; SAN lacks a set, so it has no Avg
    made += [record("catseg", name, 15.0 + index + seed, seed=seed) for seed in (0, 1) for index, name in enumerate(SETS)]
    made += [record("san", name, 9.0 + index, seed=0) for index, name in enumerate(SETS[:2])]
    # GSNet trained on another dataset (as Table 4's): not a point of the toyland-train curve
    made += [record("gsnet", name, 40.0, seed=0, size=999, train_set="other-train") for name in SETS]
    return made


@pytest.fixture
def store(tmp_path: Path, size_records: list[ResultRecord]) -> Path:
    path = tmp_path / "results.jsonl"
    ResultStore(path).append(size_records)
    return path


def as_dicts(records: list[ResultRecord]) -> list[dict]:
    return [item.to_dict() for item in records]


# --------------------------------------------------------------------------- numbers


def test_size_points_are_the_tables_cells_with_std_over_seeds(size_records: list[ResultRecord]) -> None:
    records = as_dicts(size_records)
    data = size_data(records, method="gsnet", protocol="scratch", benchmark_sets=BENCHMARK_SETS,
                     benchmark_train_sets=BENCHMARK_TRAIN_SETS)
    assert data.sizes == [64, 128, 256]
    assert data.columns == [*SETS, AVG_COLUMN]
    assert [point.name for point in data.points] == ["64", "128", "256"]
    table = build_table(records, method="gsnet", benchmark_sets=BENCHMARK_SETS)
    for point, size in zip(data.points, data.sizes):
        (row,) = [key for key in table.index if key[table.index.names.index("train_size")] == size]
        for index, name in enumerate(SETS):
            stat = point.stats[name]
            seeds = [value(size, index, seed) for seed in (0, 1, 2)]
            assert stat.mean == pytest.approx(table.loc[row, (name, "mean")])
            assert stat.std == pytest.approx(statistics.stdev(seeds))
            assert stat.count == 3
        assert point.stats[AVG_COLUMN].mean == pytest.approx(table.loc[row, (AVG_COLUMN, "mean")])
        per_seed_avg = [statistics.fmean(value(size, index, seed) for index in range(3)) for seed in (0, 1, 2)]
        assert point.stats[AVG_COLUMN].std == pytest.approx(statistics.stdev(per_seed_avg))


def test_size_pools_subsets_of_one_size_and_refuses_mixed_configurations() -> None:
    # two seeded subsets of 10000 images: one point, both runs in it
    records = as_dicts([
        record("gsnet", name, 20.0 + subset, seed=0, size=10000, train_set=f"ld50k:size=10000,seed={subset}")
        for subset in (1, 2) for name in SETS
    ] + [record("gsnet", name, 30.0, seed=0, size=50000, train_set="ld50k") for name in SETS])
    data = size_data(records, benchmark_sets=BENCHMARK_SETS)
    assert [point.runs for point in data.points] == [2, 1]
    assert data.points[0].stats[SETS[0]].mean == pytest.approx(21.5)
    assert [point.name for point in data.points] == ["10K", "50K"]
    # the same size trained for different iterations must not be averaged into one point
    mixed = records + as_dicts([record("gsnet", name, 25.0, seed=0, size=50000, train_set="ld50k", iterations=200)
                                for name in SETS])
    with pytest.raises(OvbenchError, match=r"size 50K has runs with different iterations \(100, 200\).*--iterations"):
        size_data(mixed, benchmark_sets=BENCHMARK_SETS)
    assert size_data(mixed, iterations=100, benchmark_sets=BENCHMARK_SETS).sizes == [10000, 50000]


def test_size_keeps_to_the_benchmarks_training_set(size_records: list[ResultRecord]) -> None:
    records = as_dicts(size_records)
    data = size_data(records, benchmark_sets=BENCHMARK_SETS, benchmark_train_sets=BENCHMARK_TRAIN_SETS)
    assert data.sizes == [64, 128, 256]
    assert data.notes == ["left out runs on other training sets (other-train); plot one with --train-set NAME"]
    with pytest.raises(OvbenchError, match=r"train set other-train has results at one \(999\)"):
        size_data(records, train_set="other-train", benchmark_sets=BENCHMARK_SETS)
    with pytest.raises(OvbenchError, match="was trained on landdiscover .*choose one with --train-set"):
        size_data(records, train_set="landdiscover50k", benchmark_sets=BENCHMARK_SETS)


def test_size_needs_two_sizes_and_one_benchmark(size_records: list[ResultRecord]) -> None:
    records = as_dicts(size_records)
    with pytest.raises(OvbenchError, match="two or more training-set sizes.*one \\(256\\)"):
        size_data(records, method="catseg", benchmark_sets=BENCHMARK_SETS)
    other = records + as_dicts([record("gsnet", "coast", 50.0, seed=0, size=64, benchmark="other")])
    with pytest.raises(OvbenchError, match="several benchmarks .*--benchmark"):
        size_data(other, benchmark_sets=BENCHMARK_SETS)
    assert size_data(other, benchmark="toyland", benchmark_sets=BENCHMARK_SETS,
                     benchmark_train_sets=BENCHMARK_TRAIN_SETS).sizes == [64, 128, 256]


def test_format_size() -> None:
    assert [format_size(size) for size in (64, 999, 1000, 10000, 12500, 50000, 2_000_000)] == [
        "64", "999", "1K", "10K", "12.5K", "50K", "2M"]


def test_compare_series_follow_the_methods_given(size_records: list[ResultRecord]) -> None:
    records = as_dicts(size_records)
    data = compare_data(records, methods=["san", "catseg"], benchmark_sets=BENCHMARK_SETS)
    assert [series.name for series in data.series] == ["san (scratch)", "catseg (scratch)"]
    assert data.columns == [*SETS, AVG_COLUMN]
    catseg = data.series[1]
    assert catseg.runs == 2
    assert catseg.stats[SETS[1]].mean == pytest.approx(16.5)
    assert catseg.stats[SETS[1]].std == pytest.approx(math.sqrt(0.5))
    assert catseg.stats[AVG_COLUMN].mean == pytest.approx(16.5)
    san = data.series[0]
    assert san.stats[AVG_COLUMN].count == 0 and math.isnan(san.stats[SETS[2]].mean)
    assert any("san (scratch)" in note and "no Avg" in note for note in data.notes)
    # alike rows are told apart by what differs (here the training set)
    names = [series.name for series in compare_data(records, methods=["gsnet"], benchmark_sets=BENCHMARK_SETS).series]
    assert names == [*(f"gsnet (scratch) [toyland-train:size={size}]" for size in (64, 128, 256)),
                     "gsnet (scratch) [other-train (999)]"]
    with pytest.raises(OvbenchError, match="no results for method 'gsnett'.*did you mean 'gsnet'"):
        compare_data(records, methods=["gsnett"], benchmark_sets=BENCHMARK_SETS)


def test_svg_is_repeatable_and_keeps_its_text(size_records: list[ResultRecord]) -> None:
    data = size_data(as_dicts(size_records), benchmark_sets=BENCHMARK_SETS, benchmark_train_sets=BENCHMARK_TRAIN_SETS)
    first, second = render_figure(size_figure(data), "svg"), render_figure(size_figure(data), "svg")
    assert first == second
    text = first.decode()
    assert "toyland-flood" in text and "training-set size" in text  # editable text, not glyph paths
    bars = render_figure(compare_figure(compare_data(as_dicts(size_records), benchmark_sets=BENCHMARK_SETS)), "svg")
    assert bars == render_figure(compare_figure(compare_data(as_dicts(size_records), benchmark_sets=BENCHMARK_SETS)), "svg")


# --------------------------------------------------------------------------- the executable


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 6) -> int:
    return int((np.abs(pixels.astype(int) - np.asarray(colour)).max(axis=2) <= tolerance).sum())


def check_svg(path: Path, *texts: str) -> None:
    root = ElementTree.parse(path).getroot()
    assert root.tag.endswith("svg")
    content = path.read_text()
    for text in texts:
        assert text in content, text


def test_plot_size_and_compare_write_png_and_svg(tmp_path: Path, store: Path, isolated_home: Path) -> None:
    done = ovbench(isolated_home, "plot", "size", "--store", str(store), "--out", str(tmp_path / "fig5"))
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'fig5.png'}, {tmp_path / 'fig5.svg'}" in done.stderr
    size_png = png_pixels(tmp_path / "fig5.png")
    height, width, _ = size_png.shape
    assert (width, height) == (1080, 660)  # 7.2 x 4.4 inches at 150 dpi
    assert size_png.std() > 20
    assert near(size_png, TAB_BLUE) > 500  # the first set's line and markers are drawn
    assert near(size_png, (0, 0, 0), 30) > 1000  # the thick Avg line (and the text)
    check_svg(tmp_path / "fig5.svg", "toyland-urban", "Avg", "64", "256")

    out = tmp_path / "figures" / "bars.png"  # a suffix names the pair too; folders are created
    done = ovbench(isolated_home, "plot", "compare", "--store", str(store), "--method", "catseg", "--method", "gsnet",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    bars = png_pixels(out)
    height, width, _ = bars.shape
    # 4 groups of 5 bars: 1.2 + 4 x 2.0 inches wide; 4.2 inches plus 3 legend lines (2 columns)
    assert (width, height) == (1380, 729)
    assert bars.std() > 20
    # five series (catseg, gsnet on three subsets and on other-train): each tab10 colour fills bars
    for colour in (TAB_BLUE, (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)):
        assert near(bars, colour) > 2000, colour
    check_svg(out.with_suffix(".svg"), "catseg (scratch)", "toyland-objects", "Avg")
    assert size_png.shape != bars.shape or not np.array_equal(size_png, bars)


def test_plot_errors_are_one_line(tmp_path: Path, store: Path, isolated_home: Path) -> None:
    empty = ovbench(isolated_home, "plot", "size", "--store", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x"))
    assert_one_error_line(empty, "the results store is empty")
    one_size = ovbench(isolated_home, "plot", "size", "--method", "catseg", "--store", str(store),
                       "--out", str(tmp_path / "x"))
    assert_one_error_line(one_size, "two or more training-set sizes")
    unknown = ovbench(isolated_home, "plot", "compare", "--method", "sedd", "--store", str(store),
                      "--out", str(tmp_path / "x"))
    assert_one_error_line(unknown, "no results for method 'sedd'", "(methods: gsnet, catseg, san)")
    assert not list(tmp_path.glob("x.*"))  # nothing written by a refused plot


def test_figure_paths(tmp_path: Path) -> None:
    from ovbench.results.plots import figure_paths

    assert figure_paths(tmp_path / "fig5", "size") == (tmp_path / "fig5.png", tmp_path / "fig5.svg")
    assert figure_paths(tmp_path / "fig5.svg", "size") == (tmp_path / "fig5.png", tmp_path / "fig5.svg")
    assert figure_paths(tmp_path / "run.v2", "size") == (tmp_path / "run.v2.png", tmp_path / "run.v2.svg")
    assert figure_paths(tmp_path, "size") == (tmp_path / "size.png", tmp_path / "size.svg")
