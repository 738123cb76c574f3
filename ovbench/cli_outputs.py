"""`plot`, `visualize` and `runs`: figures and run listings."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
import typer.core

from ovbench.errors import ConfigError, OvbenchError
from ovbench.progress import stderr_console

plot_app = typer.Typer(
    name="plot",
    help="Figures from the results store and training logs, as PNG and SVG.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_METRICS = ("mIoU", "mAcc", "pAcc", "fwIoU")


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise ConfigError(f"unknown metric '{metric}'; choose {', '.join(_METRICS[:-1])} or {_METRICS[-1]}")


def _benchmark_sets() -> dict[str, list[str]]:
    """Each registered benchmark's evaluation sets: what a row's Avg averages (as `ovbench table`)."""
    from ovbench.registry import benchmark_names, load_benchmark

    return {name: load_benchmark(name).eval_sets for name in benchmark_names()}


def _wrote(paths) -> None:
    stderr_console.print(f"wrote {', '.join(str(path) for path in paths)}", highlight=False, markup=False)


def _notes(notes) -> None:
    for note in notes:
        stderr_console.print(f"note: {note}", highlight=False, markup=False)


@plot_app.command("size")
def plot_size_command(
    method: str = typer.Option("gsnet", "--method", "-m", help="Method whose runs to plot."),
    protocol: str = typer.Option("scratch", "--protocol", "-p", help="Protocol of the runs."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only records of this benchmark (needed when the store holds several)."),
    train_set: Optional[str] = typer.Option(
        None, "--train-set", help="Subsets of this training set (its family: landdiscover50k also takes landdiscover10k and :size=N subsets); default: the benchmark's."
    ),
    label: Optional[str] = typer.Option(None, "--label", help="Only the runs of this sweep label."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Only runs trained for this many iterations."),
    metric: str = typer.Option("mIoU", "--metric", help="mIoU, mAcc, pAcc or fwIoU."),
    out: Path = typer.Option(Path("size"), "--out", "-o", help="Output stem: writes STEM.png and STEM.svg (a .png/.svg suffix or a folder also works)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
) -> None:
    """Fig. 5: the metric per evaluation set, and their Avg, against the training-set size.

    One point per training-set size (the records' train_size) of the benchmark's training set
    and its subsets, the mean over its runs with error bars of the standard deviation over
    seeds; needs results at two or more sizes.

    Example: ovbench plot size --method gsnet --protocol scratch --benchmark ovrsiss --out fig5
    """
    from ovbench.results.plots import save_figure, size_data, size_figure
    from ovbench.results.store import ResultStore

    _check_metric(metric)
    from ovbench.registry import benchmark_names, load_benchmark

    data = size_data(ResultStore(store).read(), method=method, protocol=protocol, benchmark=benchmark,
                     train_set=train_set, label=label, iterations=iterations, value=metric,
                     benchmark_sets=_benchmark_sets(),
                     benchmark_train_sets={name: load_benchmark(name).train_set for name in benchmark_names()})
    _wrote(save_figure(size_figure(data), out, "size"))
    _notes(data.notes)


@plot_app.command("compare")
def plot_compare_command(
    methods: Optional[List[str]] = typer.Option(None, "--method", "-m", help="Plot this method's configurations (repeatable; bars in this order). Default: all."),
    labels: Optional[List[str]] = typer.Option(None, "--label", help="Plot the configurations of this sweep label (repeatable)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", "-p", help="Only records of this protocol."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Only records of this benchmark (needed when the store holds several)."),
    metric: str = typer.Option("mIoU", "--metric", help="mIoU, mAcc, pAcc or fwIoU."),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="Output stem: writes STEM.png and STEM.svg (a .png/.svg suffix or a folder also works)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
) -> None:
    """Grouped bars: a group per evaluation set and Avg, a bar per configuration.

    A configuration is a row of `ovbench table`; its bar is the mean over its runs, with an
    error bar of the standard deviation over seeds.

    Example: ovbench plot compare --method catseg --method gsnet --protocol scratch --out compare
    """
    from ovbench.results.plots import compare_data, compare_figure, save_figure
    from ovbench.results.store import ResultStore

    _check_metric(metric)
    data = compare_data(ResultStore(store).read(), methods=list(methods or []), labels=list(labels or []),
                        protocol=protocol, benchmark=benchmark, value=metric, benchmark_sets=_benchmark_sets())
    _wrote(save_figure(compare_figure(data), out, "compare"))
    _notes(data.notes)


@plot_app.command("loss")
def plot_loss_command(
    run: str = typer.Argument(..., help="Run id (under $OVBENCH_HOME/runs, see `ovbench runs`) or run directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output stem: writes STEM.png and STEM.svg (default loss-RUN_ID)."),
) -> None:
    """A run's training curves from its log.jsonl: loss terms and learning rates.

    Every logged loss term, the total in bold, and the learning rate of each optimiser group
    (groups on the same schedule drawn once).

    Example: ovbench plot loss gsnet-20261127T051500-3f9a1c --out loss
    """
    from ovbench.config import load_yaml
    from ovbench.results.plots import loss_figure, save_figure
    from ovbench.runner import find_run
    from ovbench.runs import read_log

    run_dir = find_run(run)
    request = load_yaml(run_dir / "request.yaml")
    run_id = str(request.get("run_id") or run_dir.name)
    entries = read_log(run_dir)
    if not entries:
        raise OvbenchError(f"run {run_id} has no logged iteration yet ({run_dir / 'log.jsonl'})")
    title = f"{run_id}: {request.get('method', '?')} ({request.get('protocol', '?')})"
    _wrote(save_figure(loss_figure(entries, title), out if out is not None else Path(f"loss-{run_id}"), f"loss-{run_id}"))


class _PairOptionCommand(typer.core.TyperCommand):
    """Reads ``--compare METHOD CHECKPOINT`` as one value of two words.

    typer has no repeatable two-value option; before parsing, each pair is joined with a NUL
    (a character no command-line argument can hold) and the command splits it again.
    """

    pair_options = ("--compare",)

    def parse_args(self, ctx, args):
        joined, index = [], 0
        while index < len(args):
            token = args[index]
            if token == "--":
                joined += args[index:]
                break
            if token in self.pair_options:
                pair = args[index + 1 : index + 3]
                if len(pair) < 2 or any(part.startswith("-") and part != "-" for part in pair):
                    ctx.fail(f"{token} needs two values: METHOD CHECKPOINT (CHECKPOINT 'none' for no weights file)")
                joined += [token, "\0".join(pair)]
                index += 3
                continue
            joined.append(token)
            index += 1
        return super().parse_args(ctx, joined)


def _checkpoint(text: str | None) -> str | None:
    return None if text is None or text.lower() in ("none", "-") else text


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ovbench` app."""
    app.add_typer(plot_app, name="plot", help="Figures: size (Fig. 5), compare (bars per set), loss (training curves).")
    app.command("visualize", cls=_PairOptionCommand)(visualize_command)
    app.command("runs")(runs_command)


def visualize_command(
    method: str = typer.Option(..., "--method", "-m", help="Method of the first prediction column (see `ovbench methods`)."),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", "-c",
        help="Its weights: a file, or a run id / run directory for the run's latest checkpoint (an ovbench checkpoint brings its own scale); default none: a training-free method's own weights, or random ones.",
    ),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset to draw images from (see `ovbench datasets`), e.g. toyland-flood."),
    compare: Optional[List[str]] = typer.Option(
        None, "--compare", metavar="METHOD CHECKPOINT",
        help="Another model as a further column (repeatable); CHECKPOINT as --checkpoint, or 'none' for no weights file.",
    ),
    n: int = typer.Option(4, "--n", "-n", help="How many images (rows)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Pick the images at random with this seed (default: the first N)."),
    indices: Optional[List[int]] = typer.Option(None, "--index", help="Show exactly this image (repeatable; 0-based position in the dataset)."),
    scale: Optional[str] = typer.Option(None, "--scale", help="Model scale overlay for every model (e.g. tiny); default: each checkpoint's own."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Root folder of the datasets (default $OVBENCH_DATA)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Load checkpoints without weights_only (only for files you trust)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default visualize-DATASET.png; a folder: that name in it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fig. 4: image, ground truth and predictions side by side, as a PNG.

    One row per image; a column per model (--method, then each --compare), predicting with
    the dataset's vocabulary; one legend of the classes shown (ground-truth pixels the metric ignores: black).

    Example: ovbench visualize --method gsnet --checkpoint RUN_ID --dataset toyland-flood --compare catseg OTHER_RUN_ID
    """
    from ovbench.visualize import ModelSpec, visualize

    models = [ModelSpec(method, _checkpoint(checkpoint))]
    for value in compare or []:
        other_method, _, other_checkpoint = value.partition("\0")
        if not other_checkpoint:
            raise ConfigError("--compare needs two values: METHOD CHECKPOINT (CHECKPOINT 'none' for no weights file)")
        models.append(ModelSpec(other_method, _checkpoint(other_checkpoint)))
    from ovbench.progress import ProgressReporter

    with ProgressReporter(quiet=quiet, console=stderr_console) as progress:
        path = visualize(models, dataset, out, progress=progress, n=n, seed=seed, indices=list(indices or []),
                         data_root=data_root, device=device, scale=None if scale == "full" else scale,
                         trust_checkpoint=trust_checkpoint)
    _wrote([path])


def runs_command(
    states: Optional[List[str]] = typer.Option(None, "--state", help="Only runs in this state: running, interrupted, finished (repeatable)."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Only runs of this method."),
    fmt: str = typer.Option("plain", "--format", "-f", help="plain (a table) or csv."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file to look for the runs' records (default: the one each run wrote to)."),
) -> None:
    """List the training runs: id, method, protocol, training set, iterations, state, path.

    Runs live in $OVBENCH_HOME/runs. State: running (a process holds the run's lock),
    finished (trained to its iterations, a record for each evaluation set) or interrupted
    (continue it with `ovbench run --resume RUN_ID`).

    Example: ovbench runs --state interrupted
    """
    from rich.markup import escape
    from rich.table import Table

    from ovbench.cli import stdout_console
    from ovbench.runs import RUN_STATES, list_runs, runs_root

    if fmt not in ("plain", "csv"):
        raise ConfigError(f"unknown format '{fmt}'; choose plain or csv")
    for state in states or []:
        if state not in RUN_STATES:
            raise ConfigError(f"unknown run state '{state}'; choose {', '.join(RUN_STATES)}")
    runs = [run for run in list_runs(store)
            if (not states or run.state in states) and (method is None or run.method == method)]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["run_id", "method", "protocol", "train_set", "iterations", "target_iterations",
                         "evaluated", "eval_sets", "state", "updated", "path"])
        for run in runs:
            writer.writerow([run.run_id, run.method or "", run.protocol or "", run.train_set or "", run.iterations,
                             "" if run.target_iterations is None else run.target_iterations, run.evaluated,
                             "" if run.eval_sets is None else run.eval_sets, run.state, _when(run.updated), run.path])
        sys.stdout.write(buffer.getvalue())
        return
    if not runs:
        where = runs_root()
        what = " matching the filters" if states or method else ""
        stderr_console.print(f"no runs{what} in {where}", highlight=False, markup=False)
        return
    styles = {"running": "bold green", "interrupted": "yellow", "finished": "", "unknown": "red"}
    table = Table("run", "method", "protocol", "train set", "iterations", "evaluated", "state", "updated", "path")
    for run in runs:
        state = f"[{styles[run.state]}]{run.state}[/]" if styles[run.state] else run.state
        table.add_row(escape(run.run_id), escape(run.method or "?"), escape(run.protocol or "?"),
                      escape(run.train_set or "-"), run.iterations_text, run.evaluated_text, state,
                      _when(run.updated), escape(str(run.path)))
    stdout_console.print(table)
    for run in runs:  # after the table, one line each: who holds a lock, what could not be read
        if run.holder:
            stdout_console.print(f"{run.run_id}: running in {run.holder}", markup=False, highlight=False)
        if run.problem:
            stdout_console.print(f"{run.run_id}: {run.problem}", markup=False, highlight=False)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""
