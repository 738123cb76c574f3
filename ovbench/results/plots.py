"""Figures from the results store and from a run's training log, drawn with matplotlib.

* `size_data` / `size_figure`: Fig. 5 of the GSNet paper -- a metric per evaluation set, and
  their average, against the training-set size, with error bars over seeds;
* `compare_data` / `compare_figure`: grouped bars, one group per evaluation set (and Avg), one
  bar per configuration;
* `loss_figure`: the loss terms and learning rates of a run's ``log.jsonl``;
* `save_figure`: writes a figure as PNG and SVG, each atomically.

The numbers come from `build_table` with one row per run (its configuration fields plus the
seed), so repeated records are dropped exactly as ``ovbench table`` drops them. A point or bar
is the mean over the runs of a configuration -- the table's cell -- and its error bar the sample
standard deviation over those runs (none with a single run). ``Avg`` is first taken per run,
over its benchmark's evaluation sets, then averaged over the runs that have every set; it equals
the table's Avg whenever each run has all its sets.

Figures are `matplotlib.figure.Figure` objects drawn without pyplot: no display, no global
backend state, nothing interactive.
"""

from __future__ import annotations

import io
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ovbench.errors import ConfigError, OvbenchError, did_you_mean
from ovbench.fileio import atomic_write_bytes
from ovbench.results.table import AVG_COLUMN, CONFIG_FIELDS, build_table

__all__ = [
    "MAX_COMPARED",
    "CompareData",
    "SeriesStats",
    "SizeData",
    "Stat",
    "compare_data",
    "compare_figure",
    "figure_paths",
    "format_size",
    "training_family",
    "loss_figure",
    "save_figure",
    "size_data",
    "size_figure",
]

#: The most configurations one compare plot draws; more bars per group are unreadable.
MAX_COMPARED = 20
#: Resolution of the PNG files.
PNG_DPI = 150
# build_table's stand-in for a missing field (a zero-shot run's training set, no label).
_MISSING = "-"
_RUN_FIELDS = (*CONFIG_FIELDS, "seed")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of one metric over ``count`` runs (NaN when absent)."""

    mean: float
    std: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        numbers = [float(value) for value in values if not pd.isna(value)]
        mean = statistics.fmean(numbers) if numbers else math.nan
        std = statistics.stdev(numbers) if len(numbers) > 1 else math.nan
        return cls(mean, std, len(numbers))


@dataclass
class SeriesStats:
    """One bar colour of a compare plot (a configuration), or one x position of a size plot."""

    name: str
    runs: int
    stats: dict[str, Stat]  #: column (evaluation set or Avg) -> statistics over the runs
    fields: dict[str, Any] = field(default_factory=dict)  #: the configuration's fields


@dataclass
class SizeData:
    value: str
    title: str
    columns: list[str]  #: evaluation sets, then Avg when any size has it
    sizes: list[int]
    points: list[SeriesStats]  #: one per size, in size order
    notes: list[str] = field(default_factory=list)


@dataclass
class CompareData:
    value: str
    title: str
    columns: list[str]
    series: list[SeriesStats]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- aggregation


def _per_run(records: list[dict], *, value: str, benchmark: str | None, protocol: str | None, method: str | None,
             benchmark_sets: Mapping[str, Sequence[str]] | None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(row fields, per-run means, evaluation-set columns) with one row per run."""
    table = build_table(records, value=value, rows=_RUN_FIELDS, benchmark=benchmark, protocol=protocol,
                        method=method, benchmark_sets=benchmark_sets)
    keys = table.index.to_frame(index=False)
    means = table.xs("mean", axis=1, level="stat").reset_index(drop=True)
    eval_sets = [name for name in means.columns if name != AVG_COLUMN]
    return keys, means, eval_sets


def _one_benchmark(keys: pd.DataFrame) -> str:
    names = list(dict.fromkeys(str(name) for name in keys["benchmark"]))
    if len(names) > 1:
        raise OvbenchError(f"the results span several benchmarks ({', '.join(names)}); choose one with --benchmark")
    return names[0]


def _columns(means: pd.DataFrame, eval_sets: list[str], rows: Sequence[int]) -> list[str]:
    """The evaluation sets the selected rows have, and Avg when any of them has it."""
    subset = means.iloc[list(rows)]
    columns = [name for name in eval_sets if subset[name].notna().any()]
    if subset[AVG_COLUMN].notna().any():
        columns.append(AVG_COLUMN)
    return columns


def _stats(means: pd.DataFrame, rows: Sequence[int], columns: list[str]) -> dict[str, Stat]:
    subset = means.iloc[list(rows)]
    return {column: Stat.of(subset[column].tolist()) for column in columns}


def _select(keys: pd.DataFrame, name: str, wanted: Any) -> pd.Series:
    if wanted is None:
        return pd.Series(True, index=keys.index)
    return keys[name].map(lambda raw: str(raw) == str(wanted))


def _describe_filters(**filters: Any) -> str:
    shown = [f"{name.replace('_', ' ')} {value}" for name, value in filters.items() if value is not None]
    return ", ".join(shown)


def format_size(size: int) -> str:
    """A training-set size as a tick label: 10000 -> "10K", 12500 -> "12.5K", 2000000 -> "2M"."""
    for factor, suffix in ((1_000_000, "M"), (1000, "K")):
        if size >= factor:
            return f"{size / factor:.4g}{suffix}"
    return str(size)


def training_family(train_set: Any) -> str:
    """The dataset a training set is drawn from: landdiscover10k ... landdiscover50k and
    landdiscover50k:size=N,seed=S are all "landdiscover"; toyland-train:size=64 is toyland-train."""
    base = str(train_set or "").split(":", 1)[0]
    return re.sub(r"\d+k$", "", base, flags=re.IGNORECASE)


def size_data(records: list[dict], *, method: str = "gsnet", protocol: str = "scratch", benchmark: str | None = None,
              train_set: str | None = None, label: str | None = None, iterations: int | None = None,
              value: str = "mIoU", benchmark_sets: Mapping[str, Sequence[str]] | None = None,
              benchmark_train_sets: Mapping[str, str | None] | None = None) -> SizeData:
    """The points of a size plot: the runs of ``method`` under ``protocol`` on subsets of one
    training set, grouped by their training-set size (the records' ``train_size``).

    Only training sets of ``train_set``'s family (see `training_family`) count; by default the
    family of the benchmark's own training set (``benchmark_train_sets[benchmark]``), so that
    runs trained on other datasets (Table 4's LoveDA, DeepGlobe, ...) stay out of the curve.
    Runs of different training sets of one size (seeded subsets such as
    ``landdiscover50k:size=10000,seed=1`` and ``seed=2``) are pooled into that size's point.
    Raises `OvbenchError` when fewer than two sizes have results, when the results span several
    benchmarks, or when one size holds runs that differ in anything else (label, iterations,
    settings): those would be averaged into one point, so the message says how to choose.
    """
    keys, means, eval_sets = _per_run(records, value=value, benchmark=benchmark, protocol=protocol, method=method,
                                      benchmark_sets=benchmark_sets)
    chosen = _select(keys, "label", label) & _select(keys, "iterations", iterations)
    sized = chosen & keys["train_size"].map(lambda raw: raw != _MISSING)
    what = _describe_filters(method=method, protocol=protocol, benchmark=benchmark, label=label, iterations=iterations)
    if not sized.any():
        reason = "has a training-set size" if chosen.any() else "matches"
        raise OvbenchError(f"no result with {what} {reason}; `ovbench table` lists what the store holds")
    keys, means = keys[sized].reset_index(drop=True), means[sized].reset_index(drop=True)
    bench = _one_benchmark(keys)
    notes = []
    family_of = train_set if train_set is not None else (benchmark_train_sets or {}).get(bench)
    if family_of:
        family = training_family(family_of)
        in_family = keys["train_set"].map(lambda raw: training_family(raw) == family)
        others = list(dict.fromkeys(str(raw) for raw in keys["train_set"][~in_family]))
        if not in_family.any():
            raise OvbenchError(f"no result with {what} was trained on {family} (training sets: {', '.join(others)}); "
                               "choose one with --train-set")
        if others:
            notes.append(f"left out runs on other training sets ({', '.join(others)}); plot one with --train-set NAME")
        keys, means = keys[in_family].reset_index(drop=True), means[in_family].reset_index(drop=True)
        what = _describe_filters(method=method, protocol=protocol, benchmark=benchmark, train_set=family, label=label,
                                 iterations=iterations)

    groups: dict[int, list[int]] = {}
    for position, raw in enumerate(keys["train_size"]):
        groups.setdefault(int(raw), []).append(position)
    sizes = sorted(groups)
    if len(sizes) < 2:
        shown = ", ".join(format_size(size) for size in sizes)
        raise OvbenchError(
            f"a size plot needs results at two or more training-set sizes; {what} has results at one ({shown})"
        )
    for size in sizes:
        _refuse_mixed_size(keys.iloc[groups[size]], size)
    columns = _columns(means, eval_sets, range(len(keys)))
    points = []
    for size in sizes:
        rows = groups[size]
        train_sets = list(dict.fromkeys(str(name) for name in keys["train_set"].iloc[rows]))
        points.append(SeriesStats(format_size(size), len(rows), _stats(means, rows, columns),
                                  {"train_size": size, "train_set": train_sets}))
    if AVG_COLUMN not in columns:
        notes.append(f"no run has a result on every evaluation set of {bench}: the plot has no Avg line")
    title = f"{method} ({protocol}) on {bench}: {value} vs training-set size"
    return SizeData(value, title, columns, sizes, points, notes)


def _refuse_mixed_size(group: pd.DataFrame, size: int) -> None:
    for name, option in (("label", "--label"), ("iterations", "--iterations")):
        values = list(dict.fromkeys(str(raw) for raw in group[name]))
        if len(values) > 1:
            raise OvbenchError(
                f"training-set size {format_size(size)} has runs with different {name} ({', '.join(values)}); "
                f"plot one of them with {option}"
            )
    for train_set, runs in group.groupby("train_set", sort=False):
        hashes = list(dict.fromkeys(str(raw) for raw in runs["config_hash"]))
        if len(hashes) > 1:
            raise OvbenchError(
                f"training set {train_set} has runs of {len(hashes)} different settings (config hashes "
                f"{', '.join(hashes)}); a size plot needs one configuration per size: give them labels "
                "and choose one with --label"
            )


def compare_data(records: list[dict], *, methods: Sequence[str] = (), protocol: str | None = None,
                 benchmark: str | None = None, labels: Sequence[str] = (), value: str = "mIoU",
                 benchmark_sets: Mapping[str, Sequence[str]] | None = None) -> CompareData:
    """The bars of a compare plot: one series per configuration (as `ovbench table`'s rows).

    ``methods`` / ``labels`` select configurations (all when empty); series follow the order of
    ``methods`` when it is given, else the store's order. Raises `OvbenchError` for a method or
    label without results, several benchmarks, or more than `MAX_COMPARED` configurations.
    """
    methods, labels = list(dict.fromkeys(methods)), list(dict.fromkeys(labels))
    keys, means, eval_sets = _per_run(records, value=value, benchmark=benchmark, protocol=protocol, method=None,
                                      benchmark_sets=benchmark_sets)
    for name, wanted, option in (("method", methods, "--method"), ("label", labels, "--label")):
        present = [str(raw) for raw in dict.fromkeys(keys[name]) if raw != _MISSING]
        for item in wanted:
            if item not in present:
                scope = _describe_filters(protocol=protocol, benchmark=benchmark)
                among = f" among the results with {scope}" if scope else ""
                known = ", ".join(present) if present else "none"
                raise OvbenchError(
                    f"no results for {name} {item!r}{among}{did_you_mean(item, present)} ({name}s: {known})"
                )
    chosen = pd.Series(True, index=keys.index)
    if methods:
        chosen &= keys["method"].map(lambda raw: str(raw) in methods)
    if labels:
        chosen &= keys["label"].map(lambda raw: str(raw) in labels)
    keys, means = keys[chosen].reset_index(drop=True), means[chosen].reset_index(drop=True)
    bench = _one_benchmark(keys)

    groups: dict[tuple, list[int]] = {}
    for position, config in enumerate(keys[list(CONFIG_FIELDS)].itertuples(index=False, name=None)):
        groups.setdefault(config, []).append(position)
    configs = list(groups)
    if methods:
        configs.sort(key=lambda config: methods.index(str(config[CONFIG_FIELDS.index("method")])))
    if len(configs) > MAX_COMPARED:
        raise OvbenchError(
            f"{len(configs)} configurations match; a compare plot draws at most {MAX_COMPARED}: "
            "choose some with --method, --label, --protocol or --benchmark"
        )
    columns = _columns(means, eval_sets, range(len(keys)))
    fields = [dict(zip(CONFIG_FIELDS, config)) for config in configs]
    names = _series_names(fields)
    series = [SeriesStats(name, len(groups[config]), _stats(means, groups[config], columns), config_fields)
              for name, config, config_fields in zip(names, configs, fields)]
    notes = [f"{item.name}: no result on every evaluation set of {bench}, so no Avg bar"
             for item in series if AVG_COLUMN in columns and item.stats[AVG_COLUMN].count == 0]
    scope = _describe_filters(protocol=protocol)
    title = f"{value} per evaluation set on {bench}" + (f" ({scope})" if scope else "")
    return CompareData(value, title, columns, series, notes)


def _train_set_text(config: dict[str, Any]) -> str:
    name, size = str(config["train_set"]), config["train_size"]
    if name == _MISSING:
        return "no training"
    if size == _MISSING or str(size) in name or format_size(int(size)).lower() in name.lower():
        return name  # landdiscover10k, toyland-train:size=64: the name already says the size
    return f"{name} ({format_size(int(size))})"


def _series_names(configs: list[dict[str, Any]]) -> list[str]:
    """Legend names: the label, else "method (protocol)", plus what tells alike rows apart."""
    bases = [str(c["label"]) if c["label"] != _MISSING else f"{c['method']} ({c['protocol']})" for c in configs]
    extras: list[list[str]] = [[] for _ in configs]

    def current() -> list[str]:
        return [base + (f" [{', '.join(more)}]" if more else "") for base, more in zip(bases, extras)]

    describe = {
        "protocol": lambda c: str(c["protocol"]),
        "train_set": _train_set_text,
        "iterations": lambda c: "-" if c["iterations"] == _MISSING else f"{c['iterations']} it",
        "config_hash": lambda c: f"config {str(c['config_hash'])[:8]}",
    }
    for name, text in describe.items():
        names = current()
        if len(set(names)) == len(names):
            break
        clashing = {item for item in names if names.count(item) > 1}
        values = {text(c) for c, item in zip(configs, names) if item in clashing}
        if len(values) > 1:
            for index, item in enumerate(names):
                if item in clashing:
                    extras[index].append(text(configs[index]))
    return current()


# --------------------------------------------------------------------------- drawing


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _colours(count: int) -> list[tuple[float, ...]]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


def _error_bars(axis, xs: Sequence[float], stats: Sequence[Stat], colour, **kwargs) -> None:
    """Error bars only where a std exists: a single run has none, and drawing a zero-length
    bar would suggest a measured spread of zero."""
    shown = [(x, stat) for x, stat in zip(xs, stats) if not math.isnan(stat.mean) and not math.isnan(stat.std)]
    if shown:
        axis.errorbar([x for x, _ in shown], [stat.mean for _, stat in shown], yerr=[stat.std for _, stat in shown],
                      fmt="none", ecolor=colour, capsize=3, linewidth=1, **kwargs)


def size_figure(data: SizeData):
    """Lines of each evaluation set (thin, coloured) and Avg (thick, black) over the sizes."""
    figure = _new_figure(7.2, 4.4)
    axis = figure.add_subplot()
    sets = [column for column in data.columns if column != AVG_COLUMN]
    for column, colour in zip(sets, _colours(len(sets))):
        stats = [point.stats[column] for point in data.points]
        axis.plot(data.sizes, [stat.mean for stat in stats], marker="o", markersize=4, linewidth=1.4,
                  color=colour, label=column)
        _error_bars(axis, data.sizes, stats, colour)
    if AVG_COLUMN in data.columns:
        stats = [point.stats[AVG_COLUMN] for point in data.points]
        axis.plot(data.sizes, [stat.mean for stat in stats], marker="s", markersize=5, linewidth=2.6,
                  color="black", label=AVG_COLUMN, zorder=3)
        _error_bars(axis, data.sizes, stats, "black", zorder=3)
    counts = [point.runs for point in data.points]
    # the run count matters for reading the error bars; shown only when a size has several
    ticks = [f"{point.name}\nn={point.runs}" if max(counts) > 1 else point.name for point in data.points]
    axis.set_xticks(data.sizes, ticks)
    axis.set_xlabel("training-set size (images)")
    axis.set_ylabel(f"{data.value} (%)")
    axis.set_title(data.title, fontsize="medium")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return figure


def compare_figure(data: CompareData):
    """Grouped bars: a group per evaluation set and Avg, a bar per configuration."""
    count, groups = len(data.series), len(data.columns)
    width = 0.8 / count
    # a group is as wide as its bars or its tick label, whichever needs more (inches)
    group_width = max(0.3 * count + 0.5, 0.09 * max(len(column) for column in data.columns) + 0.3)
    figure_width = min(30.0, max(6.4, 1.2 + groups * group_width))
    names = [series.name + (f" (n={series.runs})" if series.runs > 1 else "") for series in data.series]
    legend_columns = max(1, min(count, int((figure_width - 0.4) // (0.45 + 0.075 * max(map(len, names))))))
    legend_rows = math.ceil(count / legend_columns)
    figure = _new_figure(figure_width, 4.2 + 0.22 * legend_rows)
    axis = figure.add_subplot()
    for index, (series, colour, name) in enumerate(zip(data.series, _colours(count), names)):
        xs = [group + (index - (count - 1) / 2) * width for group in range(groups)]
        stats = [series.stats[column] for column in data.columns]
        present = [(x, stat.mean) for x, stat in zip(xs, stats) if not math.isnan(stat.mean)]
        axis.bar([x for x, _ in present], [mean for _, mean in present], width * 0.92, color=colour, label=name)
        _error_bars(axis, xs, stats, "black")
    if AVG_COLUMN in data.columns and groups > 1:
        axis.axvline(groups - 1.5, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xticks(range(groups), data.columns)
    for tick in axis.get_xticklabels():
        if tick.get_text() == AVG_COLUMN:
            tick.set_fontweight("bold")
    axis.set_xlim(-0.6, groups - 0.4)
    axis.set_ylabel(f"{data.value} (%)")
    axis.set_title(data.title, fontsize="medium")
    axis.grid(axis="y", alpha=0.3)
    axis.set_axisbelow(True)
    # "outside": constrained layout makes room for the legend below the axes
    figure.legend(loc="outside lower center", ncol=legend_columns, fontsize="small", frameon=False)
    return figure


def loss_figure(entries: list[dict], title: str):
    """Two panels over the iterations: every logged loss term with the total in bold, and the
    learning rate of each optimiser group (groups with the same schedule drawn once)."""
    if not entries:
        raise OvbenchError("the training log has no entries to plot")
    iterations = [int(entry["iteration"]) for entry in entries]
    markers = {"marker": "o", "markersize": 3} if len(entries) <= 30 else {}
    figure = _new_figure(7.2, 5.6)
    loss_axis, lr_axis = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1])

    terms = list(dict.fromkeys(name for entry in entries for name in (entry.get("losses") or {})))
    totals = [_finite(entry.get("loss")) for entry in entries]
    term_values = {name: [_finite((entry.get("losses") or {}).get(name)) for entry in entries] for name in terms}
    # a method with a single loss term logs it equal to the total: drawing both hides nothing
    if not (len(terms) == 1 and _same(term_values[terms[0]], totals)):
        for name, colour in zip(terms, _colours(len(terms))):
            loss_axis.plot(iterations, term_values[name], linewidth=1.0, color=colour, label=name, **markers)
    loss_axis.plot(iterations, totals, linewidth=2.4, color="black", label="total loss" if len(terms) != 1 else terms[0],
                   **markers)
    loss_axis.set_ylabel("loss")
    loss_axis.set_title(title, fontsize="medium")
    loss_axis.grid(alpha=0.3)
    loss_axis.legend(fontsize="small", frameon=False)

    schedules: dict[tuple, list[int]] = {}
    for group in range(max(len(_lrs(entry)) for entry in entries)):
        values = tuple(_finite(_lrs(entry)[group]) if group < len(_lrs(entry)) else math.nan for entry in entries)
        schedules.setdefault(values, []).append(group)
    positive = [value for values in schedules for value in values if value > 0]
    for (values, groups), colour in zip(schedules.items(), _colours(len(schedules))):
        name = "lr" if len(schedules) == 1 else f"lr, group{'s' if len(groups) > 1 else ''} {', '.join(map(str, groups))}"
        lr_axis.plot(iterations, list(values), linewidth=1.4, color=colour, label=name, **markers)
    # groups scaled by a multiplier (a backbone at lr x 0.01) only show on a log axis
    if positive and max(positive) / min(positive) > 20:
        lr_axis.set_yscale("log")
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("iteration")
    lr_axis.grid(alpha=0.3)
    if len(schedules) > 1:
        lr_axis.legend(fontsize="small", frameon=False)
    return figure


def _lrs(entry: dict) -> list[Any]:
    raw = entry.get("lr")
    if isinstance(raw, (list, tuple)):
        return list(raw)
    return [] if raw is None else [raw]


def _finite(raw: Any) -> float:
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _same(first: list[float], second: list[float]) -> bool:
    return all((math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
               for a, b in zip(first, second))


# --------------------------------------------------------------------------- files


def figure_paths(out: str | Path, default_name: str) -> tuple[Path, Path]:
    """(PNG path, SVG path) for ``--out``: a stem (``fig5`` -> fig5.png, fig5.svg), a file
    name with either suffix (``fig5.png`` -> the same pair), or an existing folder (its
    ``default_name`` stem)."""
    out = Path(out)
    if out.is_dir():
        stem = out / default_name
    elif out.suffix.lower() in (".png", ".svg"):
        stem = out.with_suffix("")
    else:
        stem = out
    if not stem.name:
        raise ConfigError(f"--out {out}: give a file name stem such as figures/fig5")
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")


def render_figure(figure, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes; the SVG is byte-for-byte repeatable (fixed ids, no date)."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "ovbench", "svg.fonttype": "none"}):
        if fmt == "png":
            figure.savefig(buffer, format="png", dpi=PNG_DPI, facecolor="white")
        else:
            figure.savefig(buffer, format="svg", facecolor="white", metadata={"Date": None})
    return buffer.getvalue()


def save_figure(figure, out: str | Path, default_name: str) -> list[Path]:
    """Write the figure as PNG and SVG (see `figure_paths`); both are rendered before either is
    written, and each is written atomically. Returns the paths written."""
    paths = figure_paths(out, default_name)
    rendered = [render_figure(figure, "png"), render_figure(figure, "svg")]
    for path, data in zip(paths, rendered):
        atomic_write_bytes(path, data)
    return list(paths)
