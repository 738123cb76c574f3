"""Third-party packages that register adapters through the `ovbench.adapters` entry-point
group, written on the fly for tests/test_plugins.py: the pixel-probe example as a plugin
(built from docs/example and the snippets of docs/adding-a-method.md) and broken plugins."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from doc_snippets import snippet
from wheel_build import EXAMPLE, install_target

PLUGIN_DIR = "ovbench-pixel-probe-plugin"
PLUGIN_PACKAGE = "pixel_probe_plugin"


def write_pixel_probe_plugin(parent: Path) -> Path:
    """parent/ovbench-pixel-probe-plugin: the example's model, config, adapter and YAML as the
    package `pixel_probe_plugin`, with the pyproject.toml and adapter ending of the doc."""
    root = parent / PLUGIN_DIR
    package = root / PLUGIN_PACKAGE
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text(snippet("plugin-pyproject").text)
    (package / "__init__.py").write_text('"""pixel-probe, the ovbench example method, as a plugin."""\n')

    def moved(text: str) -> str:
        return text.replace("ovbench_methods.pixel_probe", PLUGIN_PACKAGE)

    for name in ("config.py", "model.py"):
        (package / name).write_text(moved((EXAMPLE / "methods" / "pixel_probe" / name).read_text()))
    adapter = moved((EXAMPLE / "adapters" / "pixel_probe.py").read_text())
    (package / "adapter.py").write_text(adapter + "\n\n" + snippet("plugin-adapter").text)
    shutil.copy2(EXAMPLE / "configs" / "methods" / "pixel-probe.yaml", package / "pixel-probe.yaml")
    assert "ovbench_methods.pixel_probe" not in "".join(p.read_text() for p in package.glob("*.py"))
    return root


WRONG_SHAPE_ADAPTER = '''
"""Adapters that load and build but return logits of the wrong shape."""

import torch
from torch import nn

from ovbench.interface import OpenVocabSegmenter

CONFIG = {"description": "returns logits of the wrong shape", "inference": {"mode": "whole", "size": [64, 64]},
          "eval": {"batch_size": 8}}


class _Probe(OpenVocabSegmenter):
    default_method_config = CONFIG

    def __init__(self, inference=None):
        super().__init__(inference)
        self.conv = nn.Conv2d(3, 1, 1)

    def score(self, images):
        return self.conv(images / 255.0)  # (N,1,h,w)


class ExtraClassSegmenter(_Probe):
    """One channel more than the vocabulary has classes (a forgotten background channel)."""

    method_name = "extra-class"

    def forward_logits(self, images, vocabulary):
        return self.score(images).expand(-1, len(vocabulary) + 1, -1, -1)


class NoClassAxisSegmenter(_Probe):
    """(N,h,w): the class axis squeezed away."""

    method_name = "no-class-axis"

    def forward_logits(self, images, vocabulary):
        return self.score(images)[:, 0]
'''

#: name -> (distribution folder, package, adapter module source, entry points {method: value})
BROKEN_PLUGINS = {
    "broken-import": (
        "broken_import_plugin",
        "import ovbench_plugin_dependency_that_is_not_installed  # noqa: F401\n",
        {"broken-import": "broken_import_plugin.adapter:Segmenter"},
    ),
    "lacks-class": (
        "lacks_class_plugin",
        '"""The module imports, but the class its entry point names is not in it."""\n\nclass SomethingElse:\n    pass\n',
        {"lacks-class": "lacks_class_plugin.adapter:NoSuchSegmenter"},
    ),
    "wrong-shape": (
        "wrong_shape_plugin",
        WRONG_SHAPE_ADAPTER,
        {"extra-class": "wrong_shape_plugin.adapter:ExtraClassSegmenter",
         "no-class-axis": "wrong_shape_plugin.adapter:NoClassAxisSegmenter"},
    ),
}


def entry_point(method: str) -> str:
    """The `module:Class` value a broken plugin's method is registered with."""
    for _, _, points in BROKEN_PLUGINS.values():
        if method in points:
            return points[method]
    raise KeyError(method)


def write_broken_plugin(parent: Path, name: str) -> Path:
    package, source, points = BROKEN_PLUGINS[name]
    root = parent / f"ovbench-{name}-plugin"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "adapter.py").write_text(source)
    entries = "\n".join(f'{method} = "{value}"' for method, value in points.items())
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "ovbench-{name}-plugin"
        version = "0.1.0"

        [project.entry-points."ovbench.adapters"]
        """) + entries + f'\n\n[tool.setuptools]\npackages = ["{package}"]\n')
    return root


def install_broken_plugins(parent: Path, site: Path) -> Path:
    """Every broken plugin, each its own distribution, installed into `site` (one pip call)."""
    roots = [write_broken_plugin(parent, name) for name in BROKEN_PLUGINS]
    install_target(roots[0], site, *map(str, roots[1:]), "--no-build-isolation")
    return site
