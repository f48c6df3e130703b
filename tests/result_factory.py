"""A small factory of schema-valid result dicts for tests (reusable by any test module).

    result = make_result("winclip", "mvtec", {"bottle": {"image_auroc": 0.9},
                                              "cable": {"image_auroc": 0.7}})
    path = write_result_file(tmp_path / "results", result)

The dataset mean is the unweighted mean of the non-null per-category values (null when every
category is null), as zsbench computes it; ``categories_used`` counts those values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zsbench.results import result_path, validate_result, write_result


def mean_of_categories(per_category: Mapping[str, Mapping[str, float | None]]
                       ) -> tuple[dict[str, float | None], dict[str, int]]:
    """(mean per metric, number of categories with a value per metric)."""
    metrics = sorted({m for values in per_category.values() for m in values})
    mean: dict[str, float | None] = {}
    used: dict[str, int] = {}
    for metric in metrics:
        values = [v[metric] for v in per_category.values() if v.get(metric) is not None]
        mean[metric] = sum(values) / len(values) if values else None
        used[metric] = len(values)
    return mean, used


def make_result(method: str = "winclip", dataset: str = "mvtec",
                per_category: Mapping[str, Mapping[str, float | None]] | None = None, *,
                config_hash: str = "0123456789ab", protocol: str = "mvtec->all",
                trained_on: tuple[str, ...] = ("visa",), domain: str | None = "industrial",
                created_at: str = "2025-01-01T00:00:00+00:00",
                git_commit: str | None = "abcdef1234567890", samples: list[str] | None = None,
                **overrides: Any) -> dict[str, Any]:
    """A validated result dict; ``overrides`` replace top-level fields after construction."""
    if per_category is None:
        per_category = {"bottle": {"image_auroc": 0.9, "image_ap": 0.95, "pixel_auroc": 0.8},
                        "cable": {"image_auroc": 0.7, "image_ap": 0.85, "pixel_auroc": 0.6}}
    per_category = {c: dict(v) for c, v in per_category.items()}
    mean, used = mean_of_categories(per_category)
    counts = {"images": 10, "anomalous": 5, "with_mask": 5, "regions": 6}
    result: dict[str, Any] = {
        "schema_version": "1.0",
        "method": method,
        "config_hash": config_hash,
        "method_config": {"image_size": 518},
        "protocol": {"id": protocol, "train": list(trained_on), "resolution": 518,
                     "mask_threshold": 0.5, "seed": 0},
        "dataset": {"name": dataset, "domain": domain, "source": f"prepared/{dataset}",
                    "fingerprint": "f" * 16, "split": "test"},
        "trained_on": list(trained_on),
        "metrics": {"mean": mean, "per_category": per_category, "categories_used": used},
        "counts": {"total": {k: v * len(per_category) for k, v in counts.items()},
                   "per_category": {c: dict(counts) for c in per_category}},
        "evaluation": {"resolution": 518, "image_size": 518, "batch_size": 8, "device": "cpu",
                       "precision": "fp32"},
        "backbone": {"name": "ViT-L-14-336", "pretrained": "openai", "weights_sha256": None},
        "checkpoint": None,
        "seed": 0,
        "provenance": {"zsbench_version": "0.1.0", "git_commit": git_commit,
                       "created_at": created_at, "hardware": {"device": "cpu", "cpus": 2},
                       "software": {"python": "3.11"}},
        "timings": {"train_s": None, "eval_s": 1.5, "images_per_s": 10.0},
    }
    if samples is not None:
        result["samples"] = list(samples)
    result.update(copy.deepcopy(overrides))
    validate_result(result, f"result_factory({method}, {dataset})")
    return result


def write_result_file(out_dir: str | Path, result: Mapping[str, Any]) -> Path:
    """Write ``result`` at its standard path under ``out_dir`` (validated, atomic)."""
    path = result_path(out_dir, result["method"], result["config_hash"],
                       result["protocol"]["id"], result["dataset"]["name"])
    return write_result(dict(result), path)
