"""The generic trainer of trainable methods (checkpoints: :mod:`zsbench.checkpoints`).

``train_method`` trains the declared parameter groups of a method on unified datasets with the
AnomalyCLIP-family defaults (METHODS.md section 0: Adam lr 1e-3, betas (0.5, 0.999), 15 epochs,
batch 8, seed 111, no augmentation). The backbone stays frozen and in eval mode. After every
epoch a checkpoint ``epoch_{NNN}.pt`` is written atomically; it holds the method name, config and
config hash, the backbone, the trainable state, the optimizer and RNG states, so that
``resume=True`` continues bit for bit (on CPU) where an interrupted run stopped.

The checkpoint format lives in :mod:`zsbench.checkpoints`; its public names (``save_checkpoint``,
``read_checkpoint_metadata``, ``load_checkpoint_into``, ``load_method_from_checkpoint``,
``CHECKPOINT_FORMAT``) and ``config_from_dict``/``seed_everything`` stay importable from here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, Sampler

from zsbench.checkpoints import (  # the public names are re-exported (users' imports)
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    check_fits,
    epoch_checkpoint_path,
    epoch_checkpoints,
    json_ready,
    load_checkpoint_into,
    load_method_from_checkpoint,
    read_checkpoint,
    read_checkpoint_metadata,
    restore_rng_state,
    save_checkpoint,
)
from zsbench.data import raw_records
from zsbench.distributed import (
    WorldInfo,
    all_reduce_gradients,
    all_reduce_values,
    barrier,
    current_world,
)
from zsbench.method import AnomalyMethod, config_from_dict
from zsbench.preprocess import AnomalyImageDataset
from zsbench.progress import ProgressCallback
from zsbench.seeding import seed_everything  # re-exported: zsbench.train.seed_everything

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "TrainConfig",
    "TrainOutcome",
    "config_from_dict",
    "load_checkpoint_into",
    "load_method_from_checkpoint",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "seed_everything",
    "train_method",
    "training_precision",
]



@dataclass
class TrainConfig:
    """How a method is trained (upstream AnomalyCLIP defaults)."""

    epochs: int = 15
    batch_size: int = 8
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 111
    num_workers: int = 0
    device: str = "cpu"
    #: fp32 (upstream, default), bf16 or fp16 autocast; None = the method's own precision
    precision: str | None = None
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    #: keep every epoch's checkpoint after the final one is written (default: only the final)
    keep_epoch_checkpoints: bool = False


@dataclass
class TrainOutcome:
    """What :func:`train_method` did."""

    checkpoint: Path | None  # the final epoch's checkpoint (None without checkpoint_dir)
    epochs: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # wall time of this call
    reused: bool = False  # the final checkpoint existed and was loaded: nothing was trained

    @property
    def train_seconds(self) -> float:
        """Training time of all epochs, including those before a resume or a reuse."""
        return float(sum(entry.get("seconds", 0.0) for entry in self.history))


# -- training ------------------------------------------------------------------------------------

def _training_dataset(method: AnomalyMethod, datasets: Sequence[Any]) -> ConcatDataset:
    if isinstance(datasets, (str, bytes)) or not datasets:
        raise ValueError("train_method needs a non-empty list of training datasets")
    size = method.config.image_size
    parts = []
    for number, dataset in enumerate(datasets, start=1):
        if not hasattr(dataset, "__len__"):
            raise ValueError(f"training dataset {number} ({type(dataset).__name__}) has no "
                             f"length: streaming datasets cannot be trained on")
        if len(dataset) == 0:
            name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "unnamed"
            raise ValueError(f"training dataset {number} of {len(datasets)} ({name}) is empty")
        parts.append(AnomalyImageDataset(raw_records(dataset), size, method.backbone.mean,
                                         method.backbone.std, mask_size=size,
                                         interpolation=method.config.input_interpolation))
    return ConcatDataset(parts)


def _optimizer(method: AnomalyMethod, config: TrainConfig) -> torch.optim.Adam:
    groups = method.parameter_groups()
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError(f"method {method.info.name!r} declares no trainable parameters")
    backbone_ids = {id(p) for p in method.backbone.parameters()}
    if any(id(p) in backbone_ids for p in params):
        raise ValueError(f"method {method.info.name!r} declares backbone parameters as trainable; "
                         f"the backbone is frozen")
    declared = {id(p) for p in params}
    undeclared = [n for n, p in method.named_parameters()
                  if p.requires_grad and id(p) not in declared and id(p) not in backbone_ids]
    if undeclared:
        logger.warning("%s: parameters %s require gradients but are not in parameter_groups(); "
                       "they are not trained", method.info.name, undeclared)
    return torch.optim.Adam([dict(g, params=list(g["params"])) for g in groups], lr=config.lr,
                            betas=tuple(config.betas))


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(config: TrainConfig, method: AnomalyMethod) -> str:
    """The precision the steps run in: the trainer's if set, else the method's."""
    precision = config.precision or method.config.precision
    if precision not in ("fp32", *_AUTOCAST_DTYPES):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    return precision


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast only when asked: fp32 explicitly disables any enclosing autocast."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (got {device}); use bf16 or fp32")
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch on ``device``; masks (uint8 from the loader) as float 0/1, as losses take."""
    out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
           for k, v in batch.items()}
    if isinstance(out.get("mask"), torch.Tensor):
        out["mask"] = out["mask"].float()
    return out


def _set_training_mode(method: AnomalyMethod) -> None:
    method.train()
    method.backbone.eval()  # a frozen feature extractor: no dropout, fixed norms


def _check_same_training(path: Path, recorded: Mapping[str, Any] | None,
                         training: Mapping[str, Any] | None) -> None:
    """A checkpoint of another training identity is never reused or resumed from."""
    if training is None:
        return
    from zsbench.identity import identity_differences

    differences = identity_differences(recorded, json_ready(dict(training)), prefix="training.")
    if differences:
        raise ValueError(f"{path} was trained with other settings ({'; '.join(differences[:4])})"
                         f": it is not reused; use another checkpoint folder or delete it")


def _prune_epoch_checkpoints(checkpoint_dir: Path, final_epoch: int) -> None:
    for epoch, path in epoch_checkpoints(checkpoint_dir).items():
        if epoch != final_epoch:
            path.unlink(missing_ok=True)


def train_method(method: AnomalyMethod, datasets: Sequence[Any], config: TrainConfig, *,
                 checkpoint_dir: Path | None = None, resume: bool = False,
                 progress: ProgressCallback | None = None,
                 training: Mapping[str, Any] | None = None,
                 trained_on: Sequence[str] | None = None) -> TrainOutcome:
    """Train ``method``'s parameter groups on the concatenated ``datasets`` (unified records).

    With ``checkpoint_dir`` a checkpoint is written after each epoch (the earlier ones are
    removed once the final one is written, unless ``config.keep_epoch_checkpoints``); if the
    final one exists and records the same ``training`` identity, training is skipped and it is
    loaded; with ``resume`` training continues after the newest complete epoch (optimizer and
    RNG states restored). A checkpoint of another training identity is an error, never reused.
    ``trained_on`` (the auxiliary dataset names) is recorded in every checkpoint.
    ``progress(description, step, total)`` is called after every step. A fresh run seeds
    Python, NumPy and torch with ``config.seed`` (a resumed one restores their states). Steps
    run in :func:`training_precision`. The method is left in eval mode."""
    start_time = time.perf_counter()
    job = _plan_training(method, datasets, config, checkpoint_dir, training, trained_on)
    existing = epoch_checkpoints(job.checkpoint_dir) if job.checkpoint_dir else {}
    reused = _reuse_final_checkpoint(job, existing)
    if reused is not None:
        reused.seconds = time.perf_counter() - start_time
        return reused
    _start_or_resume(job, existing, resume)
    world = current_world()
    batches = _RankSliceBatchSampler(RandomSampler(job.dataset, generator=job.shuffle_generator),
                                     config.batch_size, world)
    loader = DataLoader(job.dataset, batch_sampler=batches, num_workers=config.num_workers,
                        pin_memory=job.device.type == "cuda")
    last_checkpoint: Path | None = None
    _set_training_mode(method)
    try:
        for epoch in range(job.first_epoch, job.final_epoch + 1):
            job.history.append(_train_epoch(job, loader, batches, epoch, progress, world))
            if job.checkpoint_dir is not None:
                last_checkpoint = _save_epoch(job, epoch, world)
        if job.checkpoint_dir is not None and not config.keep_epoch_checkpoints \
                and world.is_main:
            _prune_epoch_checkpoints(job.checkpoint_dir, job.final_epoch)
    finally:
        method.eval()
    return TrainOutcome(last_checkpoint, job.final_epoch, job.history,
                        time.perf_counter() - start_time)


@dataclass
class _TrainingJob:
    """One call of :func:`train_method`: what is trained, how many steps, and where it stands."""

    method: AnomalyMethod
    config: TrainConfig
    dataset: ConcatDataset
    device: torch.device
    precision: str
    steps_per_epoch: int
    total_steps: int
    final_epoch: int
    checkpoint_dir: Path | None
    training: Mapping[str, Any] | None
    trained_on: Sequence[str] | None
    optimizer: torch.optim.Optimizer | None = None
    shuffle_generator: torch.Generator | None = None
    history: list[dict] = field(default_factory=list)
    first_epoch: int = 1
    step: int = 0


def _plan_training(method: AnomalyMethod, datasets: Sequence[Any], config: TrainConfig,
                   checkpoint_dir: Path | None, training: Mapping[str, Any] | None,
                   trained_on: Sequence[str] | None) -> _TrainingJob:
    """Check the settings, move the method to its device and count the steps."""
    name = method.info.name
    if not method.info.trainable:
        raise ValueError(f"method {name!r} is training-free: nothing to train")
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError(f"epochs ({config.epochs}) and batch_size ({config.batch_size}) must "
                         f"be >= 1")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {config.max_steps}")
    device = torch.device(config.device)
    precision = training_precision(config, method)
    _autocast(precision, device)  # an impossible precision fails before any work
    method.to(device)
    dataset = _training_dataset(method, datasets)
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return _TrainingJob(method, config, dataset, device, precision, steps_per_epoch, total_steps,
                        math.ceil(total_steps / steps_per_epoch),
                        None if checkpoint_dir is None else Path(checkpoint_dir), training,
                        trained_on)


def _reuse_final_checkpoint(job: _TrainingJob, existing: Mapping[int, Path]
                            ) -> TrainOutcome | None:
    """The final epoch's checkpoint loaded into the method, when it exists, records the same
    training identity and all the steps; None (train) otherwise."""
    if job.final_epoch not in existing:
        return None
    path = existing[job.final_epoch]
    meta = read_checkpoint_metadata(path)
    _check_same_training(path, meta.get("training"), job.training)
    if meta.get("step") not in (None, job.total_steps):
        return None
    load_checkpoint_into(job.method, path)
    job.method.eval()
    logger.info("%s: final checkpoint %s exists, training skipped", job.method.info.name, path)
    return TrainOutcome(path, job.final_epoch, list(meta["history"]), reused=True)


def _start_or_resume(job: _TrainingJob, existing: Mapping[int, Path], resume: bool) -> None:
    """Create the optimizer and the shuffling generator; with ``resume`` restore them, the
    trainable state, the RNGs and the history from the newest complete epoch, else seed."""
    method, config, name = job.method, job.config, job.method.info.name
    job.optimizer = _optimizer(method, config)
    job.shuffle_generator = torch.Generator().manual_seed(config.seed)
    resumable = sorted(e for e in existing if e < job.final_epoch) if resume else []
    if not resumable:
        if existing:
            logger.info("%s: training from scratch over the checkpoints in %s (resume=False)",
                        name, job.checkpoint_dir)
        seed_everything(config.seed)
        return
    path = existing[resumable[-1]]
    checkpoint = read_checkpoint(path)
    check_fits(method, checkpoint, path)
    _check_same_training(path, checkpoint.get("training"), job.training)
    if checkpoint.get("step") != resumable[-1] * job.steps_per_epoch:
        raise ValueError(f"cannot resume from {path}: it holds {checkpoint.get('step')} "
                         f"steps, not {resumable[-1]} full epochs of {job.steps_per_epoch} "
                         f"(another dataset or batch size?)")
    method.load_trainable_state_dict(checkpoint["state_dict"])
    job.optimizer.load_state_dict(checkpoint["optimizer"])
    restore_rng_state(checkpoint["rng"], job.shuffle_generator)
    job.history = list(checkpoint["history"])
    job.first_epoch, job.step = resumable[-1] + 1, checkpoint["step"]
    logger.info("%s: resuming after epoch %d from %s", name, resumable[-1], path)


def _train_epoch(job: _TrainingJob, loader: DataLoader, batches: _RankSliceBatchSampler,
                 epoch: int, progress: ProgressCallback | None, world: WorldInfo
                 ) -> dict[str, Any]:
    """One epoch (or what is left of ``total_steps``); returns its history record."""
    name, epoch_start = job.method.info.name, time.perf_counter()
    sums: dict[str, float] = {}
    done = 0
    job.method.start_epoch(epoch, job.final_epoch)
    for number, batch in enumerate(loader):
        if job.step >= job.total_steps:
            break
        weight = batches.weight(number, len(job.dataset))
        values = _train_step(job.method, job.optimizer, _to_device(batch, job.device),
                             job.precision, job.device, weight)
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"{name}: loss became {values['loss']} at step "
                                     f"{job.step + 1} (epoch {epoch})")
        job.step += 1
        done += 1
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        if progress is not None and world.is_main:
            progress(f"train {name} epoch {epoch}/{job.final_epoch} "
                     f"loss {sums['loss'] / done:.4f}", job.step, job.total_steps)
    record = {"epoch": epoch, "steps": done, **{k: v / max(done, 1) for k, v in sums.items()},
              "seconds": round(time.perf_counter() - epoch_start, 3)}
    logger.info("%s epoch %d/%d: %s", name, epoch, job.final_epoch,
                {k: round(v, 5) for k, v in record.items() if isinstance(v, float)})
    return record


def _save_epoch(job: _TrainingJob, epoch: int, world: WorldInfo) -> Path:
    """Write the epoch's checkpoint (rank 0; the others wait until it is complete)."""
    path = epoch_checkpoint_path(job.checkpoint_dir, epoch)
    if world.is_main:
        save_checkpoint(job.method, path, epoch=epoch, optimizer=job.optimizer,
                        history=job.history, step=job.step, train_config=job.config,
                        shuffle_generator=job.shuffle_generator, training=job.training,
                        trained_on=job.trained_on)
    barrier()
    return path


class _RankSliceBatchSampler(Sampler[list[int]]):
    """The global batches of ``sampler`` (``batch_size`` each, the last one shorter), each cut
    into contiguous per-rank slices; yields this rank's slice. A rank whose slice of a short last
    batch is empty gets the batch's first sample with weight 0, so every rank takes every step.
    With one process the batches are exactly DataLoader's ``batch_size`` batches."""

    def __init__(self, sampler: Sampler[int], batch_size: int, world: WorldInfo) -> None:
        self.sampler, self.batch_size, self.world = sampler, batch_size, world

    def _bounds(self, size: int) -> tuple[int, int]:
        base, extra = divmod(size, self.world.world_size)
        rank = self.world.rank
        low = rank * base + min(rank, extra)
        return low, low + base + (1 if rank < extra else 0)

    def _own(self, batch: list[int]) -> list[int]:
        low, high = self._bounds(len(batch))
        return batch[low:high] or batch[:1]

    def weight(self, number: int, dataset_size: int) -> float:
        """This rank's share of global batch ``number`` of an epoch (0 for a stand-in sample)."""
        size = min(self.batch_size, dataset_size - number * self.batch_size)
        low, high = self._bounds(size)
        return (high - low) / size

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield self._own(batch)
                batch = []
        if batch:
            yield self._own(batch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]


def _train_step(method: AnomalyMethod, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
                precision: str, device: torch.device, weight: float) -> dict[str, float]:
    """One optimizer step; returns the loss and its parts. Across processes the gradients of
    the trainable parameters are summed with each rank's ``weight`` (its share of the global
    batch), which equals single-process training for losses that are means over samples; the
    logged values are combined the same way."""
    with _autocast(precision, device):
        loss, parts = method.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    all_reduce_gradients([p for g in optimizer.param_groups for p in g["params"]], weight)
    optimizer.step()
    values = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
    return all_reduce_values(values, weight)
