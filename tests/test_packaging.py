"""What a user installs: a wheel built from the repository as it is holds exactly the three
import packages (ovbench, ovbench_adapters, ovbench_methods) and every YAML of configs/ under
ovbench/configs/, and installed elsewhere it lists and evaluates the built-in methods.

The wheel is built from a copy of the repository (tests/wheel_build.py), once per session.
"""

from __future__ import annotations

import json

import pytest

from wheel_build import REPO, Installed, imported_from, installed, ovbench_module, wheel_names, wheel_text

TOP_LEVEL = {"ovbench", "ovbench_adapters", "ovbench_methods"}


@pytest.fixture(scope="module")
def repo_install(tmp_path_factory) -> Installed:
    return installed("repo", tmp_path_factory)


def test_the_wheel_holds_exactly_the_three_import_packages(repo_install):
    assert set(wheel_text(repo_install.wheel, ".dist-info/top_level.txt").split()) == TOP_LEVEL
    names = wheel_names(repo_install.wheel)
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == TOP_LEVEL, sorted(top)
    assert "ovbench = ovbench.cli:main" in wheel_text(repo_install.wheel, ".dist-info/entry_points.txt")


def test_the_wheel_holds_every_config_yaml_and_only_the_repository_code(repo_install):
    names = set(wheel_names(repo_install.wheel))
    configs = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))
    assert configs and {f"ovbench/configs/{c}" for c in configs} <= names
    shipped_yaml = {n for n in names if n.endswith((".yaml", ".yml"))}
    reported = {f"ovbench/reported/{p.name}" for p in (REPO / "results" / "reported").glob("*.yaml")}
    assert reported, "results/reported holds the published numbers"
    assert shipped_yaml == {f"ovbench/configs/{c}" for c in configs} | reported, sorted(shipped_yaml)
    for folder, package in (("adapters", "ovbench_adapters"), ("methods", "ovbench_methods")):
        modules = {f"{package}/{p.relative_to(REPO / folder).as_posix()}" for p in (REPO / folder).rglob("*.py")}
        assert modules <= names, sorted(modules - names)
    # the example method is a template in docs/, not a shipped method
    assert not any("pixel_probe" in n or "pixel-probe" in n for n in names)


def test_the_installed_wheel_lists_and_evaluates_the_builtins(repo_install, tmp_path):
    cwd, home = tmp_path / "elsewhere", tmp_path / "home"
    cwd.mkdir()
    for module, path in imported_from(repo_install.site, home, cwd, "ovbench", "ovbench.configs", "ovbench_methods").items():
        assert path.is_relative_to(repo_install.site), (module, path)

    listing = ovbench_module(repo_install.site, home, cwd, "methods")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split("│")[1].strip() for line in listing.stdout.splitlines() if line.startswith("│")}
    assert {"gsnet", "catseg", "clip-dense", "gsnet/A"} <= rows, listing.stdout
    assert "broken" not in listing.stdout

    proc = ovbench_module(repo_install.site, home, cwd, "eval", "--method", "clip-dense", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (home / "results.jsonl").read_text().splitlines()]
    assert [r["eval_set"] for r in records] == ["toyland-urban", "toyland-flood", "toyland-objects"]
    assert {r["method"] for r in records} == {"clip-dense"}
    assert not (cwd / "results.jsonl").exists() and sorted(p.name for p in cwd.iterdir()) == []

    # the published numbers travel with the wheel: --reported finds them from any directory
    table = ovbench_module(repo_install.site, home, cwd, "table", "--kind", "main", "--reported")
    assert table.returncode == 0, table.stderr[-3000:]
    assert "45.75" in table.stdout and "CLIP (dense)" in table.stdout
