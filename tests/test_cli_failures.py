"""Every failure through the installed `ovbench` executable: exit status, one message line,
no traceback, and what is left in OVBENCH_HOME afterwards (nothing torn, nothing doubled).

The in-process runner (`cli.main([...])`) hid several of these, so each case here runs the
console script in a subprocess, as a user's shell would.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cli_process import (
    TRAINABLE,
    assert_one_error_line,
    fill,
    ovbench,
    read_only_folder,
    records,
    small_filesystem,
    start,
    tree,
)
from ovbench.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from ovbench.results.per_image import load_record_counts

FAST_TRAIN = ("train.iters=12", "train.checkpoint_every=4", "train.log_every=1")


def wait_for(condition, proc, what: str, timeout: float = 180.0, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(poll)


def lock_pid(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / ".lock").read_text()).get("pid")
    except (OSError, ValueError):
        return None


def log_iterations(run_dir: Path) -> list[int]:
    path = run_dir / "log.jsonl"
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def temp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*.tmp")]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints")[1])["model"]


# --------------------------------------------------------------------------- 1, 2: exit codes and usage


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["eval"], "Missing option '--method'"),
        (["run", "--iters", "abc"], "Invalid value for '--iters'"),
        (["eval", "--bogus"], "No such option: --bogus"),
        (["nosuchcmd"], "No such command 'nosuchcmd'"),
        (["data", "check"], "Missing argument"),
    ],
)
def test_usage_errors_are_usage_hint_error_and_exit_2(tmp_path, args, fragment):
    proc = ovbench(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Usage: ovbench"), lines
    assert lines[1].startswith("Try 'ovbench") and "-h' for help." in lines[1], lines
    assert lines[2].startswith("Error: ") and fragment in lines[2], lines
    assert len(lines) == 3, lines
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize("args, listed", [([], "eval"), (["data"], "check")])
def test_bare_group_shows_its_help(tmp_path, args, listed):
    proc = ovbench(tmp_path, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out
    assert "Usage: ovbench" in out and listed in out


def test_data_check_failure_exits_1(tmp_path):
    root = tmp_path / "data"
    (root / "set/images").mkdir(parents=True)
    (root / "set/labels").mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / f"set/images/{stem}.png")
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / f"set/labels/{stem}.png")
    corrupt = root / "set/images/b.png"
    corrupt.write_bytes(corrupt.read_bytes()[:-30])
    spec = tmp_path / "my_set.yaml"
    spec.write_text("image_dir: set/images\nmask_dir: set/labels\nvocabulary: [road, tree]\nignore_index: 255\n")
    proc = ovbench(tmp_path / "home", "data", "check", str(spec), "--data-root", str(root))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout and "Traceback" not in proc.stderr


def test_ctrl_c_during_eval_exits_130_and_keeps_finished_sets(tmp_path):
    proc = start(tmp_path, "eval", "--method", "clip-dense", "--quiet")
    store = tmp_path / "results.jsonl"
    wait_for(lambda: len(records(store)) >= 1, proc, "a first record")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the evaluation finished before the interrupt arrived")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    kept = records(store)
    assert 1 <= len(kept) < 3 and len({r["eval_set"] for r in kept}) == len(kept)
    # the interrupted set left no per-image file, staged or in place
    left = [p for p in (tmp_path / "results.per_image").rglob("*") if p.is_file()]
    assert sorted(p.stem for p in left) == sorted(r["eval_set"] for r in kept)


def test_ctrl_c_during_run_exits_130_and_says_how_to_resume(tmp_path):
    proc = start(tmp_path, "run", "--method", TRAINABLE, "--run-id", "intr", "-q",
                 "train.iters=100000", "train.checkpoint_every=3")
    wait_for(lambda: list_checkpoints(tmp_path / "runs/intr/checkpoints"), proc, "a first checkpoint")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "interrupted" in line and "ovbench run --resume intr" in line and "last checkpoint is iteration" in line
    assert records(tmp_path / "results.jsonl") == []


# --------------------------------------------------------------------------- 3, 4: file systems


def test_read_only_home_for_run_is_one_line(tmp_path):
    with read_only_folder(tmp_path / "ro") as home:
        proc = ovbench(home, "run", "--method", TRAINABLE, "-q", *FAST_TRAIN)
        assert_one_error_line(proc, str(home / "runs"))
        assert tree(home) == {}


def test_table_out_to_read_only_place_is_one_line(tmp_path):
    store = tmp_path / "results.jsonl"
    assert ovbench(tmp_path, "eval", "--method", "clip-dense", "--quiet").returncode == 0
    before = store.read_bytes()
    with read_only_folder(tmp_path / "ro") as folder:
        proc = ovbench(tmp_path, "table", "--out", str(folder / "table.md"), "--format", "markdown")
        assert_one_error_line(proc, str(folder / "table.md"))
        assert tree(folder) == {}
    assert store.read_bytes() == before


def test_disk_full_during_checkpoint_write(tmp_path):
    with small_filesystem(tmp_path / "full", "2m") as home:
        (home / "runs").mkdir()
        fill(home, leave=48 * 1024)  # room for the run's small files, not for a checkpoint (~70 kB)
        proc = ovbench(home, "run", "--method", TRAINABLE, "--run-id", "full", "-q", *FAST_TRAIN)
        line = assert_one_error_line(proc, "No space left on device", "iter_0000004.pt", "ovbench run --resume full")
        assert "the previous file is unchanged" in line or "nothing was written" in line
        assert temp_files(home / "runs" / "full") == []
        assert list_checkpoints(home / "runs/full/checkpoints") == []
        assert not (home / "results.jsonl").exists()


def test_full_disk_append_leaves_the_store_byte_identical(tmp_path):
    with small_filesystem(tmp_path / "full", "1m") as folder:
        store = folder / "results.jsonl"
        first = ovbench(tmp_path / "home", "eval", "--method", "clip-dense", "--quiet", "--store", str(store))
        assert first.returncode == 0, first.stderr
        before = store.read_bytes()
        fill(folder, leave=0)
        proc = ovbench(tmp_path / "home", "eval", "--method", "clip-dense", "--quiet", "--store", str(store))
        assert_one_error_line(proc, str(store), "No space left on device", "the store is unchanged")
        assert store.read_bytes() == before
        # the failed evaluation left no per-image file either (only the first run's, in place)
        runs = {json.loads(line)["run_id"] for line in before.decode().splitlines()}
        left = [p for p in (folder / "results.per_image").rglob("*") if p.is_file()]
        assert left and {p.parent.name for p in left} == runs and not any(p.name.endswith(".tmp") for p in left)


# --------------------------------------------------------------------------- 5: the run lock


def test_two_concurrent_resumes_exactly_one_proceeds(tmp_path):
    args = ("train.iters=400", "train.checkpoint_every=2", "train.log_every=1")
    first = start(tmp_path, "run", "--method", TRAINABLE, "--run-id", "shared", "-q", *args)
    run_dir = tmp_path / "runs" / "shared"
    wait_for(lambda: list_checkpoints(run_dir / "checkpoints"), first, "a first checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait()
    dead_pid = first.pid
    assert lock_pid(run_dir) == dead_pid  # a stale lock, left by a dead process

    holder = start(tmp_path, "run", "--resume", "shared", "-q")
    wait_for(lambda: lock_pid(run_dir) == holder.pid, holder, "the resumed run to take the lock")
    second = ovbench(tmp_path, "run", "--resume", "shared", "-q")
    line = assert_one_error_line(second, "run shared is in use by", f"pid {holder.pid}", "on host")
    assert str(run_dir / ".lock") in line
    _, stderr = holder.communicate(timeout=600)
    assert holder.returncode == 0, stderr
    stored = [r for r in records(tmp_path / "results.jsonl") if r["run_id"] == "shared"]
    assert sorted(r["eval_set"] for r in stored) == ["toyland-flood", "toyland-objects", "toyland-urban"]
    assert ovbench(tmp_path, "table").stdout.count("tiny-trainable") == 1
    # per-image counts: one file per evaluated set, each the one its record names, none left staged
    files = sorted(p for p in (tmp_path / "results.per_image" / "shared").iterdir())
    assert [p.suffix for p in files] == [".npz"] * 3
    for record in stored:
        assert load_record_counts(tmp_path / "results.jsonl", record).num_images == record["extra"]["num_images"]


def test_resuming_a_finished_run_says_it_is_finished(tmp_path):
    assert ovbench(tmp_path, "run", "--method", TRAINABLE, "--run-id", "done", "-q", *FAST_TRAIN).returncode == 0
    before = tree(tmp_path)
    proc = ovbench(tmp_path, "run", "--resume", "done")
    assert proc.returncode == 0, proc.stderr
    assert "run done is finished: 12 iterations" in proc.stderr and "nothing to do" in proc.stderr
    after = tree(tmp_path)
    after.pop("runs/done/.lock", None), before.pop("runs/done/.lock", None)
    assert after == before


# --------------------------------------------------------------------------- 6: numbers in overrides


def test_every_numeric_spelling_is_a_number(tmp_path):
    proc = ovbench(tmp_path, "run", "--method", TRAINABLE, "--run-id", "nums", "-q", "train.iters=4",
                   "train.optimizer.lr=1e-4", "train.optimizer.weight_decay=2E-6", "train.grad_clip=.5",
                   "train.checkpoint_every=1_000")
    assert proc.returncode == 0, proc.stderr
    train = yaml.safe_load((tmp_path / "runs/nums/config.yaml").read_text())["train"]
    assert train["optimizer"]["lr"] == 1e-4 and train["optimizer"]["weight_decay"] == 2e-6
    assert train["grad_clip"] == 0.5 and train["checkpoint_every"] == 1000


# --------------------------------------------------------------------------- 7, 8: checkpoints, markup


def test_mismatched_checkpoint_into_clip_dense_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"model.clip.visual.conv1.weight": torch.zeros(3, 3, 1, 1)}}, bad)
    proc = ovbench(tmp_path, "eval", "--method", "clip-dense", "--checkpoint", str(bad), "--quiet")
    assert_one_error_line(proc, str(bad), "does not fit clip-dense")
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize("name", ["[/oops]", "x[bold]y", "a:smile:b", "[red]r"])
def test_user_text_is_never_markup(tmp_path, name):
    proc = ovbench(tmp_path, "eval", "-m", name)
    assert_one_error_line(proc, f"'{name}'")


def test_emoji_codes_in_paths_are_shown_as_typed(tmp_path):
    path = tmp_path / "w:smile:.pt"
    proc = ovbench(tmp_path, "eval", "--method", "clip-dense", "--checkpoint", str(path))
    assert_one_error_line(proc, str(path))


# --------------------------------------------------------------------------- 9: run ids


@pytest.mark.parametrize("run_id", ["../../escape_test", "/tmp/escape_abs", "a/b", "..", ".hidden"])
def test_run_id_is_a_plain_name(tmp_path, run_id):
    home = tmp_path / "home"
    proc = ovbench(home, "run", "--method", TRAINABLE, "--run-id", run_id, "-q", *FAST_TRAIN)
    assert_one_error_line(proc, "bad run id", "plain name")
    assert tree(tmp_path) == {}
    assert not Path("/tmp/escape_abs").exists()


# --------------------------------------------------------------------------- 10, 12: kills, temp files, log


def test_sigkill_at_random_moments_and_in_checkpoint_writes_resume_bit_identical(tmp_path):
    settings = ("train.iters=200", "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.log_every=1", "--seed", "3")
    straight = ovbench(tmp_path, "run", "--method", TRAINABLE, "--run-id", "straight", "-q", *settings)
    assert straight.returncode == 0, straight.stderr
    run_dir = tmp_path / "runs" / "killed"
    rng = random.Random(0)
    kills = {"random": 0, "in a checkpoint write": 0}
    command = ("run", "--method", TRAINABLE, "--run-id", "killed", "-q", *settings)
    while kills["random"] < 5 or kills["in a checkpoint write"] < 5:
        proc = start(tmp_path, *command)
        command = ("run", "--resume", "killed", "-q")
        if kills["random"] < 5:
            # anywhere: start-up, data loading, a step, a write (after at least one logged step)
            seen = len(log_iterations(run_dir))
            wait_for(lambda: len(log_iterations(run_dir)) > seen, proc, "a training step")
            time.sleep(rng.uniform(0.0, 0.6))
            kind = "random"
        else:
            wait_for(lambda: temp_files(run_dir / "checkpoints"), proc, "a checkpoint being written", timeout=300, poll=0.0005)
            kind = "in a checkpoint write"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        kills[kind] += 1
        assert (latest_checkpoint(run_dir / "checkpoints") or (0,))[0] < 200, "the run finished before the kills"
    finished = ovbench(tmp_path, "run", "--resume", "killed", "-q")
    assert finished.returncode == 0, finished.stderr
    a, b = final_weights(tmp_path / "runs/straight"), final_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert temp_files(run_dir) == []
    iterations = log_iterations(run_dir)
    assert iterations == list(range(1, 201))  # one line per iteration: nothing doubled, nothing lost
    by_run = {}
    for r in records(tmp_path / "results.jsonl"):
        by_run.setdefault(r["run_id"], {})[r["eval_set"]] = r["metrics"]
    assert by_run["straight"] == by_run["killed"] and len(by_run["killed"]) == 3


def test_stale_temp_files_are_removed_on_resume(tmp_path):
    proc = start(tmp_path, "run", "--method", TRAINABLE, "--run-id", "tmpf", "-q", "train.iters=60", "train.checkpoint_every=3")
    run_dir = tmp_path / "runs/tmpf"
    wait_for(lambda: list_checkpoints(run_dir / "checkpoints"), proc, "a first checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = run_dir / "checkpoints" / ".iter_0000009.pt.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 4096)
    (run_dir / ".log.jsonl.x.tmp").write_text("torn")
    assert ovbench(tmp_path, "run", "--resume", "tmpf", "-q").returncode == 0
    assert temp_files(run_dir) == []


def test_log_is_cut_back_on_resume_from_before_the_first_checkpoint(tmp_path):
    args = ("train.iters=20", "train.checkpoint_every=1000", "train.log_every=1")
    run_dir = tmp_path / "runs/early"
    for attempt in range(2):
        proc = start(tmp_path, *(("run", "--method", TRAINABLE, "--run-id", "early", "-q", *args) if attempt == 0
                                 else ("run", "--resume", "early", "-q")))
        wait_for(lambda: len(log_iterations(run_dir)) >= 2, proc, "two logged iterations")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert ovbench(tmp_path, "run", "--resume", "early", "-q").returncode == 0
    assert log_iterations(run_dir) == list(range(1, 21))


# --------------------------------------------------------------------------- 11: divergence


def test_divergence_never_names_a_checkpoint_with_exploded_weights(tmp_path):
    proc = ovbench(tmp_path, "run", "--method", TRAINABLE, "--run-id", "boom", "-q", "train.iters=30",
                   "train.checkpoint_every=1", "train.optimizer.lr=1e30", "train.grad_clip=null",
                   "train.schedule.name=poly")
    line = assert_one_error_line(proc, "training diverged at iteration", "lower learning rate", "1e+30")
    for _, path in list_checkpoints(tmp_path / "runs/boom/checkpoints"):
        state = load_checkpoint(path)["model"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path
    found = latest_checkpoint(tmp_path / "runs/boom/checkpoints")
    if found:
        assert str(found[1]) in line
    else:
        assert "no checkpoint was written yet" in line
    assert records(tmp_path / "results.jsonl") == []


# --------------------------------------------------------------------------- 13, 15: data


def _folder_set(tmp_path: Path, vocabulary: str, image: np.ndarray | None = None, suffix: str = ".png") -> tuple[Path, Path]:
    root = tmp_path / "data"
    (root / "s/images").mkdir(parents=True)
    (root / "s/labels").mkdir(parents=True)
    if image is None:
        Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(root / "s/images/t.png")
    else:
        import tifffile

        tifffile.imwrite(root / f"s/images/t{suffix}", image)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "s/labels/t.png")
    spec = tmp_path / "my_set.yaml"
    spec.write_text(f"image_dir: s/images\nmask_dir: s/labels\nimage_suffix: {suffix}\nvocabulary: {vocabulary}\nignore_index: 255\n")
    return spec, root


@pytest.mark.parametrize("vocabulary, fragment", [("[]", "empty vocabulary"), ("[road, road]", "duplicate class 'road'")])
def test_spec_problems_name_the_spec_file(tmp_path, vocabulary, fragment):
    spec, root = _folder_set(tmp_path, vocabulary)
    proc = ovbench(tmp_path / "home", "eval", "--method", "clip-dense", "--scale", "tiny", "--dataset", str(spec), "--data-root", str(root))
    assert_one_error_line(proc, str(spec), fragment)


def test_sixteen_bit_multiband_tiff_is_refused(tmp_path):
    image = (np.random.default_rng(0).random((32, 32, 4)) * 60000).astype(np.uint16)
    spec, root = _folder_set(tmp_path, "[road, tree]", image=image, suffix=".tif")
    proc = ovbench(tmp_path / "home", "eval", "--method", "clip-dense", "--scale", "tiny", "--dataset", str(spec), "--data-root", str(root))
    assert_one_error_line(proc, "t.tif", "4 bands of uint16", "8-bit RGB")
    assert not (tmp_path / "home/results.jsonl").exists()


# --------------------------------------------------------------------------- 14, 16: tables and the small ones


def test_eval_of_a_run_checkpoint_records_the_run_protocol(tmp_path):
    assert ovbench(tmp_path, "run", "--method", TRAINABLE, "--run-id", "src", "-q", *FAST_TRAIN).returncode == 0
    checkpoint = latest_checkpoint(tmp_path / "runs/src/checkpoints")[1]
    proc = ovbench(tmp_path, "eval", "--method", TRAINABLE, "--checkpoint", str(checkpoint), "--quiet")
    assert proc.returncode == 0, proc.stderr
    evaluated = [r for r in records(tmp_path / "results.jsonl") if r["run_id"] != "src"]
    assert len(evaluated) == 3
    assert all(r["protocol"] == "scratch" and r["iterations"] == 12 and r["train_set"] == "toyland-train" for r in evaluated)
    assert all(r["extra"]["source_run"] == "src" for r in evaluated)


def test_table_keeps_unlike_runs_apart(tmp_path):
    for run_id, extra in (("long", ("train.iters=12",)), ("short", ("train.iters=4",)), ("seed1", ("train.iters=12", "--seed", "1"))):
        proc = ovbench(tmp_path, "run", "--method", TRAINABLE, "--run-id", run_id, "-q", "train.checkpoint_every=4", *extra)
        assert proc.returncode == 0, proc.stderr
    proc = ovbench(tmp_path, "table", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(",") for line in proc.stdout.splitlines()]
    header, body = rows[0], rows[1:]
    assert len(body) == 2  # 12 iterations (seeds 0 and 1) and 4 iterations
    by_iters = {row[header.index("iterations")]: row for row in body}
    assert by_iters["12"][header.index("n")] == "2" and by_iters["4"][header.index("n")] == "1"


def test_sweep_dry_run_lists_every_table2_row_and_marks_a_missing_method(tmp_path):
    proc = ovbench(tmp_path, "sweep", "configs/experiments/table2.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    # all seven methods of Table 2 (with the RemoteCLIP variants) are registered
    assert "dry run: 16 job(s) would run, 0 already done" in proc.stdout
    assert "method not available" not in proc.stdout and "unknown method" not in proc.stdout
    experiment = tmp_path / "mine.yaml"
    experiment.write_text("jobs: [{method: clip-dense, protocol: zeroshot, benchmark: toyland},"
                          " {method: nosuchmethod, protocol: scratch, benchmark: toyland}]\n")
    proc = ovbench(tmp_path, "sweep", str(experiment), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "method not available" in proc.stdout
    assert "dry run: 1 job(s) would run, 0 already done; 1 need a method that is not available: nosuchmethod" in proc.stdout


def test_progress_line_has_one_rate_one_eta_and_labels(tmp_path):
    proc = ovbench(tmp_path, "run", "--method", TRAINABLE, "--run-id", "prog", "train.iters=10", "train.log_every=5")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train ")]
    assert lines, proc.stderr
    for line in lines:
        assert line.count("/s") == 1 and line.count("eta ") == 1 and line.count("elapsed ") == 1, line
    notice = proc.stderr.splitlines()[0]
    assert notice.startswith("no benchmark given") and notice.endswith("to run the paper's benchmark")


def test_an_interrupt_while_a_record_and_its_counts_are_written_waits_for_both():
    # the window between appending a record and moving its per-image counts into place
    import os

    from ovbench.runner import interrupts_deferred

    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append("record and counts")
    assert finished == ["record and counts"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
