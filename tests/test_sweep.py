"""Experiment files, job identity and the resumable sweep planner."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from ovbench.engine.sweep import (
    Experiment,
    Job,
    SweepPlan,
    job_is_done,
    load_experiment,
    plan_sweep,
    run_sweep,
)
from ovbench.errors import ConfigError, OvbenchError

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO_ROOT / "configs" / "experiments"


def write_experiment(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def records_for(job: Job, eval_sets: list[str]) -> list[dict]:
    """What `ovbench run` appends for a finished job: one record per evaluation set."""
    return [
        {"run_id": job.run_id(), "method": job.method, "eval_set": name, "extra": {"job_key": job.key()}}
        for name in eval_sets
    ]


def quiet_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=250, color_system=None), buffer


# --------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize(
    ("name", "count"), [("table2", 16), ("table3", 10), ("table4", 6), ("fig5", 5)]
)
def test_shipped_experiment_job_counts(name, count):
    experiment = load_experiment(EXPERIMENTS / f"{name}.yaml")
    assert experiment.name == name
    assert experiment.description
    assert len(experiment.jobs) == count
    assert experiment.source == EXPERIMENTS / f"{name}.yaml"
    assert all(job.benchmark == "ovrsiss" and job.seed == 0 for job in experiment.jobs)


def test_table2_is_seven_methods_by_two_protocols_plus_remoteclip():
    jobs = load_experiment(EXPERIMENTS / "table2.yaml").jobs
    grid = {(job.method, job.protocol) for job in jobs}
    methods = {"gsnet", "catseg", "san", "sed", "scan", "ovseg", "ebseg"}
    assert {(m, p) for m in methods for p in ("scratch", "finetune")} <= grid
    remote = {job.method: job for job in jobs if job.method.endswith("-remoteclip")}
    assert set(remote) == {"catseg-remoteclip", "scan-remoteclip"}
    assert all(job.protocol == "scratch" and job.label for job in remote.values())


def test_table3_rows_and_shared_jobs_between_tables():
    table3 = load_experiment(EXPERIMENTS / "table3.yaml").jobs
    assert [job.label for job in table3] == [*"ABCDEFGHI", "full"]
    assert [job.method for job in table3] == [f"gsnet/{row}" for row in "ABCDEFGHI"] + ["gsnet"]
    assert {job.protocol for job in table3} == {"scratch"}
    # The full model is Table 2's GSNet scratch run: one run fills both tables.
    table2_keys = {job.key() for job in load_experiment(EXPERIMENTS / "table2.yaml").jobs}
    assert table3[-1].key() in table2_keys
    # Table 4's LandDiscover50K row is Fig. 5's last point.
    table4 = load_experiment(EXPERIMENTS / "table4.yaml").jobs
    fig5 = load_experiment(EXPERIMENTS / "fig5.yaml").jobs
    assert [job.train_set for job in table4] == ["loveda", "deepglobe", "sior", "sota", "oem", "landdiscover50k"]
    assert [job.train_set for job in fig5] == [f"landdiscover{n}0k" for n in range(1, 6)]
    assert table4[-1].key() == fig5[-1].key()


# --------------------------------------------------------------------------- loading


def test_entry_expands_to_product_with_defaults_and_exact_seeds(tmp_path):
    path = write_experiment(
        tmp_path,
        """
name: demo
defaults: {benchmark: toyland, seeds: [3, 7], overrides: ["train.iterations=10"]}
jobs:
  - {methods: [a, b], protocols: [scratch, finetune], overrides: ["model.width=8"]}
  - {method: c, protocol: zeroshot, seed: 5, train_sets: [x, null], label: "C zero"}
""",
    )
    experiment = load_experiment(path)
    first = [(j.method, j.protocol, j.seed) for j in experiment.jobs[:8]]
    assert first == [
        ("a", "scratch", 3), ("a", "scratch", 7), ("a", "finetune", 3), ("a", "finetune", 7),
        ("b", "scratch", 3), ("b", "scratch", 7), ("b", "finetune", 3), ("b", "finetune", 7),
    ]
    assert all(j.benchmark == "toyland" and j.train_set is None for j in experiment.jobs[:8])
    # Defaults' overrides first, so the entry's win on a shared key.
    assert experiment.jobs[0].overrides == ("train.iterations=10", "model.width=8")
    last = experiment.jobs[8:]
    assert [(j.method, j.train_set, j.seed, j.label) for j in last] == [
        ("c", "x", 5, "C zero"), ("c", None, 5, "C zero")
    ]
    assert len(experiment.jobs) == 10


def test_name_defaults_to_file_stem_and_seed_to_zero(tmp_path):
    experiment = load_experiment(write_experiment(tmp_path, "jobs: [{method: m, protocol: scratch}]", "mine.yaml"))
    assert experiment.name == "mine"
    assert experiment.jobs == [Job("m", "scratch")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jobs:\n  - {method: a, protocol: scratch}\n  - {methods: [b, a], protocols: [scratch]}\n",
         r"jobs\[1\] repeats the job of jobs\[0\]"),
        ("jobs:\n  - {methods: [a, a], protocol: scratch}\n", r"jobs\[0\] lists the same job twice"),
        ("jobs:\n  - {metods: [a], protocol: scratch}\n", r"unknown config key 'jobs\[0\]\.metods'.*'jobs\[0\]\.methods'"),
        ("jobz: []\n", r"unknown config key 'jobz'.*did you mean 'jobs'"),
        ("defaults: {label: x}\njobs: [{method: a, protocol: scratch}]\n", r"unknown config key 'defaults\.label'"),
        ("jobs:\n  - {protocol: scratch}\n", r"jobs\[0\]: no method"),
        ("jobs:\n  - {method: a, protocol: scrach}\n", r"unknown protocol 'scrach'.*'scratch'"),
        ("jobs:\n  - {method: a, methods: [b], protocol: scratch}\n", r"either 'method' or 'methods'"),
        ("jobs:\n  - {method: [a, b], protocol: scratch}\n", r"jobs\[0\]\.method: expected one value.*'methods'"),
        ("jobs:\n  - {methods: a, protocol: scratch}\n", r"jobs\[0\]\.methods: expected a list"),
        ("jobs:\n  - {methods: [], protocol: scratch}\n", r"jobs\[0\]\.methods: the list is empty"),
        ("jobs:\n  - {method: a, protocol: scratch, seeds: [1, -2]}\n", r"jobs\[0\]\.seeds\[1\]: expected a non-negative"),
        ("jobs:\n  - {method: a, protocol: scratch, seed: true}\n", r"jobs\[0\]\.seed: expected a non-negative"),
        ("jobs:\n  - {method: a, protocol: scratch, overrides: [novalue]}\n", r"jobs\[0\]\.overrides\[0\]: bad override"),
        ("jobs: []\n", r"jobs: expected a non-empty list"),
        ("jobs:\n  - just-a-string\n", r"jobs\[0\]: expected a mapping"),
    ],
)
def test_bad_experiment_files_raise_one_line_config_error(tmp_path, text, message):
    path = write_experiment(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_experiment(path)
    text_of_error = str(caught.value)
    assert "\n" not in text_of_error
    assert text_of_error.startswith(str(path))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "absent.yaml")


# --------------------------------------------------------------------------- job identity


def test_key_is_stable_across_processes():
    job = Job("gsnet/E", "scratch", train_set="loveda", seed=2, overrides=("model.x=1",), label="E")
    code = (
        "from ovbench.engine.sweep import Job;"
        "print(Job('gsnet/E', 'scratch', train_set='loveda', seed=2, overrides=('model.x=1',)).key())"
    )
    # A different hash seed proves the key does not lean on Python's salted hash().
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT, env=env
    )
    assert child.stdout.strip() == job.key()
    assert re.fullmatch(r"[0-9a-f]{16}", job.key())


def test_label_does_not_change_key_but_every_other_field_does():
    base = Job("gsnet", "scratch", benchmark="ovrsiss", train_set=None, seed=0, overrides=("a=1",), label="full")
    assert dataclasses.replace(base, label="renamed").key() == base.key()
    assert dataclasses.replace(base, label=None).key() == base.key()
    variants = {
        "method": dataclasses.replace(base, method="catseg"),
        "protocol": dataclasses.replace(base, protocol="finetune"),
        "benchmark": dataclasses.replace(base, benchmark="toyland"),
        "train_set": dataclasses.replace(base, train_set="loveda"),
        "seed": dataclasses.replace(base, seed=1),
        "overrides": dataclasses.replace(base, overrides=("a=2",)),
        "no overrides": dataclasses.replace(base, overrides=()),
    }
    keys = {name: job.key() for name, job in variants.items()}
    assert base.key() not in keys.values()
    assert len(set(keys.values())) == len(keys)


def test_overrides_given_as_list_are_stored_as_tuple():
    job = Job("m", "scratch", overrides=["a=1"])
    assert job.overrides == ("a=1",)
    assert job == Job("m", "scratch", overrides=("a=1",))
    hash(job)


def test_job_rejects_bad_fields():
    with pytest.raises(ConfigError, match="unknown protocol 'train'"):
        Job("m", "train")
    with pytest.raises(ConfigError, match="method"):
        Job("", "scratch")


@pytest.mark.parametrize(
    "job",
    [
        Job("gsnet/E", "scratch"),
        Job("CAT-Seg (RemoteCLIP)", "finetune", train_set="../../etc/passwd", seed=12),
        Job("a b:c*?<>|\\", "zeroshot", train_set="LandDiscover 50K"),
        Job("...", "scratch", train_set="///"),
    ],
)
def test_run_id_is_filesystem_safe_and_deterministic(job, tmp_path):
    run_id = job.run_id()
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", run_id), run_id
    assert ".." not in run_id and "/" not in run_id
    assert run_id == dataclasses.replace(job, label="whatever").run_id()
    assert run_id.endswith(f"-s{job.seed}-{job.key()[:8]}")
    (tmp_path / run_id).mkdir()  # the name really works as a folder


def test_run_id_layout():
    job = Job("gsnet/E", "scratch", train_set="LoveDA", seed=3)
    assert job.run_id() == f"gsnet-e-scratch-loveda-s3-{job.key()[:8]}"
    assert Job("gsnet", "scratch").run_id().startswith("gsnet-scratch-default-s0-")


def test_describe_is_one_line_with_the_identity():
    line = Job("gsnet/E", "scratch", train_set="loveda", seed=2, overrides=("a=1",), label="E").describe()
    assert "\n" not in line
    for part in ("gsnet/E", "E", "scratch", "toyland", "loveda", "2", "a=1"):
        assert part in line


# --------------------------------------------------------------------------- planning


def test_job_is_done_counts_distinct_eval_sets_of_this_job_only():
    job, other = Job("a", "scratch"), Job("b", "scratch")
    assert not job_is_done(job, [])
    assert not job_is_done(job, records_for(other, ["x", "y"]))
    # Records without a job key (plain `ovbench run`) never mark a sweep job done.
    assert not job_is_done(job, [{"eval_set": "x"}, {"eval_set": "y", "extra": None}])
    partial = records_for(job, ["x", "x"])  # one set recorded twice is still one set
    assert job_is_done(job, partial)
    assert not job_is_done(job, partial, expected_eval_sets=2)
    assert job_is_done(job, partial + records_for(job, ["y"]), expected_eval_sets=2)


def make_experiment() -> Experiment:
    jobs = [Job("a", "scratch", benchmark="ovrsiss"), Job("b", "scratch", benchmark="toyland"),
            Job("c", "finetune", benchmark="ovrsiss")]
    return Experiment(name="demo", description="", jobs=jobs, source=None)


def test_plan_sweep_skips_done_jobs_and_keeps_order():
    experiment = make_experiment()
    a, b, c = experiment.jobs
    records = records_for(a, ["s1", "s2", "s3", "s4"]) + records_for(c, ["s1"]) + records_for(b, ["t1"])
    eval_sets = {"ovrsiss": 4, "toyland": 1}
    plan = plan_sweep(experiment, records, eval_sets_of=eval_sets.__getitem__)
    # c has 1 of 4 ovrsiss sets: an interrupted run is redone.
    assert plan == SweepPlan(todo=[c], done=[a, b])
    assert plan_sweep(experiment, records) == SweepPlan(todo=[], done=[a, b, c])


def test_dry_run_lists_jobs_and_runs_nothing():
    experiment = make_experiment()
    a = experiment.jobs[0]
    console, buffer = quiet_console()
    calls: list[Job] = []
    plan = run_sweep(experiment, calls.append, records_for(a, ["s"]), dry_run=True, console=console)
    assert calls == []
    assert [job.method for job in plan.todo] == ["b", "c"]
    output = buffer.getvalue()
    assert a.run_id() in output and "done" in output and "to run" in output
    assert "2 job(s) would run" in output


def test_run_sweep_runs_only_todo_jobs_then_nothing_on_rerun():
    experiment = make_experiment()
    a, b, c = experiment.jobs
    store = records_for(b, ["t"])
    calls: list[Job] = []

    def run_job(job: Job) -> None:
        calls.append(job)
        store.extend(records_for(job, ["s"]))

    console, _ = quiet_console()
    run_sweep(experiment, run_job, list(store), console=console)
    assert calls == [a, c]

    calls.clear()
    console, buffer = quiet_console()
    plan = run_sweep(experiment, run_job, store, console=console)
    assert calls == []
    assert plan.todo == [] and len(plan.done) == 3
    assert "nothing to run" in buffer.getvalue()


def test_failing_job_stops_the_sweep():
    experiment = make_experiment()
    calls: list[str] = []

    def run_job(job: Job) -> None:
        calls.append(job.method)
        if job.method == "b":
            raise RuntimeError("out of memory")

    console, buffer = quiet_console()
    with pytest.raises(RuntimeError, match="out of memory"):
        run_sweep(experiment, run_job, [], console=console)
    assert calls == ["a", "b"]
    assert "failed" in buffer.getvalue()


def test_keep_going_runs_the_rest_and_reports_failures():
    experiment = make_experiment()
    calls: list[str] = []

    def run_job(job: Job) -> None:
        calls.append(job.method)
        if job.method in ("a", "c"):
            raise RuntimeError(f"broken {job.method}")

    console, buffer = quiet_console()
    with pytest.raises(OvbenchError, match=r"^2 of 3 job\(s\) of sweep 'demo' failed") as caught:
        run_sweep(experiment, run_job, [], console=console, keep_going=True)
    assert calls == ["a", "b", "c"]
    assert experiment.jobs[0].run_id() in str(caught.value)
    assert experiment.jobs[1].run_id() not in str(caught.value)
    assert "broken a" in buffer.getvalue() and "broken c" in buffer.getvalue()


def test_keep_going_does_not_swallow_keyboard_interrupt():
    def run_job(job: Job) -> None:
        raise KeyboardInterrupt

    console, _ = quiet_console()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(make_experiment(), run_job, [], console=console, keep_going=True)


def test_plan_reads_records_as_the_results_store_returns_them(tmp_path):
    """The job key written by a run survives the JSONL store and marks the job done."""
    from ovbench.results.store import ResultRecord, ResultStore, utc_timestamp

    experiment = make_experiment()
    a = experiment.jobs[0]
    store = ResultStore(tmp_path / "results.jsonl")
    store.append(
        ResultRecord(
            run_id=a.run_id(), method=a.method, protocol=a.protocol, benchmark=a.benchmark,
            eval_set=name, metrics={"mIoU": 50.0}, config_hash="abc", code_version="0",
            host="here", timestamp=utc_timestamp(), extra={"job_key": a.key()},
        )
        for name in ("s1", "s2")
    )
    plan = plan_sweep(experiment, store.read(), eval_sets_of=lambda benchmark: 2)
    assert plan.done == [a]
    assert [job.method for job in plan.todo] == ["b", "c"]


# --------------------------------------------------------------------------- protocols, default benchmark, names


def test_protocols_come_from_configs_protocols(tmp_path, monkeypatch):
    import ovbench.engine.sweep as sweep
    from ovbench.registry import protocol_names

    assert sweep.PROTOCOLS == tuple(protocol_names()) == ("finetune", "scratch", "zeroshot")
    (tmp_path / "protocols").mkdir()
    for name in ("scratch", "distill"):
        (tmp_path / "protocols" / f"{name}.yaml").write_text("train: true\n")
    monkeypatch.setenv("OVBENCH_CONFIGS", str(tmp_path))
    assert Job("m", "distill").protocol == "distill"
    with pytest.raises(ConfigError, match=r"unknown protocol 'zeroshot'; available: distill, scratch$"):
        Job("m", "zeroshot")
    path = write_experiment(tmp_path, "jobs: [{method: m, protocol: distil}]\n")
    with pytest.raises(ConfigError, match=r"unknown protocol 'distil' \(did you mean 'distill'\?\); available: distill, scratch"):
        load_experiment(path)


def test_jobs_without_a_benchmark_run_the_default_one(tmp_path):
    from ovbench.registry import DEFAULT_BENCHMARK

    experiment = load_experiment(write_experiment(tmp_path, "jobs: [{method: m, protocol: scratch}]\n"))
    assert [job.benchmark for job in experiment.jobs] == [DEFAULT_BENCHMARK]
    # the paper's experiments say which benchmark they mean
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        assert "benchmark: ovrsiss" in path.read_text(), path


def test_sweep_finds_shipped_experiments_by_name_from_any_directory(tmp_path):
    from cli_process import assert_one_error_line, ovbench

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = ovbench(tmp_path / "home", "sweep", "table2", "--dry-run", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "sweep table2: 16 to run, 0 done" in proc.stdout
    assert "dry run: 16 job(s) would run, 0 already done" in proc.stdout
    # a path still works, relative to where the command runs
    (elsewhere / "mine.yaml").write_text("jobs: [{method: clip-dense, protocol: zeroshot, benchmark: toyland}]\n")
    proc = ovbench(tmp_path / "home", "sweep", "mine.yaml", "--dry-run", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "sweep mine: 1 to run, 0 done" in proc.stdout
    proc = ovbench(tmp_path / "home", "sweep", "tabel2", "--dry-run", cwd=elsewhere)
    assert_one_error_line(proc, "unknown experiment 'tabel2' (did you mean 'table2'?); available: fig5, table2, table3, table4")
    proc = ovbench(tmp_path / "home", "sweep", "absent.yaml", "--dry-run", cwd=elsewhere)
    assert_one_error_line(proc, "experiment file not found: absent.yaml")
    assert not (tmp_path / "home" / "runs").exists()
