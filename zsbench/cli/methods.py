"""``zsbench methods``: list registered methods and show one method's prompts and options."""

from __future__ import annotations

import typer
from rich.table import Table

from zsbench.cli.console import App, console, print_json, print_table

app = App(help="List methods and show their prompts, options and upstream quirk flags.",
          no_args_is_help=True)


def _info_dict(described: dict) -> dict:
    info = dict(described["info"])
    info["backbone"] = next(o["default"] for o in described["options"] if o["name"] == "backbone")
    info["presets"] = sorted(described["presets"])
    return info


@app.command("list")
def list_methods(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List built-in and plugged-in methods with their metadata."""
    from zsbench.method_catalog import describe_all

    infos = [_info_dict(d) for d in describe_all().values()]
    if as_json:
        print_json(infos)
        return
    print_table(f"zsbench methods ({len(infos)})", ["name", "title", "kind", "backbone",
                                                    "paper", "source"],
                ([i["name"], i["title"], i["kind"], i["backbone"], i["paper"], i["source"]]
                 for i in infos),
                keep=["name", "kind"], optional=["paper", "source", "backbone"])


@app.command("info")
def info(name: str = typer.Argument(..., help="Method name, e.g. winclip."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show a method's config options (with defaults) and its exact prompt strings."""
    from zsbench.method_catalog import describe

    described = describe(name)
    if as_json:
        print_json(described)
        return
    console.rule(f"[bold]{described['info']['title']}[/] ({name})")
    for key, value in described["info"].items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False)
    print_table("config options (set with --set KEY=VALUE)", ["option", "default", "help"],
                ([o["name"], o["default"], o["help"]] for o in described["options"]),
                keep=["option"])
    if described["presets"]:
        console.print(_preset_table(described))
    recipe = described.get("training_defaults") or {}
    if described["info"]["trainable"]:
        console.print("[bold]training[/]: " + (", ".join(f"{k} {v}" for k, v in recipe.items())
                                               or "the trainer's defaults")
                      + " (the rest: the trainer's; --epochs/--train-batch-size/--lr override)",
                      highlight=False)
    for key, value in described["prompts"].items():
        console.print(f"[bold]{key}[/]:")
        if isinstance(value, (list, tuple)):
            for v in value:
                console.print(f"  {v!r}", highlight=False)
        else:
            console.print(f"  {value!r}", highlight=False)


def _preset_table(described: dict) -> Table:
    """One row per (preset, option): the preset's value next to the option's default."""
    defaults = {o["name"]: o["default"] for o in described["options"]}
    table = Table(title="presets: the upstream code's values (--set still overrides)")
    for column in ("preset", "option"):
        table.add_column(column, no_wrap=True)
    table.add_column("value")
    table.add_column("default")
    for preset, values in described["presets"].items():
        for index, (option, value) in enumerate(values.items()):
            table.add_row(preset if index == 0 else "", option, str(value),
                          str(defaults.get(option)), end_section=index == len(values) - 1)
    return table
