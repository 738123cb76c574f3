"""Comparison tables (methods x evaluation sets) built from result records.

`build_table` pivots store records into a numeric DataFrame: one row per combination of the
``rows`` fields (by default method and protocol), one column group per evaluation set in
order of first appearance, each holding the ``mean``, ``std`` and ``count`` of the chosen
metric over the runs/seeds that fall in the cell, and a final ``Avg`` group. `render_table`
turns that frame into markdown, LaTeX, CSV or a terminal table.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from tabulate import tabulate

from ovbench.errors import ConfigError, OvbenchError

__all__ = ["AVG_COLUMN", "TABLE_FORMATS", "build_table", "render_table"]

#: Name of the column that averages a row over every evaluation set.
AVG_COLUMN = "Avg"
#: Formats `render_table` knows.
TABLE_FORMATS = ("markdown", "latex", "csv", "plain")

_STATS = ("mean", "std", "count")
# Stand-in for a missing row field (e.g. train_set of a zero-shot run) so that such rows
# still group together instead of being dropped as NaN keys.
_MISSING_LABEL = "-"


def build_table(
    records: list[dict],
    *,
    value: str = "mIoU",
    rows: Sequence[str] = ("method", "protocol"),
    benchmark: str | None = None,
    protocol: str | None = None,
    method: str | None = None,
) -> pd.DataFrame:
    """Pivot result records into rows x evaluation sets of ``metrics[value]``.

    Records are first filtered by ``benchmark``, ``protocol`` and ``method`` (exact match;
    None keeps all). Every (row, eval_set) cell aggregates the records that fall in it,
    typically the seeds of one configuration, into their mean, sample standard deviation
    (ddof=1, NaN for a single run) and count. Rows and evaluation sets keep the order in
    which they first appear in ``records``.

    The ``Avg`` column is the mean of a row's per-set means and is filled only for rows
    that have a value in every evaluation-set column: a method evaluated on a subset of the
    sets would otherwise be ranked on easier or harder data than the others, and its
    average would look comparable when it is not. Its ``std`` and ``count`` are NaN.

    Records that lack ``metrics[value]`` are left out; a stored null (NaN) counts as no
    value. Raises `OvbenchError` when nothing is left, and `ConfigError` for a bad
    ``rows`` or ``value``.
    """
    row_fields = _check_row_fields(rows)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"table value must be a metric name such as 'mIoU', got {value!r}")

    filters = {"benchmark": benchmark, "protocol": protocol, "method": method}
    wanted = {key: wanted_value for key, wanted_value in filters.items() if wanted_value is not None}
    selected = [
        record
        for record in records
        if isinstance(record, dict) and all(record.get(key) == expected for key, expected in wanted.items())
    ]
    with_metric = [record for record in selected if _metric_of(record, value) is not _ABSENT]
    if not with_metric:
        raise OvbenchError(_no_match_message(records, selected, wanted, value))

    available_fields = set().union(*(record.keys() for record in with_metric))
    for name in row_fields:
        if name not in available_fields:
            known = ", ".join(sorted(available_fields))
            raise ConfigError(f"unknown table row field {name!r}; records have: {known}")

    flat = pd.DataFrame(
        {
            **{name: [_row_label(name, record.get(name)) for record in with_metric] for name in row_fields},
            "eval_set": [str(record.get("eval_set", _MISSING_LABEL)) for record in with_metric],
            value: [_metric_of(record, value) for record in with_metric],
        }
    )
    flat[value] = pd.to_numeric(flat[value], errors="coerce")  # JSON null -> NaN

    eval_sets = list(dict.fromkeys(flat["eval_set"]))
    row_keys = list(dict.fromkeys(zip(*(flat[name] for name in row_fields))))

    stats = flat.groupby([*row_fields, "eval_set"], sort=False)[value].agg(list(_STATS))
    table = stats.unstack("eval_set")  # columns: (stat, eval_set)
    table.columns = table.columns.swaplevel(0, 1)  # -> (eval_set, stat)
    column_order = pd.MultiIndex.from_product([eval_sets, _STATS], names=["eval_set", "stat"])
    table = table.reindex(columns=column_order)
    if len(row_fields) == 1:
        table = table.reindex(index=pd.Index([key[0] for key in row_keys], name=row_fields[0]))
    else:
        table = table.reindex(index=pd.MultiIndex.from_tuples(row_keys, names=row_fields))

    # An empty cell holds zero runs; NaN is kept for the mean and std it cannot have.
    count_columns = [(column, "count") for column in eval_sets]
    table[count_columns] = table[count_columns].fillna(0)

    means = table.xs("mean", axis=1, level="stat")
    complete = means.notna().all(axis=1)
    table[(AVG_COLUMN, "mean")] = means.mean(axis=1).where(complete)
    table[(AVG_COLUMN, "std")] = math.nan
    table[(AVG_COLUMN, "count")] = math.nan
    table = table.astype(float)
    table.columns.names = ["eval_set", "stat"]
    table.attrs["value"] = value
    return table


def render_table(table: pd.DataFrame, fmt: str = "plain", precision: int = 1) -> str:
    """Render a `build_table` frame as ``markdown``, ``latex``, ``csv`` or ``plain`` text.

    Text formats show one cell per evaluation set: ``"41.2"`` for a single run and
    ``"41.2 ± 0.3"`` (mean ± sample std) for several; missing cells are blank. ``plain`` is
    a terminal table with a header rule. LaTeX is a booktabs ``tabular`` with special
    characters escaped. CSV keeps numbers numeric and unrounded, in separate
    ``<set> mean``, ``<set> std`` and ``<set> n`` columns, so it can be re-analysed;
    ``precision`` (digits after the decimal point) applies to the text formats only.
    """
    if not isinstance(fmt, str) or fmt.lower() not in TABLE_FORMATS:
        raise ConfigError(f"unknown table format {fmt!r}; choose one of {', '.join(TABLE_FORMATS)}")
    if isinstance(precision, bool) or not isinstance(precision, int) or precision < 0:
        raise ConfigError(f"table precision must be a non-negative integer, got {precision!r}")
    _check_table_shape(table)
    fmt = fmt.lower()
    if fmt == "csv":
        return _render_csv(table)

    row_names = [str(name) for name in table.index.names]
    column_names = [str(name) for name in _column_groups(table)]
    body = [
        [
            *(_text(part) for part in _index_tuple(key)),
            *(_cell(table, key, column, precision) for column in _column_groups(table)),
        ]
        for key in table.index
    ]
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


def _metric_of(record: dict, value: str) -> Any:
    metrics = record.get("metrics")
    if not isinstance(metrics, dict) or value not in metrics:
        return _ABSENT
    return metrics[value]


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


def _row_label(name: str, raw: Any) -> Any:
    if raw is None:
        return _MISSING_LABEL
    if isinstance(raw, (dict, list)):
        raise ConfigError(f"table row field {name!r} holds a {type(raw).__name__}, not a label")
    return raw


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


def _text(label: Any) -> str:
    return "" if label is None else str(label)


def _cell(table: pd.DataFrame, key: Any, column: Any, precision: int) -> str:
    mean = table.at[key, (column, "mean")]
    if pd.isna(mean):
        return ""
    std = table.at[key, (column, "std")]
    count = table.at[key, (column, "count")]
    text = f"{mean:.{precision}f}"
    if not pd.isna(count) and count > 1 and not pd.isna(std):
        text += f" ± {std:.{precision}f}"
    return text


def _render_csv(table: pd.DataFrame) -> str:
    # Rounding far below any metric's resolution drops float noise such as 41.400000000000006.
    flat = table.round(10)
    flat.columns = [f"{column} {'n' if stat == 'count' else stat}" for column, stat in flat.columns]
    for name in flat.columns:
        if name.endswith(" n"):
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
    return escaped.replace("±", r"$\pm$")


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
