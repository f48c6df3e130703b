"""The evaluator: batched inference of a method on one dataset, then per-category metrics.

Inference runs category by category so that only one category's maps are in memory (float32,
as upstream keeps them, at the evaluation resolution, with boolean masks); metrics come from
:mod:`zsbench.metrics` and the dataset figure is the macro mean over categories.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from zsbench import metrics
from zsbench.anomaly_maps import upsample
from zsbench.data import raw_records  # re-exported: zsbench.evaluate.raw_records
from zsbench.distributed import broadcast_from_main, current_world, gather_to_main, shard
from zsbench.errors import ConfigError
from zsbench.evidence import EvidenceCollector, EvidenceSettings
from zsbench.identity import MAP_DTYPE
from zsbench.method import AnomalyMethod
from zsbench.metrics_store import CategoryAccumulator
from zsbench.preprocess import AnomalyImageDataset
from zsbench.progress import ProgressCallback

logger = logging.getLogger(__name__)


def default_num_workers() -> int:
    """DataLoader workers that decode ahead of the forward: ``min(8, cores)``, or the
    ``ZSBENCH_NUM_WORKERS`` environment variable. The main process mostly waits on the device
    and the metrics threads, so a worker per core decodes fastest (benchmarks/bench_pipeline.py
    on 2 cores: 93.6 images/s with 2 workers, 40.6 with 1)."""
    value = os.environ.get("ZSBENCH_NUM_WORKERS")
    if value is not None:
        if not value.isdigit():
            raise ConfigError(f"ZSBENCH_NUM_WORKERS must be a number >= 0, got {value!r}")
        return int(value)
    return max(1, min(8, os.cpu_count() or 1))


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
    #: threads computing finished categories' metrics while the next is inferred (0: inline)
    metrics_workers: int = 1
    #: bytes for one category's metrics (--max-memory): the maps stream to an exact
    #: accumulator that spills to disk past it; None keeps each category in memory
    max_memory: int | None = None
    #: bootstrap intervals and stored maps (--bootstrap, --save-maps all)
    evidence: EvidenceSettings = field(default_factory=EvidenceSettings)


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
    samples_scale: dict[str, float] | None = None  # the overlays' colour scale (per dataset)
    bootstrap: dict[str, Any] | None = None  # --bootstrap: intervals of every metric


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
    # a method that adapts with gradients inside predict: inference_mode would forbid it
    return torch.no_grad() if method.needs_grad_at_test else torch.inference_mode()


@dataclass
class _Inferred:
    """Scores, maps and masks of some images of one category, in the order of ``indices``."""

    indices: list[int]
    scores: np.ndarray
    maps: np.ndarray | None
    masks: np.ndarray | None
    sample_images: dict[int, torch.Tensor] = field(default_factory=dict)  # index -> input
    seconds: float = 0.0
    #: maps streamed to the metrics within --max-memory instead of kept (maps/masks are None)
    accumulator: CategoryAccumulator | None = None
    regions: int = 0  # anomalous regions counted while streaming
    sample_rows: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    bounds: tuple[float, float] | None = None  # min and max of the streamed maps
    reference_pool: int | None = None  # transductive: images scored together (the category)

    @staticmethod
    def merge(parts: list[_Inferred], order: list[int]) -> _Inferred:
        """The parts of several ranks put back into ``order`` (every index exactly once); a
        single part (one process) is returned as it is."""
        if len(parts) == 1 and parts[0].indices == list(order):
            return parts[0]
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


class CategoryBatches(Sampler[list[int]]):
    """Batches over the concatenated index lists of several categories that never straddle a
    category: one loader (and its workers) serves a whole evaluation, and
    ``batches_per_category[k]`` batches of it belong to category ``k`` (0 for an empty one)."""

    def __init__(self, sizes: Sequence[int], batch_size: int) -> None:
        self.batches: list[list[int]] = []
        self.batches_per_category: list[int] = []
        position = 0
        for size in sizes:
            starts = range(0, size, batch_size)
            self.batches += [list(range(position + s, position + min(size, s + batch_size)))
                             for s in starts]
            self.batches_per_category.append(len(starts))
            position += size

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _loader(method: AnomalyMethod, records: Any, plan: list[tuple[str, list[int]]],
            settings: EvalSettings) -> tuple[Iterator[dict[str, Any]], list[int]]:
    """One loader over every planned image, in category order: decoding, resizing and
    normalisation happen in its workers (``settings.num_workers``) ahead of the forward;
    images and masks travel as float32 and uint8, pinned on CUDA."""
    indices = [i for _, own in plan for i in own]
    sampler = CategoryBatches([len(own) for _, own in plan], settings.batch_size)
    if not indices:
        return iter(()), sampler.batches_per_category
    backbone = method.backbone
    dataset = AnomalyImageDataset(records, method.config.image_size, backbone.mean, backbone.std,
                                  mask_size=settings.resolution,
                                  mask_threshold=settings.mask_threshold, indices=indices,
                                  interpolation=method.config.input_interpolation)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=settings.num_workers,
                        pin_memory=torch.device(settings.device).type == "cuda")
    return iter(loader), sampler.batches_per_category


def whole_category(batches: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The loader batches of one category joined into one batch (tensors concatenated, lists
    extended): a transductive method's batch is its whole category, whatever the loader's
    batch size."""
    parts = list(batches)
    if len(parts) <= 1:
        return parts
    joined: dict[str, Any] = {}
    for key, first in parts[0].items():
        values = [part[key] for part in parts]
        joined[key] = (torch.cat(values) if isinstance(first, torch.Tensor)
                       else [v for value in values for v in value])
    return [joined]


def _infer(method: AnomalyMethod, batches: Iterable[dict[str, Any]], indices: list[int],
           settings: EvalSettings, keep_maps: bool, keep_images: set[int],
           tick: Callable[[int], None], stream: bool = False) -> _Inferred:
    """Run ``method`` on one category's ``batches`` (its images ``indices``, in order); with
    ``stream`` the maps go batch by batch to a :class:`CategoryAccumulator` bounded by
    ``settings.max_memory`` (exact, out of core when needed) instead of being kept. A
    transductive method gets the category as one batch (:func:`whole_category`)."""
    res, device = settings.resolution, torch.device(settings.device)
    n = len(indices)
    if method.info.transductive:
        batches = whole_category(batches)
    keep = keep_maps and not stream
    out = _Inferred(list(indices), np.empty(n, dtype=np.float64),
                    np.empty((n, res, res), dtype=MAP_DTYPE) if keep else None,
                    np.empty((n, res, res), dtype=bool) if keep else None)
    if stream:
        out.accumulator = CategoryAccumulator(settings.max_memory, expected_images=n)
    pos = 0
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        t0 = time.perf_counter()
        with _inference_context(method):
            image_scores, anomaly_maps = method.predict(images, list(batch["class_name"]))
        b = images.shape[0]
        out.scores[pos:pos + b] = image_scores.float().cpu().numpy()
        if keep_maps:
            if anomaly_maps.shape[-1] != res or anomaly_maps.shape[-2] != res:
                anomaly_maps = upsample(anomaly_maps.float(), res)
            maps = anomaly_maps.float().cpu().numpy()
            if stream:
                _stream_batch(out, batch, maps, batch["mask"].numpy() > 0, keep_images, pos)
            else:  # straight into the category's buffers, no temporaries
                out.maps[pos:pos + b] = maps
                np.greater(batch["mask"].numpy(), 0, out=out.masks[pos:pos + b])
        elif stream:
            out.accumulator.append(batch["label"].numpy(), out.scores[pos:pos + b])
        out.seconds += time.perf_counter() - t0
        for j, index in enumerate(int(i) for i in batch["index"]):
            if index in keep_images:
                out.sample_images[index] = images[j].cpu()
        pos += b
        tick(b)
    if pos != n:
        raise RuntimeError(f"the loader gave {pos} images for a category of {n}")
    if method.info.transductive:
        out.reference_pool = n
    return out


def _stream_batch(out: _Inferred, batch: dict[str, Any], maps: np.ndarray, masks: np.ndarray,
                  keep_images: set[int], pos: int) -> None:
    """One batch (rows ``pos``..) of maps into the category's accumulator; its overlay rows,
    region count and map range are kept."""
    b = maps.shape[0]
    out.accumulator.append(batch["label"].numpy(), out.scores[pos:pos + b], masks, maps)
    out.regions += metrics.count_regions(masks)
    low, high = float(maps.min()), float(maps.max())
    out.bounds = (low, high) if out.bounds is None else (min(out.bounds[0], low),
                                                         max(out.bounds[1], high))
    for j, index in enumerate(int(i) for i in batch["index"]):
        if index in keep_images:
            out.sample_rows[index] = (masks[j].copy(), maps[j].copy())


def _overlay_rows(inferred: _Inferred) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """(input image, mask row, map row) of the images whose overlays are saved."""
    if inferred.accumulator is not None:
        return [(inferred.sample_images[i], *inferred.sample_rows[i])
                for i in inferred.indices if i in inferred.sample_rows]
    if inferred.maps is None:
        return []
    return [(inferred.sample_images[i], inferred.masks[row], inferred.maps[row].copy())
            for row, i in enumerate(inferred.indices) if i in inferred.sample_images]


def _map_bounds(inferred: _Inferred) -> tuple[float, float] | None:
    if inferred.accumulator is not None:
        return inferred.bounds
    if inferred.maps is None or not inferred.maps.size:
        return None
    return float(inferred.maps.min()), float(inferred.maps.max())


def _category_outcome(cat: str, inferred: _Inferred, labels: list[int], has_mask: list[bool],
                      consume: bool = False
                      ) -> tuple[dict[str, float | None], dict[str, int]]:
    """Metrics and counts of one category from all its images; with ``consume`` the metrics
    rank the maps in their own buffer (about 7 bytes a pixel instead of 15; the maps are gone
    afterwards)."""
    indices = inferred.indices
    cat_labels = np.array([labels[i] for i in indices])
    if inferred.accumulator is not None:
        values, regions = inferred.accumulator.finish(), inferred.regions
    else:
        values, regions = metrics.category_metrics(cat_labels, inferred.scores, inferred.masks,
                                                   inferred.maps, consume=consume)
    counts = {"images": len(indices), "anomalous": int(cat_labels.sum()),
              "with_mask": sum(has_mask[i] for i in indices), "regions": regions}
    if inferred.reference_pool is not None:  # a transductive method saw these images together
        counts["reference_pool"] = inferred.reference_pool
    logger.info("%s: %s", cat, {k: v for k, v in values.items() if v is not None})
    return values, counts


class _MetricsPool:
    """Runs categories' metrics in ``workers`` background threads (0: at once, in the caller);
    leaving the ``with`` block waits for all and re-raises the first error."""

    def __init__(self, workers: int) -> None:
        self.executor = ThreadPoolExecutor(workers, "zsbench-metrics") if workers > 0 else None
        self.futures: list[Future] = []

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self.executor is None:
            fn(*args)
        else:
            self.futures.append(self.executor.submit(fn, *args))

    def __enter__(self) -> _MetricsPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            for future in self.futures:
                future.result()


def evaluate_dataset(method: AnomalyMethod, records: Any, settings: EvalSettings, *,
                     name: str = "dataset", samples_dir: Path | None = None,
                     progress: ProgressCallback | None = None) -> DatasetEvaluation:
    """Evaluate ``method`` on unified ``records`` (a datasets.Dataset or a list of records).

    In a torch.distributed process group the work is shared exactly (:mod:`zsbench.distributed`):
    an inductive method's images are sharded per category and gathered on rank 0, which computes
    the metrics; a transductive method gets whole categories (its reference pool is never
    split). Every rank returns rank 0's evaluation."""
    job = _DatasetJob(method, raw_records(records), settings, name, progress)
    job.infer_categories(samples_dir is not None)
    return broadcast_from_main(job.evaluation(samples_dir) if job.world.is_main else None)


def _can_stream(settings: EvalSettings, world: Any) -> bool:
    """Whether maps stream to bounded-memory metrics (--max-memory): one process, and no
    evidence that needs the whole category's maps (intervals, stored maps)."""
    if settings.max_memory is None:
        return False
    needs_maps = settings.evidence.bootstrap > 0 or settings.evidence.store is not None
    if needs_maps or world.world_size > 1:
        logger.warning("--max-memory is ignored: %s keeps each category's maps in memory",
                       "--bootstrap/--save-maps all" if needs_maps else "a distributed run")
        return False
    return True


class _DatasetJob:
    """One dataset's evaluation: its categories inferred in order through one loader, each
    finished category's metrics and evidence computed in the background."""

    def __init__(self, method: AnomalyMethod, records: Any, settings: EvalSettings, name: str,
                 progress: ProgressCallback | None) -> None:
        self.method, self.records, self.settings, self.name = method, records, settings, name
        self.progress = progress
        self.labels = [int(v) for v in records["label"]]
        self.has_mask = [bool(v) for v in records["has_mask"]]
        self.image_ids = ([str(v) for v in records["sample_id"]]
                          if "sample_id" in (getattr(records, "column_names", None) or ())
                          else [str(i) for i in range(len(self.labels))])
        self.selected = select_indices(list(records["category"]), self.labels, settings.limit,
                                       settings.seed)
        self.world = current_world()
        # a transductive method's pool and a stochastic method's per-category draws are never
        # split across ranks: each rank takes whole categories
        self.by_category = ((method.info.transductive or method.info.stochastic)
                            and self.world.world_size > 1)
        self.mine, self.total = _rank_share(self.selected, self.by_category, self.world)
        self.per_category: dict[str, dict[str, float | None]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.collector = EvidenceCollector(settings.evidence)
        self.done, self.infer_s, self.current = 0, 0.0, ""
        self.stream = _can_stream(settings, self.world)
        self.start = time.perf_counter()

    def tick(self, b: int) -> None:
        self.done += b
        if self.progress and self.world.is_main:
            self.progress(f"{self.name}/{self.current}", self.done, self.total)

    def finish(self, cat: str, inferred: _Inferred) -> None:
        """A category's metrics and evidence (in a background thread: numpy's sorts and zlib
        release the GIL, so this overlaps the next category's forward)."""
        indices = inferred.indices
        # intervals need the exact metrics first; otherwise the evidence (stored maps, overlay
        # rows, colour scale) is taken first and the metrics consume the map buffer
        exact_first = self.settings.evidence.bootstrap > 0
        if exact_first:
            self.per_category[cat], self.counts[cat] = _category_outcome(
                f"{self.name}/{cat}", inferred, self.labels, self.has_mask)
        self.collector.add(cat, np.array([self.labels[i] for i in indices]), inferred.scores,
                           inferred.masks, inferred.maps, [self.image_ids[i] for i in indices],
                           self.per_category.get(cat), _overlay_rows(inferred),
                           _map_bounds(inferred))
        if not exact_first:
            self.per_category[cat], self.counts[cat] = _category_outcome(
                f"{self.name}/{cat}", inferred, self.labels, self.has_mask, consume=True)

    def infer_categories(self, save_samples: bool) -> None:
        """Every category of this rank, in order; rank 0 collects and finishes them."""
        world, settings = self.world, self.settings
        plan = [(cat, idx if self.by_category else shard(idx, world.rank, world.world_size))
                for cat, idx in self.selected.items() if self.mine is None or cat in self.mine]
        self.method.eval()
        batches, per_plan = _loader(self.method, self.records, plan, settings)
        with _MetricsPool(settings.metrics_workers) as pool:
            for (cat, own), n_batches in zip(plan, per_plan, strict=True):
                self.current = cat
                self.method.begin_category(cat, settings.seed)
                indices = self.selected[cat]
                keep_maps = any(self.has_mask[i] for i in indices)
                to_save = (_pick_samples(indices, self.labels, settings.save_maps)
                           if save_samples and keep_maps else set())
                part = _infer(self.method, itertools.islice(batches, n_batches), own, settings,
                              keep_maps, to_save, self.tick, stream=self.stream)
                self.infer_s += part.seconds
                parts = [part] if self.by_category else gather_to_main(part)
                if parts is not None:  # rank 0 (or the rank owning the category) finishes it
                    pool.submit(self.finish, cat, _Inferred.merge(parts, indices))
        order = list(self.selected)
        self.per_category = {c: self.per_category[c] for c in order if c in self.per_category}
        self.counts = {c: self.counts[c] for c in order if c in self.counts}
        if self.by_category:  # each rank evaluated its own categories: collect them on rank 0
            self.per_category, self.counts, self.collector = _collect_categories(
                self.per_category, self.counts, self.collector, order)

    def evaluation(self, samples_dir: Path | None) -> DatasetEvaluation:
        """The dataset's evaluation (rank 0), with its overlays and intervals."""
        n_images = sum(len(v) for v in self.selected.values())
        evaluation = _dataset_evaluation(self.per_category, self.counts, self.start,
                                         n_images / self.infer_s if self.infer_s > 0 else 0.0)
        if samples_dir is not None:
            evaluation.samples, evaluation.samples_scale = self.collector.write_overlays(
                samples_dir, self.method.backbone, self.settings.resolution)
        evaluation.bootstrap = self.collector.bootstrap_result(list(self.selected))
        return evaluation


def _rank_share(selected: dict[str, list[int]], by_category: bool, world: Any
                ) -> tuple[set[str] | None, int]:
    """This rank's categories (None: a shard of every category) and its number of images."""
    if not by_category:
        return None, sum(len(shard(v, world.rank, world.world_size)) for v in selected.values())
    mine = set(shard(list(selected), world.rank, world.world_size))
    return mine, sum(len(v) for c, v in selected.items() if c in mine)


def _collect_categories(per_category: dict[str, Any], counts: dict[str, Any],
                        collector: EvidenceCollector, order: list[str]
                        ) -> tuple[dict[str, Any], dict[str, Any], EvidenceCollector]:
    """Every rank's categories and evidence on rank 0, in ``order``; the other ranks keep
    their own."""
    collected = gather_to_main((per_category, counts, collector))
    if collected is None:
        return per_category, counts, collector
    per_category = {c: v for pc, _, _ in collected for c, v in pc.items()}
    counts = {c: v for _, cc, _ in collected for c, v in cc.items()}
    return ({c: per_category[c] for c in order}, {c: counts[c] for c in order},
            EvidenceCollector.combined([c for _, _, c in collected]))


def _dataset_evaluation(per_category: dict[str, dict[str, float | None]],
                        counts: dict[str, dict[str, int]], start: float,
                        images_per_s: float) -> DatasetEvaluation:
    """The dataset figures (macro means, totals) from the per-category ones; ``start`` is
    when the evaluation began (``time.perf_counter``)."""
    summary = metrics.summarize(per_category)
    totals = {k: sum(c[k] for c in counts.values())
              for k in ("images", "anomalous", "with_mask", "regions")}
    return DatasetEvaluation(
        per_category=per_category, mean=summary["mean"],
        categories_used=summary["categories_used"],
        counts={"total": totals, "per_category": counts}, seconds=time.perf_counter() - start,
        images_per_s=images_per_s)


def _pick_samples(indices: list[int], labels: list[int], k: int) -> set[int]:
    """Up to ``k`` images of a category to save, anomalous ones first."""
    if k <= 0:
        return set()
    ordered = [i for i in indices if labels[i] == 1] + [i for i in indices if labels[i] == 0]
    return set(ordered[:k])
