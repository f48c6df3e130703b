"""``zsbench predict``: score images with a method, write overlays, print the scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsbench.cli.console import App, console, fail, print_table
from zsbench.cli.run import AUTO_DEVICE_HELP, BackboneName, ImageSize, Method, PretrainedAny


def predict_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    method: Method,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="A zsbench checkpoint (trainable methods need one).")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder of the overlay PNGs (<stem>_overlay.png).")
    ] = Path("predictions"),
    class_name: Annotated[str, typer.Option(
        "--class-name", help="Prompt word of the object (class-aware methods).")] = "object",
    sets: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Method config KEY=VALUE (repeatable).")] = None,
    backbone: BackboneName = None,
    pretrained: PretrainedAny = None,
    image_size: ImageSize = None,
    device: Annotated[str | None, typer.Option("--device", help=AUTO_DEVICE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score images with a method: print each image's score and write its anomaly map as
    a PNG overlay (image | map over image)."""
    from zsbench.cli.run import _method_overrides
    from zsbench.errors import ZsbenchError
    from zsbench.prediction import predict
    from zsbench.registry import UnknownNameError

    overrides = _method_overrides(sets, backbone, pretrained, image_size)
    try:
        results = predict(images, method, checkpoint=checkpoint, out_dir=out,
                          class_name=class_name, overrides=overrides, device=device)
    except (ZsbenchError, UnknownNameError, FileNotFoundError, KeyError, ValueError) as err:
        fail(str(err))
    if as_json:
        from zsbench.cli.console import print_json

        print_json([{"image": r.image, "score": r.score, "overlay": str(r.overlay)}
                    for r in results])
        return
    print_table(f"{method} scores", ["image", "score", "overlay"],
                ([r.image, f"{r.score:.6g}", str(r.overlay)] for r in results),
                keep=["score"], optional=["overlay"])
    console.print(f"wrote {len(results)} overlay(s) to {out}", highlight=False)


def register(app: App) -> None:
    """Add ``predict`` to ``app``."""
    app.command("predict")(predict_cmd)
