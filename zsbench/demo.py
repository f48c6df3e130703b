"""``zsbench demo``: the main job end to end, offline, on synthetic data and a tiny backbone.

It writes two synthetic datasets in the MVTec AD layout, prepares them through the real adapter
and Parquet path, runs every registered method through the real runner (trainable methods train
on ``synthetic_a`` and are evaluated on ``synthetic_b``; training-free ones evaluate
``synthetic_b`` directly), and builds the leaderboard site. The backbone has random weights:
the numbers are a smoke test of the pipeline, not of the methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsbench.registry import METHODS
from zsbench.runner import RunOptions, TargetOutcome, run
from zsbench.synthetic import write_synthetic_dataset

logger = logging.getLogger(__name__)

DEMO_BACKBONE = {"backbone": "zsbench-tiny", "pretrained": None, "image_size": 112}
DEMO_RESOLUTION = 112
#: per-method config overrides that keep the demo within minutes on two CPU cores
DEMO_METHOD_OVERRIDES: dict[str, dict[str, Any]] = {
    "anovl": {"tta_steps": 1},
    "adaclip": {"prompt_ensemble": "minimal"},  # 2 prompts per image instead of 48
    "vcp_clip": {"learning_rate": 1e-3},  # upstream's 2e-5 needs far more than 15 tiny epochs
    "bayes_pfl": {"samples": 2, "lr_linear": 1e-3},  # upstream's 1e-4 heads barely move in 90
}
REAL_WEIGHTS_COMMAND = ("zsbench data prepare mvtec --raw DIR --out data   # and visa, ...\n"
                        "  zsbench run --method anomalyclip --protocol paper --data-dir data")


@dataclass
class DemoOutcome:
    out_dir: Path
    results_dir: Path
    outcomes: dict[str, list[TargetOutcome]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    site: Path | None = None
    seconds: float = 0.0

    @property
    def result_files(self) -> list[Path]:
        """The result JSONs of this demo's settings (written or skipped as identical), not
        whatever else an earlier demo with other settings left in ``results_dir``."""
        return [o.path for outcomes in self.outcomes.values() for o in outcomes
                if o.path is not None]


def prepare_demo_data(out_dir: Path, size: int = 128, n_normal: int = 8, n_anomalous: int = 8
                      ) -> Path:
    """Write and prepare ``synthetic_a`` and ``synthetic_b`` under ``out_dir``; returns the
    data folder (idempotent: prepared datasets are reused)."""
    from zsbench.prepare import prepare

    data_dir = out_dir / "data"
    for name in ("synthetic_a", "synthetic_b"):
        if (data_dir / name / "README.md").exists():
            continue
        raw = out_dir / "raw" / name
        write_synthetic_dataset(raw, name, size=size, n_normal=n_normal, n_anomalous=n_anomalous)
        prepare(name, raw, data_dir, overwrite=True)
    return data_dir


def _run_method(name: str, data_dir: Path, results_dir: Path, epochs: int, device: str,
                progress: Callable[[str, int, int], None] | None = None,
                threads: int | None = None) -> list[TargetOutcome]:
    """One method of the demo through the runner (the data are tiny: decoding in line, no
    loader workers). ``threads`` sets torch's threads (a worker process of a parallel demo)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    cls = METHODS.get(name)
    protocol = "synthetic" if cls.info.trainable else "none->synthetic_b"
    overrides = {**DEMO_BACKBONE, **DEMO_METHOD_OVERRIDES.get(name, {})}
    options = RunOptions(data_dir=data_dir, output_dir=results_dir, device=device,
                         batch_size=16, resolution=DEMO_RESOLUTION, skip_existing=True,
                         save_maps=2, num_workers=0,
                         # one recipe for every method: the paper recipes of some (30 epochs,
                         # batch 32) would not fit the demo's minutes and 24 training images
                         train_overrides={"epochs": epochs, "batch_size": 8, "lr": 1e-3})
    return run(name, protocol, overrides, options, progress=progress)


def run_demo(out_dir: str | Path = "zsbench-demo", methods: Sequence[str] | None = None, *,
             epochs: int = 15, device: str = "cpu", build_site: bool = True,
             progress: Callable[[str, int, int], None] | None = None,
             workers: int = 1) -> DemoOutcome:
    """Run the demo; a method that fails is recorded in ``failures`` and the others go on.

    ``workers`` > 1 runs that many methods at once, each in its own process with one torch
    thread (the tiny backbone gains nothing from more); ``progress`` then counts methods."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    data_dir = prepare_demo_data(out_dir)
    outcome = DemoOutcome(out_dir=out_dir, results_dir=out_dir / "results")
    names = list(methods or [e.name for e in METHODS.entries() if e.source == "built-in"])
    for name in names:
        METHODS.get(name)  # an unknown name fails here, before any work
    if workers > 1 and len(names) > 1 and device == "cpu":
        _run_in_processes(names, data_dir, outcome, epochs, device, progress, workers)
    else:
        for name in names:
            try:
                outcome.outcomes[name] = _run_method(name, data_dir, outcome.results_dir,
                                                     epochs, device, progress)
            except Exception as err:  # keep going: the demo reports every method's fate
                logger.exception("demo: method %s failed", name)
                outcome.failures[name] = f"{type(err).__name__}: {err}"
    if build_site:
        try:
            from zsbench.leaderboard.build import build_site
        except ImportError:
            logger.warning("leaderboard builder not available; no site built")
        else:
            outcome.site = build_site(outcome.result_files, out_dir / "site")
    outcome.seconds = time.perf_counter() - start
    return outcome


def _run_in_processes(names: list[str], data_dir: Path, outcome: DemoOutcome, epochs: int,
                      device: str, progress: Callable[[str, int, int], None] | None,
                      workers: int) -> None:
    """The methods in ``workers`` spawned processes, slowest-first (trainable methods), each
    result recorded in ``outcome`` in the order of ``names``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    order = sorted(names, key=lambda n: not METHODS.get(n).info.trainable)
    results: dict[str, list[TargetOutcome]] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(names)), mp_context=context) as pool:
        futures = {pool.submit(_run_method, name, data_dir, outcome.results_dir, epochs,
                               device, None, 1): name for name in order}
        for done, future in enumerate(as_completed(futures), start=1):
            name = futures[future]
            try:
                results[name] = future.result()
            except Exception as err:  # keep going: the demo reports every method's fate
                logger.error("demo: method %s failed: %s", name, err)
                outcome.failures[name] = f"{type(err).__name__}: {err}"
            if progress is not None:
                progress(f"demo: {name} done", done, len(names))
    outcome.outcomes.update({name: results[name] for name in names if name in results})
