"""Check result JSONs before they are submitted to the leaderboard (``zsbench submit --check``).

Beyond the JSON Schema, a submission must name a known method and dataset, cover the dataset's
categories, hold finite values, have dataset means equal to the mean of the per-category values,
and must not evaluate on a dataset it was trained on.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsbench.leaderboard.catalog import DATASET_BY_ID, method_key
from zsbench.registry import ADAPTERS, METHODS, Registry
from zsbench.results import find_result_files, result_schema

logger = logging.getLogger(__name__)

MEAN_TOLERANCE = 5e-5  # fractions; 0.005 percentage points


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submitted file: which file, which field, what."""

    path: str
    field: str
    message: str
    kind: str  # "read", "schema", "method", "dataset", "categories", "value", "mean",
    #            "overlap", "duplicate", "samples"

    def __str__(self) -> str:
        return f"{self.path}: field {self.field}: {self.message}"


def _registry_has(registry: Registry[Any], name: str) -> bool:
    """``name in registry``, tolerating a registry whose built-ins fail to import."""
    try:
        return name in registry
    except Exception as err:  # a half-written built-in must not hide the other checks
        logger.warning("could not load the %s registry: %s", registry.kind, err)
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


def _metric_sets(result: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    metrics = _dict(result.get("metrics"))
    if isinstance(metrics.get("mean"), dict):
        yield "metrics/mean", metrics["mean"]
    for category, values in _dict(metrics.get("per_category")).items():
        if isinstance(values, dict):
            yield f"metrics/per_category/{category}", values


def _value_problems(path: str, result: dict[str, Any]) -> list[Problem]:
    """Non-finite values (NaN, inf) slip through JSON Schema's range checks."""
    problems = []
    for where, values in _metric_sets(result):
        for metric, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(Problem(path, f"{where}/{metric}", f"{value!r} is not a finite "
                                        "number in [0, 1]; use null for an undefined metric",
                                        "value"))
    return problems


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
            _registry_has(METHODS, method) or method_key(method) in reported_methods):
        problems.append(Problem(path, "method", f"unknown method {method!r}: not registered "
                                "(zsbench methods list) and not in the reported tables",
                                "method"))
    dataset = _dict(result.get("dataset")).get("name")
    if not isinstance(dataset, str) or not dataset:
        return problems
    registered = _registry_has(ADAPTERS, dataset)
    if not (registered or dataset.startswith("synthetic") or dataset in DATASET_BY_ID):
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
    problems = []
    samples = result.get("samples")
    for i, relative in enumerate(samples if isinstance(samples, list) else []):
        if isinstance(relative, str) and not (Path(path).parent / relative).is_file():
            problems.append(Problem(path, f"samples/{i}", f"file not found: {relative!r} "
                                    "(paths are relative to the result file)", "samples"))
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
