"""The evaluator: batched inference of a method on one dataset, then per-category metrics.

Inference runs category by category so that only one category's maps are in memory (as
float16 at the evaluation resolution, with boolean masks); metrics come from
:mod:`zsbench.metrics` and the dataset figure is the macro mean over categories.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from zsbench import metrics
from zsbench.anomaly_maps import upsample
from zsbench.method import AnomalyMethod
from zsbench.overlays import save_overlay
from zsbench.preprocess import AnomalyImageDataset, denormalize

logger = logging.getLogger(__name__)

#: progress callback: (description, completed, total)
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class EvalSettings:
    """How a dataset is evaluated (from the protocol and the command line)."""

    resolution: int = 518
    mask_threshold: float = 0.5
    batch_size: int = 8
    num_workers: int = 0
    device: str = "cpu"
    limit: int | None = None  # images per category (smoke runs); a stratified, seeded subset
    save_maps: int = 0  # overlay PNGs per category
    seed: int = 111


@dataclass
class DatasetEvaluation:
    """Everything the result JSON needs from one evaluation."""

    per_category: dict[str, dict[str, float | None]]
    mean: dict[str, float | None]
    categories_used: dict[str, int]
    counts: dict[str, Any]
    seconds: float
    images_per_s: float
    samples: list[Path] = field(default_factory=list)


def raw_records(dataset: Any) -> Any:
    """The dataset with image columns left undecoded (bytes), for fast worker-side decoding."""
    try:
        from datasets import Image as ImageFeature
    except ImportError:  # pragma: no cover - datasets is a dependency
        return dataset
    features = getattr(dataset, "features", None) or {}
    for column in ("image", "mask"):
        feature = features.get(column)
        if isinstance(feature, ImageFeature) and feature.decode:
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


def select_indices(categories: list[str], labels: list[int], limit: int | None, seed: int
                   ) -> dict[str, list[int]]:
    """Indices per category (sorted by category name). With ``limit``, a seeded subset per
    category that keeps both labels when the category has both (half anomalous, rounded up)."""
    by_cat: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        by_cat.setdefault(c, []).append(i)
    out: dict[str, list[int]] = {}
    rng = np.random.default_rng(seed)
    for cat in sorted(by_cat):
        idx = by_cat[cat]
        if limit is not None and len(idx) > limit:
            anomalous = [i for i in idx if labels[i] == 1]
            normal = [i for i in idx if labels[i] == 0]
            n_anom = min(len(anomalous), max(limit - len(normal), (limit + 1) // 2))
            n_norm = min(len(normal), limit - n_anom)
            pick = (list(rng.choice(anomalous, n_anom, replace=False)) if n_anom else []) + \
                   (list(rng.choice(normal, n_norm, replace=False)) if n_norm else [])
            idx = sorted(int(i) for i in pick)
        out[cat] = idx
    return out


def _inference_context(method: AnomalyMethod) -> contextlib.AbstractContextManager:
    # transductive methods adapt with gradients inside predict: inference_mode would forbid it
    return torch.no_grad() if method.info.transductive else torch.inference_mode()


def evaluate_dataset(method: AnomalyMethod, records: Any, settings: EvalSettings, *,
                     name: str = "dataset", samples_dir: Path | None = None,
                     progress: ProgressCallback | None = None) -> DatasetEvaluation:
    """Evaluate ``method`` on unified ``records`` (a datasets.Dataset or a list of records)."""
    records = raw_records(records)
    categories = list(records["category"])
    labels = [int(v) for v in records["label"]]
    has_mask = [bool(v) for v in records["has_mask"]]
    selected = select_indices(categories, labels, settings.limit, settings.seed)
    total = sum(len(v) for v in selected.values())
    backbone = method.backbone
    res = settings.resolution
    device = torch.device(settings.device)
    method.eval()

    per_category: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    samples: list[Path] = []
    done, start, infer_s = 0, time.perf_counter(), 0.0
    for cat, indices in selected.items():
        keep_maps = any(has_mask[i] for i in indices)
        n = len(indices)
        scores = np.empty(n, dtype=np.float64)
        maps = np.empty((n, res, res), dtype=np.float16) if keep_maps else None
        masks = np.empty((n, res, res), dtype=bool) if keep_maps else None
        loader = DataLoader(
            AnomalyImageDataset(records, method.config.image_size, backbone.mean, backbone.std,
                                mask_size=res, mask_threshold=settings.mask_threshold,
                                indices=indices),
            batch_size=settings.batch_size, shuffle=False, num_workers=settings.num_workers,
            pin_memory=device.type == "cuda", persistent_workers=False)
        pos = 0
        to_save = _pick_samples(indices, labels, settings.save_maps) if samples_dir else set()
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            t0 = time.perf_counter()
            with _inference_context(method):
                image_scores, anomaly_maps = method.predict(images, list(batch["class_name"]))
            b = images.shape[0]
            scores[pos:pos + b] = image_scores.float().cpu().numpy()
            if keep_maps:
                if anomaly_maps.shape[-1] != res or anomaly_maps.shape[-2] != res:
                    anomaly_maps = upsample(anomaly_maps.float(), res)
                maps[pos:pos + b] = anomaly_maps.float().cpu().numpy()
                masks[pos:pos + b] = batch["mask"].numpy() > 0.5
            infer_s += time.perf_counter() - t0
            for j in range(b):
                if int(batch["index"][j]) in to_save and keep_maps:
                    samples.append(_write_sample(samples_dir, cat, len(samples), images[j], maps,
                                                 masks, pos + j, backbone, res))
            pos += b
            done += b
            if progress:
                progress(f"{name}/{cat}", done, total)
        cat_labels = np.array([labels[i] for i in indices])
        per_category[cat] = metrics.compute_metrics(cat_labels, scores, masks, maps)
        counts[cat] = {"images": n, "anomalous": int(cat_labels.sum()),
                       "with_mask": sum(has_mask[i] for i in indices),
                       "regions": metrics.count_regions(masks) if keep_maps else 0}
        logger.info("%s/%s: %s", name, cat, {k: v for k, v in per_category[cat].items()
                                               if v is not None})
        del maps, masks
    summary = metrics.summarize(per_category)
    seconds = time.perf_counter() - start
    totals = {k: sum(c[k] for c in counts.values())
              for k in ("images", "anomalous", "with_mask", "regions")}
    return DatasetEvaluation(
        per_category=per_category, mean=summary["mean"],
        categories_used=summary["categories_used"],
        counts={"total": totals, "per_category": counts}, seconds=seconds,
        images_per_s=total / infer_s if infer_s > 0 else 0.0, samples=samples)


def _pick_samples(indices: list[int], labels: list[int], k: int) -> set[int]:
    """Up to ``k`` images of a category to save, anomalous ones first."""
    if k <= 0:
        return set()
    ordered = [i for i in indices if labels[i] == 1] + [i for i in indices if labels[i] == 0]
    return set(ordered[:k])


def _write_sample(folder: Path, category: str, number: int, image: torch.Tensor,
                  maps: np.ndarray, masks: np.ndarray, row: int, backbone: Any, res: int) -> Path:
    rgb = denormalize(image[None].float().cpu(), backbone.mean, backbone.std)
    rgb = upsample(rgb, res)[0].permute(1, 2, 0).numpy()
    rgb = (rgb.clip(0, 1) * 255).astype(np.uint8)
    valid = maps[: row + 1].astype(np.float32)
    path = folder / f"{category}_{number:03d}.png"
    return save_overlay(path, rgb, masks[row], maps[row].astype(np.float32),
                        float(valid.min()), float(valid.max()))
