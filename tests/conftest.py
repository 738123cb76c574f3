"""Shared fixtures: every test gets its own OVBENCH_HOME and no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist (`-n 2`, the default in pyproject.toml) each worker, and every `ovbench`
# process a test starts, gets one thread: two workers with a thread per core each would
# oversubscribe the cores, which is several times slower than either alone (README, Install).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("ovbench_home")
    monkeypatch.setenv("OVBENCH_HOME", str(home))
    monkeypatch.delenv("OVBENCH_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home
