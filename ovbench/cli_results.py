"""`compare` and `report`: statistics and documents built from the results store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ovbench` app."""
    app.command("compare")(compare_command)
    app.command("report")(report_command)


def compare_command(
    first: str = typer.Argument(..., help="Row A: a run id, a label, a method, or METHOD:PROTOCOL (e.g. gsnet:scratch)."),
    second: str = typer.Argument(..., help="Row B, chosen the same way."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="Only records of this benchmark."),
    resamples: int = typer.Option(2000, "--resamples", help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampling (the same seed gives the same interval)."),
    precision: int = typer.Option(2, "--precision", help="Decimals shown."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
) -> None:
    """Paired bootstrap of mIoU(A) - mIoU(B) over the images of each evaluation set.

    Both rows are scored on the same image resamples; a difference whose 95% interval excludes 0
    is marked significant. Needs the per-image counts every evaluation stores.

    Example: ovbench compare gsnet:scratch catseg:scratch
    """
    from rich.table import Table

    from ovbench.cli import stdout_console
    from ovbench.registry import benchmark_names, load_benchmark
    from ovbench.results.compare import compare_rows
    from ovbench.results.store import ResultStore

    result_store = ResultStore(store)
    benchmark_sets = {name: load_benchmark(name).eval_sets for name in benchmark_names()}
    comparison = compare_rows(result_store.read(), first, second, store_path=result_store.path, benchmark=benchmark,
                              benchmark_sets=benchmark_sets, resamples=resamples, seed=seed)
    table = Table(title=f"{first} vs {second} on {comparison.benchmark}: mIoU, paired bootstrap "
                        f"({comparison.resamples} resamples, 95% interval)", title_justify="left")
    for column in ("evaluation set", "A", "B", "A - B", "95% interval", "significant"):
        table.add_column(column, justify="left" if column in ("evaluation set", "significant") else "right")
    p = precision
    for name, (mean_a, mean_b, interval) in comparison.rows.items():
        verdict = ("yes: A better" if interval.low > 0 else "yes: B better") if interval.excludes_zero() else "no"
        table.add_row(name, f"{mean_a:.{p}f}", f"{mean_b:.{p}f}", f"{interval.estimate:+.{p}f}",
                      f"[{interval.low:+.{p}f}, {interval.high:+.{p}f}]", verdict)
    stdout_console.print(table)


def report_command(
    out: Path = typer.Option(Path("ovbench-report"), "--out", "-o", help="Folder for report.md, report.html and the figures."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="Benchmark to report (default ovrsiss, else the one present)."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the intervals."),
    store: Optional[Path] = typer.Option(None, "--store", help="Results file (default $OVBENCH_HOME/results.jsonl)."),
) -> None:
    """One self-contained report: tables, figures, per-class IoU, intervals and where every number came from.

    Writes DIR/report.md (figures beside it) and DIR/report.html (figures embedded; opens offline).

    Example: ovbench report --out my-report
    """
    from ovbench.progress import stderr_console
    from ovbench.results.report import write_report

    written = write_report(out, store_path=store, benchmark=benchmark, resamples=resamples, console=stderr_console)
    for path in written:
        stderr_console.print(f"wrote {path}", highlight=False, markup=False)
