"""`profile`: parameters, GFLOPs, latency and peak memory of a method."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ovbench` app."""
