"""The training runs under ``$OVBENCH_HOME/runs``: what each one is, how far it got, and
whether a process is working on it now.

A run directory holds ``request.yaml`` (what `ovbench run` was asked), ``config.yaml`` (the
resolved configuration, with ``train.iters``), ``log.jsonl`` (one line per logged iteration),
``checkpoints/iter_NNNNNNN.pt`` and the run lock ``.lock``. A run's state is

* ``running``: a live process holds its lock (training or evaluating);
* ``finished``: no process holds it, its last checkpoint reached the target iterations (or
  it does not train) and the results store has a record for each of its evaluation sets --
  the test `ovbench run --resume` applies before it says "nothing to do";
* ``interrupted``: neither; ``ovbench run --resume RUN_ID`` continues it;
* ``unknown``: its request or configuration cannot be read (the listing says why).

Listing never writes: the lock is probed with a shared, non-blocking ``flock`` on a read-only
descriptor, which fails exactly while a run holds the exclusive lock, and does not leave
this process's pid in the lock file as taking the lock would. Nothing here imports torch, so
`ovbench runs` stays quick.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock, so runs there are never locked
    fcntl = None  # type: ignore[assignment]

from ovbench.config import load_yaml
from ovbench.engine.lock import LOCK_NAME
from ovbench.errors import OvbenchError

__all__ = ["RUN_STATES", "RunInfo", "list_runs", "lock_holder", "read_log", "runs_root"]

RUN_STATES = ("running", "interrupted", "finished", "unknown")
# the name ovbench.engine.checkpoint.checkpoint_name gives; matched here to avoid importing torch
_CHECKPOINT = re.compile(r"^iter_(\d+)\.pt$")


@dataclass
class RunInfo:
    run_id: str
    path: Path
    state: str
    method: str | None = None
    protocol: str | None = None
    benchmark: str | None = None
    train_set: str | None = None
    #: iterations its last checkpoint holds (a running run: the last logged iteration if later)
    iterations: int = 0
    #: iterations it trains for; None for a run that does not train (zero-shot)
    target_iterations: int | None = None
    #: evaluation sets with a record in the store, and how many it evaluates (None: unknown)
    evaluated: int = 0
    eval_sets: int | None = None
    #: who holds the lock ("pid 123 on host x, since ...") while running
    holder: str | None = None
    #: why the run's files could not be read (state unknown)
    problem: str | None = None
    #: last change to the run's files (seconds since the epoch), for ordering
    updated: float = 0.0

    @property
    def iterations_text(self) -> str:
        if self.target_iterations is None:
            return "-"
        return f"{self.iterations}/{self.target_iterations}"

    @property
    def evaluated_text(self) -> str:
        return f"{self.evaluated}/{'?' if self.eval_sets is None else self.eval_sets}"


def runs_root() -> Path:
    """``$OVBENCH_HOME/runs`` (see `ovbench.runner.runs_dir`, which imports torch)."""
    from ovbench.results.store import ovbench_home

    return ovbench_home() / "runs"


def lock_holder(run_dir: Path) -> str | None:
    """Who holds the run's lock ("pid N on host H, since T"), or None when it is free."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(descriptor)
        except OSError:
            return None  # a file system without flock: nothing to tell
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


def _holder_text(descriptor: int) -> str:
    try:
        info = json.loads(os.pread(descriptor, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info.get("pid"):
        return "another process"
    since = f", since {info['since']}" if info.get("since") else ""
    return f"pid {info['pid']} on host {info.get('host', '?')}{since}"


def read_log(run_dir: Path) -> list[dict]:
    """The entries of a run's ``log.jsonl`` in order; a line torn by a kill is skipped."""
    path = Path(run_dir) / "log.jsonl"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OvbenchError(f"cannot read training log {path}: {exc.strerror or exc}") from None
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("iteration"), int):
            entries.append(entry)
    return entries


def _trained_iterations(run_dir: Path) -> int:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return 0
    found = [int(match.group(1)) for path in folder.iterdir() if (match := _CHECKPOINT.match(path.name))]
    return max(found, default=0)


def _updated(run_dir: Path) -> float:
    times = []
    for name in ("request.yaml", "config.yaml", "log.jsonl", "checkpoints", LOCK_NAME):
        try:
            times.append((run_dir / name).stat().st_mtime)
        except OSError:
            continue
    return max(times, default=0.0)


def _expected_eval_sets(request: dict, config: dict) -> int | None:
    if config.get("eval_sets"):
        return len(config["eval_sets"])
    if request.get("eval_sets"):
        return len(request["eval_sets"])
    from ovbench.registry import load_benchmark

    # request.yaml keeps a benchmark YAML's absolute path; config.yaml its name
    for name in (request.get("benchmark"), config.get("benchmark")):
        if not name:
            continue
        try:
            return len(load_benchmark(str(name)).eval_sets)
        except OvbenchError:
            continue
    return None


def describe_run(run_dir: Path, records_of: Any) -> RunInfo:
    """One run's `RunInfo`; ``records_of(store_path or None, run_id)`` gives its records."""
    run_dir = Path(run_dir)
    info = RunInfo(run_id=run_dir.name, path=run_dir, state="unknown", updated=_updated(run_dir))
    info.holder = lock_holder(run_dir)
    try:
        request = load_yaml(run_dir / "request.yaml")
        config = load_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
        if not isinstance(request, dict) or not isinstance(config, dict):
            raise OvbenchError(f"{run_dir}: request.yaml or config.yaml is not a mapping")
    except OvbenchError as exc:
        info.problem = str(exc)
        info.state = "running" if info.holder else "unknown"
        return info
    info.run_id = str(request.get("run_id") or run_dir.name)
    info.method = request.get("method")
    if isinstance(info.method, str) and info.method.endswith((".yaml", ".yml")):
        info.method = Path(info.method).stem
    info.protocol = config.get("protocol") or request.get("protocol")
    info.benchmark = config.get("benchmark") or request.get("benchmark")
    info.train_set = config.get("train_set") if "train_set" in config else request.get("train_set")
    trains = "train_set" in config and config.get("train_set") is not None
    if trains:
        iters = (config.get("train") or {}).get("iters")
        info.target_iterations = int(iters) if isinstance(iters, int) else None
        if info.target_iterations is None:
            info.problem = f"{run_dir / 'config.yaml'} has no train.iters"
    info.iterations = _trained_iterations(run_dir)
    info.eval_sets = _expected_eval_sets(request, config)
    records = records_of(request.get("store_path"), info.run_id)
    info.evaluated = len({record.get("eval_set") for record in records})

    if info.holder:
        logged = [entry["iteration"] for entry in read_log(run_dir)]
        info.iterations = max([info.iterations, *logged])
        info.state = "running"
    elif info.problem:
        info.state = "unknown"
    else:
        trained = not trains or (info.target_iterations is not None and info.iterations >= info.target_iterations)
        evaluated = info.eval_sets is not None and info.evaluated >= info.eval_sets
        info.state = "finished" if trained and evaluated else "interrupted"
    return info


def list_runs(store_path: str | Path | None = None, root: Path | None = None) -> list[RunInfo]:
    """Every run under ``root`` (default `runs_root`), least recently changed first.

    A run's records are read from ``store_path`` when given, else from the store its
    request names (``--store`` of its `ovbench run`), else the default store. A folder with
    neither a request nor a held lock is not a run and is left out.
    """
    from ovbench.results.store import ResultStore

    root = runs_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    stores: dict[str, dict[str, list[dict]]] = {}

    def records_of(own_store: str | None, run_id: str) -> list[dict]:
        chosen = store_path if store_path is not None else own_store
        key = str(ResultStore(chosen).path)
        if key not in stores:
            by_run: dict[str, list[dict]] = {}
            for record in ResultStore(chosen).read():
                by_run.setdefault(str(record.get("run_id")), []).append(record)
            stores[key] = by_run
        return stores[key].get(run_id, [])

    runs = []
    for run_dir in sorted(root.iterdir()):
        if not run_dir.is_dir():
            continue
        if not (run_dir / "request.yaml").is_file() and lock_holder(run_dir) is None:
            continue
        runs.append(describe_run(run_dir, records_of))
    runs.sort(key=lambda run: (run.updated, run.run_id))
    return runs
