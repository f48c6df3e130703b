"""CoOp and CoCoOp on the tiny random-weight backbone."""

from __future__ import annotations

import pytest
import torch

from tests.method_fixtures import SIZE, TINY
from zsbench.backbone import Backbone
from zsbench.method import build_method
from zsbench.methods.cocoop import CoCoOp
from zsbench.methods.coop import CoOp


@pytest.fixture(scope="module")
def coop(backbone: Backbone) -> CoOp:
    torch.manual_seed(1)
    return build_method("coop", TINY, backbone=backbone)


@pytest.fixture(scope="module")
def cocoop(backbone: Backbone, coop: CoOp) -> CoCoOp:
    torch.manual_seed(2)
    method = build_method("cocoop", TINY, backbone=backbone)
    with torch.no_grad():
        method.prompt_learner.ctx.copy_(coop.prompt_learner.ctx)
    return method


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def batch(images: torch.Tensor) -> dict:
    mask = torch.zeros(2, SIZE, SIZE)
    mask[1, 10:30, 12:40] = 1.0
    return {"image": images, "mask": mask, "label": torch.tensor([0, 1]),
            "class_name": ["object", "bottle"]}


def predict(method: CoOp, images: torch.Tensor, names: list[str]):
    with torch.inference_mode():
        return method.predict(images, names)


@pytest.mark.parametrize("name", ["coop", "cocoop"])
def test_predict_shapes_ranges_and_class_awareness(name: str, request: pytest.FixtureRequest,
                                                   images: torch.Tensor) -> None:
    method = request.getfixturevalue(name)
    scores, maps = predict(method, images, ["object", "bottle"])
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)
    assert torch.all((scores > 0) & (scores < 1))
    assert maps.min() >= 0 and maps.max() <= 1 and maps.std() > 0
    other = predict(method, images, ["object", "screw"])
    assert torch.equal(other.image_scores[0], scores[0])  # per-image text: image 0 unchanged
    assert not torch.isclose(other.image_scores[1], scores[1])  # the class word matters
    single = predict(method, images[1:], ["bottle"])
    torch.testing.assert_close(single.image_scores, scores[1:])
    torch.testing.assert_close(single.anomaly_maps, maps[1:])
    with pytest.raises(ValueError, match="one class name per image"):
        method.predict(images, ["object"])


def test_prompts_and_meta_net(coop: CoOp, cocoop: CoCoOp) -> None:
    prompts = CoOp.describe_prompts(coop.config)
    assert prompts["normal"] == "X " * 8 + "normal {}."
    assert prompts["anomalous"] == "X " * 8 + "anomalous {}."
    assert coop.prompt_learner.prompt_texts("bottle")[1] == "X " * 8 + "anomalous bottle."
    assert coop.trainable_state_dict()["prompt_learner.ctx"].shape == (8, 32)  # shared context
    assert "meta_net" in CoCoOp.describe_prompts(cocoop.config)
    shapes = {k: tuple(v.shape) for k, v in cocoop.trainable_state_dict().items()}
    assert shapes == {"prompt_learner.ctx": (8, 32), "meta_net.0.weight": (2, 32),
                      "meta_net.0.bias": (2,), "meta_net.2.weight": (32, 2),
                      "meta_net.2.bias": (32,)}


def test_cocoop_with_zero_meta_net_is_coop(backbone: Backbone, coop: CoOp, cocoop: CoCoOp,
                                           images: torch.Tensor) -> None:
    names = ["object", "bottle"]
    plain = predict(coop, images, names)
    # default: the meta-net's last layer starts at zero, so CoCoOp starts as CoOp
    started = predict(cocoop, images, names)
    torch.testing.assert_close(started.image_scores, plain.image_scores)
    torch.testing.assert_close(started.anomaly_maps, plain.anomaly_maps)
    # upstream's default init shifts the context per image
    upstream = build_method("cocoop", {**TINY, "meta_net_zero_init": False}, backbone=backbone)
    upstream.load_trainable_state_dict({**upstream.trainable_state_dict(),
                                        "prompt_learner.ctx": coop.prompt_learner.ctx.detach()})
    shifted = predict(upstream, images, names)
    assert not torch.allclose(shifted.image_scores, plain.image_scores)
    with torch.no_grad():
        upstream.meta_net[2].weight.zero_()
        upstream.meta_net[2].bias.zero_()
    same = predict(upstream, images, names)
    torch.testing.assert_close(same.image_scores, plain.image_scores)
    torch.testing.assert_close(same.anomaly_maps, plain.anomaly_maps)


@pytest.mark.parametrize("name, expected", [
    ("coop", {"prompt_learner.ctx"}),
    ("cocoop", {"prompt_learner.ctx", "meta_net.0.weight", "meta_net.0.bias",
                "meta_net.2.weight", "meta_net.2.bias"}),
])
def test_gradients_and_loss_decrease(name: str, expected: set[str], backbone: Backbone,
                                     batch: dict) -> None:
    torch.manual_seed(4)
    method = build_method(name, TINY, backbone=backbone).train()
    params = [p for g in method.parameter_groups() for p in g["params"]]
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))
    losses = []
    for step in range(4):
        total, parts = method.loss(batch)
        optimizer.zero_grad()
        total.backward()
        if step == 0:
            assert {n for n, p in method.named_parameters() if p.grad is not None} == expected
            assert all(p.grad is None for p in method.backbone.parameters())
            assert set(parts) == {"image_ce", "segmentation"}
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < losses[0]
