"""Named metric variants of other codebases, to re-score stored maps and explain disagreements.

zsbench reports the exact definitions of :mod:`zsbench.metrics`; the variants here reproduce
what other codebases compute from the same maps, each under its own name (METRICS.md, "Other
codebases' variants"; docs/metrics.md has the table of sources):

* ``aupro`` -- the exact MVTec AD AUPRO (:func:`zsbench.metrics.aupro`).
* ``aupro_legacy`` -- the cflow-ad 200-threshold loop with min-max rescaled FPRs, copied by
  AnomalyCLIP, APRIL-GAN, MuSc, ADer's default path (:func:`zsbench.metrics.aupro_legacy`).
* ``aupro_anomalib_v2_2`` -- anomalib <= 2.2 ``AUPRO`` (src/anomalib/metrics/aupro.py):
  per-region ROC curves resampled in *index* space, averaged, area divided by the last averaged
  FPR instead of the limit; can exceed 1.
* ``aupro_ader_binned`` -- ADer with ``use_adeval`` (util/metric.py): ADEval's
  ``EvalAccumulatorCuda(..., nstrips=50)`` histogram accumulator (adeval/cuda_mem_effic.py,
  adeval/iterative.py).
* ``f1_max_ader_grid`` -- ADer's ``mF1_max_px``: F1 at the 21 thresholds
  ``np.arange(0, 1 + 1e-3, 0.05)`` of min-max normalised maps, ``eps = 1e-8``.

Every variant takes ``masks``/``maps`` ``[N, H, W]`` of one category and returns None where
zsbench's policy says undefined (no anomalous or no normal pixel) or upstream fails or gives NaN.
All arithmetic is float64; upstream's float32 tensors can differ in the last digits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from zsbench import metrics
from zsbench.errors import ConfigError

logger = logging.getLogger(__name__)

_EIGHT = np.ones((3, 3), dtype=bool)
_TORCH_FLOAT32_EPS = float(np.finfo(np.float32).eps)  # anomalib interp1d: finfo(float32).eps
ADER_GRID_STEP = 0.05  # ADer util/metric.py mF1_max_px: score_l, score_h, score_step = 0, 1, 0.05
ADER_EPS = 1e-8  # ADer Evaluator.eps
ADER_NSTRIPS = 50  # ADer util/metric.py: EvalAccumulatorCuda(..., nstrips=50)


def _check_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit!r}")
    return limit


def _inputs(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    masks_b = np.asarray(masks)
    maps_f = np.asarray(maps)
    if masks_b.ndim != 3 or masks_b.shape != maps_f.shape:
        raise ValueError(f"masks and maps must both be [N, H, W] of the same shape; got "
                         f"{masks_b.shape} and {maps_f.shape}")
    if masks_b.dtype != bool:
        bad = (masks_b != 0) & (masks_b != 1)
        if bad.any():
            raise ValueError(f"masks must contain only 0 and 1; found {masks_b[bad].flat[0]!r}")
        masks_b = masks_b.astype(bool)
    maps_f = maps_f.astype(np.float64)
    if not np.isfinite(maps_f).all():
        raise ValueError("maps must be finite")
    return masks_b, maps_f


def _region_labels(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components over all images, numbered 1.. across the stack (0: normal)."""
    labels = np.zeros(masks.shape, dtype=np.int64)
    total = 0
    for index, mask in enumerate(masks):
        if mask.any():
            image_labels, count = ndimage.label(mask, structure=_EIGHT)
            labels[index] = np.where(image_labels > 0, image_labels + total, 0)
            total += count
    return labels, total


# ---------------------------------------------------------------------------------------------
# exact and legacy (zsbench.metrics)


def aupro(masks: ArrayLike, maps: ArrayLike) -> float | None:
    """Exact MVTec AD AUPRO up to FPR 0.3 (:func:`zsbench.metrics.aupro`)."""
    return metrics.aupro(masks, maps)


def aupro_legacy(masks: ArrayLike, maps: ArrayLike) -> float | None:
    """cflow-ad / AnomalyCLIP 200-threshold AUPRO (:func:`zsbench.metrics.aupro_legacy`)."""
    return metrics.aupro_legacy(masks, maps)


# ---------------------------------------------------------------------------------------------
# anomalib <= 2.2


def _interp1d(old_x: np.ndarray, old_y: np.ndarray, new_x: np.ndarray) -> np.ndarray:
    """anomalib's ``AUPRO.interp1d``: linear, extrapolating, ``eps`` added to each step."""
    slope = (old_y[1:] - old_y[:-1]) / (_TORCH_FLOAT32_EPS + (old_x[1:] - old_x[:-1]))
    index = np.clip(np.searchsorted(old_x, new_x, side="left") - 1, 0, old_x.size - 2)
    return old_y[index] + slope[index] * (new_x - old_x[index])


def _distinct_desc(sorted_asc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an ascending array, descending, with the count of items >= each."""
    if sorted_asc.size == 0:
        return sorted_asc, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], sorted_asc[1:] != sorted_asc[:-1]]))
    return sorted_asc[starts][::-1], (sorted_asc.size - starts)[::-1]


def aupro_anomalib_v2_2(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3
                        ) -> float | None:
    """anomalib <= 2.2 ``AUPRO`` (``num_thresholds=None``), faithfully including its quirks.

    The global ROC (torchmetrics ``binary_roc``: a (0, 0) point, then one point per distinct
    score) fixes ``output_size`` = its points with FPR <= ``fpr_limit``. For every region, the
    ROC of the region against all normal pixels is cut at ``fpr_limit`` (or at its first point
    above it when no point in (0, limit] exists), extended by one point with a linear weight
    when the last kept FPR is not ``allclose`` to the limit, resampled to ``output_size`` points
    equally spaced in *index* (not FPR), and summed; the averaged curve is integrated with
    ``auc(reorder=True)`` and divided by its **last FPR**, not by the limit. Regions whose
    coarse curves end before the limit leave the last averaged FPR below the largest one, which
    is how the value exceeds 1 (anomalib issues 1651, 2442, 3718). torchmetrics applies a
    sigmoid to scores outside [0, 1]; that monotone map is not applied here (it only matters
    through float32 saturation). Regions: 8-connected, as ``cv2.connectedComponents``' default
    in anomalib's ``connected_components_cpu``. Slow, like upstream: one pass over the normal
    scores per region.
    """
    limit = _check_limit(fpr_limit)
    if limit >= 1.0:
        raise ValueError(f"fpr_limit must be below 1 for aupro_anomalib_v2_2; got {fpr_limit!r}")
    masks_b, maps_f = _inputs(masks, maps)
    labels, n_regions = _region_labels(masks_b)
    normal = _AnomalibNormals(np.sort(maps_f[~masks_b]), maps_f, limit)
    if n_regions == 0 or normal.n == 0:
        return None
    fpr_sum = np.zeros(normal.output_size)
    tpr_sum = np.zeros(normal.output_size)
    flat_labels = labels.ravel()
    flat_maps = maps_f.ravel()
    order = np.argsort(flat_labels, kind="stable")
    bounds = np.searchsorted(flat_labels[order], np.arange(1, n_regions + 2))
    for region in range(n_regions):
        region_asc = np.sort(flat_maps[order[bounds[region]:bounds[region + 1]]])
        curve = _anomalib_region_curve(region_asc, normal, limit)
        if curve is None:
            logger.debug("aupro_anomalib_v2_2 undefined: a region's curve has a single point")
            return None
        fpr_sum += curve[0]
        tpr_sum += curve[1]
    fpr_avg = fpr_sum / n_regions
    tpr_avg = tpr_sum / n_regions
    by_fpr = np.argsort(fpr_avg, kind="stable")
    area = float(np.trapezoid(tpr_avg[by_fpr], fpr_avg[by_fpr]))
    value = area / fpr_avg[-1] if fpr_avg[-1] != 0 else float("nan")
    return float(value) if np.isfinite(value) else None


class _AnomalibNormals:
    """The normal pixels as anomalib's per-region ROCs see them: the global ROC's number of
    points with FPR <= limit (``output_size``), and the distinct normal values down to (and
    including) the first whose FPR exceeds the limit, with their counts of normals >= them."""

    def __init__(self, normal_asc: np.ndarray, maps: np.ndarray, limit: float) -> None:
        self.asc, self.n = normal_asc, normal_asc.size
        if self.n == 0:
            return
        # global ROC: fpr of a distinct value t = normals >= t / n
        normal_ge = self.n - np.searchsorted(normal_asc, np.unique(maps), side="left")
        self.output_size = 1 + int(np.count_nonzero(normal_ge / self.n <= limit))
        desc, count_ge = _distinct_desc(normal_asc)
        beyond = np.flatnonzero(count_ge / self.n > limit)
        cut = int(beyond[0]) if beyond.size else desc.size - 1
        self.floor = desc[cut]
        self.cut_asc, self.counts_asc = desc[:cut + 1][::-1], count_ge[:cut + 1][::-1]


def _anomalib_region_curve(region_asc: np.ndarray, normal: _AnomalibNormals, limit: float
                           ) -> tuple[np.ndarray, np.ndarray] | None:
    """One region's (FPR, TPR) curve, cut at the limit and resampled by index to
    ``output_size`` points as anomalib <= 2.2 does; None when it has a single point."""
    n_region = region_asc.size
    region_values = np.unique(region_asc[region_asc >= normal.floor])
    position = np.searchsorted(normal.cut_asc, region_values)
    present = (position < normal.cut_asc.size) & (
        normal.cut_asc[np.minimum(position, normal.cut_asc.size - 1)] == region_values)
    new_values = region_values[~present]
    new_at = np.searchsorted(normal.cut_asc, new_values)
    thresholds_asc = np.insert(normal.cut_asc, new_at, new_values)
    fps_asc = np.insert(normal.counts_asc, new_at,
                        normal.n - np.searchsorted(normal.asc, new_values, side="left"))
    tps_asc = n_region - np.searchsorted(region_asc, thresholds_asc, side="left")
    fpr = np.concatenate([[0.0], fps_asc[::-1] / normal.n])
    tpr = np.concatenate([[0.0], tps_asc[::-1] / n_region])
    # anomalib: edge case where the ROC only has fpr values above the limit
    region_limit = fpr[fpr > limit].min() if fpr[fpr <= limit].max() == 0 else limit
    keep = np.flatnonzero(fpr <= region_limit)
    interpolate = not np.isclose(fpr[keep].max(), limit, rtol=1e-5, atol=1e-8)
    if interpolate:
        extra = int(np.searchsorted(fpr, limit, side="left"))
        keep = np.append(keep, extra)
        slope = 1 - (fpr[extra] - limit) / (fpr[extra] - fpr[extra - 1])
    old_x = keep.astype(np.float64)
    if keep.size < 2 or old_x.max() == 0:
        return None
    old_x = old_x / old_x.max() * (normal.output_size - 1)
    new_x = np.arange(normal.output_size, dtype=np.float64)
    if interpolate:
        new_x[-1] = old_x[-2] + (old_x[-1] - old_x[-2]) * slope
    return _interp1d(old_x, fpr[keep], new_x), _interp1d(old_x, tpr[keep], new_x)


# ---------------------------------------------------------------------------------------------
# ADer / ADEval


def _trapezoid_fraction(fraction: float, area: float, y1: float, y2: float) -> float | None:
    """ADEval ``_trapezoid_intep``: area of the first ``fraction`` of a trapezoid segment."""
    if not (area >= 0 and fraction >= 0 and 0 <= y1 <= y2):
        return None  # upstream asserts
    rect_ratio = y1 / (y1 + 0.5 * (y2 - y1)) if (y1 + 0.5 * (y2 - y1)) != 0 else float("nan")
    return area * rect_ratio * fraction + area * (1 - rect_ratio) * fraction * fraction


def aupro_ader_binned(masks: ArrayLike, maps: ArrayLike, nstrips: int = ADER_NSTRIPS,
                      fpr_limit: float = 0.3) -> float | None:
    """ADer's ``mAUPRO_px`` with ``use_adeval``: ADEval's binned accumulator, ``nstrips=50``.

    Bounds are the category's map min and max. Each pixel goes to ``torch.histc`` bin
    ``floor((v - min) * nstrips / (max - min))`` (the maximum into the last bin), plus an
    underflow bin (< min) and an overflow bin (>= max): pixels at the maximum are counted
    twice, as upstream. Anomalous pixels weigh 1 / (area of their 8-connected region, float32),
    normal pixels 1. Thresholds are the ``nstrips + 1`` bin edges; FPR and PRO (weighted TPR)
    curves; area = trapezoid over points with FPR <= limit, plus ADEval's ``_trapezoid_intep``
    share of the segment crossing the limit, divided by the limit. None where upstream asserts
    or gives NaN (constant maps, no point on one side of the limit, no region or normal pixel).
    """
    if isinstance(nstrips, bool) or not isinstance(nstrips, (int, np.integer)) or nstrips < 1:
        raise ValueError(f"nstrips must be a positive integer; got {nstrips!r}")
    limit = _check_limit(fpr_limit)
    masks_b, maps_f = _inputs(masks, maps)
    labels, n_regions = _region_labels(masks_b)
    if n_regions == 0 or masks_b.all():
        return None
    low, high = float(maps_f.min()), float(maps_f.max())
    if not low < high:
        return None
    areas = np.bincount(labels.ravel())
    weights = np.ones(maps_f.size)
    flat_labels = labels.ravel()
    anomalous = flat_labels > 0
    weights[anomalous] = np.float32(1.0) / areas[flat_labels[anomalous]].astype(np.float32)
    flat = maps_f.ravel()
    bins = np.floor((flat - low) * nstrips / (high - low)).astype(np.int64)
    bins = np.clip(bins, 0, nstrips - 1) + 1  # index 0: underflow (none: min is the data min)
    stat_pos = np.bincount(bins[anomalous], weights=weights[anomalous], minlength=nstrips + 2)
    stat_neg = np.bincount(bins[~anomalous], minlength=nstrips + 2).astype(np.float64)
    at_max = flat >= high  # overflow bin: counted again
    stat_pos[-1] += weights[anomalous & at_max].sum()
    stat_neg[-1] += np.count_nonzero(~anomalous & at_max)

    def rates(stat: np.ndarray) -> np.ndarray:
        cumulative = np.cumsum(stat)
        return (cumulative[-1] - cumulative[:-1]) / cumulative[-1]

    fpr, pro = rates(stat_neg), rates(stat_pos)  # thresholds ascending: rates descending
    below = fpr <= limit
    lo_pro, lo_fpr = pro[below][::-1], fpr[below][::-1]
    hi_pro, hi_fpr = pro[~below][::-1], fpr[~below][::-1]
    if lo_fpr.size == 0 or hi_fpr.size == 0:
        logger.debug("aupro_ader_binned undefined: no point on one side of FPR %s", limit)
        return None
    lo = float(np.trapezoid(lo_pro, lo_fpr))
    hi = float(np.trapezoid(hi_pro, hi_fpr))
    total = float(np.trapezoid(pro[::-1], fpr[::-1]))
    bridge = _trapezoid_fraction((limit - lo_fpr[-1]) / (hi_fpr[0] - lo_fpr[-1]),
                                 total - (lo + hi), float(lo_pro[-1]), float(hi_pro[0]))
    if bridge is None or not np.isfinite(bridge):
        return None
    return float((lo + bridge) / limit)


def f1_max_ader_grid(masks: ArrayLike, maps: ArrayLike) -> float | None:
    """ADer's ``mF1_max_px``: maps min-max normalised over the category, ``pred = norm > s`` for
    ``s in np.arange(0, 1 + 1e-3, 0.05)`` (21 thresholds), F1 = 2PR / (P + R + eps) with
    ``P = tp / (pred + eps)``, ``R = tp / (positives + eps)``, maximum over the grid. None
    without anomalous pixels (ADer would report 0) or for constant maps (NaN upstream)."""
    masks_b, maps_f = _inputs(masks, maps)
    positives = int(masks_b.sum())
    low, high = maps_f.min(), maps_f.max()
    if positives == 0 or not high > low:
        return None
    normalised = (maps_f - low) / (high - low)
    best = 0.0
    for threshold in np.arange(0.0, 1.0 + 1e-3, ADER_GRID_STEP):
        predicted = normalised > threshold
        true_pos = np.count_nonzero(predicted & masks_b)
        precision = true_pos / (np.count_nonzero(predicted) + ADER_EPS)
        recall = true_pos / (positives + ADER_EPS)
        best = max(best, 2 * precision * recall / (precision + recall + ADER_EPS))
    return float(best)


# ---------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class Variant:
    """A re-scoring metric: its function ``(masks, maps) -> float | None`` and its source."""

    name: str
    function: Callable[[np.ndarray, np.ndarray], float | None]
    source: str


VARIANTS: dict[str, Variant] = {variant.name: variant for variant in (
    Variant("aupro", aupro, "MVTec AD definition, exact (zsbench.metrics.aupro)"),
    Variant("aupro_legacy", aupro_legacy,
            "cflow-ad train.py 200-threshold loop, min-max rescaled FPR; AnomalyCLIP, "
            "APRIL-GAN, MuSc, ADer cal_pro_score"),
    Variant("aupro_anomalib_v2_2", aupro_anomalib_v2_2,
            "anomalib <= 2.2 src/anomalib/metrics/aupro.py (area / last FPR)"),
    Variant("aupro_ader_binned", aupro_ader_binned,
            "ADer util/metric.py use_adeval -> ADEval EvalAccumulatorCuda(nstrips=50)"),
    Variant("f1_max_ader_grid", f1_max_ader_grid,
            "ADer util/metric.py mF1_max_px (21-point grid on min-max normalised maps)"),
)}
IMAGE_LEVEL = metrics.METRIC_NAMES[:3]


def rescore_category(labels: ArrayLike, scores: ArrayLike, masks: ArrayLike | None,
                     maps: ArrayLike | None, names: Iterable[str]) -> dict[str, float | None]:
    """The requested metrics of one category: any of :data:`zsbench.metrics.METRIC_NAMES`
    (computed together by :func:`zsbench.metrics.compute_metrics`) or :data:`VARIANTS`."""
    names = list(names)
    unknown = [name for name in names if name not in VARIANTS
               and name not in metrics.METRIC_NAMES]
    if unknown:
        known = sorted(set(VARIANTS) | set(metrics.METRIC_NAMES))
        raise ConfigError(f"unknown metric(s) {unknown}; choose from {known}")
    out: dict[str, float | None] = {}
    standard = [name for name in names if name in metrics.METRIC_NAMES]
    if standard:
        computed = metrics.compute_metrics(labels, scores, masks, maps)
        out.update({name: computed[name] for name in standard})
    for name in names:
        if name in out:
            continue
        out[name] = None if masks is None else VARIANTS[name].function(masks, maps)
    return out


def variant_sources() -> Mapping[str, Any]:
    """``{name: source}`` for docs and result JSON."""
    return {name: variant.source for name, variant in VARIANTS.items()}
