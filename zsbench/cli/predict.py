"""``zsbench predict``: score images with a method, write overlays, print the scores."""

from __future__ import annotations

from pathlib import Path

import typer

from zsbench.cli.console import App, console, fail, print_table


def register(app: App) -> None:
    """Add ``predict`` to ``app``."""

    @app.command("predict")
    def predict_cmd(
        images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
        method: str = typer.Option(..., "--method", "-m", help="Method name (zsbench methods "
                                   "list)."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="A zsbench "
                                               "checkpoint (trainable methods need one)."),
        out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Folder of the "
                                 "overlay PNGs (<stem>_overlay.png)."),
        class_name: str = typer.Option("object", "--class-name", help="Prompt word of the "
                                       "object (class-aware methods)."),
        sets: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE",
                                              help="Method config KEY=VALUE (repeatable)."),
        backbone: str | None = typer.Option(None, "--backbone", help="open_clip model name."),
        pretrained: str | None = typer.Option(None, "--pretrained", help="open_clip tag, local "
                                              "weights file, or 'none' for random weights."),
        image_size: int | None = typer.Option(None, "--image-size", min=1,
                                              help="Model input size."),
        device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 or mps "
                                          "(default: cuda when available)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
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
