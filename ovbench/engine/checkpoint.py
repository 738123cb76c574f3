"""Training checkpoints: everything needed to continue a run bit for bit, written atomically."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovbench.errors import CheckpointError
from ovbench.fileio import atomic_write_bytes
from ovbench.interface import load_torch_file

FORMAT = "ovbench-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^iter_(\d{7})\.pt$")


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}.pt"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states, in containers that load with weights_only=True."""
    py_version, py_internal, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encode_checkpoint(payload: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes: a snapshot of `payload` as it is now."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, payload: dict[str, Any] | bytes) -> None:
    """Serialise to memory first, then temp file + rename: a kill at any moment leaves either
    the previous file or the complete new one."""
    atomic_write_bytes(path, payload if isinstance(payload, bytes) else encode_checkpoint(payload))


def load_checkpoint(path: Path, trusted: bool = False) -> dict[str, Any]:
    payload = load_torch_file(path, trusted=trusted)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ovbench training checkpoint")
    return payload


def checkpoint_origin(path: str | Path) -> dict[str, Any] | None:
    """What run an ovbench training checkpoint came from ({protocol, train_set, iterations,
    run_id, method, benchmark, scale}), or None for any other file.

    Memory-maps the file (torch's zip format) and reads only the small metadata entries, so
    it costs little even for a large checkpoint; anything unreadable counts as "not ours"
    and is left to the real load to report.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy/official formats, corrupt files: not a training checkpoint
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return None
    config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    return {
        "run_id": payload.get("run_id"),
        "method": payload.get("method"),
        "protocol": config.get("protocol"),
        "benchmark": config.get("benchmark"),
        "train_set": config.get("train_set"),
        "iterations": payload.get("iteration"),
        "scale": config.get("scale"),
    }


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(folder: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: Path, keep: int, protect: set[int] = frozenset()) -> None:
    """Keep the newest `keep` periodic checkpoints (and any in `protect`)."""
    if keep <= 0:
        return
    found = list_checkpoints(folder)
    for iteration, path in found[:-keep]:
        if iteration not in protect:
            path.unlink(missing_ok=True)
