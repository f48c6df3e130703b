"""``zsbench run``, ``train``, ``evaluate``, ``demo`` and ``import-checkpoint``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

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
                      image_size: int | None, precision: str | None = None,
                      samples: int | None = None) -> dict[str, str | int | None]:
    overrides: dict[str, str | int | None] = dict(_parse_sets(sets))
    if samples is not None:
        overrides["samples"] = samples
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


def _check_samples(method: str, samples: int | None) -> None:
    """``--samples`` only for a stochastic method (its config's ``samples`` field)."""
    if samples is None:
        return
    from zsbench.registry import METHODS

    info = METHODS.get(method).info
    if not info.stochastic:
        raise typer.BadParameter(f"method {method!r} is {info.kind}, not stochastic: it draws "
                                 f"no test-time samples", param_hint="'--samples'")


def _run_library(method: str, protocol: str, overrides: dict, options,
                 preset: str | None = None) -> list:
    from zsbench.runner import run

    with ProgressBars() as bars:
        return run(method, protocol, overrides, options, progress=bars, preset=preset)


PRESET_HELP = ("Named set of config values, e.g. 'upstream' (every quirk as the upstream code "
               "has it); see zsbench methods info NAME. --set values apply on top.")
PRECISION_HELP = ("fp32 (default, as upstream), bf16 or fp16 autocast (fp16: CUDA only); "
                  "recorded in the result and part of its identity.")


# -- option types shared by the commands (name, default, help and validation exactly once) ------

Method = Annotated[str, typer.Option("--method", "-m", help="Method name (zsbench methods list).")]
Device = Annotated[str | None, typer.Option("--device", callback=check_device,
                                            help="cpu, cuda, cuda:1 or mps.")]
Sets = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                                help="Method config KEY=VALUE.")]
BackboneName = Annotated[str | None, typer.Option("--backbone", help="open_clip model name.")]
Pretrained = Annotated[str | None, typer.Option("--pretrained", help="Tag, file or 'none'.")]
PretrainedAny = Annotated[str | None, typer.Option(
    "--pretrained", help="open_clip tag, local weights file, or 'none' for random weights.")]
ImageSize = Annotated[int | None, typer.Option("--image-size", min=1, help="Model input size.")]
Epochs = Annotated[int | None, typer.Option(
    "--epochs", min=1, help="Training epochs (15, or the method's paper recipe: methods info).")]
LearningRate = Annotated[float | None, typer.Option("--lr", callback=_positive,
                                                    help="Learning rate (1e-3).")]
TrainBatchSize = Annotated[int | None, typer.Option(
    "--train-batch-size", min=1, help="Training batch size (8, or the method's paper recipe).")]
Preset = Annotated[str | None, typer.Option("--preset", help=PRESET_HELP)]
def _check_precision(value: str | None) -> str | None:
    if value is not None and value not in ("fp32", "bf16", "fp16"):
        raise typer.BadParameter(f"expects fp32, bf16 or fp16, got {value!r}")
    return value


Precision = Annotated[str | None, typer.Option("--precision", metavar="fp32|bf16|fp16",
                                               callback=_check_precision,
                                               help=PRECISION_HELP)]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Evaluation batch size.")]


def _check_save_maps(value: str) -> str:
    if value != "all" and not (value.isdigit()):
        raise typer.BadParameter(f"expects a number of overlays per category or 'all', got "
                                 f"{value!r}")
    return value


SaveMaps = Annotated[str, typer.Option(
    "--save-maps", metavar="N|all", callback=_check_save_maps,
    help="Overlay PNGs per category (on one colour scale per dataset), or 'all': every image's "
         "score and map stored beside the result for zsbench rescore/compare (+4 overlays).")]
Bootstrap = Annotated[int, typer.Option(
    "--bootstrap", min=0, metavar="N", help="Bootstrap replicates of 95 % intervals for every "
                                            "metric (0: none; 1000 is usual).")]
def _parse_bytes(value: str | int | None) -> int | None:
    """``4G``, ``512M``, ``4e9`` -> bytes (K, M, G, T are powers of 1024)."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip().upper().removesuffix("B")
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    try:
        number = float(text[:-1] if factor > 1 else text) * factor
    except ValueError:
        raise typer.BadParameter(f"expects a size such as 8G, 512M or 4e9, got {value!r}"
                                 ) from None
    if number < 1 << 29:
        raise typer.BadParameter(f"expects at least 512M (the metrics' fixed overhead is "
                                 f"384M), got {value!r}")
    return int(number)


MaxMemory = Annotated[str | None, typer.Option(
    "--max-memory", metavar="SIZE", callback=_parse_bytes,
    help="Memory for one category's metrics, e.g. 8G: larger categories are ranked exactly out "
         "of core (on disk); default: each category in memory.")]
Cost = Annotated[bool, typer.Option(
    "--cost/--no-cost", help="Measure latency, throughput, peak memory and FLOPs into the "
                             "result.")]

#: help of --device where the default is the best available device (run, predict)
AUTO_DEVICE_HELP = "cpu, cuda, cuda:1 or mps (default: cuda when available)."


RunProtocol = Annotated[str, typer.Option(
    "--protocol", "-p", help="Protocol id, e.g. 'mvtec->all', 'visa->mvtec', 'none->all', "
                             "'paper'.")]
RunDataDir = Annotated[Path, typer.Option(
    "--data-dir", help="Folder of prepared datasets (zsbench data prepare); env "
                       "ZSBENCH_DATA_DIR.")]
RunOutputDir = Annotated[Path, typer.Option(
    "--output-dir", "-o", help="Where result JSONs (and checkpoints) go.")]
AutoDevice = Annotated[str | None, typer.Option("--device", callback=check_device,
                                                help=AUTO_DEVICE_HELP)]
NumWorkers = Annotated[int | None, typer.Option(
    "--num-workers", min=0, help="DataLoader workers decoding ahead of the forward (default: "
                                 "min(8, cores); env ZSBENCH_NUM_WORKERS).")]
SmokeLimit = Annotated[int | None, typer.Option(
    "--limit", min=1, help="Images per category (a stratified seeded subset), for smoke runs.")]
RunResolution = Annotated[int | None, typer.Option(
    "--resolution", min=1, help="Evaluation resolution (default: the protocol's, 518).")]
RunSeed = Annotated[int | None, typer.Option("--seed", min=0,
                                             help="Seed (default: the protocol's).")]
RunSeeds = Annotated[str | None, typer.Option(
    "--seeds", metavar="S1,S2,...", help="Run once per seed (training included), e.g. "
                                         "111,112,113; the leaderboard shows mean +- std.")]
SkipExisting = Annotated[bool, typer.Option(
    "--skip-existing", help="Skip targets whose result JSON exists (resumable sweeps).")]
RunSets = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="Method config KEY=VALUE (repeatable; see zsbench "
                                       "methods info).")]
CheckpointDir = Annotated[Path | None, typer.Option("--checkpoint-dir",
                                                    help="Where epoch checkpoints go.")]
ResumeRun = Annotated[bool, typer.Option(
    "--resume", help="Resume training from the newest epoch checkpoint.")]
Samples = Annotated[int | None, typer.Option(
    "--samples", min=1, help="Test-time samples of a stochastic method (e.g. bayes_pfl's "
                             "sampled prompts); recorded in the result with the seed.")]
SkipMissing = Annotated[bool, typer.Option(
    "--skip-missing", help="Run the prepared targets and list the missing ones (default: "
                           "refuse before any work, listing them).")]


def run_cmd(
    method: Method, protocol: RunProtocol = "paper", data_dir: RunDataDir = DATA_DIR,
    output_dir: RunOutputDir = Path("results"), device: AutoDevice = None,
    batch_size: BatchSize = 8, num_workers: NumWorkers = None, limit: SmokeLimit = None,
    resolution: RunResolution = None, seed: RunSeed = None, seeds: RunSeeds = None,
    skip_existing: SkipExisting = False, save_maps: SaveMaps = "0",
    bootstrap: Bootstrap = 0, cost: Cost = True, sets: RunSets = None,
    backbone: BackboneName = None, pretrained: PretrainedAny = None,
    image_size: ImageSize = None, epochs: Epochs = None, lr: LearningRate = None,
    train_batch_size: TrainBatchSize = None, checkpoint_dir: CheckpointDir = None,
    resume: ResumeRun = False, preset: Preset = None, precision: Precision = None,
    skip_missing: SkipMissing = False, max_memory: MaxMemory = None, samples: Samples = None,
) -> None:
    """Train (trainable methods) and evaluate a method on a protocol, writing one result
    JSON per target dataset."""
    from zsbench.evaluate import default_num_workers
    from zsbench.runner import RunOptions

    _check_sets(method, _parse_sets(sets))
    _check_samples(method, samples)
    outcomes = []
    for one_seed in _seed_list(seed, seeds):
        options = RunOptions(data_dir=data_dir, output_dir=output_dir, device=_device(device),
                             batch_size=batch_size, limit=limit,
                             num_workers=default_num_workers() if num_workers is None
                             else num_workers,
                             resolution=resolution, seed=one_seed, skip_existing=skip_existing,
                             save_maps=save_maps, bootstrap=bootstrap, cost=cost,
                             max_memory=max_memory,  # bytes: parsed by _parse_bytes
                             checkpoint_dir=checkpoint_dir, resume=resume,
                             skip_missing=skip_missing,
                             train_overrides=_train_overrides(epochs, lr, train_batch_size))
        outcomes += _run_library(
            method, protocol, _method_overrides(sets, backbone, pretrained, image_size,
                                                precision, samples), options, preset=preset)
    _report(outcomes)


def _seed_list(seed: int | None, seeds: str | None) -> list[int | None]:
    """``--seed`` or ``--seeds S1,S2`` (not both) as the seeds to run."""
    if seeds is None:
        return [seed]
    if seed is not None:
        fail("give --seed or --seeds, not both")
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds expects comma-separated integers such as 111,112,113, got {seeds!r}")
    if not values or min(values) < 0 or len(set(values)) != len(values):
        fail(f"--seeds expects distinct non-negative integers, got {seeds!r}")
    return values


def train_cmd(
    method: Annotated[str, typer.Option("--method", "-m", help="A trainable method.")],
    protocol: Annotated[str, typer.Option(
        "--protocol", "-p", help="Protocol whose auxiliary datasets are trained on.")
    ] = "mvtec->all",
    data_dir: Annotated[Path, typer.Option("--data-dir",
                                           help="Folder of prepared datasets.")] = DATA_DIR,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o",
                                             help="Checkpoint folder.")] = Path("checkpoints"),
    device: Device = None,
    sets: Sets = None,
    backbone: BackboneName = None,
    pretrained: Pretrained = None,
    image_size: ImageSize = None,
    epochs: Epochs = None,
    lr: LearningRate = None,
    train_batch_size: TrainBatchSize = None,
    resume: Annotated[bool, typer.Option("--resume",
                                         help="Resume from the newest epoch.")] = False,
    seed: Annotated[int | None, typer.Option("--seed",
                                             help="Seed (default: the protocol's).")] = None,
    preset: Preset = None,
    precision: Precision = None,
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


def evaluate_cmd(
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", "-c", help="A zsbench checkpoint (zsbench train, or "
                                   "import-checkpoint).")],
    protocol: Annotated[str, typer.Option(
        "--protocol", "-p", help="Protocol whose targets are evaluated, e.g. "
                                 "'visa->mvtec'.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Prepared datasets.")] = DATA_DIR,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o",
                                             help="Result JSON folder.")] = Path("results"),
    device: Device = None,
    batch_size: BatchSize = 8,
    limit: Annotated[int | None, typer.Option("--limit", min=1,
                                              help="Images per category.")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", min=1,
                                                   help="Evaluation resolution.")] = None,
    skip_existing: Annotated[bool, typer.Option("--skip-existing",
                                                help="Skip done targets.")] = False,
    save_maps: SaveMaps = "0",
    bootstrap: Bootstrap = 0,
    cost: Cost = True,
    max_memory: MaxMemory = None,
) -> None:
    """Evaluate a trained checkpoint on a protocol's targets (no training)."""
    from zsbench.runner import RunOptions, checkpoint_method

    method, config = checkpoint_method(checkpoint)
    options = RunOptions(data_dir=data_dir, output_dir=output_dir, device=_device(device),
                         batch_size=batch_size, limit=limit, resolution=resolution,
                         skip_existing=skip_existing, save_maps=save_maps,
                         bootstrap=bootstrap, cost=cost, max_memory=max_memory,
                         checkpoint=checkpoint)
    _report(_run_library(method, protocol, config, options))


def import_checkpoint_cmd(
    file: Annotated[Path, typer.Argument(help="Upstream checkpoint file (e.g. AnomalyCLIP's "
                                              "epoch_15.pth, APRIL-GAN's adapter).")],
    method: Annotated[str, typer.Option(
        "--method", "-m", help="A method that imports upstream checkpoints: anomalyclip, "
                               "april_gan, faprompt, tps.")],
    preset: Preset = None,
    *,
    out: Annotated[Path, typer.Option("--out",
                                      help="Where the zsbench checkpoint is written.")],
    sets: Sets = None,
    backbone: BackboneName = None,
    pretrained: Pretrained = None,
    trained_on: Annotated[str | None, typer.Option(
        "--trained-on", help="Auxiliary datasets the file was trained on, e.g. 'visa' or "
                             "'mvtec+visa' (recorded; evaluating it under a protocol that "
                             "trains on other data is refused).")] = None,
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


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Demo output folder.")] = Path("zsbench-demo"),
    methods: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help="Only these methods (repeatable; default: all).")] = None,
    epochs: Annotated[int, typer.Option(
        "--epochs", min=1, help="Training epochs of trainable methods.")] = 15,
    threads: Annotated[int, typer.Option(
        "--threads", min=1, help="torch CPU threads (the tiny backbone runs fastest "
                                 "single-threaded).")] = 1,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Methods run at once, each in its own process (default: one "
                                 "per CPU core, at most 8).")] = None,
) -> None:
    """Offline demo: synthetic datasets, a tiny random backbone, every method, the site."""
    import os

    import torch

    from zsbench.demo import run_demo

    torch.set_num_threads(max(1, threads))
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    console.print("[bold]zsbench demo[/]: two synthetic datasets in the MVTec layout, a tiny "
                  "backbone with [bold red]random weights[/]. The numbers below are a smoke "
                  "test of the pipeline, not measurements of the methods.")
    with ProgressBars() as bars:
        outcome = run_demo(out, methods, epochs=epochs, progress=bars, workers=workers)
    _report_demo(outcome)
    if outcome.failures:
        raise typer.Exit(1)


def _report_demo(outcome: Any) -> None:
    """The demo's tables, failures and where its results and site are."""
    from zsbench.demo import REAL_WEIGHTS_COMMAND
    from zsbench.results import load_results, results_table

    results, _ = load_results(outcome.result_files)
    for metric in ("image_auroc", "pixel_auroc"):
        frame = results_table(results, metric).reset_index()
        print_table(f"{metric} (%) on synthetic_b", list(frame.columns),
                    ([*(r[:5]), *(f"{v:.1f}" if v == v else None for v in r[5:])]
                     for r in frame.itertuples(index=False)))
    for name, err in outcome.failures.items():
        console.print(f"[red]{name} failed:[/] {err}", highlight=False)
    console.print(f"results: {outcome.results_dir}", highlight=False)
    if outcome.site:
        console.print(f"leaderboard: {outcome.site / 'index.html'}", highlight=False)
    console.print(f"finished in {outcome.seconds:.0f} s. With real CLIP weights and prepared "
                  f"datasets:\n  {REAL_WEIGHTS_COMMAND}", highlight=False)


def register(app: App) -> None:
    """Add the top-level job commands to ``app`` (its wrapper maps user errors to messages)."""
    app.command("run")(run_cmd)
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("import-checkpoint")(import_checkpoint_cmd)
    app.command("demo")(demo_cmd)
