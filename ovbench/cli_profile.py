"""`profile`: parameters, GFLOPs, latency and peak memory of a method."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ovbench.errors import ConfigError, OvbenchError


def _parse_image_size(text: str) -> tuple[int, int]:
    """"640" -> (640, 640); "512x640" -> (512, 640) as height x width."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        sides = [int(part) for part in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides, default=0) < 1:
        raise ConfigError(f"--image-size must be SIDE or HEIGHTxWIDTH in pixels, e.g. 640 or 512x640; got {text!r}")
    return (sides[0], sides[-1])


def _methods_to_profile(variants: bool) -> list[str]:
    from ovbench.registry import method_names

    # gsnet/A..I are ablation variants of one method: the comparison lists methods
    return [name for name in method_names() if variants or "/" not in name]


def _print_single(profile, console) -> None:
    from rich.table import Table

    from ovbench.profile import MIB, device_text

    table = Table(title=f"{profile.method} — parameters ({profile.scale or 'published'} scale)", title_justify="left")
    for column in ("part", "trainable", "frozen", "total"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part in profile.parts:
        table.add_row(part.name, f"{part.trainable:,}", f"{part.frozen:,}", f"{part.total:,}")
    table.add_section()
    table.add_row("all", f"{profile.trainable:,}", f"{profile.frozen:,}", f"{profile.total:,}", style="bold")
    console.print(table)
    console.print(f"trainable parameters: {profile.trainable:,} ({profile.trainable / 1e6:.2f}M)")
    cost = profile.cost
    if cost is None:
        return
    height, width = cost.image_size
    lines = [
        f"input: 1x3x{height}x{width} image, {cost.classes} classes, through the method's evaluation recipe "
        f"on {device_text(cost)}",
    ]
    if cost.flops is not None:
        lines.append(
            f"GFLOPs: {cost.gflops:.2f} per image with the text embeddings cached, as in evaluation "
            f"(+ {cost.text_gflops:.2f} once per vocabulary for the text encoder); "
            "FlopCounterMode, a multiply-add counts 2 FLOPs"
        )
    if cost.latency_s is not None:
        lines.append(f"latency: {cost.latency_s:.3f} s per image (median of {cost.repeats} timed predict call(s) after a warm-up)")
        if cost.working_bytes is None:
            lines.append(f"peak memory: {cost.memory_method}")
        else:
            lines.append(
                f"peak memory: {cost.peak_bytes / MIB:.0f} MiB (model tensors {cost.model_bytes / MIB:.0f} MiB "
                f"+ working memory {cost.working_bytes / MIB:.0f} MiB; {cost.memory_method})"
            )
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _emit(text: str, out: Optional[Path]) -> None:
    from ovbench.progress import stderr_console

    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from ovbench.fileio import atomic_write_text

    atomic_write_text(out, text)
    stderr_console.print(f"wrote {out}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ovbench` app."""

    @app.command("profile")
    def profile_command(
        method: Optional[str] = typer.Option(None, "--method", "-m", help="Method name (see `ovbench methods`)."),
        all_methods: bool = typer.Option(False, "--all", help="One table across every method present (ablation variants with --variants)."),
        variants: bool = typer.Option(False, "--variants", help="With --all: also the ablation variants (gsnet/A..I)."),
        scale: Optional[str] = typer.Option(None, "--scale", help="Scale overlay (e.g. tiny); default: the published scale."),
        depth: int = typer.Option(1, "--depth", help="How many module levels to break the counts into."),
        classes: int = typer.Option(40, "--classes", help="Vocabulary size of the profiled predict (LandDiscover50K's class names, then 'class N')."),
        image_size: str = typer.Option("640", "--image-size", help="Input image: SIDE or HEIGHTxWIDTH; the recipe resizes or tiles it as in evaluation."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        repeats: Optional[int] = typer.Option(
            None, "--repeats", help="Timed predict calls (median reported) after the warm-up; default 3 on CUDA, 1 on CPU."
        ),
        no_flops: bool = typer.Option(False, "--no-flops", help="Do not count FLOPs (saves two predict calls)."),
        no_timing: bool = typer.Option(False, "--no-timing", help="Do not time predict or measure its memory."),
        fmt: str = typer.Option(
            "plain", "--format", "-f",
            help="plain, markdown or csv; with --method, markdown and csv give its one-row summary instead of the parts table.",
        ),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the output to this file instead of stdout."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random weights and the random input image."),
    ) -> None:
        """Parameter counts (trainable and frozen, per part), GFLOPs, latency and peak memory of one predict.

        Built at the published scale with random weights: nothing is downloaded.

        FLOPs: torch.utils.flop_counter over one predict (the method's evaluation recipe) on one image; a multiply-add counts 2.

        Latency: the median of --repeats timed predict calls on --device. --all: one table across the methods.

        Example: ovbench profile --method catseg; ovbench profile --all --format markdown --repeats 1
        """
        from ovbench.eval.evaluate import resolve_device
        from ovbench.profile import TABLE_FORMATS, CostSettings, profile_method, render_table
        from ovbench.progress import ProgressReporter, stderr_console

        if (method is None) == (not all_methods):
            raise OvbenchError("give either --method NAME or --all")
        if variants and not all_methods:
            raise OvbenchError("--variants goes with --all")
        fmt = fmt.lower()
        if fmt not in TABLE_FORMATS:
            raise ConfigError(f"unknown format '{fmt}'; choose {', '.join(TABLE_FORMATS)}")
        if depth < 1:
            raise ConfigError(f"--depth must be at least 1, got {depth}")
        torch_device = resolve_device(device)
        if repeats is None:
            repeats = 3 if torch_device.type == "cuda" else 1
        cost = CostSettings(
            image_size=_parse_image_size(image_size), classes=classes, device=str(torch_device), repeats=repeats,
            flops=not no_flops, timing=not no_timing, seed=seed,
        )
        scale = None if scale == "full" else scale

        if not all_methods:
            from ovbench.registry import resolve_method

            resolve_method(method, scale=scale)  # an unknown name or scale fails before any message
            if not (no_flops and no_timing) and not quiet:
                stderr_console.print(f"profiling {method} on {torch_device} ...", highlight=False, markup=False)
            profile = profile_method(method, scale=scale, depth=depth, cost=cost)
            if fmt == "plain" and out is None:
                from ovbench.cli import stdout_console

                _print_single(profile, stdout_console)
            elif fmt == "plain":
                import io

                from rich.console import Console

                buffer = io.StringIO()
                _print_single(profile, Console(file=buffer, width=200, soft_wrap=True, emoji=False, color_system=None))
                _emit(buffer.getvalue(), out)
            else:
                _emit(render_table([profile], fmt), out)
            return

        from ovbench.errors import first_line
        from ovbench.registry import method_scales

        names = _methods_to_profile(variants)
        profiles, notes, failed = [], [], []
        with ProgressReporter(quiet=quiet) as progress:
            task = progress.add_task("profile", total=len(names), unit="method")
            for name in names:
                if scale is not None and scale not in method_scales(name):
                    notes.append(f"skipped {name}: it has no '{scale}' scale")
                    progress.advance(task, status=f"{name}: skipped (no {scale} scale)")
                    continue
                progress.advance(task, amount=0, status=f"profiling {name} ...")
                try:
                    profile = profile_method(name, scale=scale, depth=depth, cost=cost)
                except (OvbenchError, RuntimeError) as exc:  # one broken method must not lose the others' rows
                    failed.append(name)
                    notes.append(f"{name} failed: {first_line(exc)}")
                    progress.advance(task, status=f"{name}: failed")
                    continue
                profiles.append(profile)
                progress.advance(task, status=_status(profile))
        _emit(render_table(profiles, fmt), out)
        for note in notes:
            stderr_console.print(note, highlight=False, markup=False)
        if failed:
            raise typer.Exit(code=1)


def _status(profile) -> str:
    cost = profile.cost
    parts = [f"{profile.method}: {profile.total / 1e6:.1f}M params"]
    if cost is not None and cost.gflops is not None:
        parts.append(f"{cost.gflops:.1f} GFLOPs")
    if cost is not None and cost.latency_s is not None:
        parts.append(f"{cost.latency_s:.2f} s")
    return ", ".join(parts)
