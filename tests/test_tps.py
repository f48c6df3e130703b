"""TPS on the tiny random-weight backbone: scores, pathway, quirk flags, training."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from tests.method_fixtures import SIZE, normal_and_anomalous_batch, seeded_method
from tests.method_fixtures import TINY as TINY_BACKBONE
from zsbench.anomaly_maps import patch_probability_map
from zsbench.backbone import Backbone
from zsbench.method import describe_method
from zsbench.methods.tps import TPS, Pathway
from zsbench.prompt_scoring import pixel_anomaly_map
from zsbench.synthetic import synthetic_records
from zsbench.train import TrainConfig, train_method

TINY = {**TINY_BACKBONE, "pathway_heads": 4}


def make(backbone: Backbone, seed: int = 1, **overrides: object) -> TPS:
    return seeded_method("tps", {**TINY, **overrides}, backbone, seed)


@pytest.fixture(scope="module")
def method(backbone: Backbone) -> TPS:
    return make(backbone)


@pytest.fixture(scope="module")
def batch(backbone: Backbone) -> dict[str, object]:
    return normal_and_anomalous_batch(backbone)


def test_registered_with_prompts() -> None:
    described = describe_method("tps")
    assert described["info"]["trainable"] and not described["info"]["class_aware"]
    prompts = described["prompts"]
    ctx = " ".join(["X"] * 12)
    assert prompts["global"] == {"normal": f"{ctx} object with all parts flawless.",
                                 "abnormal": f"{ctx} object with damaged parts."}
    assert prompts["shunt"] == {"normal": f"{ctx} the flawless part.",
                                "abnormal": f"{ctx} the damaged part."}
    defaults = {o["name"]: o["default"] for o in described["options"]}
    assert defaults["drop_pathway_at_test"] is False
    assert defaults["train_text_projection"] is False
    assert defaults["layers"] == (6, 12, 18, 24) and defaults["sigma"] == 4.0


def test_predict_shapes_and_ranges(method: TPS, batch: dict) -> None:
    with torch.inference_mode():
        scores, maps = method.predict(batch["image"], batch["class_name"])
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)
    assert torch.isfinite(maps).all() and torch.isfinite(scores).all()
    assert ((scores > 0) & (scores < 1)).all()
    assert ((maps > 0) & (maps < 4)).all()  # sum of four layers' probabilities, smoothed
    assert maps.std() > 0


def test_pathway_output_depends_on_patches_and_global_text() -> None:
    torch.manual_seed(2)
    pathway = Pathway(32, 4)
    shunt, global_text = torch.randn(3, 2, 32), torch.randn(3, 2, 32)
    patches = torch.randn(3, 16, 32)
    out = pathway(shunt, global_text, patches)
    assert out.shape == (3, 2, 32)
    assert not torch.allclose(out, pathway(shunt, global_text, patches.flip(0)))
    assert not torch.allclose(out, pathway(shunt, global_text.flip(0), patches))
    # patch order is irrelevant to attention over patches (no positional information)
    torch.testing.assert_close(out, pathway(shunt, global_text, patches.flip(1)))


def test_pathway_heads_must_divide_width(backbone: Backbone) -> None:
    with pytest.raises(ValueError, match="pathway_heads=5"):
        make(backbone, pathway_heads=5)
    with pytest.raises(ValueError, match="layers"):
        make(backbone, layers=(6, 25))


def test_drop_pathway_at_test_changes_maps_only(backbone: Backbone, method: TPS,
                                               batch: dict) -> None:
    quirky = make(backbone, drop_pathway_at_test=True)
    quirky.load_trainable_state_dict(method.trainable_state_dict())
    with torch.inference_mode():
        scores, maps = method.predict(batch["image"], batch["class_name"])
        quirky_scores, quirky_maps = quirky.predict(batch["image"], batch["class_name"])
        # without the pathway the maps come from the raw shunt embeddings
        global_text, shunt_text = quirky.text_embeddings()
        _, patch_tokens = quirky.encode(batch["image"])
        raw = [patch_probability_map(patch_tokens[layer], shunt_text, backbone.grid_size, SIZE)
               for layer in (6, 12, 18, 24)]
    torch.testing.assert_close(quirky_scores, scores)
    assert not torch.allclose(quirky_maps, maps, atol=1e-3)
    torch.testing.assert_close(quirky_maps, pixel_anomaly_map(raw, [1.0] * 4, sigma=4.0))


def test_train_text_projection_adds_a_trainable_copy(backbone: Backbone, method: TPS,
                                                    batch: dict) -> None:
    assert method.text_projection is None
    assert "text_projection" not in method.trainable_state_dict()
    tuned = make(backbone, train_text_projection=True)
    state = tuned.trainable_state_dict()
    frozen = backbone.model.text_projection.detach().clone()
    torch.testing.assert_close(state["text_projection"], frozen)
    pathway_group = [g for g in tuned.parameter_groups() if g.get("lr") == 1e-4][0]
    assert any(p is tuned.text_projection for p in pathway_group["params"])

    # before any step the copy equals the frozen matrix: same text as the flag-off method
    reference = make(backbone)
    reference.load_trainable_state_dict({k: v for k, v in state.items()
                                         if k != "text_projection"})
    with torch.no_grad():
        torch.testing.assert_close(tuned.text_embeddings()[0], reference.text_embeddings()[0])

    optimizer = torch.optim.Adam(tuned.parameter_groups(), lr=1e-3)
    total, _ = tuned.loss(batch)
    total.backward()
    assert tuned.text_projection.grad is not None and tuned.text_projection.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(tuned.text_projection.detach(), frozen)
    assert torch.equal(backbone.model.text_projection, frozen)  # the backbone is untouched
    assert backbone.model.text_projection.grad is None
    with torch.no_grad():
        assert not torch.allclose(tuned.text_embeddings()[0], reference.text_embeddings()[0])


@pytest.fixture(scope="module")
def trained(backbone: Backbone, batch: dict) -> dict[str, object]:
    """A fresh method before and after five epochs of zsbench's trainer on synthetic_a."""
    fresh = make(backbone, seed=5, train_text_projection=True)
    backbone_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    declared = [p for g in fresh.parameter_groups() for p in g["params"]]
    declared_before = [p.detach().clone() for p in declared]
    total, parts = fresh.loss(batch)
    total.backward()
    with_grad = {n for n, p in fresh.named_parameters() if p.grad is not None}
    fresh.zero_grad(set_to_none=True)
    records = Dataset.from_list(synthetic_records("synthetic_a", size=64, n_normal=2,
                                                  n_anomalous=2))
    outcome = train_method(fresh, [records], TrainConfig(epochs=5, batch_size=4))
    with torch.no_grad():
        final, _ = fresh.loss(batch)
    return {"method": fresh, "losses": [total.item(), final.item()], "parts": parts,
            "history": outcome.history, "with_grad": with_grad, "declared": declared,
            "declared_before": declared_before, "backbone_before": backbone_before}


def test_loss_parts_and_decrease(trained: dict) -> None:
    assert set(trained["parts"]) == {"image_ce", "seg_layer6", "seg_layer12", "seg_layer18",
                                     "seg_layer24"}
    initial, final = trained["losses"]
    assert [record["epoch"] for record in trained["history"]] == [1, 2, 3, 4, 5]
    assert all(torch.isfinite(torch.tensor([initial, final])))
    assert final < initial


def test_gradients_reach_only_declared_parameters(trained: dict, backbone: Backbone) -> None:
    method = trained["method"]
    declared_ids = {id(p) for p in trained["declared"]}
    names = {n for n, p in method.named_parameters() if id(p) in declared_ids}
    assert trained["with_grad"] and trained["with_grad"] <= names
    for prefix in ("global_prompts.", "shunt_prompts.", "pathway.", "text_projection"):
        assert any(n.startswith(prefix) for n in trained["with_grad"]), prefix
    assert not any(n.startswith("backbone.") for n in names)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, trained["backbone_before"][key]), key
    changed = [not torch.equal(p, before)
               for p, before in zip(trained["declared"], trained["declared_before"], strict=True)]
    assert all(changed)
