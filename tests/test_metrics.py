"""zsbench.metrics against scikit-learn and plain threshold-by-threshold references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from zsbench import metrics
from zsbench.results import METRIC_NAMES

FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------------------------------------
# plain references, written independently of zsbench.metrics


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """MVTec AUPRO evaluated at every distinct score (``>= t``), with skimage's labelling."""
    regions = [(index, region.coords) for index, mask in enumerate(masks)
               for region in measure.regionprops(measure.label(mask, connectivity=2))]
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        above = maps >= threshold
        recalls = [above[index][coords[:, 0], coords[:, 1]].mean() for index, coords in regions]
        points.append(((above & normal).sum() / normal.sum(), float(np.mean(recalls))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
            continue
        if x0 < fpr_limit:
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_limit) / 2
        break
    return area / fpr_limit


def reference_legacy_loop(masks: np.ndarray, maps: np.ndarray, steps: int = 200,
                          fpr_limit: float = 0.3) -> float | None:
    """The cflow-ad loop: regions labelled at every threshold; None where it errors or gives NaN."""
    maps = maps.astype(np.result_type(maps.dtype, np.float32))
    inverse = 1 - masks.astype(np.int64)
    low, high = maps.min(), maps.max()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            fprs, pros = [], []
            for threshold in np.arange(low, high, (high - low) / steps):
                binary = maps > threshold
                recalls = []
                for image_binary, mask in zip(binary, masks, strict=True):
                    for region in measure.regionprops(measure.label(mask)):
                        hits = image_binary[region.coords[:, 0], region.coords[:, 1]].sum()
                        recalls.append(hits / region.area)
                pros.append(np.array(recalls).mean())
                fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
            fprs_a, pros_a = np.array(fprs), np.array(pros)
            keep = fprs_a < fpr_limit
            kept = fprs_a[keep]
            value = auc((kept - kept.min()) / (kept.max() - kept.min()), pros_a[keep])
        except (ValueError, ZeroDivisionError):
            return None
    return None if math.isnan(value) else float(value)


def reference_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


# ---------------------------------------------------------------------------------------------
# strategies


@st.composite
def image_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    size = draw(st.integers(1, 30))
    labels = draw(arrays(bool, size))
    levels = draw(st.integers(1, 8))
    scores = draw(arrays(np.int64, size, elements=st.integers(0, levels))) / levels - 0.5
    return labels, scores


@st.composite
def pixel_cases(draw: st.DrawFn, max_side: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Small masks with many (diagonal) regions; maps either tied levels or float32 values."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(2, max_side)),
             draw(st.integers(2, max_side)))
    masks = draw(arrays(bool, shape))
    if draw(st.booleans()):
        levels = draw(st.integers(1, 10))
        maps = draw(arrays(np.int64, shape, elements=st.integers(0, levels))) / levels
        return masks, maps.astype(np.float32)
    floats = st.floats(-3, 3, width=32, allow_nan=False, allow_subnormal=False)
    return masks, draw(arrays(np.float32, shape, elements=floats, fill=st.nothing()))


@st.composite
def rectangle_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Up to 3 images of at most 8x8 with a few rectangular defects; maps favour the defects."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(4, 8)), draw(st.integers(4, 8)))
    masks = np.zeros(shape, dtype=bool)
    for index in range(shape[0]):
        for _ in range(draw(st.integers(0, 2))):
            top, left = draw(st.integers(0, shape[1] - 1)), draw(st.integers(0, shape[2] - 1))
            masks[index, top:top + draw(st.integers(1, 3)), left:left + draw(st.integers(1, 3))] = 1
    unit = st.floats(0, 1, width=32)
    noise = draw(arrays(np.float32, shape, elements=unit, fill=st.nothing()))
    return masks, (noise + masks * np.float32(draw(unit))).astype(np.float32)


def blob_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4 images of 24x24: two with blob masks, two normal; noisy float32 maps."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 24, 24), dtype=bool)
    masks[1, 3:9, 4:10] = True
    masks[1, 15:18, 15:21] = True
    masks[3, 10:16, 2:5] = True
    maps = (rng.random(masks.shape) + 0.8 * masks).astype(np.float32)
    return masks, maps


# ---------------------------------------------------------------------------------------------
# equality with sklearn and with the references


@FAST
@given(image_cases())
def test_image_metrics_match_sklearn(case: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = case
    if labels.all() or not labels.any():
        assert metrics.image_auroc(labels, scores) is None
        assert metrics.image_ap(labels, scores) is None
        assert metrics.image_f1_max(labels, scores) is None
        return
    assert metrics.image_auroc(labels, scores) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-6)
    assert metrics.image_ap(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-6)
    assert metrics.image_f1_max(labels, scores) == pytest.approx(
        reference_f1_max(labels, scores), abs=1e-9)


@FAST
@given(st.one_of(pixel_cases(), rectangle_cases()))
def test_pixel_metrics_match_sklearn_and_aupro_matches_mvtec_reference(
        case: tuple[np.ndarray, np.ndarray]) -> None:
    masks, maps = case
    got = metrics.compute_metrics(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps)
    flat_masks, flat_maps = masks.ravel(), maps.ravel().astype(np.float64)
    if not masks.any():
        assert all(got[name] is None for name in
                   ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "aupro_legacy"))
        return
    assert got["pixel_ap"] == pytest.approx(average_precision_score(flat_masks, flat_maps),
                                            abs=1e-6)
    assert got["pixel_f1_max"] == pytest.approx(reference_f1_max(flat_masks, flat_maps), abs=1e-9)
    if masks.all():
        assert got["pixel_auroc"] is None and got["aupro"] is None
        return
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-6)
    assert got["aupro"] == pytest.approx(reference_aupro(masks, maps), abs=1e-6)
    for name in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"):
        assert 0.0 <= got[name] <= 1.0


@SLOW
@given(st.one_of(pixel_cases(max_side=5), rectangle_cases()), st.sampled_from([200, 4, 5, 10]))
def test_aupro_legacy_equals_plain_loop(case: tuple[np.ndarray, np.ndarray], steps: int) -> None:
    masks, maps = case
    expected = reference_legacy_loop(masks, maps, steps=steps)
    got = metrics.aupro_legacy(masks, maps, steps=steps)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-9)
        assert 0.0 <= got <= 1.0


@pytest.mark.parametrize("steps", [200, 37])
def test_aupro_legacy_equals_plain_loop_on_blobs(steps: int) -> None:
    masks, maps = blob_case()
    expected = reference_legacy_loop(masks, maps, steps=steps)
    assert expected is not None
    assert metrics.aupro_legacy(masks, maps, steps=steps) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_aupro_legacy_binarizes_strictly_above_threshold(steps: int) -> None:
    """Scores on the threshold grid: a pixel equal to a threshold is not above it."""
    masks, _ = blob_case()
    rng = np.random.default_rng(6)
    normal_levels = rng.choice(4, size=masks.shape, p=[0.85, 0.05, 0.05, 0.05])
    levels = np.where(masks, rng.integers(2, 5, masks.shape), normal_levels)
    levels[0, 0, 0] = 0
    maps = (levels / 4).astype(np.float32)
    expected = reference_legacy_loop(masks, maps, steps=steps)
    assert expected is not None
    assert metrics.aupro_legacy(masks, maps, steps=steps) == pytest.approx(expected, abs=1e-9)


def test_aupro_at_other_fpr_limits_matches_reference() -> None:
    masks, maps = blob_case(1)
    for limit in (0.05, 0.3, 1.0):
        assert metrics.aupro(masks, maps, fpr_limit=limit) == pytest.approx(
            reference_aupro(masks, maps, limit), abs=1e-9)


# ---------------------------------------------------------------------------------------------
# properties


@FAST
@given(pixel_cases(), st.sampled_from(["cube", "exp", "affine"]))
def test_invariance_under_strictly_increasing_transforms(
        case: tuple[np.ndarray, np.ndarray], transform: str) -> None:
    masks, maps = case
    levels = np.unique(maps, return_inverse=True)[1].reshape(maps.shape).astype(np.float64)
    changed = {"cube": levels ** 3 + levels, "exp": np.exp(levels / 3.0),
               "affine": 7.0 * levels - 100.0}[transform]
    labels = masks.any(axis=(1, 2))
    before = metrics.compute_metrics(labels, levels.max(axis=(1, 2)), masks, levels)
    after = metrics.compute_metrics(labels, changed.max(axis=(1, 2)), masks, changed)
    for name in METRIC_NAMES[:-1]:  # every metric but aupro_legacy
        if before[name] is None:
            assert after[name] is None
        else:
            assert after[name] == pytest.approx(before[name], abs=1e-12)


def test_aupro_legacy_changes_under_increasing_transform_but_aupro_does_not() -> None:
    masks, maps = blob_case(2)
    squashed = maps.astype(np.float64) ** 6
    assert metrics.aupro(masks, squashed) == pytest.approx(metrics.aupro(masks, maps), abs=1e-12)
    assert abs(metrics.aupro_legacy(masks, squashed) - metrics.aupro_legacy(masks, maps)) > 1e-3


def test_perfect_maps_give_one() -> None:
    masks, _ = blob_case()
    labels = masks.any(axis=(1, 2))
    binary_maps = masks.astype(np.float32)
    result = metrics.compute_metrics(labels, labels.astype(float), masks, binary_maps)
    for name in METRIC_NAMES[:-1]:
        assert result[name] == pytest.approx(1.0, abs=1e-12), name
    # legacy: on a binary map every kept threshold has FPR 0, so the rescaling divides by zero
    assert result["aupro_legacy"] is None
    assert reference_legacy_loop(masks, binary_maps) is None
    rng = np.random.default_rng(3)
    graded = np.where(masks, 0.7 + 0.3 * rng.random(masks.shape), 0.3 * rng.random(masks.shape))
    assert metrics.aupro_legacy(masks, graded) == pytest.approx(1.0, abs=1e-12)
    assert metrics.aupro(masks, graded) == pytest.approx(1.0, abs=1e-12)


def test_constant_maps() -> None:
    masks, maps = blob_case()
    constant = np.full_like(maps, 0.25)
    labels = masks.any(axis=(1, 2))
    result = metrics.compute_metrics(labels, np.full(4, 0.25), masks, constant)
    assert result["image_auroc"] == 0.5
    assert result["pixel_auroc"] == 0.5
    assert result["pixel_ap"] == pytest.approx(masks.mean(), abs=1e-12)
    assert result["aupro"] == pytest.approx(0.15, abs=1e-12)  # straight line (0,0)-(1,1) to 0.3
    assert result["aupro_legacy"] is None
    assert reference_legacy_loop(masks, constant) is None


def test_single_outlier_pixel_keeps_aupro_finite_and_breaks_legacy() -> None:
    masks, maps = blob_case(4)
    outlier = maps.copy()
    outlier[0, 0, 0] = 1e6  # a normal pixel
    base, moved = metrics.aupro(masks, maps), metrics.aupro(masks, outlier)
    assert math.isfinite(moved)
    assert abs(moved - base) < 0.01
    assert metrics.aupro_legacy(masks, maps) is not None
    assert metrics.aupro_legacy(masks, outlier) is None  # the loop gives NaN here
    assert reference_legacy_loop(masks, outlier) is None


def test_float16_maps_are_read_and_float32_maps_keep_their_precision() -> None:
    masks, maps = blob_case(5)
    half = maps.astype(np.float16)
    labels = masks.any(axis=(1, 2))
    from_half = metrics.compute_metrics(labels, half.max(axis=(1, 2)), masks, half)
    assert from_half["pixel_auroc"] == pytest.approx(
        roc_auc_score(masks.ravel(), half.ravel().astype(np.float64)), abs=1e-6)
    # the evaluator's float32 maps: anomalous pixels 1e-5 above the rest, a step float16 cannot
    # hold at 0.5 (its spacing there is 2**-11): rounded, every pixel would tie (AUROC 0.5)
    fine = (np.float32(0.5) + np.float32(1e-5) * masks).astype(np.float32)
    assert np.unique(fine.astype(np.float16)).size == 1
    scores = fine.max(axis=(1, 2))
    assert metrics.compute_metrics(labels, scores, masks, fine)["pixel_auroc"] == 1.0
    rounded = fine.astype(np.float16).astype(np.float32)
    assert metrics.compute_metrics(labels, scores, masks, rounded)["pixel_auroc"] == 0.5


# ---------------------------------------------------------------------------------------------
# the sort paths agree


@FAST
@given(pixel_cases())
def test_packed_key_sort_equals_argsort_path(case: tuple[np.ndarray, np.ndarray]) -> None:
    masks, maps = case
    maps = maps * np.float32(-1.0)  # negative values, -0.0 next to 0.0
    fast = metrics.rank_pixels(masks, maps)
    slow = metrics.rank_pixels(masks, maps.astype(np.float64))
    assert fast.sorted_scores.dtype == np.float32 and slow.sorted_scores.dtype == np.float64
    np.testing.assert_array_equal(fast.sorted_scores.astype(np.float64), slow.sorted_scores)
    np.testing.assert_array_equal(fast.sorted_scores, np.sort(maps.ravel()))
    for name in ("hit_start", "hit_end", "hit_anomalous"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
    np.testing.assert_allclose(fast.hit_weight, slow.hit_weight, rtol=0, atol=1e-15)
    assert fast.n_regions == slow.n_regions == metrics.count_regions(masks)
    assert fast.n_anomalous == int(masks.sum()) and fast.n_normal == int((~masks).sum())
    assert fast.hit_weight.sum() == pytest.approx(1.0 if masks.any() else 0.0, abs=1e-12)


def test_negative_zero_ties_with_zero() -> None:
    maps = np.array([[[-0.0, 0.0], [1.0, -1.0]]], dtype=np.float32)
    masks = np.array([[[True, False], [True, False]]])
    ranked = metrics.rank_pixels(masks, maps)
    np.testing.assert_array_equal(ranked.sorted_scores, [-1.0, 0.0, 0.0, 1.0])
    assert not np.signbit(ranked.sorted_scores[1:3]).any()
    np.testing.assert_array_equal(ranked.hit_start, [1, 3])
    np.testing.assert_array_equal(ranked.hit_end, [3, 4])
    np.testing.assert_array_equal(ranked.hit_anomalous, [1, 1])
    np.testing.assert_allclose(ranked.hit_weight, [0.5, 0.5])
    assert metrics.pixel_auroc(masks, maps) == roc_auc_score(masks.ravel(), maps.ravel())


# ---------------------------------------------------------------------------------------------
# undefined metrics, regions, summary, errors


def test_undefined_metrics_are_none() -> None:
    masks, maps = blob_case()
    no_masks = metrics.compute_metrics([0, 1, 0, 1], [0.1, 0.4, 0.2, 0.3])
    assert list(no_masks) == list(METRIC_NAMES)
    assert no_masks["image_auroc"] == 1.0
    assert all(no_masks[name] is None for name in METRIC_NAMES[3:])
    one_class = metrics.compute_metrics([1, 1, 1, 1], [0.1, 0.4, 0.2, 0.3], masks, maps)
    assert one_class["image_auroc"] is None and one_class["image_ap"] is None
    assert one_class["image_f1_max"] is None and one_class["pixel_auroc"] is not None
    all_normal = np.zeros_like(masks)
    assert metrics.pixel_auroc(all_normal, maps) is None
    assert metrics.pixel_ap(all_normal, maps) is None
    assert metrics.aupro(all_normal, maps) is None
    assert metrics.aupro_legacy(all_normal, maps) is None
    all_anomalous = np.ones_like(masks)
    assert metrics.pixel_auroc(all_anomalous, maps) is None
    assert metrics.aupro(all_anomalous, maps) is None
    assert metrics.aupro_legacy(all_anomalous, maps) is None
    assert metrics.pixel_ap(all_anomalous, maps) == 1.0
    assert metrics.pixel_f1_max(all_anomalous, maps) == 1.0


def test_compute_metrics_returns_plain_floats() -> None:
    masks, maps = blob_case()
    result = metrics.compute_metrics(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps)
    assert tuple(result) == METRIC_NAMES == metrics.METRIC_NAMES
    assert all(type(value) is float and 0.0 <= value <= 1.0 for value in result.values())


def test_count_regions_uses_8_connectivity_per_image() -> None:
    masks = np.zeros((3, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 2, 2] = True  # one diagonal region
    masks[0, 4, 4] = True  # a second one
    masks[1, 0, 0] = True  # same place, other image: its own region
    assert metrics.count_regions(masks) == 3
    assert metrics.count_regions(np.zeros((2, 4, 4))) == 0


def test_summarize_skips_none_and_counts_categories() -> None:
    summary = metrics.summarize({
        "bottle": {"image_auroc": 0.9, "pixel_auroc": None, "extra": 0.5},
        "cable": {"image_auroc": 0.7, "pixel_auroc": 0.8},
        "brain": {"image_auroc": None, "pixel_auroc": None},
    })
    assert summary["mean"]["image_auroc"] == pytest.approx(0.8)
    assert summary["categories_used"]["image_auroc"] == 2
    assert summary["mean"]["pixel_auroc"] == pytest.approx(0.8)
    assert summary["categories_used"]["pixel_auroc"] == 1
    assert summary["mean"]["aupro"] is None and summary["categories_used"]["aupro"] == 0
    assert summary["mean"]["extra"] == 0.5 and summary["categories_used"]["extra"] == 1
    assert list(summary["mean"])[:8] == list(METRIC_NAMES)
    with pytest.raises(ValueError, match="'cable'.*'aupro'.*nan"):
        metrics.summarize({"cable": {"aupro": float("nan")}})


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda m, p: metrics.aupro(m.astype(int) * 2, p), ValueError, "masks.*2"),
    (lambda m, p: metrics.pixel_auroc(m, np.where(m, np.nan, p)), ValueError, "maps.*nan"),
    (lambda m, p: metrics.pixel_ap(m[:, :-1], p), ValueError, r"\(4, 23, 24\)"),
    (lambda m, p: metrics.pixel_ap(m[0], p[0]), ValueError, r"\[N, H, W\]"),
    (lambda m, p: metrics.aupro(m, p, fpr_limit=0.0), ValueError, "fpr_limit.*0.0"),
    (lambda m, p: metrics.aupro(m, p, fpr_limit=1.5), ValueError, "fpr_limit.*1.5"),
    (lambda m, p: metrics.aupro_legacy(m, p, steps=0), ValueError, "steps.*0"),
    (lambda m, p: metrics.image_auroc([0, 1], [0.5]), ValueError, r"\(2,\).*\(1,\)"),
    (lambda m, p: metrics.image_auroc([0, 1], ["a", "b"]), TypeError, "scores.*<U1"),
    (lambda m, p: metrics.compute_metrics([0, 1, 0, 1], [0, 1, 0, 1], m), ValueError, "maps"),
    (lambda m, p: metrics.compute_metrics([0, 1], [0, 1], m, p), ValueError, r"\[2, H, W\]"),
])
def test_bad_input_names_the_value(call, error: type[Exception], message: str) -> None:
    masks, maps = blob_case()
    with pytest.raises(error, match=message):
        call(masks, maps)


def test_category_metrics_counts_the_regions_of_its_own_labelling():
    from zsbench.metrics import category_metrics, compute_metrics, count_regions

    rng = np.random.default_rng(4)
    masks = np.zeros((5, 20, 20), dtype=bool)
    masks[1, 2:5, 2:5] = masks[1, 10:12, 10:15] = True  # two regions
    masks[3, 0:3, 17:20] = masks[3, 4, 4] = masks[3, 5, 5] = True  # 8-connected: two regions
    labels = masks.reshape(5, -1).any(1).astype(int)
    maps = rng.random((5, 20, 20)).astype(np.float32)
    scores = rng.random(5)
    values, regions = category_metrics(labels, scores, masks, maps)
    assert regions == count_regions(masks) == 4
    assert values == compute_metrics(labels, scores, masks, maps)
    assert category_metrics(labels, scores)[1] == 0
