"""The study's tables, rendered from the results store: `ovbench table --kind KIND`.

Kinds (the GSNet paper's numbering):

* ``main`` (Table 2): one row per configuration -- protocol, method, VLM -- over the
  benchmark's evaluation sets and Avg. Ablation variants (``gsnet/A``) and runs trained on
  another set than the benchmark's are left to their own kinds.
* ``ablation`` (Table 3): the variants of one method (``gsnet/A`` .. ``gsnet/I``) and the full
  model, with the component columns of the published table.
* ``trainset`` (Table 4): one method trained on different training sets (LandDiscover
  subsets are left to ``size``).
* ``size`` (the numbers behind Fig. 5): one method against training-set size, for training
  sets of the benchmark's own family (LandDiscover 10K-50K, or seeded subsets of it).
* ``classes``: per-class IoU on one evaluation set, with the seen / unseen split relative to
  each row's training vocabulary and the harmonic mean (`ovbench.results.seen_unseen`).

Every cell is the mean over the row's seeds, ``± std`` when there are several. Best and
second best per column are computed, never typed: on values rounded to the shown precision,
so two cells that print alike rank alike, and separately among reproduced rows and among
published ones. ``reported=True`` adds the published rows (`ovbench.results.reported`)
beside their reproduced counterparts with a delta row; ``ci=True`` adds percentile bootstrap
95% intervals over images (`ovbench.results.uncertainty`).
"""

from __future__ import annotations

import io
import csv
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from ovbench.errors import ConfigError, OvbenchError
from ovbench.results.plots import format_size, training_family
from ovbench.results.reported import ReportedStudy
from ovbench.results.table import AVG_COLUMN, config_key, drop_repeats, metric_value
from ovbench.results.table import latex_escape as _latex_escape

__all__ = ["STUDY_KINDS", "Cell", "StudyRow", "StudyTable", "build_study_tables", "render_study_table",
           "row_provenance"]

STUDY_KINDS = ("main", "ablation", "trainset", "size", "classes")
STUDY_FORMATS = ("plain", "markdown", "latex", "csv")
#: Table 2's row order: protocols, then methods as the paper lists them; others follow
_PROTOCOL_ORDER = ("finetune", "scratch", "zeroshot")
_METHOD_ORDER = ("catseg", "catseg-remoteclip", "scan", "scan-remoteclip", "ovseg", "san", "sed", "ebseg", "gsnet")
SEEN, UNSEEN, HARMONIC = "seen", "unseen", "hIoU"
#: what the ``source`` column says of each kind of row
OURS, PAPER, DELTA = "ovbench", "paper", "Δ"


@dataclass
class Cell:
    mean: float | None
    std: float | None = None
    n: int = 0
    #: (low, high) of the bootstrap interval, when asked for
    ci: tuple[float, float] | None = None


@dataclass
class StudyRow:
    labels: dict[str, str]
    values: dict[str, Cell]
    #: ovbench (reproduced), paper (published), independent (others' retraining), Δ
    source: str = OURS
    #: the records behind a reproduced row, per evaluation set (provenance, intervals)
    records: dict[str, list[dict]] = field(default_factory=dict)


@dataclass
class StudyTable:
    kind: str
    title: str
    benchmark: str
    label_columns: list[str]
    value_columns: list[str]
    column_titles: dict[str, str]
    rows: list[StudyRow]
    notes: list[str] = field(default_factory=list)
    precision: int = 2
    #: tables rendered right after this one (published rows on another benchmark)
    companions: list["StudyTable"] = field(default_factory=list)


# --------------------------------------------------------------------------- building


def build_study_tables(records: list[dict], kind: str, *, benchmark_sets: Mapping[str, Sequence[str]],
                       benchmark: str | None = None, method: str | None = None, protocol: str | None = None,
                       eval_set: str | None = None, study: ReportedStudy | None = None,
                       with_reported: bool = False, ci: bool = False, store_path: Any = None, resamples: int = 1000,
                       benchmark_train_sets: Mapping[str, str | None] | None = None, value: str = "mIoU",
                       precision: int = 2) -> list[StudyTable]:
    """The tables of one kind (``classes`` gives one per evaluation set, the others one).

    ``study`` (the published numbers, `ovbench.results.reported.load_reported`) names the rows
    as the paper does (CAT-Seg, its VLM, the ablations' component columns); with
    ``with_reported`` its published rows are added beside the reproduced ones."""
    reported = study
    if kind not in STUDY_KINDS:
        raise ConfigError(f"unknown table kind {kind!r}; choose one of {', '.join(STUDY_KINDS)}")
    usable = [r for r in records if isinstance(r, dict)]
    if not usable:
        raise OvbenchError("no results: the results store is empty (run `ovbench run` or `ovbench eval` first)")
    bench = _pick_benchmark(usable, benchmark)
    sets = list(benchmark_sets.get(bench) or dict.fromkeys(r.get("eval_set") for r in usable if r.get("benchmark") == bench))
    train_set_of_benchmark = (benchmark_train_sets or {}).get(bench)
    selected = [r for r in usable if r.get("benchmark") == bench and metric_value(r, value) is not None]
    if protocol is not None:
        selected = [r for r in selected if r.get("protocol") == protocol]
    titles = {name: (reported.sets.get(name, name) if reported else name) for name in sets}
    titles[AVG_COLUMN] = AVG_COLUMN
    builder = _BUILDERS[kind]
    tables = builder(selected, sets=sets, titles=titles, bench=bench, method=method, reported=reported,
                     with_reported=with_reported,
                     eval_set=eval_set, train_set=train_set_of_benchmark, value=value, precision=precision)
    for table in tables:
        if ci and table.kind != "classes":
            _add_intervals(table, store_path, resamples)
    if not any(table.rows for table in tables) and not any(t.rows for table in tables for t in table.companions):
        raise OvbenchError(f"no results for table kind {kind} on benchmark {bench}: {_HINTS[kind]}")
    tables = [t for table in tables for t in (table, *table.companions)]
    for table in tables:
        table.precision = precision
    return tables


def _pick_benchmark(records: list[dict], requested: str | None) -> str:
    present = list(dict.fromkeys(str(r.get("benchmark")) for r in records))
    if requested is not None:
        if requested not in present:
            raise OvbenchError(f"no results on benchmark {requested}; the store has {', '.join(present)}")
        return requested
    if len(present) == 1:
        return present[0]
    for preferred in ("ovrsiss", "toyland"):
        if preferred in present:
            return preferred
    raise OvbenchError(f"the store holds several benchmarks ({', '.join(present)}); choose one with --benchmark")


def _group_by_configuration(records: list[dict]) -> list[list[dict]]:
    """Records of one configuration (differing at most in seed) together, repeats dropped,
    in order of first appearance."""
    kept, _ = drop_repeats(records)
    groups: dict[tuple, list[dict]] = {}
    for record in kept:
        groups.setdefault(config_key(record), []).append(record)
    return list(groups.values())


def _cells(group: list[dict], sets: list[str], value: str) -> tuple[dict[str, Cell], dict[str, list[dict]]]:
    by_set: dict[str, list[dict]] = {name: [] for name in sets}
    for record in group:
        if record.get("eval_set") in by_set:
            by_set[record["eval_set"]].append(record)
    cells = {name: _stat([metric_value(r, value) for r in rows]) for name, rows in by_set.items()}
    means = [cells[name].mean for name in sets]
    runs = max((cell.n for cell in cells.values()), default=0)
    avg = statistics.fmean(means) if means and all(m is not None for m in means) else None
    cells[AVG_COLUMN] = Cell(avg, None, runs)
    return cells, by_set


def _stat(values: list[float | None]) -> Cell:
    numbers = [v for v in values if v is not None]
    if not numbers:
        return Cell(None)
    std = statistics.stdev(numbers) if len(numbers) > 1 else None
    return Cell(statistics.fmean(numbers), std, len(numbers))


def _method_order(method: str, protocol: str) -> tuple:
    p = _PROTOCOL_ORDER.index(protocol) if protocol in _PROTOCOL_ORDER else len(_PROTOCOL_ORDER)
    m = _METHOD_ORDER.index(method) if method in _METHOD_ORDER else len(_METHOD_ORDER)
    return p, m, method


def _disambiguate(rows: list[StudyRow], column: str, groups: list[list[dict]]) -> None:
    """Rows that would print alike get their iterations (then config hash) appended."""
    seen: dict[tuple, int] = {}
    for row in rows:
        key = tuple(row.labels.values())
        seen[key] = seen.get(key, 0) + 1
    for row, group in zip(rows, groups):
        if seen[tuple(row.labels.values())] > 1:
            record = group[0]
            row.labels[column] += f" [{record.get('iterations')} it, {str(record.get('config_hash'))[:8]}]"


def _is_variant(method: str) -> bool:
    return "/" in method


def _main(records, *, sets, titles, bench, method, reported, with_reported, train_set, value, **_):
    chosen = [r for r in records if not _is_variant(str(r.get("method")))
              and (train_set is None or r.get("train_set") in (None, train_set))]
    if method is not None:
        chosen = [r for r in chosen if r.get("method") == method]
    groups = sorted(_group_by_configuration(chosen),
                    key=lambda g: _method_order(str(g[0].get("method")), str(g[0].get("protocol"))))
    rows = []
    for group in groups:
        record = group[0]
        name = str(record.get("method"))
        label = (record.get("extra") or {}).get("label")
        cells, by_set = _cells(group, sets, value)
        rows.append(StudyRow({"protocol": str(record.get("protocol")),
                              "method": reported.method_name(name) if reported else (label or name),
                              "VLM": reported.method_vlm(name) if reported else ""}, cells, OURS, by_set))
    _disambiguate(rows, "method", groups)
    table = StudyTable("main", f"Table 2 - methods x protocols, {value} on {bench}", bench,
                       ["protocol", "method", "VLM"], sets + [AVG_COLUMN], titles, rows)
    if reported is not None and with_reported:
        _add_reported(table, groups, reported, "main",
                      match=lambda rep, rec: rep.get("method") == rec.get("method") and rep.get("protocol") == rec.get("protocol"),
                      labels=lambda rep: {"protocol": rep["protocol"], "method": reported.method_name(rep["method"]),
                                          "VLM": reported.method_vlm(rep["method"])})
        _add_independent(table, reported)
    return [table]


def _ablation(records, *, sets, titles, bench, method, reported, with_reported, train_set, value, **_):
    base = method or "gsnet"
    chosen = [r for r in records if (r.get("method") == base or str(r.get("method")).startswith(base + "/"))
              and r.get("protocol") in ("scratch", None) and (train_set is None or r.get("train_set") == train_set)]
    groups = sorted(_group_by_configuration(chosen), key=lambda g: (g[0].get("method") == base, str(g[0].get("method"))))
    component_columns = reported.table("ablation").columns if reported else []
    published = {row.get("method"): row for row in (reported.table("ablation").rows if reported else [])}
    rows = []
    for group in groups:
        name = str(group[0].get("method"))
        row_name = "full" if name == base else name.split("/", 1)[1]
        labels = {"row": row_name, **{c: _yes_no(published.get(name, {}).get(c)) for c in component_columns}}
        cells, by_set = _cells(group, sets, value)
        rows.append(StudyRow(labels, cells, OURS, by_set))
    table = StudyTable("ablation", f"Table 3 - {base} component ablations, {value} on {bench}", bench,
                       ["row", *component_columns], sets + [AVG_COLUMN], titles, rows)
    if reported is not None and with_reported:
        _add_reported(table, groups, reported, "ablation", match=lambda rep, rec: rep.get("method") == rec.get("method"),
                      labels=lambda rep: {"row": rep["row"], **{c: _yes_no(rep.get(c)) for c in component_columns}})
    return [table]


def _is_subset(train_set: str | None, full: str | None) -> bool:
    return train_set != full and training_family(train_set) == training_family(full)


def _trainset(records, *, sets, titles, bench, method, reported, with_reported, train_set, value, **_):
    base = method or "gsnet"
    chosen = [r for r in records if r.get("method") == base and r.get("train_set")
              and not _is_subset(r.get("train_set"), train_set)]
    published = reported.table("trainset").rows if reported else []
    order = [row.get("train_set") for row in published]
    groups = sorted(_group_by_configuration(chosen),
                    key=lambda g: (order.index(g[0]["train_set"]) if g[0]["train_set"] in order else len(order),
                                   str(g[0]["train_set"])))
    names = {row.get("train_set"): row.get("name") for row in published}
    rows = []
    for group in groups:
        cells, by_set = _cells(group, sets, value)
        train = group[0]["train_set"]
        rows.append(StudyRow({"training set": str(names.get(train, train)), "images": _size(group[0].get("train_size"))},
                             cells, OURS, by_set))
    _disambiguate(rows, "training set", groups)
    table = StudyTable("trainset", f"Table 4 - {base} by training set, {value} on {bench}", bench,
                       ["training set", "images"], sets + [AVG_COLUMN], titles, rows)
    if reported is not None and with_reported:
        _add_reported(table, groups, reported, "trainset", match=lambda rep, rec: rep.get("train_set") == rec.get("train_set"),
                      labels=lambda rep: {"training set": rep["name"], "images": ""})
    return [table]


def _size(size: Any) -> str:
    # the same tick text as the size plot (10K, 51.85K)
    return format_size(size) if isinstance(size, int) else ""


def _size_table(records, *, sets, titles, bench, method, reported, with_reported, train_set, value, **_):
    base = method or "gsnet"
    chosen = [r for r in records if r.get("method") == base and isinstance(r.get("train_size"), int)
              and (train_set is None or training_family(r.get("train_set")) == training_family(train_set))]
    groups = sorted(_group_by_configuration(chosen), key=lambda g: (g[0]["train_size"], str(g[0].get("train_set"))))
    rows = []
    for group in groups:
        cells, by_set = _cells(group, sets, value)
        rows.append(StudyRow({"training images": _size(group[0]["train_size"]), "training set": str(group[0].get("train_set"))},
                             cells, OURS, by_set))
    table = StudyTable("size", f"Fig. 5 - {base} vs training-set size, {value} on {bench}", bench,
                       ["training images", "training set"], sets + [AVG_COLUMN], titles, rows)
    if reported is not None and with_reported:
        table.notes.append(f"{reported.table('size').source}: the paper prints no values for this figure")
    return [table]


def _classes(records, *, sets, titles, bench, method, reported, eval_set, value, **_):
    from ovbench.results.seen_unseen import group_miou, harmonic_mean, split_classes

    wanted = [eval_set] if eval_set else sets
    if eval_set and eval_set not in sets:
        raise OvbenchError(f"{eval_set} is not an evaluation set of {bench} ({', '.join(sets)})")
    chosen = [r for r in records if method is None or r.get("method") == method]
    groups = sorted(_group_by_configuration(chosen),
                    key=lambda g: _method_order(str(g[0].get("method")), str(g[0].get("protocol"))))
    tables = []
    for name in wanted:
        rows, row_groups, class_names, splits = [], [], [], {}
        for group in groups:
            on_set = [r for r in group if r.get("eval_set") == name]
            if not on_set:
                continue
            for record in on_set:
                class_names += [c for c in (record.get("per_class_iou") or {}) if c not in class_names]
            record = on_set[0]
            split_key = (record.get("train_set"), record.get("protocol"))
            if split_key not in splits:
                splits[split_key] = split_classes(name, *split_key)
            split = splits[split_key]
            per_class = {c: _stat([(r.get("per_class_iou") or {}).get(c) for r in on_set]) for c in class_names}
            mean_iou = {c: cell.mean for c, cell in per_class.items()}
            seen, unseen = group_miou(mean_iou, split.seen), group_miou(mean_iou, split.unseen)
            values = {**per_class, SEEN: Cell(seen, None, len(on_set)), UNSEEN: Cell(unseen, None, len(on_set)),
                      HARMONIC: Cell(harmonic_mean(seen, unseen), None, len(on_set))}
            label = (record.get("extra") or {}).get("label")
            method_name = str(record.get("method"))
            rows.append(StudyRow({"protocol": str(record.get("protocol")),
                                  "method": label or (reported.method_name(method_name) if reported else method_name)},
                                 values, OURS, {name: on_set}))
            row_groups.append(group)
        if not rows:
            continue
        _disambiguate(rows, "method", row_groups)
        columns = class_names + [SEEN, UNSEEN, HARMONIC]
        table = StudyTable("classes", f"Per-class IoU on {titles.get(name, name)} ({bench})", bench,
                           ["protocol", "method"], columns, {c: c for c in columns}, rows)
        for (train, protocol), split in splits.items():
            trained = f"{protocol} on {train}" if train and protocol != "zeroshot" else f"{protocol} (no training vocabulary)"
            table.notes.append(f"seen for {trained}: {', '.join(split.seen) or 'none'}; "
                               f"unseen: {', '.join(split.unseen) or 'none'}")
        tables.append(table)
    if not tables:
        raise OvbenchError(f"no per-class results on {', '.join(wanted)} in benchmark {bench}")
    return tables


_HINTS = {
    "main": "train or evaluate a method first (ovbench run --method gsnet --protocol scratch)",
    "ablation": "run the variants (ovbench sweep table3, or ovbench run --method gsnet/A)",
    "trainset": "train on other sets (ovbench sweep table4, or ovbench run --method gsnet --train-set NAME)",
    "size": "train on subsets (ovbench sweep fig5, or --train-set NAME:size=N)",
    "classes": "evaluate a method first",
}


def _yes_no(value: Any) -> str:
    """Component flags print as the paper prints them (YAML reads yes/no as booleans)."""
    return {True: "yes", False: "no"}.get(value, "" if value is None else str(value)) if isinstance(value, bool) or value is None else str(value)


_BUILDERS = {"main": _main, "ablation": _ablation, "trainset": _trainset, "size": _size_table, "classes": _classes}


def _add_reported(table: StudyTable, groups: list[list[dict]], reported: ReportedStudy, kind: str, *, match, labels) -> None:
    """Each reproduced row gets its published counterpart and a Δ row below it; published
    rows without one follow. Deltas need the same benchmark as the published numbers."""
    published = reported.table(kind)
    if not published.rows:
        return
    same_benchmark = table.benchmark == reported.benchmark
    if not same_benchmark:
        # other columns: the published rows get a table of their own, on their own sets
        sets = list(reported.sets)
        titles = {**reported.sets, AVG_COLUMN: AVG_COLUMN}
        own = StudyTable(table.kind, f"{table.title.split(',')[0]} - published, mIoU on {reported.benchmark}",
                         reported.benchmark, ["source", *table.label_columns], sets + [AVG_COLUMN], titles, [])
        own.rows = [_published_row(rep, labels, reported, own) for rep in published.rows]
        own.notes.append(f"{published.source} ({reported.study})")
        table.notes.append(f"published rows are on {reported.benchmark}, these runs on {table.benchmark}: "
                           "they follow as their own table, without deltas")
        table.companions.append(own)
        return
    merged: list[StudyRow] = []
    used: set[int] = set()
    for row, group in zip(table.rows, groups):
        merged.append(row)
        index = next((i for i, rep in enumerate(published.rows) if match(rep, group[0])), None)
        if index is None or not same_benchmark:
            continue
        used.add(index)
        paper = _published_row(published.rows[index], labels, reported, table)
        merged.append(paper)
        delta = {c: Cell(None if row.values[c].mean is None or paper.values[c].mean is None
                         else row.values[c].mean - paper.values[c].mean) for c in table.value_columns}
        merged.append(StudyRow({**row.labels}, delta, DELTA))
    for index, rep in enumerate(published.rows):
        if index not in used:
            merged.append(_published_row(rep, labels, reported, table))
    table.rows = merged
    if "source" not in table.label_columns:
        table.label_columns.insert(0, "source")
    table.notes.append(f"paper rows: {published.source} ({reported.study}); Δ = ovbench - paper")


def _published_row(rep: dict, labels, reported: ReportedStudy, table: StudyTable, source: str = PAPER) -> StudyRow:
    values = {c: Cell(reported.value(rep, c)) for c in table.value_columns}
    if values.get(AVG_COLUMN) is not None and values[AVG_COLUMN].mean is None:
        means = [values[c].mean for c in table.value_columns if c != AVG_COLUMN]
        values[AVG_COLUMN] = Cell(statistics.fmean(means) if means and None not in means else None)
    return StudyRow(labels(rep), values, source)


def _add_independent(table: StudyTable, reported: ReportedStudy) -> None:
    independent = reported.table("independent")
    if not independent.rows:
        return
    target = table if table.benchmark == reported.benchmark else next(iter(table.companions), None)
    if target is None:
        return
    table = target
    for rep in independent.rows:
        row = _published_row(rep, lambda r: {"protocol": r["protocol"], "method": reported.method_name(r["method"]),
                                             "VLM": reported.method_vlm(r["method"])}, reported, table,
                             source=f"retrained ({rep.get('who', '')})")
        table.rows.append(row)
    table.notes.append(f"retrained rows: {independent.source}; not the authors' numbers, Avg computed here")


def _add_intervals(table: StudyTable, store_path: Any, resamples: int) -> None:
    from ovbench.errors import DataError
    from ovbench.results.per_image import load_record_counts
    from ovbench.results.uncertainty import bootstrap_row

    missing = 0
    for row in table.rows:
        if row.source != OURS or not row.records:
            continue
        try:
            runs = {name: [load_record_counts(store_path, r) for r in recs] for name, recs in row.records.items() if recs}
        except DataError as exc:
            missing += 1
            if missing == 1:
                table.notes.append(f"no interval for some rows: {exc}")
            continue
        complete = len(runs) == len([c for c in table.value_columns if c != AVG_COLUMN])
        intervals = bootstrap_row(runs, resamples=resamples, average=AVG_COLUMN if complete else None)
        for name, interval in intervals.items():
            if name in row.values:
                row.values[name].ci = (interval.low, interval.high)
    table.notes.append(f"[low, high]: percentile bootstrap 95% interval over images ({resamples} resamples)")


def row_provenance(row: StudyRow) -> list[dict[str, Any]]:
    """Where every number of a reproduced row came from, one entry per record."""
    out = []
    for eval_set, records in row.records.items():
        for r in records:
            out.append({"eval_set": eval_set, "run_id": r.get("run_id"), "config_hash": r.get("config_hash"),
                        "code_version": r.get("code_version"), "seed": r.get("seed"), "hardware": r.get("hardware"),
                        "timestamp": r.get("timestamp"), "iterations": r.get("iterations")})
    return out


# --------------------------------------------------------------------------- marks and rendering


def column_marks(table: StudyTable) -> dict[tuple[int, str], int]:
    """(row index, column) -> 1 for the best, 2 for the second best of that column, ranked on
    the printed (rounded) values among rows of the same source; ties share a mark."""
    marks: dict[tuple[int, str], int] = {}
    for source in {row.source for row in table.rows if row.source != DELTA}:
        members = [i for i, row in enumerate(table.rows) if row.source == source]
        if len(members) < 2:
            continue
        for column in table.value_columns:
            shown = {i: round(table.rows[i].values[column].mean, table.precision) for i in members
                     if column in table.rows[i].values and table.rows[i].values[column].mean is not None}
            distinct = sorted(set(shown.values()), reverse=True)
            for rank, level in enumerate(distinct[:2], start=1):
                for i, v in shown.items():
                    if v == level:
                        marks[(i, column)] = rank
    return marks


def _cell_text(cell: Cell | None, precision: int, signed: bool = False) -> str:
    if cell is None or cell.mean is None:
        return ""
    text = f"{cell.mean:+.{precision}f}" if signed else f"{cell.mean:.{precision}f}"
    if cell.std is not None and cell.n > 1:
        text += f" ± {cell.std:.{precision}f}"
    if cell.ci is not None and not any(math.isnan(v) for v in cell.ci):
        text += f" [{cell.ci[0]:.{precision}f}, {cell.ci[1]:.{precision}f}]"
    return text


_MARKUP = {
    "markdown": {1: "**{}**", 2: "<u>{}</u>"},
    "latex": {1: r"\textbf{{{}}}", 2: r"\underline{{{}}}"},
    "plain": {1: "{}*", 2: "{}+"},
}


def render_study_table(table: StudyTable, fmt: str = "plain", *, title: bool = True, notes: bool = True) -> str:
    fmt = fmt.lower()
    if fmt not in STUDY_FORMATS:
        raise ConfigError(f"unknown table format {fmt!r}; choose one of {', '.join(STUDY_FORMATS)}")
    if fmt == "csv":
        return _render_csv(table)
    marks = column_marks(table)
    headers = list(table.label_columns) + [table.column_titles.get(c, c) for c in table.value_columns]
    body = []
    for index, row in enumerate(table.rows):
        labels = [row.source if name == "source" else row.labels.get(name, "") for name in table.label_columns]
        cells = []
        for column in table.value_columns:
            text = _cell_text(row.values.get(column), table.precision, signed=row.source == DELTA)
            if fmt == "latex":
                text = _latex_escape(text)
            mark = marks.get((index, column))
            cells.append(_MARKUP[fmt][mark].format(text) if mark and text else text)
        if fmt == "latex":
            labels = [_latex_escape(text) for text in labels]
        body.append(labels + cells)
    if fmt == "latex":
        spec = "l" * len(table.label_columns) + "r" * len(table.value_columns)
        lines = [rf"% {table.title}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                 " & ".join(_latex_escape(h) for h in headers) + r" \\", r"\midrule"]
        lines += [" & ".join(cells) + r" \\" for cells in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    align = ["left"] * len(table.label_columns) + ["right"] * len(table.value_columns)
    text = tabulate(body, headers=headers, tablefmt="pipe" if fmt == "markdown" else "simple",
                    disable_numparse=True, colalign=align)
    lines = []
    if title:
        lines.append(f"### {table.title}" if fmt == "markdown" else table.title)
        lines.append("")
    lines.append(text if table.rows else f"(no reproduced rows: {_HINTS[table.kind]})")
    extra = list(table.notes) if notes else []
    if notes and marks:
        extra.append("best per column in bold, second underlined" if fmt == "markdown"
                     else "* best per column, + second best")
    if extra:
        lines.append("")
        lines += [f"- {n}" if fmt == "markdown" else n for n in extra]
    return "\n".join(lines) + "\n"


def _render_csv(table: StudyTable) -> str:
    marks = column_marks(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["table", "source", *[c for c in table.label_columns if c != "source"]]
    for column in table.value_columns:
        title = table.column_titles.get(column, column)
        header += [f"{title} mean", f"{title} std", f"{title} n", f"{title} rank", f"{title} ci_low", f"{title} ci_high"]
    writer.writerow(header)
    for index, row in enumerate(table.rows):
        line: list[Any] = [table.kind, row.source, *[row.labels.get(c, "") for c in table.label_columns if c != "source"]]
        for column in table.value_columns:
            cell = row.values.get(column) or Cell(None)
            line += [_num(cell.mean), _num(cell.std), cell.n or "", marks.get((index, column), ""),
                     _num(cell.ci[0]) if cell.ci else "", _num(cell.ci[1]) if cell.ci else ""]
        writer.writerow(line)
    return buffer.getvalue()


def _num(value: float | None) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 10)


def render_study_table_html(table: StudyTable) -> str:
    """An HTML ``<table>`` of ``table`` (best in ``<b>``, second in ``<u>``), notes as a list."""
    from html import escape

    marks = column_marks(table)
    head = "".join(f"<th>{escape(h)}</th>" for h in
                   [*table.label_columns, *[table.column_titles.get(c, c) for c in table.value_columns]])
    body = []
    for index, row in enumerate(table.rows):
        cells = [f"<td>{escape(row.source if name == 'source' else row.labels.get(name, ''))}</td>"
                 for name in table.label_columns]
        for column in table.value_columns:
            text = escape(_cell_text(row.values.get(column), table.precision, signed=row.source == DELTA))
            mark = marks.get((index, column))
            if mark and text:
                text = f"<b>{text}</b>" if mark == 1 else f"<u>{text}</u>"
            cells.append(f'<td class="num">{text}</td>')
        body.append(f'<tr class="{escape(row.source.split(" ")[0])}">{"".join(cells)}</tr>')
    if not table.rows:
        body.append(f'<tr><td colspan="{len(table.label_columns) + len(table.value_columns)}">'
                    f"no reproduced rows: {escape(_HINTS[table.kind])}</td></tr>")
    notes = list(table.notes) + (["best per column in bold, second underlined"] if marks else [])
    notes_html = "<ul class=\"notes\">" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>" if notes else ""
    return (f"<h3>{escape(table.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            f"</tbody></table>{notes_html}")
