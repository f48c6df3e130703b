"""Shared rich console and error reporting for the CLI."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from zsbench.errors import ZsbenchError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

#: OS errors about a path the user gave (a missing input, a read-only output folder, ...)
USER_PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError,
                    IsADirectoryError)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a clear error (no traceback) and exit with ``code``."""
    # soft_wrap: no line breaks inside paths and commands the user may copy
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def check_device(value: str | None) -> str | None:
    """Typer callback of ``--device``: cpu, cuda, cuda:N or mps, and only one this machine has
    (the message lists the devices that are available)."""
    if value is None:
        return None
    import torch

    available = ["cpu"]
    if torch.cuda.is_available():
        available += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    device = value.strip().lower()
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise typer.BadParameter(f"{value!r} is not a device: use cpu, cuda, cuda:N or mps "
                                 f"(available here: {', '.join(available)})")
    if device not in available:
        why = "" if torch.cuda.is_available() or not device.startswith("cuda") else (
            "torch sees no CUDA GPU; ")
        raise typer.BadParameter(f"{value!r} is not available on this machine ({why}"
                                 f"available: {', '.join(available)})")
    return device


def _os_error_message(err: OSError) -> str:
    if err.filename is None or err.strerror is None:
        return str(err)  # raised with a message of its own
    name = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
    return f"{err.strerror}: {name}"


def user_errors_as_messages(func: F) -> F:
    """Run a command so that user errors (:class:`~zsbench.errors.ZsbenchError`, and OS errors
    about a path) print one ``Error: ...`` line and exit 1; any other exception is a bug and
    keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ZsbenchError as err:
            fail(err.cli_message)
        except USER_PATH_ERRORS as err:
            fail(_os_error_message(err))

    return wrapper  # type: ignore[return-value]


class App(typer.Typer):
    """A Typer app whose every command reports user errors as one message
    (:func:`user_errors_as_messages`): the one place the CLI maps exceptions to exit codes.

    Help is click's plain layout (``rich_markup_mode=None``): Typer's rich layout prints a type
    after every option, flags included (``--resume <bool>``), as if they took a value."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("rich_markup_mode", None)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)

        def decorator(func: F) -> F:
            register(user_errors_as_messages(func))
            return func

        return decorator


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                keep: Sequence[str] = (), optional: Sequence[str] = ()) -> None:
    """Print a table that fits the terminal (80 columns when piped).

    Columns in ``keep`` (e.g. the name a user must type) are never cut or wrapped; columns in
    ``optional`` are left out, in that order, while the table is wider than the terminal."""
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    shown = list(columns)
    for drop in [None, *optional]:
        if drop is not None:
            shown.remove(drop)
        hidden = [c for c in columns if c not in shown]
        table = Table(title=title, show_lines=False,
                      caption=f"not shown at this width: {', '.join(hidden)}" if hidden else None)
        for col in shown:
            if col in keep:
                width = max([len(col), *(len(r[columns.index(col)]) for r in cells)])
                table.add_column(col, no_wrap=True, min_width=width)
            else:
                table.add_column(col, overflow="fold")
        for row in cells:
            table.add_row(*(row[columns.index(col)] for col in shown))
        natural = Measurement.get(console, console.options.update_width(10_000), table)
        if natural.maximum <= console.width:
            break
    console.print(table)


class ProgressBars:
    """A rich progress display driven by the library's ``progress(description, done, total)``
    callbacks: one bar per description prefix (e.g. one per dataset)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=err_console, transient=False)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, description: str, done: int, total: int) -> None:
        key = description.split("/")[0].split(" ")[0]
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=total)
        self.progress.update(self.tasks[key], completed=done, total=total,
                             description=description)
