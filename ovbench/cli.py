"""The `ovbench` command line: every command is a thin call into the modules below it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import click
import typer
from rich.console import Console
from rich.table import Table

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
stdout_console = Console(soft_wrap=True)


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
        None, "--benchmark", "-b", help="Benchmark whose evaluation sets to run; default toyland (see `ovbench benchmarks`)."
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
    protocol: str = typer.Option("zeroshot", "--protocol", help="Protocol label stored with the records."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Root folder of the datasets (default $OVBENCH_DATA)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward (default from the method YAML)."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Load checkpoints without weights_only (only for files you trust)."
    ),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    seed: int = typer.Option(0, "--seed", help="Seed for anything initialised at random (weights not loaded from a file)."),
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
    table = Table(title=f"{method} — mIoU per evaluation set", title_justify="left")
    for column in ("evaluation set", "images", "mIoU", "mAcc", "pAcc", "fwIoU"):
        table.add_column(column, justify="left" if column == "evaluation set" else "right")
    for result in results:
        m = result.metrics
        table.add_row(result.dataset, str(result.num_images), f"{m.mIoU:.2f}", f"{m.mAcc:.2f}", f"{m.pAcc:.2f}", f"{m.fwIoU:.2f}")
    stdout_console.print(table)


@app.command("table")
def table_command(
    fmt: str = typer.Option("plain", "--format", "-f", help="markdown, latex, csv or plain."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table to this file instead of stdout."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="Only records of this benchmark."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Only records of this protocol."),
    method: Optional[str] = typer.Option(None, "--method", help="Only records of this method."),
    metric: str = typer.Option("mIoU", "--metric", help="mIoU, mAcc, pAcc or fwIoU."),
    precision: int = typer.Option(1, "--precision", help="Decimals shown."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
) -> None:
    """Render the results store as a methods x evaluation sets table (mean ± std over seeds, Avg column).

    Example: ovbench table --format markdown --benchmark toyland
    """
    from ovbench.errors import ConfigError
    from ovbench.results.store import ResultStore
    from ovbench.results.table import build_table, render_table

    if metric not in ("mIoU", "mAcc", "pAcc", "fwIoU"):
        raise ConfigError(f"unknown metric '{metric}'; choose mIoU, mAcc, pAcc or fwIoU")
    records = ResultStore(store).read()
    table = build_table(records, value=metric, benchmark=benchmark, protocol=protocol, method=method)
    text = render_table(table, fmt, precision=precision)
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        from ovbench.fileio import atomic_write_text

        atomic_write_text(out, text if text.endswith("\n") else text + "\n")
        stderr_console.print(f"wrote {out}")


@app.command("methods")
def methods_command() -> None:
    """List the available methods (built-in YAML configs and installed plugins)."""
    from ovbench.registry import _raw_method_config, method_names

    table = Table("method", "adapter", "description")
    for name in method_names():
        try:
            raw = _raw_method_config(name)
            table.add_row(name, str(raw.get("adapter", "?")), str(raw.get("description", "")))
        except OvbenchError as exc:
            table.add_row(name, "[red]broken[/red]", str(exc))
    stdout_console.print(table)


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


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and exit code 1."""
    try:
        app(args=argv, standalone_mode=False)
    except OvbenchError as exc:
        stderr_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        stderr_console.print("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        stderr_console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
