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
from zsbench.cost import method_cost
from zsbench.distributed import barrier, init_from_env, local_device
from zsbench.errors import CheckpointError, ConfigError, DataError
from zsbench.evaluate import EvalSettings, default_num_workers, evaluate_dataset
from zsbench.evidence import EvidenceSettings
from zsbench.identity import (
    canonical_hash,
    identity_differences,
    identity_key,
    run_identity,
    settings_folder,
    train_identity,
)
from zsbench.leakage import DataUse, leakage_ledger
from zsbench.method import AnomalyMethod, build_method, config_hash, config_to_dict, make_config
from zsbench.progress import ProgressCallback
from zsbench.protocols import Protocol, resolve_protocol
from zsbench.provenance import cached_sha256_file
from zsbench.registry import ADAPTERS, METHODS
from zsbench.results import (  # build_result is re-exported: zsbench.runner.build_result
    ResultValidationError,
    build_result,
    empty_reason,
    protocol_slug,
    read_result,
    result_path,
    write_result,
)
from zsbench.seeding import seed_everything

logger = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunOptions:
    """Options of :func:`run` (the CLI's flags)."""

    data_dir: Path = Path("data")
    output_dir: Path = Path("results")
    device: str = field(default_factory=default_device)
    batch_size: int = 8
    num_workers: int = field(default_factory=default_num_workers)  # loader workers
    limit: int | None = None  # images per category: a smoke run, marked as such
    resolution: int | None = None  # overrides the protocol's evaluation resolution
    seed: int | None = None  # overrides the protocol's seed
    skip_existing: bool = False
    skip_missing: bool = False  # run the prepared targets, list the missing ones (else refuse)
    save_maps: int | str = 0  # overlay PNGs per category, or "all": every map stored (+4 PNGs)
    bootstrap: int = 0  # replicates of the 95 % bootstrap intervals (0: none)
    cost: bool = True  # measure latency, throughput, memory and FLOPs into the result
    max_memory: int | None = None  # bytes for a category's metrics; past it they spill to disk
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
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap must be >= 0 replicates, got {self.bootstrap}")
        if isinstance(self.save_maps, str) and self.save_maps != "all":
            if not self.save_maps.isdigit():
                raise ConfigError(f"save_maps must be a number of overlays per category or "
                                  f"'all', got {self.save_maps!r}")
            self.save_maps = int(self.save_maps)
        if isinstance(self.save_maps, int) and self.save_maps < 0:
            raise ConfigError(f"save_maps must be >= 0, got {self.save_maps}")

    @property
    def store_maps(self) -> bool:
        """``--save-maps all``: every image's score and map go to a map store."""
        return self.save_maps == "all"

    @property
    def overlays(self) -> int:
        """Overlay PNGs per category (4 with ``--save-maps all``)."""
        return 4 if self.store_maps else int(self.save_maps)


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


def _train_config(options: RunOptions, protocol: Protocol, cls: type[AnomalyMethod]) -> Any:
    """The trainer's settings: its defaults, then the method's paper recipe
    (``training_defaults``), then the command line's overrides."""
    from zsbench.train import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for what, values in ((f"method {cls.info.name!r} training_defaults",
                          cls.training_defaults), ("training option(s)", options.train_overrides)):
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {what} {', '.join(unknown)}; options: "
                              f"{', '.join(sorted(known))}")
    return TrainConfig(device=options.device, seed=protocol.seed, num_workers=options.num_workers,
                       **{**cls.training_defaults, **options.train_overrides})


def _training_plans(cls: type[AnomalyMethod], config: Any, protocol: Protocol,
                    groups: dict[tuple[str, ...], list[str]], options: RunOptions,
                    fingerprint: Callable[[str], str]) -> dict[tuple[str, ...], _Training]:
    """Decide, before any work, where each group's weights come from; a checkpoint whose
    recorded training data differ from the protocol's is an error naming both."""
    plans = {}
    recorded: list[str] | None = None
    if options.checkpoint is not None:
        from zsbench.checkpoints import read_checkpoint_metadata

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
            train_config = _train_config(options, protocol, cls)
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


def _missing_evidence(result: dict[str, Any], options: RunOptions) -> str | None:
    """What an existing result lacks of the evidence asked for now (intervals, stored maps):
    it does not change its numbers, so it is not part of the identity, but asking for it runs
    the target again."""
    if options.bootstrap and (result.get("bootstrap") or {}).get("replicates") != \
            options.bootstrap:
        return f"it has no {options.bootstrap}-replicate bootstrap intervals"
    if options.store_maps and not result.get("map_store"):
        return "it stored no maps (--save-maps all)"
    return None


def _existing_mean(path: Path, identity: dict[str, Any], options: RunOptions
                   ) -> dict[str, float | None] | None:
    """The mean metrics of an existing result that records ``identity``, evaluated something
    and holds the evidence asked for; None (run again, saying why) otherwise."""
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
              else empty[1] if empty else _missing_evidence(result, options))
    if reason:
        logger.warning("re-running %s: %s", path, reason)
        return None
    return result["metrics"]["mean"]


def _leakage(target: str, per_category: dict[str, Any], plan: _Training, protocol: Protocol
             ) -> dict[str, Any]:
    """The leakage ledger of a target: the data the method was trained on (its categories from
    the adapters) against the target's categories."""
    uses = [DataUse(d, split=protocol.train_split) for d in plan.trained_on]
    known = {d: list(ADAPTERS.get(d).info.categories) for d in plan.trained_on if d in ADAPTERS}
    return leakage_ledger(target, list(per_category), auxiliary=uses,
                          known_categories=known).to_dict()


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
    outcome = train_method(method, datasets, _train_config(options, protocol, type(method)),
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
                            save_maps=options.overlays, seed=protocol.seed,
                            evidence=EvidenceSettings(bootstrap=options.bootstrap,
                                                      bootstrap_seed=protocol.seed),
                            max_memory=options.max_memory)
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
    job = _RunJob(name, config, config_hash(name, config), protocol, settings, options, sources,
                  fingerprint, progress, world)
    outcomes = [TargetOutcome(t, None, "missing") for t in all_targets if t not in sources]
    for train_sets, targets in groups.items():
        outcomes += _run_group(job, plans[train_sets], targets)
    return outcomes


@dataclass
class _RunJob:
    """What every protocol group of one :func:`run` shares."""

    name: str
    config: Any
    config_hash: str
    protocol: Protocol
    settings: EvalSettings
    options: RunOptions
    sources: dict[str, str]
    fingerprint: Callable[[str], str]
    progress: ProgressCallback | None
    world: Any
    costs: dict[int, dict[str, Any]] = field(default_factory=dict)  # per method: measured once


def _run_group(job: _RunJob, plan: _Training, targets: list[str]) -> list[TargetOutcome]:
    """One protocol group: skip the targets done with the same settings, get the method's
    weights (checkpoint, training or none), evaluate and write the others."""
    from zsbench.checkpoints import load_checkpoint_into

    settings, options = job.settings, job.options
    identities = {t: run_identity(
        method=job.name, config=config_to_dict(job.config), protocol=job.protocol.id, target=t,
        dataset_fingerprint=job.fingerprint(t), resolution=settings.resolution,
        mask_threshold=settings.mask_threshold, limit=settings.limit, seed=settings.seed,
        precision=job.config.precision, training=plan.identity,
        checkpoint_sha256=plan.checkpoint_sha256) for t in targets}
    paths = {t: result_path(options.output_dir, job.name, job.config_hash, job.protocol.id, t,
                            settings_folder(identities[t])) for t in targets}
    existing = ({t: _existing_mean(paths[t], identities[t], options) for t in targets}
                if options.skip_existing else {})
    todo = [t for t in targets if existing.get(t) is None]
    outcomes = []
    for t in targets:
        if t not in todo:
            logger.info("skipping %s: %s records the same settings", t, paths[t])
            outcomes.append(TargetOutcome(t, paths[t], "skipped", existing[t]))
    if not todo:
        return outcomes
    seed_everything(job.protocol.seed)
    method = build_method(job.name, job.config, device=options.device)
    checkpoint, train_s = None, None
    if options.checkpoint is not None:
        load_checkpoint_into(method, options.checkpoint)
        checkpoint = options.checkpoint
    elif plan.identity is not None:
        checkpoint, train_s = _train(method, plan, job.protocol, options, job.sources,
                                     job.progress)
    for target in todo:
        evaluation = _evaluate_and_write(job, method, plan, target, identities[target],
                                         paths[target], train_s, checkpoint)
        outcomes.append(TargetOutcome(target, paths[target], "written", evaluation.mean))
    return outcomes


def _evaluate_and_write(job: _RunJob, method: AnomalyMethod, plan: _Training, target: str,
                        identity: dict[str, Any], path: Path, train_s: float | None,
                        checkpoint: Path | None) -> Any:
    """Evaluate ``method`` on ``target`` and write its result JSON (rank 0); returns the
    :class:`zsbench.evaluate.DatasetEvaluation`."""
    records = zdata.load(job.sources[target], split="test")
    samples_dir = path.parent / f"{target}_samples" if job.options.overlays else None
    store = path.parent / f"{target}_maps" if job.options.store_maps else None
    settings = dataclasses.replace(job.settings, evidence=dataclasses.replace(
        job.settings.evidence, store=store, identity_key=identity_key(identity)))
    evaluation = evaluate_dataset(method, records, settings, name=target,
                                  samples_dir=samples_dir, progress=job.progress)
    result = build_result(method, job.protocol, target, plan, evaluation, job.settings,
                          job.sources[target], identity, train_s, checkpoint, path)
    result["leakage"] = _leakage(target, evaluation.per_category, plan, job.protocol)
    if store is not None:
        result["map_store"] = store.relative_to(path.parent).as_posix()
    if job.options.cost:
        job.costs.setdefault(id(method), method_cost(
            method, batch_size=job.settings.batch_size, training_time_s=train_s))
        result["cost"] = job.costs[id(method)]
    if job.world.is_main:  # one writer; the others wait until the file is complete
        write_result(result, path)
        logger.info("wrote %s", path)
    barrier()
    return evaluation


def train_only(method_name: str, protocol_id: str, overrides: dict[str, Any] | None = None, *,
               data_dir: Path = Path("data"), checkpoint_dir: Path = Path("checkpoints"),
               device: str | None = None, resume: bool = False,
               train_overrides: dict[str, Any] | None = None,
               progress: ProgressCallback | None = None, preset: str | None = None,
               seed: int | None = None) -> dict[tuple[str, ...], Path | None]:
    """Train ``method_name`` once per distinct auxiliary set of the protocol; no evaluation.

    Returns the final checkpoint of each training set (under ``checkpoint_dir``, one folder per
    training identity)."""

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
    from zsbench.checkpoints import read_checkpoint_metadata

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    meta = read_checkpoint_metadata(path)
    return meta["method"], dict(meta["config"])
