"""Names resolve to adapters, datasets and benchmarks; plugins register by entry point."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from ovbench.cli import main
from ovbench.errors import ConfigError, RegistryError
from ovbench.registry import (
    build_segmenter,
    dataset_names,
    load_benchmark,
    method_names,
    resolve_method,
)

PLUGIN_MODULE = '''
import torch
from ovbench.interface import OpenVocabSegmenter


class ConstantSegmenter(OpenVocabSegmenter):
    """A third-party method: predicts class 0 everywhere."""

    method_name = "constant"
    default_method_config = {"description": "always class 0", "inference": {"mode": "whole", "size": [32, 32]}}

    def forward_logits(self, images, vocabulary):
        logits = torch.zeros(images.shape[0], len(vocabulary), images.shape[2], images.shape[3])
        logits[:, 0] = 1.0
        return logits
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed third-party distribution that registers `constant` through the entry point group."""
    (tmp_path / "ovbench_constant_plugin.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "ovbench_constant_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ovbench-constant-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [ovbench.adapters]
            constant = ovbench_constant_plugin:ConstantSegmenter
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("ovbench_constant_plugin", None)


def test_builtins_are_listed():
    assert "clip-dense" in method_names()
    assert {"toyland-train", "toyland-urban", "toyland-flood", "toyland-objects"} <= set(dataset_names())
    assert load_benchmark("toyland").eval_sets == ["toyland-urban", "toyland-flood", "toyland-objects"]


def test_plugin_method_registers_without_editing_ovbench(plugin, capsys):
    assert "constant" in method_names()
    segmenter = build_segmenter(resolve_method("constant"))
    scores = segmenter.predict(torch.zeros(2, 3, 20, 24), _vocab(["a", "b"]))
    assert scores.shape == (2, 2, 20, 24) and bool((scores.argmax(1) == 0).all())
    assert main(["methods"]) == 0
    assert "constant" in capsys.readouterr().out
    assert main(["eval", "--method", "constant", "--quiet"]) == 0


def _vocab(names):
    from ovbench.data.vocabulary import Vocabulary

    return Vocabulary(names)


def test_scale_overlay_and_overrides():
    tiny = resolve_method("clip-dense", scale="tiny")
    assert tiny.model_config.clip_weights is None and tiny.model_config.model_config is not None
    full = resolve_method("clip-dense")
    assert full.model_config.model_config is None
    over = resolve_method("clip-dense", scale="tiny", overrides={"eval": {"batch_size": 3}})
    assert over.config.eval.batch_size == 3


def test_bad_method_settings():
    with pytest.raises(ConfigError, match="no 'huge' scale"):
        resolve_method("clip-dense", scale="huge")
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.archh' \(did you mean 'model\.arch'\?\)"):
        resolve_method("clip-dense", overrides={"model": {"archh": "x"}})
    with pytest.raises(RegistryError, match="unknown method"):
        resolve_method("no-such-method")


# --------------------------------------------------------------------------- shared lookups

OVBENCH_SOURCE = importlib.import_module("ovbench").__path__[0]


def _unknown_cases():
    from ovbench.data.catalog import load_template_set, load_vocabulary_file
    from ovbench.data.toyland import ToylandDataset
    from ovbench.registry import build_dataset, find_experiment, load_protocol

    return [
        (lambda: resolve_method("clip-dens"), "method", "clip-dens", "clip-dense"),
        (lambda: load_benchmark("toylnd"), "benchmark", "toylnd", "toyland"),
        (lambda: load_protocol("scrach"), "protocol", "scrach", "scratch"),
        (lambda: build_dataset("toyland-urbn"), "dataset", "toyland-urbn", "toyland-urban"),
        (lambda: ToylandDataset("toyland-urbn"), "toyland split", "toyland-urbn", "toyland-urban"),
        (lambda: find_experiment("tabel2"), "experiment", "tabel2", "table2"),
        (lambda: load_vocabulary_file("potsdm"), "vocabulary", "potsdm", "potsdam"),
        (lambda: load_template_set("remote-sensng"), "template set", "remote-sensng", "remote-sensing"),
    ]


def test_every_unknown_name_gets_the_same_did_you_mean_line():
    from ovbench.errors import unknown_name

    for call, kind, name, close in _unknown_cases():
        with pytest.raises(RegistryError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"unknown {kind} '{name}' (did you mean '{close}'?); available: "), message
        assert "\n" not in message
    assert unknown_name("benchmark", "zzz", ["b", "a"]) == "unknown benchmark 'zzz'; available: a, b"
    assert unknown_name("benchmark", "x", []) == "unknown benchmark 'x'; available: none"


def test_name_suggestions_and_first_lines_have_one_implementation():
    """ovbench/ asks errors.py for "did you mean" and for an exception's first line (methods/,
    which cannot import ovbench, keeps its own)."""
    from pathlib import Path

    for path in sorted(Path(OVBENCH_SOURCE).rglob("*.py")):
        if path.name == "errors.py":
            continue
        text = path.read_text(encoding="utf-8")
        for copy in ("get_close_matches", "splitlines()[0]", 'split("\\n")[0]', "str(exc) or type(exc).__name__"):
            assert copy not in text, f"{path}: hand-written copy of {copy!r}"


def test_registry_and_catalog_read_one_config_tree(tmp_path, monkeypatch):
    """Benchmarks, protocols, experiments and dataset specs are all found through
    ovbench.config's lookup, so OVBENCH_CONFIGS moves them together."""
    from ovbench.data.catalog import dataset_names as catalog_names
    from ovbench.registry import benchmark_names, experiment_names, load_protocol, protocol_names

    for folder, name, text in [
        ("benchmarks", "mine", "eval_sets: [toyland-urban]\n"),
        ("protocols", "distill", "train: true\n"),
        ("experiments", "small", "jobs: [{method: clip-dense, protocol: zeroshot}]\n"),
        ("datasets", "field", "image_dir: img\nmask_dir: ann\nvocabulary: [road]\n"),
    ]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.yaml").write_text(text)
    monkeypatch.setenv("OVBENCH_CONFIGS", str(tmp_path))
    assert benchmark_names() == ["mine"] and load_benchmark("mine").name == "mine"
    assert protocol_names() == ["distill"] and load_protocol("distill").train
    assert experiment_names() == ["small"] and catalog_names() == ["field"]
    with pytest.raises(RegistryError, match=r"unknown benchmark 'toyland'; available: mine$"):
        load_benchmark("toyland")


def test_benchmark_from_a_yaml_path(tmp_path):
    path = tmp_path / "my-bench.yaml"
    path.write_text("train_set: toyland-train\neval_sets: [toyland-urban, toyland-flood]\nscale: tiny\n")
    spec = load_benchmark(str(path))
    assert (spec.name, spec.eval_sets, spec.train_set, spec.scale) == (
        "my-bench", ["toyland-urban", "toyland-flood"], "toyland-train", "tiny")
    named = tmp_path / "other.yml"
    named.write_text("name: field-trial\neval_sets: [toyland-objects]\n")
    assert load_benchmark(str(named)).name == "field-trial"
    with pytest.raises(ConfigError, match="benchmark file not found: .*absent.yaml"):
        load_benchmark(str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("evl_sets: [toyland-urban]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key .*did you mean .*eval_sets"):
        load_benchmark(str(bad))


def test_one_default_benchmark():
    from ovbench import registry, runner
    from ovbench.engine.sweep import Job

    assert registry.DEFAULT_BENCHMARK == "toyland" and registry.DEFAULT_BENCHMARK in registry.benchmark_names()
    assert runner.DEFAULT_BENCHMARK is registry.DEFAULT_BENCHMARK
    assert runner.choose_benchmark(None, None) == registry.DEFAULT_BENCHMARK
    assert Job("m", "scratch").benchmark == registry.DEFAULT_BENCHMARK
