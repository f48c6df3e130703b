"""``zsbench results``: tabulate result JSONs."""

from __future__ import annotations

from pathlib import Path

import typer

from zsbench.cli.console import console, fail, print_json

app = typer.Typer(help="Tabulate and validate result JSONs.", no_args_is_help=True)


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
    try:
        frame = results_table(results, metric)
    except ValueError as err:
        fail(str(err))
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
