"""`compare` and `report`: statistics and documents built from the results store."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `ovbench` app."""
