"""AnomalyCLIP on the tiny random-weight backbone: shapes, gradients, loss, quirk flags."""

from __future__ import annotations

import pytest
import torch

from tests.method_fixtures import SIZE, TINY
from zsbench.anomaly_maps import gaussian_smooth, patch_probability_map, text_probabilities
from zsbench.backbone import Backbone
from zsbench.losses import segmentation_loss
from zsbench.method import build_method, describe_method, make_config
from zsbench.methods.anomalyclip import AnomalyCLIP


@pytest.fixture(scope="module")
def method(backbone: Backbone) -> AnomalyCLIP:
    torch.manual_seed(1)
    return build_method("anomalyclip", TINY, backbone=backbone)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def batch(images: torch.Tensor) -> dict:
    mask = torch.zeros(3, SIZE, SIZE)
    mask[1, 10:30, 12:40] = 1.0
    mask[2, 30:50, 5:20] = 1.0
    return {"image": images, "mask": mask, "label": torch.tensor([0, 1, 1]),
            "class_name": ["object"] * 3}


def variant(method: AnomalyCLIP, backbone: Backbone, preset: str | None = None, **overrides
            ) -> AnomalyCLIP:
    """The same learned parameters under another config (a preset, then ``overrides``)."""
    config = make_config("anomalyclip", {**TINY, **overrides}, preset=preset)
    other = build_method("anomalyclip", config, backbone=backbone)
    other.load_trainable_state_dict(method.trainable_state_dict())
    return other


def loss_and_gradients(method: AnomalyCLIP, batch: dict
                       ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The loss parts and the gradient of the total loss for every trainable parameter."""
    method.zero_grad(set_to_none=True)
    total, parts = method.loss(batch)
    total.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    method.zero_grad(set_to_none=True)
    return parts, grads


def independent_segmentation_losses(method: AnomalyCLIP, backbone: Backbone, batch: dict,
                                     layers: tuple[int, ...]) -> list[torch.Tensor]:
    """Per listed layer, focal + Dice of its own map, computed without the method's loss code."""
    with torch.no_grad():
        text = method.prompt_learner()
        tokens = backbone.encode_image(batch["image"], layers=layers, vv_from=6,
                                       global_ln_post=False).patch_tokens
        return [segmentation_loss(patch_probability_map(tokens[layer], text, (4, 4), SIZE),
                                  batch["mask"]) for layer in layers]


def predict(method: AnomalyCLIP, images: torch.Tensor):
    with torch.inference_mode():
        return method.predict(images, ["object"] * images.shape[0])


def test_predict_shapes_and_ranges(method: AnomalyCLIP, images: torch.Tensor) -> None:
    scores, maps = predict(method, images)
    assert scores.shape == (3,) and maps.shape == (3, SIZE, SIZE)
    assert torch.all((scores > 0) & (scores < 1))
    # layer 24 counted once per feature layer (4): probabilities summed 4 times
    assert maps.min() >= 0 and maps.max() <= 4
    assert maps.std() > 0


def test_prompts_and_trainable_shapes(method: AnomalyCLIP) -> None:
    prompts = AnomalyCLIP.describe_prompts(method.config)
    assert prompts["normal"] == "X " * 12 + "object."
    assert prompts["abnormal"] == "X " * 12 + "damaged object."
    assert describe_method("anomalyclip")["prompts"] == prompts
    state = method.trainable_state_dict()
    assert state["prompt_learner.ctx"].shape == (2, 12, 32)
    assert sorted(k for k in state if "deep" in k) == \
        [f"prompt_learner.deep_prompts.{i}" for i in range(8)]
    assert all(state[f"prompt_learner.deep_prompts.{i}"].shape == (4, 32) for i in range(8))


def test_gradients_reach_only_prompt_learner(method: AnomalyCLIP, batch: dict) -> None:
    method.zero_grad(set_to_none=True)
    total, parts = method.loss(batch)
    total.backward()
    declared = {id(p) for g in method.parameter_groups() for p in g["params"]}
    with_grad = {n for n, p in method.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in method.named_parameters() if id(p) in declared}
    assert all(n.startswith("prompt_learner.") for n in with_grad) and len(with_grad) == 9
    assert all(p.grad is None for p in method.backbone.parameters())
    assert set(parts) == {"image_ce", "segmentation"}
    assert total.item() == pytest.approx(parts["image_ce"] + parts["segmentation"], rel=1e-5)
    method.zero_grad(set_to_none=True)


def test_loss_is_ce_plus_four_times_layer24_segmentation(method: AnomalyCLIP, backbone: Backbone,
                                                         batch: dict) -> None:
    with torch.no_grad():
        total, parts = method.loss(batch)
        text = method.prompt_learner()
        features = backbone.encode_image(batch["image"], layers=(24,), vv_from=6,
                                         global_ln_post=False)
        prob = patch_probability_map(features.patch_tokens[24], text, (4, 4), SIZE)
        expected_seg = 4 * segmentation_loss(prob, batch["mask"])
        probs = text_probabilities(features.global_embedding, text)
        expected_ce = torch.nn.functional.nll_loss(probs.log(), batch["label"])
    assert parts["segmentation"] == pytest.approx(expected_seg.item(), rel=1e-4)
    assert parts["image_ce"] == pytest.approx(expected_ce.item(), rel=1e-4)


def test_loss_decreases(backbone: Backbone, batch: dict) -> None:
    torch.manual_seed(3)
    method = build_method("anomalyclip", TINY, backbone=backbone).train()
    optimizer = torch.optim.Adam(method.parameter_groups()[0]["params"], lr=1e-3,
                                 betas=(0.5, 0.999))
    losses = []
    for _ in range(4):
        total, _ = method.loss(batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < losses[0]


def test_global_ln_post_changes_scores_not_maps(method: AnomalyCLIP, backbone: Backbone,
                                                images: torch.Tensor) -> None:
    base = predict(method, images)
    with_ln = predict(variant(method, backbone, global_ln_post=True), images)
    assert not torch.allclose(base.image_scores, with_ln.image_scores)
    assert torch.equal(base.anomaly_maps, with_ln.anomaly_maps)


def test_layer_aliasing_quirk(method: AnomalyCLIP, backbone: Backbone,
                              images: torch.Tensor) -> None:
    aliased = predict(method, images)
    honest = predict(variant(method, backbone, alias_layers_to_last=False), images)
    assert torch.equal(aliased.image_scores, honest.image_scores)
    assert (aliased.anomaly_maps - honest.anomaly_maps).abs().max() > 1e-3
    # aliasing = layer 24 counted 4 times: 4 x the map of an honest layer-24-only config
    last_only = predict(variant(method, backbone, alias_layers_to_last=False,
                                feature_layers=(24,)), images)
    torch.testing.assert_close(aliased.anomaly_maps, 4 * last_only.anomaly_maps)
    with torch.no_grad():
        text = method.prompt_learner()
        tokens = backbone.encode_image(images, layers=(24,), vv_from=6).patch_tokens[24]
        expected = gaussian_smooth(patch_probability_map(tokens, text, (4, 4), SIZE)[:, 1], 4.0)
    torch.testing.assert_close(last_only.anomaly_maps, expected)


def test_deep_prompt_fp16_cast_changes_outputs_slightly(method: AnomalyCLIP, backbone: Backbone,
                                                        images: torch.Tensor) -> None:
    base = predict(method, images)
    cast = predict(variant(method, backbone, deep_prompt_fp16_cast=True), images)
    score_diff = (base.image_scores - cast.image_scores).abs().max()
    map_diff = (base.anomaly_maps - cast.anomaly_maps).abs().max()
    assert 0 < score_diff < 1e-2 and 0 < map_diff < 4e-2


def test_bad_feature_layer_is_a_clear_error(backbone: Backbone) -> None:
    with pytest.raises(ValueError, match="feature_layers"):
        build_method("anomalyclip", {**TINY, "feature_layers": "6,25"}, backbone=backbone)


# -- segmentation-loss weight lam and the two upstream versions ------------------------------------

DISTINCT = (6, 12, 18)  # distinct layers on the tiny backbone (24 blocks), as upstream HEAD


def test_lam_weights_the_sum_over_distinct_layers(method: AnomalyCLIP, backbone: Backbone,
                                                  batch: dict) -> None:
    per_layer = independent_segmentation_losses(method, backbone, batch, DISTINCT)
    assert len({round(loss.item(), 6) for loss in per_layer}) == 3  # the layers differ
    for lam in (1.0, 4.0, 2.5):
        honest = variant(method, backbone, alias_layers_to_last=False, feature_layers=DISTINCT,
                         lam=lam)
        with torch.no_grad():
            total, parts = honest.loss(batch)
        expected = lam * sum(per_layer)
        assert parts["segmentation"] == pytest.approx(expected.item(), rel=1e-5)
        assert total.item() == pytest.approx(parts["image_ce"] + expected.item(), rel=1e-5)


def test_lam_scales_segmentation_gradients(method: AnomalyCLIP, backbone: Backbone,
                                           batch: dict) -> None:
    def grads(lam: float) -> dict[str, torch.Tensor]:
        return loss_and_gradients(variant(method, backbone, alias_layers_to_last=False,
                                          feature_layers=DISTINCT, lam=lam), batch)[1]

    ce_only, lam1, lam4 = grads(0.0), grads(1.0), grads(4.0)
    assert set(ce_only) == set(lam1) == set(lam4) and len(lam4) == 9
    for name in lam4:
        segmentation = lam1[name] - ce_only[name]  # d(sum over layers)/d(parameter)
        scale = segmentation.abs().max().item()
        assert scale > 0, name
        # the CE gradient cancels in the differences: compare to the gradient's scale
        torch.testing.assert_close(lam4[name] - ce_only[name], 4 * segmentation,
                                   rtol=0, atol=1e-4 * 4 * scale)
        assert (lam4[name] - ce_only[name] - segmentation).abs().max() > scale  # not 1 x


def test_lam_does_not_change_the_test_time_map(method: AnomalyCLIP, backbone: Backbone,
                                               images: torch.Tensor) -> None:
    # upstream HEAD test.py sums the layer maps without lam
    one = predict(variant(method, backbone, alias_layers_to_last=False,
                          feature_layers=DISTINCT), images)
    four = predict(variant(method, backbone, alias_layers_to_last=False,
                           feature_layers=DISTINCT, lam=4.0), images)
    assert torch.equal(one.image_scores, four.image_scores)
    assert torch.equal(one.anomaly_maps, four.anomaly_maps)


def test_presets_reproduce_both_upstream_versions(method: AnomalyCLIP, backbone: Backbone,
                                                  batch: dict, images: torch.Tensor) -> None:
    presets = AnomalyCLIP.presets
    assert set(presets) == {"upstream", "upstream-original"}
    assert presets["upstream"]["lam"] == 4 and presets["upstream"]["feature_layers"] == (24,)
    assert not presets["upstream"]["alias_layers_to_last"]
    assert presets["upstream-original"]["lam"] == 1
    assert presets["upstream-original"]["alias_layers_to_last"]
    assert presets["upstream-original"]["feature_layers"] == (6, 12, 18, 24)
    assert all(p["deep_prompt_fp16_cast"] for p in presets.values())

    layer24 = independent_segmentation_losses(method, backbone, batch, (24,))[0]
    original = variant(method, backbone, preset="upstream-original")
    head = variant(method, backbone, preset="upstream")
    original_parts, original_grads = loss_and_gradients(original, batch)
    head_parts, head_grads = loss_and_gradients(head, batch)
    # the original release: the plain sum of 4 identical (aliased) layer-24 terms
    assert original.layer_weights() == ((24,), (4.0,))
    assert original_parts["segmentation"] == pytest.approx(4 * layer24.item(), rel=1e-4)
    # HEAD: lam = 4 times the one listed layer, 24: the same loss and gradients
    assert head.layer_weights() == ((24,), (1.0,))
    assert head_parts["segmentation"] == pytest.approx(original_parts["segmentation"], rel=1e-6)
    for name, grad in original_grads.items():
        torch.testing.assert_close(head_grads[name], grad, rtol=1e-5, atol=1e-8)
    # test time: the original sums 4 copies of the layer-24 map, HEAD uses it once
    original_out, head_out = predict(original, images), predict(head, images)
    assert torch.equal(original_out.image_scores, head_out.image_scores)
    torch.testing.assert_close(original_out.anomaly_maps, 4 * head_out.anomaly_maps)


def test_default_config_is_the_published_setting() -> None:
    config = make_config("anomalyclip")
    assert config.alias_layers_to_last and config.lam == 1.0
    assert config.feature_layers == (6, 12, 18, 24)
