"""Metric variants of other codebases equal independent straightforward implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, roc_curve

from zsbench import rescoring
from zsbench.rescoring import (
    VARIANTS,
    aupro_ader_binned,
    aupro_anomalib_v2_2,
    f1_max_ader_grid,
    rescore_category,
)

EIGHT = np.ones((3, 3), dtype=bool)


def _random_case(seed: int, n: int = 3, size: int = 10, levels: int | None = None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, 6, 2)
            masks[i, y:y + h, x:x + w] = True
    if not masks.any():
        masks[0, 1:3, 1:3] = True
    maps = rng.random((n, size, size))
    if levels is not None:
        maps = np.round(maps * levels) / 10
    maps = maps + masks * rng.random() * rng.integers(0, 3)
    return masks, maps


def _regions(masks):
    out = []
    for index, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=EIGHT)
        out.extend((index, labels == k) for k in range(1, count + 1))
    return out


# -- independent references -----------------------------------------------------------------


def reference_anomalib(masks, maps, limit=0.3):
    """anomalib <= 2.2 AUPRO.compute_pro + compute, step by step with sklearn's roc_curve."""
    target = masks.ravel()
    preds = maps.ravel()
    global_fpr = roc_curve(target, preds, drop_intermediate=False)[0]
    size = int((global_fpr <= limit).sum())
    fpr_sum, tpr_sum = np.zeros(size), np.zeros(size)
    regions = _regions(masks)
    background = ~target
    for index, region in regions:
        mask = np.zeros(masks.shape, dtype=bool)
        mask[index] = region
        mask = mask.ravel()
        keep = background | mask
        fpr, tpr, _ = roc_curve(mask[keep], preds[keep], drop_intermediate=False)
        new_idx = np.arange(size, dtype=float)
        lim = fpr[fpr > limit].min() if fpr[fpr <= limit].max() == 0 else limit
        idx = list(np.where(fpr <= lim)[0])
        interp = False
        if abs(fpr[idx].max() - limit) > 1e-8 + 1e-5 * limit:
            tmp = int(np.searchsorted(fpr, limit))
            idx.append(tmp)
            slope = 1 - (fpr[tmp] - limit) / (fpr[tmp] - fpr[tmp - 1])
            interp = True
        idx = np.array(idx)
        f, t = fpr[idx], tpr[idx]
        x = idx / idx.max() * (size - 1)
        if interp:
            new_idx[-1] = x[-2] + (x[-1] - x[-2]) * slope
        for values, total in ((t, tpr_sum), (f, fpr_sum)):
            for k, point in enumerate(new_idx):
                j = min(max(int(np.searchsorted(x, point)) - 1, 0), len(x) - 2)
                step = (values[j + 1] - values[j]) / (np.finfo(np.float32).eps + x[j + 1] - x[j])
                total[k] += values[j] + step * (point - x[j])
    fpr_avg, tpr_avg = fpr_sum / len(regions), tpr_sum / len(regions)
    order = np.argsort(fpr_avg, kind="stable")
    xs, ys = fpr_avg[order], tpr_avg[order]
    area = sum((xs[k + 1] - xs[k]) * (ys[k + 1] + ys[k]) / 2 for k in range(len(xs) - 1))
    return area / fpr_avg[-1]


def reference_ader_binned(masks, maps, nstrips=50, limit=0.3):
    """ADEval's accumulator with np.histogram, then the PRO curve integrated to the limit."""
    low, high = maps.min(), maps.max()
    edges = np.linspace(low, high, nstrips + 1)
    pos = np.zeros(nstrips + 2)
    neg = np.zeros(nstrips + 2)
    for index, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=EIGHT)
        weight = np.ones(mask.shape)
        for k in range(1, count + 1):
            weight[labels == k] = np.float32(1) / np.float32((labels == k).sum())
        for select, stat in ((mask, pos), (~mask, neg)):
            values, w = maps[index][select], weight[select]
            stat[1:-1] += np.histogram(values, edges, weights=w)[0]
            stat[-1] += w[values >= high].sum()
    points = []
    for k in range(nstrips + 1):
        points.append((neg[k + 1:].sum() / neg.sum(), pos[k + 1:].sum() / pos.sum()))
    points.sort()
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
    return area / limit


def reference_f1_grid(masks, maps):
    norm = (maps - maps.min()) / (maps.max() - maps.min())
    return max(f1_score(masks.ravel(), (norm > s).ravel(), zero_division=0)
               for s in [k * 0.05 for k in range(21)])


def reference_legacy(masks, maps, steps=200, limit=0.3):
    """The cflow-ad loop as AnomalyCLIP ships it."""
    low, high = maps.min(), maps.max()
    regions = _regions(masks)
    pros, fprs = [], []
    for th in np.arange(low, high, (high - low) / steps):
        binary = maps > th
        pros.append(np.mean([binary[i][r].sum() / r.sum() for i, r in regions]))
        fprs.append(np.logical_and(~masks, binary).sum() / (~masks).sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < limit
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return -np.trapezoid(pros[keep], f)  # thresholds rise, FPRs fall (sklearn auc's direction)


def reference_exact(masks, maps, limit=0.3):
    """MVTec AD AUPRO: every distinct score a threshold, interpolated at the limit."""
    regions = _regions(masks)
    points = [(0.0, 0.0)]
    for th in np.unique(maps)[::-1]:
        binary = maps >= th
        points.append((np.logical_and(~masks, binary).sum() / (~masks).sum(),
                       np.mean([binary[i][r].sum() / r.sum() for i, r in regions])))
    xs, ys = np.array(points).T
    y_limit = np.interp(limit, xs, ys)
    keep = xs <= limit
    return (np.trapezoid(np.r_[ys[keep], y_limit], np.r_[xs[keep], limit])) / limit


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_anomalib_variant_equals_reference(seed):
    masks, maps = _random_case(seed, levels=20)
    assert aupro_anomalib_v2_2(masks, maps) == pytest.approx(reference_anomalib(masks, maps),
                                                             abs=1e-9)


def test_anomalib_variant_exceeds_one_where_upstream_does():
    masks, maps = _random_case(165 + 1000, levels=20)
    found = None
    for seed in range(400):
        masks, maps = _random_case(seed, n=3, size=8, levels=int(3 + seed % 27))
        value = aupro_anomalib_v2_2(masks, maps)
        if value is not None and value > 1.0:
            found = (masks, maps, value)
            break
    assert found is not None, "no case above 1 among 400 random cases"
    masks, maps, value = found
    assert value == pytest.approx(reference_anomalib(masks, maps), abs=1e-9)
    assert value > 1.0
    assert rescoring.aupro(masks, maps) <= 1.0


@pytest.mark.parametrize("seed", range(6))
def test_ader_binned_equals_reference(seed):
    masks, maps = _random_case(seed)
    assert aupro_ader_binned(masks, maps) == pytest.approx(reference_ader_binned(masks, maps),
                                                           abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_ader_f1_grid_equals_reference(seed):
    masks, maps = _random_case(seed)
    assert f1_max_ader_grid(masks, maps) == pytest.approx(reference_f1_grid(masks, maps),
                                                          abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_exact_and_legacy_equal_references(seed):
    masks, maps = _random_case(seed, levels=30)
    assert rescoring.aupro(masks, maps) == pytest.approx(reference_exact(masks, maps), abs=1e-9)
    assert rescoring.aupro_legacy(masks, maps) == pytest.approx(reference_legacy(masks, maps),
                                                                abs=1e-9)


def test_variants_disagree_and_are_documented():
    masks, maps = _random_case(3, n=4, size=16)
    values = {name: variant.function(masks, maps) for name, variant in VARIANTS.items()}
    assert len({round(v, 6) for v in values.values()}) >= 3
    assert all(variant.source for variant in VARIANTS.values())


def test_undefined_and_bad_inputs():
    masks = np.zeros((2, 4, 4), dtype=bool)
    maps = np.random.default_rng(0).random((2, 4, 4))
    for name, variant in VARIANTS.items():
        assert variant.function(masks, maps) is None, name
    with pytest.raises(ValueError, match="same shape"):
        aupro_ader_binned(masks, maps[:, :3])
    with pytest.raises(ValueError, match="nstrips"):
        aupro_ader_binned(masks, maps, nstrips=0)
    with pytest.raises(ValueError, match="unknown metric"):
        rescore_category([0, 1], [0.1, 0.2], None, None, ["aupro_v9"])
    out = rescore_category([0, 1], [0.1, 0.2], None, None, ["image_auroc", "aupro_ader_binned"])
    assert out == {"image_auroc": 1.0, "aupro_ader_binned": None}
