"""Run identity: every setting that changes a number, recorded in each result and part of its key.

A result is only as trustworthy as the claim of what produced it. The identity of one evaluation
is a plain JSON object (:func:`run_identity`) holding the method and its full config (a local
weights file by its sha256, not its path), the weights, the protocol and target, the evaluation
resolution, mask threshold, image limit, seed, precision and map dtype, the dataset fingerprint
(or Hub revision), and how the method was trained (training config, auxiliary data and their
fingerprints) or which checkpoint file it loaded (by sha256).

Its key (:func:`identity_key`) names the folder a result is written to (:func:`settings_folder`),
so a smoke run never lands where a full run does; ``--skip-existing`` skips a result only when
the identity it records equals the requested one (:func:`identity_differences`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zsbench.provenance import cached_sha256_file

IDENTITY_VERSION = 1
#: the dtype of the anomaly maps that reach the metrics (the evaluator keeps float32)
MAP_DTYPE = "float32"


def canonical_hash(value: Any, length: int = 16) -> str:
    """Short sha256 of ``value`` as canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def weights_identity(pretrained: str | Path | None) -> str | None:
    """What the weights are, not where: ``sha256:<hex>`` for a local file, the tag otherwise
    (``None`` for random weights)."""
    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return f"sha256:{cached_sha256_file(path)}"
    return str(pretrained)


def _identity_exclusions(method: str) -> tuple[frozenset[str], dict[str, Any]]:
    """The method's compute-only fields and its omit-at-default fields with their defaults."""
    from zsbench.method import compute_only_fields, omitted_defaults
    from zsbench.registry import METHODS

    if method not in METHODS:  # e.g. a result read without its plugin installed: keep all
        return frozenset(), {}
    config_class = METHODS.get(method).config_class
    return compute_only_fields(config_class), omitted_defaults(config_class)


def method_identity(method: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The method and its config as they enter the identity (weights file by content; the
    method's compute-only fields, such as chunk sizes, left out)."""
    compute_only, defaults = _identity_exclusions(method)
    values = {k: v for k, v in config.items()
              if k not in compute_only and not (k in defaults and v == defaults[k])}
    if "pretrained" in values:
        values["pretrained"] = weights_identity(values["pretrained"])
    return {"method": method, "config": values}


def train_identity(train_config: Mapping[str, Any], datasets: Sequence[str], split: str,
                   fingerprints: Mapping[str, str]) -> dict[str, Any]:
    """How a method was trained: the settings that change its weights (not the device, the
    number of loader workers or where checkpoints go) and the auxiliary data it saw."""
    ignored = {"device", "num_workers"}
    return {"config": {k: v for k, v in sorted(train_config.items()) if k not in ignored},
            "datasets": list(datasets), "split": split,
            "fingerprints": {d: fingerprints[d] for d in datasets}}


def run_identity(*, method: str, config: Mapping[str, Any], protocol: str, target: str,
                 dataset_fingerprint: str, resolution: int, mask_threshold: float,
                 limit: int | None, seed: int, precision: str,
                 training: Mapping[str, Any] | None = None,
                 checkpoint_sha256: str | None = None) -> dict[str, Any]:
    """The identity of one evaluation (see the module docstring), JSON-normalised so that it
    compares equal to the one read back from a result file."""
    identity = {
        "version": IDENTITY_VERSION,
        **method_identity(method, config),
        "protocol": protocol,
        "target": target,
        "dataset_fingerprint": dataset_fingerprint,
        "resolution": int(resolution),
        "mask_threshold": float(mask_threshold),
        "limit": None if limit is None else int(limit),
        "seed": int(seed),
        "precision": precision,
        "map_dtype": MAP_DTYPE,
        "training": None if training is None else dict(training),
        "checkpoint_sha256": checkpoint_sha256,
    }
    return json.loads(json.dumps(identity, default=str))


def identity_key(identity: Mapping[str, Any]) -> str:
    """16 hex digits naming an identity."""
    return canonical_hash(identity)


def settings_folder(identity: Mapping[str, Any]) -> str:
    """A readable folder name for the target-independent settings of an identity, e.g.
    ``full-seed111-res518-fp32-1a2b3c4d`` or ``smoke3-seed111-res518-fp32-...`` (``--limit 3``).
    The hash covers every setting except the target and its fingerprint."""
    shared = {k: v for k, v in identity.items() if k not in ("target", "dataset_fingerprint")}
    kind = "full" if identity["limit"] is None else f"smoke{identity['limit']}"
    return (f"{kind}-seed{identity['seed']}-res{identity['resolution']}-"
            f"{identity['precision']}-{canonical_hash(shared, 8)}")


def identity_differences(recorded: Mapping[str, Any] | None, requested: Mapping[str, Any],
                         prefix: str = "") -> list[str]:
    """``"field: recorded -> requested"`` for every setting that differs (nested fields dotted);
    empty when the identities are equal."""
    if recorded is None:
        return [f"{prefix or 'identity'}: not recorded"]
    out = []
    for key in sorted(set(recorded) | set(requested)):
        old, new = recorded.get(key), requested.get(key)
        name = f"{prefix}{key}"
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out.extend(identity_differences(old, new, prefix=f"{name}."))
        elif old != new:
            out.append(f"{name}: {_short(old)} -> {_short(new)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
