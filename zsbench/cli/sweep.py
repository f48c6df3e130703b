"""``zsbench sweep``: methods x protocols x seeds (x config grids), each cell one idempotent run."""

from __future__ import annotations

from pathlib import Path

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


def register(app: App) -> None:
    """Add ``sweep`` to ``app``."""

    @app.command("sweep", context_settings={"allow_extra_args": True,
                                            "ignore_unknown_options": True})
    def sweep_cmd(
        ctx: typer.Context,
        file: Path | None = typer.Option(None, "--file", "-f", help="Sweep file (.toml or "
                                         ".yaml): methods, protocols, seeds, grid, run."),
        methods: list[str] | None = typer.Option(None, "--method", "-m", metavar="NAME",
                                                 help="Method (repeatable)."),
        protocols: list[str] | None = typer.Option(None, "--protocol", "-p", metavar="ID",
                                                   help="Protocol id (repeatable)."),
        seeds: str | None = typer.Option(None, "--seeds", metavar="S1,S2",
                                         help="Comma-separated seeds, e.g. 111,112,113 "
                                              "(default: each protocol's)."),
        grid: list[str] | None = typer.Option(None, "--grid", metavar="KEY=V1,V2",
                                              help="Method config values to sweep "
                                                   "(repeatable)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Cells run at once on this "
                                    "machine (per rank under torchrun/Slurm)."),
        log_dir: Path = typer.Option(Path("sweep-logs"), "--log-dir", help="One log per cell "
                                     "and the state file that makes a restart resume."),
        slurm: bool = typer.Option(False, "--slurm", help="Submit the cells as a Slurm job "
                                   "array through submitit instead of running them here."),
        partition: str | None = typer.Option(None, "--partition", help="Slurm partition."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and exit."),
    ) -> None:
        """Run every cell of a sweep; arguments after the options (or after --) go to every
        `zsbench run`, e.g. -- --data-dir data --output-dir results --limit 4."""
        from zsbench.sweep import (
            expand,
            read_sweep_file,
            run_options_arguments,
            run_sweep,
            submit_slurm_array,
        )

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
                        ([c.key, "zsbench " + " ".join([*c.arguments(), *common])]
                         for c in cells))
            return
        if slurm:
            jobs = submit_slurm_array(cells, log_dir, common, partition=partition)
            console.print(f"submitted {len(jobs)} array tasks (job {jobs[0].job_id}); logs in "
                          f"{log_dir / 'slurm'}", highlight=False)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

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
