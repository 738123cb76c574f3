"""`ovbench data ...`: check, describe, prepare and locate datasets.

A typer sub-app; the main CLI mounts it with `app.add_typer(data_app, name="data")`. Each
command renders what a function of `ovbench.data.check`, `.prepare` or `.where` returns.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ovbench.errors import ConfigError
from ovbench.progress import ProgressReporter, stderr_console

data_app = typer.Typer(
    name="data",
    help="Check, describe, prepare and locate datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _stdout() -> Console:
    # built per call: tests capture sys.stdout after import; piped output gets wide tables
    return Console(file=sys.stdout, soft_wrap=True, width=None if sys.stdout.isatty() else 200, highlight=False)


_DATA_ROOT_HELP = "Root folder of the datasets (default $OVBENCH_DATA)."
_NAME_HELP = "Dataset name (see `ovbench datasets`) or a dataset spec YAML path."


# --------------------------------------------------------------------------- check


@data_app.command("check")
def check_command(
    name: str = typer.Argument(..., help=_NAME_HELP),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=_DATA_ROOT_HELP),
    max_listed: int = typer.Option(20, "--max-listed", help="Problems listed per kind; the rest are counted."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding threads (default: up to 8)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Decode every image and mask and report every problem: unpaired files, unreadable or
    truncated files, size mismatches, label values outside the evaluator classes; then the
    per-class pixel histogram. Exits 1 if anything is wrong.

    Example: ovbench data check potsdam --data-root /data
    """
    from ovbench.data.check import ISSUE_KINDS, check_dataset
    from ovbench.registry import build_dataset, resolve_data_root

    dataset = build_dataset(name, resolve_data_root(data_root))
    with ProgressReporter(quiet=quiet) as progress:
        report = check_dataset(dataset, progress=progress, max_listed=max_listed, workers=workers)
    out = _stdout()
    out.print(f"dataset {escape(report.dataset)}: {report.pairs} image/mask pairs checked, "
              f"{report.decoded_pairs} decoded cleanly")

    for kind, heading in ISSUE_KINDS.items():
        total = report.count(kind)
        if not total:
            continue
        out.print(f"\n[bold red]{total} {heading}[/bold red]")
        for issue in report.examples.get(kind, []):
            detail = f": {issue.detail}" if issue.detail else ""
            out.print(f"  {escape(issue.path)}{escape(detail)}")
        rest = total - len(report.examples.get(kind, []))
        if rest > 0:
            out.print(f"  ... and {rest} more")

    table = Table(title=f"{report.dataset}: label histogram ({report.total_pixels} pixels)", title_justify="left")
    for column, justify in (("id", "right"), ("class", "left"), ("pixels", "right"), ("share", "right"), ("images", "right")):
        table.add_column(column, justify=justify)
    for row in report.histogram():
        label = escape(row.name) + (" [dim](ignored)[/dim]" if row.ignored and row.class_id is not None else "")
        table.add_row(str(row.value), label, str(row.pixels), f"{100 * row.share:.2f}%", str(row.images))
    for value, pixels in sorted(report.invalid_pixels.items()):
        share = pixels / max(report.total_pixels, 1)
        table.add_row(str(value), "[red](not a class)[/red]", str(pixels), f"{100 * share:.2f}%", "")
    out.print()
    out.print(table)

    if report.ok:
        out.print(f"\n[green]OK[/green]: no problems in {report.dataset}")
        return
    summary = ", ".join(f"{report.count(k)} {h}" for k, h in ISSUE_KINDS.items() if report.count(k))
    out.print(f"\n[bold red]FAILED[/bold red]: {summary}")
    raise typer.Exit(code=1)


# --------------------------------------------------------------------------- info


def _format_value(value) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) and "image_dir" in v for v in value):
        return "; ".join(f"{v['image_dir']} + {v.get('mask_dir', '?')}" for v in value)  # alternative layouts
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _format_sizes(stats) -> str:
    if stats is None:
        return "-"
    if not stats.common:
        return f"{stats.sampled} sampled, none readable"
    common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in stats.common)
    modes = ", ".join(f"{m} ({n})" for m, n in sorted(stats.modes.items()))
    text = (f"{stats.sampled} sampled: width {stats.min_width}-{stats.max_width} (median {stats.median_width:g}), "
            f"height {stats.min_height}-{stats.max_height} (median {stats.median_height:g}); most common {common}; modes {modes}")
    if stats.unreadable:
        text += f"; {stats.unreadable} unreadable headers"
    return text


@data_app.command("info")
def info_command(
    name: str = typer.Argument(..., help=_NAME_HELP),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=_DATA_ROOT_HELP),
    sample: int = typer.Option(100, "--sample", help="Files whose headers give the size statistics."),
) -> None:
    """Show a dataset's spec, resolved folders (and which layout matched), pair counts, image
    sizes of a sample (headers only), vocabulary and evaluator classes.

    Example: ovbench data info floodnet --data-root /data
    """
    from ovbench.data.check import describe_dataset
    from ovbench.registry import build_dataset, resolve_data_root

    if sample < 1:
        raise ConfigError(f"--sample must be at least 1, got {sample}")
    root = resolve_data_root(data_root)
    dataset = build_dataset(name, root)
    info = describe_dataset(dataset, root, sample=sample)
    out = _stdout()
    out.print(f"[bold]{escape(info.name)}[/bold] ({info.kind})")

    spec = Table(title="spec", title_justify="left", show_header=False)
    spec.add_column("key")
    spec.add_column("value")
    for key, value in info.spec.items():
        if key in ("vocabulary", "class_names") or value in (None, "", {}, []):
            continue
        spec.add_row(escape(str(key)), escape(_format_value(value)))
    out.print(spec)

    facts = Table(title="files", title_justify="left", show_header=False)
    facts.add_column("what")
    facts.add_column("value")
    if info.kind == "embedded":
        facts.add_row("source", "generated in process (no files)")
    else:
        facts.add_row("data root", escape(str(info.data_root)))
        facts.add_row("image folder", escape(str(info.image_dir)))
        facts.add_row("mask folder", escape(str(info.mask_dir)))
        facts.add_row("layout", escape(info.layout or "the spec's only layout"))
    facts.add_row("pairs", str(info.pairs))
    facts.add_row("images without mask", str(info.unpaired_images))
    facts.add_row("masks without image", str(info.unpaired_masks))
    facts.add_row("image sizes", escape(_format_sizes(info.image_sizes)))
    facts.add_row("mask sizes", escape(_format_sizes(info.mask_sizes)))
    out.print(facts)

    classes = Table(title=f"classes (ignore value {info.ignore_index}"
                    + (f" = {escape(info.ignore_name)})" if info.ignore_name else ", not a class id)"),
                    title_justify="left")
    for column in ("id", "evaluator class", "query (vocabulary)", "synonyms"):
        classes.add_column(column)
    for class_id, class_name in enumerate(info.class_names):
        if class_id < len(info.vocabulary):
            query, synonyms = info.vocabulary[class_id]
        else:
            query, synonyms = "(not queried)", ()
        marker = " (ignored)" if class_id == info.ignore_index else ""
        classes.add_row(str(class_id), escape(class_name + marker), escape(query), escape(", ".join(synonyms)))
    out.print(classes)
    out.print(f"{len(info.vocabulary)} queries, {len(info.class_names)} evaluator classes, ignore value {info.ignore_index}")


# --------------------------------------------------------------------------- prepare


@data_app.command("prepare")
def prepare_command(
    name: str = typer.Argument(..., help="potsdam or floodnet."),
    raw: Path = typer.Option(..., "--raw", help="Folder with the publisher's raw release."),
    out: Path = typer.Option(..., "--out", help="Data root to write the benchmark layout into."),
    tiles: str = typer.Option("all", "--tiles", help="Potsdam: all, val (mmsegmentation's 14), train, or ids like 2_13,3_14."),
    honor_stride: bool = typer.Option(False, "--honor-stride", help="Potsdam: step crops by the stride (256) instead of mmsegmentation's crop-size steps."),
    exact_colours: bool = typer.Option(False, "--exact-colours", help="Potsdam: match label colours exactly instead of mmsegmentation's 4R+3G+2B key."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Convert a raw release into the benchmark layout under --out. Running it again changes
    nothing; an interrupted run is completed by the next one.

    Example: ovbench data prepare potsdam --raw ~/isprs --out /data
    """
    from ovbench.data.prepare import PREPARERS, prepare

    if name not in PREPARERS:
        raise ConfigError(f"no converter for '{name}'; available: {', '.join(PREPARERS)}")
    options = {}
    if name == "potsdam":
        options = dict(tiles=tiles, honor_stride=honor_stride, exact_colours=exact_colours)
    elif tiles != "all" or honor_stride or exact_colours:
        raise ConfigError("--tiles, --honor-stride and --exact-colours apply to potsdam only")
    with ProgressReporter(quiet=quiet) as progress:
        report = prepare(name, raw, out, progress=progress, **options)
    for warning in report.warnings:
        stderr_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    out_console = _stdout()
    out_console.print(
        f"{report.dataset}: {report.sources} sources -> {report.written} files written, "
        f"{report.skipped} already complete"
        + (f", {report.removed_temporaries} stale temporary files removed" if report.removed_temporaries else "")
    )
    out_console.print(f"images: {escape(str(report.image_dir))}")
    out_console.print(f"masks:  {escape(str(report.mask_dir))}")


# --------------------------------------------------------------------------- where


@data_app.command("where")
def where_command(
    name: Optional[str] = typer.Argument(None, help="Dataset name; all datasets when left out."),
) -> None:
    """Where the publishers host a dataset and how to unpack it correctly (downloads nothing).

    Example: ovbench data where landdiscover50k
    """
    from ovbench.data.where import HOSTING, find_hosting, render_where

    entries = [find_hosting(name)] if name else list(HOSTING.values())
    text = "\n".join(render_where(entry) for entry in entries)
    sys.stdout.write(text)
