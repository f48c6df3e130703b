"""Check result JSONs before they are submitted to the leaderboard (``zsbench submit --check``).

Beyond the JSON Schema, a submission must name a known method and dataset, cover the dataset's
categories, hold finite values, have dataset means equal to the mean of the per-category values,
and must not evaluate on a dataset it was trained on. It must be a full run (no smoke run
with ``--limit``) of at least one image with at least one metric value, and its ``samples``
must be images inside its own folder (see :mod:`zsbench.leaderboard.checks`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsbench.leaderboard.catalog import dataset_by_id, method_key
from zsbench.leaderboard.checks import SampleError, resolve_sample, smoke_reason
from zsbench.registry import ADAPTERS, Registry
from zsbench.results import empty_reason, find_result_files, non_finite_fields, result_schema

logger = logging.getLogger(__name__)

MEAN_TOLERANCE = 5e-5  # fractions; 0.005 percentage points


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submitted file: which file, which field, what."""

    path: str
    field: str
    message: str
    kind: str  # "read", "schema", "method", "dataset", "categories", "value", "empty",
    #            "smoke", "mean", "overlap", "duplicate", "samples"

    def __str__(self) -> str:
        return f"{self.path}: field {self.field}: {self.message}"


def _registry_has(registry: Registry[Any], name: str) -> bool:
    """``name in registry``, tolerating a registry whose built-ins fail to import."""
    try:
        return name in registry
    except Exception as err:  # a half-written built-in must not hide the other checks
        logger.warning("could not load the %s registry: %s", registry.kind, err)
        return False


def _known_method(name: str) -> bool:
    """A registered method, looked up without importing torch (:mod:`zsbench.method_catalog`)."""
    from zsbench.method_catalog import is_method

    try:
        return is_method(name)
    except Exception as err:  # a half-written built-in must not hide the other checks
        logger.warning("could not load the method registry: %s", err)
        return False


def _reported_method_keys() -> set[str]:
    from zsbench.leaderboard.reported import ReportedDataError, load_reported

    try:
        return {method_key(v.method) for v in load_reported()}
    except (OSError, ReportedDataError) as err:
        logger.warning("could not read the reported numbers: %s", err)
        return set()


def _schema_problems(path: str, result: Any) -> list[Problem]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(result_schema())
    problems = []
    for err in sorted(validator.iter_errors(result), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        message = err.message
        if err.validator in ("minimum", "maximum") and where.startswith("metrics/"):
            message = (f"{err.instance!r} is outside [0, 1]; metric values are fractions "
                       f"(a percentage?)")
        problems.append(Problem(path, where, message, "schema"))
    return problems


def _dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else {} (the schema check reports the type)."""
    return value if isinstance(value, dict) else {}


def _value_problems(path: str, result: dict[str, Any]) -> list[Problem]:
    """Non-finite values (NaN, inf) slip through JSON Schema's range checks; a result of 0
    images or without any metric value measured nothing."""
    problems = []
    for where in non_finite_fields(result):
        if where.startswith("metrics/"):
            message = "is not a finite number in [0, 1]; use null for an undefined metric"
        else:
            message = "is not a finite number (NaN or infinity)"
        problems.append(Problem(path, where, message, "value"))
    if (empty := empty_reason(result)) is not None:
        problems.append(Problem(path, empty[0], empty[1], "empty"))
    return problems


def _smoke_problems(path: str, result: dict[str, Any]) -> list[Problem]:
    reason = smoke_reason(result)
    if reason is None:
        return []
    field = "smoke" if result.get("smoke") is True else "protocol/limit"
    return [Problem(path, field, f"{reason}; run again without --limit", "smoke")]


def _mean_problems(path: str, result: dict[str, Any]) -> list[Problem]:
    """The dataset mean must be the unweighted mean of the non-null per-category values."""
    metrics = _dict(result.get("metrics"))
    mean = _dict(metrics.get("mean"))
    per_category = _dict(metrics.get("per_category"))
    used = _dict(metrics.get("categories_used"))
    if not per_category:
        return []
    problems = []
    names = sorted({m for v in per_category.values() if isinstance(v, dict) for m in v} |
                   set(mean))
    for metric in names:
        values = [v[metric] for v in per_category.values() if isinstance(v, dict)
                  and isinstance(v.get(metric), (int, float)) and math.isfinite(v[metric])]
        expected = sum(values) / len(values) if values else None
        given = mean.get(metric)
        field = f"metrics/mean/{metric}"
        if given is None and expected is not None:
            problems.append(Problem(path, field, f"is missing or null but {len(values)} "
                                    f"categories have values (mean {expected:.6f})", "mean"))
        elif isinstance(given, (int, float)) and math.isfinite(given):
            if expected is None:
                problems.append(Problem(path, field, f"is {given} but no category has a value",
                                        "mean"))
            elif abs(given - expected) > MEAN_TOLERANCE:
                problems.append(Problem(path, field, f"is {given:.6f} but the mean of the "
                                        f"{len(values)} per-category values is {expected:.6f}",
                                        "mean"))
        if metric in used and isinstance(used[metric], int) and used[metric] != len(values):
            problems.append(Problem(path, f"metrics/categories_used/{metric}",
                                    f"is {used[metric]} but {len(values)} categories have a "
                                    "value", "mean"))
    return problems


def _name_problems(path: str, result: dict[str, Any], reported_methods: set[str]) -> list[Problem]:
    problems = []
    method = result.get("method")
    if isinstance(method, str) and method and not (
            _known_method(method) or method_key(method) in reported_methods):
        problems.append(Problem(path, "method", f"unknown method {method!r}: not registered "
                                "(zsbench methods list) and not in the reported tables",
                                "method"))
    dataset = _dict(result.get("dataset")).get("name")
    if not isinstance(dataset, str) or not dataset:
        return problems
    registered = _registry_has(ADAPTERS, dataset)
    if not (registered or dataset.startswith("synthetic") or dataset in dataset_by_id()):
        problems.append(Problem(path, "dataset/name", f"unknown dataset {dataset!r}: not "
                                "registered (zsbench data list) and not a synthetic* dataset",
                                "dataset"))
    if registered:
        expected = set(ADAPTERS.get(dataset).info.categories)
        given = set(_dict(_dict(result.get("metrics")).get("per_category")))
        missing, unknown = sorted(expected - given), sorted(given - expected)
        if missing:
            problems.append(Problem(path, "metrics/per_category", f"missing categories of "
                                    f"{dataset}: {', '.join(missing)}", "categories"))
        if unknown:
            problems.append(Problem(path, "metrics/per_category", f"categories not in "
                                    f"{dataset}: {', '.join(unknown)}", "categories"))
    trained_on = result.get("trained_on") or []
    train = _dict(result.get("protocol")).get("train") or []
    for field, names in (("trained_on", trained_on), ("protocol/train", train)):
        if isinstance(names, list) and dataset in names:
            problems.append(Problem(path, field, f"the target dataset {dataset!r} is also a "
                                    "training dataset: train/test overlap, not zero-shot",
                                    "overlap"))
    return problems


def _sample_problems(path: str, result: dict[str, Any]) -> list[Problem]:
    """Every ``samples`` entry must be an image inside the result's own folder."""
    problems = []
    samples = result.get("samples")
    for i, entry in enumerate(samples if isinstance(samples, list) else []):
        try:
            resolve_sample(path, entry)
        except SampleError as err:
            problems.append(Problem(path, f"samples/{i}", str(err), "samples"))
    return problems


def _read(path: Path) -> tuple[Any, Problem | None]:
    try:
        text = path.read_text("utf-8")
    except OSError as err:
        return None, Problem(str(path), "(file)", f"cannot read: {err.strerror or err}", "read")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, Problem(str(path), "(file)", f"not valid JSON: {err}", "read")


def check_submission(paths: Iterable[str | Path]) -> list[Problem]:
    """Check result JSON files (folders are searched for ``*.json``); [] means all is well."""
    paths = [Path(p) for p in paths]
    files = []
    problems: list[Problem] = []
    for p in paths:
        if p.is_dir():
            found = find_result_files([p])
            if not found:
                problems.append(Problem(str(p), "(folder)", "no .json files found", "read"))
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            problems.append(Problem(str(p), "(file)", "file not found", "read"))
    reported_methods = _reported_method_keys()
    seen: dict[tuple[Any, ...], str] = {}
    for path in files:
        result, problem = _read(path)
        if problem is not None:
            problems.append(problem)
            continue
        name = str(path)
        if not isinstance(result, dict):
            problems.append(Problem(name, "(top level)", "expected a JSON object", "schema"))
            continue
        problems += _schema_problems(name, result)
        problems += _value_problems(name, result)
        problems += _smoke_problems(name, result)
        problems += _mean_problems(name, result)
        problems += _name_problems(name, result, reported_methods)
        problems += _sample_problems(name, result)
        key = (str(result.get("method")), str(result.get("config_hash")),
               str(_dict(result.get("protocol")).get("id")),
               str(_dict(result.get("dataset")).get("name")))
        if key in seen:
            problems.append(Problem(name, "(file)", f"duplicate of {seen[key]} (same method, "
                                    "config_hash, protocol and dataset)", "duplicate"))
        else:
            seen[key] = name
    for problem in problems:
        logger.info("%s", problem)
    return problems
