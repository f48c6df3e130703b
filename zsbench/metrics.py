"""Exact image- and pixel-level anomaly-detection metrics (definitions in METRICS.md).

Every metric of one set of scores comes from a single sort: :func:`rank_scores` and
:func:`rank_pixels` return the sorted scores plus, for each group of tied scores that holds an
anomalous item, its position, its anomalous count and its AUPRO region weight. The ROC,
precision-recall, PRO and FPR curves only change at those groups, so every metric is a few
cumulative sums over them; ties form one step, as in sklearn.

Undefined metrics are ``None``, never 0: image metrics need both classes; pixel metrics need an
anomalous pixel; pixel AUROC and both AUPROs also need a normal pixel.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

logger = logging.getLogger(__name__)

METRIC_NAMES = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
                "pixel_f1_max", "aupro", "aupro_legacy")

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_SIGN_BIT = np.uint32(0x8000_0000)
_LOW_BITS = np.uint32(0x7FFF_FFFF)
_HIGH, _LOW = (1, 0) if sys.byteorder == "little" else (0, 1)  # uint32 halves of a uint64


@dataclass(frozen=True)
class RankedScores:
    """Scores sorted ascending, and the groups of tied scores that hold anomalous items.

    ``sorted_scores`` are float32 for float16/float32 input, else float64. Group ``h`` occupies
    ``sorted_scores[hit_start[h]:hit_end[h]]``; it holds ``hit_anomalous[h]`` anomalous items
    and, for pixels, the region weight ``hit_weight[h]`` = sum over those pixels of
    1 / (number of regions x area of the pixel's region) (zeros for image scores).
    """

    sorted_scores: np.ndarray
    hit_start: np.ndarray
    hit_end: np.ndarray
    hit_anomalous: np.ndarray
    hit_weight: np.ndarray
    n_regions: int

    @property
    def n_anomalous(self) -> int:
        return int(self.hit_anomalous.sum())

    @property
    def n_normal(self) -> int:
        return self.sorted_scores.size - self.n_anomalous

    def anomalous_from(self, hit: np.ndarray | int) -> np.ndarray:
        """Anomalous items in hit groups ``hit`` and above (index ``H`` gives 0)."""
        return _suffix_sums(self.hit_anomalous)[hit]


# ---------------------------------------------------------------------------------------------
# input checks


def _as_binary(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a bool array; raise if anything other than 0/1 (or False/True) is present."""
    array = np.asarray(values)
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must be boolean or 0/1 numbers, got dtype {array.dtype}")
    bad = (array != 0) & (array != 1)
    if bad.any():
        first = array[bad].flat[0]
        raise ValueError(f"{name} must contain only 0 and 1 (or False/True); found {first!r}")
    return array.astype(bool)


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a finite floating array (float16/32/64 kept, other real types -> float64)."""
    array = np.asarray(values)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer)
                                   or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must be real numbers, got dtype {array.dtype}")
    if not np.issubdtype(array.dtype, np.floating) or array.dtype == np.longdouble:
        array = array.astype(np.float64)
    if not np.isfinite(array).all():
        where = np.argwhere(~np.isfinite(array))[0].tolist()
        raise ValueError(f"{name} must be finite; found {array[tuple(where)]!r} at index {where}")
    return np.ascontiguousarray(array)


def _image_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    labels_b = _as_binary(labels, "labels")
    scores_f = _as_scores(scores, "scores")
    if labels_b.ndim != 1 or scores_f.ndim != 1 or labels_b.shape != scores_f.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length; got shapes "
                         f"{labels_b.shape} and {scores_f.shape}")
    return labels_b, scores_f


def _pixel_inputs(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    masks_b = _as_binary(masks, "masks")
    maps_f = _as_scores(maps, "maps")
    if masks_b.ndim != 3 or masks_b.shape != maps_f.shape:
        raise ValueError(f"masks and maps must both be [N, H, W] of the same shape; got "
                         f"{masks_b.shape} and {maps_f.shape}")
    return masks_b, maps_f


def _check_fpr_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit!r}")
    return limit


# ---------------------------------------------------------------------------------------------
# regions


def _label_mask(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of one 2-D mask: (labels, count)."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    return labels, int(count)


def count_regions(masks: ArrayLike) -> int:
    """Number of 8-connected ground-truth regions over all masks ``[N, H, W]``."""
    masks_b = _as_binary(masks, "masks")
    if masks_b.ndim != 3:
        raise ValueError(f"masks must be [N, H, W]; got shape {masks_b.shape}")
    return sum(_label_mask(mask)[1] for mask in masks_b if mask.any())


def _region_tags(masks: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per image: (index, flat uint32 tags: 0 normal or a global region id from 1, new areas)."""
    next_id = 0
    no_regions = np.zeros(masks[0].size if len(masks) else 0, dtype=np.uint32)
    no_areas = np.zeros(0, dtype=np.int64)
    for index, mask in enumerate(masks):
        if not mask.any():
            yield index, no_regions, no_areas
            continue
        labels, count = _label_mask(mask)
        tags = labels.ravel().astype(np.uint32)
        tags[tags > 0] += np.uint32(next_id)
        next_id += count
        yield index, tags, np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.int64)


def _region_weights(areas: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Weight per tag (index 0: normal pixels, weight 0) and the number of regions."""
    all_areas = np.concatenate([np.zeros(0, dtype=np.int64), *areas])
    n_regions = int(all_areas.size)
    weights = np.zeros(n_regions + 1, dtype=np.float64)
    if n_regions:
        weights[1:] = 1.0 / (n_regions * all_areas.astype(np.float64))
    return weights, n_regions


# ---------------------------------------------------------------------------------------------
# ranking: one sort, then the tied groups that hold anomalous items


def _order_keys(scores: np.ndarray) -> np.ndarray:
    """uint32 keys whose unsigned order is the numeric order of float16/float32 scores.

    Adding +0.0 turns -0.0 into +0.0, so the two zeros tie as they compare equal."""
    bits = np.add(scores, np.float32(0.0), dtype=np.float32).view(np.uint32)
    return bits ^ ((bits >> np.uint32(31)) * _LOW_BITS | _SIGN_BIT)


def _scores_from_keys(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_order_keys` (float32 scores), with a single new array."""
    flipped = keys >> np.uint32(31)
    flipped ^= np.uint32(1)
    flipped *= _LOW_BITS
    flipped |= _SIGN_BIT
    flipped ^= keys
    return flipped.view(np.float32)


def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Index of the first item of each run of equal values in a sorted array."""
    if sorted_values.size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.empty(sorted_values.size, dtype=bool)
    change[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=change[1:])
    return np.flatnonzero(change)


def _suffix_sums(values: np.ndarray) -> np.ndarray:
    """``[len + 1]``: the sum of ``values[i:]`` for every i (0 at the end)."""
    sums = np.zeros(values.size + 1, dtype=np.result_type(values.dtype, np.int64))
    sums[:-1] = np.cumsum(values[::-1])[::-1]
    return sums


def _hit_groups(sorted_values: np.ndarray, hit_values: np.ndarray, hit_tags: np.ndarray,
                tag_weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """(start, end, anomalous count, region weight, value) of each run of tied ``hit_values``.

    ``hit_values`` are the sorted values of the anomalous items (ties ordered by tag) and
    ``hit_tags`` their region tags; start/end are positions in ``sorted_values`` (all items)."""
    first = _run_starts(hit_values)
    values = hit_values[first]
    weights = tag_weights[hit_tags]
    hit_weight = (np.add.reduceat(weights, first) if first.size
                  else np.zeros(0, dtype=np.float64))
    del weights
    hit_anomalous = np.diff(first, append=hit_values.size).astype(np.int64)
    del first
    return (np.searchsorted(sorted_values, values, side="left"),
            np.searchsorted(sorted_values, values, side="right"), hit_anomalous, hit_weight,
            values)


def _ranked(sorted_scores: np.ndarray, anomalous_at: np.ndarray, anomalous_tags: np.ndarray,
            tag_weights: np.ndarray, n_regions: int) -> RankedScores:
    """Find the tied groups of the anomalous items at sorted positions ``anomalous_at``."""
    start, end, anomalous, weight, _ = _hit_groups(sorted_scores, sorted_scores[anomalous_at],
                                                   anomalous_tags, tag_weights)
    return RankedScores(sorted_scores=sorted_scores, hit_start=start, hit_end=end,
                        hit_anomalous=anomalous, hit_weight=weight, n_regions=n_regions)


def _rank_by_argsort(scores: np.ndarray, tags: np.ndarray, tag_weights: np.ndarray,
                     n_regions: int) -> RankedScores:
    """Rank scores of any float dtype with one argsort."""
    order = np.argsort(scores)
    sorted_scores = scores[order].astype(np.result_type(scores.dtype, np.float32), copy=False)
    sorted_tags = tags[order]
    del order
    anomalous_at = np.flatnonzero(sorted_tags)
    return _ranked(sorted_scores, anomalous_at, sorted_tags[anomalous_at], tag_weights, n_regions)


def _rank_by_packed_sort(masks: np.ndarray, maps: np.ndarray) -> RankedScores:
    """Rank float16/float32 pixel scores by sorting uint64 keys ``score key << 32 | region tag``.

    The keys are the only full-size array until the sorted float32 scores are read back."""
    keys = np.empty(maps.size, dtype=np.uint64)
    halves = keys.view(np.uint32).reshape(-1, 2)
    per_image = maps[0].size if len(maps) else 0
    areas: list[np.ndarray] = []
    for index, tags, new_areas in _region_tags(masks):
        rows = slice(index * per_image, (index + 1) * per_image)
        halves[rows, _HIGH] = _order_keys(maps[index].ravel())
        halves[rows, _LOW] = tags
        areas.append(new_areas)
    tag_weights, n_regions = _region_weights(areas)
    keys.sort()
    tags = halves[:, _LOW]
    anomalous_at = np.flatnonzero(tags)
    anomalous_tags = tags[anomalous_at]
    sorted_scores = _scores_from_keys(halves[:, _HIGH])
    del keys, halves, tags
    return _ranked(sorted_scores, anomalous_at, anomalous_tags, tag_weights, n_regions)


_CHUNK = 1 << 22  # items per temporary array in the in-place paths


def _check_finite_image(image: np.ndarray, index: int) -> None:
    if not np.isfinite(image).all():
        where = np.argwhere(~np.isfinite(image))[0].tolist()
        raise ValueError(f"maps must be finite; found {image[tuple(where)]!r} at index "
                         f"{[index, *where]}")


def _as_binary_view(values: ArrayLike, name: str) -> np.ndarray:
    """Like :func:`_as_binary`, but checks image by image and views 0/1 uint8/int8 as bool."""
    array = np.asarray(values)
    if array.dtype in (np.uint8, np.int8) and array.flags.c_contiguous:
        for image in array.reshape(len(array), -1) if array.ndim else [array]:
            if (image > 1).any() or (image < 0).any():
                bad = image[(image > 1) | (image < 0)][0]
                raise ValueError(f"{name} must contain only 0 and 1 (or False/True); "
                                 f"found {bad!r}")
        return array.view(bool)
    return _as_binary(array, name)


def _rank_in_place(masks: np.ndarray, maps: np.ndarray) -> RankedScores:
    """Rank C-contiguous float32 ``maps`` by sorting their own buffer; it ends up holding the
    sorted scores (``sorted_scores`` is a view of it).

    Each score becomes an order-preserving uint32 key in place; the anomalous pixels are copied
    out as ``key << 32 | region tag`` (8 bytes each) and sorted separately, so their ties are
    ordered by tag exactly as in :func:`_rank_by_packed_sort` and the results are identical."""
    flat = maps.reshape(-1)
    keys = flat.view(np.uint32)
    per_image = maps[0].size if len(maps) else 0
    packed = np.empty(int(np.count_nonzero(masks)), dtype=np.uint64)
    halves = packed.view(np.uint32).reshape(-1, 2)
    areas: list[np.ndarray] = []
    filled = 0
    for index, tags, new_areas in _region_tags(masks):
        _check_finite_image(maps[index], index)
        rows = slice(index * per_image, (index + 1) * per_image)
        image_keys = _order_keys(flat[rows])
        if new_areas.size:
            where = np.flatnonzero(tags)
            halves[filled:filled + where.size, _HIGH] = image_keys[where]
            halves[filled:filled + where.size, _LOW] = tags[where]
            filled += where.size
        keys[rows] = image_keys
        areas.append(new_areas)
    tag_weights, n_regions = _region_weights(areas)
    keys.sort()
    packed.sort()
    start, end, anomalous, weight, _ = _hit_groups(keys, halves[:, _HIGH], halves[:, _LOW],
                                                   tag_weights)
    del packed, halves
    for begin in range(0, keys.size, _CHUNK):
        part = keys[begin:begin + _CHUNK]
        part[...] = _scores_from_keys(part).view(np.uint32)
    return RankedScores(sorted_scores=flat, hit_start=start, hit_end=end,
                        hit_anomalous=anomalous, hit_weight=weight, n_regions=n_regions)


def rank_pixels_in_place(masks: ArrayLike, maps: np.ndarray) -> RankedScores:
    """:func:`rank_pixels` that consumes ``maps``: a writable C-contiguous float32 ``[N, H, W]``
    array is overwritten with the sorted scores (no copy: about 1 byte per pixel and 44 per
    anomalous pixel beyond the inputs); any other array is ranked from a float32 copy (float16)
    or by :func:`rank_pixels` (float64). Same values as :func:`rank_pixels`."""
    masks_b = _as_binary_view(masks, "masks")
    array = np.asarray(maps)
    if array.dtype == np.float64 or array.ndim != 3 or masks_b.shape != array.shape:
        return rank_pixels(masks_b, array)
    if array.dtype == np.float16 or (array.dtype == np.float32 and not (
            array.flags.c_contiguous and array.flags.writeable)):
        array = np.array(array, dtype=np.float32, order="C")
    if array.dtype != np.float32:
        return rank_pixels(masks_b, array)
    return _rank_in_place(masks_b, array)


def rank_scores(labels: ArrayLike, scores: ArrayLike) -> RankedScores:
    """Rank image scores ``[N]`` against their labels (one argsort)."""
    labels_b, scores_f = _image_inputs(labels, scores)
    return _rank_by_argsort(scores_f, labels_b.astype(np.uint32), np.zeros(2), 0)


def rank_pixels(masks: ArrayLike, maps: ArrayLike) -> RankedScores:
    """Rank the pixel scores of ``maps`` ``[N, H, W]`` against ``masks`` (one sort in all).

    Regions of ``masks`` are labelled once (8-connected). float16/float32 maps are packed with
    their region tag into uint64 keys and sorted in place; float64 maps use one argsort.
    """
    masks_b, maps_f = _pixel_inputs(masks, maps)
    if maps_f.dtype in (np.float16, np.float32):
        return _rank_by_packed_sort(masks_b, maps_f)
    per_image = maps_f[0].size if len(maps_f) else 0
    tags_all = np.empty(maps_f.size, dtype=np.uint32)
    areas: list[np.ndarray] = []
    for index, tags, new_areas in _region_tags(masks_b):
        tags_all[index * per_image:(index + 1) * per_image] = tags
        areas.append(new_areas)
    tag_weights, n_regions = _region_weights(areas)
    return _rank_by_argsort(maps_f.reshape(-1), tags_all, tag_weights, n_regions)


# ---------------------------------------------------------------------------------------------
# metrics from ranked scores (the curves only change at the groups holding anomalous items)


def auroc_from_ranked(ranked: RankedScores) -> float | None:
    """ROC AUC, ties counted as one half (as sklearn's trapezoid); None without both classes."""
    n_pos, n_neg = ranked.n_anomalous, ranked.n_normal
    if n_pos == 0 or n_neg == 0:
        return None
    anomalous = ranked.hit_anomalous.astype(np.float64)
    anomalous_below = n_pos - ranked.anomalous_from(np.arange(ranked.hit_start.size))
    normal_below = ranked.hit_start - anomalous_below
    normal_tied = (ranked.hit_end - ranked.hit_start) - ranked.hit_anomalous
    wins = np.dot(anomalous, normal_below + 0.5 * normal_tied)
    return float(wins / (float(n_pos) * float(n_neg)))


def _precision_recall_points(ranked: RankedScores) -> tuple[np.ndarray, np.ndarray]:
    """True positives and predicted positives at each hit group's threshold (score >= group)."""
    true_pos = ranked.anomalous_from(np.arange(ranked.hit_start.size)).astype(np.float64)
    predicted = (ranked.sorted_scores.size - ranked.hit_start).astype(np.float64)
    return true_pos, predicted


def ap_from_ranked(ranked: RankedScores) -> float | None:
    """Step-wise average precision (sklearn ``average_precision_score``); None without positives."""
    n_pos = ranked.n_anomalous
    if n_pos == 0:
        return None
    true_pos, predicted = _precision_recall_points(ranked)
    return float(np.dot(ranked.hit_anomalous, true_pos / predicted) / n_pos)


def f1_max_from_ranked(ranked: RankedScores) -> float | None:
    """Maximum F1 over all thresholds (it is reached at a hit group); None without positives."""
    n_pos = ranked.n_anomalous
    if n_pos == 0:
        return None
    true_pos, predicted = _precision_recall_points(ranked)
    return float(np.max(2.0 * true_pos / (predicted + n_pos)))


def _pro_curve(ranked: RankedScores) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) from the highest threshold down: (0, 0), then for each hit group the point just
    above it and the point at it, then (1, 1). Other thresholds lie on horizontal segments."""
    n_hits = ranked.hit_start.size
    n_items, n_neg = ranked.sorted_scores.size, ranked.n_normal
    pos_from = ranked.anomalous_from(np.arange(n_hits + 1))
    weight_from = _suffix_sums(ranked.hit_weight)
    normal_at = n_items - ranked.hit_start - pos_from[:-1]
    normal_above = n_items - ranked.hit_end - pos_from[1:]
    fpr = np.empty(2 * n_hits + 2)
    pro = np.empty(2 * n_hits + 2)
    fpr[0], pro[0], fpr[-1], pro[-1] = 0.0, 0.0, 1.0, 1.0
    fpr[1:-1:2], fpr[2:-1:2] = normal_above[::-1] / n_neg, normal_at[::-1] / n_neg
    pro[1:-1:2], pro[2:-1:2] = weight_from[1:][::-1], weight_from[:-1][::-1]
    np.minimum(pro, 1.0, out=pro)  # cumulative rounding must not pass 1
    return fpr, pro


def aupro_from_ranked(ranked: RankedScores, fpr_limit: float = 0.3) -> float | None:
    """MVTec AD AUPRO: area under PRO(FPR) on [0, fpr_limit] (interpolated there) / fpr_limit."""
    limit = _check_fpr_limit(fpr_limit)
    if ranked.n_regions == 0 or ranked.n_normal == 0:
        return None
    fpr, pro = _pro_curve(ranked)
    inside = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    area = float(np.trapezoid(pro[:inside], fpr[:inside]))
    if inside < fpr.size:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        pro_at_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + pro_at_limit) / 2.0
    return float(min(max(area / limit, 0.0), 1.0))


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    return int(steps)


def aupro_legacy_from_ranked(ranked: RankedScores, steps: int = 200,
                             fpr_limit: float = 0.3) -> float | None:
    """The cflow-ad routine: thresholds ``np.arange(min, max, (max - min) / steps)``, ``> th``.

    Keeps thresholds with FPR < fpr_limit, min-max rescales their FPRs to [0, 1] and takes the
    trapezoid area (sklearn ``auc``). Returns None wherever the upstream loop errors or gives NaN:
    no region, no normal pixel, constant scores, no kept threshold, or kept FPRs all equal (as
    with a single extreme outlier pixel).
    """
    steps = _check_steps(steps)
    limit = _check_fpr_limit(fpr_limit)
    n_neg = ranked.n_normal
    if ranked.n_regions == 0 or n_neg == 0:
        return None
    thresholds = legacy_thresholds(ranked.sorted_scores[0], ranked.sorted_scores[-1], steps)
    if thresholds is None:
        return None
    needles = (round_down_float32(thresholds) if ranked.sorted_scores.dtype == np.float32
               else thresholds)  # same counts, without a float64 copy of the scores
    n_above = ranked.sorted_scores.size - np.searchsorted(ranked.sorted_scores, needles,
                                                          side="right")
    first_hit_above = np.searchsorted(ranked.hit_start, ranked.sorted_scores.size - n_above)
    pos_above = ranked.anomalous_from(first_hit_above)
    fprs = (n_above - pos_above) / n_neg
    pros = np.minimum(_suffix_sums(ranked.hit_weight)[first_hit_above], 1.0)
    return legacy_area(fprs, pros, limit)


def round_down_float32(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each value: ``x <= v`` exactly when ``x <= result`` for
    every float32 ``x``."""
    rounded = values.astype(np.float32)
    too_big = rounded.astype(np.float64) > values
    rounded[too_big] = np.nextafter(rounded[too_big], np.float32(-np.inf))
    return rounded


def legacy_thresholds(low: np.floating, high: np.floating, steps: int) -> np.ndarray | None:
    """cflow-ad's thresholds ``np.arange(low, high, (high - low) / steps)`` from the minimum and
    maximum score (numpy scalars of the scores' dtype, as upstream); None for constant scores."""
    delta = (high - low) / steps
    if not delta > 0:
        logger.debug("aupro_legacy undefined: constant scores")
        return None
    return np.arange(low, high, delta)


def legacy_area(fprs: np.ndarray, pros: np.ndarray, limit: float) -> float | None:
    """cflow-ad's area from FPR and PRO at each threshold (ascending thresholds)."""
    keep = fprs < limit
    if not keep.any():
        logger.debug("aupro_legacy undefined: no threshold with FPR < %s", limit)
        return None
    kept = fprs[keep]
    span = kept.max() - kept.min()
    if span == 0:
        logger.debug("aupro_legacy undefined: all kept FPRs equal (%s)", kept[0])
        return None
    rescaled = (kept - kept.min()) / span
    return float(-np.trapezoid(pros[keep], rescaled))  # FPRs fall as thresholds rise


# ---------------------------------------------------------------------------------------------
# public one-call metrics


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Image-level ROC AUC; None unless both classes are present."""
    return auroc_from_ranked(rank_scores(labels, scores))


def image_ap(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Image-level average precision; None unless both classes are present."""
    ranked = rank_scores(labels, scores)
    return ap_from_ranked(ranked) if ranked.n_normal else None


def image_f1_max(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Image-level maximum F1; None unless both classes are present."""
    ranked = rank_scores(labels, scores)
    return f1_max_from_ranked(ranked) if ranked.n_normal else None


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float | None:
    """Pixel-level ROC AUC over all pixels; None without anomalous or normal pixels."""
    return auroc_from_ranked(rank_pixels(masks, maps))


def pixel_ap(masks: ArrayLike, maps: ArrayLike) -> float | None:
    """Pixel-level average precision; None without anomalous pixels."""
    return ap_from_ranked(rank_pixels(masks, maps))


def pixel_f1_max(masks: ArrayLike, maps: ArrayLike) -> float | None:
    """Pixel-level maximum F1; None without anomalous pixels."""
    return f1_max_from_ranked(rank_pixels(masks, maps))


def aupro(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3) -> float | None:
    """Exact MVTec AD AUPRO up to ``fpr_limit``; None without regions or normal pixels."""
    _check_fpr_limit(fpr_limit)
    return aupro_from_ranked(rank_pixels(masks, maps), fpr_limit)


def aupro_legacy(masks: ArrayLike, maps: ArrayLike, steps: int = 200,
                 fpr_limit: float = 0.3) -> float | None:
    """The cflow-ad/AnomalyCLIP AUPRO of published tables (see :func:`aupro_legacy_from_ranked`).

    float16 maps are promoted to float32 first (upstream's maps are float32 arrays).
    """
    _check_steps(steps)
    _check_fpr_limit(fpr_limit)
    return aupro_legacy_from_ranked(rank_pixels(masks, maps), steps, fpr_limit)


def compute_metrics(labels: ArrayLike, scores: ArrayLike, masks: ArrayLike | None = None,
                    maps: ArrayLike | None = None, *,
                    consume: bool = False) -> dict[str, float | None]:
    """All :data:`METRIC_NAMES` for one category (see :func:`category_metrics`, which also
    returns the number of ground-truth regions)."""
    return category_metrics(labels, scores, masks, maps, consume=consume)[0]


def category_metrics(labels: ArrayLike, scores: ArrayLike, masks: ArrayLike | None = None,
                     maps: ArrayLike | None = None, *, consume: bool = False
                     ) -> tuple[dict[str, float | None], int]:
    """All :data:`METRIC_NAMES` for one category, from one sort of the image and pixel scores.

    ``masks`` (all-zero for normal images) and ``maps`` are ``[N, H, W]`` for the same N images as
    ``labels``/``scores``; without masks every pixel metric is None. ``consume=True`` lets a
    writable C-contiguous float32 ``maps`` be overwritten (see :func:`rank_pixels_in_place`):
    same values, 6.0 instead of 17.3 bytes per pixel with the inputs (measured: 1,000 maps of
    518x518, 1 % anomalous pixels; benchmarks/bench_metrics_memory.py). The second value is
    the number of 8-connected ground-truth regions (:func:`count_regions`), taken from the
    labelling AUPRO needs anyway (0 without masks).
    """
    image_ranked = rank_scores(labels, scores)
    both_classes = image_ranked.n_anomalous > 0 and image_ranked.n_normal > 0
    result: dict[str, float | None] = {
        "image_auroc": auroc_from_ranked(image_ranked) if both_classes else None,
        "image_ap": ap_from_ranked(image_ranked) if both_classes else None,
        "image_f1_max": f1_max_from_ranked(image_ranked) if both_classes else None,
    }
    if masks is None:
        result.update(dict.fromkeys(METRIC_NAMES[3:]))
        return result, 0
    if maps is None:
        raise ValueError("maps is None but masks were given; pass the anomaly maps too")
    n_images = len(np.asarray(labels))
    if np.shape(masks)[:1] != (n_images,):
        raise ValueError(f"masks has shape {np.shape(masks)}; expected [{n_images}, H, W] to match "
                         f"the {n_images} labels")
    pixel_ranked = rank_pixels_in_place(masks, maps) if consume else rank_pixels(masks, maps)
    result.update({
        "pixel_auroc": auroc_from_ranked(pixel_ranked),
        "pixel_ap": ap_from_ranked(pixel_ranked),
        "pixel_f1_max": f1_max_from_ranked(pixel_ranked),
        "aupro": aupro_from_ranked(pixel_ranked),
        "aupro_legacy": aupro_legacy_from_ranked(pixel_ranked),
    })
    return result, pixel_ranked.n_regions


def summarize(per_category: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Macro mean over categories per metric, skipping None; counts the categories used.

    Returns ``{"mean": {metric: float | None}, "categories_used": {metric: int}}`` with every
    name of :data:`METRIC_NAMES` plus any other metric found.
    """
    names = list(METRIC_NAMES)
    for metrics in per_category.values():
        names.extend(name for name in metrics if name not in names)
    mean: dict[str, float | None] = {}
    used: dict[str, int] = {}
    for name in names:
        values = []
        for category, metrics in per_category.items():
            value = metrics.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not math.isfinite(float(value)):
                raise ValueError(f"category {category!r} metric {name!r}: expected a finite "
                                 f"number or None, got {value!r}")
            values.append(float(value))
        mean[name] = math.fsum(values) / len(values) if values else None
        used[name] = len(values)
    return {"mean": mean, "categories_used": used}
