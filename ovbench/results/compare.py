"""`ovbench compare A B`: is row A better than row B, beyond what the choice of images explains?

A row is chosen by a *selector*: a run id, a job label, a method name, or ``METHOD:PROTOCOL``
(``gsnet:scratch``; needed when a method ran under several protocols). A selector that matches
more than one configuration is refused with the candidates listed, so a comparison never mixes
unlike runs. Each row's seeds all take part (see `ovbench.results.uncertainty`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ovbench.errors import OvbenchError
from ovbench.results.per_image import load_record_counts
from ovbench.results.table import AVG_COLUMN, config_key, drop_repeats
from ovbench.results.uncertainty import DEFAULT_RESAMPLES, Interval, paired_difference

__all__ = ["Comparison", "compare_rows", "select_configuration"]


def _describe(group: list[dict]) -> str:
    record = group[0]
    runs = sorted({str(r.get("run_id")) for r in group})
    label = (record.get("extra") or {}).get("label")
    name = f"{record.get('method')}:{record.get('protocol')}" + (f" ({label})" if label else "")
    return f"{name}, {record.get('iterations')} iterations, runs {', '.join(runs[:3])}{' ...' if len(runs) > 3 else ''}"


def select_configuration(records: list[dict], selector: str, benchmark: str | None = None) -> list[dict]:
    """The records (all seeds, repeats dropped) of the one configuration ``selector`` names."""
    kept, _ = drop_repeats([r for r in records if isinstance(r, dict)
                            and (benchmark is None or r.get("benchmark") == benchmark)])
    groups: dict[tuple, list[dict]] = {}
    for record in kept:
        groups.setdefault(config_key(record), []).append(record)
    method, _, protocol = selector.partition(":")

    def matches(group: list[dict]) -> bool:
        first = group[0]
        if any(r.get("run_id") == selector for r in group):
            return True
        if (first.get("extra") or {}).get("label") == selector:
            return True
        return first.get("method") == method and (not protocol or first.get("protocol") == protocol)

    found = [group for group in groups.values() if matches(group)]
    if not found:
        raise OvbenchError(f"no results match {selector!r}: give a run id, a label, a method or METHOD:PROTOCOL "
                           "(see `ovbench table`)")
    if len(found) > 1:
        options = "; ".join(_describe(group) for group in found[:4])
        raise OvbenchError(f"{selector!r} matches {len(found)} configurations ({options}); "
                           "name one by METHOD:PROTOCOL or by a run id")
    return found[0]


@dataclass
class Comparison:
    first: str
    second: str
    benchmark: str
    #: per evaluation set and Avg: (first's mIoU, second's mIoU, interval of first - second)
    rows: dict[str, tuple[float, float, Interval]]
    resamples: int


def compare_rows(records: list[dict], first: str, second: str, *, store_path: str | Path,
                 benchmark: str | None = None, benchmark_sets: dict[str, list[str]] | None = None,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Comparison:
    group_a = select_configuration(records, first, benchmark)
    group_b = select_configuration(records, second, benchmark)
    bench = group_a[0].get("benchmark")
    if group_b[0].get("benchmark") != bench:
        raise OvbenchError(f"{first} is on benchmark {bench} and {second} on {group_b[0].get('benchmark')}; "
                           "choose one with --benchmark")

    def by_set(group: list[dict]) -> dict:
        runs: dict[str, list] = {}
        for record in group:
            runs.setdefault(str(record.get("eval_set")), []).append(load_record_counts(store_path, record))
        return runs

    runs_a, runs_b = by_set(group_a), by_set(group_b)
    wanted = (benchmark_sets or {}).get(str(bench)) or list(runs_a)
    shared = [name for name in wanted if name in runs_a and name in runs_b]
    if not shared:
        raise OvbenchError(f"{first} and {second} share no evaluation set")
    complete = all(name in runs_a and name in runs_b for name in wanted)
    intervals = paired_difference({n: runs_a[n] for n in shared}, {n: runs_b[n] for n in shared},
                                  resamples=resamples, seed=seed, average=AVG_COLUMN if complete else None)
    rows = {}
    for name in shared:
        mean_a = sum(r.miou() for r in runs_a[name]) / len(runs_a[name])
        mean_b = sum(r.miou() for r in runs_b[name]) / len(runs_b[name])
        rows[name] = (mean_a, mean_b, intervals[name])
    if AVG_COLUMN in intervals:
        rows[AVG_COLUMN] = (sum(v[0] for v in rows.values()) / len(shared), sum(v[1] for v in rows.values()) / len(shared),
                            intervals[AVG_COLUMN])
    return Comparison(first, second, str(bench), rows, resamples)
