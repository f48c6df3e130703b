"""Exact image- and pixel-level anomaly-detection metrics (definitions in METRICS.md).

Every metric of one set of scores comes from a single sort: :func:`rank_scores` and
:func:`rank_pixels` reduce the scores to groups of tied values, each with its count of normal and
anomalous items and (for pixels) its share of the AUPRO region weight. ROC, precision-recall, PRO
and FPR curves are then cumulative sums over those groups, so ties form one step, as in sklearn.

Undefined metrics are ``None``, never 0: image metrics need both classes; pixel metrics need an
anomalous pixel; pixel AUROC and both AUPROs also need a normal pixel.
"""

from __future__ import annotations

import logging
import math
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
_TAG_BITS = np.uint64(0xFFFF_FFFF)
_SHIFT = np.uint64(32)
_CHUNK = 1 << 22  # elements per chunk when scanning the sorted keys


@dataclass(frozen=True)
class ScoreGroups:
    """Distinct scores in ascending order and what each group of tied scores holds.

    ``values`` are float32 for float16/float32 input, else float64; ``normal`` and ``anomalous``
    are int64 counts; ``region_weight`` is, per group, the sum over its anomalous pixels of
    1 / (number of regions x area of the pixel's region) (zeros for image-level scores).
    """

    values: np.ndarray
    normal: np.ndarray
    anomalous: np.ndarray
    region_weight: np.ndarray
    n_regions: int

    @property
    def n_normal(self) -> int:
        return int(self.normal.sum())

    @property
    def n_anomalous(self) -> int:
        return int(self.anomalous.sum())


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
# ranking: one sort -> groups of tied scores


def _order_keys(scores32: np.ndarray) -> np.ndarray:
    """uint32 keys whose unsigned order is the numeric order of float32 scores (-0.0 == 0.0)."""
    bits = (scores32 + np.float32(0.0)).view(np.uint32)  # adding +0.0 turns -0.0 into +0.0
    return bits ^ ((bits >> np.uint32(31)) * _LOW_BITS | _SIGN_BIT)


def _scores_from_keys(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_order_keys`."""
    keys = keys.astype(np.uint32)
    return (keys ^ (((keys >> np.uint32(31)) ^ np.uint32(1)) * _LOW_BITS | _SIGN_BIT)).view(
        np.float32)


def _aggregate(starts: np.ndarray, size: int, anomalous_at: np.ndarray, anomalous_tags: np.ndarray,
               tag_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group (normal, anomalous, region weight) from group starts and anomalous positions."""
    n_groups = starts.size
    group_sizes = np.diff(np.append(starts, size))
    group_of = np.searchsorted(starts, anomalous_at, side="right") - 1
    anomalous = np.bincount(group_of, minlength=n_groups).astype(np.int64)
    weight = np.bincount(group_of, weights=tag_weights[anomalous_tags], minlength=n_groups)
    return group_sizes - anomalous, anomalous, weight.astype(np.float64)


def _groups_by_argsort(scores: np.ndarray, tags: np.ndarray, tag_weights: np.ndarray,
                       n_regions: int) -> ScoreGroups:
    """Group tied scores of any float dtype with one argsort."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    sorted_tags = tags[order]
    del order
    starts = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1
    starts = np.concatenate([np.zeros(min(scores.size, 1), dtype=np.int64), starts])
    anomalous_at = np.flatnonzero(sorted_tags)
    normal, anomalous, weight = _aggregate(starts, scores.size, anomalous_at,
                                           sorted_tags[anomalous_at], tag_weights)
    values = sorted_scores[starts].astype(np.result_type(scores.dtype, np.float32))
    return ScoreGroups(values, normal, anomalous, weight, n_regions)


def _groups_from_sorted_keys(keys: np.ndarray, tag_weights: np.ndarray,
                             n_regions: int) -> ScoreGroups:
    """Group sorted ``score_key << 32 | tag`` keys, scanning in chunks to keep memory flat."""
    starts_parts, anomalous_parts, tag_parts = [], [], []
    for begin in range(0, keys.size, _CHUNK):
        chunk = keys[begin:begin + _CHUNK]
        score_keys = chunk >> _SHIFT
        if begin == 0:
            starts_parts.append(np.zeros(1, dtype=np.int64))
        elif score_keys[0] != keys[begin - 1] >> _SHIFT:
            starts_parts.append(np.array([begin], dtype=np.int64))
        starts_parts.append(np.flatnonzero(score_keys[1:] != score_keys[:-1]) + (begin + 1))
        chunk_tags = (chunk & _TAG_BITS).astype(np.uint32)
        at = np.flatnonzero(chunk_tags)
        anomalous_parts.append(at + begin)
        tag_parts.append(chunk_tags[at])
    starts = np.concatenate([np.zeros(0, dtype=np.int64), *starts_parts])
    anomalous_at = np.concatenate([np.zeros(0, dtype=np.int64), *anomalous_parts])
    anomalous_tags = np.concatenate([np.zeros(0, dtype=np.uint32), *tag_parts])
    normal, anomalous, weight = _aggregate(starts, keys.size, anomalous_at, anomalous_tags,
                                           tag_weights)
    values = _scores_from_keys(keys[starts] >> _SHIFT)
    return ScoreGroups(values, normal, anomalous, weight, n_regions)


def rank_scores(labels: ArrayLike, scores: ArrayLike) -> ScoreGroups:
    """Group image scores ``[N]`` by tied value, counting normal/anomalous labels per group."""
    labels_b, scores_f = _image_inputs(labels, scores)
    return _groups_by_argsort(scores_f, labels_b.astype(np.uint32), np.zeros(2), 0)


def rank_pixels(masks: ArrayLike, maps: ArrayLike) -> ScoreGroups:
    """Group the pixel scores of ``maps`` ``[N, H, W]`` by tied value (one sort in all).

    Regions of ``masks`` are labelled once (8-connected). float16/float32 maps are packed with
    their region tag into uint64 keys and sorted in place (the only full-size copy); float64 maps
    use one argsort.
    """
    masks_b, maps_f = _pixel_inputs(masks, maps)
    n_pixels = maps_f.size
    per_image = n_pixels // len(maps_f) if len(maps_f) else 0
    areas: list[np.ndarray] = []
    if maps_f.dtype in (np.float16, np.float32):
        keys = np.empty(n_pixels, dtype=np.uint64)
        for index, tags, new_areas in _region_tags(masks_b):
            part = keys[index * per_image:(index + 1) * per_image]
            part[:] = _order_keys(maps_f[index].astype(np.float32).ravel())
            part <<= _SHIFT
            part |= tags
            areas.append(new_areas)
        keys.sort()
        tag_weights, n_regions = _region_weights(areas)
        return _groups_from_sorted_keys(keys, tag_weights, n_regions)
    tags_all = np.empty(n_pixels, dtype=np.uint32)
    for index, tags, new_areas in _region_tags(masks_b):
        tags_all[index * per_image:(index + 1) * per_image] = tags
        areas.append(new_areas)
    tag_weights, n_regions = _region_weights(areas)
    return _groups_by_argsort(maps_f.reshape(-1), tags_all, tag_weights, n_regions)


# ---------------------------------------------------------------------------------------------
# metrics from groups


def _descending(groups: ScoreGroups) -> tuple[np.ndarray, np.ndarray]:
    """(anomalous, normal) counts per group from the highest score down, as float64."""
    return (groups.anomalous[::-1].astype(np.float64), groups.normal[::-1].astype(np.float64))


def auroc_from_groups(groups: ScoreGroups) -> float | None:
    """ROC AUC (trapezoid over tied groups, as sklearn); None without both classes."""
    n_pos, n_neg = groups.n_anomalous, groups.n_normal
    if n_pos == 0 or n_neg == 0:
        return None
    pos, neg = _descending(groups)
    pos_before = np.cumsum(pos) - pos
    return float(np.dot(neg, pos_before + 0.5 * pos) / (float(n_pos) * float(n_neg)))


def ap_from_groups(groups: ScoreGroups) -> float | None:
    """Step-wise average precision (sklearn ``average_precision_score``); None without positives."""
    n_pos = groups.n_anomalous
    if n_pos == 0:
        return None
    pos, neg = _descending(groups)
    precision = np.cumsum(pos) / np.cumsum(pos + neg)
    return float(np.dot(pos, precision) / n_pos)


def f1_max_from_groups(groups: ScoreGroups) -> float | None:
    """Maximum F1 over all distinct-score thresholds; None without positives."""
    n_pos = groups.n_anomalous
    if n_pos == 0:
        return None
    pos, neg = _descending(groups)
    true_pos = np.cumsum(pos)
    return float(np.max(2.0 * true_pos / (np.cumsum(pos + neg) + n_pos)))


def aupro_from_groups(groups: ScoreGroups, fpr_limit: float = 0.3) -> float | None:
    """MVTec AD AUPRO: area under PRO(FPR) on [0, fpr_limit] (interpolated there) / fpr_limit."""
    limit = _check_fpr_limit(fpr_limit)
    n_neg = groups.n_normal
    if groups.n_regions == 0 or n_neg == 0:
        return None
    fpr = np.concatenate([[0.0], np.cumsum(groups.normal[::-1]) / n_neg])
    pro = np.concatenate([[0.0], np.minimum(np.cumsum(groups.region_weight[::-1]), 1.0)])
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


def aupro_legacy_from_groups(groups: ScoreGroups, steps: int = 200,
                             fpr_limit: float = 0.3) -> float | None:
    """The cflow-ad routine (thresholds ``np.arange(min, max, (max - min) / steps)``, ``> th``).

    Keeps thresholds with FPR < fpr_limit, min-max rescales their FPRs to [0, 1] and takes the
    trapezoid area. Returns None wherever the upstream loop errors or gives NaN: no region, no
    normal pixel, constant scores, no kept threshold, or kept FPRs all equal (e.g. one outlier).
    """
    steps = _check_steps(steps)
    limit = _check_fpr_limit(fpr_limit)
    n_neg = groups.n_normal
    if groups.n_regions == 0 or n_neg == 0:
        return None
    low, high = groups.values[0], groups.values[-1]  # numpy scalars: upstream's dtype rules
    delta = (high - low) / steps
    if not delta > 0:
        logger.debug("aupro_legacy undefined: constant scores")
        return None
    thresholds = np.arange(low, high, delta)
    first_above = np.searchsorted(groups.values, thresholds, side="right")
    normal_from = np.append(np.cumsum(groups.normal[::-1])[::-1], 0)
    weight_from = np.append(np.cumsum(groups.region_weight[::-1])[::-1], 0.0)
    fprs = normal_from[first_above] / n_neg
    pros = weight_from[first_above]
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
    return auroc_from_groups(rank_scores(labels, scores))


def image_ap(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Image-level average precision; None unless both classes are present."""
    groups = rank_scores(labels, scores)
    return ap_from_groups(groups) if groups.n_normal else None


def image_f1_max(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Image-level maximum F1; None unless both classes are present."""
    groups = rank_scores(labels, scores)
    return f1_max_from_groups(groups) if groups.n_normal else None


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float | None:
    """Pixel-level ROC AUC over all pixels; None without anomalous or normal pixels."""
    return auroc_from_groups(rank_pixels(masks, maps))


def pixel_ap(masks: ArrayLike, maps: ArrayLike) -> float | None:
    """Pixel-level average precision; None without anomalous pixels."""
    return ap_from_groups(rank_pixels(masks, maps))


def pixel_f1_max(masks: ArrayLike, maps: ArrayLike) -> float | None:
    """Pixel-level maximum F1; None without anomalous pixels."""
    return f1_max_from_groups(rank_pixels(masks, maps))


def aupro(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3) -> float | None:
    """Exact MVTec AD AUPRO up to ``fpr_limit``; None without regions or normal pixels."""
    _check_fpr_limit(fpr_limit)
    return aupro_from_groups(rank_pixels(masks, maps), fpr_limit)


def aupro_legacy(masks: ArrayLike, maps: ArrayLike, steps: int = 200,
                 fpr_limit: float = 0.3) -> float | None:
    """The cflow-ad/AnomalyCLIP AUPRO of published tables (see :func:`aupro_legacy_from_groups`).

    float16 maps are compared as float32 (thresholds in float32, as upstream's float32 maps).
    """
    _check_steps(steps)
    _check_fpr_limit(fpr_limit)
    return aupro_legacy_from_groups(rank_pixels(masks, maps), steps, fpr_limit)


def compute_metrics(labels: ArrayLike, scores: ArrayLike, masks: ArrayLike | None = None,
                    maps: ArrayLike | None = None) -> dict[str, float | None]:
    """All :data:`METRIC_NAMES` for one category, from one sort of the image and pixel scores.

    ``masks`` (all-zero for normal images) and ``maps`` are ``[N, H, W]`` for the same N images as
    ``labels``/``scores``; without masks every pixel metric is None.
    """
    image_groups = rank_scores(labels, scores)
    both_classes = image_groups.n_anomalous > 0 and image_groups.n_normal > 0
    result: dict[str, float | None] = {
        "image_auroc": auroc_from_groups(image_groups) if both_classes else None,
        "image_ap": ap_from_groups(image_groups) if both_classes else None,
        "image_f1_max": f1_max_from_groups(image_groups) if both_classes else None,
    }
    if masks is None:
        result.update(dict.fromkeys(METRIC_NAMES[3:]))
        return result
    if maps is None:
        raise ValueError("maps is None but masks were given; pass the anomaly maps too")
    n_images = len(np.asarray(labels))
    if np.shape(masks)[:1] != (n_images,):
        raise ValueError(f"masks has shape {np.shape(masks)}; expected [{n_images}, H, W] to match "
                         f"the {n_images} labels")
    pixel_groups = rank_pixels(masks, maps)
    result.update({
        "pixel_auroc": auroc_from_groups(pixel_groups),
        "pixel_ap": ap_from_groups(pixel_groups),
        "pixel_f1_max": f1_max_from_groups(pixel_groups),
        "aupro": aupro_from_groups(pixel_groups),
        "aupro_legacy": aupro_legacy_from_groups(pixel_groups),
    })
    return result


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
