"""``zsbench results``: tabulate result JSONs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from zsbench.cli.console import App, console, fail, print_json

app = App(help="Tabulate and validate result JSONs.", no_args_is_help=True)


@app.command("validate")
def validate(
    paths: list[Path] = typer.Argument(..., help="Result JSON files or folders (searched "
                                       "recursively)."),
) -> None:
    """Check result JSONs against the result schema; exit 1 naming each bad file."""
    from zsbench.results import ResultValidationError, find_result_files, read_result

    missing = [p for p in paths if not p.exists()]
    if missing:
        fail(f"not found: {', '.join(map(str, missing))}")
    files = find_result_files(paths)
    if not files:
        fail(f"no result JSON under {', '.join(map(str, paths))}")
    bad = 0
    for path in files:
        try:
            read_result(path)
        except (ResultValidationError, OSError, UnicodeDecodeError) as err:
            bad += 1
            message = str(err) if isinstance(err, ResultValidationError) else f"{path}: {err}"
            console.print(f"[red]✗[/] {escape(message)}", highlight=False, soft_wrap=True)
    if bad:
        console.print(f"[bold red]{bad} of {len(files)} file(s) invalid[/]")
        raise typer.Exit(1)
    console.print(f"[green]OK[/]: {len(files)} result file(s) valid", highlight=False)


@app.command("table")
def table(
    dirs: list[Path] = typer.Argument(None, help="Folders or files of result JSONs "
                                      "(default: ./results)."),
    metric: str = typer.Option("image_auroc", "--metric", "-m", help="Metric to tabulate."),
    csv: Path | None = typer.Option(None, "--csv", help="Also write the table to this CSV file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One row per method (config, protocol), one column per dataset, in percent."""
    from rich.table import Table

    from zsbench.results import load_results, results_table

    dirs = dirs or [Path("results")]
    results, problems = load_results(dirs)
    for p in problems:
        console.print(f"[yellow]skipped[/] {p}", highlight=False)
    if not results:
        fail(f"no valid result JSON under {', '.join(map(str, dirs))}")
    frame = results_table(results, metric)
    if csv:
        frame.round(2).to_csv(csv)
        console.print(f"wrote {csv}")
    if as_json:
        print_json(frame.reset_index().to_dict(orient="records"))
        return
    t = Table(title=f"{metric} (%)")
    for name in [*frame.index.names, *frame.columns]:
        t.add_column(str(name), justify="left" if name in frame.index.names else "right")
    for idx, row in frame.iterrows():
        t.add_row(*idx, *("-" if v != v else f"{v:.1f}" for v in row))
    console.print(t)
