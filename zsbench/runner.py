"""The main job: run a method on a protocol, writing one result JSON per target dataset.

``run("tps", "mvtec->all")`` checks that every dataset of the protocol is prepared, trains once
per distinct auxiliary set (trainable methods only), evaluates every target and writes
``<output_dir>/<method>/<config_hash>/<protocol>/<settings>/<target>.json`` atomically. Each
result records its run identity (:mod:`zsbench.identity`); with ``skip_existing`` a target is
skipped only when its existing result records the requested identity and evaluated something,
so an interrupted sweep resumes and a smoke run is never taken for a full one. Checkpoints are
kept per training identity (config, seed, auxiliary data and their fingerprints).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zsbench import data as zdata
from zsbench.atomic import ensure_writable_dir
from zsbench.distributed import barrier, init_from_env, local_device
from zsbench.errors import CheckpointError, ConfigError, DataError
from zsbench.evaluate import DatasetEvaluation, EvalSettings, evaluate_dataset
from zsbench.identity import (
    canonical_hash,
    identity_differences,
    identity_key,
    run_identity,
    settings_folder,
    train_identity,
)
from zsbench.method import AnomalyMethod, build_method, config_hash, config_to_dict, make_config
from zsbench.protocols import Protocol, resolve_protocol
from zsbench.provenance import cached_sha256_file, provenance
from zsbench.registry import ADAPTERS, METHODS
from zsbench.results import (
    SCHEMA_VERSION,
    ResultValidationError,
    empty_reason,
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
    limit: int | None = None  # images per category: a smoke run, marked as such
    resolution: int | None = None  # overrides the protocol's evaluation resolution
    seed: int | None = None  # overrides the protocol's seed
    skip_existing: bool = False
    skip_missing: bool = False  # run the prepared targets, list the missing ones (else refuse)
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
        for name in ("limit", "resolution", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass
class TargetOutcome:
    target: str
    path: Path | None
    status: str  # "written", "skipped" or "missing" (not prepared, with skip_missing)
    mean: dict[str, float | None] = field(default_factory=dict)


@dataclass
class _Training:
    """How one protocol group's method gets its weights: trained here, from a checkpoint, or
    untrained (training-free methods)."""

    train_sets: tuple[str, ...]
    identity: dict[str, Any] | None = None  # training identity (trained here)
    checkpoint_sha256: str | None = None  # evaluated from options.checkpoint
    trained_on: list[str] = field(default_factory=list)
    trained_on_source: str = "none"  # training, checkpoint, protocol or none


def _domain(name: str) -> str | None:
    return ADAPTERS.get(name).info.domain if name in ADAPTERS else None


def _resolve_sources(names: Sequence[str], options: RunOptions) -> tuple[dict[str, str], list[str]]:
    """Source of every prepared dataset and the names that are not prepared."""
    sources, missing = {}, []
    for name in dict.fromkeys(names):
        try:
            sources[name] = zdata.resolve_source(name, options.data_dir)
        except zdata.DataSourceError:
            missing.append(name)
    return sources, missing


def _check_prepared(protocol: Protocol, groups: dict[tuple[str, ...], list[str]],
                    options: RunOptions) -> dict[str, str]:
    """Every dataset the protocol needs, checked before any training: missing auxiliary sets
    are an error; missing targets too, unless ``skip_missing`` (then they are dropped from
    ``groups`` and listed)."""
    train = [d for sets in groups for d in sets]
    targets = [t for ts in groups.values() for t in ts]
    sources, missing = _resolve_sources([*train, *targets], options)
    missing_train = [d for d in missing if d in train]
    missing_targets = [d for d in missing if d not in train]
    hint = (f"prepare them with 'zsbench data prepare NAME --raw DIR --out {options.data_dir}'")
    if missing_train or (missing_targets and not options.skip_missing):
        raise DataError(f"protocol {protocol.id!r}: not prepared in {options.data_dir}: "
                        f"{', '.join(missing_train + missing_targets)}; {hint}"
                        + ("" if missing_train else "; or pass --skip-missing to run the "
                           "prepared targets only"))
    if missing_targets:
        logger.warning("protocol %s: skipping targets that are not prepared in %s: %s",
                       protocol.id, options.data_dir, ", ".join(missing_targets))
        for targets_of_group in groups.values():
            targets_of_group[:] = [t for t in targets_of_group if t not in missing_targets]
    return sources


def _train_config(options: RunOptions, protocol: Protocol) -> Any:
    from zsbench.train import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options.train_overrides) - known)
    if unknown:
        raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; options: "
                          f"{', '.join(sorted(known))}")
    return TrainConfig(device=options.device, seed=protocol.seed, num_workers=options.num_workers,
                       **options.train_overrides)


def _training_plans(cls: type[AnomalyMethod], config: Any, protocol: Protocol,
                    groups: dict[tuple[str, ...], list[str]], options: RunOptions,
                    fingerprint: Callable[[str], str]) -> dict[tuple[str, ...], _Training]:
    """Decide, before any work, where each group's weights come from; a checkpoint whose
    recorded training data differ from the protocol's is an error naming both."""
    plans = {}
    recorded: list[str] | None = None
    if options.checkpoint is not None:
        from zsbench.train import read_checkpoint_metadata

        recorded = read_checkpoint_metadata(options.checkpoint).get("trained_on")
        if recorded is None and len(groups) > 1:
            raise CheckpointError(
                f"checkpoint {options.checkpoint} does not record its training data, and "
                f"protocol {protocol.id!r} trains on several auxiliary sets "
                f"({'; '.join('+'.join(s) for s in groups)}): one checkpoint cannot stand for "
                f"all of them. Evaluate it on a protocol with one auxiliary set, or record the "
                f"data with 'zsbench import-checkpoint --trained-on'.")
    for train_sets in groups:
        plan = _Training(train_sets)
        if options.checkpoint is not None:
            plan.checkpoint_sha256 = cached_sha256_file(options.checkpoint)
            if recorded is not None:
                if cls.info.trainable and tuple(recorded) != train_sets:
                    raise CheckpointError(
                        f"checkpoint {options.checkpoint} was trained on "
                        f"{'+'.join(recorded) or 'nothing'}, but protocol {protocol.id!r} "
                        f"trains on {'+'.join(train_sets) or 'nothing'} for "
                        f"{', '.join(groups[train_sets])}")
                plan.trained_on, plan.trained_on_source = list(recorded), "checkpoint"
            else:
                logger.warning("checkpoint %s does not record its training data; the result "
                               "states the protocol's (%s)", options.checkpoint,
                               "+".join(train_sets))
                plan.trained_on, plan.trained_on_source = list(train_sets), "protocol"
        elif cls.info.trainable and train_sets:
            train_config = _train_config(options, protocol)
            values = dataclasses.asdict(train_config)
            values["precision"] = train_config.precision or config.precision
            plan.identity = train_identity(values, train_sets, protocol.train_split,
                                           {d: fingerprint(d) for d in train_sets})
            plan.trained_on, plan.trained_on_source = list(train_sets), "training"
        elif cls.info.trainable:
            logger.warning("%s is trainable but protocol %s trains on nothing: evaluating the "
                           "untrained method", cls.info.name, protocol.id)
        plans[train_sets] = plan
    return plans


def _existing_mean(path: Path, identity: dict[str, Any]) -> dict[str, float | None] | None:
    """The mean metrics of an existing result that records ``identity`` and evaluated
    something; None (run again, saying why) otherwise."""
    if not path.exists():
        return None
    try:
        result = read_result(path)
    except ResultValidationError as err:
        logger.warning("re-running: %s", err)
        return None
    differences = identity_differences(result.get("identity"), identity)
    empty = empty_reason(result)
    reason = (f"its settings differ ({'; '.join(differences[:4])})" if differences
              else empty[1] if empty else None)
    if reason:
        logger.warning("re-running %s: %s", path, reason)
        return None
    return result["metrics"]["mean"]


def build_result(method: AnomalyMethod, protocol: Protocol, target: str, plan: _Training,
                 evaluation: DatasetEvaluation, settings: EvalSettings, source: str,
                 identity: dict[str, Any], train_seconds: float | None,
                 checkpoint: Path | None, result_file: Path) -> dict[str, Any]:
    """Assemble the result JSON of one target (see ``zsbench/schemas/result.schema.json``)."""
    name = method.info.name
    bb = method.backbone
    fingerprint = identity["dataset_fingerprint"]
    return {
        "schema_version": SCHEMA_VERSION,
        "method": name,
        "config_hash": config_hash(name, method.config),
        "method_config": config_to_dict(method.config),
        "identity": identity,
        "identity_key": identity_key(identity),
        "smoke": settings.limit is not None,
        "protocol": {"id": protocol.id, "train": list(plan.train_sets),
                     "train_split": protocol.train_split, "resolution": settings.resolution,
                     "mask_threshold": settings.mask_threshold, "limit": settings.limit,
                     "seed": settings.seed},
        "dataset": {"name": target, "domain": _domain(target), "source": source,
                    "revision": fingerprint.split("@", 1)[1] if "@" in fingerprint else None,
                    "fingerprint": fingerprint, "split": "test"},
        "trained_on": plan.trained_on,
        "trained_on_source": plan.trained_on_source,
        "metrics": {"mean": evaluation.mean, "per_category": evaluation.per_category,
                    "categories_used": evaluation.categories_used},
        "counts": evaluation.counts,
        "evaluation": {"resolution": settings.resolution, "image_size": method.config.image_size,
                       "batch_size": settings.batch_size, "device": settings.device,
                       "precision": method.config.precision, "map_dtype": identity["map_dtype"]},
        "backbone": {"name": bb.name, "pretrained": bb.pretrained,
                     "weights_sha256": getattr(bb, "weights_sha256", None)},
        "checkpoint": ({"path": str(checkpoint), "sha256": cached_sha256_file(checkpoint)}
                       if checkpoint else None),
        "seed": settings.seed,
        "provenance": provenance(settings.device),
        "timings": {"train_s": None if train_seconds is None else round(train_seconds, 3),
                    "eval_s": round(evaluation.seconds, 3),
                    "images_per_s": round(evaluation.images_per_s, 3)},
        "samples": [p.relative_to(result_file.parent).as_posix() for p in evaluation.samples],
    }


def _checkpoint_folder(method: AnomalyMethod, plan: _Training, options: RunOptions) -> Path:
    """``<root>/<method>/<config hash>/<aux sets>/<training key>``: one folder per training
    identity, so a checkpoint of other settings is never picked up."""
    root = options.checkpoint_dir or options.output_dir / "checkpoints"
    name = method.info.name
    return (root / name / config_hash(name, method.config) /
            protocol_slug("+".join(plan.train_sets)) / canonical_hash(plan.identity, 12))


def _train(method: AnomalyMethod, plan: _Training, protocol: Protocol, options: RunOptions,
           sources: dict[str, str], progress: ProgressCallback | None) -> tuple[Path | None, float]:
    """Train ``method`` as ``plan`` says; returns the final checkpoint and the training time
    of all its epochs (including those before a resume)."""
    from zsbench.train import train_method

    datasets = [zdata.load(sources[d], split=protocol.train_split) for d in plan.train_sets]
    outcome = train_method(method, datasets, _train_config(options, protocol),
                           checkpoint_dir=_checkpoint_folder(method, plan, options),
                           resume=options.resume, progress=progress, training=plan.identity,
                           trained_on=plan.train_sets)
    return outcome.checkpoint, outcome.train_seconds


def _group_targets(cls: type[AnomalyMethod], protocol: Protocol
                   ) -> dict[tuple[str, ...], list[str]]:
    groups: dict[tuple[str, ...], list[str]] = {}
    for train_sets, target in protocol.runs():
        groups.setdefault(train_sets if cls.info.trainable else (), []).append(target)
    return groups


def run(method_name: str, protocol_id: str, overrides: dict[str, Any] | None = None,
        options: RunOptions | None = None, progress: ProgressCallback | None = None, *,
        preset: str | None = None) -> list[TargetOutcome]:
    """Run ``method_name`` (its config from ``preset`` then ``overrides``) on ``protocol_id``;
    returns what happened to each target."""
    from zsbench.train import load_checkpoint_into, seed_everything

    options = options or RunOptions()
    world = init_from_env(options.device)  # under torchrun: join the group, shard the work
    options = dataclasses.replace(options, device=local_device(options.device, world))
    cls = METHODS.get(method_name)
    name = cls.info.name
    config = make_config(cls, overrides, preset=preset)
    protocol = resolve_protocol(protocol_id).with_options(resolution=options.resolution,
                                                          seed=options.seed)
    settings = EvalSettings(resolution=protocol.resolution, mask_threshold=protocol.mask_threshold,
                            batch_size=options.batch_size, num_workers=options.num_workers,
                            device=options.device, limit=options.limit,
                            save_maps=options.save_maps, seed=protocol.seed)
    groups = _group_targets(cls, protocol)
    all_targets = list(dict.fromkeys(t for ts in groups.values() for t in ts))
    ensure_writable_dir(options.output_dir, "output folder (--output-dir)")
    if options.checkpoint_dir is not None and cls.info.trainable:
        ensure_writable_dir(options.checkpoint_dir, "checkpoint folder (--checkpoint-dir)")
    sources = _check_prepared(protocol, groups, options)
    fingerprints: dict[str, str] = {}

    def fingerprint(dataset: str) -> str:
        if dataset not in fingerprints:
            fingerprints[dataset] = zdata.dataset_fingerprint(sources[dataset])
        return fingerprints[dataset]

    plans = _training_plans(cls, config, protocol, groups, options, fingerprint)
    chash = config_hash(name, config)
    outcomes = [TargetOutcome(t, None, "missing") for t in all_targets if t not in sources]
    for train_sets, targets in groups.items():
        plan = plans[train_sets]
        identities = {t: run_identity(
            method=name, config=config_to_dict(config), protocol=protocol.id, target=t,
            dataset_fingerprint=fingerprint(t), resolution=settings.resolution,
            mask_threshold=settings.mask_threshold, limit=settings.limit, seed=settings.seed,
            precision=config.precision, training=plan.identity,
            checkpoint_sha256=plan.checkpoint_sha256) for t in targets}
        paths = {t: result_path(options.output_dir, name, chash, protocol.id, t,
                                settings_folder(identities[t])) for t in targets}
        existing = ({t: _existing_mean(paths[t], identities[t]) for t in targets}
                    if options.skip_existing else {})
        todo = [t for t in targets if existing.get(t) is None]
        for t in targets:
            if t not in todo:
                logger.info("skipping %s: %s records the same settings", t, paths[t])
                outcomes.append(TargetOutcome(t, paths[t], "skipped", existing[t]))
        if not todo:
            continue
        seed_everything(protocol.seed)
        method = build_method(name, config, device=options.device)
        checkpoint, train_s = None, None
        if options.checkpoint is not None:
            load_checkpoint_into(method, options.checkpoint)
            checkpoint = options.checkpoint
        elif plan.identity is not None:
            checkpoint, train_s = _train(method, plan, protocol, options, sources, progress)
        for target in todo:
            records = zdata.load(sources[target], split="test")
            samples_dir = paths[target].parent / f"{target}_samples" if options.save_maps else None
            evaluation = evaluate_dataset(method, records, settings, name=target,
                                          samples_dir=samples_dir, progress=progress)
            result = build_result(method, protocol, target, plan, evaluation, settings,
                                  sources[target], identities[target], train_s, checkpoint,
                                  paths[target])
            if world.is_main:  # one writer; the others wait until the file is complete
                write_result(result, paths[target])
                logger.info("wrote %s", paths[target])
            barrier()
            outcomes.append(TargetOutcome(target, paths[target], "written", evaluation.mean))
        del method
    return outcomes


def train_only(method_name: str, protocol_id: str, overrides: dict[str, Any] | None = None, *,
               data_dir: Path = Path("data"), checkpoint_dir: Path = Path("checkpoints"),
               device: str | None = None, resume: bool = False,
               train_overrides: dict[str, Any] | None = None,
               progress: ProgressCallback | None = None, preset: str | None = None,
               seed: int | None = None) -> dict[tuple[str, ...], Path | None]:
    """Train ``method_name`` once per distinct auxiliary set of the protocol; no evaluation.

    Returns the final checkpoint of each training set (under ``checkpoint_dir``, one folder per
    training identity)."""
    from zsbench.train import seed_everything

    world = init_from_env(device or default_device())
    device = local_device(device or default_device(), world)
    cls = METHODS.get(method_name)
    if not cls.info.trainable:
        raise ConfigError(f"method {cls.info.name!r} is training-free: nothing to train "
                          f"(use zsbench run)")
    protocol = resolve_protocol(protocol_id).with_options(seed=seed)
    options = RunOptions(data_dir=data_dir, output_dir=checkpoint_dir,
                         device=device or default_device(), checkpoint_dir=checkpoint_dir,
                         resume=resume, train_overrides=dict(train_overrides or {}))
    config = make_config(cls, overrides, preset=preset)
    groups = {train_sets: [] for train_sets, _ in protocol.runs()}
    if () in groups:
        raise ConfigError(f"protocol {protocol.id!r} trains on nothing")
    sources, missing = _resolve_sources([d for sets in groups for d in sets], options)
    if missing:
        raise DataError(f"protocol {protocol.id!r}: auxiliary data not prepared in {data_dir}: "
                        f"{', '.join(missing)}")
    plans = _training_plans(cls, config, protocol, groups, options,
                            lambda d: zdata.dataset_fingerprint(sources[d]))
    out: dict[tuple[str, ...], Path | None] = {}
    for train_sets, plan in plans.items():
        seed_everything(protocol.seed)
        method = build_method(cls.info.name, config, device=options.device)
        out[train_sets], _ = _train(method, plan, protocol, options, sources, progress)
    return out


def checkpoint_method(path: Path) -> tuple[str, dict[str, Any]]:
    """The method name and config recorded in a zsbench checkpoint."""
    from zsbench.train import read_checkpoint_metadata

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = read_checkpoint_metadata(path)
    return meta["method"], dict(meta["config"])
