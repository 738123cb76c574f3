"""Sweeps: the paper's tables as lists of jobs, and a planner that resumes where it stopped.

An *experiment* file (``configs/experiments/*.yaml``) lists the (method, protocol, training
set, seed) combinations one table or figure needs. Each combination is a :class:`Job`; running a
job is one ``ovbench run`` (train, then evaluate on every evaluation set of the benchmark),
which appends one record per evaluation set to the results store with ``extra.job_key`` set to
:meth:`Job.key`. Because the key is a digest of what the job *is* (not of when or where it ran),
a sweep can look at the store, skip every job whose records are already there, and so resume
an interrupted run or share jobs between tables (Table 3's full model is Table 2's GSNet row).

The YAML format is documented at the top of each shipped experiment file; in short::

    name: table2
    description: ...
    defaults: {benchmark: ovrsiss, seeds: [0]}     # without it: the default benchmark, toyland
    jobs:
      - {methods: [catseg, san], protocols: [finetune, scratch]}   # the product: 4 jobs
      - {method: catseg-remoteclip, protocol: scratch, label: "CAT-Seg (RemoteCLIP)"}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ovbench.config import load_yaml, parse_overrides, unknown_key_error
from ovbench.errors import ConfigError, OvbenchError, first_line, unknown_name
from ovbench.registry import DEFAULT_BENCHMARK, protocol_names

__all__ = [
    "Experiment",
    "Job",
    "SweepPlan",
    "job_is_done",
    "load_experiment",
    "plan_sweep",
    "run_sweep",
]


def __getattr__(name: str) -> Any:
    # PROTOCOLS: the protocols a job may name, read from configs/protocols/ when asked (scratch:
    # train on the benchmark's training set from the method's usual initialisation, finetune:
    # from COCO-trained weights, zeroshot: evaluate untrained; a config tree may add its own)
    if name == "PROTOCOLS":
        return tuple(protocol_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# (singular, plural) spellings of the axes an entry expands over, in product order: the first
# axis varies slowest, so a table's rows come out grouped by method.
_AXES = (("method", "methods"), ("protocol", "protocols"), ("train_set", "train_sets"), ("seed", "seeds"))
_ENTRY_KEYS = frozenset({name for pair in _AXES for name in pair} | {"benchmark", "overrides", "label"})
# A default label would give every job of the file the same table row, so defaults take no label.
_DEFAULTS_KEYS = _ENTRY_KEYS - {"label"}
_TOP_KEYS = frozenset({"name", "description", "defaults", "jobs"})

_UNSAFE_RUN_ID_CHARS = re.compile(r"[^a-z0-9._]+")


# --------------------------------------------------------------------------- jobs


def _check_field(name: str, value: Any, where: str) -> None:
    """Raise a one-line ConfigError when `value` is not valid for the Job field `name`."""
    if name in ("method", "benchmark"):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: expected a non-empty {name} name, got {value!r}")
    elif name == "protocol":
        protocols = protocol_names()
        if value not in protocols:
            raise ConfigError(f"{where}: {unknown_name('protocol', str(value), protocols)}")
    elif name == "train_set":
        # None is meaningful: "the benchmark's own training set".
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}: expected a training-set name or null, got {value!r}")
    elif name == "seed":
        # bool is an int subclass; `seed: true` is a typo, not seed 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: expected a non-negative integer seed, got {value!r}")
    elif name == "label":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}: expected a non-empty label or null, got {value!r}")
    elif name == "overrides":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of key=value strings, got {value!r}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{where}[{index}]: expected a key=value string, got {item!r}")
            try:
                parse_overrides([item])
            except ConfigError as exc:
                raise ConfigError(f"{where}[{index}]: {exc}") from None


def _slug(text: str) -> str:
    """Lower-case `text` and keep only characters every filesystem accepts in a name.

    Several names may map to one slug ("gsnet/E" and "gsnet-e"); run ids stay unique because
    they end with the job key.
    """
    slug = _UNSAFE_RUN_ID_CHARS.sub("-", text.lower()).strip("-.")
    return slug or "x"


@dataclass(frozen=True)
class Job:
    """One training-and-evaluation run of a sweep.

    Every field but `label` says *what* is run, so all of them, and only them, enter
    :meth:`key`; the label is presentation (a table's row name) and may be renamed freely
    without re-running anything.
    """

    method: str
    protocol: str
    benchmark: str = DEFAULT_BENCHMARK
    train_set: str | None = None
    seed: int = 0
    overrides: tuple[str, ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        # A list would make the frozen dataclass unhashable and compare unequal to a tuple.
        if isinstance(self.overrides, list):
            object.__setattr__(self, "overrides", tuple(self.overrides))
        for name in ("method", "protocol", "benchmark", "train_set", "seed", "overrides", "label"):
            _check_field(name, getattr(self, name), f"job {self.method!r}: {name}")

    def _identity(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "protocol": self.protocol,
            "benchmark": self.benchmark,
            "train_set": self.train_set,
            "seed": self.seed,
            # Order is kept: a later override of the same key wins, so order is meaningful.
            "overrides": list(self.overrides),
        }

    def key(self) -> str:
        """A 16-hex digest of every field except `label`, identical in every process and on
        every machine (canonical JSON, not Python's salted `hash`)."""
        canonical = json.dumps(self._identity(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def run_id(self) -> str:
        """A deterministic, filesystem-safe name for the job's run folder and records."""
        train = _slug(self.train_set or "default")
        return f"{_slug(self.method)}-{self.protocol}-{train}-s{self.seed}-{self.key()[:8]}"

    def describe(self) -> str:
        """One human-readable line, e.g. ``gsnet/E [E]: scratch on ovrsiss (train: default), seed 0``."""
        label = f" [{self.label}]" if self.label else ""
        text = (
            f"{self.method}{label}: {self.protocol} on {self.benchmark} "
            f"(train: {self.train_set or 'default'}), seed {self.seed}"
        )
        if self.overrides:
            text += ", overrides " + " ".join(self.overrides)
        return text


@dataclass
class Experiment:
    """A named list of jobs, usually one table or figure of the paper."""

    name: str
    description: str
    jobs: list[Job]
    source: Path | None = None


# --------------------------------------------------------------------------- loading


def _axis_values(entry: Mapping[str, Any], singular: str, plural: str, where: str) -> list[Any] | None:
    """The values an entry gives for one axis (as a list), or None when it gives none."""
    if singular in entry and plural in entry:
        raise ConfigError(f"{where}: give either '{singular}' or '{plural}', not both")
    if singular in entry:
        value = entry[singular]
        if isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}.{singular}: expected one value, got a list (use '{plural}')")
        _check_field(singular, value, f"{where}.{singular}")
        return [value]
    if plural in entry:
        values = entry[plural]
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"{where}.{plural}: expected a list, got {values!r} (use '{singular}' for one value)")
        if not values:
            # An empty list would silently drop every job of the entry.
            raise ConfigError(f"{where}.{plural}: the list is empty")
        for index, value in enumerate(values):
            _check_field(singular, value, f"{where}.{plural}[{index}]")
        return list(values)
    return None


def _check_keys(section: Any, valid: frozenset[str], where: str, source: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {section!r}")
    for key in section:
        if key not in valid:
            raise ConfigError(f"{source}: {unknown_key_error(str(key), valid, where)}")
    return section


def _expand_entry(entry: dict[str, Any], defaults: dict[str, Any], where: str) -> list[Job]:
    """The product of one `jobs:` entry over its axes, with `defaults` filling the gaps."""
    axes: list[list[Any]] = []
    for singular, plural in _AXES:
        values = _axis_values(entry, singular, plural, where)
        if values is None:
            values = _axis_values(defaults, singular, plural, "defaults")
        if values is None:
            if singular == "train_set":
                values = [None]
            elif singular == "seed":
                values = [0]
            else:
                raise ConfigError(f"{where}: no {singular} (give '{singular}' or '{plural}')")
        axes.append(values)

    benchmark = entry.get("benchmark", defaults.get("benchmark", DEFAULT_BENCHMARK))
    _check_field("benchmark", benchmark, f"{where}.benchmark")
    # Entry overrides come after the defaults' so that, for a key set in both, the entry wins.
    overrides: list[str] = []
    for section, name in ((defaults, "defaults"), (entry, where)):
        if "overrides" in section:
            _check_field("overrides", section["overrides"], f"{name}.overrides")
            overrides.extend(section["overrides"])
    label = entry.get("label")
    _check_field("label", label, f"{where}.label")

    return [
        Job(
            method=method,
            protocol=protocol,
            benchmark=benchmark,
            train_set=train_set,
            seed=seed,
            overrides=tuple(overrides),
            label=label,
        )
        for method, protocol, train_set, seed in itertools.product(*axes)
    ]


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment YAML file and expand its entries into jobs.

    Raises ConfigError (one line, naming the file and the offending key or entry) for an
    unknown key, a malformed value, an entry without a method or protocol, or two entries
    that produce the same job.
    """
    path = Path(path)
    data = load_yaml(path)
    source = str(path)
    _check_keys(data, _TOP_KEYS, "", source)

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{source}: name: expected a non-empty string, got {name!r}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{source}: description: expected a string, got {description!r}")
    defaults = _check_keys(data.get("defaults") or {}, _DEFAULTS_KEYS, "defaults", source)
    entries = data.get("jobs")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: jobs: expected a non-empty list of job entries")

    jobs: list[Job] = []
    first_entry_of: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"jobs[{index}]"
        _check_keys(entry, _ENTRY_KEYS, where, source)
        try:
            expanded = _expand_entry(entry, defaults, where)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        for job in expanded:
            key = job.key()
            if key in first_entry_of:
                # The same job twice would run twice and race on its records; say where.
                first = first_entry_of[key]
                repeat = "lists the same job twice" if first == where else f"repeats the job of {first}"
                raise ConfigError(f"{source}: {where} {repeat} ({job.describe()})")
            first_entry_of[key] = where
            jobs.append(job)
    return Experiment(name=name, description=description, jobs=jobs, source=path)


# --------------------------------------------------------------------------- planning


def _job_key_of(record: Mapping[str, Any]) -> str | None:
    extra = record.get("extra")
    if not isinstance(extra, Mapping):
        return None
    key = extra.get("job_key")
    return key if isinstance(key, str) else None


def _eval_sets_by_job_key(records: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """job key -> the distinct evaluation sets it has records for (records of runs started
    outside a sweep carry no job key and are ignored)."""
    found: dict[str, set[str]] = {}
    for record in records:
        key = _job_key_of(record)
        if key is not None:
            found.setdefault(key, set()).add(str(record.get("eval_set")))
    return found


def _is_complete(eval_sets: set[str], expected_eval_sets: int | None) -> bool:
    if expected_eval_sets is None:
        return bool(eval_sets)
    if expected_eval_sets < 1:
        raise ValueError(f"expected_eval_sets must be at least 1, got {expected_eval_sets}")
    return len(eval_sets) >= expected_eval_sets


def job_is_done(job: Job, records: list[dict], expected_eval_sets: int | None = None) -> bool:
    """Whether the store already holds `job`'s results.

    Done means records with ``extra.job_key == job.key()`` exist for at least
    `expected_eval_sets` distinct evaluation sets (any one record when None). A run that died
    after some sets therefore counts as not done, and is run again in full.
    """
    eval_sets = _eval_sets_by_job_key(records).get(job.key(), set())
    return _is_complete(eval_sets, expected_eval_sets)


@dataclass
class SweepPlan:
    """The jobs of an experiment split into those still to run and those already done,
    each in the experiment's order."""

    todo: list[Job] = field(default_factory=list)
    done: list[Job] = field(default_factory=list)


def plan_sweep(
    experiment: Experiment,
    records: list[dict],
    eval_sets_of: Callable[[str], int] | None = None,
) -> SweepPlan:
    """Split `experiment`'s jobs into done and to-do against the store's `records`.

    `eval_sets_of(benchmark)` gives how many evaluation sets a complete job has records for;
    without it a single record marks a job done.
    """
    by_key = _eval_sets_by_job_key(records)
    expected_for: dict[str, int | None] = {}
    plan = SweepPlan()
    for job in experiment.jobs:
        if job.benchmark not in expected_for:
            expected_for[job.benchmark] = eval_sets_of(job.benchmark) if eval_sets_of else None
        done = _is_complete(by_key.get(job.key(), set()), expected_for[job.benchmark])
        (plan.done if done else plan.todo).append(job)
    return plan


def _plan_table(experiment: Experiment, plan: SweepPlan, method_available: Callable[[str], bool] | None = None) -> Table:
    done_keys = {job.key() for job in plan.done}
    table = Table(title=f"sweep {experiment.name}: {len(plan.todo)} to run, {len(plan.done)} done")
    columns = ("#", "method", "label", "protocol", "benchmark", "train set", "seed", "overrides", "run id", "status")
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "seed") else "left")
    for number, job in enumerate(experiment.jobs, start=1):
        if job.key() in done_keys:
            status = "[green]done[/green]"
        elif method_available is not None and not method_available(job.method):
            status = "[red]method not available[/red]"
        else:
            status = "[yellow]to run[/yellow]"
        cells = (job.method, job.label or "", job.protocol, job.benchmark, job.train_set or "default", str(job.seed),
                 " ".join(job.overrides), job.run_id())
        table.add_row(str(number), *(escape(cell) for cell in cells), status)
    return table


def run_sweep(
    experiment: Experiment,
    run_job: Callable[[Job], object],
    records: list[dict],
    *,
    dry_run: bool = False,
    eval_sets_of: Callable[[str], int] | None = None,
    console: Console | None = None,
    keep_going: bool = False,
    method_available: Callable[[str], bool] | None = None,
) -> SweepPlan:
    """Print the plan, then call `run_job` on every job not yet done, in order.

    With `dry_run` nothing runs. A job that raises stops the sweep and the exception
    propagates; with `keep_going` the remaining jobs still run and, at the end, an
    OvbenchError says how many failed. Returns the plan made before anything ran.
    """
    console = console or Console()
    plan = plan_sweep(experiment, records, eval_sets_of)
    console.print(_plan_table(experiment, plan, method_available))
    if dry_run:
        missing = sorted({job.method for job in plan.todo if method_available is not None and not method_available(job.method)})
        runnable = len(plan.todo) - sum(1 for job in plan.todo if job.method in missing)
        note = f"; {len(plan.todo) - runnable} need a method that is not available: {', '.join(missing)}" if missing else ""
        console.print(f"dry run: {runnable} job(s) would run, {len(plan.done)} already done{note}", highlight=False, markup=False)
        return plan
    if not plan.todo:
        console.print(f"nothing to run: all {len(plan.done)} job(s) of {experiment.name} are done")
        return plan

    failures: list[tuple[Job, Exception]] = []
    for number, job in enumerate(plan.todo, start=1):
        console.print(f"[bold]\\[{number}/{len(plan.todo)}][/bold] {escape(job.describe())}", highlight=False)
        try:
            run_job(job)
        except Exception as exc:  # noqa: BLE001 - KeyboardInterrupt still stops the sweep at once
            console.print(f"[red]failed[/red] {escape(job.run_id())}: {type(exc).__name__}: {escape(first_line(exc))}", highlight=False)
            if not keep_going:
                raise
            failures.append((job, exc))

    if failures:
        console.print(f"[red]{len(failures)} of {len(plan.todo)} job(s) failed:[/red]")
        for job, exc in failures:
            console.print(f"  {job.describe()}: {type(exc).__name__}: {first_line(exc)}", highlight=False, markup=False)
        failed_ids = ", ".join(job.run_id() for job, _ in failures)
        raise OvbenchError(
            f"{len(failures)} of {len(plan.todo)} job(s) of sweep '{experiment.name}' failed: {failed_ids}"
        )
    console.print(f"sweep {experiment.name}: ran {len(plan.todo)} job(s), {len(plan.done)} were already done")
    return plan
