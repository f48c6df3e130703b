"""``zsbench sweep``: methods x protocols x seeds (x config grids), each cell one idempotent run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsbench.cli.console import App, console, err_console, fail, print_table


def _seeds(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds expects comma-separated integers such as 111,112,113, got {text!r}")


def _grid(pairs: list[str] | None) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for pair in pairs or []:
        key, sep, values = pair.partition("=")
        if not sep or not key.strip() or not values.strip():
            fail(f"--grid expects KEY=V1,V2,..., got {pair!r}")
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def sweep_cmd(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", help="Sweep file (.toml or .yaml): methods, protocols, seeds, grid, "
                             "run.")] = None,
    methods: Annotated[list[str] | None, typer.Option(
        "--method", "-m", metavar="NAME", help="Method (repeatable).")] = None,
    protocols: Annotated[list[str] | None, typer.Option(
        "--protocol", "-p", metavar="ID", help="Protocol id (repeatable).")] = None,
    seeds: Annotated[str | None, typer.Option(
        "--seeds", metavar="S1,S2", help="Comma-separated seeds, e.g. 111,112,113 (default: "
                                         "each protocol's).")] = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", metavar="KEY=V1,V2", help="Method config values to sweep "
                                            "(repeatable).")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="Cells run at once on this machine (per rank under "
                                 "torchrun/Slurm).")] = 1,
    log_dir: Annotated[Path, typer.Option(
        "--log-dir", help="One log per cell and the state file that makes a restart "
                          "resume.")] = Path("sweep-logs"),
    slurm: Annotated[bool, typer.Option(
        "--slurm", help="Submit the cells as a Slurm job array through submitit instead of "
                        "running them here.")] = False,
    partition: Annotated[str | None, typer.Option("--partition",
                                                  help="Slurm partition.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and exit.")] = False,
) -> None:
    """Run every cell of a sweep; arguments after the options (or after --) go to every
    `zsbench run`, e.g. -- --data-dir data --output-dir results --limit 4."""
    from zsbench.sweep import expand, read_sweep_file, run_options_arguments, submit_slurm_array

    spec = read_sweep_file(file) if file else {}
    common = [*run_options_arguments(spec.get("run", {})), *ctx.args]
    file_grid = {k: list(v) if isinstance(v, list) else [v]
                 for k, v in spec.get("grid", {}).items()}
    cells = expand(list(methods or spec.get("methods", [])),
                   list(protocols or spec.get("protocols", [])),
                   _seeds(seeds) or list(spec.get("seeds", [])),
                   {**file_grid, **_grid(grid)})
    if dry_run:
        print_table(f"{len(cells)} sweep cells", ["cell", "command"],
                    ([c.key, "zsbench " + " ".join([*c.arguments(), *common])] for c in cells))
        return
    if slurm:
        jobs = submit_slurm_array(cells, log_dir, common, partition=partition)
        console.print(f"submitted {len(jobs)} array tasks (job {jobs[0].job_id}); logs in "
                      f"{log_dir / 'slurm'}", highlight=False)
        return
    _run_here(cells, log_dir, common, workers)


def _run_here(cells: list, log_dir: Path, common: list[str], workers: int) -> None:
    """Run the cells on this machine with a progress bar; a failed cell fails the command."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from zsbench.sweep import run_sweep

    with Progress(TextColumn("[bold blue]sweep"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), console=err_console) as bar:
        task = bar.add_task("", total=len(cells))

        def progress(done: int, running: int, failed: int, total: int) -> None:
            bar.update(task, completed=done + failed, total=total,
                       description=f"{running} running, {failed} failed")

        report = run_sweep(cells, log_dir, common, workers=workers, progress=progress)
    print_table("sweep", ["cell", "status", "seconds", "log"],
                ([o.cell.key, o.status, f"{o.seconds:.0f}", str(o.log)]
                 for o in report.outcomes))
    if report.failed:
        fail(f"{len(report.failed)} of {len(report.outcomes)} cells failed; see their logs "
             f"(above). Run the same command again to retry them.")


def register(app: App) -> None:
    """Add ``sweep`` to ``app``."""
    app.command("sweep", context_settings={"allow_extra_args": True,
                                           "ignore_unknown_options": True})(sweep_cmd)
