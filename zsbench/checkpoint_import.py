"""Import released upstream checkpoints as zsbench checkpoints.

A method that can read its upstream checkpoints overrides the classmethod
:meth:`AnomalyMethod.convert_upstream_checkpoint` (``obj -> dict[str, Tensor]``), which maps the
loaded object to its trainable state (keys of :meth:`AnomalyMethod.trainable_state_dict`). The
importer checks the converted tensors against a freshly built method (names and shapes), loads
them and writes a checkpoint in the trainer's format
(:func:`zsbench.checkpoints.save_checkpoint`, epoch 0), recording the source file and its sha256.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsbench.checkpoints import save_checkpoint
from zsbench.errors import CheckpointError, ConfigError
from zsbench.method import AnomalyMethod, MethodConfig, build_method
from zsbench.provenance import sha256_file
from zsbench.registry import METHODS

logger = logging.getLogger(__name__)


def read_upstream_checkpoint(file: str | Path) -> Any:
    """``torch.load`` an upstream file safely (``weights_only``); clear errors name the file."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"upstream checkpoint not found: {file}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors have many types
        raise CheckpointError(f"cannot read upstream checkpoint {file} with torch.load("
                              f"weights_only=True): {type(err).__name__}: {err}") from err


def check_converted_state(method: AnomalyMethod, state: Mapping[str, Any], source: Path) -> None:
    """Raise a :class:`CheckpointError` naming ``source``, the key and both shapes if ``state``
    does not fit."""
    expected = method.trainable_state_dict()
    name = method.info.name
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        hint = (" (was it trained with other options? --preset upstream builds the method as "
                "the upstream code does)" if "upstream" in type(method).presets else "")
        raise CheckpointError(f"{source}: converted {name} checkpoint does not fit: missing "
                              f"{missing}, unexpected {unexpected}{hint}")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: {key!r} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{source}: tensor {key!r} has shape {tuple(tensor.shape)} but "
                                  f"{name} on backbone {method.backbone.name!r} expects "
                                  f"{tuple(expected[key].shape)} (a checkpoint for another "
                                  "backbone?)")


def import_checkpoint(method_name: str, file: str | Path, out: str | Path,
                      overrides: Mapping[str, Any] | MethodConfig | None = None, *,
                      device: str | torch.device = "cpu", backbone: nn.Module | None = None,
                      trained_on: Sequence[str] | None = None) -> Path:
    """Convert upstream checkpoint ``file`` of ``method_name`` into a zsbench checkpoint at
    ``out`` (method built with ``overrides``, e.g. the backbone); returns ``out``.

    ``trained_on`` names the auxiliary datasets the upstream file was trained on (e.g.
    ``["visa"]``); it is recorded, so that evaluating it under a protocol that trains on other
    data is an error. Without it the checkpoint records none."""
    cls = METHODS.get(method_name)
    name = cls.info.name
    if not cls.can_import_upstream():
        importable = [n for n in METHODS.names() if METHODS.get(n).can_import_upstream()]
        raise ConfigError(f"method {name!r} cannot import upstream checkpoints (it has no "
                          f"convert_upstream_checkpoint); methods that can: "
                          f"{', '.join(importable) or 'none'}")
    file = Path(file)
    obj = read_upstream_checkpoint(file)
    try:
        state = cls.convert_upstream_checkpoint(obj)
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{file} is not an upstream {name} checkpoint: {err}") from err
    method = build_method(name, overrides, device=device, backbone=backbone)
    check_converted_state(method, state, file)
    method.load_trainable_state_dict(state)
    source = {"imported_from": {"file": file.name, "sha256": sha256_file(file)}}
    path = save_checkpoint(method, out, epoch=0, extra=source,
                           trained_on=None if trained_on is None else list(trained_on))
    logger.info("imported %s checkpoint %s -> %s", name, file, path)
    return path
