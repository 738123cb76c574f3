"""Errors the command line turns into one clear line and a non-zero exit.

Anything raised as an `OvbenchError` is a problem with the user's input or environment
(a bad name, a missing file, a malformed config, a full disk), not a bug; the CLI prints its
message without a traceback and exits with the error's `exit_code`.
"""

from __future__ import annotations

import difflib
import errno
import os
from typing import Iterable


class OvbenchError(Exception):
    """Base class for user-facing errors."""

    #: the process exit status the CLI returns for this error
    exit_code = 1


class ConfigError(OvbenchError):
    """A configuration file or override is malformed or names an unknown key."""


class RegistryError(OvbenchError):
    """An unknown method, dataset or benchmark name."""


class DataError(OvbenchError):
    """A dataset file is missing, unreadable or inconsistent."""


class VocabularyError(OvbenchError):
    """A vocabulary is empty, has an empty name or repeats a class."""


class CheckpointError(OvbenchError):
    """A checkpoint is missing, unreadable or does not fit the model."""


class StorageError(OvbenchError):
    """A file or folder ovbench writes cannot be written (read-only place, full disk)."""


class RunLockedError(OvbenchError):
    """Another process holds the run's lock."""


class Interrupted(OvbenchError):
    """The user pressed Ctrl-C (SIGINT); the message says what was kept."""

    exit_code = 130


def closest_name(name: str, candidates: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The candidate closest to a mistyped `name`, or None when none is close enough."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.5) -> str:
    """`" (did you mean 'x'?)"` naming the closest candidate, or "" when none is close."""
    close = closest_name(name, candidates, cutoff)
    return f" (did you mean '{close}'?)" if close is not None else ""


def unknown_name(kind: str, name: str, available: Iterable[str], cutoff: float = 0.5) -> str:
    """The one line for a name that is not known:
    `unknown method 'clip-dens' (did you mean 'clip-dense'?); available: catseg, clip-dense, gsnet`."""
    names = sorted({str(a) for a in available})
    return f"unknown {kind} '{name}'{did_you_mean(name, names, cutoff)}; available: {', '.join(names) or 'none'}"


def unknown_name_error(kind: str, name: str, available: Iterable[str], error: type[OvbenchError] = RegistryError) -> OvbenchError:
    """`unknown_name` as an exception to raise (a RegistryError unless `error` says otherwise)."""
    return error(unknown_name(kind, name, available))


def first_line(exc: BaseException) -> str:
    """An exception's own first line, or its type name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_os_error(exc: OSError, doing: str = "") -> str:
    """One line naming the path and the reason: 'cannot write /x/y: No space left on device'."""
    reason = exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "") or first_line(exc)
    path = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    what = doing or _verb(exc)
    return f"{what} {os.fsdecode(path)}: {reason}" if path != "" else f"{what}: {reason}"


def _verb(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return "cannot write"
    return "cannot access"


def storage_error(exc: OSError, doing: str = "") -> StorageError:
    return StorageError(describe_os_error(exc, doing))
