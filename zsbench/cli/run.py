"""``zsbench run``, ``train``, ``evaluate``, ``demo`` and ``import-checkpoint``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from zsbench.cli.console import App, ProgressBars, check_device, console, fail, print_table

DATA_DIR = Path(os.environ.get("ZSBENCH_DATA_DIR", "data"))


def _parse_sets(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="'--set'")
        out[key.strip()] = value.strip()
    return out


def _method_overrides(sets: list[str] | None, backbone: str | None, pretrained: str | None,
                      image_size: int | None, precision: str | None = None
                      ) -> dict[str, str | int | None]:
    overrides: dict[str, str | int | None] = dict(_parse_sets(sets))
    if precision:
        overrides["precision"] = precision
    if backbone:
        overrides["backbone"] = backbone
    if pretrained is not None:
        overrides["pretrained"] = None if pretrained.lower() in ("none", "random") else pretrained
    if image_size:
        overrides["image_size"] = image_size
    return overrides


def _train_overrides(epochs: int | None, lr: float | None, train_batch_size: int | None
                     ) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    if epochs is not None:
        out["epochs"] = epochs
    if lr is not None:
        out["lr"] = lr
    if train_batch_size is not None:
        out["batch_size"] = train_batch_size
    return out


def _report(outcomes: list) -> None:
    print_table("results (%)", ["target", "status", "image AUROC", "pixel AUROC", "AUPRO"],
                ([o.target, o.status, _pct(o.mean.get("image_auroc")),
                  _pct(o.mean.get("pixel_auroc")), _pct(o.mean.get("aupro"))]
                 for o in outcomes))
    for o in outcomes:
        console.print(f"{o.target}: {o.path}", highlight=False, soft_wrap=True)


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.1f}"


def _device(device: str | None) -> str:
    from zsbench.runner import default_device

    return device or default_device()


def _positive(value: float | None) -> float | None:
    """Typer callback of options that must be > 0 (a learning rate)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value} is not > 0")
    return value


def _check_sets(method: str, sets: dict[str, str]) -> None:
    """Parse every ``--set KEY=VALUE`` against the method's config before any work starts."""
    from zsbench.errors import ConfigError
    from zsbench.method import make_config

    for key, value in sets.items():
        try:
            make_config(method, {key: value})
        except ConfigError as err:
            raise typer.BadParameter(f"{key}={value}: {err}", param_hint="'--set'") from None


def _run_library(method: str, protocol: str, overrides: dict, options,
                 preset: str | None = None) -> list:
    from zsbench.runner import run

    with ProgressBars() as bars:
        return run(method, protocol, overrides, options, progress=bars, preset=preset)


PRESET_HELP = ("Named set of config values, e.g. 'upstream' (every quirk as the upstream code "
               "has it); see zsbench methods info NAME. --set values apply on top.")
PRECISION_HELP = ("fp32 (default, as upstream), bf16 or fp16 autocast (fp16: CUDA only); "
                  "recorded in the result and part of its identity.")


def register(app: App) -> None:
    """Add the top-level job commands to ``app``."""

    @app.command("run")
    def run_cmd(
        method: str = typer.Option(..., "--method", "-m", help="Method name (zsbench methods "
                                   "list)."),
        protocol: str = typer.Option("paper", "--protocol", "-p",
                                     help="Protocol id, e.g. 'mvtec->all', 'visa->mvtec', "
                                          "'none->all', 'paper'."),
        data_dir: Path = typer.Option(DATA_DIR, "--data-dir", help="Folder of prepared datasets "
                                      "(zsbench data prepare); env ZSBENCH_DATA_DIR."),
        output_dir: Path = typer.Option(Path("results"), "--output-dir", "-o",
                                        help="Where result JSONs (and checkpoints) go."),
        device: str | None = typer.Option(None, "--device", callback=check_device,
                                          help="cpu, cuda, cuda:1 or mps (default: cuda when "
                                          "available)."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Evaluation batch size."),
        num_workers: int = typer.Option(0, "--num-workers", min=0, help="DataLoader workers."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Images per category (a "
                                         "stratified seeded subset), for smoke runs."),
        resolution: int | None = typer.Option(None, "--resolution", min=1, help="Evaluation "
                                              "resolution (default: the protocol's, 518)."),
        seed: int | None = typer.Option(None, "--seed", min=0,
                                        help="Seed (default: the protocol's)."),
        skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip targets whose "
                                           "result JSON exists (resumable sweeps)."),
        save_maps: int = typer.Option(0, "--save-maps", min=0, help="Overlay PNGs per category."),
        sets: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE",
                                              help="Method config KEY=VALUE "
                                              "(repeatable; see zsbench methods info)."),
        backbone: str | None = typer.Option(None, "--backbone", help="open_clip model name."),
        pretrained: str | None = typer.Option(None, "--pretrained", help="open_clip tag, local "
                                              "weights file, or 'none' for random weights."),
        image_size: int | None = typer.Option(None, "--image-size", min=1,
                                              help="Model input size."),
        epochs: int | None = typer.Option(None, "--epochs", min=1, help="Training epochs (15)."),
        lr: float | None = typer.Option(None, "--lr", callback=_positive,
                                        help="Learning rate (1e-3)."),
        train_batch_size: int | None = typer.Option(None, "--train-batch-size", min=1,
                                                    help="Training batch size (8)."),
        checkpoint_dir: Path | None = typer.Option(None, "--checkpoint-dir", help="Where "
                                                   "epoch checkpoints go."),
        resume: bool = typer.Option(False, "--resume", help="Resume training from the newest "
                                    "epoch checkpoint."),
        preset: str | None = typer.Option(None, "--preset", help=PRESET_HELP),
        precision: str | None = typer.Option(None, "--precision", help=PRECISION_HELP),
        skip_missing: bool = typer.Option(False, "--skip-missing", help="Run the prepared "
                                          "targets and list the missing ones (default: refuse "
                                          "before any work, listing them)."),
    ) -> None:
        """Train (trainable methods) and evaluate a method on a protocol, writing one result
        JSON per target dataset."""
        from zsbench.runner import RunOptions

        _check_sets(method, _parse_sets(sets))
        options = RunOptions(data_dir=data_dir, output_dir=output_dir, device=_device(device),
                             batch_size=batch_size, num_workers=num_workers, limit=limit,
                             resolution=resolution, seed=seed, skip_existing=skip_existing,
                             save_maps=save_maps, checkpoint_dir=checkpoint_dir, resume=resume,
                             skip_missing=skip_missing,
                             train_overrides=_train_overrides(epochs, lr, train_batch_size))
        outcomes = _run_library(
            method, protocol, _method_overrides(sets, backbone, pretrained, image_size, precision),
            options, preset=preset)
        _report(outcomes)

    @app.command("train")
    def train_cmd(
        method: str = typer.Option(..., "--method", "-m", help="A trainable method."),
        protocol: str = typer.Option("mvtec->all", "--protocol", "-p", help="Protocol whose "
                                     "auxiliary datasets are trained on."),
        data_dir: Path = typer.Option(DATA_DIR, "--data-dir", help="Folder of prepared "
                                      "datasets."),
        output_dir: Path = typer.Option(Path("checkpoints"), "--output-dir", "-o",
                                        help="Checkpoint folder."),
        device: str | None = typer.Option(None, "--device", callback=check_device,
                                          help="cpu, cuda, cuda:1 or mps."),
        sets: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE",
                                              help="Method config KEY=VALUE."),
        backbone: str | None = typer.Option(None, "--backbone", help="open_clip model name."),
        pretrained: str | None = typer.Option(None, "--pretrained", help="Tag, file or 'none'."),
        image_size: int | None = typer.Option(None, "--image-size", min=1,
                                              help="Model input size."),
        epochs: int | None = typer.Option(None, "--epochs", min=1, help="Training epochs (15)."),
        lr: float | None = typer.Option(None, "--lr", callback=_positive,
                                        help="Learning rate (1e-3)."),
        train_batch_size: int | None = typer.Option(None, "--train-batch-size", min=1,
                                                    help="Training batch size (8)."),
        resume: bool = typer.Option(False, "--resume", help="Resume from the newest epoch."),
        seed: int | None = typer.Option(None, "--seed", help="Seed (default: the protocol's)."),
        preset: str | None = typer.Option(None, "--preset", help=PRESET_HELP),
        precision: str | None = typer.Option(None, "--precision", help=PRECISION_HELP),
    ) -> None:
        """Train a method on a protocol's auxiliary data only; prints the checkpoint path."""
        from zsbench.runner import train_only

        _check_sets(method, _parse_sets(sets))
        with ProgressBars() as bars:
            paths = train_only(
                method, protocol,
                _method_overrides(sets, backbone, pretrained, image_size, precision),
                data_dir=data_dir, checkpoint_dir=output_dir, device=_device(device),
                resume=resume, train_overrides=_train_overrides(epochs, lr, train_batch_size),
                progress=bars, preset=preset, seed=seed)
        for train_sets, path in paths.items():
            console.print(f"trained on {'+'.join(train_sets)}: {path}", highlight=False)

    @app.command("evaluate")
    def evaluate_cmd(
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A zsbench checkpoint "
                                        "(zsbench train, or import-checkpoint)."),
        protocol: str = typer.Option(..., "--protocol", "-p", help="Protocol whose targets are "
                                     "evaluated, e.g. 'visa->mvtec'."),
        data_dir: Path = typer.Option(DATA_DIR, "--data-dir", help="Prepared datasets."),
        output_dir: Path = typer.Option(Path("results"), "--output-dir", "-o",
                                        help="Result JSON folder."),
        device: str | None = typer.Option(None, "--device", callback=check_device,
                                          help="cpu, cuda, cuda:1 or mps."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Evaluation batch size."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Images per category."),
        resolution: int | None = typer.Option(None, "--resolution", min=1, help="Evaluation "
                                              "resolution."),
        skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip done targets."),
        save_maps: int = typer.Option(0, "--save-maps", min=0, help="Overlay PNGs per category."),
    ) -> None:
        """Evaluate a trained checkpoint on a protocol's targets (no training)."""
        from zsbench.runner import RunOptions, checkpoint_method

        method, config = checkpoint_method(checkpoint)
        options = RunOptions(data_dir=data_dir, output_dir=output_dir, device=_device(device),
                             batch_size=batch_size, limit=limit, resolution=resolution,
                             skip_existing=skip_existing, save_maps=save_maps,
                             checkpoint=checkpoint)
        _report(_run_library(method, protocol, config, options))

    @app.command("import-checkpoint")
    def import_checkpoint_cmd(
        file: Path = typer.Argument(..., help="Upstream checkpoint file (e.g. AnomalyCLIP's "
                                    "epoch_15.pth, APRIL-GAN's adapter)."),
        method: str = typer.Option(..., "--method", "-m", help="A method that imports "
                                   "upstream checkpoints: anomalyclip, april_gan, faprompt, "
                                   "tps."),
        preset: str | None = typer.Option(None, "--preset", help=PRESET_HELP),
        out: Path = typer.Option(..., "--out", help="Where the zsbench checkpoint is written."),
        sets: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE",
                                              help="Method config KEY=VALUE."),
        backbone: str | None = typer.Option(None, "--backbone", help="open_clip model name."),
        pretrained: str | None = typer.Option(None, "--pretrained", help="Tag, file or 'none'."),
        trained_on: str | None = typer.Option(None, "--trained-on", help="Auxiliary datasets "
                                              "the file was trained on, e.g. 'visa' or "
                                              "'mvtec+visa' (recorded; evaluating it under a "
                                              "protocol that trains on other data is refused)."),
    ) -> None:
        """Convert a released upstream checkpoint into a zsbench checkpoint."""
        from zsbench.checkpoint_import import import_checkpoint

        if not file.is_file():
            fail(f"checkpoint file not found: {file}")
        _check_sets(method, _parse_sets(sets))
        from zsbench.method import make_config

        config = make_config(method, _method_overrides(sets, backbone, pretrained, None),
                             preset=preset)
        path = import_checkpoint(method, file, out, config,
                                 trained_on=trained_on.split("+") if trained_on else None)
        console.print(f"wrote {path}; evaluate with: zsbench evaluate --checkpoint {path} "
                      f"--protocol 'visa->mvtec'", highlight=False)

    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("zsbench-demo"), "--out", help="Demo output folder."),
        methods: list[str] | None = typer.Option(None, "--method", "-m", help="Only these "
                                                 "methods (repeatable; default: all)."),
        epochs: int = typer.Option(15, "--epochs", min=1,
                                   help="Training epochs of trainable methods."),
        threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads (the tiny "
                                    "backbone runs fastest single-threaded)."),
    ) -> None:
        """Offline demo: synthetic datasets, a tiny random backbone, every method, the site."""
        import torch

        from zsbench.demo import REAL_WEIGHTS_COMMAND, run_demo
        from zsbench.results import load_results, results_table

        torch.set_num_threads(max(1, threads))

        console.print("[bold]zsbench demo[/]: two synthetic datasets in the MVTec layout, a tiny "
                      "backbone with [bold red]random weights[/]. The numbers below are a smoke "
                      "test of the pipeline, not measurements of the methods.")
        with ProgressBars() as bars:
            outcome = run_demo(out, methods, epochs=epochs, progress=bars)
        results, _ = load_results(outcome.result_files)
        for metric in ("image_auroc", "pixel_auroc"):
            frame = results_table(results, metric).reset_index()
            print_table(f"{metric} (%) on synthetic_b", list(frame.columns),
                        ([*(r[:4]), *(f"{v:.1f}" if v == v else None for v in r[4:])]
                         for r in frame.itertuples(index=False)))
        for name, err in outcome.failures.items():
            console.print(f"[red]{name} failed:[/] {err}", highlight=False)
        console.print(f"results: {outcome.results_dir}", highlight=False)
        if outcome.site:
            console.print(f"leaderboard: {outcome.site / 'index.html'}", highlight=False)
        console.print(f"finished in {outcome.seconds:.0f} s. With real CLIP weights and prepared "
                      f"datasets:\n  {REAL_WEIGHTS_COMMAND}", highlight=False)
        if outcome.failures:
            raise typer.Exit(1)
