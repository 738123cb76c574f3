"""Shared fixtures: every test gets its own OVBENCH_HOME and no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("ovbench_home")
    monkeypatch.setenv("OVBENCH_HOME", str(home))
    monkeypatch.delenv("OVBENCH_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home
