"""Comparison tables (configurations x evaluation sets) built from result records.

`build_table` pivots store records into a numeric DataFrame with **one row per
configuration**: by default the row key is `CONFIG_FIELDS` -- the job's label
(``extra.label``), method, protocol, benchmark, training set, training-set size, iterations
and config hash -- so only records that differ in nothing but the seed share a row and are
aggregated into mean ± sample std. The columns are an ``n`` column (how many runs/seeds the
row holds), one ``mean``/``std``/``count`` group per evaluation set in order of first
appearance, and a final ``Avg`` group. `render_table` turns that frame into markdown, LaTeX,
CSV or a terminal table.

Before grouping, repeated records are dropped so that no run counts twice:

* records with the same ``(run_id, eval_set)`` (a run evaluated twice, e.g. by two
  concurrent resumes) count once: the latest by ``timestamp``, then by file order;
* records of one configuration with the same ``seed`` and ``eval_set`` but different run ids
  (the same experiment run again, e.g. a repeated zero-shot ``ovbench eval``) also count once,
  the latest; a note says so. Records without a seed are never merged this way.

Notes (`table_notes`, also ``table.attrs["notes"]``) explain what the table cannot show in
its cells, one short line per row: why a row's Avg is blank, or that a seed was run twice.
`render_table` appends them after the table for ``plain`` and ``markdown``; ``csv`` and
``latex`` output stays machine-readable and the caller prints `table_notes` separately.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pandas as pd
from tabulate import tabulate

from ovbench.errors import ConfigError, OvbenchError

__all__ = [
    "AVG_COLUMN",
    "config_key",
    "drop_repeats",
    "latex_escape",
    "metric_value",
    "CONFIG_FIELDS",
    "N_COLUMN",
    "TABLE_FORMATS",
    "build_table",
    "render_table",
    "table_notes",
]

#: Name of the column that averages a row over its benchmark's evaluation sets.
AVG_COLUMN = "Avg"
#: Name of the column that counts the runs (seeds) a row aggregates.
N_COLUMN = "n"
#: Formats `render_table` knows.
TABLE_FORMATS = ("markdown", "latex", "csv", "plain")
#: What makes a configuration: records that agree on all of these (and differ at most in
#: their seed) are one table row. ``label`` is read from ``record["extra"]["label"]``.
CONFIG_FIELDS = ("label", "method", "protocol", "benchmark", "train_set", "train_size", "iterations", "config_hash")

_STATS = ("mean", "std", "count")
# Stand-in for a missing row field (e.g. train_set of a zero-shot run, or a field an older
# store lacks) so that such rows still group together instead of being dropped as NaN keys.
_MISSING_LABEL = "-"
# Fields always shown by the terminal/markdown/LaTeX renderings of a default table.
_ALWAYS_SHOWN = ("method", "protocol")
# Shown only when needed to tell two rows apart (the hash is opaque to a reader).
_DISAMBIGUATING_ONLY = ("config_hash",)


def build_table(
    records: list[dict],
    *,
    value: str = "mIoU",
    rows: Sequence[str] | None = None,
    benchmark: str | None = None,
    protocol: str | None = None,
    method: str | None = None,
    benchmark_sets: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Pivot result records into configurations x evaluation sets of ``metrics[value]``.

    Records are first filtered by ``benchmark``, ``protocol`` and ``method`` (exact match;
    None keeps all), then repeated records are dropped (see the module docstring). Every
    (row, eval_set) cell aggregates the runs of its row into their mean, sample standard
    deviation (ddof=1, NaN for a single run) and count; the ``n`` column holds the number of
    runs in the row (a cell whose count is lower is a set some of its seeds lack). Rows and
    evaluation sets keep the order in which they first appear in ``records``.

    ``rows`` is the row key; None (the default) is `CONFIG_FIELDS`, one row per
    configuration. A caller may pass other record fields (``"label"`` means
    ``extra.label``), but a row must never average unlike runs: when a row would hold records
    of more than one configuration (they differ in a `CONFIG_FIELDS` field), `ConfigError` is
    raised naming the row and the fields to add.

    ``benchmark_sets`` maps a benchmark name to its evaluation sets. A row's ``Avg`` is the
    mean of its per-set means over exactly its benchmark's sets, and is filled only when the
    row has a value on every one of them: a method evaluated on a subset would otherwise be
    ranked on easier or harder data than the others. For a benchmark missing from the mapping,
    its sets are the union of the evaluation sets of every record (before filtering) of that
    benchmark. A set of another benchmark (e.g. a ``custom`` folder one run was also
    evaluated on) therefore never blanks a row's Avg, and a set outside its benchmark's list
    is shown but not averaged. A blank Avg gets a note saying which sets are missing. Avg's
    ``std`` and ``count`` are NaN.

    The frame's ``attrs`` hold ``value``, ``notes`` (list of one-line strings, see
    `table_notes`) and ``shown`` (the row fields the text renderings display: all of an
    explicit ``rows``; for the default key, label when any row has one, method and protocol
    always, benchmark/training set/iterations when they differ between rows, and the config
    hash when rows would otherwise look alike).

    Records that lack ``metrics[value]`` are left out; a stored null (NaN) counts as no
    value. Raises `OvbenchError` when nothing is left, and `ConfigError` for a bad ``rows``,
    ``value`` or ``benchmark_sets``, or a row that would merge configurations.
    """
    explicit_rows = rows is not None
    row_fields = list(CONFIG_FIELDS) if rows is None else _check_row_fields(rows)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"table value must be a metric name such as 'mIoU', got {value!r}")
    declared_sets = _check_benchmark_sets(benchmark_sets)

    filters = {"benchmark": benchmark, "protocol": protocol, "method": method}
    wanted = {key: wanted_value for key, wanted_value in filters.items() if wanted_value is not None}
    usable = [record for record in records if isinstance(record, dict)]
    selected = [record for record in usable if all(record.get(key) == expected for key, expected in wanted.items())]
    with_metric = [record for record in selected if _metric_of(record, value) is not _ABSENT]
    if not with_metric:
        raise OvbenchError(_no_match_message(records, selected, wanted, value))

    if explicit_rows:
        available_fields = set().union(*(record.keys() for record in with_metric)) | {"label"}
        for name in row_fields:
            if name not in available_fields:
                known = ", ".join(sorted(available_fields))
                raise ConfigError(f"unknown table row field {name!r}; records have: {known}")

    kept, repeated_seeds = _drop_repeats(with_metric)

    # ---- group into rows
    def row_key_of(record: dict) -> tuple:
        return tuple(_row_label(name, _field(record, name)) for name in row_fields)

    row_records: dict[tuple, list[dict]] = {}
    for record in kept:
        row_records.setdefault(row_key_of(record), []).append(record)
    kept_sets = {_eval_set_of(record) for record in kept}
    # Order of first appearance, counting records a later duplicate replaced.
    row_keys = [key for key in dict.fromkeys(map(row_key_of, with_metric)) if key in row_records]
    eval_sets = [name for name in dict.fromkeys(map(_eval_set_of, with_metric)) if name in kept_sets]
    if explicit_rows:
        for key in row_keys:
            _refuse_mixed_row(row_fields, key, row_records[key])

    # ---- the evaluation sets each benchmark's Avg needs
    seen_sets: dict[Any, list[str]] = {}
    for record in usable:
        names = seen_sets.setdefault(_hashable(record.get("benchmark")), [])
        eval_set = _eval_set_of(record)
        if eval_set not in names:
            names.append(eval_set)

    def required_sets(bench: Any) -> list[str]:
        if isinstance(bench, str) and bench in declared_sets:
            return declared_sets[bench]
        return seen_sets.get(_hashable(bench), [])

    # ---- numbers
    columns = [(N_COLUMN, "count")] + [(name, stat) for name in eval_sets for stat in _STATS]
    columns += [(AVG_COLUMN, stat) for stat in _STATS]
    data: list[list[float]] = []
    missing_for_avg: dict[tuple, list[str]] = {}
    for key in row_keys:
        group = row_records[key]
        values_by_set: dict[str, list[float]] = {name: [] for name in eval_sets}
        units_with_value: set[Any] = set()
        for record in group:
            number = _number(_metric_of(record, value))
            if number is None:
                continue
            values_by_set[_eval_set_of(record)].append(number)
            units_with_value.add(_run_unit(record))
        line = [float(len(units_with_value))]
        means: dict[str, float] = {}
        for name in eval_sets:
            numbers = values_by_set[name]
            mean = statistics.fmean(numbers) if numbers else math.nan
            std = statistics.stdev(numbers) if len(numbers) > 1 else math.nan
            line += [mean, std, float(len(numbers))]
            if numbers:
                means[name] = mean
        needed = required_sets(group[0].get("benchmark"))
        missing = [name for name in needed if name not in means]
        if needed and not missing:
            line += [statistics.fmean(means[name] for name in needed), math.nan, math.nan]
        else:
            line += [math.nan, math.nan, math.nan]
            missing_for_avg[key] = missing
        data.append(line)

    if len(row_fields) == 1:
        index: pd.Index = pd.Index([key[0] for key in row_keys], name=row_fields[0], dtype=object)
    else:
        index = pd.MultiIndex.from_tuples(row_keys, names=row_fields)
    table = pd.DataFrame(
        data, index=index, columns=pd.MultiIndex.from_tuples(columns, names=["eval_set", "stat"]), dtype=float
    )

    shown = list(row_fields) if explicit_rows else _shown_fields(row_fields, row_keys)
    notes: list[str] = []
    for key in row_keys:
        name = _row_name(row_fields, shown, key)
        if key in missing_for_avg:
            missing = missing_for_avg[key]
            reason = f"no result on {', '.join(missing)}" if missing else "its benchmark lists no evaluation sets"
            notes.append(f"Avg left blank for {name}: {reason}")
        config = _config_key(row_records[key][0])  # a row holds one configuration
        seeds = {_seed_of(record) for record in row_records[key]}
        repeats = sorted(
            (seed, count) for (other, seed), count in repeated_seeds.items() if other == config and seed in seeds
        )
        for seed, count in repeats:
            notes.append(f"{name}: seed {seed} was run {count} times; only the latest run counts")
    table.attrs["value"] = value
    table.attrs["shown"] = shown
    table.attrs["notes"] = notes
    return table


def table_notes(table: pd.DataFrame) -> list[str]:
    """The notes of a `build_table` frame: one line each, e.g.
    ``"Avg left blank for gsnet/scratch [iterations=100]: no result on toyland-flood"``.

    `render_table` appends them to ``plain`` and ``markdown`` output; print them yourself
    (e.g. on stderr) for ``csv`` and ``latex``.
    """
    return [str(note) for note in table.attrs.get("notes", [])]


def render_table(table: pd.DataFrame, fmt: str = "plain", precision: int = 1, *, notes: bool | None = None) -> str:
    """Render a `build_table` frame as ``markdown``, ``latex``, ``csv`` or ``plain`` text.

    Text formats show the row fields in ``table.attrs["shown"]`` (all index levels when it is
    absent; a training-set size hidden as its own column is shown with the training set, as
    ``"ld50k (10000)"``), then ``n``, then one cell per evaluation set: ``"41.2"`` for a
    single run, ``"41.2 ± 0.3"`` (mean ± sample std) for several, with ``" (n=2)"`` appended
    when fewer of the row's runs have that set; missing cells are blank. ``plain`` is a
    terminal table with a header rule. LaTeX is a booktabs ``tabular`` with special
    characters escaped. CSV keeps every row field and keeps numbers numeric and unrounded,
    in an ``n`` column and separate ``<set> mean``, ``<set> std`` and ``<set> n`` columns,
    so it can be re-analysed; ``precision`` (digits after the decimal point) applies to the
    text formats only.

    ``notes`` (see `table_notes`) are appended after a blank line when True; the default
    None appends them for ``plain`` and ``markdown`` only, keeping ``csv`` and ``latex``
    output machine-readable.
    """
    if not isinstance(fmt, str) or fmt.lower() not in TABLE_FORMATS:
        raise ConfigError(f"unknown table format {fmt!r}; choose one of {', '.join(TABLE_FORMATS)}")
    if isinstance(precision, bool) or not isinstance(precision, int) or precision < 0:
        raise ConfigError(f"table precision must be a non-negative integer, got {precision!r}")
    _check_table_shape(table)
    fmt = fmt.lower()
    if notes is None:
        notes = fmt in ("plain", "markdown")
    if fmt == "csv":
        text = _render_csv(table)
    else:
        text = _render_text(table, fmt, precision)
    extra_lines = table_notes(table) if notes else []
    if extra_lines:
        text = text.rstrip("\n") + "\n\n" + "\n".join(extra_lines) + ("\n" if text.endswith("\n") else "")
    return text


def _render_text(table: pd.DataFrame, fmt: str, precision: int) -> str:
    level_names = [str(name) for name in table.index.names]
    shown = [name for name in table.attrs.get("shown", level_names) if name in level_names]
    merge_size = "train_set" in shown and "train_size" in level_names and "train_size" not in shown
    keys = [_index_tuple(key) for key in table.index]
    row_names = shown
    groups = _column_groups(table)
    value_groups = [group for group in groups if group != N_COLUMN]
    has_n = N_COLUMN in groups
    column_names = ([N_COLUMN] if has_n else []) + [str(group) for group in value_groups]
    body = []
    for key, parts in zip(table.index, keys):
        fields = dict(zip(level_names, parts))
        cells = []
        for name in shown:
            text = _text(fields[name], name)
            if merge_size and name == "train_set":
                text = _with_size(fields["train_set"], fields["train_size"])
            cells.append(text)
        row_n = table.at[key, (N_COLUMN, "count")] if has_n else math.nan
        if has_n:
            cells.append("" if pd.isna(row_n) else str(int(row_n)))
        cells += [_cell(table, key, group, precision, row_n) for group in value_groups]
        body.append(cells)
    if fmt == "latex":
        return _render_latex(row_names, column_names, body)
    # disable_numparse: tabulate would otherwise reformat "41.0" as "41" and break alignment.
    alignment = ["left"] * len(row_names) + ["right"] * len(column_names)
    tablefmt = "pipe" if fmt == "markdown" else "simple"
    return tabulate(
        body, headers=row_names + column_names, tablefmt=tablefmt, disable_numparse=True, colalign=alignment
    )


# --------------------------------------------------------------------------- helpers

_ABSENT = object()
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def _metric_of(record: dict, value: str) -> Any:
    metrics = record.get("metrics")
    if not isinstance(metrics, dict) or value not in metrics:
        return _ABSENT
    return metrics[value]


def _number(raw: Any) -> float | None:
    """A metric as a float; None for a stored null, NaN or anything not a number."""
    if raw is None or raw is _ABSENT or isinstance(raw, bool):
        return None
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _field(record: dict, name: str) -> Any:
    """A record field by name; ``label`` is the job label kept in ``extra``."""
    if name != "label":
        return record.get(name)
    extra = record.get("extra")
    label = extra.get("label") if isinstance(extra, dict) else None
    if isinstance(label, str) and not label.strip():
        return None
    return label


def _eval_set_of(record: dict) -> str:
    eval_set = record.get("eval_set")
    return _MISSING_LABEL if eval_set is None else str(eval_set)


def _hashable(raw: Any) -> Any:
    if isinstance(raw, (dict, list)):
        return repr(raw)
    return raw


def _config_key(record: dict) -> tuple:
    return tuple(_hashable(_field(record, name)) for name in CONFIG_FIELDS)


def _seed_of(record: dict) -> int | None:
    seed = record.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _run_unit(record: dict) -> Any:
    """What the ``n`` column counts: a seed, or a run when the record has no seed."""
    seed = _seed_of(record)
    return ("seed", seed) if seed is not None else ("run", _hashable(record.get("run_id")), id(record))


def _timestamp(record: dict) -> datetime:
    text = record.get("timestamp")
    if not isinstance(text, str):
        return _EARLIEST
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return _EARLIEST
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _drop_repeats(records: list[dict]) -> tuple[list[dict], dict[tuple, int]]:
    """Keep one record per (run_id, eval_set), then one per (configuration, seed, eval_set).

    The latest record wins: by timestamp, then by position in ``records``. Returns the kept
    records in their original order and, for every (configuration key, seed) that more
    than one run ran, how many runs did.
    """
    def recency(position: int) -> tuple[datetime, int]:
        return _timestamp(records[position]), position

    by_run: dict[tuple, int] = {}
    for position, record in enumerate(records):
        run_id = record.get("run_id")
        key = ("record", position) if run_id is None else ("run", _hashable(run_id), _eval_set_of(record))
        if key not in by_run or recency(position) >= recency(by_run[key]):
            by_run[key] = position

    by_seed: dict[tuple, int] = {}
    runs_per_seed: dict[tuple, set] = {}
    kept: list[int] = []
    for position in sorted(by_run.values()):
        record = records[position]
        seed = _seed_of(record)
        if seed is None:
            kept.append(position)
            continue
        config = _config_key(record)
        runs_per_seed.setdefault((config, seed), set()).add(_hashable(record.get("run_id")))
        key = (config, seed, _eval_set_of(record))
        if key not in by_seed or recency(position) >= recency(by_seed[key]):
            by_seed[key] = position
    kept.extend(by_seed.values())
    repeated = {key: len(runs) for key, runs in runs_per_seed.items() if len(runs) > 1}
    return [records[position] for position in sorted(kept)], repeated


def _check_row_fields(rows: Sequence[str]) -> list[str]:
    # A bare string is a Sequence too; "method" must not become ["m", "e", "t", ...].
    fields = [rows] if isinstance(rows, str) else list(rows)
    if not fields:
        raise ConfigError("table rows must name at least one record field, e.g. 'method'")
    for name in fields:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"table row field must be a record field name, got {name!r}")
        if name in ("eval_set", "metrics", "per_class_iou", "extra"):
            raise ConfigError(f"table row field {name!r} cannot label rows (evaluation sets are the columns)")
    if len(set(fields)) != len(fields):
        raise ConfigError(f"table row fields repeat a name: {', '.join(fields)}")
    return fields


def _check_benchmark_sets(benchmark_sets: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    if benchmark_sets is None:
        return {}
    if not isinstance(benchmark_sets, Mapping):
        raise ConfigError(
            f"benchmark_sets must map benchmark names to lists of evaluation sets, got {type(benchmark_sets).__name__}"
        )
    checked: dict[str, list[str]] = {}
    for name, sets in benchmark_sets.items():
        if (
            isinstance(sets, str)
            or not isinstance(sets, Sequence)
            or not sets
            or not all(isinstance(item, str) and item for item in sets)
        ):
            raise ConfigError(
                f"benchmark_sets[{name!r}] must be a non-empty list of evaluation-set names, got {sets!r}"
            )
        checked[str(name)] = list(dict.fromkeys(sets))
    return checked


def _row_label(name: str, raw: Any) -> Any:
    if raw is None:
        return _MISSING_LABEL
    if isinstance(raw, (dict, list)):
        raise ConfigError(f"table row field {name!r} holds a {type(raw).__name__}, not a label")
    return raw


def _refuse_mixed_row(row_fields: list[str], key: tuple, group: list[dict]) -> None:
    """Raise when one row of a caller's ``rows`` would average unlike configurations."""
    configs = {_config_key(record) for record in group}
    if len(configs) < 2:
        return
    differing = []
    for name in CONFIG_FIELDS:
        values = list(dict.fromkeys(_text(_row_label(name, _hashable(_field(record, name))), name) or "-"
                                    for record in group))
        if len(values) > 1:
            shown = ", ".join(values[:3]) + (", ..." if len(values) > 3 else "")
            differing.append((name, shown))
    row = "/".join(_text(part, name) or "-" for name, part in zip(row_fields, key))
    details = "; ".join(f"{name}: {values}" for name, values in differing)
    names = ", ".join(name for name, _ in differing)
    raise ConfigError(
        f"table row {row} would average {len(configs)} different configurations ({details}); "
        f"add {names} to the table rows, or leave rows unset for one row per configuration"
    )


def _shown_fields(row_fields: list[str], row_keys: list[tuple]) -> list[str]:
    """Which fields of the default (configuration) key the text renderings display."""
    position = {name: index for index, name in enumerate(row_fields)}

    def column(*names: str) -> list[tuple]:
        return [tuple(key[position[name]] for name in names) for key in row_keys]

    shown = set(_ALWAYS_SHOWN)
    if any(label != (_MISSING_LABEL,) for label in column("label")):
        shown.add("label")
    for name, parts in (("benchmark", ("benchmark",)), ("train_set", ("train_set", "train_size")),
                        ("iterations", ("iterations",))):
        if len(set(column(*parts))) > 1:
            shown.add(name)
    visible = [name for name in row_fields if name in shown] + (["train_size"] if "train_set" in shown else [])
    if len(set(column(*visible))) < len(row_keys):
        shown.update(_DISAMBIGUATING_ONLY)
    return [name for name in row_fields if name in shown]


def _row_name(row_fields: list[str], shown: list[str], key: tuple) -> str:
    """A short name of a row for notes: ``label/method/protocol [field=value, ...]``."""
    fields = dict(zip(row_fields, key))
    primary_fields = ("label", "method", "protocol")
    primary = [_text(fields[name], name) for name in primary_fields if name in shown]
    primary = [text for text in primary if text and text != _MISSING_LABEL]
    merge_size = "train_size" in fields and "train_size" not in shown
    others = []
    for name in shown:
        if name in primary_fields:
            continue
        text = _with_size(fields[name], fields["train_size"]) if name == "train_set" and merge_size else _text(
            fields[name], name
        )
        others.append(f"{name}={text}")
    name = "/".join(primary)
    if others:
        name = f"{name} [{', '.join(others)}]" if name else ", ".join(others)
    return name or "-"


def _no_match_message(records: list[dict], selected: list[dict], wanted: dict[str, str], value: str) -> str:
    if not records:
        return "no results match: the results store is empty"
    criteria = ", ".join(f"{key}={expected!r}" for key, expected in wanted.items())
    if not selected:
        return f"no results match {criteria} among {len(records)} records"
    scope = f"records matching {criteria}" if criteria else "records in the store"
    return f"no results match: none of the {len(selected)} {scope} has metric {value!r}"


def _check_table_shape(table: pd.DataFrame) -> None:
    if (
        not isinstance(table, pd.DataFrame)
        or table.columns.nlevels != 2
        or set(table.columns.get_level_values(1)) - set(_STATS)
    ):
        raise ConfigError("render_table needs a frame made by build_table (columns: eval_set x mean/std/count)")


def _column_groups(table: pd.DataFrame) -> list[Any]:
    return list(dict.fromkeys(table.columns.get_level_values(0)))


def _index_tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _text(label: Any, name: str = "") -> str:
    if label is None or (name == "label" and label == _MISSING_LABEL):
        return ""
    return str(label)


def _with_size(train_set: Any, train_size: Any) -> str:
    text = _text(train_set) or _MISSING_LABEL
    if train_size is None or train_size == _MISSING_LABEL:
        return text
    return f"{text} ({train_size})"


def _cell(table: pd.DataFrame, key: Any, column: Any, precision: int, row_n: float = math.nan) -> str:
    mean = table.at[key, (column, "mean")]
    if pd.isna(mean):
        return ""
    std = table.at[key, (column, "std")]
    count = table.at[key, (column, "count")]
    text = f"{mean:.{precision}f}"
    if not pd.isna(count) and count > 1 and not pd.isna(std):
        text += f" ± {std:.{precision}f}"
    if column != AVG_COLUMN and not pd.isna(count) and not pd.isna(row_n) and 0 < count < row_n:
        text += f" (n={int(count)})"
    return text


def _render_csv(table: pd.DataFrame) -> str:
    # Rounding far below any metric's resolution drops float noise such as 41.400000000000006.
    flat = table.round(10)
    flat.columns = [
        N_COLUMN if column == N_COLUMN else f"{column} {'n' if stat == 'count' else stat}"
        for column, stat in flat.columns
    ]
    for name in flat.columns:
        if name == N_COLUMN or name.endswith(" n"):
            flat[name] = flat[name].astype("Int64")  # counts are whole numbers; blanks stay blank
    buffer = io.StringIO()
    flat.reset_index().to_csv(buffer, index=False)
    return buffer.getvalue()


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    escaped = "".join(_LATEX_SPECIALS.get(character, character) for character in text)
    return escaped.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def _render_latex(row_names: list[str], column_names: list[str], body: list[list[str]]) -> str:
    # Written by hand rather than with pandas' Styler, which would pull in jinja2 as a dependency.
    def line(cells: list[str]) -> str:
        return " & ".join(_latex_escape(cell) for cell in cells) + r" \\"

    column_spec = "l" * len(row_names) + "r" * len(column_names)
    lines = [
        rf"\begin{{tabular}}{{{column_spec}}}",
        r"\toprule",
        line(row_names + column_names),
        r"\midrule",
        *(line(row) for row in body),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


# Public names of the helpers the study tables (ovbench.results.study) group records with, so
# both kinds of table drop repeats and tell configurations apart by one rule.
drop_repeats = _drop_repeats
config_key = _config_key
latex_escape = _latex_escape


def metric_value(record: dict, value: str) -> float | None:
    """``record["metrics"][value]`` as a finite float, else None."""
    return _number(_metric_of(record, value))
