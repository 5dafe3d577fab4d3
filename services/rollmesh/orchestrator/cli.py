"""`rollmesh` commands of the orchestrator. Heavy imports stay inside the commands."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Adds this subsystem's commands to the top-level app and its benchmark to `rollmesh bench`."""
