"""--save-maps all stores: round trip, precision, re-scoring without the model."""

from __future__ import annotations

import numpy as np
import pytest

from zsbench.bootstrap import CategoryData, EvaluationData
from zsbench.map_store import (
    MapStoreError,
    quantisation_step,
    read_manifest,
    read_store,
    rescore,
    write_store,
)
from zsbench.metrics import METRIC_NAMES, compute_metrics

KEY = "0123456789abcdef"


def _data(seed: int = 0) -> EvaluationData:
    rng = np.random.default_rng(seed)
    categories = {}
    for name in ("bottle", "metal_nut"):
        n = 6
        labels = np.arange(n) % 2 == 1
        masks = np.zeros((n, 13, 11), dtype=bool)
        for i in np.flatnonzero(labels):
            masks[i, 2:6, 3:8] = True
        maps = (rng.random((n, 13, 11)) * 3 - 1 + masks).astype(np.float32)
        categories[name] = CategoryData(labels, rng.random(n) + labels, masks, maps,
                                        [f"{name}/{i:03d}.png" for i in range(n)])
    categories["headct"] = CategoryData(np.arange(4) % 2 == 0, rng.random(4))
    return EvaluationData(categories)


@pytest.mark.parametrize("precision", ["uint16", "uint8", "float16"])
def test_round_trip(tmp_path, precision):
    data = _data()
    write_store(tmp_path / "store", data, KEY, precision)
    back = read_store(tmp_path / "store")
    assert read_manifest(tmp_path / "store")["identity_key"] == KEY
    assert set(back.categories) == set(data.categories)
    for name, original in data.categories.items():
        got = back.categories[name]
        assert np.array_equal(got.labels, original.labels)
        assert np.array_equal(got.scores, original.scores)
        assert got.image_ids == (original.image_ids or [str(i) for i in range(4)])
        if original.masks is None:
            assert got.masks is None and got.maps is None
            continue
        assert np.array_equal(got.masks, original.masks)
        low, high = float(original.maps.min()), float(original.maps.max())
        step = quantisation_step(precision, low, high)
        error = np.abs(got.maps.astype(np.float64) - original.maps).max()
        if step is None:
            assert error <= np.abs(original.maps).max() * 2.0 ** -11
        else:
            assert error <= step / 2 + 1e-6 * (high - low)
            assert error > 0 or precision == "uint16"


def test_rescore_equals_compute_metrics_on_dequantised_maps(tmp_path):
    data = _data(1)
    write_store(tmp_path / "s", data, KEY, "float16")
    back = read_store(tmp_path / "s")
    out = rescore(tmp_path / "s", [*METRIC_NAMES, "aupro_ader_binned"])
    for name, category in back.categories.items():
        exact = compute_metrics(category.labels, category.scores, category.masks, category.maps)
        for metric in METRIC_NAMES:
            assert out["per_category"][name][metric] == exact[metric], (name, metric)
    assert out["per_category"]["headct"]["aupro"] is None
    assert out["categories_used"]["aupro"] == 2 and out["categories_used"]["image_auroc"] == 3
    assert "stored float16 maps" in out["computed_from"]["aupro"]
    assert out["computed_from"]["image_auroc"] == "exact stored image scores"
    assert out["precision"] == "float16" and out["identity_key"] == KEY


def test_store_errors_name_the_problem(tmp_path):
    data = _data()
    with pytest.raises(MapStoreError, match="unknown map precision"):
        write_store(tmp_path / "a", data, KEY, "int4")
    with pytest.raises(MapStoreError, match="16 hex digits"):
        write_store(tmp_path / "a", data, "nothex", "uint16")
    write_store(tmp_path / "b", data, KEY)
    with pytest.raises(MapStoreError, match="belongs to result"):
        write_store(tmp_path / "b", data, "fedcba9876543210")
    with pytest.raises(MapStoreError, match="manifest.json is missing"):
        read_store(tmp_path / "nothing")
    (tmp_path / "b" / "bottle.npz").unlink()
    with pytest.raises(MapStoreError, match="bottle.npz is listed"):
        read_store(tmp_path / "b")
    assert not list((tmp_path / "b").glob(".*.tmp"))
