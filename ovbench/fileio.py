"""Atomic file writes: a reader never sees a half-written file, a crash leaves the old one.

A write that fails (read-only place, full disk) removes its temporary file and raises
`StorageError` naming the path and the reason; the previous file, if any, is untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ovbench.errors import StorageError, describe_os_error

#: temporary files of atomic writes are named ".<target name>.<random>.tmp" beside the target
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(describe_os_error(exc, "cannot create folder")) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes owner-only files; outputs get the mode any new file would (or keep the old one's)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            kept = "the previous file is unchanged" if path.exists() else "nothing was written"
            raise StorageError(f"cannot write {path}: {exc.strerror or exc} ({kept})") from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: str | Path) -> int:
    """Delete temporary files that atomic writes killed mid-way left in `folder`; returns how
    many. Call it only while no other process writes there (e.g. under the run's lock)."""
    folder = Path(folder)
    removed = 0
    if not folder.is_dir():
        return 0
    for candidate in folder.iterdir():
        if candidate.name.startswith(TEMP_PREFIX) and candidate.name.endswith(TEMP_SUFFIX) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed += 1
    return removed
