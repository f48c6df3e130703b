"""``zsbench data``: list, prepare, inspect, publish and convert datasets."""

from __future__ import annotations

import typer

from zsbench.cli.console import print_json, print_table
from zsbench.registry import ADAPTERS

app = typer.Typer(help="Dataset adapters: list, prepare a raw download, inspect, push to the Hub.",
                  no_args_is_help=True)


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
                  r["has_normals"], r["license"], r["rehostable"]] for r in rows))
