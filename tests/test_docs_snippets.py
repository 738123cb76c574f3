"""Every code block of docs/adding-a-method.md runs (tests/doc_snippets.py reads them).

- a block marked `<!-- file: PATH -->` is PATH verbatim (the example's config, adapter, YAML);
- unmarked ```python blocks run in order, in one namespace, against an ovbench installed with
  the example method copied in (the in-tree route, tests/wheel_build.py);
- ```yaml blocks parse, and the method YAMLs among them resolve through the registry;
- ```toml blocks parse;
- unmarked ```bash blocks are `ovbench ...` lines, run through that install's executable;
- a block marked `<!-- snippet: NAME -->` is run by the test that reads it (`snippet("NAME")`).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from doc_snippets import ADDING_A_METHOD, REPO, blocks, commands
from wheel_build import EXAMPLE, Installed, installed, site_env

LANGUAGES = {"python", "yaml", "toml", "bash"}

#: runs the python blocks (a JSON list on stdin) in one namespace, then resolves the method
#: YAML files given as arguments; prints one JSON line of what the YAMLs resolved to
RUNNER = r'''
import json, sys
from pathlib import Path

blocks = json.load(sys.stdin)
namespace = {"__name__": "__doc_snippets__"}
for block in blocks:
    exec(compile(block["text"], block["where"], "exec"), namespace)

from ovbench.registry import resolve_method
resolved = {}
for path in sys.argv[1:]:
    method = resolve_method(path)
    resolved[Path(path).name] = {"adapter": method.config.adapter, "model": vars(method.model_config),
                                 "inference": method.config.inference.mode}
print(json.dumps(resolved, default=list))
'''


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Installed:
    return installed("example", tmp_path_factory)


def test_every_block_is_of_a_kind_that_is_run():
    found = blocks()
    assert found, ADDING_A_METHOD
    assert {block.lang for block in found} <= LANGUAGES, [(b.where, b.lang) for b in found if b.lang not in LANGUAGES]


def test_file_blocks_are_the_files_verbatim():
    marked = [block for block in blocks() if block.file]
    assert {block.file for block in marked} >= {
        "docs/example/methods/pixel_probe/config.py", "docs/example/adapters/pixel_probe.py",
        "docs/example/configs/methods/pixel-probe.yaml",
    }
    for block in marked:
        assert block.text == (REPO / block.file).read_text(), f"{block.where} differs from {block.file}"


def test_the_file_table_counts_the_example_files():
    rows = re.findall(r"^\| `(docs/example/[^`]+)` \| (\d+) \|", ADDING_A_METHOD.read_text(), flags=re.M)
    files = sorted(p.relative_to(REPO).as_posix() for p in EXAMPLE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert sorted(path for path, _ in rows) == files
    for path, lines in rows:
        assert len((REPO / path).read_text().splitlines()) == int(lines), path


def test_named_blocks_are_run_by_a_test():
    sources = {p.name: p.read_text() for p in (REPO / "tests").glob("*.py") if p.name not in ("doc_snippets.py", Path(__file__).name)}
    for block in blocks():
        if block.name:
            users = [name for name, text in sources.items() if f'snippet("{block.name}")' in text]
            assert users, f"{block.where}: no test reads the block {block.name!r}"


def test_toml_blocks_parse():
    for block in (b for b in blocks() if b.lang == "toml"):
        data = tomllib.loads(block.text)
        points = data["project"]["entry-points"]["ovbench.adapters"]
        assert points == {"pixel-probe": "pixel_probe_plugin.adapter:PixelProbeSegmenter"}, block.where


def test_python_blocks_run_and_yaml_blocks_resolve(example, tmp_path):
    python = [{"text": b.text, "where": b.where} for b in blocks() if b.lang == "python" and not (b.file or b.name)]
    assert len(python) >= 5
    yaml_paths = []
    for block in (b for b in blocks() if b.lang == "yaml"):
        data = yaml.safe_load(block.text)
        assert isinstance(data, dict) and ("adapter" in data or "inherit" in data), block.where
        stem = "pixel-probe" if block.file else "pixel-probe-wide"
        path = tmp_path / f"{stem}.yaml"
        assert not path.exists(), block.where
        path.write_text(block.text)
        yaml_paths.append(str(path))
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *yaml_paths],
        input=json.dumps(python), capture_output=True, text=True, env=site_env(example.site, tmp_path / "home"),
        cwd=tmp_path, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    *printed, last = proc.stdout.strip().splitlines()
    assert printed == ["width 30 is not divisible by groups 8 (norm: group)"], printed  # what the doc's comment says
    resolved = json.loads(last)
    assert resolved["pixel-probe.yaml"]["adapter"] == "pixel-probe"
    assert resolved["pixel-probe.yaml"]["model"]["width"] == 64  # the dataclass default: the YAML states no change
    wide = resolved["pixel-probe-wide.yaml"]
    assert (wide["adapter"], wide["model"]["width"], wide["model"]["depth"], wide["inference"]) == ("pixel-probe", 128, 6, "sliding")


def test_bash_blocks_run_through_the_installed_executable(example, tmp_path):
    executable = example.site / "bin" / "ovbench"
    assert executable.is_file(), executable
    lines = [line for b in blocks() if b.lang == "bash" and not b.name for line in commands(b)]
    assert lines and all(line.startswith("ovbench ") for line in lines), lines
    for line in lines:
        proc = subprocess.run(
            [str(executable), *shlex.split(line)[1:]], capture_output=True, text=True,
            env=site_env(example.site, tmp_path / "home"), cwd=tmp_path, timeout=240, stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, (line, proc.stdout[-3000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr
        if line.startswith("ovbench check-adapter"):
            assert "OK:" in proc.stdout.splitlines()[-1], proc.stdout
