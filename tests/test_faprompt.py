"""FAPrompt on the tiny random-weight backbone: scores, quirk flags, losses, training."""

from __future__ import annotations

import itertools

import pytest
import torch
from datasets import Dataset

from tests.method_fixtures import (
    SIZE,
    TINY,
    normal_and_anomalous_batch,
    seeded_method,
)
from zsbench.anomaly_maps import l2_normalize
from zsbench.backbone import Backbone
from zsbench.method import describe_method
from zsbench.methods.faprompt import (
    FAPrompt,
    orthogonality_loss,
    prior_loss,
)
from zsbench.synthetic import synthetic_records
from zsbench.train import TrainConfig, train_method


def make(backbone: Backbone, seed: int = 1, **overrides: object) -> FAPrompt:
    return seeded_method("faprompt", {**TINY, **overrides}, backbone, seed)


@pytest.fixture(scope="module")
def method(backbone: Backbone) -> FAPrompt:
    return make(backbone)


@pytest.fixture(scope="module")
def batch(backbone: Backbone) -> dict[str, object]:
    return normal_and_anomalous_batch(backbone, "stripes")


def test_registered_with_prompts() -> None:
    described = describe_method("faprompt")
    assert described["info"]["trainable"] and not described["info"]["class_aware"]
    prompts = described["prompts"]
    assert prompts["normal"] == "X X X X X object."
    assert prompts["abnormal"] == ["X X X X X X X damaged object."] * 10
    defaults = {o["name"]: o["default"] for o in described["options"]}
    assert defaults["prior_uses_first_patches"] is False
    assert defaults["focal_on_probability_as_logit"] is False
    assert defaults["sigma"] == 10.0 and defaults["prior_top_k"] == 10


def test_predict_shapes_and_ranges(method: FAPrompt, batch: dict) -> None:
    with torch.inference_mode():
        scores, maps = method.predict(batch["image"], batch["class_name"])
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)
    assert torch.isfinite(maps).all() and torch.isfinite(scores).all()
    assert ((scores > 0) & (scores < 1)).all()
    assert ((maps > 0) & (maps < 1)).all()  # mean of two probabilities, smoothed
    assert maps.std() > 0


def test_prior_first_patches_quirk(backbone: Backbone, method: FAPrompt, batch: dict) -> None:
    quirky = make(backbone, prior_uses_first_patches=True)
    quirky.load_trainable_state_dict(method.trainable_state_dict())
    with torch.no_grad():
        intended = method.forward_features(batch["image"])
        upstream = quirky.forward_features(batch["image"])
        patches = backbone.encode_image(batch["image"], layers=(24,), vv_from=6,
                                        global_ln_post=False).patch_tokens[24]
        top = intended.static_probs[..., 1].argsort(dim=1, descending=True)[:, :10]
        picked = method.prior.select_patches(patches, intended.static_probs[..., 1], False)
        first = quirky.prior.select_patches(patches, intended.static_probs[..., 1], True)
    torch.testing.assert_close(picked, l2_normalize(patches[torch.arange(2)[:, None], top]))
    torch.testing.assert_close(first, l2_normalize(patches[:, :10]))
    # same static prompts, different prior input -> different bias and DAP probabilities
    torch.testing.assert_close(intended.static_probs, upstream.static_probs)
    assert not torch.allclose(intended.prior_bias, upstream.prior_bias)
    assert not torch.allclose(intended.dap_probs, upstream.dap_probs)


def test_focal_quirk_changes_only_the_focal_term(backbone: Backbone, method: FAPrompt,
                                                 batch: dict) -> None:
    quirky = make(backbone, focal_on_probability_as_logit=True)
    quirky.load_trainable_state_dict(method.trainable_state_dict())
    with torch.no_grad():
        total, parts = method.loss(batch)
        quirky_total, quirky_parts = quirky.loss(batch)
    assert quirky_parts["image_focal"] != pytest.approx(parts["image_focal"], rel=1e-3)
    assert quirky_total.item() != pytest.approx(total.item(), rel=1e-4)
    for name in parts:
        if name != "image_focal":
            assert quirky_parts[name] == pytest.approx(parts[name], rel=1e-5)
    # a probability in (0, 1) read as a logit: sigmoid(s) in (0.5, 0.73), far from 0 for normals
    assert quirky_parts["image_focal"] > 0


def test_orthogonality_loss_equals_pairwise_loop() -> None:
    embeddings = torch.randn(10, 32, generator=torch.Generator().manual_seed(3))
    expected = sum(abs(torch.dot(a, b) / (a.norm() * b.norm()))
                   for a, b in itertools.combinations(embeddings, 2))
    torch.testing.assert_close(orthogonality_loss(embeddings), expected)
    assert len(list(itertools.combinations(range(10), 2))) == 45


def test_prior_loss_counts_normal_images_only() -> None:
    bias = torch.randn(3, 32, generator=torch.Generator().manual_seed(4))
    assert prior_loss(bias, torch.tensor([1, 1, 1])).item() == 0.0
    expected = (bias[0] ** 2).mean() + (bias[2] ** 2).mean()
    torch.testing.assert_close(prior_loss(bias, torch.tensor([0, 1, 0])), expected)


def test_prior_loss_in_method_loss(method: FAPrompt, batch: dict) -> None:
    anomalous = {k: v[1:] for k, v in batch.items()}
    assert batch["label"].tolist() == [0, 1]
    with torch.no_grad():
        _, parts = method.loss(anomalous)
        _, mixed_parts = method.loss(batch)
    assert parts["prior"] == 0.0
    assert mixed_parts["prior"] > 0.0


def test_bias_reaches_only_the_abnormal_own_ctx(method: FAPrompt) -> None:
    learner = method.prompt_learner
    bias = torch.randn(2, learner.backbone.text_width)
    with torch.no_grad():
        static = learner()
        normal = learner(ctx_bias=bias, prompts=[0], ctx_bias_groups=method.abnormal_groups)
        abnormal = learner(ctx_bias=bias, prompts=[1, 2], ctx_bias_groups=method.abnormal_groups)
    torch.testing.assert_close(normal[:, 0], static[0].expand(2, -1))
    assert not torch.allclose(abnormal[0], static[1:3])
    with pytest.raises(ValueError, match="ctx_bias_groups"):
        learner(ctx_bias=bias, ctx_bias_groups=["nonexistent"])


def test_bad_options_are_named(backbone: Backbone) -> None:
    with pytest.raises(ValueError, match="prior_top_k"):
        make(backbone, prior_top_k=17)  # 56 px -> 16 patches
    with pytest.raises(ValueError, match="n_abnormal_ctx"):
        make(backbone, n_abnormal_ctx=0)
    with pytest.raises(ValueError, match="patch_layer"):
        make(backbone, patch_layer=25)


@pytest.fixture(scope="module")
def trained(backbone: Backbone, batch: dict) -> dict[str, object]:
    """A fresh method before and after two epochs of zsbench's trainer on synthetic_a."""
    fresh = make(backbone, seed=5)
    backbone_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    declared = [p for g in fresh.parameter_groups() for p in g["params"]]
    declared_before = [p.detach().clone() for p in declared]
    total, parts = fresh.loss(batch)
    total.backward()
    with_grad = {n for n, p in fresh.named_parameters() if p.grad is not None}
    fresh.zero_grad(set_to_none=True)
    records = Dataset.from_list(synthetic_records("synthetic_a", size=64, n_normal=2,
                                                  n_anomalous=2))
    outcome = train_method(fresh, [records], TrainConfig(epochs=2, batch_size=4))
    with torch.no_grad():
        final, _ = fresh.loss(batch)
    return {"method": fresh, "losses": [total.item(), final.item()], "parts": parts,
            "history": outcome.history, "with_grad": with_grad, "declared": declared,
            "declared_before": declared_before, "backbone_before": backbone_before}


def test_loss_decreases(trained: dict) -> None:
    initial, final = trained["losses"]
    assert [record["epoch"] for record in trained["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor([initial, final])))
    assert final < initial


def test_gradients_reach_only_declared_parameters(trained: dict, backbone: Backbone) -> None:
    method = trained["method"]
    declared_ids = {id(p) for p in trained["declared"]}
    names = {n for n, p in method.named_parameters() if id(p) in declared_ids}
    assert trained["with_grad"] and trained["with_grad"] <= names
    assert any(n.startswith("prior.") for n in trained["with_grad"])
    assert any(n.startswith("prompt_learner.deep_prompts") for n in trained["with_grad"])
    assert not any(n.startswith("backbone.") for n in names)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, trained["backbone_before"][key]), key
    changed = [not torch.equal(p, before)
               for p, before in zip(trained["declared"], trained["declared_before"], strict=True)]
    assert all(changed)
