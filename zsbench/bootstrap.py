"""Stratified bootstrap confidence intervals and paired comparisons for the eight metrics.

A replicate draws, within every category, as many images as the category has, with
replacement; an image's label, score, mask and map travel together, so pixel metrics resample
whole images. The dataset figure of a replicate is the macro mean over the categories whose
metric is defined in that replicate (as :func:`zsbench.metrics.summarize`). Intervals are 95 %
percentile intervals of the replicate distribution; the point estimate is always the exact value.

Speed: nothing is sorted per replicate. A replicate is a vector ``w`` of multiplicities, one per
image, and every metric is a function of weighted counts of scores above thresholds:

* image metrics: the scores are sorted once and grouped into ties; a replicate is ``w`` reduced
  over the tied groups, so image metrics are **exact** for every replicate;
* pixel AUROC, AP, F1-max and AUPRO: every image's normal and anomalous pixel scores are sorted
  once and counted into at most ``n_bins`` global score bins (half at quantiles of the anomalous
  scores, half at quantiles of the normal scores; all distinct scores when there are few). The
  counts of a replicate are ``w @ counts`` (one matrix product for all replicates), i.e. the
  metrics of the replicate with scores coarsened to the bins. The coarsening error at ``w = 1``
  is measured and returned as ``binning_error``; it is 0 when the scores have at most ``n_bins``
  distinct values;
* ``aupro_legacy`` is exact: its 200 thresholds depend only on the replicate's minimum and
  maximum score, so it is computed once per distinct (min, max) pair from the per-image sorted
  arrays.

The evaluator can bootstrap each category as it finishes (:func:`category_replicates`, whose
draws depend only on the seed and the category name) and :func:`combine` them at the end;
:func:`bootstrap` does both for an :class:`EvaluationData`.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from zsbench.errors import DataError
from zsbench.metrics import METRIC_NAMES, compute_metrics, summarize

logger = logging.getLogger(__name__)

IMAGE_METRICS = METRIC_NAMES[:3]
PIXEL_METRICS = METRIC_NAMES[3:]
DEFAULT_REPLICATES = 1000
DEFAULT_BINS = 8192
CONFIDENCE = 0.95
_CHUNK = 128  # replicates per matrix product (bounds memory: chunk x bins x 8 bytes x 3)


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class CategoryData:
    """One category's evaluation: ``labels``/``scores`` ``[N]``; ``masks``/``maps`` ``[N, H, W]``
    (None for a mask-less dataset); optional ``image_ids`` ``[N]``."""

    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None = None
    maps: np.ndarray | None = None
    image_ids: list[str] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels).astype(bool)
        self.scores = np.asarray(self.scores)
        n = self.labels.shape[0] if self.labels.ndim == 1 else -1
        if self.labels.ndim != 1 or self.scores.shape != (n,):
            raise ValueError(f"labels and scores must be 1-D of equal length; got shapes "
                             f"{self.labels.shape} and {self.scores.shape}")
        if (self.masks is None) != (self.maps is None):
            raise ValueError("give both masks and maps, or neither")
        if self.masks is not None:
            self.masks = np.asarray(self.masks).astype(bool)
            self.maps = np.asarray(self.maps)
            if self.masks.ndim != 3 or self.masks.shape != self.maps.shape \
                    or self.masks.shape[0] != n:
                raise ValueError(f"masks and maps must both be [{n}, H, W]; got "
                                 f"{self.masks.shape} and {self.maps.shape}")
        if self.image_ids is not None and len(self.image_ids) != n:
            raise ValueError(f"image_ids has {len(self.image_ids)} entries for {n} images")

    @property
    def n_images(self) -> int:
        return int(self.labels.shape[0])

    def metrics(self) -> dict[str, float | None]:
        """The exact metrics (:func:`zsbench.metrics.compute_metrics`)."""
        return compute_metrics(self.labels, self.scores, self.masks, self.maps)


@dataclass
class EvaluationData:
    """Per-image scores and maps of one result, by category (what the evaluator keeps)."""

    categories: dict[str, CategoryData] = field(default_factory=dict)

    def metrics(self) -> dict[str, dict[str, float | None]]:
        return {name: data.metrics() for name, data in self.categories.items()}


# ---------------------------------------------------------------------------------------------
# metrics from weighted counts in ascending score bins (rows = replicates)


def _suffix(values: np.ndarray) -> np.ndarray:
    """``out[:, b]`` = sum of ``values[:, b:]``."""
    return np.cumsum(values[:, ::-1], axis=1)[:, ::-1]


def _curve_metrics(pos: np.ndarray, neg: np.ndarray, region_weight: np.ndarray | None,
                   fpr_limit: float = 0.3) -> dict[str, np.ndarray]:
    """AUROC, AP, F1-max (and AUPRO with ``region_weight``) per row of bin counts ``[R, B]``.

    Bins are ascending in score; the threshold of bin ``b`` keeps bins ``b`` and above, ties
    inside a bin form one step (as sklearn and :mod:`zsbench.metrics`). NaN where undefined.
    """
    n_pos = pos.sum(axis=1)
    n_neg = neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        neg_below = np.cumsum(neg, axis=1) - neg
        auroc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        auroc[(n_pos == 0) | (n_neg == 0)] = np.nan
        true_pos = _suffix(pos)
        predicted = true_pos + _suffix(neg)
        precision = np.where(predicted > 0, true_pos / np.where(predicted > 0, predicted, 1), 0)
        ap = (pos * precision).sum(axis=1) / n_pos
        f1 = np.where(true_pos > 0, 2 * true_pos / (predicted + n_pos[:, None]), 0).max(axis=1)
        ap[n_pos == 0] = np.nan
        f1[n_pos == 0] = np.nan
        out = {"auroc": auroc, "ap": ap, "f1_max": f1}
        if region_weight is not None:
            out["aupro"] = _aupro_rows(_suffix(neg) / n_neg[:, None],
                                       np.minimum(_suffix(region_weight), 1.0), fpr_limit)
            out["aupro"][(n_neg == 0) | ~(region_weight.sum(axis=1) > 0)] = np.nan
    return out


def _aupro_rows(fpr_from: np.ndarray, pro_from: np.ndarray, limit: float) -> np.ndarray:
    """Area under PRO(FPR) on [0, limit] / limit; points (0, 0) then bins from the top down."""
    rows = fpr_from.shape[0]
    x = np.concatenate([np.zeros((rows, 1)), fpr_from[:, ::-1]], axis=1)
    y = np.concatenate([np.zeros((rows, 1)), pro_from[:, ::-1]], axis=1)
    x0, x1, y0, y1 = x[:, :-1], x[:, 1:], y[:, :-1], y[:, 1:]
    x_end = np.minimum(x1, limit)
    width = x1 - x0
    frac = np.where(width > 0, (x_end - x0) / np.where(width > 0, width, 1), 0.0)
    y_end = y0 + (y1 - y0) * frac
    area = np.where(x0 < limit, (x_end - x0) * (y0 + y_end) / 2.0, 0.0).sum(axis=1)
    return np.clip(area / limit, 0.0, 1.0)


def _legacy_rows(n_neg_above: np.ndarray, n_neg: np.ndarray, weight_above: np.ndarray,
                 limit: float = 0.3) -> np.ndarray:
    """The cflow-ad ``aupro_legacy`` per row, from counts above its thresholds ``[R, T]``."""
    out = np.full(n_neg_above.shape[0], np.nan)
    for row in range(n_neg_above.shape[0]):
        if n_neg[row] == 0:
            continue
        fprs = n_neg_above[row] / n_neg[row]
        pros = np.minimum(weight_above[row], 1.0)
        keep = fprs < limit
        if not keep.any():
            continue
        kept = fprs[keep]
        span = kept.max() - kept.min()
        if span == 0:
            continue
        out[row] = -np.trapezoid(pros[keep], (kept - kept.min()) / span)
    return out


# ---------------------------------------------------------------------------------------------
# one category prepared once


def _float_scores(values: np.ndarray) -> np.ndarray:
    """float16/float32 -> float32 (as :mod:`zsbench.metrics` ranks them), others -> float64."""
    if values.dtype in (np.float16, np.float32):
        return values.astype(np.float32, copy=False)
    return values.astype(np.float64, copy=False)


@dataclass
class _PreparedImages:
    """Per-image sorted normal/anomalous pixel scores and cumulative region weights."""

    normal: list[np.ndarray]
    anomalous: list[np.ndarray]
    weight_prefix: list[np.ndarray]  # [n_anom + 1]: 0, then cumsum of 1/area in sorted order
    regions: np.ndarray  # [N] regions per image
    low: np.ndarray  # [N] minimum score per image
    high: np.ndarray  # [N] maximum score per image


def _prepare_images(masks: np.ndarray, maps: np.ndarray) -> _PreparedImages:
    structure = np.ones((3, 3), dtype=bool)
    normal, anomalous, prefix = [], [], []
    regions = np.zeros(len(maps), dtype=np.int64)
    maps = _float_scores(maps)
    for index, (mask, image) in enumerate(zip(masks, maps, strict=True)):
        flat = image.ravel()
        flat_mask = mask.ravel()
        normal.append(np.sort(flat[~flat_mask]))
        if flat_mask.any():
            labels, count = ndimage.label(mask, structure=structure)
            regions[index] = count
            tags = labels.ravel()[flat_mask]
            areas = np.bincount(tags)
            scores = flat[flat_mask]
            order = np.argsort(scores, kind="stable")
            anomalous.append(scores[order])
            prefix.append(np.concatenate([[0.0], np.cumsum(1.0 / areas[tags[order]])]))
        else:
            anomalous.append(np.zeros(0, dtype=flat.dtype))
            prefix.append(np.zeros(1))
    flat_maps = maps.reshape(len(maps), -1)
    return _PreparedImages(normal, anomalous, prefix, regions, flat_maps.min(axis=1),
                           flat_maps.max(axis=1))


def _bin_edges(images: _PreparedImages, n_bins: int) -> np.ndarray:
    """At most ``n_bins`` ascending edges: all distinct scores when few, else quantiles."""
    distinct: list[np.ndarray] = []
    total = 0
    for array in (*images.normal, *images.anomalous):
        if array.size:
            values = array[np.concatenate([[True], array[1:] != array[:-1]])]
            total += values.size
            if total > n_bins:
                break
            distinct.append(values)
    else:
        return np.unique(np.concatenate(distinct)) if distinct else np.zeros(0)
    edges = []
    for group in (images.anomalous, images.normal):
        sizes = [array.size for array in group]
        if not sum(sizes):
            continue
        take = max(2, math.ceil(4 * n_bins / max(1, sum(size > 0 for size in sizes))))
        sample = np.sort(np.concatenate([
            array[np.linspace(0, array.size - 1, min(take, array.size)).astype(np.int64)]
            for array in group if array.size]))
        picks = np.linspace(0, sample.size - 1, n_bins // 2).astype(np.int64)
        edges.append(sample[picks])
    return np.unique(np.concatenate(edges))


def _bin_counts(images: _PreparedImages, edges: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image counts of normal and anomalous pixels and region weight per bin ``[N, E + 1]``;
    bin 0 holds scores below ``edges[0]``, bin k scores in ``[edges[k-1], edges[k])``."""
    n_images = len(images.normal)
    neg = np.zeros((n_images, edges.size + 1))
    pos = np.zeros_like(neg)
    weight = np.zeros_like(neg)
    for i in range(n_images):
        below = np.searchsorted(images.normal[i], edges, side="left")
        neg[i] = np.diff(below, prepend=0, append=images.normal[i].size)
        below = np.searchsorted(images.anomalous[i], edges, side="left")
        pos[i] = np.diff(below, prepend=0, append=images.anomalous[i].size)
        cumulative = images.weight_prefix[i][below]
        weight[i] = np.diff(cumulative, prepend=0.0, append=images.weight_prefix[i][-1])
    return neg, pos, weight


def _above(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side="right")


class _CategoryBootstrap:
    """Everything one category needs to evaluate any multiplicity matrix ``W [R, N]``."""

    def __init__(self, data: CategoryData, n_bins: int = DEFAULT_BINS) -> None:
        self.n_images = data.n_images
        scores = _float_scores(np.asarray(data.scores))
        order = np.argsort(scores, kind="stable")
        sorted_scores = scores[order]
        self.image_order = order
        self.image_labels = data.labels[order].astype(np.float64)
        self.group_starts = np.flatnonzero(np.concatenate(
            [[True], sorted_scores[1:] != sorted_scores[:-1]])) if scores.size else np.zeros(
            0, dtype=np.int64)
        self.pixels: _PreparedImages | None = None
        self.binning_error: dict[str, float] = {}
        if data.masks is None:
            return
        self.pixels = _prepare_images(data.masks, data.maps)
        self.edges = _bin_edges(self.pixels, n_bins)
        self.neg, self.pos, self.weight = _bin_counts(self.pixels, self.edges)

    def image_metrics(self, w: np.ndarray) -> dict[str, np.ndarray]:
        w_sorted = w[:, self.image_order].astype(np.float64)
        if not self.group_starts.size:
            return {name: np.full(w.shape[0], np.nan) for name in IMAGE_METRICS}
        pos = np.add.reduceat(w_sorted * self.image_labels, self.group_starts, axis=1)
        neg = np.add.reduceat(w_sorted * (1.0 - self.image_labels), self.group_starts, axis=1)
        curves = _curve_metrics(pos, neg, None)
        both = (pos.sum(axis=1) > 0) & (neg.sum(axis=1) > 0)
        return {f"image_{key}": np.where(both, value, np.nan) for key, value in curves.items()}

    def pixel_metrics(self, w: np.ndarray, legacy: bool = True) -> dict[str, np.ndarray]:
        if self.pixels is None:
            return {name: np.full(w.shape[0], np.nan) for name in PIXEL_METRICS}
        wf = w.astype(np.float64)
        n_regions = wf @ self.pixels.regions
        with np.errstate(divide="ignore", invalid="ignore"):
            region_weight = (wf @ self.weight) / n_regions[:, None]
        region_weight[n_regions == 0] = 0.0
        curves = _curve_metrics(wf @ self.pos, wf @ self.neg, region_weight)
        out = {f"pixel_{key}": curves[key] for key in ("auroc", "ap", "f1_max")}
        out["aupro"] = curves["aupro"]
        if legacy:
            out["aupro_legacy"] = self.legacy(w)
        return out

    def legacy(self, w: np.ndarray, steps: int = 200) -> np.ndarray:
        """Exact ``aupro_legacy`` per replicate, one threshold set per distinct (min, max)."""
        images = self.pixels
        if images is None:
            return np.full(w.shape[0], np.nan)
        n_regions = w.astype(np.float64) @ images.regions
        present = w > 0
        lows = np.where(present, images.low[None, :], np.inf).min(axis=1)
        highs = np.where(present, images.high[None, :], -np.inf).max(axis=1)
        out = np.full(w.shape[0], np.nan)
        n_neg = w @ np.array([array.size for array in images.normal], dtype=np.float64)
        pairs = np.unique(np.stack([lows, highs], axis=1), axis=0)
        for low_value, high_value in pairs:
            rows = np.flatnonzero((lows == low_value) & (highs == high_value))
            low = images.low.dtype.type(low_value)
            high = images.high.dtype.type(high_value)
            delta = (high - low) / steps
            if not delta > 0:
                continue
            thresholds = np.arange(low, high, delta)
            neg_above = np.stack([_above(array, thresholds) for array in images.normal])
            weight_above = np.stack([
                prefix[-1] - prefix[np.searchsorted(array, thresholds, side="right")]
                for array, prefix in zip(images.anomalous, images.weight_prefix, strict=True)])
            wf = w[rows].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                pro_above = (wf @ weight_above) / n_regions[rows, None]
            values = _legacy_rows(wf @ neg_above, n_neg[rows], pro_above)
            values[n_regions[rows] == 0] = np.nan
            out[rows] = values
        return out

    def metrics(self, w: np.ndarray, legacy: bool = True) -> dict[str, np.ndarray]:
        """All eight metrics for every row of multiplicities ``w [R, N]`` (NaN = undefined);
        ``aupro_legacy`` only with ``legacy``."""
        out = self.image_metrics(w)
        out.update(self.pixel_metrics(w, legacy))
        return out


def replicate_metrics(data: CategoryData, weights: ArrayLike, n_bins: int = DEFAULT_BINS
                      ) -> dict[str, np.ndarray]:
    """The eight metrics of ``data`` with image ``i`` counted ``weights[r, i]`` times, per row.

    Equals :func:`zsbench.metrics.compute_metrics` on the explicitly repeated images for the
    image metrics and ``aupro_legacy``, and for the other pixel metrics when the maps have at
    most ``n_bins`` distinct values (else up to the coarsening to ``n_bins`` bins)."""
    w = np.atleast_2d(np.asarray(weights))
    if w.shape[1] != data.n_images or (w < 0).any():
        raise ValueError(f"weights must be non-negative [R, {data.n_images}]; got {w.shape}")
    return _CategoryBootstrap(data, n_bins).metrics(w)


# ---------------------------------------------------------------------------------------------
# bootstrap


@dataclass
class BootstrapResult:
    """Point estimates, 95 % percentile intervals and the replicate distributions."""

    point: dict[str, float | None]
    low: dict[str, float | None]
    high: dict[str, float | None]
    per_category: dict[str, dict[str, dict[str, float | None]]]
    replicates: int
    seed: int
    n_bins: int
    binning_error: dict[str, float]
    distribution: dict[str, np.ndarray] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no replicate arrays)."""
        return {"method": "stratified percentile bootstrap (images resampled per category)",
                "confidence": CONFIDENCE, "replicates": self.replicates, "seed": self.seed,
                "n_bins": self.n_bins, "point": self.point, "low": self.low, "high": self.high,
                "per_category": self.per_category, "binning_error": self.binning_error}


def _multiplicities(rng: np.random.Generator, replicates: int, n: int) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates) if n else np.zeros(
        (replicates, 0), dtype=np.int64)


def category_multiplicities(category: str, n_images: int, replicates: int, seed: int
                            ) -> np.ndarray:
    """The image multiplicities ``[replicates, n_images]`` of one category: a stream fixed by
    ``seed`` and the category name only, so categories can be bootstrapped one at a time (as
    the evaluator produces them) and two results over the same images get the same draws."""
    if replicates < 1:
        raise ValueError(f"replicates must be a positive integer; got {replicates!r}")
    entropy = [int(seed), zlib.crc32(category.encode("utf-8"))]
    return _multiplicities(np.random.default_rng(np.random.SeedSequence(entropy)), replicates,
                           n_images)


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None
    alpha = (1.0 - CONFIDENCE) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _macro(per_category: Mapping[str, Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    stacked = np.stack([values[name] for values in per_category.values()])
    defined = np.isfinite(stacked)
    counts = defined.sum(axis=0)
    totals = np.where(defined, stacked, 0.0).sum(axis=0)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


@dataclass
class CategoryReplicates:
    """One category's replicate values ``{metric: [replicates]}`` (NaN = undefined) and the
    coarsening error of the binned metrics at ``w = 1`` against the exact values."""

    values: dict[str, np.ndarray]
    binning_error: dict[str, float]


def category_replicates(category: str, data: CategoryData,
                        replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                        n_bins: int = DEFAULT_BINS,
                        exact: Mapping[str, float | None] | None = None) -> CategoryReplicates:
    """Bootstrap one category on its own (the maps can be dropped afterwards); ``exact`` are its
    exact metrics when already computed. Combine categories with :func:`combine`."""
    w_all = category_multiplicities(category, data.n_images, replicates, seed)
    exact = dict(exact) if exact is not None else data.metrics()
    prepared = _CategoryBootstrap(data, n_bins)
    at_one = prepared.metrics(np.ones((1, data.n_images), dtype=np.int64))
    binning_error = {metric: abs(float(at_one[metric][0]) - value)
                     for metric, value in exact.items()
                     if metric in at_one and value is not None
                     and np.isfinite(at_one[metric][0])}
    chunks = [prepared.metrics(w_all[start:start + _CHUNK], legacy=False)
              for start in range(0, replicates, _CHUNK)]
    values = {metric: np.concatenate([chunk[metric] for chunk in chunks])
              for metric in METRIC_NAMES if metric != "aupro_legacy"}
    values["aupro_legacy"] = prepared.legacy(w_all)  # one pass per distinct (min, max)
    return CategoryReplicates({metric: values[metric] for metric in METRIC_NAMES},
                              binning_error)


def combine(per_category: Mapping[str, CategoryReplicates],
            exact: Mapping[str, Mapping[str, float | None]], replicates: int, seed: int,
            n_bins: int = DEFAULT_BINS) -> BootstrapResult:
    """Intervals of the per-category replicates and of their macro mean."""
    if not per_category:
        raise ValueError("no categories to bootstrap")
    values = {category: reps.values for category, reps in per_category.items()}
    summary = summarize(exact)["mean"]
    low: dict[str, float | None] = {}
    high: dict[str, float | None] = {}
    distribution: dict[str, np.ndarray] = {}
    binning_error: dict[str, float] = {}
    for reps in per_category.values():
        for metric, error in reps.binning_error.items():
            binning_error[metric] = max(binning_error.get(metric, 0.0), error)
    for name in METRIC_NAMES:
        distribution[name] = _macro(values, name)
        low[name], high[name] = _interval(distribution[name])
    categories = {
        category: {name: dict(zip(("low", "high"), _interval(reps[name]), strict=True))
                   for name in METRIC_NAMES}
        for category, reps in values.items()}
    return BootstrapResult(point={name: summary.get(name) for name in METRIC_NAMES}, low=low,
                           high=high, per_category=categories, replicates=replicates,
                           seed=seed, n_bins=n_bins, binning_error=binning_error,
                           distribution=distribution)


def bootstrap(data: EvaluationData, replicates: int = DEFAULT_REPLICATES, seed: int = 0,
              n_bins: int = DEFAULT_BINS,
              point: Mapping[str, Mapping[str, float | None]] | None = None) -> BootstrapResult:
    """95 % stratified percentile intervals of every metric, per category and for the macro
    mean. ``point`` (per-category exact metrics, as the evaluator already has them) saves one
    exact computation; it is computed when omitted."""
    if not data.categories:
        raise ValueError("no categories to bootstrap")
    exact = dict(point) if point is not None else data.metrics()
    per_category = {name: category_replicates(name, category, replicates, seed, n_bins,
                                              exact[name])
                    for name, category in data.categories.items()}
    logger.info("bootstrap: %d replicates over %d categories (seed %d)", replicates,
                len(per_category), seed)
    return combine(per_category, exact, replicates, seed, n_bins)


# ---------------------------------------------------------------------------------------------
# paired comparison


@dataclass
class PairedResult:
    """Per metric: the difference ``a - b`` of macro means, its interval and two-sided p."""

    difference: dict[str, float | None]
    low: dict[str, float | None]
    high: dict[str, float | None]
    p_value: dict[str, float | None]
    significant: dict[str, bool | None]
    replicates: int
    seed: int
    distribution: dict[str, np.ndarray] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "paired stratified bootstrap (same images resampled for both)",
                "confidence": CONFIDENCE, "replicates": self.replicates, "seed": self.seed,
                "difference": self.difference, "low": self.low, "high": self.high,
                "p_value": self.p_value, "significant": self.significant}


def _check_same_images(a: EvaluationData, b: EvaluationData) -> None:
    if set(a.categories) != set(b.categories):
        raise DataError(f"the two results cover different categories: "
                         f"{sorted(set(a.categories) ^ set(b.categories))}")
    for name, first in a.categories.items():
        second = b.categories[name]
        if first.image_ids is not None and second.image_ids is not None \
                and list(first.image_ids) != list(second.image_ids):
            raise DataError(f"category {name!r}: the two results list different images")
        if first.n_images != second.n_images or not np.array_equal(first.labels, second.labels):
            raise DataError(f"category {name!r}: the two results do not have the same images "
                             "(image counts or labels differ)")
        if (first.masks is None) != (second.masks is None) or (
                first.masks is not None and not np.array_equal(first.masks, second.masks)):
            raise DataError(f"category {name!r}: the two results have different masks")


def paired_bootstrap(a: EvaluationData, b: EvaluationData,
                     replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                     n_bins: int = DEFAULT_BINS) -> PairedResult:
    """Paired bootstrap of ``a - b`` over the same images: each replicate applies the same
    image multiplicities to both results. ``p_value`` is two-sided,
    ``min(1, 2 min((#{d <= 0} + 1) / (R + 1), (#{d >= 0} + 1) / (R + 1)))``; ``significant``
    says whether the 95 % interval of the difference excludes 0."""
    _check_same_images(a, b)
    per_category_a, per_category_b = a.metrics(), b.metrics()
    reps_a = {name: category_replicates(name, category, replicates, seed, n_bins,
                                        per_category_a[name]).values
              for name, category in a.categories.items()}
    reps_b = {name: category_replicates(name, b.categories[name], replicates, seed, n_bins,
                                        per_category_b[name]).values
              for name in a.categories}
    exact_a = summarize(per_category_a)["mean"]
    exact_b = summarize(per_category_b)["mean"]
    difference: dict[str, float | None] = {}
    low: dict[str, float | None] = {}
    high: dict[str, float | None] = {}
    p_value: dict[str, float | None] = {}
    significant: dict[str, bool | None] = {}
    distribution: dict[str, np.ndarray] = {}
    for name in METRIC_NAMES:
        value_a, value_b = exact_a.get(name), exact_b.get(name)
        difference[name] = None if value_a is None or value_b is None else value_a - value_b
        diffs = _macro(reps_a, name) - _macro(reps_b, name)
        distribution[name] = diffs
        low[name], high[name] = _interval(diffs)
        finite = diffs[np.isfinite(diffs)]
        if finite.size == 0 or low[name] is None:
            p_value[name], significant[name] = None, None
            continue
        below = (np.count_nonzero(finite <= 0) + 1) / (finite.size + 1)
        above = (np.count_nonzero(finite >= 0) + 1) / (finite.size + 1)
        p_value[name] = float(min(1.0, 2.0 * min(below, above)))
        significant[name] = bool(low[name] > 0 or high[name] < 0)
    return PairedResult(difference=difference, low=low, high=high, p_value=p_value,
                        significant=significant, replicates=replicates, seed=seed,
                        distribution=distribution)
