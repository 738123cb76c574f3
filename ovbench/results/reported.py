"""The published numbers of the GSNet study, read from ``results/reported/`` (installed as
``ovbench.reported``): Tables 2-4 and the independent retrainings, each row naming the ovbench
method, protocol, variant or training set it corresponds to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovbench.config import load_yaml
from ovbench.errors import ConfigError

__all__ = ["ReportedStudy", "ReportedTable", "default_reported_file", "load_reported"]

#: the table kinds a reported file may hold
REPORTED_KINDS = ("main", "independent", "ablation", "trainset", "size")


@dataclass
class ReportedTable:
    source: str
    rows: list[dict[str, Any]]
    columns: list[str] = field(default_factory=list)


@dataclass
class ReportedStudy:
    study: str
    benchmark: str
    #: ovbench evaluation-set name -> the paper's column title
    sets: dict[str, str]
    #: ovbench method -> {"name": as printed, "vlm": its vision-language model}
    methods: dict[str, dict[str, str]]
    tables: dict[str, ReportedTable]
    path: Path

    def table(self, kind: str) -> ReportedTable:
        return self.tables.get(kind) or ReportedTable(source="", rows=[])

    def method_name(self, method: str) -> str:
        return self.methods.get(method, {}).get("name", method)

    def method_vlm(self, method: str) -> str:
        return self.methods.get(method, {}).get("vlm", "")

    def value(self, row: dict[str, Any], column: str) -> float | None:
        """A row's number for an evaluation set (or ``Avg``); None when it prints none."""
        raw = row.get("avg" if column == "Avg" else column)
        return None if raw is None else float(raw)


def default_reported_file() -> Path:
    import ovbench.reported

    return Path(ovbench.reported.__file__).resolve().parent / "gsnet-aaai2025.yaml"


def load_reported(path: str | Path | None = None) -> ReportedStudy:
    """The reported numbers (default: the GSNet study's file); a ConfigError names what is wrong."""
    path = Path(path) if path is not None else default_reported_file()
    data = load_yaml(path)
    where = f"{path}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a reported-numbers file is a mapping")
    for key in ("study", "benchmark", "sets", "tables"):
        if key not in data:
            raise ConfigError(f"{where}: missing key {key!r}")
    tables: dict[str, ReportedTable] = {}
    for kind, table in (data.get("tables") or {}).items():
        if kind not in REPORTED_KINDS:
            raise ConfigError(f"{where}: unknown table {kind!r} (known: {', '.join(REPORTED_KINDS)})")
        if not isinstance(table, dict) or not isinstance(table.get("rows", []), list):
            raise ConfigError(f"{where}: table {kind} needs a list of rows")
        for row in table.get("rows") or []:
            for name in data["sets"]:
                if row.get(name) is not None and not isinstance(row.get(name), (int, float)):
                    raise ConfigError(f"{where}: table {kind}: {name} must be a number, got {row.get(name)!r}")
        tables[kind] = ReportedTable(str(table.get("source", "")), list(table.get("rows") or []),
                                     list(table.get("columns") or []))
    return ReportedStudy(
        study=str(data["study"]), benchmark=str(data["benchmark"]), sets=dict(data["sets"]),
        methods={str(k): dict(v) for k, v in (data.get("methods") or {}).items()}, tables=tables, path=path,
    )
