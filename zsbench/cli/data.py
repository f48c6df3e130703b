"""``zsbench data``: list, prepare, inspect, publish and convert datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from zsbench.cli.console import App, console, fail, print_json, print_table
from zsbench.registry import ADAPTERS

app = App(help="Dataset adapters: list, prepare a raw download, inspect, push to the Hub.",
          no_args_is_help=True)

DATA_DIR_OPTION = typer.Option(Path("data"), "--data-dir", envvar="ZSBENCH_DATA_DIR",
                               help="Folder of prepared datasets.")


@app.command("list")
def list_datasets(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the registered dataset adapters with domain, categories, licence and masks."""
    rows = []
    for entry in ADAPTERS.entries():
        info = entry.obj.info
        rows.append({"name": entry.name, "title": info.title, "domain": info.domain,
                     "categories": list(info.categories), "license": info.license,
                     "rehostable": info.rehostable, "has_masks": info.has_masks,
                     "has_normals": info.has_normals, "source": entry.source})
    if as_json:
        print_json(rows)
        return
    print_table("zsbench datasets", ["name", "title", "domain", "categories", "masks", "normals",
                                     "license", "re-host"],
                ([r["name"], r["title"], r["domain"], len(r["categories"]), r["has_masks"],
                  r["has_normals"], r["license"], r["rehostable"]] for r in rows),
                keep=["name"], optional=["title", "normals", "categories"])


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """``["pieces=3", "categories=a,b"]`` -> dict; a pair without '=' is an error naming it."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--option {pair!r} must look like KEY=VALUE (e.g. --option pieces=3)")
        options[key.strip()] = value.strip()
    return options


def _progress_run(description: str, job):  # job(progress_callback) -> result
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return job(update)


@app.command("prepare")
def prepare_command(
    name: str = typer.Argument(..., help="Dataset id (see 'zsbench data list'), e.g. mvtec."),
    raw: Path = typer.Option(..., "--raw", help="Folder of the original download."),
    out: Path = typer.Option(Path("data"), "--out", help="Output folder (gets OUT/NAME/)."),
    option: list[str] = typer.Option(None, "--option", metavar="KEY=VALUE",
                                     help="Adapter option KEY=VALUE (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild even if up to date."),
    workers: int = typer.Option(0, "--workers", min=0, help="Threads (0: one per CPU)."),
) -> None:
    """Turn a raw download into the unified Parquet dataset OUT/NAME (Hub-ready)."""
    from zsbench.adapter import DatasetLayoutError
    from zsbench.prepare import PrepareError, is_prepared, prepare
    from zsbench.registry import UnknownNameError

    options = parse_options(option)
    try:
        if not overwrite and raw.is_dir() and is_prepared(name, raw, out, options):
            console.print(f"{out / name} is already prepared from the same inputs; skipped "
                          "(use --overwrite to rebuild).", highlight=False)
            return
        folder = _progress_run(f"preparing {name}", lambda update: prepare(
            name, raw, out, adapter_options=options, overwrite=overwrite, progress=update,
            workers=workers or None))
    except (UnknownNameError, DatasetLayoutError, PrepareError, FileExistsError,
            ValueError, TypeError) as err:
        fail(str(err))
    console.print(f"[green]prepared[/] {folder}", highlight=False)


def _resolve(source: str, data_dir: Path) -> str:
    from zsbench.data import DataSourceError, resolve_source

    try:
        return resolve_source(source, data_dir)
    except DataSourceError as err:
        fail(str(err))


@app.command("info")
def info_command(
    source: str = typer.Argument(..., help="Prepared folder, dataset name or Hub repo id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Images, anomalous images and images with masks per split and category."""
    from zsbench.data import HubUnreachableError, dataset_info
    from zsbench.errors import DataError

    try:
        info = dataset_info(_resolve(source, data_dir))
    except (DataError, HubUnreachableError, OSError) as err:
        fail(str(err))
    if as_json:
        print_json(info)
        return
    rows = []
    for split, block in info["splits"].items():
        for category, c in block["categories"].items():
            rows.append([split, category, c["n"], c["anomalous"], c["with_mask"]])
        rows.append([split, "[bold]all[/]", block["n"], block["anomalous"], block["with_mask"]])
    print_table(f"dataset {info['dataset']}", ["split", "category", "images", "anomalous",
                                                "with mask"], rows)


@app.command("push")
def push_command(
    name: str = typer.Argument(..., help="Prepared dataset name or folder."),
    repo: str = typer.Option(..., "--repo", help="Hub dataset repo ORG/NAME."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    data_dir: Path = DATA_DIR_OPTION,
    i_have_rights: bool = typer.Option(False, "--i-have-rights",
                                       help="Publish although the licence forbids re-hosting."),
) -> None:
    """Publish a prepared dataset to the Hugging Face Hub (one config per dataset)."""
    from zsbench.data import (
        DataSourceError,
        HubUnreachableError,
        RehostingNotAllowed,
        push,
        rehosting_refusal,
    )

    try:
        url = push(name, repo, data_dir=data_dir, private=private, i_have_rights=i_have_rights)
    except RehostingNotAllowed as err:
        fail(rehosting_refusal(err.dataset, err.license, "--i-have-rights") if err.dataset
             else str(err))
    except (DataSourceError, HubUnreachableError) as err:
        fail(str(err))
    console.print(f"[green]pushed[/] {name} to {url}", highlight=False)


@app.command("export-meta")
def export_meta_command(
    source: str = typer.Argument(..., help="Prepared dataset folder or name."),
    out: Path = typer.Option(..., "--out", help="meta.json to write."),
    materialize: Path | None = typer.Option(None, "--materialize",
                                            help="Also write images and masks to this folder."),
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Write the AnomalyCLIP / APRIL-GAN meta.json of a prepared dataset."""
    from zsbench.meta_json import export_meta

    try:
        path = export_meta(_resolve(source, data_dir), out, materialize)
    except ValueError as err:
        fail(str(err))
    console.print(f"wrote {path}" + (f" and the files under {materialize}" if materialize
                                     else ""), highlight=False)


@app.command("import-meta")
def import_meta_command(
    meta: Path = typer.Argument(..., help="An AnomalyCLIP / APRIL-GAN meta.json."),
    root: Path = typer.Option(..., "--root", help="Dataset root the meta.json paths start at."),
    name: str = typer.Option(..., "--name", help="Dataset id of the result."),
    out: Path = typer.Option(Path("data"), "--out", help="Output folder (gets OUT/NAME/)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT/NAME."),
) -> None:
    """Prepare a dataset from a meta.json and the files it lists."""
    from zsbench.meta_json import import_meta

    try:
        folder = _progress_run(f"importing {meta.name}", lambda update: import_meta(
            meta, root, name, out, overwrite=overwrite, progress=update))
    except (ValueError, FileExistsError) as err:
        fail(str(err))
    console.print(f"[green]prepared[/] {folder}", highlight=False)


@app.command("verify")
def verify_command(
    folder: Path = typer.Argument(..., help="A prepared dataset folder (OUT/NAME)."),
    raw: Path | None = typer.Option(None, "--raw", help="Also check this raw download against "
                                    "the source checksum recorded at preparation."),
) -> None:
    """Re-check a prepared dataset: each shard against its recorded sha256, and the raw source
    (file list and contents) with --raw."""
    from zsbench.prepare import VerifyError, verify_prepared

    if raw is not None and not raw.is_dir():
        fail(f"--raw {raw}: not a folder")
    try:
        report = verify_prepared(folder, raw)
    except VerifyError as err:
        fail(str(err))
    source = {"match": "; the raw source matches", "not checked": ""}[report["source"]]
    console.print(f"[green]verified[/] {folder}: {report['shards']} shard(s) match their "
                  f"recorded sha256{source}", highlight=False)
