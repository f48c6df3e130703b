"""The generic trainer of trainable methods, and zsbench checkpoints.

``train_method`` trains the declared parameter groups of a method on unified datasets with the
AnomalyCLIP-family defaults (METHODS.md section 0: Adam lr 1e-3, betas (0.5, 0.999), 15 epochs,
batch 8, seed 111, no augmentation). The backbone stays frozen and in eval mode. After every
epoch a checkpoint ``epoch_{NNN}.pt`` is written atomically; it holds the method name, config and
config hash, the backbone, the trainable state, the optimizer and RNG states, so that
``resume=True`` continues bit for bit (on CPU) where an interrupted run stopped.

A checkpoint is a dict loadable with ``torch.load(weights_only=True)``; ``format`` is
:data:`CHECKPOINT_FORMAT`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, Sampler

from zsbench import __version__
from zsbench.atomic import torch_save
from zsbench.distributed import (
    WorldInfo,
    all_reduce_gradients,
    all_reduce_values,
    barrier,
    current_world,
)
from zsbench.evaluate import raw_records
from zsbench.method import (
    AnomalyMethod,
    MethodConfig,
    build_method,
    config_hash,
    config_to_dict,
    make_config,
)
from zsbench.preprocess import AnomalyImageDataset

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "zsbench-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.pt$")
#: keys of a checkpoint that are not metadata (large or internal)
_STATE_KEYS = ("state_dict", "optimizer", "rng")

ProgressCallback = Callable[[str, int, int], None]


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


# -- checkpoints ---------------------------------------------------------------------------------

def epoch_checkpoint_path(checkpoint_dir: Path, epoch: int) -> Path:
    return Path(checkpoint_dir) / f"epoch_{epoch:03d}.pt"


def _rng_state(shuffle_generator: torch.Generator | None) -> dict[str, Any]:
    """Global RNG states (and the shuffling generator's) in ``weights_only``-loadable types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if shuffle_generator is not None:
        state["shuffle"] = shuffle_generator.get_state()
    return state


def _restore_rng_state(state: Mapping[str, Any], shuffle_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "shuffle" in state:
        shuffle_generator.set_state(state["shuffle"])


def save_checkpoint(method: AnomalyMethod, path: str | Path, *, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None,
                    history: Sequence[Mapping[str, Any]] | None = None,
                    step: int | None = None, train_config: TrainConfig | None = None,
                    shuffle_generator: torch.Generator | None = None,
                    extra: Mapping[str, Any] | None = None,
                    training: Mapping[str, Any] | None = None,
                    trained_on: Sequence[str] | None = None) -> Path:
    """Write a zsbench checkpoint of ``method``'s trainable state atomically; returns ``path``.

    ``step`` (optimizer steps so far), ``train_config``, ``shuffle_generator`` (its state),
    ``training`` (the training identity: :func:`zsbench.identity.train_identity`),
    ``trained_on`` (auxiliary dataset names; None when unknown, e.g. an imported file) and
    ``extra`` (JSON-like metadata, e.g. where an imported checkpoint came from) are recorded too.
    """
    name = method.info.name
    backbone = method.backbone
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "zsbench_version": __version__,
        "method": name,
        "config": config_to_dict(method.config),
        "config_hash": config_hash(name, method.config),
        "backbone": {"name": getattr(backbone, "name", None),
                     "pretrained": getattr(backbone, "pretrained", None),
                     "weights_sha256": getattr(backbone, "weights_sha256", None)},
        "epoch": int(epoch),
        "step": None if step is None else int(step),
        "history": [dict(entry) for entry in history or []],
        "train_config": (None if train_config is None
                         else json_ready(dataclasses.asdict(train_config))),
        "extra": json_ready(dict(extra or {})),
        "training": None if training is None else json_ready(dict(training)),
        "trained_on": None if trained_on is None else [str(d) for d in trained_on],
        "state_dict": {k: v.detach().cpu() for k, v in method.trainable_state_dict().items()},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng": _rng_state(shuffle_generator),
    }
    path = torch_save(checkpoint, path)
    logger.info("wrote checkpoint %s (%s, epoch %d)", path, name, epoch)
    return path


def json_ready(value: Any) -> Any:
    """Tuples to lists, recursively (what a checkpoint's metadata may hold)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors have many types
        raise ValueError(f"{path} is not a zsbench checkpoint: torch.load failed "
                         f"({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = (f"keys {sorted(checkpoint)[:8]}" if isinstance(checkpoint, dict)
                 else type(checkpoint).__name__)
        raise ValueError(f"{path} is not a zsbench checkpoint (found {found}); an upstream "
                         f"checkpoint must be converted with `zsbench import-checkpoint`")
    missing = [k for k in ("method", "config", "config_hash", "epoch", "state_dict")
               if k not in checkpoint]
    if missing:
        raise ValueError(f"zsbench checkpoint {path} lacks {missing}")
    return checkpoint


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """Everything a checkpoint records except the tensors: method, config, config_hash, epoch,
    step, backbone, history, train_config, zsbench_version, extra."""
    checkpoint = _read_checkpoint(path)
    return {k: v for k, v in checkpoint.items() if k not in _STATE_KEYS}


def _check_fits(method: AnomalyMethod, checkpoint: Mapping[str, Any], path: Path) -> None:
    name = method.info.name
    if checkpoint["method"] != name:
        raise ValueError(f"checkpoint {path} is for method {checkpoint['method']!r}, not {name!r}")
    own_hash = config_hash(name, method.config)
    if checkpoint["config_hash"] != own_hash:
        own = config_to_dict(method.config)
        recorded = checkpoint["config"]
        differing = sorted(k for k in set(own) | set(recorded) if own.get(k) != recorded.get(k))
        raise ValueError(f"checkpoint {path} was trained with another {name} config (hash "
                         f"{checkpoint['config_hash']}, this method {own_hash}); differing "
                         f"options: {', '.join(differing) or '(none: format change)'}")


def load_checkpoint_into(method: AnomalyMethod, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's trainable state into ``method`` (same method and config hash);
    returns its metadata (see :func:`read_checkpoint_metadata`)."""
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    _check_fits(method, checkpoint, path)
    try:
        method.load_trainable_state_dict(checkpoint["state_dict"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: {err}") from err
    logger.info("loaded %s (epoch %s) into %s", path, checkpoint["epoch"], method.info.name)
    return {k: v for k, v in checkpoint.items() if k not in _STATE_KEYS}


def config_from_dict(method_name: str, values: Mapping[str, Any]) -> MethodConfig:
    """A method config from a recorded config dict (JSON lists back to tuples)."""
    from zsbench.registry import METHODS

    cls = METHODS.get(method_name)
    defaults = cls.config_class()
    restored = {k: tuple(v) if isinstance(v, list) and isinstance(getattr(defaults, k, None), tuple)
                else v for k, v in values.items()}
    return make_config(cls, restored)


def load_method_from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                                backbone: torch.nn.Module | None = None) -> AnomalyMethod:
    """Rebuild the recorded method with its recorded config, load the checkpoint, eval mode.

    Without ``backbone`` it is loaded from the config; random weights (``pretrained`` none)
    cannot be rebuilt, so pass the backbone the checkpoint was trained on."""
    path = Path(path)
    meta = read_checkpoint_metadata(path)
    try:
        config = config_from_dict(meta["method"], meta["config"])
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"checkpoint {path}: cannot rebuild the config of "
                         f"{meta['method']!r}: {err}") from err
    if backbone is None and config.pretrained is None:
        logger.warning("checkpoint %s was trained on a random-weight backbone; rebuilding it "
                       "gives different weights (pass backbone=)", path)
    method = build_method(meta["method"], config, device=device, backbone=backbone)
    load_checkpoint_into(method, path)
    return method.eval()


def _epoch_checkpoints(checkpoint_dir: Path) -> dict[int, Path]:
    """Epoch -> checkpoint file in ``checkpoint_dir``."""
    if not checkpoint_dir.is_dir():
        return {}
    found = {}
    for path in checkpoint_dir.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


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
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    for epoch, path in _epoch_checkpoints(checkpoint_dir).items():
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
    final_epoch = math.ceil(total_steps / steps_per_epoch)
    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)

    existing = _epoch_checkpoints(checkpoint_dir) if checkpoint_dir else {}
    if final_epoch in existing:
        meta = read_checkpoint_metadata(existing[final_epoch])
        _check_same_training(existing[final_epoch], meta.get("training"), training)
        if meta.get("step") in (None, total_steps):
            load_checkpoint_into(method, existing[final_epoch])
            method.eval()
            logger.info("%s: final checkpoint %s exists, training skipped", name,
                        existing[final_epoch])
            return TrainOutcome(existing[final_epoch], final_epoch, list(meta["history"]),
                                time.perf_counter() - start_time, reused=True)

    optimizer = _optimizer(method, config)
    shuffle_generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    first_epoch, step = 1, 0
    resumable = sorted(e for e, path in existing.items() if e < final_epoch) if resume else []
    if resumable:
        path = existing[resumable[-1]]
        checkpoint = _read_checkpoint(path)
        _check_fits(method, checkpoint, path)
        _check_same_training(path, checkpoint.get("training"), training)
        if checkpoint.get("step") != resumable[-1] * steps_per_epoch:
            raise ValueError(f"cannot resume from {path}: it holds {checkpoint.get('step')} "
                             f"steps, not {resumable[-1]} full epochs of {steps_per_epoch} "
                             f"(another dataset or batch size?)")
        method.load_trainable_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        _restore_rng_state(checkpoint["rng"], shuffle_generator)
        history = list(checkpoint["history"])
        first_epoch, step = resumable[-1] + 1, checkpoint["step"]
        logger.info("%s: resuming after epoch %d from %s", name, resumable[-1], path)
    else:
        if existing:
            logger.info("%s: training from scratch over the checkpoints in %s (resume=False)",
                        name, checkpoint_dir)
        seed_everything(config.seed)

    world = current_world()
    batches = _RankSliceBatchSampler(RandomSampler(dataset, generator=shuffle_generator),
                                     config.batch_size, world)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda")
    last_checkpoint: Path | None = None
    _set_training_mode(method)
    try:
        for epoch in range(first_epoch, final_epoch + 1):
            epoch_start = time.perf_counter()
            sums: dict[str, float] = {}
            done = 0
            for number, batch in enumerate(loader):
                if step >= total_steps:
                    break
                weight = batches.weight(number, len(dataset))
                values = _train_step(method, optimizer, _to_device(batch, device), precision,
                                     device, weight)
                if not math.isfinite(values["loss"]):
                    raise FloatingPointError(f"{name}: loss became {values['loss']} at step "
                                             f"{step + 1} (epoch {epoch})")
                step += 1
                done += 1
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                if progress is not None and world.is_main:
                    progress(f"train {name} epoch {epoch}/{final_epoch} "
                             f"loss {sums['loss'] / done:.4f}", step, total_steps)
            record = {"epoch": epoch, "steps": done,
                      **{k: v / max(done, 1) for k, v in sums.items()},
                      "seconds": round(time.perf_counter() - epoch_start, 3)}
            history.append(record)
            logger.info("%s epoch %d/%d: %s", name, epoch, final_epoch,
                        {k: round(v, 5) for k, v in record.items() if isinstance(v, float)})
            if checkpoint_dir is not None:
                last_checkpoint = epoch_checkpoint_path(checkpoint_dir, epoch)
                if world.is_main:  # one writer; the others wait until the file is complete
                    save_checkpoint(method, last_checkpoint, epoch=epoch, optimizer=optimizer,
                                    history=history, step=step, train_config=config,
                                    shuffle_generator=shuffle_generator, training=training,
                                    trained_on=trained_on)
                barrier()
        if checkpoint_dir is not None and not config.keep_epoch_checkpoints and world.is_main:
            _prune_epoch_checkpoints(checkpoint_dir, final_epoch)
    finally:
        method.eval()
    return TrainOutcome(last_checkpoint, final_epoch, history, time.perf_counter() - start_time)


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
