"""Running the installed `ovbench` executable as a user does: a subprocess, its exit status,
its stderr; and small file systems (read-only, nearly full) for the failure tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
#: the console script pip installed next to this interpreter (not `python -m ovbench`)
OVBENCH = str(Path(sys.executable).with_name("ovbench"))
TRAINABLE = str(TESTS / "tiny-trainable.yaml")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OVBENCH_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(TESTS), COLUMNS="200")
    env.pop("OVBENCH_DATA", None)
    env.update(extra)
    return env


def ovbench(home: Path, *args: str, timeout: float = 600, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """The installed executable run in the repository (or in `cwd`) with `home` as OVBENCH_HOME."""
    assert Path(OVBENCH).is_file(), f"the ovbench executable is not installed at {OVBENCH}"
    return subprocess.run(
        [OVBENCH, *args], capture_output=True, text=True, env=cli_env(home, **env), cwd=cwd or REPO, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start(home: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [OVBENCH, *args], env=cli_env(home, **env), cwd=REPO, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> str:
    """Exit `code`, no traceback, exactly one non-empty stderr line, starting 'error:' and
    holding every fragment; returns that line."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [line for line in error_lines(proc.stderr) if not line.startswith("no benchmark given")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def records(store: Path) -> list[dict]:
    return [json.loads(line) for line in store.read_text().splitlines() if line.strip()] if store.exists() else []


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to prove nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and sys.platform.startswith("linux")


@contextlib.contextmanager
def small_filesystem(path: Path, size: str, read_only: bool = False):
    """A tmpfs of `size` mounted at `path` (needs root, as CI is); skips the test otherwise."""
    if not _can_mount():
        pytest.skip("needs root to mount a small tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder no process of ours can write: a read-only mount for root (who ignores
    permission bits), mode 0555 otherwise."""
    if _can_mount():
        with small_filesystem(path, "1m", read_only=True):
            yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system holding `folder` until about `leave` bytes are free."""
    filler = folder / "filler.bin"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))
    assert shutil.disk_usage(folder).free <= leave + 8192
