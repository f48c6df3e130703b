"""``zsbench methods``: list registered methods and show one method's prompts and options."""

from __future__ import annotations

import dataclasses

import typer

from zsbench.cli.console import console, fail, print_json, print_table
from zsbench.registry import METHODS, UnknownNameError

app = typer.Typer(help="List methods and show their prompts, options and upstream quirk flags.",
                  no_args_is_help=True)


def _info_dict(name: str) -> dict:
    entry = METHODS.entry(name)
    cls = entry.obj
    info = dataclasses.asdict(cls.info)
    info["source"] = entry.source
    info["backbone"] = cls.config_class().backbone
    return info


@app.command("list")
def list_methods(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List built-in and plugged-in methods with their metadata."""
    infos = [_info_dict(n) for n in METHODS.names()]
    if as_json:
        print_json(infos)
        return
    print_table("zsbench methods", ["name", "title", "trainable", "transductive", "backbone",
                                    "paper", "source"],
                ([i["name"], i["title"], i["trainable"], i["transductive"], i["backbone"],
                  i["paper"], i["source"]] for i in infos))


@app.command("info")
def info(name: str = typer.Argument(..., help="Method name, e.g. winclip."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show a method's config options (with defaults) and its exact prompt strings."""
    from zsbench.method import describe_method

    try:
        described = describe_method(name)
    except UnknownNameError as err:
        fail(str(err))
    if as_json:
        print_json(described)
        return
    console.rule(f"[bold]{described['info']['title']}[/] ({name})")
    for key, value in described["info"].items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False)
    print_table("config options (set with --set KEY=VALUE)", ["option", "default", "help"],
                ([o["name"], o["default"], o["help"]] for o in described["options"]))
    for key, value in described["prompts"].items():
        console.print(f"[bold]{key}[/]:")
        if isinstance(value, (list, tuple)):
            for v in value:
                console.print(f"  {v!r}", highlight=False)
        else:
            console.print(f"  {value!r}", highlight=False)
