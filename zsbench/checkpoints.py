"""The zsbench checkpoint format: what the trainer writes after each epoch and what
``zsbench import-checkpoint`` writes for an upstream file.

A checkpoint is a dict loadable with ``torch.load(weights_only=True)``; ``format`` is
:data:`CHECKPOINT_FORMAT`. It holds the method name, config and config hash, the backbone, the
trainable state, the optimizer and RNG states (so that a resumed training continues bit for
bit), the training history and identity. :mod:`zsbench.train` re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsbench import __version__
from zsbench.atomic import torch_save
from zsbench.method import (
    AnomalyMethod,
    build_method,
    config_from_dict,
    config_hash,
    config_to_dict,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "zsbench-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.pt$")
#: keys of a checkpoint that are not metadata (large or internal)
_STATE_KEYS = ("state_dict", "optimizer", "rng")


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


def restore_rng_state(state: Mapping[str, Any], shuffle_generator: torch.Generator) -> None:
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
                    step: int | None = None, train_config: Any = None,
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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The whole checkpoint dict (tensors included), checked to be in zsbench's format."""
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
    checkpoint = read_checkpoint(path)
    return {k: v for k, v in checkpoint.items() if k not in _STATE_KEYS}


def check_fits(method: AnomalyMethod, checkpoint: Mapping[str, Any], path: Path) -> None:
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
    checkpoint = read_checkpoint(path)
    check_fits(method, checkpoint, path)
    try:
        method.load_trainable_state_dict(checkpoint["state_dict"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: {err}") from err
    logger.info("loaded %s (epoch %s) into %s", path, checkpoint["epoch"], method.info.name)
    return {k: v for k, v in checkpoint.items() if k not in _STATE_KEYS}


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


def epoch_checkpoints(checkpoint_dir: Path) -> dict[int, Path]:
    """Epoch -> checkpoint file in ``checkpoint_dir``."""
    if not checkpoint_dir.is_dir():
        return {}
    found = {}
    for path in checkpoint_dir.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found
