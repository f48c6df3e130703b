"""``zsbench protocols``: the named and parsed evaluation protocols."""

from __future__ import annotations

import typer
from rich.markup import escape

from zsbench.cli.console import App, console, print_json, print_table

app = App(help="List protocols and explain a protocol id.", no_args_is_help=True)


@app.command("list")
def list_protocols(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the named protocols (any 'A+B->C,D' id is accepted too)."""
    from zsbench.registry import PROTOCOLS

    rows = [PROTOCOLS.get(n).to_dict() for n in PROTOCOLS.names()]
    if as_json:
        print_json(rows)
        return
    print_table("zsbench protocols", ["id", "train on", "evaluate on", "resolution", "description"],
                ([r["id"], ",".join(r["train"]) or "-", ",".join(r["targets"]), r["resolution"],
                  r["description"]] for r in rows), keep=["id"])


@app.command("show")
def show(protocol_id: str = typer.Argument(..., help='A protocol id such as "mvtec->all".'),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Parse a protocol id and show what it fixes, with every target resolved."""
    from zsbench.protocols import resolve_protocol

    proto = resolve_protocol(protocol_id)
    d = proto.to_dict()
    runs = proto.runs()
    d["runs"] = [{"train": list(t), "target": g} for t, g in runs]
    if as_json:
        print_json(d)
        return
    console.print(f"[bold]{escape(proto.id)}[/]: {escape(proto.description)}", highlight=False)
    print_table("settings", ["setting", "value"],
                [("train split", proto.train_split), ("resolution", proto.resolution),
                 ("mask threshold", proto.mask_threshold), ("seed", proto.seed)])
    print_table(f"{len(runs)} runs", ["train on", "", "evaluate on"],
                ((" + ".join(train) or "(no training)", "->", target) for train, target in runs))
