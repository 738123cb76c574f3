"""`ovbench runs` (run states from the lock, the checkpoints and the store) and `ovbench plot
loss` (training curves from log.jsonl), on run directories written by hand in the layout
`ovbench run` leaves."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from cli_process import assert_one_error_line, ovbench
from ovbench.results.store import ResultRecord, ResultStore

SETS = ["toyland-urban", "toyland-flood", "toyland-objects"]


def make_run(home: Path, run_id: str, *, trained: int, target: int | None = 10, evaluated: int = 0,
             method: str = "catseg", log: list[dict] | None = None) -> Path:
    """A run directory as `ovbench run` writes it: ``target`` None is a run that does not train."""
    run_dir = home / "runs" / run_id
    (run_dir / "checkpoints").mkdir(parents=True)
    protocol = "scratch" if target is not None else "zeroshot"
    request = {"method": method, "protocol": protocol, "benchmark": None, "run_id": run_id, "store_path": None,
               "eval_sets": []}
    config = {"method": method, "train": {"iters": target or 0}, "protocol": protocol, "benchmark": "toyland",
              "train_set": "toyland-train" if target is not None else None, "seed": 0}
    (run_dir / "request.yaml").write_text(yaml.safe_dump(request))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if trained:
        (run_dir / "checkpoints" / f"iter_{trained:07d}.pt").write_bytes(b"")
    if log is not None:
        (run_dir / "log.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in log))
    ResultStore(home / "results.jsonl").append([
        ResultRecord(run_id=run_id, method=method, protocol=protocol, benchmark="toyland", eval_set=name,
                     metrics={"mIoU": 10.0}, seed=0, config_hash="h", code_version="0.1.0", host="test",
                     timestamp="2026-01-01T00:00:00Z")
        for name in SETS[:evaluated]
    ])
    return run_dir


def listed(home: Path, *args: str) -> dict[str, dict[str, str]]:
    done = ovbench(home, "runs", "--format", "csv", *args)
    assert done.returncode == 0, done.stderr
    return {row["run_id"]: row for row in csv.DictReader(io.StringIO(done.stdout))}


def test_runs_tell_finished_interrupted_and_running(isolated_home: Path) -> None:
    make_run(isolated_home, "done", trained=10, evaluated=3)
    make_run(isolated_home, "mid-training", trained=5)
    make_run(isolated_home, "mid-eval", trained=10, evaluated=2)
    make_run(isolated_home, "zeroshot", trained=0, target=None, evaluated=3)
    busy = make_run(isolated_home, "busy", trained=5)
    (isolated_home / "runs" / "not-a-run").mkdir()  # e.g. a folder a failed start left: no request

    # another process holds the run lock, as a training `ovbench run` does
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ovbench.engine.lock import RunLock; "
         f"RunLock({str(busy)!r}, 'busy').acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        lock_before = (busy / ".lock").read_bytes()
        rows = listed(isolated_home)
        assert (busy / ".lock").read_bytes() == lock_before  # listing never writes the lock
        plain = ovbench(isolated_home, "runs")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(rows) == ["busy", "done", "mid-eval", "mid-training", "zeroshot"]
    states = {run_id: row["state"] for run_id, row in rows.items()}
    assert states == {"done": "finished", "mid-training": "interrupted", "mid-eval": "interrupted",
                      "zeroshot": "finished", "busy": "running"}
    assert (rows["mid-training"]["iterations"], rows["mid-training"]["target_iterations"]) == ("5", "10")
    assert (rows["mid-eval"]["evaluated"], rows["mid-eval"]["eval_sets"]) == ("2", "3")
    assert rows["zeroshot"]["target_iterations"] == ""
    assert rows["done"]["path"] == str(isolated_home / "runs" / "done")
    assert rows["done"]["method"] == "catseg" and rows["done"]["protocol"] == "scratch"
    assert rows["done"]["train_set"] == "toyland-train"

    assert plain.returncode == 0, plain.stderr
    assert "running" in plain.stdout and "interrupted" in plain.stdout and "10/10" in plain.stdout
    assert f"busy: running in pid {holder.pid} on host" in plain.stdout

    # the lock dies with its process: the run is then interrupted, and filters pick states
    assert listed(isolated_home)["busy"]["state"] == "interrupted"
    assert sorted(listed(isolated_home, "--state", "finished")) == ["done", "zeroshot"]


def test_runs_without_runs_and_bad_state(isolated_home: Path) -> None:
    done = ovbench(isolated_home, "runs")
    assert done.returncode == 0 and "no runs in" in done.stderr and done.stdout == ""
    assert_one_error_line(ovbench(isolated_home, "runs", "--state", "paused"), "unknown run state 'paused'")


def loss_log() -> list[dict]:
    entries = []
    for iteration in (1, 10, 20, 30, 40):
        ce, dice = 2.0 / iteration ** 0.5, 0.5 / iteration ** 0.3
        lr = 1e-3 * (1 - iteration / 50)
        entries.append({"iteration": iteration, "loss": ce + dice, "losses": {"loss_ce": ce, "loss_dice": dice},
                        "lr": [lr, lr, lr * 0.01], "grad_norm": 1.0, "it_per_s": 2.0, "time": time.time()})
    return entries


def test_plot_loss_draws_every_term_and_the_lr(tmp_path: Path, isolated_home: Path) -> None:
    run_dir = make_run(isolated_home, "curves", trained=40, target=50, log=loss_log())
    with (run_dir / "log.jsonl").open("a") as handle:
        handle.write('{"iteration": 50, "loss": 0.')  # a line torn by a kill is skipped
    done = ovbench(isolated_home, "plot", "loss", "curves", "--out", str(tmp_path / "loss"))
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "loss.png") as image:
        assert image.size == (1080, 840)  # 7.2 x 5.6 inches at 150 dpi
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 20
    top, bottom = pixels[: pixels.shape[0] // 2], pixels[pixels.shape[0] // 2 :]
    assert not np.array_equal(top, bottom)
    svg = (tmp_path / "loss.svg").read_text()
    assert ElementTree.fromstring(svg).tag.endswith("svg")
    for text in ("loss_ce", "loss_dice", "total loss", "groups 0, 1", "group 2", "curves: catseg (scratch)"):
        assert text in svg, text

    # a run directory works as well as an id; the default output is loss-RUN_ID in the cwd
    by_path = ovbench(isolated_home, "plot", "loss", str(run_dir), cwd=tmp_path)
    assert by_path.returncode == 0, by_path.stderr
    assert (tmp_path / "loss-curves.png").is_file() and (tmp_path / "loss-curves.svg").is_file()


def test_plot_loss_refusals(tmp_path: Path, isolated_home: Path) -> None:
    assert_one_error_line(ovbench(isolated_home, "plot", "loss", "nope", "--out", str(tmp_path / "x")), "no run 'nope'")
    make_run(isolated_home, "fresh", trained=0)
    assert_one_error_line(ovbench(isolated_home, "plot", "loss", "fresh", "--out", str(tmp_path / "x")),
                          "run fresh has no logged iteration yet")
    assert not list(tmp_path.glob("x.*"))
