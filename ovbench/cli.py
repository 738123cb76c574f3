"""The `ovbench` command line: every command is a thin call into the modules below it."""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ovbench import __version__
from ovbench.errors import OvbenchError
from ovbench.progress import stderr_console

app = typer.Typer(
    name="ovbench",
    help=(
        "Benchmark harness for open-vocabulary semantic segmentation of remote-sensing images.\n\n"
        "With no data configured every command uses the embedded synthetic benchmark 'toyland'; "
        "point --data-root (or OVBENCH_DATA) at your datasets for the real ones. Results are "
        "appended to $OVBENCH_HOME/results.jsonl (default ~/.ovbench)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Piped output (logs, CI) gets room for wide tables instead of rich's 80-column fallback.
stdout_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200, emoji=False)


def _version_callback(value: bool) -> None:
    if value:
        stdout_console.print(f"ovbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


@app.command("eval")
def eval_command(
    method: str = typer.Option(..., "--method", "-m", help="Method name (see `ovbench methods`)."),
    benchmark: Optional[str] = typer.Option(
        None, "--benchmark", "-b",
        help="Benchmark whose evaluation sets to run: a name (see `ovbench benchmarks`) or a benchmark YAML path; default toyland.",
    ),
    datasets: Optional[List[str]] = typer.Option(
        None, "--dataset", "-d", help="Evaluate on this dataset instead of a benchmark (repeatable; a name or a spec YAML path)."
    ),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Model weights to evaluate (ovbench or official checkpoint)."),
    clip_weights: Optional[str] = typer.Option(
        None, "--clip-weights", help="CLIP weights: an OpenAI .pt, an open_clip checkpoint, or an open_clip pretrained tag."
    ),
    scale: Optional[str] = typer.Option(
        None, "--scale", help="Model scale overlay from the method YAML (e.g. tiny); default: the benchmark's, or full with --clip-weights."
    ),
    protocol: Optional[str] = typer.Option(
        None, "--protocol", help="Protocol label stored with the records; default: the run's for a training checkpoint, else zeroshot."
    ),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Root folder of the datasets (default $OVBENCH_DATA)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward (default from the method YAML)."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Load checkpoints without weights_only (only for files you trust)."
    ),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    seed: int = typer.Option(0, "--seed", help="Seed for anything initialised at random (weights not loaded from a file)."),
    per_class: bool = typer.Option(False, "--per-class", help="Also print IoU and accuracy per class for each set."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides, e.g. inference.mode=sliding eval.batch_size=2."),
) -> None:
    """Evaluate a method on every evaluation set of a benchmark and append one record per set.

    Example: ovbench eval --method clip-dense --benchmark toyland
    """
    from ovbench.runner import EvalRequest, run_evaluation

    request = EvalRequest(
        method=method,
        benchmark=benchmark,
        datasets=list(datasets or []),
        checkpoint=checkpoint,
        clip_weights=clip_weights,
        scale=scale,
        protocol=protocol,
        data_root=data_root,
        device=device,
        batch_size=batch_size,
        trust_checkpoint=trust_checkpoint,
        store_path=store,
        quiet=quiet,
        overrides=list(overrides or []),
        seed=seed,
    )
    results = run_evaluation(request, stderr_console)
    _print_results(f"{method} — mIoU per evaluation set", results, per_class)


@app.command("run")
def run_command(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method name (see `ovbench methods`) or a method YAML path."),
    protocol: str = typer.Option("scratch", "--protocol", "-p", help="scratch, finetune or zeroshot (see configs/protocols)."),
    benchmark: Optional[str] = typer.Option(
        None, "--benchmark", "-b",
        help="Benchmark: its training set and evaluation sets; a name (see `ovbench benchmarks`) or a benchmark YAML path; default toyland.",
    ),
    train_set: Optional[str] = typer.Option(None, "--train-set", help="Train on this dataset instead of the benchmark's."),
    eval_sets: Optional[List[str]] = typer.Option(
        None, "--eval-set",
        help="Evaluate on this dataset instead of the benchmark's evaluation sets (repeatable; a dataset name or a spec YAML path).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation, data order and augmentation."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Training iterations (default from the method YAML)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Start from these weights (finetune: the COCO-Stuff checkpoint)."),
    clip_weights: Optional[str] = typer.Option(None, "--clip-weights", help="CLIP weights file or open_clip tag."),
    scale: Optional[str] = typer.Option(None, "--scale", help="Model scale overlay (e.g. tiny); default: the benchmark's."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Root folder of the datasets (default $OVBENCH_DATA)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (under torchrun: the local GPU)."),
    weights_dir: Optional[Path] = typer.Option(
        None, "--weights-dir", help="Folder with the authors' checkpoints under their published names (default $OVBENCH_WEIGHTS); finetune looks there."
    ),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Name of the run directory (default: generated)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the run with this id (or directory) from its last checkpoint."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Load checkpoints without weights_only."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (for logs)."),
    per_class: bool = typer.Option(False, "--per-class", help="Also print IoU and accuracy per class for each set."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides, e.g. train.batch_size=8 train.optimizer.lr=1e-4."),
) -> None:
    """Train (or fine-tune) a method under a protocol, then evaluate it on every evaluation set.

    Example: ovbench run --method gsnet --protocol scratch
    Resume:  ovbench run --resume RUN_ID
    Several GPUs: torchrun --nproc_per_node 4 -m ovbench run --method gsnet --protocol scratch
    """
    from ovbench.runner import RunRequest, find_run, load_run_request, run_training

    if resume is not None:
        given = [name for name, value in (("--method", method), ("--checkpoint", checkpoint), ("--run-id", run_id),
                                          ("--eval-set", eval_sets)) if value]
        if given or overrides:
            raise OvbenchError(f"--resume continues a run as it was configured; drop {', '.join(given) or 'the overrides'}")
        run_dir = find_run(resume)
        request = load_run_request(run_dir)
        request.quiet = quiet
    else:
        if method is None:
            raise OvbenchError("--method is required (or --resume RUN_ID)")
        request = RunRequest(
            method=method, protocol=protocol, benchmark=benchmark, train_set=train_set, seed=seed, iters=iters,
            checkpoint=str(checkpoint) if checkpoint else None, clip_weights=clip_weights, scale=scale,
            data_root=str(data_root) if data_root else None, device=device, trust_checkpoint=trust_checkpoint,
            store_path=str(store) if store else None, quiet=quiet, overrides=list(overrides or []), run_id=run_id,
            weights_dir=str(weights_dir) if weights_dir else None, eval_sets=list(eval_sets or []),
        )
    outcome = run_training(request, stderr_console, resume=resume is not None)
    if outcome.results:
        _print_results(f"{Path(request.method).stem if request.method.endswith('.yaml') else request.method} ({request.protocol}, {outcome.iterations} iterations) — run {outcome.run_id}", outcome.results, per_class)


@app.command("sweep")
def sweep_command(
    experiment: str = typer.Argument(
        ..., help="Experiment: a shipped one by name (table2, table3, table4, fig5; see configs/experiments) or an experiment YAML path."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs and their status; run nothing."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Run the remaining jobs when one fails."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Root folder of the datasets (default $OVBENCH_DATA)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    weights_dir: Optional[Path] = typer.Option(
        None, "--weights-dir", help="Folder with the authors' COCO-Stuff checkpoints under their published names (finetune jobs)."
    ),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run every job of an experiment (method x protocol x training set x seed), skipping the
    jobs whose records already exist, so an interrupted sweep resumes where it stopped.

    Example: ovbench sweep table2 --dry-run
    """
    from ovbench.engine.sweep import load_experiment, run_sweep
    from ovbench.registry import find_experiment, load_benchmark, method_names
    from ovbench.results.store import ResultStore

    loaded = load_experiment(find_experiment(experiment))
    records = ResultStore(store).read()

    def run_job(job) -> None:
        from ovbench.runner import RunRequest, run_training, runs_dir  # torch: only when a job runs

        request = RunRequest(
            method=job.method, protocol=job.protocol, benchmark=job.benchmark, train_set=job.train_set, seed=job.seed,
            data_root=str(data_root) if data_root else None, device=device, store_path=str(store) if store else None,
            quiet=quiet, overrides=list(job.overrides), run_id=job.run_id(), job_key=job.key(), label=job.label,
            weights_dir=str(weights_dir) if weights_dir else None,
        )
        # a job interrupted earlier left its run directory: continue it from its checkpoint
        resume = (runs_dir() / job.run_id() / "request.yaml").exists()
        run_training(request, stderr_console, resume=resume)

    run_sweep(
        loaded, run_job, records, dry_run=dry_run, keep_going=keep_going, console=stdout_console,
        eval_sets_of=lambda name: len(load_benchmark(name).eval_sets),
        method_available=lambda name, known=set(method_names()): name in known or Path(name).is_file(),
    )


def _print_results(title: str, results, per_class: bool = False) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("evaluation set", "images", "mIoU", "mAcc", "pAcc", "fwIoU"):
        table.add_column(column, justify="left" if column == "evaluation set" else "right")
    for result in results:
        m = result.metrics
        table.add_row(result.dataset, str(result.num_images), f"{m.mIoU:.2f}", f"{m.mAcc:.2f}", f"{m.pAcc:.2f}", f"{m.fwIoU:.2f}")
    stdout_console.print(table)
    if not per_class:
        return
    for result in results:
        classes = Table(title=f"{result.dataset} — IoU / Acc per class (blank: no ground-truth pixels)", title_justify="left")
        for column in ("class", "IoU", "Acc"):
            classes.add_column(column, justify="left" if column == "class" else "right")
        for name, iou in result.metrics.per_class_iou.items():
            acc = result.metrics.per_class_acc.get(name)
            classes.add_row(name, "" if iou is None else f"{iou:.2f}", "" if acc is None else f"{acc:.2f}")
        stdout_console.print(classes)


@app.command("table")
def table_command(
    kind: str = typer.Option(
        "all", "--kind", "-k",
        help="all (every configuration, the default), main (Table 2), ablation (Table 3), trainset (Table 4), "
             "size (Fig. 5's numbers) or classes (per-class IoU with seen / unseen / hIoU).",
    ),
    fmt: str = typer.Option("plain", "--format", "-f", help="markdown, latex, csv or plain."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table to this file instead of stdout."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="Only records of this benchmark (study kinds: default ovrsiss, else the one present)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Only records of this protocol."),
    method: Optional[str] = typer.Option(None, "--method", help="Only records of this method (ablation/trainset/size: the method studied, default gsnet)."),
    eval_set: Optional[str] = typer.Option(None, "--eval-set", help="classes: only this evaluation set (default: one table per set)."),
    metric: str = typer.Option("mIoU", "--metric", help="mIoU, mAcc, pAcc or fwIoU."),
    precision: int = typer.Option(2, "--precision", help="Decimals shown (the paper's two by default)."),
    reported: bool = typer.Option(False, "--reported", help="Put the paper's published rows beside the reproduced ones, with the delta."),
    ci: bool = typer.Option(False, "--ci", help="Add bootstrap 95%% intervals over images (from the per-image counts)."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for --ci."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
) -> None:
    """Render the results store as tables: every configuration (default), or the study's tables.

    Best and second best per column are computed (bold / underlined in markdown and LaTeX, * / +
    in plain text); cells are mean ± std over seeds.

    Example: ovbench table --kind main --reported --format markdown
    """
    from ovbench.errors import ConfigError
    from ovbench.registry import benchmark_names, load_benchmark
    from ovbench.results.store import ResultStore

    if metric not in ("mIoU", "mAcc", "pAcc", "fwIoU"):
        raise ConfigError(f"unknown metric '{metric}'; choose mIoU, mAcc, pAcc or fwIoU")
    records = ResultStore(store).read()
    # a row's Avg runs over its benchmark's evaluation sets, as the benchmark spec lists them
    benchmarks = {name: load_benchmark(name) for name in benchmark_names()}
    benchmark_sets = {name: spec.eval_sets for name, spec in benchmarks.items()}
    notes: list[str] = []
    if kind == "all":
        from ovbench.results.table import build_table, render_table, table_notes

        if reported or ci:
            raise ConfigError("--reported and --ci need a study table: add --kind main (or ablation, trainset, size)")
        table = build_table(records, value=metric, benchmark=benchmark, protocol=protocol, method=method,
                            benchmark_sets=benchmark_sets)
        text = render_table(table, fmt, precision=precision)
        notes = table_notes(table)
    else:
        from ovbench.results.reported import load_reported
        from ovbench.results.study import build_study_tables, render_study_table

        tables = build_study_tables(
            records, kind, benchmark_sets=benchmark_sets, benchmark=benchmark, method=method, protocol=protocol,
            eval_set=eval_set, study=load_reported(), with_reported=reported, ci=ci,
            store_path=ResultStore(store).path, resamples=resamples,
            benchmark_train_sets={name: spec.train_set for name, spec in benchmarks.items()},
            value=metric, precision=precision,
        )
        readable = fmt.lower() in ("plain", "markdown")
        parts = [render_study_table(table, fmt, title=readable, notes=readable) for table in tables]
        text = ("\n" if readable else "").join(parts)
        if not readable:
            notes = [note for table in tables for note in table.notes]
    text = text if text.endswith("\n") else text + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        from ovbench.fileio import atomic_write_text

        atomic_write_text(out, text)
        stderr_console.print(f"wrote {out}", highlight=False, markup=False)
    if fmt.lower() in ("csv", "latex"):  # their text stays machine-readable: the notes go to stderr
        for note in notes:
            stderr_console.print(f"note: {note}", highlight=False, markup=False)


@app.command("check-adapter")
def check_adapter_command(
    name: str = typer.Argument(
        ..., help="Method name (see `ovbench methods`) or a method YAML path; an adapter under development: a YAML with adapter: module:Class."
    ),
    scale: Optional[str] = typer.Option(None, "--scale", help="Scale overlay; default tiny when the method has one ('full' = none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random initialisation and the test inputs."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides, e.g. model.pad_len=0 inference.mode=whole."),
) -> None:
    """Check that a method keeps the adapter contract: score shapes for 1, 5 and 300 classes,
    vocabulary-order equivariance, batch independence, deterministic eval, a finite loss whose
    gradient reaches exactly the optimiser groups, and checkpoint round-trips. Exits 1 if a check fails.

    Example: ovbench check-adapter gsnet
    """
    from rich.markup import escape

    from ovbench.contract import run_contract, summarize
    from ovbench.registry import method_scales

    if scale is None:
        scale = "tiny" if "tiny" in method_scales(name) else None
    elif scale == "full":
        scale = None
    results = run_contract(name, scale=scale, overrides=list(overrides or []), seed=seed)
    styles = {"pass": "green", "fail": "bold red", "skip": "dim"}
    table = Table(title=f"{escape(name)} — adapter contract ({f'{scale} scale' if scale else 'no scale overlay'})", title_justify="left")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    for result in results:
        table.add_row(result.name, f"[{styles[result.status]}]{result.status}[/]", escape(result.detail))
    stdout_console.print(table)
    failed = [result.name for result in results if result.failed]
    verdict = f"[bold red]FAILED[/bold red] ({escape(', '.join(failed))})" if failed else "[green]OK[/green]"
    stdout_console.print(f"{verdict}: {summarize(results)}")
    if failed:
        raise typer.Exit(code=1)


@app.command("methods")
def methods_command() -> None:
    """List the available methods (built-in YAML configs and installed plugins)."""
    from ovbench.registry import _raw_method_config, method_names

    table = Table("method", "adapter", "description")
    broken = []
    for name in method_names():
        try:
            raw = _raw_method_config(name)
            table.add_row(name, str(raw.get("adapter", "?")), str(raw.get("description", "")))
        except OvbenchError as exc:
            table.add_row(name, "[red]broken[/red]", "cannot be loaded (see below)")
            broken.append(f"broken method {name}: {exc}")
    stdout_console.print(table)
    for line in broken:  # after the table, unwrapped: one line each, whatever the width
        stdout_console.print(line, markup=False, highlight=False)


@app.command("datasets")
def datasets_command() -> None:
    """List the available datasets (embedded toyland splits and dataset specs)."""
    from ovbench.registry import dataset_names

    table = Table("dataset", "source")
    from ovbench.data.toyland import TOYLAND_SPLITS

    for name in dataset_names():
        table.add_row(name, "embedded (generated)" if name in TOYLAND_SPLITS else "folder (needs --data-root)")
    stdout_console.print(table)


@app.command("benchmarks")
def benchmarks_command() -> None:
    """List the available benchmarks and their evaluation sets."""
    from ovbench.registry import benchmark_names, load_benchmark

    table = Table("benchmark", "train set", "evaluation sets", "description")
    for name in benchmark_names():
        spec = load_benchmark(name)
        table.add_row(name, spec.train_set or "-", ", ".join(spec.eval_sets), spec.description)
    stdout_console.print(table)


def _mount_command_modules() -> None:
    """Commands that live in their own modules (each registers on `app` or a sub-app)."""
    from ovbench.cli_data import data_app
    from ovbench import cli_outputs, cli_predict, cli_profile, cli_results

    app.add_typer(data_app, name="data", help="Datasets: check, info, prepare raw releases, where to get them.")
    for module in (cli_results, cli_outputs, cli_predict, cli_profile):
        module.register(app)


_mount_command_modules()


def _click_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...], type | None]:
    """(usage-error, exit, abort) exception classes of the click that typer runs on, and
    click's NoArgsIsHelpError where it has one.

    typer 0.12-0.15 drive the installed `click`; typer 0.29 bundles its own copy
    (`typer._click`) whose classes are unrelated to `click`'s, and raises its own
    `typer.Exit`/`typer.Abort`. Looking the classes up through typer itself keeps the
    handlers below right whichever typer is installed.
    """
    import typer.core

    bundled = getattr(typer.core, "_click", None) or getattr(typer.core, "click", None) or click
    exceptions = bundled.exceptions

    def present(*candidates) -> tuple[type, ...]:
        return tuple(dict.fromkeys(c for c in candidates if isinstance(c, type)))

    usage = present(exceptions.ClickException)
    exits = present(getattr(exceptions, "Exit", None), getattr(typer, "Exit", None))
    aborts = present(getattr(exceptions, "Abort", None), getattr(typer, "Abort", None))
    return usage, exits, aborts, getattr(exceptions, "NoArgsIsHelpError", None)


def print_error(message: str) -> None:
    """One `error:` line on stderr; the message is shown as typed, never as rich markup."""
    stderr_console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: returns the process exit status.

    0 success; 1 a user error (one `error:` line, no traceback) or a failed check;
    2 a command-line usage error (usage line, hint, error); 130 an interrupt (Ctrl-C).
    """
    from ovbench.errors import describe_os_error

    usage_errors, exits, aborts, no_args_is_help = _click_classes()
    try:
        returned = app(args=argv, standalone_mode=False, prog_name="ovbench")
    except OvbenchError as exc:
        print_error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except usage_errors as exc:
        if no_args_is_help is not None and isinstance(exc, no_args_is_help):
            exc.show()  # a bare `ovbench` or `ovbench data`: its help, as older click printed it
            return 0
        exc.show()
        return exc.exit_code
    except aborts:
        print_error("interrupted")
        return 130
    except exits as exc:
        return exc.exit_code
    except OSError as exc:
        # a file-system failure outside the places that already name their path (EPIPE: the
        # reader of our output went away; nothing to say to it)
        if exc.errno == errno.EPIPE:
            return 1
        print_error(describe_os_error(exc))
        return 1
    # typer 0.29 hands back the status of a typer.Exit, and turns Ctrl-C into 130, as a value
    if isinstance(returned, int) and not isinstance(returned, bool) and returned != 0:
        if returned == 130:
            print_error("interrupted")
        return returned
    return 0


if __name__ == "__main__":
    sys.exit(main())
