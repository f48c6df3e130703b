"""``zsbench rescore`` and ``zsbench compare``: evidence from stored maps, without the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zsbench.cli.console import App, console, print_json, print_table

Store = Annotated[Path, typer.Argument(help="A map store (run with --save-maps all) or the "
                                            "result JSON that names one.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _store_of(path: Path) -> Path:
    """A map store folder, or the store a result JSON names (``map_store``, relative to it)."""
    from zsbench.errors import ConfigError

    if path.is_file() and path.suffix == ".json":
        result = json.loads(path.read_text("utf-8"))
        store = result.get("map_store")
        if not store:
            raise ConfigError(f"{path} stores no maps: run it with --save-maps all")
        return (path.parent / store).resolve()
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def rescore_cmd(
    store: Store,
    metrics: Annotated[list[str] | None, typer.Option(
        "--metric", metavar="NAME", help="Metric or named variant (repeatable; default: all): "
                                         "aupro, aupro_legacy, aupro_anomalib_v2_2, "
                                         "aupro_ader_binned, f1_max_ader_grid, pixel_ap, "
                                         "...")] = None,
    as_json: AsJson = False,
) -> None:
    """Recompute metrics, including other codebases' variants, from stored maps."""
    from zsbench.map_store import rescore
    from zsbench.metrics import METRIC_NAMES
    from zsbench.rescoring import VARIANTS

    names = list(metrics or dict.fromkeys([*METRIC_NAMES, *VARIANTS]))
    out = rescore(_store_of(store), names)
    if as_json:
        print_json(out)
        return
    categories = list(out["per_category"])
    print_table(f"rescored from {store} (%)", ["metric", "mean", *categories],
                ([n, _pct(out["mean"][n]), *(_pct(out["per_category"][c].get(n))
                                              for c in categories)] for n in names),
                keep=["metric", "mean"], optional=categories[::-1])
    for note in sorted({n for n in out["computed_from"].values() if n.startswith("computed")}):
        console.print(f"[dim]{note}[/]", highlight=False)


def compare_cmd(
    first: Annotated[Path, typer.Argument(help="Result A (a JSON with stored maps) or its "
                                               "store.")],
    second: Annotated[Path, typer.Argument(help="Result B over the same images.")],
    replicates: Annotated[int, typer.Option("--replicates", min=10,
                                            help="Bootstrap replicates.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Bootstrap seed.")] = 0,
    as_json: AsJson = False,
) -> None:
    """Paired bootstrap of A - B over the same images: is the difference significant?"""
    from zsbench.bootstrap import paired_bootstrap
    from zsbench.map_store import read_store

    out = paired_bootstrap(read_store(_store_of(first)), read_store(_store_of(second)),
                           replicates=replicates, seed=seed).to_dict()
    if as_json:
        print_json(out)
        return
    rows = [[name, _pct(diff), f"[{_pct(out['low'][name])}, {_pct(out['high'][name])}]",
             "-" if out["p_value"][name] is None else f"{out['p_value'][name]:.4f}",
             "yes" if out["significant"][name] else "no"]
            for name, diff in out["difference"].items() if diff is not None]
    print_table(f"A - B, paired bootstrap ({replicates} replicates, 95 %)",
                ["metric", "difference (pts)", "95 % interval", "p", "significant"], rows,
                keep=["metric"])


def register(app: App) -> None:
    """Add ``rescore`` and ``compare`` to ``app``."""
    app.command("rescore")(rescore_cmd)
    app.command("compare")(compare_cmd)
