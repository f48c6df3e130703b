"""The evaluator: batched inference of a method on one dataset, then per-category metrics.

Inference runs category by category so that only one category's maps are in memory (float32,
as upstream keeps them, at the evaluation resolution, with boolean masks); metrics come from
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
from zsbench.distributed import broadcast_from_main, current_world, gather_to_main, shard
from zsbench.identity import MAP_DTYPE
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


@dataclass
class _Inferred:
    """Scores, maps and masks of some images of one category, in the order of ``indices``."""

    indices: list[int]
    scores: np.ndarray
    maps: np.ndarray | None
    masks: np.ndarray | None
    sample_images: dict[int, torch.Tensor] = field(default_factory=dict)  # index -> input
    seconds: float = 0.0

    @staticmethod
    def merge(parts: list[_Inferred], order: list[int]) -> _Inferred:
        """The parts of several ranks put back into ``order`` (every index exactly once)."""
        position = {index: row for part in parts for row, index in enumerate(part.indices)}
        owner = {index: part for part in parts for index in part.indices}
        if sorted(position) != sorted(order):
            raise RuntimeError("distributed shards do not cover the category exactly once")
        rows = [(owner[i], position[i]) for i in order]
        has_maps = parts[0].maps is not None
        return _Inferred(
            list(order), np.array([part.scores[row] for part, row in rows]),
            np.stack([part.maps[row] for part, row in rows]) if has_maps else None,
            np.stack([part.masks[row] for part, row in rows]) if has_maps else None,
            {i: t for part in parts for i, t in part.sample_images.items()},
            max(part.seconds for part in parts))


def _infer(method: AnomalyMethod, records: Any, indices: list[int], settings: EvalSettings,
           keep_maps: bool, keep_images: set[int], tick: Callable[[int], None]) -> _Inferred:
    """Run ``method`` on the images ``indices`` of one category."""
    res, device = settings.resolution, torch.device(settings.device)
    n = len(indices)
    out = _Inferred(list(indices), np.empty(n, dtype=np.float64),
                    np.empty((n, res, res), dtype=MAP_DTYPE) if keep_maps else None,
                    np.empty((n, res, res), dtype=bool) if keep_maps else None)
    if n == 0:
        return out
    backbone = method.backbone
    loader = DataLoader(
        AnomalyImageDataset(records, method.config.image_size, backbone.mean, backbone.std,
                            mask_size=res, mask_threshold=settings.mask_threshold,
                            indices=indices,
                            interpolation=method.config.input_interpolation),
        batch_size=settings.batch_size, shuffle=False, num_workers=settings.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False)
    pos = 0
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        t0 = time.perf_counter()
        with _inference_context(method):
            image_scores, anomaly_maps = method.predict(images, list(batch["class_name"]))
        b = images.shape[0]
        out.scores[pos:pos + b] = image_scores.float().cpu().numpy()
        if keep_maps:
            if anomaly_maps.shape[-1] != res or anomaly_maps.shape[-2] != res:
                anomaly_maps = upsample(anomaly_maps.float(), res)
            out.maps[pos:pos + b] = anomaly_maps.float().cpu().numpy()
            out.masks[pos:pos + b] = batch["mask"].numpy() > 0.5
        out.seconds += time.perf_counter() - t0
        for j, index in enumerate(int(i) for i in batch["index"]):
            if index in keep_images:
                out.sample_images[index] = images[j].cpu()
        pos += b
        tick(b)
    return out


def _category_outcome(cat: str, inferred: _Inferred, labels: list[int], has_mask: list[bool]
                      ) -> tuple[dict[str, float | None], dict[str, int]]:
    """Metrics and counts of one category from all its images."""
    indices = inferred.indices
    cat_labels = np.array([labels[i] for i in indices])
    values = metrics.compute_metrics(cat_labels, inferred.scores, inferred.masks, inferred.maps)
    counts = {"images": len(indices), "anomalous": int(cat_labels.sum()),
              "with_mask": sum(has_mask[i] for i in indices),
              "regions": metrics.count_regions(inferred.masks) if inferred.maps is not None
              else 0}
    logger.info("%s: %s", cat, {k: v for k, v in values.items() if v is not None})
    return values, counts


def evaluate_dataset(method: AnomalyMethod, records: Any, settings: EvalSettings, *,
                     name: str = "dataset", samples_dir: Path | None = None,
                     progress: ProgressCallback | None = None) -> DatasetEvaluation:
    """Evaluate ``method`` on unified ``records`` (a datasets.Dataset or a list of records).

    In a torch.distributed process group the work is shared exactly (:mod:`zsbench.distributed`):
    an inductive method's images are sharded per category and gathered on rank 0, which computes
    the metrics; a transductive method gets whole categories (its reference pool is never
    split). Every rank returns rank 0's evaluation."""
    records = raw_records(records)
    labels = [int(v) for v in records["label"]]
    has_mask = [bool(v) for v in records["has_mask"]]
    selected = select_indices(list(records["category"]), labels, settings.limit, settings.seed)
    world = current_world()
    by_category = method.info.transductive and world.world_size > 1
    mine = set(shard(list(selected), world.rank, world.world_size)) if by_category else None
    total = sum(len(v) for c, v in selected.items() if mine is None or c in mine)
    if not by_category:
        total = sum(len(shard(v, world.rank, world.world_size)) for v in selected.values())
    method.eval()
    per_category: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    samples: list[Path] = []
    done, start, infer_s = [0], time.perf_counter(), 0.0
    current = [""]

    def tick(b: int) -> None:
        done[0] += b
        if progress and world.is_main:
            progress(f"{name}/{current[0]}", done[0], total)

    for cat, indices in selected.items():
        if mine is not None and cat not in mine:
            continue
        current[0] = cat
        method.start_category(cat)
        keep_maps = any(has_mask[i] for i in indices)
        to_save = _pick_samples(indices, labels, settings.save_maps) if samples_dir else set()
        own = indices if by_category else shard(indices, world.rank, world.world_size)
        part = _infer(method, records, own, settings, keep_maps, to_save if keep_maps else set(),
                      tick)
        infer_s += part.seconds
        parts = [part] if by_category else gather_to_main(part)
        if parts is None:  # not rank 0: rank 0 computes this category's metrics
            continue
        inferred = _Inferred.merge(parts, indices)
        per_category[cat], counts[cat] = _category_outcome(f"{name}/{cat}", inferred, labels,
                                                           has_mask)
        if keep_maps and samples_dir is not None:
            samples += _write_samples(samples_dir, cat, inferred, method.backbone,
                                      settings.resolution, len(samples))
    if by_category:  # each rank evaluated its own categories: collect them on rank 0
        collected = gather_to_main((per_category, counts, samples))
        if collected is not None:
            per_category = {c: v for pc, _, _ in collected for c, v in pc.items()}
            counts = {c: v for _, cc, _ in collected for c, v in cc.items()}
            samples = [p for _, _, ss in collected for p in ss]
            per_category = {c: per_category[c] for c in selected}
            counts = {c: counts[c] for c in selected}
    evaluation = None
    if world.is_main:
        summary = metrics.summarize(per_category)
        totals = {k: sum(c[k] for c in counts.values())
                  for k in ("images", "anomalous", "with_mask", "regions")}
        n_images = sum(len(v) for v in selected.values())
        evaluation = DatasetEvaluation(
            per_category=per_category, mean=summary["mean"],
            categories_used=summary["categories_used"],
            counts={"total": totals, "per_category": counts},
            seconds=time.perf_counter() - start,
            images_per_s=n_images / infer_s if infer_s > 0 else 0.0, samples=samples)
    return broadcast_from_main(evaluation)


def _pick_samples(indices: list[int], labels: list[int], k: int) -> set[int]:
    """Up to ``k`` images of a category to save, anomalous ones first."""
    if k <= 0:
        return set()
    ordered = [i for i in indices if labels[i] == 1] + [i for i in indices if labels[i] == 0]
    return set(ordered[:k])


def _write_samples(folder: Path, category: str, inferred: _Inferred, backbone: Any,
                   res: int, first_number: int) -> list[Path]:
    """Overlay PNGs of the kept images, their maps on one scale: the category's min and max."""
    low, high = float(inferred.maps.min()), float(inferred.maps.max())
    paths = []
    for row, index in enumerate(inferred.indices):
        image = inferred.sample_images.get(index)
        if image is None:
            continue
        rgb = denormalize(image[None].float(), backbone.mean, backbone.std)
        rgb = upsample(rgb, res)[0].permute(1, 2, 0).numpy()
        rgb = (rgb.clip(0, 1) * 255).astype(np.uint8)
        path = folder / f"{category}_{first_number + len(paths):03d}.png"
        paths.append(save_overlay(path, rgb, inferred.masks[row], inferred.maps[row],
                                  low, high))
    return paths
