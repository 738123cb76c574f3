"""The results store: an append-only JSON Lines file of evaluation records.

One record is written per (run, evaluation set). The file lives at
``$OVBENCH_HOME/results.jsonl`` (``~/.ovbench/results.jsonl`` by default) so that every run
on a machine, whatever directory it was started from, lands in one place that ``ovbench
table`` can read.

Several runs (or several ranks of a sweep) may finish at the same time, so an append has
to land in the file whole and never interleave with another process's lines. Each append
therefore validates every record first (a bad record means nothing is written), then takes
an exclusive ``flock`` on the file opened with ``O_APPEND``, writes the whole encoded batch
with one ``os.write`` (looping only on a short write), fsyncs and unlocks. Readers take a
shared lock, and skip with a warning any line a crashed writer left torn, so one bad line
never hides the rest of the store.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND alone keeps single writes whole
    fcntl = None  # type: ignore[assignment]

import ovbench
from ovbench.errors import DataError

__all__ = [
    "SCHEMA_VERSION",
    "REQUIRED_FIELDS",
    "ResultRecord",
    "ResultStore",
    "ResultStoreWarning",
    "code_version",
    "host_info",
    "new_run_id",
    "ovbench_home",
    "utc_timestamp",
]

#: Version of the record layout; bump it when a field changes meaning.
SCHEMA_VERSION = 1

#: Fields every record must carry; the rest have defaults.
REQUIRED_FIELDS = (
    "run_id",
    "method",
    "protocol",
    "benchmark",
    "eval_set",
    "metrics",
    "config_hash",
    "code_version",
    "host",
    "timestamp",
)

_RESULTS_FILE_NAME = "results.jsonl"


class ResultStoreWarning(UserWarning):
    """A line of the results file could not be read and was skipped."""


# --------------------------------------------------------------------------- environment


def ovbench_home() -> Path:
    """The directory ovbench keeps its state in: ``$OVBENCH_HOME`` or ``~/.ovbench``.

    It is not created here; writers create it when they first write.
    """
    configured = os.environ.get("OVBENCH_HOME", "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".ovbench"


@lru_cache(maxsize=1)
def code_version() -> str:
    """``ovbench.__version__``, plus the short git commit (and ``-dirty``) in a git checkout.

    For example ``"0.1.0+3f9a1c2"`` or ``"0.1.0+3f9a1c2-dirty"``; just ``"0.1.0"`` for an
    installed copy, a checkout without commits or a machine without git. Never raises: a
    result is worth recording even when its provenance cannot be fully established.
    """
    version = str(getattr(ovbench, "__version__", "unknown"))
    try:
        repo_root = Path(ovbench.__file__).resolve().parent.parent
        toplevel = _git(repo_root, "rev-parse", "--show-toplevel")
        # The package could sit inside some unrelated repository (e.g. a site-packages
        # folder that happens to be under version control); only describe our own checkout.
        if toplevel is None or Path(toplevel).resolve() != repo_root:
            return version
        commit = _git(repo_root, "rev-parse", "--short", "HEAD")
        if not commit:
            return version
        # Untracked files (scratch notebooks, outputs) do not change what code ran.
        changes = _git(repo_root, "status", "--porcelain", "--untracked-files=no")
        suffix = "-dirty" if changes else ""
        return f"{version}+{commit}{suffix}"
    except Exception:  # noqa: BLE001 - provenance is best effort by contract
        return version


def _git(cwd: Path, *args: str) -> str | None:
    """Stdout of a git command in ``cwd``, or None when git is missing or fails."""
    try:
        completed = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip()


def host_info() -> dict[str, str]:
    """Where a run happened: ``{"host": name, "hardware": description}``.

    ``hardware`` reads ``"cuda: <device name> x N"`` when CUDA devices are visible, else
    ``"cpu: <processor model> x N"`` with N logical cores. Timings are only comparable on
    the same hardware, so this goes into every record.
    """
    host = socket.gethostname() or platform.node() or "unknown"
    cuda = _cuda_description()
    hardware = cuda if cuda is not None else f"cpu: {_cpu_model()} x {os.cpu_count() or 1}"
    return {"host": host, "hardware": hardware}


def _cuda_description() -> str | None:
    """``"cuda: <name> x N"`` for the visible CUDA devices, or None without any."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        count = torch.cuda.device_count()
        if count == 0:
            return None
        return f"cuda: {torch.cuda.get_device_name(0)} x {count}"
    except Exception:  # noqa: BLE001 - a broken CUDA setup still leaves the CPU to describe
        return None


def _cpu_model() -> str:
    """The processor's marketing name where the OS tells it, else the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            completed = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            if completed.returncode == 0 and completed.stdout.strip():
                return completed.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


_issued_run_ids: set[str] = set()


def new_run_id(method: str) -> str:
    """A fresh run id such as ``"clip-dense-20261127T051500-3f9a1c"``.

    The method name keeps ids readable in the store, the UTC time sorts them, and 24 random
    bits separate runs started in the same second (across processes); ids already issued by
    this process are never repeated.
    """
    slug = re.sub(r"[^a-z0-9.]+", "-", str(method).strip().lower()).strip("-.")
    if not slug:
        raise DataError(f"cannot make a run id: method name {method!r} has no letters or digits")
    while True:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        run_id = f"{slug}-{stamp}-{secrets.token_hex(3)}"
        if run_id not in _issued_run_ids:
            _issued_run_ids.add(run_id)
            return run_id


def utc_timestamp() -> str:
    """The current time as ISO 8601 UTC, e.g. ``"2026-11-27T05:15:00Z"``, for ``timestamp``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- records


@dataclass(kw_only=True)
class ResultRecord:
    """One evaluation of one run on one evaluation set.

    Construction validates and normalises the values (numpy/torch scalars become Python
    numbers, NaN and infinities become None), raising `DataError` naming the bad field.
    Metrics are in percent, as the metric module reports them.
    """

    run_id: str
    method: str
    protocol: str  #: e.g. "zeroshot", "scratch", "finetune"
    benchmark: str
    train_set: str | None = None
    train_size: int | None = None
    eval_set: str
    metrics: dict[str, float | None]  #: mIoU, mAcc, pAcc, fwIoU
    per_class_iou: dict[str, float | None] = field(default_factory=dict)
    seed: int | None = None
    iterations: int | None = None
    config_hash: str
    code_version: str
    host: str
    hardware: str = ""
    wall_time_s: float | None = None
    timestamp: str  #: ISO 8601 UTC, see `utc_timestamp`
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._normalise()

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict, fields in declaration order.

        Validates again, because a record's fields may have been reassigned since it was
        built and a stored record must never be malformed.
        """
        self._normalise()
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRecord:
        """Build a record from a dict such as a line of the store; validates it.

        Unknown keys are rejected (a misspelt field would otherwise vanish silently).
        """
        if not isinstance(data, Mapping):
            raise DataError(f"a result record must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [key for key in data if key not in known]
        if unknown:
            raise DataError(f"unknown result record field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            raise DataError(f"result record is missing required field {missing[0]!r}")
        return cls(**dict(data))

    def _normalise(self) -> None:
        """Check every field and rewrite it in its canonical JSON-ready form."""
        for name in REQUIRED_FIELDS:
            if name != "metrics":
                setattr(self, name, _required_text(name, getattr(self, name)))
        _check_utc_timestamp(self.timestamp)
        self.train_set = _optional_text("train_set", self.train_set)
        self.hardware = _optional_text("hardware", self.hardware) or ""
        self.train_size = _optional_int("train_size", self.train_size, minimum=0)
        self.seed = _optional_int("seed", self.seed)
        self.iterations = _optional_int("iterations", self.iterations, minimum=0)
        self.wall_time_s = _optional_number("wall_time_s", self.wall_time_s)
        schema = _optional_int("schema_version", self.schema_version, minimum=1)
        if schema is None:
            raise DataError("result record field 'schema_version' must be an integer >= 1, got None")
        self.schema_version = schema
        self.metrics = _number_dict("metrics", self.metrics)
        if not self.metrics:
            raise DataError("result record field 'metrics' is empty; it needs at least one metric such as 'mIoU'")
        self.per_class_iou = _number_dict("per_class_iou", self.per_class_iou)
        if not isinstance(self.extra, Mapping):
            raise DataError(f"result record field 'extra' must be a dict, got {type(self.extra).__name__}")
        self.extra = _json_ready("extra", self.extra)


def _required_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"result record field {name!r} must be a non-empty string, got {value!r}")
    return value


def _optional_text(name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"result record field {name!r} must be a string or None, got {value!r}")


def _optional_int(name: str, value: Any, minimum: int | None = None) -> int | None:
    if value is None:
        return None
    # bool is an Integral too, but True as a seed or size is always a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"result record field {name!r} must be an integer or None, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise DataError(f"result record field {name!r} must be >= {minimum}, got {value}")
    return value


def _optional_number(name: str, value: Any) -> float | None:
    value = _scalar(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"result record field {name!r} must be a number or None, got {value!r}")
    value = float(value)
    # JSON has no NaN/Infinity; null is how "no value" (e.g. a class without pixels) is stored.
    return value if math.isfinite(value) else None


def _number_dict(name: str, value: Any) -> dict[str, float | None]:
    if not isinstance(value, Mapping):
        raise DataError(f"result record field {name!r} must be a dict of name -> number, got {type(value).__name__}")
    normalised: dict[str, float | None] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise DataError(f"result record field {name!r} has a non-string key {key!r}")
        normalised[key] = _optional_number(f"{name}[{key!r}]", item)
    return normalised


def _scalar(value: Any) -> Any:
    """Unwrap numpy/torch scalars (anything with ``.item()`` and no length) to Python."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes, Mapping)):
        try:
            if getattr(value, "ndim", 0) == 0:
                return value.item()
        except Exception:  # noqa: BLE001 - not a scalar after all; let the caller reject it
            return value
    return value


def _json_ready(path: str, value: Any) -> Any:
    """A deep copy of ``value`` made of JSON types only; NaN/inf become None."""
    value = _scalar(value)
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        ready: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise DataError(f"result record field {path!r} has a non-string key {key!r}")
            ready[key] = _json_ready(f"{path}.{key}", item)
        return ready
    if isinstance(value, (list, tuple)):
        return [_json_ready(f"{path}[{index}]", item) for index, item in enumerate(value)]
    if hasattr(value, "tolist"):  # numpy arrays and torch tensors
        return _json_ready(path, value.tolist())
    raise DataError(f"result record field {path!r} is not JSON-serialisable ({type(value).__name__})")


def _check_utc_timestamp(text: str) -> None:
    # Python 3.10's fromisoformat does not know the "Z" suffix; spell it as an offset.
    parseable = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        moment = datetime.fromisoformat(parseable)
    except ValueError:
        raise DataError(f"result record field 'timestamp' is not ISO 8601: {text!r}") from None
    offset = moment.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise DataError(f"result record field 'timestamp' must be in UTC (e.g. '2026-11-27T05:15:00Z'), got {text!r}")


def _describe(candidate: Any) -> str:
    """A short handle for error messages: run id and evaluation set where known."""
    if isinstance(candidate, ResultRecord):
        return f"run_id={candidate.run_id!r}, eval_set={candidate.eval_set!r}"
    if isinstance(candidate, Mapping):
        return f"run_id={candidate.get('run_id')!r}, eval_set={candidate.get('eval_set')!r}"
    return type(candidate).__name__


# --------------------------------------------------------------------------- store


class ResultStore:
    """The append-only JSON Lines file that holds every result record.

    Safe for concurrent writers on one machine and on filesystems where ``flock`` works
    across hosts (local disks; NFS on Linux maps it to POSIX locks).
    """

    path: Path

    def __init__(self, path: Path | str | None = None) -> None:
        """Open the store at ``path``; the default is ``ovbench_home() / "results.jsonl"``.

        Nothing is created until the first append.
        """
        self.path = Path(path).expanduser() if path is not None else ovbench_home() / _RESULTS_FILE_NAME

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    def append(self, records: Iterable[ResultRecord | dict]) -> None:
        """Validate ``records`` and append them all, atomically, as one write.

        Either every record is written or (when any is invalid) none is, and the error
        names the first bad record by position, run id and evaluation set. A single record
        is accepted too.
        """
        if isinstance(records, (ResultRecord, Mapping)):
            records = [records]
        batch = list(records)
        lines: list[str] = []
        for position, candidate in enumerate(batch, start=1):
            try:
                if isinstance(candidate, ResultRecord):
                    payload = candidate.to_dict()
                elif isinstance(candidate, Mapping):
                    payload = ResultRecord.from_dict(candidate).to_dict()
                else:
                    raise DataError(f"expected a ResultRecord or dict, got {type(candidate).__name__}")
                lines.append(json.dumps(payload, ensure_ascii=False, allow_nan=False) + "\n")
            except DataError as exc:
                raise DataError(
                    f"result record {position} of {len(batch)} ({_describe(candidate)}) not written, "
                    f"nor the rest of its batch: {exc}"
                ) from None
        if not lines:
            return
        self._write_whole("".join(lines).encode("utf-8"))

    def _write_whole(self, data: bytes) -> None:
        """Append ``data`` under an exclusive lock with one write, then fsync."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create results directory {self.path.parent}: {exc.strerror or exc}") from None
        existed = self.path.exists()
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DataError(f"cannot open results file {self.path}: {exc.strerror or exc}") from None
        try:
            if fcntl is not None:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                size = os.fstat(descriptor).st_size
                try:
                    # A writer killed mid-write leaves a line without its newline; start on a
                    # fresh line so that the torn line stays the only casualty.
                    if size > 0 and os.pread(descriptor, 1, size - 1) != b"\n":
                        data = b"\n" + data
                    view = memoryview(data)
                    while view:
                        written = os.write(descriptor, view)
                        view = view[written:]
                    os.fsync(descriptor)
                except OSError as exc:
                    # A full disk fails part-way through the batch: cut the file back to what it
                    # held, under the same lock, so the store is byte for byte as before.
                    raise DataError(f"cannot write results file {self.path}: {exc.strerror or exc}; "
                                    f"{self._restore(descriptor, size, existed)}") from None
            finally:
                if fcntl is not None:
                    fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)
        if not existed:
            _fsync_directory(self.path.parent)

    def _restore(self, descriptor: int, size: int, existed: bool) -> str:
        """Truncate a failed append away; says what state the store is in."""
        try:
            os.ftruncate(descriptor, size)
            os.fsync(descriptor)
            if not existed:
                self.path.unlink(missing_ok=True)
        except OSError as exc:
            return f"the store may end in a partial line, which readers skip ({exc.strerror or exc})"
        return "no record was written and the store is unchanged"

    def read(self) -> list[dict]:
        """Every readable record, in file order; ``[]`` when the store does not exist yet.

        Lines that are not a JSON object (a torn write, a hand edit gone wrong) are skipped
        with a `ResultStoreWarning` naming the file and line number.
        """
        try:
            with open(self.path, "rb") as handle:
                if fcntl is not None:
                    # Shared lock: never observe a half-finished append as a torn line.
                    fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
                try:
                    content = handle.read()
                finally:
                    if fcntl is not None:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DataError(f"cannot read results file {self.path}: {exc.strerror or exc}") from None
        records: list[dict] = []
        for number, raw_line in enumerate(content.split(b"\n"), start=1):
            if not raw_line.strip():
                continue
            try:
                record = json.loads(raw_line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                self._warn_skipped(number, reason)
                continue
            if not isinstance(record, dict):
                self._warn_skipped(number, f"a JSON {type(record).__name__}, not an object")
                continue
            records.append(record)
        return records

    def _warn_skipped(self, line_number: int, reason: str) -> None:
        warnings.warn(
            f"skipping unreadable line {line_number} of results file {self.path}: {reason}",
            ResultStoreWarning,
            stacklevel=3,
        )


def _fsync_directory(directory: Path) -> None:
    """Make a newly created file's directory entry durable; best effort."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
