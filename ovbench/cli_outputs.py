"""`plot`, `visualize` and `runs`: figures and run listings."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ovbench` app."""
