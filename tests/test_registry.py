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
