"""The command line as a user meets it: exit codes, one-line errors, records, tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from ovbench.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def store_lines(home: Path) -> list[str]:
    path = home / "results.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def assert_one_line_error(code, err, *fragments):
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_folder_dataset(root: Path, *, vocabulary="[road, tree]", corrupt=False, mismatch=False) -> Path:
    (root / "data" / "img").mkdir(parents=True)
    (root / "data" / "ann").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "data" / "img" / f"t{i}.png")
        size = (32, 31) if mismatch and i == 2 else (32, 32)
        Image.fromarray(rng.integers(0, 2, size, dtype=np.uint8)).save(root / "data" / "ann" / f"t{i}.png")
    if corrupt:
        (root / "data" / "img" / "t2.png").write_bytes(b"garbage")
    spec = root / "tiny.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""\
            image_dir: img
            mask_dir: ann
            vocabulary: {vocabulary}
            ignore_index: 255
            """
        )
    )
    return spec


def test_eval_toyland_then_table(capsys, isolated_home):
    code, out, err = run_cli(capsys, "eval", "--method", "clip-dense", "--quiet")
    assert code == 0, err
    assert err.splitlines()[0].startswith("no benchmark given and no data configured: running the embedded synthetic benchmark 'toyland'")
    for split in ("toyland-urban", "toyland-flood", "toyland-objects"):
        assert split in out
    records = [json.loads(line) for line in store_lines(isolated_home)]
    assert [r["eval_set"] for r in records] == ["toyland-urban", "toyland-flood", "toyland-objects"]
    assert {r["method"] for r in records} == {"clip-dense"} and len({r["run_id"] for r in records}) == 1
    assert all(0.0 <= r["metrics"]["mIoU"] <= 100.0 for r in records)

    code, out, err = run_cli(capsys, "table", "--format", "markdown")
    assert code == 0, err
    row = [line for line in out.splitlines() if "clip-dense" in line]
    assert len(row) == 1 and "zeroshot" in row[0]
    assert "Avg" in out


def test_unknown_method(capsys, isolated_home):
    code, out, err = run_cli(capsys, "eval", "--method", "clip-dens")
    assert_one_line_error(code, err, "unknown method 'clip-dens'", "did you mean 'clip-dense'")
    assert store_lines(isolated_home) == []


def test_unknown_dataset(capsys, isolated_home):
    code, out, err = run_cli(capsys, "eval", "--method", "clip-dense", "--dataset", "toyland-urbn")
    assert_one_line_error(code, err, "unknown dataset 'toyland-urbn'", "did you mean 'toyland-urban'")
    assert store_lines(isolated_home) == []


def test_unknown_benchmark(capsys, isolated_home):
    code, out, err = run_cli(capsys, "eval", "--method", "clip-dense", "--benchmark", "toylnd")
    assert_one_line_error(code, err, "unknown benchmark 'toylnd'")


def test_unknown_config_key(capsys, isolated_home):
    code, out, err = run_cli(capsys, "eval", "--method", "clip-dense", "inference.mdoe=sliding")
    assert_one_line_error(code, err, "unknown config key 'inference.mdoe'", "did you mean 'inference.mode'")
    assert store_lines(isolated_home) == []


def test_empty_vocabulary(capsys, isolated_home, tmp_path):
    spec = write_folder_dataset(tmp_path, vocabulary="[]")
    code, out, err = run_cli(capsys, "eval", "-m", "clip-dense", "--dataset", str(spec), "--data-root", str(tmp_path / "data"))
    assert_one_line_error(code, err, "empty vocabulary")
    assert store_lines(isolated_home) == []


def test_corrupt_image_leaves_no_record(capsys, isolated_home, tmp_path):
    spec = write_folder_dataset(tmp_path, corrupt=True)
    code, out, err = run_cli(
        capsys, "eval", "-m", "clip-dense", "--scale", "tiny", "--dataset", str(spec), "--data-root", str(tmp_path / "data"), "-q"
    )
    assert_one_line_error(code, err, "t2.png: cannot decode image")
    assert store_lines(isolated_home) == []


def test_mask_size_mismatch_leaves_no_record(capsys, isolated_home, tmp_path):
    spec = write_folder_dataset(tmp_path, mismatch=True)
    code, out, err = run_cli(
        capsys, "eval", "-m", "clip-dense", "--scale", "tiny", "--dataset", str(spec), "--data-root", str(tmp_path / "data"), "-q"
    )
    assert_one_line_error(code, err, "t2.png: mask is 31x32 but its image t2.png is 32x32")
    assert store_lines(isolated_home) == []


def test_folder_dataset_needs_data_root(capsys, isolated_home, tmp_path):
    spec = write_folder_dataset(tmp_path)
    code, out, err = run_cli(capsys, "eval", "-m", "clip-dense", "--dataset", str(spec))
    assert_one_line_error(code, err, "needs its data", "--data-root")


def test_missing_checkpoint(capsys, isolated_home, tmp_path):
    code, out, err = run_cli(capsys, "eval", "-m", "clip-dense", "--checkpoint", str(tmp_path / "nope.pth"))
    assert_one_line_error(code, err, "checkpoint not found")


def test_table_with_empty_store(capsys, isolated_home):
    code, out, err = run_cli(capsys, "table")
    assert_one_line_error(code, err, "no results")


def test_listing_commands(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0 and "clip-dense" in out
    code, out, _ = run_cli(capsys, "datasets")
    assert code == 0 and "toyland-train" in out and "toyland-objects" in out
    code, out, _ = run_cli(capsys, "benchmarks")
    assert code == 0 and "toyland" in out


def test_console_script_error_has_no_traceback(tmp_path):
    env = dict(os.environ, OVBENCH_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "ovbench", "eval", "--method", "nope"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "unknown method 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_help_explains_commands():
    proc = subprocess.run([sys.executable, "-m", "ovbench", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    for command in ("eval", "table", "methods", "datasets", "benchmarks"):
        assert command in proc.stdout


def test_eval_is_reproducible_for_a_seed(capsys, isolated_home):
    for _ in range(2):
        assert run_cli(capsys, "eval", "-m", "clip-dense", "--dataset", "toyland-urban", "--scale", "tiny", "-q", "--seed", "3")[0] == 0
    first, second = [json.loads(line) for line in store_lines(isolated_home)]
    assert first["seed"] == second["seed"] == 3
    assert first["metrics"] == second["metrics"] and first["per_class_iou"] == second["per_class_iou"]


def test_unfetchable_clip_weights_is_one_line(tmp_path):
    """open_clip logs a failed download on the root logger before raising: the user still
    sees one line."""
    script = textwrap.dedent(
        """\
        import logging, sys
        import open_clip
        def offline(*args, **kwargs):
            logging.getLogger().error("Failed to download weights for tag 'openai'")
            raise RuntimeError("Failed to download weights for tag 'openai'")
        open_clip.create_model = offline
        from ovbench.cli import main
        sys.exit(main(["eval", "-m", "clip-dense", "--dataset", "toyland-urban", "-q"]))
        """
    )
    env = dict(os.environ, OVBENCH_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert_one_line_error(proc.returncode, proc.stderr, "could not fetch CLIP weights ViT-B-16/openai", "--clip-weights PATH")
    assert not (tmp_path / "results.jsonl").exists()


def test_eval_with_clip_weights_file(capsys, isolated_home, tmp_path):
    """--clip-weights with an OpenAI-format .pt: the architecture comes from the file."""
    from test_clip_loading import OPENAI_STYLE_CONFIG, random_clip, write_openai_archive

    weights = write_openai_archive(random_clip(OPENAI_STYLE_CONFIG), tmp_path / "ViT-tiny.pt")
    code, out, err = run_cli(capsys, "eval", "-m", "clip-dense", "--benchmark", "toyland", "--clip-weights", str(weights), "-q")
    assert code == 0, err
    records = [json.loads(line) for line in store_lines(isolated_home)]
    assert len(records) == 3 and all(r["extra"]["scale"] is None for r in records)


# --------------------------------------------------------------------------- light listings, benchmark files, own eval sets

LISTING_PROBE = textwrap.dedent(
    """\
    import contextlib, io, json, sys
    from ovbench.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(sys.argv[1:])
    heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "ovbench.eval", "ovbench.engine.trainer")))
    print(json.dumps({"code": code, "heavy": heavy, "out": out.getvalue()}))
    """
)


def test_listings_and_help_do_not_import_torch(tmp_path):
    env = dict(os.environ, OVBENCH_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    for args, shown in ((["methods"], "clip-dense"), (["datasets"], "toyland-urban"), (["benchmarks"], "ovrsiss"),
                        (["--help"], "benchmarks"), (["run", "--help"], "--eval-set")):
        proc = subprocess.run([sys.executable, "-c", LISTING_PROBE, *args], capture_output=True, text=True, env=env, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.splitlines()[-1])
        assert result["code"] == 0 and shown in result["out"], (args, result["out"][-500:])
        assert result["heavy"] == [], (args, result["heavy"][:5])


def _benchmark_file(folder: Path, name: str = "bench.yaml", text: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text or "description: mine\ntrain_set: toyland-train\neval_sets: [toyland-flood]\nscale: tiny\n")
    return path


def test_eval_on_a_benchmark_file(tmp_path):
    from cli_process import TRAINABLE, ovbench, records

    work = tmp_path / "work"
    _benchmark_file(work)
    proc = ovbench(tmp_path / "home", "eval", "-m", TRAINABLE, "--benchmark", "bench.yaml", "-q", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "toyland-flood" in proc.stdout and "no benchmark given" not in proc.stderr
    rows = records(tmp_path / "home" / "results.jsonl")
    assert [(r["benchmark"], r["eval_set"], r["protocol"]) for r in rows] == [("bench", "toyland-flood", "zeroshot")]


def test_run_on_a_benchmark_file_resumes_from_anywhere(tmp_path):
    from cli_process import TRAINABLE, ovbench, records

    work, home = tmp_path / "work", tmp_path / "home"
    _benchmark_file(work, "trial.yml", "name: field-trial\ntrain_set: toyland-train\neval_sets: [toyland-urban]\nscale: tiny\n")
    proc = ovbench(home, "run", "-m", TRAINABLE, "--benchmark", "trial.yml", "--run-id", "b", "-q", "train.iters=2", cwd=work)
    assert proc.returncode == 0, proc.stderr
    rows = records(home / "results.jsonl")
    assert [(r["benchmark"], r["eval_set"], r["train_set"]) for r in rows] == [("field-trial", "toyland-urban", "toyland-train")]
    # the run keeps the file's absolute path: --resume works from another directory
    saved = (home / "runs" / "b" / "request.yaml").read_text()
    assert str((work / "trial.yml").resolve()) in saved
    proc = ovbench(home, "run", "--resume", "b", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "run b is finished" in proc.stderr and len(records(home / "results.jsonl")) == 1


def test_run_evaluates_on_the_users_own_sets(tmp_path):
    from cli_process import TRAINABLE, ovbench, records

    home = tmp_path / "home"
    spec = write_folder_dataset(tmp_path / "field")
    # toyland trains (a data root alone would choose the paper's benchmark); the user's sets are evaluated
    proc = ovbench(home, "run", "-m", TRAINABLE, "--benchmark", "toyland", "--eval-set", "toyland-objects", "--eval-set", str(spec),
                   "--data-root", str(tmp_path / "field" / "data"), "--run-id", "own", "-q", "train.iters=2")
    assert proc.returncode == 0, proc.stderr
    rows = records(home / "results.jsonl")
    assert [(r["benchmark"], r["eval_set"], r["train_set"], r["iterations"]) for r in rows] == [
        ("custom", "toyland-objects", "toyland-train", 2), ("custom", "tiny", "toyland-train", 2)]
    assert rows[1]["extra"]["num_images"] == 3
    config = (home / "runs" / "own" / "config.yaml").read_text()
    assert "eval_sets:" in config and "benchmark: toyland" in config


def test_run_eval_set_errors(capsys, isolated_home):
    from cli_process import TRAINABLE

    code, out, err = run_cli(capsys, "run", "-m", TRAINABLE, "--eval-set", "toyland-urban", "--eval-set", "toyland-urban", "-q")
    assert_one_line_error(code, err, "evaluation set toyland-urban is given twice")
    code, out, err = run_cli(capsys, "run", "-m", TRAINABLE, "--eval-set", "toyland-urbn", "-q")
    assert_one_line_error(code, err, "unknown dataset 'toyland-urbn' (did you mean 'toyland-urban'?)")
    code, out, err = run_cli(capsys, "run", "--resume", "x", "--eval-set", "toyland-urban")
    assert_one_line_error(code, err, "--resume continues a run as it was configured; drop --eval-set")
    assert store_lines(isolated_home) == [] and not (isolated_home / "runs").exists()
