"""``zsbench run``, ``train``, ``evaluate``, ``demo``, ``import-checkpoint``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the top-level job commands to ``app``."""
