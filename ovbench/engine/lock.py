"""The run lock: one process at a time trains, resumes or evaluates a run directory.

The lock is an exclusive `flock` on `<run dir>/.lock`, held for the whole command. The
kernel drops it when its process dies, however it dies, so a lock left by a killed process
is free again at once: the next `--resume` takes it over without any clean-up. The file
holds the holder's pid, host and start time so that a refused process can say who holds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; runs are then unlocked
    fcntl = None  # type: ignore[assignment]

from ovbench.errors import RunLockedError, storage_error

LOCK_NAME = ".lock"


class RunLock:
    """`with RunLock(run_dir, run_id):` — raises `RunLockedError` naming the holder."""

    def __init__(self, run_dir: Path, run_id: str):
        self.path = Path(run_dir) / LOCK_NAME
        self.run_id = run_id
        self._descriptor: int | None = None

    def acquire(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise storage_error(exc, "cannot create run directory") from None
        if fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(descriptor)
                os.close(descriptor)
                raise RunLockedError(
                    f"run {self.run_id} is in use by {holder} (lock {self.path}); wait for it to finish or stop it"
                ) from None
        stamp = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, stamp.encode() + b"\n", 0)
        except OSError:
            pass  # the lock holds without its label; only the refusal message gets vaguer
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        if self._descriptor is not None:
            try:
                os.ftruncate(self._descriptor, 0)
            except OSError:
                pass
            os.close(self._descriptor)  # closing drops the flock
            self._descriptor = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(descriptor: int) -> str:
    try:
        info = json.loads(os.pread(descriptor, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    since = f", since {info['since']}" if info.get("since") else ""
    return f"pid {info['pid']} on host {info.get('host', '?')}{since}"
