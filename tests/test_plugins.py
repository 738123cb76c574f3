"""The plugin route of docs/adding-a-method.md: a third-party package that registers its adapter
through the `ovbench.adapters` entry-point group, installed with pip, is a method of the
installed `ovbench` executable; broken plugins cost one line, never the command line.

Packages are written on the fly (tests/plugin_build.py) and installed with
`pip install --no-deps --no-build-isolation --target SITE`; the venv's `ovbench` executable
runs with PYTHONPATH=SITE, so importlib.metadata finds their entry points.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from cli_process import OVBENCH, assert_one_error_line, cli_env
from doc_snippets import commands, snippet
from plugin_build import PLUGIN_DIR, entry_point, install_broken_plugins, write_pixel_probe_plugin
from wheel_build import pip

BUILTINS = ("catseg", "clip-dense", "gsnet", "gsnet/A")
#: the run of the doc's plugin commands is shortened: the in-tree test trains the full tiny
#: recipe and checks its quality; here it is enough that the plugin trains and evaluates
PLUGIN_ITERS = "20"


def ovbench(site: Path, home: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The venv's `ovbench` executable with the plugins installed in `site` on the path."""
    return subprocess.run(
        [OVBENCH, *args], capture_output=True, text=True, env=cli_env(home, PYTHONPATH=str(site)), cwd=cwd,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def listed(stdout: str) -> dict[str, str]:
    """method -> its row of the `ovbench methods` table."""
    return {line.split("│")[1].strip(): line for line in stdout.splitlines() if line.startswith("│") and line.split("│")[1].strip()}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """(site, home, cwd) after the doc's plugin commands: the pixel-probe plugin installed,
    `ovbench methods`, `run` and `table` run; the outputs by command."""
    parent = tmp_path_factory.mktemp("plugin")
    site, home, cwd = parent / "site", tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("elsewhere")
    write_pixel_probe_plugin(parent)
    outputs = {}
    for line in commands(snippet("plugin-commands")):
        args = shlex.split(line)
        if args[:2] == ["pip", "install"]:
            assert args[2:] == [f"./{PLUGIN_DIR}"], line
            pip("install", *args[2:], "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), "-q", cwd=parent)
            continue
        assert args[0] == "ovbench", line
        if args[1] == "run":
            args += ["--iters", PLUGIN_ITERS]
        proc = ovbench(site, home, cwd, *args[1:])
        assert proc.returncode == 0, (line, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr
        outputs[args[1]] = proc
    assert set(outputs) == {"methods", "run", "table"}, outputs
    return site, home, cwd, outputs


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """(site, home, cwd) with every broken plugin of plugin_build.BROKEN_PLUGINS installed."""
    parent = tmp_path_factory.mktemp("broken")
    site = install_broken_plugins(parent, parent / "site")
    return site, tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("elsewhere")


def test_the_plugin_is_listed_next_to_the_builtins(plugin):
    _, _, _, outputs = plugin
    rows = listed(outputs["methods"].stdout)
    assert {"pixel-probe", *BUILTINS} <= set(rows), sorted(rows)
    assert "Example trainable method" in rows["pixel-probe"] and "broken" not in outputs["methods"].stdout


def test_the_plugin_trains_evaluates_and_is_in_the_table(plugin):
    site, home, _, outputs = plugin
    records = [json.loads(line) for line in (home / "results.jsonl").read_text().splitlines()]
    assert [r["eval_set"] for r in records] == ["toyland-urban", "toyland-flood", "toyland-objects"]
    assert {(r["method"], r["protocol"], r["iterations"], r["extra"]["scale"]) for r in records} == {
        ("pixel-probe", "scratch", int(PLUGIN_ITERS), "tiny")
    }
    run_dirs = list((home / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "log.jsonl").read_text().count('"loss"') >= 1
    rows = [line for line in outputs["table"].stdout.splitlines() if line.startswith("pixel-probe")]
    assert len(rows) == 1 and "scratch" in rows[0], outputs["table"].stdout
    # the model that ran is the plugin's, not an in-tree module
    assert not (Path(__file__).resolve().parents[1] / "adapters" / "pixel_probe.py").exists()


def test_broken_plugins_are_one_line_each_in_the_listing(broken):
    site, home, cwd = broken
    proc = ovbench(site, home, cwd, "methods")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = listed(proc.stdout)
    assert set(BUILTINS) <= set(rows) and {"extra-class", "no-class-axis"} <= set(rows), sorted(rows)
    lines = proc.stdout.splitlines()
    for method, reason in (("broken-import", "No module named 'ovbench_plugin_dependency_that_is_not_installed'"),
                           ("lacks-class", "has no attribute 'NoSuchSegmenter'")):
        assert "broken" in rows[method], rows[method]
        mentions = [line for line in lines if f"broken method {method}:" in line]
        assert len(mentions) == 1, proc.stdout
        assert entry_point(method) in mentions[0] and reason in mentions[0], mentions[0]


@pytest.mark.parametrize("method", ["broken-import", "lacks-class"])
def test_running_a_broken_plugin_is_one_error_line(broken, method):
    site, home, cwd = broken
    proc = ovbench(site, home, cwd, "run", "--method", method, "--protocol", "scratch")
    assert_one_error_line(proc, f"'{method}'", entry_point(method), "failed to load")


WRONG_SHAPES = {
    # method -> (what check-adapter's predict-shape row says, what eval's error line says)
    "extra-class": ("(2, 2, 64, 64)", "predict returned scores of shape (8, 6, 128, 128), expected (B,T,H,W) = (8, 5, 128, 128)"),
    "no-class-axis": ("(N,T,h,w)", "must return (N,T,h,w) logits with N=8, got (8, 64, 64) (predict must return (B,T,H,W) = (8, 5, 128, 128))"),
}


@pytest.mark.parametrize("method", sorted(WRONG_SHAPES))
def test_a_wrong_shape_fails_check_adapter_and_eval_in_one_line(broken, method):
    site, home, cwd = broken
    row_fragment, eval_fragment = WRONG_SHAPES[method]
    check = ovbench(site, home, cwd, "check-adapter", method)
    assert check.returncode == 1 and "Traceback" not in check.stderr, (check.stdout, check.stderr)
    shape_rows = [line for line in check.stdout.splitlines() if line.startswith("│ predict shape")]
    assert len(shape_rows) == 1 and "fail" in shape_rows[0] and row_fragment in shape_rows[0], check.stdout
    assert "FAILED" in check.stdout and "predict shape" in check.stdout.splitlines()[-1], check.stdout

    proc = ovbench(site, home, cwd, "eval", "--method", method, "--quiet")
    assert_one_error_line(proc, f"error: {method}: ", eval_fragment)
    assert not (home / "results.jsonl").exists()
