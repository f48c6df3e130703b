"""``zsbench leaderboard`` and ``zsbench submit``: build and serve the static site, check
result JSONs before submitting them."""

from __future__ import annotations

from pathlib import Path

import typer

from zsbench.cli.console import App, console, fail

app = App(help="Build and serve the static leaderboard.", no_args_is_help=True)


@app.command("build")
def build(
    results: list[Path] = typer.Option(None, "--results", help="Folder (or file) of result JSONs; "
                                       "repeatable. Default: leaderboard/results plus ./results "
                                       "when present."),
    out: Path = typer.Option(Path("leaderboard/site"), "--out", help="Output folder of the site."),
    reported: Path | None = typer.Option(None, "--reported", help="Folder with reported.csv "
                                         "(default: the shipped leaderboard/reported)."),
) -> None:
    """Build the static site (opens from file://, no server needed)."""
    from zsbench.leaderboard.build import SiteBuildError
    from zsbench.leaderboard.build import build as build_site
    from zsbench.leaderboard.reported import ReportedDataError

    try:
        built = build_site(results or None, out, reported)
    except (SiteBuildError, ReportedDataError) as err:
        fail(str(err))
    for problem in built.problems:
        console.print(f"[yellow]skipped[/] {problem}", highlight=False)
    console.print(f"{built.reported_rows} reported rows, {built.reproduced_rows} reproduced rows "
                  f"({built.results_loaded} result files), {built.gallery_images} gallery images, "
                  f"{len(built.problems)} skipped", highlight=False)
    if built.problems:
        console.print(f"[yellow]warning[/]: {len(built.problems)} file(s) or entries skipped "
                      "(reasons above); the site shows the rest", highlight=False)
    console.print(f"wrote {built.out_dir / 'index.html'}", highlight=False)


@app.command("serve")
def serve(
    directory: Path = typer.Option(Path("leaderboard/site"), "--dir", help="Built site folder."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port on 127.0.0.1."),
) -> None:
    """Serve the built site on http://127.0.0.1:PORT/ until Ctrl-C."""
    from zsbench.leaderboard.serve import make_server

    try:
        server = make_server(directory, port)
    except (FileNotFoundError, OSError) as err:
        fail(str(err))
    console.print(f"serving {directory} at http://127.0.0.1:{server.server_address[1]}/ "
                  "(Ctrl-C to stop)", highlight=False)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            console.print("stopped")


def submit(
    files: list[Path] = typer.Argument(..., help="Result JSON files or folders."),
    check: bool = typer.Option(False, "--check", help="Validate the files (schema and "
                               "consistency); exit non-zero on any problem."),
) -> None:
    """Check result JSONs for submission to the leaderboard."""
    from zsbench.submit import check_submission

    if not check:
        fail("only `zsbench submit --check FILE...` is available: check the files, then open a "
             "pull request that adds them under leaderboard/results/", code=2)
    problems = check_submission(files)
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/] {problem.path}: field [bold]{problem.field}[/]: "
                          f"{problem.message}", highlight=False, soft_wrap=True)
        console.print(f"[bold red]{len(problems)} problem(s)[/] in the submission")
        raise typer.Exit(1)
    console.print(f"[green]OK[/]: {len(files)} path(s) passed the submission checks")


def register_submit(root: App) -> None:
    """Add ``zsbench submit`` to the root app."""
    root.command("submit")(submit)
