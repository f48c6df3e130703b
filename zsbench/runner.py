"""The main job: run a method on a protocol, writing one result JSON per target dataset.

``run("tps", "mvtec->all")`` trains once per distinct auxiliary set (trainable methods only),
evaluates every target and writes ``<output_dir>/<method>/<config_hash>/<protocol>/<target>.json``
atomically. With ``skip_existing`` finished targets are skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zsbench import data as zdata
from zsbench.evaluate import DatasetEvaluation, EvalSettings, evaluate_dataset
from zsbench.method import AnomalyMethod, build_method, config_hash, config_to_dict, make_config
from zsbench.protocols import Protocol, resolve_protocol
from zsbench.provenance import provenance, sha256_file
from zsbench.registry import ADAPTERS, METHODS
from zsbench.results import (
    SCHEMA_VERSION,
    ResultValidationError,
    protocol_slug,
    read_result,
    result_path,
    write_result,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunOptions:
    """Options of :func:`run` (the CLI's flags)."""

    data_dir: Path = Path("data")
    output_dir: Path = Path("results")
    device: str = field(default_factory=default_device)
    batch_size: int = 8
    num_workers: int = 0
    limit: int | None = None
    resolution: int | None = None  # overrides the protocol's evaluation resolution
    seed: int | None = None  # overrides the protocol's seed
    skip_existing: bool = False
    save_maps: int = 0
    checkpoint_dir: Path | None = None  # default: <output_dir>/checkpoints
    checkpoint: Path | None = None  # evaluate this trained checkpoint instead of training
    resume: bool = False
    train_overrides: dict[str, Any] = field(default_factory=dict)  # epochs, lr, batch_size, ...

    def __post_init__(self) -> None:
        for name in ("data_dir", "output_dir", "checkpoint_dir", "checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))


@dataclass
class TargetOutcome:
    target: str
    path: Path
    status: str  # "written" or "skipped"
    mean: dict[str, float | None] = field(default_factory=dict)


def _existing_mean(path: Path) -> dict[str, float | None] | None:
    """The mean metrics of a valid existing result, or None (missing or invalid: run again)."""
    if not path.exists():
        return None
    try:
        return read_result(path)["metrics"]["mean"]
    except ResultValidationError as err:
        logger.warning("re-running: %s", err)
        return None


def _load_target(name: str, data_dir: Path, split: str = "test") -> tuple[Any, str, str]:
    source = zdata.resolve_source(name, data_dir)
    return zdata.load(source, split=split), str(source), zdata.dataset_fingerprint(source)


def _domain(name: str) -> str | None:
    return ADAPTERS.get(name).info.domain if name in ADAPTERS else None


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_result(method: AnomalyMethod, protocol: Protocol, target: str, train_sets: Sequence[str],
                 evaluation: DatasetEvaluation, settings: EvalSettings, source: str,
                 fingerprint: str, train_seconds: float | None, checkpoint: Path | None,
                 result_file: Path) -> dict[str, Any]:
    """Assemble the result JSON of one target (see ``zsbench/schemas/result.schema.json``)."""
    name = method.info.name
    bb = method.backbone
    return {
        "schema_version": SCHEMA_VERSION,
        "method": name,
        "config_hash": config_hash(name, method.config),
        "method_config": config_to_dict(method.config),
        "protocol": {"id": protocol.id, "train": list(train_sets),
                     "train_split": protocol.train_split, "resolution": settings.resolution,
                     "mask_threshold": settings.mask_threshold, "limit": settings.limit,
                     "seed": settings.seed},
        "dataset": {"name": target, "domain": _domain(target), "source": source,
                    "revision": None, "fingerprint": fingerprint, "split": "test"},
        "trained_on": list(train_sets) if method.info.trainable else [],
        "metrics": {"mean": evaluation.mean, "per_category": evaluation.per_category,
                    "categories_used": evaluation.categories_used},
        "counts": evaluation.counts,
        "evaluation": {"resolution": settings.resolution, "image_size": method.config.image_size,
                       "batch_size": settings.batch_size, "device": settings.device,
                       "precision": method.config.precision},
        "backbone": {"name": bb.name, "pretrained": bb.pretrained,
                     "weights_sha256": getattr(bb, "weights_sha256", None)},
        "checkpoint": ({"path": str(checkpoint), "sha256": sha256_file(checkpoint)}
                       if checkpoint else None),
        "seed": settings.seed,
        "provenance": provenance(settings.device),
        "timings": {"train_s": train_seconds, "eval_s": round(evaluation.seconds, 3),
                    "images_per_s": round(evaluation.images_per_s, 3)},
        "samples": [p.relative_to(result_file.parent).as_posix() for p in evaluation.samples],
    }


def _train(method: AnomalyMethod, train_sets: tuple[str, ...], protocol: Protocol,
           options: RunOptions, progress: ProgressCallback | None) -> tuple[Path | None, float]:
    from zsbench.train import TrainConfig, train_method

    datasets = [zdata.load(zdata.resolve_source(d, options.data_dir), split=protocol.train_split)
                for d in train_sets]
    cfg = TrainConfig(device=options.device, seed=protocol.seed, num_workers=options.num_workers,
                      **options.train_overrides)
    slug = protocol_slug("+".join(train_sets))
    ckpt_dir = (options.checkpoint_dir or options.output_dir / "checkpoints") / \
        method.info.name / config_hash(method.info.name, method.config) / slug
    start = time.perf_counter()
    outcome = train_method(method, datasets, cfg, checkpoint_dir=ckpt_dir, resume=options.resume,
                           progress=progress)
    return outcome.checkpoint, time.perf_counter() - start


def run(method_name: str, protocol_id: str, overrides: dict[str, Any] | None = None,
        options: RunOptions | None = None, progress: ProgressCallback | None = None
        ) -> list[TargetOutcome]:
    """Run ``method_name`` on ``protocol_id``; returns what happened to each target."""
    options = options or RunOptions()
    cls = METHODS.get(method_name)
    name = cls.info.name
    config = make_config(cls, overrides)
    protocol = resolve_protocol(protocol_id).with_options(resolution=options.resolution,
                                                          seed=options.seed)
    settings = EvalSettings(resolution=protocol.resolution, mask_threshold=protocol.mask_threshold,
                            batch_size=options.batch_size, num_workers=options.num_workers,
                            device=options.device, limit=options.limit,
                            save_maps=options.save_maps, seed=protocol.seed)
    chash = config_hash(name, config)
    outcomes: list[TargetOutcome] = []
    groups: dict[tuple[str, ...], list[str]] = {}
    for train_sets, target in protocol.runs():
        groups.setdefault(train_sets if cls.info.trainable else (), []).append(target)

    for train_sets, targets in groups.items():
        paths = {t: result_path(options.output_dir, name, chash, protocol.id, t) for t in targets}
        existing = {t: _existing_mean(paths[t]) for t in targets} if options.skip_existing else {}
        todo = [t for t in targets if existing.get(t) is None]
        for t in targets:
            if t not in todo:
                logger.info("skipping %s: %s exists", t, paths[t])
                outcomes.append(TargetOutcome(t, paths[t], "skipped", existing[t]))
        if not todo:
            continue
        _seed_everything(protocol.seed)
        method = build_method(name, config, device=options.device)
        checkpoint, train_s = None, None
        if options.checkpoint is not None:
            from zsbench.train import load_checkpoint_into

            load_checkpoint_into(method, options.checkpoint)
            checkpoint = options.checkpoint
        elif cls.info.trainable and train_sets:
            checkpoint, train_s = _train(method, train_sets, protocol, options, progress)
        elif cls.info.trainable:
            logger.warning("%s is trainable but protocol %s trains on nothing: evaluating the "
                           "untrained method", name, protocol.id)
        for target in todo:
            records, source, fingerprint = _load_target(target, options.data_dir)
            samples_dir = paths[target].parent / f"{target}_samples" if options.save_maps else None
            evaluation = evaluate_dataset(method, records, settings, name=target,
                                          samples_dir=samples_dir, progress=progress)
            result = build_result(method, protocol, target, train_sets, evaluation, settings,
                                  source, fingerprint, train_s, checkpoint, paths[target])
            write_result(result, paths[target])
            logger.info("wrote %s", paths[target])
            outcomes.append(TargetOutcome(target, paths[target], "written", evaluation.mean))
        del method
    return outcomes


def train_only(method_name: str, protocol_id: str, overrides: dict[str, Any] | None = None, *,
               data_dir: Path = Path("data"), checkpoint_dir: Path = Path("checkpoints"),
               device: str | None = None, resume: bool = False,
               train_overrides: dict[str, Any] | None = None,
               progress: ProgressCallback | None = None) -> dict[tuple[str, ...], Path | None]:
    """Train ``method_name`` once per distinct auxiliary set of the protocol; no evaluation.

    Returns the final checkpoint of each training set."""
    cls = METHODS.get(method_name)
    if not cls.info.trainable:
        raise ValueError(f"method {cls.info.name!r} is training-free: nothing to train "
                         f"(use zsbench run)")
    protocol = resolve_protocol(protocol_id)
    options = RunOptions(data_dir=data_dir, output_dir=checkpoint_dir,
                         device=device or default_device(), checkpoint_dir=checkpoint_dir,
                         resume=resume, train_overrides=dict(train_overrides or {}))
    config = make_config(cls, overrides)
    out: dict[tuple[str, ...], Path | None] = {}
    for train_sets in dict.fromkeys(t for t, _ in protocol.runs()):
        if not train_sets:
            raise ValueError(f"protocol {protocol.id!r} trains on nothing")
        _seed_everything(protocol.seed)
        method = build_method(cls.info.name, config, device=options.device)
        out[train_sets], _ = _train(method, train_sets, protocol, options, progress)
    return out


def checkpoint_method(path: Path) -> tuple[str, dict[str, Any]]:
    """The method name and config recorded in a zsbench checkpoint."""
    from zsbench.train import read_checkpoint_metadata

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = read_checkpoint_metadata(path)
    return meta["method"], dict(meta["config"])
