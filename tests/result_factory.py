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
    """Write ``result`` at its standard path under ``out_dir`` (validated, atomic); a schema
    1.1 result goes to its settings folder (one per seed), as the runner writes it."""
    from zsbench.identity import settings_folder

    settings = settings_folder(result["identity"]) if "identity" in result else None
    path = result_path(out_dir, result["method"], result["config_hash"],
                       result["protocol"]["id"], result["dataset"]["name"], settings)
    return write_result(dict(result), path)


# ---------- optional evidence fields (issue 14): bootstrap, seeds, leakage, kind, cost ----------

def with_bootstrap(result: dict[str, Any], half_width: float = 0.02,
                   replicates: int = 1000) -> dict[str, Any]:
    """``result`` plus a ``bootstrap`` block shaped as ``BootstrapResult.to_dict()``: test
    intervals ``point -+ half_width`` (clipped to [0, 1]) around the result's own means."""
    def interval(value: float | None) -> tuple[float | None, float | None]:
        if value is None:
            return None, None
        return max(0.0, value - half_width), min(1.0, value + half_width)

    mean = result["metrics"]["mean"]
    per_category = {
        category: {m: dict(zip(("low", "high"), interval(v), strict=True))
                   for m, v in values.items()}
        for category, values in result["metrics"]["per_category"].items()}
    result = copy.deepcopy(result)
    result["bootstrap"] = {
        "method": "stratified percentile bootstrap (images resampled per category)",
        "confidence": 0.95, "replicates": replicates, "seed": 0, "n_bins": 4096,
        "point": dict(mean), "low": {m: interval(v)[0] for m, v in mean.items()},
        "high": {m: interval(v)[1] for m, v in mean.items()},
        "per_category": per_category, "binning_error": {}}
    validate_result(result, "with_bootstrap")
    return result


def with_seed(result: dict[str, Any], seed: int, training_seed: int | None = None,
              **identity_overrides: Any) -> dict[str, Any]:
    """``result`` as a schema 1.1 result of evaluation seed ``seed`` (and, for a trained method,
    training seed ``training_seed`` in ``identity.training.config.seed``)."""
    from zsbench.identity import identity_key, run_identity

    training = None
    if training_seed is not None:
        training = {"config": {"epochs": 1, "lr": 0.001, "seed": training_seed},
                    "datasets": list(result["trained_on"]), "split": "test",
                    "fingerprints": {d: "f" * 16 for d in result["trained_on"]}}
    identity = run_identity(
        method=result["method"], config=result["method_config"],
        protocol=result["protocol"]["id"], target=result["dataset"]["name"],
        dataset_fingerprint=result["dataset"]["fingerprint"], resolution=518,
        mask_threshold=0.5, limit=None, seed=seed, precision="fp32", training=training)
    identity.update(copy.deepcopy(identity_overrides))
    result = copy.deepcopy(result)
    result.update({"schema_version": "1.1", "identity": identity,
                   "identity_key": identity_key(identity), "smoke": False, "seed": seed})
    validate_result(result, "with_seed")
    return result


def make_cost(latency_ms: float = 40.0, throughput: float = 50.0, peak_gib: float = 2.0,
              trainable: int = 0, gflops: float = 80.0, training_time_s: float | None = None,
              total: int = 428_000_000) -> dict[str, Any]:
    """A ``cost`` block shaped as ``zsbench.cost.method_cost(...)`` returns it."""
    return {"latency_batch1_ms": latency_ms, "throughput_images_per_s": throughput,
            "batch_size": 8, "repeats": 3, "peak_memory_bytes": int(peak_gib * 2 ** 30),
            "peak_memory_kind": "cuda_max_allocated", "flops_per_image": int(gflops * 1e9),
            "trainable_parameters": trainable, "total_parameters": total,
            "device": "cuda:0", "training_time_s": training_time_s}


def make_leakage(target: str, categories: tuple[str, ...], auxiliary: tuple[str, ...]
                 ) -> dict[str, Any]:
    """A ``leakage`` block from ``zsbench.leakage.leakage_ledger`` (the real check)."""
    from zsbench.leakage import DataUse, leakage_ledger

    return leakage_ledger(target, categories, [DataUse(d) for d in auxiliary]).to_dict()
