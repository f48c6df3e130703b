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


def run_demo(out_dir: str | Path = "zsbench-demo", methods: Sequence[str] | None = None, *,
             epochs: int = 15, device: str = "cpu", build_site: bool = True,
             progress: Callable[[str, int, int], None] | None = None) -> DemoOutcome:
    """Run the demo; a method that fails is recorded in ``failures`` and the others go on."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    data_dir = prepare_demo_data(out_dir)
    outcome = DemoOutcome(out_dir=out_dir, results_dir=out_dir / "results")
    for name in methods or [e.name for e in METHODS.entries() if e.source == "built-in"]:
        cls = METHODS.get(name)
        protocol = "synthetic" if cls.info.trainable else "none->synthetic_b"
        overrides = {**DEMO_BACKBONE, **DEMO_METHOD_OVERRIDES.get(name, {})}
        options = RunOptions(data_dir=data_dir, output_dir=outcome.results_dir, device=device,
                             batch_size=16, resolution=DEMO_RESOLUTION, skip_existing=True,
                             save_maps=2, train_overrides={"epochs": epochs})
        try:
            outcome.outcomes[name] = run(name, protocol, overrides, options, progress=progress)
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
