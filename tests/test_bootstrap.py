"""Stratified bootstrap intervals and the paired test (zsbench.bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from zsbench.bootstrap import (
    CategoryData,
    EvaluationData,
    bootstrap,
    category_multiplicities,
    category_replicates,
    combine,
    paired_bootstrap,
    replicate_metrics,
)
from zsbench.metrics import METRIC_NAMES, compute_metrics


def _category(rng: np.random.Generator, n: int = 12, size: int = 16, levels: int = 40,
              shift: float = 0.3) -> CategoryData:
    labels = np.arange(n) % 3 == 0
    masks = np.zeros((n, size, size), dtype=bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, size - 5, 2)
        masks[i, y:y + 4, x:x + 5] = True
        masks[i, 0:2, 0:2] = True
    maps = (np.round(rng.random((n, size, size)) * levels) / levels + masks * shift)
    scores = maps.reshape(n, -1).max(axis=1) + rng.normal(0, 0.1, n)
    return CategoryData(labels, scores, masks, maps.astype(np.float32))


def test_replicates_equal_compute_metrics_on_repeated_images():
    rng = np.random.default_rng(0)
    data = _category(rng)
    weights = rng.multinomial(data.n_images, np.full(data.n_images, 1 / data.n_images), size=6)
    got = replicate_metrics(data, weights)
    for row, w in enumerate(weights):
        idx = np.repeat(np.arange(data.n_images), w)
        exact = compute_metrics(data.labels[idx], data.scores[idx], data.masks[idx],
                                data.maps[idx])
        for name in METRIC_NAMES:
            if exact[name] is None:
                assert np.isnan(got[name][row]), name
            else:
                assert got[name][row] == pytest.approx(exact[name], abs=1e-9), name


def test_coarse_bins_are_close_and_reported():
    rng = np.random.default_rng(1)
    data = _category(rng, levels=1000)
    exact = data.metrics()
    coarse = replicate_metrics(data, np.ones((1, data.n_images), dtype=int), n_bins=64)
    assert coarse["image_auroc"][0] == pytest.approx(exact["image_auroc"], abs=1e-12)
    assert coarse["aupro_legacy"][0] == pytest.approx(exact["aupro_legacy"], abs=1e-12)
    for name in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"):
        assert coarse[name][0] == pytest.approx(exact[name], abs=0.02), name
    result = bootstrap(EvaluationData({"c": data}), replicates=20, n_bins=64)
    assert set(result.binning_error) >= {"pixel_ap", "aupro"}
    assert result.binning_error["image_auroc"] < 1e-12
    assert 0 < result.binning_error["pixel_ap"] < 0.02


def test_coverage_of_image_auroc_is_about_95_percent():
    """200 simulated datasets (normal N(0, 1), anomalous N(1, 1): true AUROC = Phi(1/sqrt 2));
    the 95 % interval must contain the truth in 88 % to 99 % of them."""
    truth = norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(2024)
    hits = 0
    for trial in range(200):
        labels = np.r_[np.zeros(40, bool), np.ones(40, bool)]
        scores = rng.normal(size=80) + labels
        data = EvaluationData({"c": CategoryData(labels, scores)})
        result = bootstrap(data, replicates=300, seed=trial)
        hits += result.low["image_auroc"] <= truth <= result.high["image_auroc"]
    assert 0.88 <= hits / 200 <= 0.99, hits


def test_bootstrap_is_seeded_and_macro_means_categories():
    rng = np.random.default_rng(3)
    data = EvaluationData({"a": _category(rng), "b": _category(rng, shift=0.6)})
    first = bootstrap(data, replicates=50, seed=7)
    again = bootstrap(data, replicates=50, seed=7)
    other = bootstrap(data, replicates=50, seed=8)
    assert first.low == again.low and first.high == again.high
    assert first.low != other.low
    exact = {name: (data.categories["a"].metrics()[name] + data.categories["b"].metrics()[name])
             / 2 for name in METRIC_NAMES}
    for name in METRIC_NAMES:
        assert first.point[name] == pytest.approx(exact[name])
        assert first.low[name] <= first.high[name]
        assert first.distribution[name].shape == (50,)
    assert set(first.per_category) == {"a", "b"}
    assert first.to_dict()["replicates"] == 50


def test_masks_less_category_has_no_pixel_intervals():
    labels = np.r_[np.zeros(10, bool), np.ones(10, bool)]
    data = EvaluationData({"c": CategoryData(labels, np.arange(20.0))})
    result = bootstrap(data, replicates=30)
    assert result.low["image_auroc"] == 1.0 and result.high["image_auroc"] == 1.0
    assert result.low["pixel_ap"] is None and result.point["pixel_ap"] is None


def test_paired_bootstrap_finds_planted_difference_and_not_null():
    rng = np.random.default_rng(5)
    labels = np.r_[np.zeros(60, bool), np.ones(60, bool)]
    base = rng.normal(size=120)
    good = EvaluationData({"c": CategoryData(labels, base + 1.5 * labels)})
    bad = EvaluationData({"c": CategoryData(labels, base + 0.3 * labels + rng.normal(size=120))})
    planted = paired_bootstrap(good, bad, replicates=400, seed=1)
    assert planted.difference["image_auroc"] > 0.15
    assert planted.significant["image_auroc"] is True
    assert planted.p_value["image_auroc"] < 0.01
    noise = EvaluationData({"c": CategoryData(labels, base + 1.5 * labels
                                              + rng.normal(0, 1e-3, 120))})
    null = paired_bootstrap(good, noise, replicates=400, seed=1)
    assert null.significant["image_auroc"] is False
    assert null.p_value["image_auroc"] > 0.05


def test_paired_bootstrap_refuses_different_images():
    labels = np.r_[np.zeros(5, bool), np.ones(5, bool)]
    a = EvaluationData({"c": CategoryData(labels, np.arange(10.0))})
    b = EvaluationData({"c": CategoryData(labels[::-1], np.arange(10.0))})
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, b, replicates=10)
    with pytest.raises(ValueError, match="different categories"):
        paired_bootstrap(a, EvaluationData({"d": CategoryData(labels, np.arange(10.0))}))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="equal length"):
        CategoryData(np.zeros(3, bool), np.zeros(4))
    with pytest.raises(ValueError, match="both masks and maps"):
        CategoryData(np.zeros(3, bool), np.zeros(3), masks=np.zeros((3, 2, 2)))
    data = CategoryData(np.zeros(3, bool), np.zeros(3))
    with pytest.raises(ValueError, match="weights must be non-negative"):
        replicate_metrics(data, np.ones((2, 4)))


def test_categories_can_be_bootstrapped_one_at_a_time():
    rng = np.random.default_rng(9)
    a, b = _category(rng), _category(rng, shift=0.5)
    whole = bootstrap(EvaluationData({"a": a, "b": b}), replicates=40, seed=3)
    streamed = combine({"a": category_replicates("a", a, 40, 3),
                        "b": category_replicates("b", b, 40, 3)},
                       {"a": a.metrics(), "b": b.metrics()}, replicates=40, seed=3)
    assert streamed.low == whole.low and streamed.high == whole.high
    alone = bootstrap(EvaluationData({"a": a}), replicates=40, seed=3)
    assert alone.per_category["a"] == whole.per_category["a"]  # draws depend on name and seed
    draws = category_multiplicities("a", 12, 40, 3)
    assert draws.shape == (40, 12) and (draws.sum(axis=1) == 12).all()
    assert not np.array_equal(draws, category_multiplicities("b", 12, 40, 3))
