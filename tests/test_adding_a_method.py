"""The in-tree route of docs/adding-a-method.md: the example method (docs/example) dropped into
a copy of the repository at the three places a method lives - nothing else edited - is a
method of the installed package: listed, trained on toyland, in the results table.

The copy is built into a wheel and installed with --target (tests/wheel_build.py); it runs as
`python -m ovbench` with PYTHONPATH=SITE from a folder outside the repository.
"""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from doc_snippets import commands, snippet
from wheel_build import Installed, imported_from, installed, ovbench_module

EXAMPLE_FILES = (
    "adapters/pixel_probe.py",
    "configs/methods/pixel-probe.yaml",
    "methods/pixel_probe/__init__.py",
    "methods/pixel_probe/config.py",
    "methods/pixel_probe/model.py",
)
BUILTINS = ("catseg", "clip-dense", "gsnet", "gsnet/A")


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Installed:
    return installed("example", tmp_path_factory)


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """A working directory outside the repository, and an OVBENCH_HOME of its own."""
    return tmp_path_factory.mktemp("elsewhere"), tmp_path_factory.mktemp("home")


def uniform_chance_miou(split: str) -> float:
    """mIoU of labelling every pixel with a class drawn uniformly from the split's vocabulary."""
    from ovbench.data.toyland import ToylandDataset
    from ovbench.eval.metrics import ConfusionMatrix

    dataset = ToylandDataset(split)
    generator = torch.Generator().manual_seed(0)
    confusion = ConfusionMatrix(len(dataset.class_names), dataset.ignore_index)
    for i in range(len(dataset)):
        mask = torch.from_numpy(dataset[i]["mask"])[None]
        confusion.update(torch.randint(0, len(dataset.vocabulary), mask.shape, generator=generator), mask)
    return confusion.compute(dataset.class_names).mIoU


def test_the_copy_commands_add_the_three_places_and_nothing_else(example):
    assert example.added == EXAMPLE_FILES


def test_the_installed_copy_is_what_runs(example, elsewhere):
    cwd, home = elsewhere
    files = imported_from(example.site, home, cwd, "ovbench", "ovbench.configs", "ovbench_adapters.pixel_probe",
                          "ovbench_methods.pixel_probe.model")
    for module, path in files.items():
        assert path.is_relative_to(example.site), (module, path)


def test_the_doc_commands_list_train_and_tabulate_pixel_probe(example, elsewhere):
    cwd, home = elsewhere
    lines = commands(snippet("in-tree-commands"))
    assert [line.split()[:2] for line in lines] == [["ovbench", "methods"], ["ovbench", "run"], ["ovbench", "table"]]
    outputs = []
    for line in lines:
        args = shlex.split(line)[1:]
        proc = ovbench_module(example.site, home, cwd, *args, timeout=240)
        assert proc.returncode == 0, (line, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr
        outputs.append(proc.stdout)
    listing, _, table = outputs

    rows = {line.split("│")[1].strip(): line for line in listing.splitlines() if line.startswith("│")}
    assert {"pixel-probe", *BUILTINS} <= set(rows), sorted(rows)
    assert "Example trainable method" in rows["pixel-probe"] and "broken" not in listing

    records = [json.loads(line) for line in (home / "results.jsonl").read_text().splitlines()]
    assert [r["eval_set"] for r in records] == ["toyland-urban", "toyland-flood", "toyland-objects"]
    assert {(r["method"], r["protocol"], r["iterations"], r["extra"]["scale"]) for r in records} == {("pixel-probe", "scratch", 100, "tiny")}
    miou = {r["eval_set"]: r["metrics"]["mIoU"] for r in records}
    chance = {split: uniform_chance_miou(split) for split in miou}
    print({split: (round(miou[split], 1), round(chance[split], 1)) for split in miou})
    # flood queries the training names: far above chance; on average above chance too
    assert miou["toyland-flood"] > 2 * chance["toyland-flood"], (miou, chance)
    assert sum(miou.values()) > sum(chance.values()), (miou, chance)

    table_rows = [line for line in table.splitlines() if line.startswith("pixel-probe")]
    assert len(table_rows) == 1 and "scratch" in table_rows[0], table
    assert f"{miou['toyland-flood']:.1f}" in table_rows[0], table


def test_a_bad_setting_is_one_error_line(example, elsewhere):
    cwd, home = elsewhere
    proc = ovbench_module(example.site, home, cwd, "check-adapter", "pixel-probe", "model.width=30")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0] == "error: model: width 30 is not divisible by groups 8 (norm: group)", lines
