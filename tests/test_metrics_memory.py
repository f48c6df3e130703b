"""The memory-saving metric paths against zsbench.metrics.compute_metrics (the in-memory reference).

* ``compute_metrics(..., consume=True)``: maps ranked in their own buffer; identical values.
* ``CategoryAccumulator``: batches appended, in memory or spilled out of core in key buckets.
* ``compute_metrics_torch``: the sort on the maps' torch device (CPU here; CUDA when present).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsbench import metrics, metrics_store
from zsbench.identity import MAP_DTYPE
from zsbench.metrics import METRIC_NAMES
from zsbench.metrics_store import CategoryAccumulator
from zsbench.metrics_torch import compute_metrics_torch

CASES = settings(max_examples=80, deadline=None)


@st.composite
def categories(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Small categories with many ties (few score levels, signed zeros) and any mix of classes:
    1 image, all-normal and all-anomalous ones included."""
    n = draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["mixed", "normal", "anomalous", "dense"]))
    density = {"mixed": 0.3, "normal": 0.0, "anomalous": 0.3, "dense": 1.0}[kind]
    masks = rng.random((n, h, w)) < density
    if kind == "mixed":
        masks[rng.random(n) < 0.4] = False
    if kind == "anomalous":
        for mask in masks:
            mask.flat[rng.integers(mask.size)] = True
    levels = draw(st.integers(1, 12))
    maps = (rng.integers(-levels, levels + 1, size=(n, h, w)) / levels).astype(np.float32)
    maps += masks * np.float32(draw(st.sampled_from([0.0, 0.25, 1.0])))
    maps[rng.random((n, h, w)) < 0.1] = -0.0
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2)).astype(np.float32)
    return labels, scores, masks, maps


def assert_close(got: dict, expected: dict, tolerance: float) -> None:
    assert list(got) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert (got[name] is None) == (expected[name] is None), (name, got[name], expected[name])
        if expected[name] is not None:
            assert isinstance(got[name], float)
            assert abs(got[name] - expected[name]) <= tolerance, (name, got[name], expected[name])


@pytest.fixture
def tiny_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fixed overhead, so that budgets of a few hundred bytes force many key buckets."""
    monkeypatch.setattr(metrics_store, "_BASE_BYTES", 0)


# ---------------------------------------------------------------------------------------------
# consuming path


@CASES
@given(categories())
def test_consume_equals_reference_exactly(case: tuple) -> None:
    labels, scores, masks, maps = case
    expected = metrics.compute_metrics(labels, scores, masks, maps)
    buffer = maps.copy()
    got = metrics.compute_metrics(labels, scores, masks.astype(np.uint8), buffer, consume=True)
    assert got == expected
    assert np.array_equal(buffer.ravel(), np.sort(maps.ravel() + np.float32(0.0)))


def test_consume_leaves_maps_alone_without_opt_in_and_widens_float16() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((3, 9, 9)) < 0.2
    maps = rng.random((3, 9, 9)).astype(np.float32)
    before = maps.copy()
    metrics.compute_metrics(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps)
    assert np.array_equal(maps, before)
    half = maps.astype(np.float16)
    half_before = half.copy()
    expected = metrics.compute_metrics(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, half)
    got = metrics.compute_metrics(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, half,
                                  consume=True)
    assert got == expected
    assert np.array_equal(half, half_before)  # float16 is widened into a copy, not consumed


def test_consume_rejects_bad_inputs_with_clear_errors() -> None:
    masks = np.zeros((2, 3, 3), dtype=np.uint8)
    masks[1, 1, 1] = 2
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="masks must contain only 0 and 1.*2"):
        metrics.compute_metrics([0, 1], [0, 1], masks, maps, consume=True)
    masks[1, 1, 1] = 1
    maps[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"maps must be finite.*\[1, 2, 0\]"):
        metrics.compute_metrics([0, 1], [0, 1], masks, maps, consume=True)


# ---------------------------------------------------------------------------------------------
# accumulator: in memory and out of core


def accumulate(case: tuple, batch: int, **kwargs: object) -> tuple[dict, bool]:
    labels, scores, masks, maps = case
    acc = CategoryAccumulator(**kwargs)
    for start in range(0, len(labels), batch):
        rows = slice(start, start + batch)
        acc.append(labels[rows], scores[rows], masks[rows], maps[rows])
    return acc.finish(), acc.spilled


@settings(max_examples=80, deadline=None,  # the fixture only patches a constant
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(categories(), st.integers(1, 3), st.sampled_from([None, 1, 60, 400, 10**9]))
def test_accumulator_equals_reference(tiny_budget: None, case: tuple, batch: int,
                                      budget: int | None) -> None:
    expected = metrics.compute_metrics(*case)
    got, spilled = accumulate(case, batch, max_memory=budget)
    estimate = (metrics_store._BYTES_PER_PIXEL * case[3].size
                + metrics_store._BYTES_PER_ANOMALOUS * int(case[2].sum()))
    assert spilled == (budget is not None and estimate > budget)
    assert_close(got, expected, 1e-12)


def test_out_of_core_uses_many_buckets_and_removes_its_files(tiny_budget: None, tmp_path,
                                                             caplog) -> None:
    rng = np.random.default_rng(7)
    masks = np.zeros((6, 32, 32), dtype=bool)
    masks[1::2, 4:12, 5:15] = True
    masks[3, 20:30, 20:22] = True
    maps = (rng.standard_normal((6, 32, 32)) + 2 * masks).astype(np.float32)
    maps[:, :4] = np.round(maps[:, :4])  # ties across buckets and inside them
    case = (masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps)
    caplog.set_level("INFO", logger="zsbench.metrics_store")
    got, spilled = accumulate(case, 2, max_memory=3000, spill_dir=tmp_path)
    assert spilled
    buckets = [r.getMessage() for r in caplog.records if "key buckets" in r.getMessage()]
    assert buckets and int(buckets[0].split(" in ")[1].split()[0]) >= 4
    assert_close(got, metrics.compute_metrics(*case), 1e-12)
    assert list(tmp_path.iterdir()) == []


def test_expected_images_spills_from_the_first_batch(tiny_budget: None) -> None:
    masks = np.zeros((4, 10, 10), dtype=bool)
    masks[1, 2:5, 2:5] = True
    maps = np.linspace(0, 1, 400, dtype=np.float32).reshape(4, 10, 10)
    case = (masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps)
    acc = CategoryAccumulator(max_memory=2000, expected_images=4)
    acc.append(*(part[:1] for part in case))
    assert acc.spilled and acc.maps == []  # one image fits, four would not: spilled at once
    acc.append(*(part[1:] for part in case))
    assert_close(acc.finish(), metrics.compute_metrics(*case), 1e-12)
    unannounced = CategoryAccumulator(max_memory=2000)
    unannounced.append(*(part[:1] for part in case))
    assert not unannounced.spilled


def test_accumulator_keeps_float32_and_image_only_categories() -> None:
    assert MAP_DTYPE == "float32"
    masks = np.zeros((2, 1, 64), dtype=bool)
    masks[1, 0, 32:] = True
    # distinct in float32, all equal to 1.0 in float16: AUROC 1.0 only if float32 reaches it
    maps = (1.0 + np.arange(128, dtype=np.float64).reshape(2, 1, 64) * 2.0**-20).astype(np.float32)
    acc = CategoryAccumulator(max_memory=1 << 30)
    acc.append([0], [0.1], torch.from_numpy(masks[:1]), torch.from_numpy(maps[:1]))
    acc.append([1], [0.2], masks[1:], maps[1:])
    got = acc.finish()
    assert got["pixel_auroc"] == 1.0 and got["pixel_ap"] == 1.0
    half = metrics.compute_metrics([0, 1], [0.1, 0.2], masks, maps.astype(np.float16))
    assert half["pixel_auroc"] == 0.5
    image_only = CategoryAccumulator()
    image_only.append([0, 1], [0.2, 0.9])
    assert image_only.finish() == metrics.compute_metrics([0, 1], [0.2, 0.9])


def test_accumulator_rejects_inconsistent_batches() -> None:
    acc = CategoryAccumulator()
    acc.append([0], [0.1], np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="every batch of a category or for none"):
        acc.append([1], [0.3])
    with pytest.raises(ValueError, match=r"\[B, H, W\] for the 2 images"):
        acc.append([0, 1], [0.1, 0.2], np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"share one size; got \(3, 2\) after \(2, 2\)"):
        acc.append([0], [0.1], np.zeros((1, 3, 2), bool), np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="max_memory must be more than"):
        CategoryAccumulator(max_memory=1000)


# ---------------------------------------------------------------------------------------------
# torch device path


@CASES
@given(categories())
def test_torch_cpu_equals_numpy(case: tuple) -> None:
    labels, scores, masks, maps = case
    expected = metrics.compute_metrics(labels, scores, masks, maps)
    got = compute_metrics_torch(torch.from_numpy(labels), torch.from_numpy(scores),
                                torch.from_numpy(masks), torch.from_numpy(maps))
    assert_close(got, expected, 1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@settings(max_examples=30, deadline=None)
@given(categories())
def test_torch_cuda_equals_numpy(case: tuple) -> None:
    labels, scores, masks, maps = case
    expected = metrics.compute_metrics(labels, scores, masks, maps)
    got = compute_metrics_torch(labels, scores, torch.from_numpy(masks).cuda(),
                                torch.from_numpy(maps).cuda())
    assert_close(got, expected, 1e-9)


def test_torch_rejects_bad_maps() -> None:
    masks = torch.zeros((1, 2, 2), dtype=torch.bool)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32; got torch.float64"):
        compute_metrics_torch([1], [0.5], masks, torch.zeros((1, 2, 2), dtype=torch.float64))
    with pytest.raises(ValueError, match="maps must be finite"):
        compute_metrics_torch([1], [0.5], masks, torch.full((1, 2, 2), float("inf")))
