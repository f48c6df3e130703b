"""``zsbench leaderboard`` and ``zsbench submit``: build and serve the static site."""

from __future__ import annotations

import typer

app = typer.Typer(help="Build and serve the static leaderboard.", no_args_is_help=True)


def register_submit(root: typer.Typer) -> None:
    """Add ``zsbench submit`` to the root app."""
