"""Dual-Image Enhanced CLIP on the tiny random-weight backbone: the joint vision-language score
against an independent computation, the pairing rules, the synthesised anomalies and the
test-time adaptation, reproducibility and the invariance to loader batch and chunk sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from tests.method_fixtures import SIZE, TINY
from zsbench.backbone import Backbone
from zsbench.errors import ConfigError
from zsbench.method import build_method, describe_method
from zsbench.methods import dual_image_clip as dic
from zsbench.synthetic import synthetic_records

NAME = "dual_image_clip"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def texts(backbone: Backbone) -> dic.DualImageClip:
    """A method whose text cache the others borrow (prompt encoding is the slow part)."""
    return build_method(NAME, TINY, backbone=backbone)


def make(backbone: Backbone, texts: dic.DualImageClip, **overrides) -> dic.DualImageClip:
    method = build_method(NAME, {**TINY, **overrides}, backbone=backbone)
    method.text_cache = texts.text_cache
    return method


def run(method: dic.DualImageClip, images: torch.Tensor, seed: int = 0, category: str = "c",
        names: list[str] | None = None):
    method.begin_category(category, seed)
    with torch.no_grad():
        return method.predict(images, names or ["bottle"] * images.shape[0])


# -- kind, prompts, config -------------------------------------------------------------------------

def test_kind_and_prompts() -> None:
    info = dic.DualImageClip.info
    assert info.kinds == ("training-free", "transductive") and not info.stochastic
    assert dic.DualImageClip.needs_grad_at_test
    described = describe_method(NAME)
    assert described["prompts"]["ensemble"] == "anovl"
    assert set(described["prompts"]) >= {"object", "texture"}
    winclip = dic.DualImageClip.describe_prompts(dic.DualImageClipConfig(prompt_ensemble="winclip"))
    april = dic.DualImageClip.describe_prompts(dic.DualImageClipConfig(prompt_ensemble="april_gan"))
    assert winclip["averaging"] == "raw" and april["averaging"] == "normalized"
    assert "broken {}" in april["anomalous_states"] and "broken {}" not in \
        winclip["anomalous_states"]


@pytest.mark.parametrize("option, value", [
    ("pairing", "shuffle"), ("prompt_ensemble", "coop"), ("tta_source", "dtd"),
    ("visual_weight", 1.5), ("image_map_weight", -0.1), ("tta_area", (0.3, 0.1)),
    ("tta_synthetic", 0), ("tta_steps", -1), ("chunk_size", 0), ("logit_scale", 0.0),
    ("sigma", -1.0)])
def test_bad_config_names_the_option(backbone: Backbone, option: str, value) -> None:
    with pytest.raises(ConfigError, match=option):
        build_method(NAME, {**TINY, option: value}, backbone=backbone)


# -- pairing ---------------------------------------------------------------------------------------

def test_adjacent_pairing_small_case() -> None:
    assert dic.pair_images(["a"] * 5, "adjacent").tolist() == [1, 0, 3, 2, 3]
    # within class names only; a lone class has no reference
    assert dic.pair_images(["a", "b", "a", "b", "c"], "adjacent").tolist() == [2, 3, 0, 1, -1]


def test_random_pairing_is_mutual_and_seeded() -> None:
    def draw(seed: int, n: int = 9) -> list[int]:
        return dic.pair_images(["a"] * n, "random",
                               torch.Generator().manual_seed(seed)).tolist()

    partner = draw(0)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0)).tolist()
    expected = {order[i]: order[i + 1] for i in range(0, 8, 2)}
    expected.update({b: a for a, b in list(expected.items())})
    expected[order[8]] = order[7]  # the odd leftover refers to the image before it
    assert partner == [expected[i] for i in range(9)]
    assert all(p != i for i, p in enumerate(partner))
    assert draw(0) == partner and draw(1) != partner


def test_nearest_pairing_uses_global_similarity() -> None:
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.4]])
    # 3's closest is 1 (not mutual: 1's closest is 0); 2's closest is 3
    assert dic.pair_images(["a"] * 4, "nearest", global_embeddings=embeddings).tolist() == \
        [1, 0, 3, 1]


# -- the joint score against an independent computation --------------------------------------------

def test_joint_score_matches_an_independent_computation(backbone: Backbone, texts,
                                                        images: torch.Tensor) -> None:
    method = make(backbone, texts, tta_steps=0, pairing="adjacent", visual_weight=0.3,
                  image_map_weight=0.6)
    prediction = run(method, images)
    with torch.no_grad():
        features = backbone.encode_image(images, layers=(24,), vv_from=1)
    tokens = features.patch_tokens[24]
    text = texts.text_cache.get("bottle")
    unit_text = text / text.norm(dim=-1, keepdim=True)
    partners = [1, 0, 3, 2, 3]
    maps, scores = [], []
    for i in range(5):
        own = tokens[i] / tokens[i].norm(dim=-1, keepdim=True)
        language = torch.softmax(100.0 * own @ unit_text.t(), dim=-1)[:, 1]
        ref = tokens[partners[i]] / tokens[partners[i]].norm(dim=-1, keepdim=True)
        visual = torch.stack([1.0 - (own[p] * ref).sum(-1).max() for p in range(own.shape[0])])
        joint = 0.7 * language + 0.3 * visual
        glob = features.global_embedding[i] / features.global_embedding[i].norm()
        scores.append(0.4 * torch.softmax(100.0 * glob @ unit_text.t(), dim=-1)[1]
                      + 0.6 * joint.max())
        grid = joint.reshape(1, 1, *backbone.grid_size)
        maps.append(F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear",
                                  align_corners=False)[0, 0])
    torch.testing.assert_close(prediction.image_scores, torch.stack(scores), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(prediction.anomaly_maps, torch.stack(maps), atol=1e-5, rtol=1e-4)


def test_prediction_shapes_and_ranges(backbone: Backbone, texts, images: torch.Tensor) -> None:
    prediction = run(make(backbone, texts, sigma=2.0), images)
    assert prediction.image_scores.shape == (5,) and prediction.anomaly_maps.shape == (5, SIZE,
                                                                                       SIZE)
    for values in prediction:
        assert bool(torch.isfinite(values).all())
        assert float(values.min()) >= 0.0 and float(values.max()) <= 1.5  # P in [0,1], 1-cos <= 2
    assert float(prediction.anomaly_maps.std()) > 0


def test_a_lone_image_is_scored_by_language_only(backbone: Backbone, texts,
                                                 images: torch.Tensor) -> None:
    both = run(make(backbone, texts, tta_steps=0, visual_weight=0.5), images[:1])
    text_only = run(make(backbone, texts, tta_steps=0, visual_weight=0.0), images[:1])
    torch.testing.assert_close(both.anomaly_maps, 0.5 * text_only.anomaly_maps)


# -- synthesised anomalies and TTA -----------------------------------------------------------------

def test_synthesised_anomalies(images: torch.Tensor) -> None:
    image = images[0]
    copies, masks = dic.synthesize_anomalies(image, 3, 4, (0.1, 0.3), 0.8, "self",
                                             torch.Generator().manual_seed(7))
    assert copies.shape == (3, 3, SIZE, SIZE) and masks.shape == (3, SIZE, SIZE)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    area = masks.mean(dim=(1, 2))
    assert bool(((area >= 0.1 - 1e-3) & (area <= 0.3 + 1e-3)).all())
    outside = masks.unsqueeze(1) == 0
    assert torch.equal(copies.masked_select(outside),
                       image.expand_as(copies).masked_select(outside))
    assert (copies - image).abs().amax(dim=(1, 2, 3)).min() > 0.1  # something was pasted
    again, _ = dic.synthesize_anomalies(image, 3, 4, (0.1, 0.3), 0.8, "self",
                                        torch.Generator().manual_seed(7))
    other, _ = dic.synthesize_anomalies(image, 3, 4, (0.1, 0.3), 0.8, "self",
                                        torch.Generator().manual_seed(8))
    assert torch.equal(again, copies) and not torch.equal(other, copies)
    noise, _ = dic.synthesize_anomalies(image, 1, 4, (0.1, 0.3), 0.0, "noise",
                                        torch.Generator().manual_seed(7))
    assert not torch.equal(noise, copies[:1])


def test_adaptation_lowers_the_loss_on_its_synthesised_anomalies(backbone: Backbone, texts,
                                                                 images: torch.Tensor) -> None:
    method = make(backbone, texts, tta_steps=20, tta_lr=1e-2, tta_synthetic=2)
    text = texts.text_cache.get("bottle")
    adapter = method.adapt(images[0], text, seed=5)
    copies, masks = dic.synthesize_anomalies(images[0], 2, 4, (0.02, 0.2), 0.8, "self",
                                             torch.Generator().manual_seed(5))
    with torch.no_grad():
        tokens = backbone.encode_image(copies, layers=(24,), vv_from=1).patch_tokens[24]
        unit = tokens / tokens.norm(dim=-1, keepdim=True)
        labels = F.adaptive_avg_pool2d(masks[:, None], backbone.grid_size).flatten(1)
        before = dic.tta_loss(dic.text_probabilities(unit, text, 0.01), labels)
        after = dic.tta_loss(dic.text_probabilities(adapter(unit), text, 0.01), labels)
    assert float(after) < float(before) - 1e-3


def test_tta_changes_scores_only_when_enabled(backbone: Backbone, texts,
                                              images: torch.Tensor) -> None:
    off = run(make(backbone, texts, tta_steps=0), images)
    on = run(make(backbone, texts, tta_steps=5), images)
    assert (off.anomaly_maps - on.anomaly_maps).abs().max() > 1e-4
    assert (off.image_scores - on.image_scores).abs().max() > 1e-6
    # the adapter acts on the language patch scores only: the global score and the reference
    # comparison are untouched
    global_off = run(make(backbone, texts, tta_steps=0, image_map_weight=0.0), images)
    global_on = run(make(backbone, texts, tta_steps=5, image_map_weight=0.0), images)
    torch.testing.assert_close(global_off.image_scores, global_on.image_scores)
    visual_off = run(make(backbone, texts, tta_steps=0, visual_weight=1.0), images)
    visual_on = run(make(backbone, texts, tta_steps=5, visual_weight=1.0), images)
    torch.testing.assert_close(visual_off.anomaly_maps, visual_on.anomaly_maps)


# -- reproducibility and invariance ----------------------------------------------------------------

def test_reproducible_per_category_seed(backbone: Backbone, texts, images: torch.Tensor) -> None:
    method = make(backbone, texts)
    first, second = run(method, images, seed=4), run(method, images, seed=4)
    torch.testing.assert_close(first.anomaly_maps, second.anomaly_maps, rtol=0, atol=0)
    torch.testing.assert_close(first.image_scores, second.image_scores, rtol=0, atol=0)
    pairings = set()
    for seed in range(6):
        method.begin_category("c", seed)
        with torch.no_grad():
            pairings.add(tuple(method.patch_scores(images, ["bottle"] * 5)[2].tolist()))
    assert len(pairings) > 1  # the pairing follows the seed
    assert (run(method, images, seed=5).anomaly_maps - first.anomaly_maps).abs().max() > 1e-6


def test_chunk_size_does_not_change_the_result(backbone: Backbone, texts,
                                               images: torch.Tensor) -> None:
    whole = run(make(backbone, texts, chunk_size=16), images)
    pieces = run(make(backbone, texts, chunk_size=2), images)
    torch.testing.assert_close(pieces.image_scores, whole.image_scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pieces.anomaly_maps, whole.anomaly_maps, atol=1e-5, rtol=1e-4)


def test_loader_batch_size_does_not_change_the_result(backbone: Backbone, texts) -> None:
    from zsbench.evaluate import EvalSettings, evaluate_dataset

    records = Dataset.from_list(synthetic_records("synthetic_b", size=64, n_train=0, n_normal=3,
                                                  n_anomalous=3))
    outcomes = []
    for batch_size in (2, 5):
        method = make(backbone, texts, chunk_size=4)
        calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        predict = method._predict

        def recording(batch, names, predict=predict, calls=calls):
            result = predict(batch, names)
            calls.append((result.image_scores.clone(), result.anomaly_maps.clone()))
            return result

        method._predict = recording
        evaluation = evaluate_dataset(method, records, EvalSettings(resolution=SIZE,
                                                                    batch_size=batch_size))
        assert [len(scores) for scores, _ in calls] == [6, 6, 6]  # whole categories
        outcomes.append((calls, evaluation.per_category))
    (calls_a, metrics_a), (calls_b, metrics_b) = outcomes
    for (scores_a, maps_a), (scores_b, maps_b) in zip(calls_a, calls_b, strict=True):
        torch.testing.assert_close(scores_a, scores_b, rtol=0, atol=0)
        torch.testing.assert_close(maps_a, maps_b, rtol=0, atol=0)
    assert metrics_a == metrics_b
