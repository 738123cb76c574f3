"""Building and installing ovbench wheels for the tests that check what a user installs.

`pip wheel` of a source tree writes build/ and *.egg-info into that tree, so wheels are
built from a copy of the repository in a temporary folder, never from the checkout. A wheel
installed with `pip install --target SITE` is used through PYTHONPATH=SITE: PYTHONPATH
entries come before the finder of the editable install, so the installed copy is what runs.
Nothing is downloaded: --no-deps, --no-build-isolation, --no-index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
#: what a wheel is built from: the mapped folders, the harness and the packaging files
SOURCE_PARTS = ("ovbench", "adapters", "methods", "configs", "results/reported", "setup.py", "pyproject.toml", "README.md")
EXAMPLE = REPO / "docs" / "example"
PIP_TIMEOUT = 300


def copy_repo(dest: Path) -> Path:
    """The repository's packaging-relevant parts copied to `dest` (no caches, no build output)."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for part in SOURCE_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=ignore)
        else:
            shutil.copy2(source, dest / part)
    return dest


def pip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=PIP_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def build_wheel(tree: Path, out: Path) -> Path:
    """`pip wheel TREE` (no dependencies, no isolation, no index) -> the one .whl in `out`."""
    pip("wheel", str(tree), "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out))
    wheels = sorted(out.glob("ovbench-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def install_target(package: Path, site: Path, *extra: str) -> Path:
    """`pip install --no-deps --target SITE PACKAGE` (a wheel or a source folder)."""
    pip("install", str(package), "--no-deps", "--no-index", "--target", str(site), "-q", *extra)
    return site


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def wheel_text(wheel: Path, suffix: str) -> str:
    """The text of the one member of `wheel` whose name ends with `suffix`."""
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name.endswith(suffix)]
        assert len(members) == 1, (suffix, members)
        return archive.read(members[0]).decode()


def site_env(site: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a process that uses the copy installed in `site`."""
    env = dict(os.environ, PYTHONPATH=str(site), OVBENCH_HOME=str(home), HF_HUB_OFFLINE="1", COLUMNS="200")
    for name in ("OVBENCH_DATA", "OVBENCH_CONFIGS"):
        env.pop(name, None)
    env.update(extra)
    return env


def python_in(site: Path, home: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS` with the copy in `site` first on the path, run from `cwd`."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=site_env(site, home), cwd=cwd, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ovbench_module(site: Path, home: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m ovbench ARGS` run from the copy installed in `site`."""
    return python_in(site, home, cwd, "-m", "ovbench", *args, timeout=timeout)


def imported_from(site: Path, home: Path, cwd: Path, *modules: str) -> dict[str, Path]:
    """module -> the file it is imported from, in a process using the copy in `site`."""
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    print(name, importlib.import_module(name).__file__)"
    proc = python_in(site, home, cwd, "-c", code, *modules)
    assert proc.returncode == 0, proc.stderr
    return {name: Path(path) for name, path in (line.split(" ", 1) for line in proc.stdout.splitlines())}


# --------------------------------------------------------------------------- one build per session


@dataclass(frozen=True)
class Installed:
    """A copy of the repository (`tree`), the wheel built from it and where it is installed."""

    tree: Path
    wheel: Path
    site: Path
    #: files the copy has that the repository has not (the example's, for "example")
    added: tuple[str, ...] = ()


def _files(tree: Path) -> set[str]:
    return {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def _example_tree(tree: Path) -> tuple[str, ...]:
    """Put the example method in a copied tree by running the doc's copy commands there."""
    from doc_snippets import snippet

    shutil.copytree(EXAMPLE, tree / "docs" / "example", ignore=shutil.ignore_patterns("__pycache__"))
    before = _files(tree)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", snippet("in-tree-copy").text], cwd=tree,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(tree / "docs")
    return tuple(sorted(_files(tree) - before))


def installed(kind: str, tmp_path_factory) -> Installed:
    """The repository as it is ("repo") or with the example method dropped in ("example"),
    copied, built into a wheel and installed with --target: once per test session, shared by
    the module-scoped fixtures of every test file that asks."""
    assert kind in ("repo", "example"), kind
    base = tmp_path_factory.getbasetemp() / f"installed-{kind}"
    record = base / "added.txt"
    if not record.exists():
        if base.exists():
            shutil.rmtree(base)
        tree = copy_repo(base / "tree")
        added = _example_tree(tree) if kind == "example" else ()
        wheel = build_wheel(tree, base / "dist")
        install_target(wheel, base / "site")
        record.write_text("\n".join(added))
    added = tuple(line for line in record.read_text().splitlines() if line)
    wheel = next((base / "dist").glob("ovbench-*.whl"))
    return Installed(base / "tree", wheel, base / "site", added)
