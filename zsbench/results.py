"""Result JSONs: one small validated file per (method, config, protocol, target dataset).

Layout under an output folder: ``<method>/<config_hash>/<protocol_slug>/<dataset>.json``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from zsbench import atomic

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1.0"
METRIC_NAMES = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
                "pixel_f1_max", "aupro", "aupro_legacy")


class ResultValidationError(ValueError):
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


def protocol_slug(protocol_id: str) -> str:
    """A file-system-safe form of a protocol id: ``"mvtec+visa->btad,mpdd"`` ->
    ``"mvtec+visa-to-btad,mpdd"``."""
    slug = protocol_id.replace("->", "-to-").replace("*", "all")
    return re.sub(r"[^A-Za-z0-9_.,+=-]", "_", slug)


def result_path(output_dir: str | Path, method: str, config_hash: str, protocol_id: str,
                dataset: str) -> Path:
    return Path(output_dir) / method / config_hash / protocol_slug(protocol_id) / f"{dataset}.json"


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
    """One row per (method, config hash, protocol), one column per dataset, macro means."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRIC_NAMES)}")
    rows: dict[tuple[str, str, str], dict[str, float | None]] = {}
    for r in results:
        key = (r["method"], r["config_hash"], r["protocol"]["id"])
        value = r["metrics"]["mean"].get(metric)
        rows.setdefault(key, {})[r["dataset"]["name"]] = (
            None if value is None else (100 * value if percent else value))
    index = pd.MultiIndex.from_tuples(list(rows), names=["method", "config", "protocol"])
    frame = pd.DataFrame(list(rows.values()), index=index)
    frame = frame.reindex(sorted(frame.columns), axis=1)
    if len(frame.columns):
        frame["mean"] = frame.mean(axis=1, skipna=True)
    return frame.sort_index()
