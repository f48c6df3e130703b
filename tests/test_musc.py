"""MuSc: LNAMD, MSM and RsCIN against independent computations, chunking, the evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from tests.method_fixtures import SIZE, TINY
from zsbench.backbone import Backbone
from zsbench.errors import ConfigError
from zsbench.method import build_method, make_config
from zsbench.methods.musc import (
    estimate_peak_bytes,
    interval_bounds,
    lnamd,
    mutual_scores,
    rscin,
)
from zsbench.synthetic import synthetic_records


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(6, 3, SIZE, SIZE, generator=generator)


# -- independent references ---------------------------------------------------------------------


def numpy_msm(features: np.ndarray, low: float, high: float) -> np.ndarray:
    """MSM written plainly: every patch against every patch of every other image."""
    n, p, _ = features.shape
    start, stop = math.floor(low * (n - 1)), max(1, math.floor(high * (n - 1)))
    out = np.zeros((n, p))
    for i in range(n):
        for m in range(p):
            minima = sorted(min(np.linalg.norm(features[i, m] - features[j, k]) for k in range(p))
                            for j in range(n) if j != i)
            out[i, m] = np.mean(minima[start:stop])
    return out


def upstream_lnamd(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """_LNAMD.py's steps: LayerNorm([C, H, W]), unfold r x r with zero padding, adaptive average
    pooling of the flattened (C, r, r) window to C, then the L2 normalisation of musc.py."""
    b, p, c = tokens.shape
    side = int(math.sqrt(p))
    x = tokens.reshape(b, side, side, c).permute(0, 3, 1, 2)
    x = torch.nn.LayerNorm([c, side, side])(x)
    if r == 1:
        x = x.reshape(b, c, -1, 1, 1).permute(0, 2, 1, 3, 4)
    else:
        x = torch.nn.Unfold(kernel_size=r, stride=1, padding=(r - 1) // 2)(x)
        x = x.reshape(b, c, r, r, -1).permute(0, 4, 1, 2, 3)
    x = x.reshape(-1, c * r * r)
    x = F.adaptive_avg_pool1d(x.reshape(len(x), 1, -1), c).squeeze(1).reshape(b, p, c)
    return x / x.norm(dim=-1, keepdim=True)


def upstream_msm(z: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """_MSM.py compute_scores_slow: per image pair cdist, then the interval average."""
    rows = []
    for i in range(z.shape[0]):
        pair = torch.stack([torch.cdist(z[i], z[j]).min(dim=1).values
                            for j in range(z.shape[0]) if j != i], dim=1)
        start, stop = interval_bounds(pair.shape[1], low, high)
        rows.append(pair.sort(dim=1).values[:, start:stop].mean(dim=1))
    return torch.stack(rows)


def upstream_rscin(scores: np.ndarray, tokens: np.ndarray, windows: list[int]) -> np.ndarray:
    """_RsCIN.py MMO: zero the N-k smallest similarities of each row, row-normalise, average."""
    s = (scores - scores.min()) / (scores.max() - scores.min())
    w = tokens @ tokens.T
    results = []
    for k in windows:
        masked = w.copy()
        for i in range(len(w)):
            masked[i, np.argsort(w[i])[:len(w) - k]] = 0
        results.append((masked / masked.sum(axis=1, keepdims=True)) @ s)
    return np.mean(results, axis=0)


# -- the pieces ---------------------------------------------------------------------------------


def test_interval_bounds() -> None:
    assert interval_bounds(199, 0.0, 0.3) == (0, 59)
    assert interval_bounds(10, 0.2, 0.8) == (2, 8)
    assert interval_bounds(3, 0.0, 0.3) == (0, 1)  # floor(0.9) = 0: widened to one image
    assert interval_bounds(10, 0.95, 1.0) == (9, 10)
    with pytest.raises(ValueError, match="at least 2 images"):
        interval_bounds(0, 0.0, 0.3)


@pytest.mark.parametrize(("low", "high"), [(0.0, 0.3), (0.2, 0.8)])
def test_msm_matches_a_numpy_computation(low: float, high: float) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 5, 8)).astype(np.float32)
    expected = numpy_msm(features.astype(np.float64), low, high)
    for chunk in (1, 3, 100):
        got = mutual_scores(torch.from_numpy(features), low, high, chunk=chunk)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_msm_singles_out_a_patch_no_other_image_has() -> None:
    generator = torch.Generator().manual_seed(1)
    shared = F.normalize(torch.randn(9, 16, generator=generator), dim=-1)
    features = shared.expand(6, 9, 16).clone()
    features[2, 4] = F.normalize(torch.randn(16, generator=generator), dim=-1)
    scores = mutual_scores(features, chunk=4)
    assert scores[2, 4] > 0.3
    scores[2, 4] = 0
    assert scores.abs().max() < 1e-3


@pytest.mark.parametrize("r", [1, 3, 5])
def test_lnamd_matches_upstream_unfold_and_pooling(r: int) -> None:
    tokens = torch.randn(3, 36, 12, generator=torch.Generator().manual_seed(r))
    got = lnamd(tokens, (6, 6), r, "image")
    torch.testing.assert_close(got, upstream_lnamd(tokens, r), rtol=1e-5, atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3, 36))
    if r > 1:  # the other normalisations are real alternatives
        assert not torch.allclose(lnamd(tokens, (6, 6), r, "token"), got, atol=1e-3)


def test_rscin_matches_the_upstream_loop() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random(10)
    tokens = rng.normal(size=(10, 6)) + 3.0  # positive similarities, as CLIP's
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    for windows in ([1, 2, 3], [1, 8, 9]):
        got = rscin(torch.from_numpy(scores), torch.from_numpy(tokens), windows)
        np.testing.assert_allclose(got.numpy(), upstream_rscin(scores, tokens, windows),
                                   rtol=1e-5, atol=1e-6)
    alone = rscin(torch.from_numpy(scores), torch.from_numpy(tokens), [1]).numpy()
    np.testing.assert_allclose(alone, (scores - scores.min()) / np.ptp(scores), atol=1e-6)
    # a window larger than the pool keeps every image
    np.testing.assert_allclose(rscin(torch.from_numpy(scores), torch.from_numpy(tokens), [50]),
                               upstream_rscin(scores, tokens, [10]), rtol=1e-5, atol=1e-6)


# -- the method ---------------------------------------------------------------------------------


def test_prediction_shapes_and_ranges(backbone: Backbone, images: torch.Tensor) -> None:
    method = build_method("musc", TINY, backbone=backbone)
    with torch.no_grad():
        scores, maps = method.predict(images, ["object"] * 6)
    assert scores.shape == (6,) and maps.shape == (6, SIZE, SIZE)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 2.0  # unit vectors
    assert scores.min() >= 0 and scores.max() <= 1 and scores.std() > 0  # RsCIN: in [0, 1]

    plain = build_method("musc", {**TINY, "rscin": False, "map_align_corners": True},
                         backbone=backbone)
    with torch.no_grad():
        raw, raw_maps = plain.predict(images, ["object"] * 6)
    torch.testing.assert_close(raw, raw_maps.flatten(1).amax(1))  # max of the map
    assert not torch.allclose(raw, scores)
    # align_corners=True puts no pixel on an interior patch centre: below the patch maximum
    patch, _ = plain.patch_scores(images)
    assert (raw <= patch.amax(1) + 1e-6).all() and (raw < patch.amax(1) - 1e-6).any()


def test_chunked_method_equals_an_unchunked_reference(backbone: Backbone,
                                                      images: torch.Tensor) -> None:
    """The whole pipeline, upstream-style, all images at once, against chunked runs."""
    config = make_config("musc", TINY)
    adapted = build_method("musc", config, backbone=backbone).backbone  # bicubic pos. embedding
    assert adapted.pos_embed_interpolation == "bicubic"
    with torch.no_grad():
        features = adapted.encode_image(images, layers=config.layers, token_source="residual")
        total = sum(upstream_msm(upstream_lnamd(features.patch_tokens[layer], r), 0.0, 0.3)
                    for layer in config.layers for r in config.aggregation_degrees)
        patch = total / (len(config.layers) * len(config.aggregation_degrees))
        embeddings = F.normalize(features.global_embedding, dim=-1)
    expected_maps = F.interpolate(patch.reshape(6, 1, 4, 4), size=SIZE, mode="bilinear",
                                  align_corners=False)[:, 0]
    expected_scores = upstream_rscin(expected_maps.flatten(1).amax(1).double().numpy(),
                                     embeddings.double().numpy(), [1, 2, 3])
    outputs = []
    for chunk, score_chunk in ((1, 1), (4, 5), (64, 64)):
        method = build_method("musc", {**TINY, "chunk_size": chunk,
                                       "score_chunk_size": score_chunk}, backbone=backbone)
        with torch.no_grad():
            outputs.append(method.predict(images, ["object"] * 6))
    for scores, maps in outputs:
        np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(maps, expected_maps, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(maps, outputs[0].anomaly_maps, rtol=1e-5, atol=1e-6)


def test_pool_sizes(backbone: Backbone, images: torch.Tensor, caplog) -> None:
    """One image: no reference, zero score and map with a warning (the defined fallback). Two:
    one reference each, finite scores."""
    method = build_method("musc", TINY, backbone=backbone)
    with torch.no_grad(), caplog.at_level("WARNING", logger="zsbench.methods.musc"):
        alone = method.predict(images[:1], ["object"])
    assert "a pool of one image" in caplog.text
    assert alone.image_scores.tolist() == [0.0] and alone.anomaly_maps.shape == (1, SIZE, SIZE)
    assert not alone.anomaly_maps.any()
    with torch.no_grad():
        scores, maps = method.predict(images[:2], ["object"] * 2)
    assert torch.isfinite(maps).all() and maps.max() > 0
    # min-max scores 0 and 1; windows 2 and 3 (capped at 2) average both: the sum stays 1
    assert float(scores.sum()) == pytest.approx(1.0) and 0 < scores.min() < scores.max() < 1
    # a pool's result depends on the pool: scoring against fewer images changes the maps
    with torch.no_grad():
        full = method.predict(images, ["object"] * 6).anomaly_maps
    assert not torch.allclose(full[:2], maps)


def test_evaluator_result_does_not_depend_on_the_loader_batch_size(backbone: Backbone) -> None:
    from zsbench.evaluate import EvalSettings, evaluate_dataset

    records = Dataset.from_list(synthetic_records("synthetic_b", size=64, n_train=0, n_normal=3,
                                                  n_anomalous=4))
    runs = []
    for batch_size in (2, 5):
        method = build_method("musc", TINY, backbone=backbone)
        seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        original = method._predict

        def recording(images, class_names, original=original, seen=seen):
            out = original(images, class_names)
            seen.append((images.shape[0], out.image_scores.clone(), out.anomaly_maps.clone()))
            return out

        method._predict = recording
        result = evaluate_dataset(method, records, EvalSettings(resolution=SIZE,
                                                                batch_size=batch_size))
        runs.append((seen, result))
    (first, result_a), (second, result_b) = runs
    assert [n for n, _, _ in first] == [7, 7, 7]  # each category as one pool
    for (_, scores_a, maps_a), (_, scores_b, maps_b) in zip(first, second, strict=True):
        torch.testing.assert_close(scores_a, scores_b)
        torch.testing.assert_close(maps_a, maps_b)
    assert result_a.per_category == result_b.per_category


def test_presets_build_and_differ(backbone: Backbone) -> None:
    default, upstream = make_config("musc", TINY), make_config("musc", TINY, preset="upstream")
    assert (default.map_align_corners, upstream.map_align_corners) == (False, True)
    assert (default.precision, upstream.precision) == ("fp32", "fp16")
    assert default.layers == upstream.layers == (6, 12, 18, 24)
    assert default.aggregation_degrees == (1, 3, 5) and default.interval_high == 0.3
    assert default.rscin_windows == (1, 2, 3)
    assert build_method("musc", upstream, backbone=backbone).config.map_align_corners


@pytest.mark.parametrize(("override", "match"), [
    ({"aggregation_degrees": (1, 2)}, "aggregation_degrees"),
    ({"interval_low": 0.5, "interval_high": 0.3}, "interval_low"),
    ({"rscin_windows": (0, 2)}, "rscin_windows"),
    ({"layer_norm": "batch"}, "layer_norm"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"score_chunk_size": 0}, "score_chunk_size"),
    ({"sigma": -1.0}, "sigma"),
    ({"layers": (6, 6)}, "layers"),
])
def test_bad_config_names_the_option(backbone: Backbone, override: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_method("musc", {**TINY, **override}, backbone=backbone)


def test_memory_estimate(backbone: Backbone) -> None:
    """200 images of ViT-L/14 at 518 px (37 x 37 patches, width 1024, 428M parameters): under
    8 GiB with the defaults; keeping the tokens on the device adds exactly 4 N P C x 4 bytes."""
    gib = 2 ** 30
    kwargs = {"image_size": 518, "weights_bytes": 427_944_193 * 4}
    default = estimate_peak_bytes(200, 1369, 1024, **kwargs)
    assert 3 * gib < default["peak"] < 8 * gib
    assert default["features"] > 200 * 1369 * 1024 * 4  # one feature set is on the device
    kept = estimate_peak_bytes(200, 1369, 1024, offload_features=False, **kwargs)
    assert kept["peak"] - default["peak"] == 4 * 200 * 1369 * 1024 * 4
    assert estimate_peak_bytes(400, 1369, 1024, **kwargs)["peak"] > default["peak"]
    assert (estimate_peak_bytes(200, 1369, 1024, score_chunk_size=16, **kwargs)["scoring"]
            > default["scoring"])
    method = build_method("musc", TINY, backbone=backbone)
    mine = method.estimate_peak_bytes(10)
    assert mine["weights"] == sum(p.numel() * 4 for p in backbone.parameters())
    assert mine["features"] >= 10 * 16 * backbone.vision_width * 4
