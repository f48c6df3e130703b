"""Result JSONs: one small validated file per (method, config, protocol, target dataset).

Layout under an output folder:
``<method>/<config_hash>/<protocol_slug>/<settings>/<dataset>.json``, where ``<settings>`` names
the run's other settings (:func:`zsbench.identity.settings_folder`, e.g.
``full-seed111-res518-fp32-1a2b3c4d``), so runs that differ in any setting never share a file.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from zsbench import atomic
from zsbench.errors import ConfigError, DataError
from zsbench.metrics import METRIC_NAMES  # re-exported: zsbench.results.METRIC_NAMES

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1.1"


class ResultValidationError(DataError):
    """A result JSON that does not follow the schema; the message names the file and field."""


@lru_cache(maxsize=1)
def result_schema() -> dict[str, Any]:
    """The JSON Schema shipped with the package (``zsbench/schemas/result.schema.json``)."""
    text = resources.files("zsbench").joinpath("schemas/result.schema.json").read_text("utf-8")
    return json.loads(text)


def validate_result(result: dict[str, Any], source: str | Path = "<result>") -> None:
    """Raise :class:`ResultValidationError` naming ``source`` and the first bad field."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(result_schema())
    errors = sorted(validator.iter_errors(result), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ResultValidationError(f"{source}: field {where}: {err.message}{more}")
    bad = list(non_finite_fields(result))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ResultValidationError(f"{source}: field {bad[0]}: not a finite number{more}")


def non_finite_fields(value: Any, where: str = "") -> Iterator[str]:
    """The fields (``a/b/c``) of a JSON value that hold NaN or an infinity (JSON Schema's
    number checks let NaN through)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield where or "(top level)"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_fields(item, f"{where}/{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from non_finite_fields(item, f"{where}/{i}" if where else str(i))


def empty_reason(result: dict[str, Any]) -> tuple[str, str] | None:
    """(field, why) when a result evaluated no image or has no metric value, else None: such a
    result never counts as a finished run (``--skip-existing``) nor is shown or accepted."""
    counts = result.get("counts")
    total = counts.get("total") if isinstance(counts, dict) else None
    images = total.get("images") if isinstance(total, dict) else None
    if images == 0:
        return "counts/total/images", "0 images evaluated: not a result"
    metrics = result.get("metrics")
    mean = metrics.get("mean") if isinstance(metrics, dict) else None
    if isinstance(mean, dict) and all(v is None for v in mean.values()):
        return "metrics/mean", "every metric is null (or none given): nothing was measured"
    return None


def protocol_slug(protocol_id: str) -> str:
    """A file-system-safe form of a protocol id: ``"mvtec+visa->btad,mpdd"`` ->
    ``"mvtec+visa-to-btad,mpdd"``."""
    slug = protocol_id.replace("->", "-to-").replace("*", "all")
    return re.sub(r"[^A-Za-z0-9_.,+=-]", "_", slug)


def result_path(output_dir: str | Path, method: str, config_hash: str, protocol_id: str,
                dataset: str, settings: str | None = None) -> Path:
    """Where a result is written; ``settings`` is the run's settings folder
    (:func:`zsbench.identity.settings_folder`)."""
    folder = Path(output_dir) / method / config_hash / protocol_slug(protocol_id)
    return (folder / settings if settings else folder) / f"{dataset}.json"


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    """Validate, then write atomically (a crash leaves either the old file or none)."""
    validate_result(result, path)
    text = json.dumps(result, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic.write_text(path, text)


def read_result(path: str | Path) -> dict[str, Any]:
    """Read and validate one result JSON."""
    path = Path(path)
    try:
        result = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as err:
        raise ResultValidationError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(result, dict):
        raise ResultValidationError(f"{path}: expected a JSON object")
    validate_result(result, path)
    return result


def find_result_files(dirs: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file():
            files.append(d)
        elif d.is_dir():
            files.extend(p for p in sorted(d.rglob("*.json")) if not p.name.startswith("."))
    return files


def load_results(dirs: Iterable[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Load every result JSON under ``dirs``; bad files are reported (returned), not merged.

    Each loaded result gets ``"_path"`` set to its file."""
    results, problems = [], []
    for path in find_result_files(dirs):
        try:
            result = read_result(path)
        except ResultValidationError as err:
            logger.warning("skipping %s", err)
            problems.append(str(err))
            continue
        result["_path"] = str(path)
        results.append(result)
    return results, problems


def results_table(results: Iterable[dict[str, Any]], metric: str = "image_auroc",
                  percent: bool = True) -> pd.DataFrame:
    """One row per (method, kind, config hash, protocol, run settings), one column per
    dataset, macro means. ``kind`` is the method's recorded kind (e.g. "training-free,
    transductive"; "-" for results without one); ``run`` names the other settings (seed,
    resolution, precision, smoke limit: the result's settings folder), so runs that differ never
    share a row."""
    from zsbench.identity import settings_folder

    if metric not in METRIC_NAMES:
        raise ConfigError(f"unknown metric {metric!r}; choose from {', '.join(METRIC_NAMES)}")
    rows: dict[tuple[str, str, str, str, str], dict[str, float | None]] = {}
    for r in results:
        run = settings_folder(r["identity"]) if "identity" in r else "(no identity: schema 1.0)"
        kinds = (r.get("method_kind") or {}).get("kinds")
        key = (r["method"], ", ".join(kinds) if kinds else "-", r["config_hash"],
               r["protocol"]["id"], run)
        value = r["metrics"]["mean"].get(metric)
        rows.setdefault(key, {})[r["dataset"]["name"]] = (
            None if value is None else (100 * value if percent else value))
    index = pd.MultiIndex.from_tuples(list(rows),
                                      names=["method", "kind", "config", "protocol", "run"])
    frame = pd.DataFrame(list(rows.values()), index=index)
    frame = frame.reindex(sorted(frame.columns), axis=1)
    if len(frame.columns):
        frame["mean"] = frame.mean(axis=1, skipna=True)
    return frame.sort_index()


def method_kind(method: Any, seed: int) -> dict[str, Any]:
    """The result's ``method_kind``: the taxonomy flags and kinds of ``method.info``; a
    stochastic method adds its number of test-time samples and the seed they were drawn with
    (a transductive one's reference pool is in ``counts``, per category)."""
    info = method.info
    kind: dict[str, Any] = {"trainable": info.trainable, "transductive": info.transductive,
                            "stochastic": info.stochastic, "few_shot": info.few_shot,
                            "kinds": list(info.kinds)}
    if info.stochastic:
        kind["samples"] = int(method.config.samples)
        kind["seed"] = int(seed)
    return kind


def build_result(method: Any, protocol: Any, target: str, plan: Any, evaluation: Any,
                 settings: Any, source: str, identity: dict[str, Any],
                 train_seconds: float | None, checkpoint: Path | None, result_file: Path
                 ) -> dict[str, Any]:
    """Assemble the result JSON of one target (see ``zsbench/schemas/result.schema.json``)
    from the method (:class:`zsbench.method.AnomalyMethod`), the protocol, the runner's training
    plan (``train_sets``, ``trained_on``, ``trained_on_source``), the
    :class:`zsbench.evaluate.DatasetEvaluation` and its :class:`zsbench.evaluate.EvalSettings`.
    """
    from zsbench.identity import identity_key
    from zsbench.method import config_hash, config_to_dict
    from zsbench.provenance import cached_sha256_file, provenance
    from zsbench.registry import ADAPTERS

    name = method.info.name
    bb = method.backbone
    fingerprint = identity["dataset_fingerprint"]
    domain = ADAPTERS.get(target).info.domain if target in ADAPTERS else None
    result = {
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
        "dataset": {"name": target, "domain": domain, "source": source,
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
        "method_kind": method_kind(method, settings.seed),
    }
    if getattr(evaluation, "samples_scale", None):
        result["samples_scale"] = evaluation.samples_scale
    if getattr(evaluation, "bootstrap", None):
        result["bootstrap"] = evaluation.bootstrap
    return result
