"""``zsbench protocols``: the named and parsed evaluation protocols."""

from __future__ import annotations

import typer

from zsbench.cli.console import fail, print_json, print_table

app = typer.Typer(help="List protocols and explain a protocol id.", no_args_is_help=True)


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
                  r["description"]] for r in rows))


@app.command("show")
def show(protocol_id: str = typer.Argument(..., help='A protocol id such as "mvtec->all".'),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Parse a protocol id and show what it fixes, with every target resolved."""
    from zsbench.protocols import ProtocolError, resolve_protocol

    try:
        proto = resolve_protocol(protocol_id)
    except ProtocolError as err:
        fail(str(err))
    d = proto.to_dict()
    d["runs"] = [{"train": list(t), "target": g} for t, g in proto.runs()]
    if as_json:
        print_json(d)
        return
    print_table(f"protocol {protocol_id}", ["field", "value"], [(k, v) for k, v in d.items()])
