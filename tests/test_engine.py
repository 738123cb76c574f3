"""The training engine end to end: a small trainable method from the tests on toyland."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ovbench.cli import main
from ovbench.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
METHOD = str(TESTS / "tiny-trainable.yaml")


def cli_env(home: Path, **extra) -> dict[str, str]:
    env = dict(os.environ, OVBENCH_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(TESTS))
    env.update(extra)
    return env


def run_subprocess(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovbench", *args], capture_output=True, text=True, env=cli_env(home), cwd=REPO, **kw)


def records(home: Path) -> list[dict]:
    path = home / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    iteration, path = latest_checkpoint(run_dir / "checkpoints")
    return load_checkpoint(path)["model"]


def test_train_then_evaluate(isolated_home, capsys):
    code = main(["run", "--method", METHOD, "--run-id", "first", "-q", "train.iters=40"])
    err = capsys.readouterr().err
    assert code == 0, err
    run_dir = isolated_home / "runs" / "first"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["iters"] == 40
    assert yaml.safe_load((run_dir / "request.yaml").read_text())["method"] == METHOD
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert log[0]["iteration"] == 1 and log[-1]["iteration"] == 40
    assert all({"loss", "lr", "grad_norm", "it_per_s"} <= set(entry) for entry in log)
    early, late = log[0]["loss"], sum(e["loss"] for e in log[-3:]) / 3
    assert late < 0.8 * early, (early, late)
    # cosine schedule: the logged rate falls from the base rate towards zero
    assert log[0]["lr"][0] == pytest.approx(0.01) and log[-1]["lr"][0] < 0.001
    assert [it for it, _ in list_checkpoints(run_dir / "checkpoints")] == [20, 30, 40]
    rows = records(isolated_home)
    assert [r["eval_set"] for r in rows] == ["toyland-urban", "toyland-flood", "toyland-objects"]
    assert all(r["protocol"] == "scratch" and r["train_set"] == "toyland-train" and r["iterations"] == 40 for r in rows)
    assert all(r["train_size"] == 256 and r["seed"] == 0 and r["method"] == "tiny-trainable" for r in rows)


def _kill_after_first_checkpoint(home: Path, run_id: str, *args: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ovbench", "run", "--method", METHOD, "--run-id", run_id, "-q", *args],
        env=cli_env(home), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    folder = home / "runs" / run_id / "checkpoints"
    deadline = time.monotonic() + 120
    while not list_checkpoints(folder):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    home = tmp_path / "home"
    settings = ("train.iters=30", "train.checkpoint_every=5", "train.keep_checkpoints=10", "--seed", "7")
    straight = run_subprocess(home, "run", "--method", METHOD, "--run-id", "straight", "-q", *settings)
    assert straight.returncode == 0, straight.stderr

    _kill_after_first_checkpoint(home, "killed", *settings)
    interrupted_at, _ = latest_checkpoint(home / "runs" / "killed" / "checkpoints")
    assert interrupted_at < 30, "the run finished before it could be killed"
    resumed = run_subprocess(home, "run", "--resume", "killed", "-q")
    assert resumed.returncode == 0, resumed.stderr

    a, b = final_weights(home / "runs" / "straight"), final_weights(home / "runs" / "killed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    by_run = {}
    for r in records(home):
        by_run.setdefault(r["run_id"], {})[r["eval_set"]] = r["metrics"]
    assert by_run["straight"] == by_run["killed"]
    log = [json.loads(line)["iteration"] for line in (home / "runs" / "killed" / "log.jsonl").read_text().splitlines()]
    assert log == sorted(log) and log[-1] == 30  # lines from the lost future were dropped


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path):
    home = tmp_path / "home"
    proc = run_subprocess(
        home, "run", "--method", METHOD, "--run-id", "nan", "--benchmark", "toyland", "-q",
        "train.iters=30", "train.checkpoint_every=10", "model.nan_after=15",
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "training diverged at iteration 16: loss is nan" in lines[0]
    assert "iter_0000010.pt" in lines[0]
    (iteration, path), = list_checkpoints(home / "runs" / "nan" / "checkpoints")
    assert iteration == 10
    state = load_checkpoint(path)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert records(home) == []


def test_finetune_without_checkpoint_fails_before_training(isolated_home, capsys):
    code = main(["run", "--method", METHOD, "--protocol", "finetune", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "protocol finetune starts from tiny-trainable's COCO-Stuff checkpoint: pass --checkpoint FILE (tiny_coco.pt, published by the authors at the tests" in err
    assert not (isolated_home / "runs").exists()


def test_finetune_from_an_ovbench_checkpoint(isolated_home, capsys, tmp_path):
    assert main(["run", "--method", METHOD, "--run-id", "coco", "-q", "train.iters=10"]) == 0
    _, start = latest_checkpoint(isolated_home / "runs" / "coco" / "checkpoints")
    assert main(["run", "--method", METHOD, "--protocol", "finetune", "--checkpoint", str(start), "-q", "train.iters=10"]) == 0
    assert {r["protocol"] for r in records(isolated_home)} == {"scratch", "finetune"}
    # the published file name in a weights folder is found without --checkpoint (sweeps rely on it)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "tiny_coco.pt").write_bytes(start.read_bytes())
    assert main(["run", "--method", METHOD, "--protocol", "finetune", "--weights-dir", str(weights), "--run-id", "ft", "-q", "train.iters=5"]) == 0
    assert yaml.safe_load((isolated_home / "runs" / "ft" / "request.yaml").read_text())["checkpoint"] == str(weights / "tiny_coco.pt")


def test_training_free_method_needs_zeroshot(isolated_home, capsys):
    code = main(["run", "--method", "clip-dense", "-q"])
    assert code == 1 and "clip-dense is training-free" in capsys.readouterr().err


def test_zeroshot_protocol_only_evaluates(isolated_home, capsys):
    assert main(["run", "--method", "clip-dense", "--protocol", "zeroshot", "-q"]) == 0
    rows = records(isolated_home)
    assert len(rows) == 3 and all(r["iterations"] == 0 and r["train_set"] is None for r in rows)


def test_existing_run_id_needs_resume(isolated_home, capsys):
    assert main(["run", "--method", METHOD, "--run-id", "twice", "-q", "train.iters=5"]) == 0
    capsys.readouterr()
    assert main(["run", "--method", METHOD, "--run-id", "twice", "-q", "train.iters=5"]) == 1
    assert "continue it with --resume twice" in capsys.readouterr().err


def test_resume_of_a_finished_run_does_not_duplicate_records(isolated_home, capsys):
    assert main(["run", "--method", METHOD, "--run-id", "done", "-q", "train.iters=5"]) == 0
    assert main(["run", "--resume", "done", "-q"]) == 0
    assert len(records(isolated_home)) == 3


def test_ddp_two_processes_match_one(tmp_path):
    """2 CPU processes (gloo) at global batch 4 vs 1 process at batch 4: same data, same updates."""
    home = tmp_path / "home"
    settings = ["train.iters=8", "train.checkpoint_every=8", "--seed", "3", "-q"]
    env = cli_env(home, OMP_NUM_THREADS="1")
    single = subprocess.run(
        [sys.executable, "-m", "ovbench", "run", "--method", METHOD, "--run-id", "single", *settings],
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ovbench", "run", "--method", METHOD, "--run-id", "ddp", *settings],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert double.returncode == 0, double.stderr
    a, b = final_weights(home / "runs" / "single"), final_weights(home / "runs" / "ddp")
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    print(f"largest weight difference, 2 processes vs 1: {worst:.3e}")
    assert worst < 1e-4, worst
    rows = records(home)
    ddp_rows = [r for r in rows if r["run_id"] == "ddp"]
    assert len(ddp_rows) == 3 and all(r["extra"]["world_size"] == 2 for r in ddp_rows)  # rank 0 alone writes


def test_sweep_dry_run_lists_table2(isolated_home, capsys):
    assert main(["sweep", str(REPO / "configs" / "experiments" / "table2.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for method in ("gsnet", "catseg", "san", "sed", "scan", "ovseg", "ebseg", "catseg-remoteclip", "scan-remoteclip"):
        assert method in out
    assert "sweep table2: 16 to run, 0 done" in out
    assert out.count("│ to run ") == 16 and "method not available" not in out  # every Table 2 row is runnable
    assert not (isolated_home / "runs").exists()


def test_sweep_runs_then_skips_finished_jobs(isolated_home, capsys, tmp_path):
    experiment = tmp_path / "mini.yaml"
    experiment.write_text(
        yaml.safe_dump(
            {
                "name": "mini",
                "description": "two seeds of the tests' method",
                "defaults": {"benchmark": "toyland", "overrides": ["train.iters=5"]},
                "jobs": [{"method": METHOD, "protocol": "scratch", "seeds": [0, 1]}],
            }
        )
    )
    assert main(["sweep", str(experiment), "-q"]) == 0
    first = records(isolated_home)
    assert len(first) == 6 and {r["seed"] for r in first} == {0, 1}
    assert len({r["extra"]["job_key"] for r in first}) == 2
    runs = sorted(p.name for p in (isolated_home / "runs").iterdir())
    capsys.readouterr()
    assert main(["sweep", str(experiment), "-q"]) == 0
    assert records(isolated_home) == first
    assert sorted(p.name for p in (isolated_home / "runs").iterdir()) == runs
    assert main(["sweep", str(experiment), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("done") >= 2


def test_unknown_protocol_and_bad_train_key(isolated_home, capsys):
    assert main(["run", "--method", METHOD, "--protocol", "scrach", "-q"]) == 1
    assert "unknown protocol 'scrach' (did you mean 'scratch'?)" in capsys.readouterr().err
    assert main(["run", "--method", METHOD, "-q", "train.itres=5"]) == 1
    assert "unknown config key 'train.itres' (did you mean 'train.iters'?)" in capsys.readouterr().err
    assert not (isolated_home / "runs").exists()


def test_gradient_accumulation_matches_the_full_batch(isolated_home, capsys):
    common = ["--method", METHOD, "-q", "--benchmark", "toyland", "train.iters=6", "train.checkpoint_every=6"]
    assert main(["run", "--run-id", "full", *common]) == 0
    assert main(["run", "--run-id", "accum", *common, "train.grad_accum=2"]) == 0
    a, b = final_weights(isolated_home / "runs" / "full"), final_weights(isolated_home / "runs" / "accum")
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, worst


def test_seeded_training_subset_is_saved_with_the_run(isolated_home, capsys, tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    (root / "LandDiscover50K" / "TR_Image").mkdir(parents=True)
    (root / "LandDiscover50K" / "GT_ID").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(root / "LandDiscover50K" / "TR_Image" / f"img{i}.png")
        Image.fromarray(rng.integers(0, 40, (80, 80), dtype=np.uint8)).save(root / "LandDiscover50K" / "GT_ID" / f"img{i}.png")
    args = ["run", "--method", METHOD, "--benchmark", "toyland", "--train-set", "landdiscover50k:size=3,seed=1",
            "--data-root", str(root), "-q", "train.iters=3"]
    assert main([*args, "--run-id", "subset"]) == 0, capsys.readouterr().err
    saved = (isolated_home / "runs" / "subset" / "train_files.txt").read_text().split()
    assert len(saved) == 3 and set(saved) <= {f"img{i}" for i in range(6)}
    rows = records(isolated_home)
    assert {r["train_set"] for r in rows} == {"landdiscover50k:size=3,seed=1"} and {r["train_size"] for r in rows} == {3}
