"""APRIL-GAN on the tiny random-weight backbone: predictions, training, upstream checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch.utils.data import DataLoader

from tests.method_fixtures import SIZE, TINY
from zsbench.backbone import Backbone
from zsbench.method import MethodConfig, build_method, make_config
from zsbench.methods.april_gan import AprilGan, AprilGanConfig
from zsbench.preprocess import AnomalyImageDataset
from zsbench.prompt_ensembles import APRIL_GAN_TEMPLATES, WINCLIP_APRIL_GAN, ClassTextCache
from zsbench.synthetic import synthetic_records


@pytest.fixture(scope="module")
def batch(backbone: Backbone) -> dict:
    records = Dataset.from_list(synthetic_records("synthetic_a", size=64, n_normal=2,
                                                  n_anomalous=2))
    dataset = AnomalyImageDataset(records, SIZE, backbone.mean, backbone.std)
    return next(iter(DataLoader(dataset, batch_size=len(dataset), shuffle=False)))


_TEXT_CACHES: dict[int, ClassTextCache] = {}


def make_method(backbone: Backbone, **overrides: object) -> AprilGan:
    """A fresh method (seeded linear layers) sharing one text cache per backbone."""
    torch.manual_seed(1)
    method = build_method("april_gan", {**TINY, **overrides}, backbone=backbone)
    method.text_cache = _TEXT_CACHES.setdefault(id(backbone), method.text_cache)
    return method


def upstream_checkpoint(n_layers: int, width: int, embed_dim: int) -> dict:
    generator = torch.Generator().manual_seed(2)
    state = {}
    for i in range(n_layers):
        state[f"fc.{i}.weight"] = torch.randn(embed_dim, width, generator=generator)
        state[f"fc.{i}.bias"] = torch.randn(embed_dim, generator=generator)
    return {"trainable_linearlayer": state}


def test_predict_shapes_and_ranges(backbone: Backbone, batch: dict) -> None:
    method = make_method(backbone)
    assert method.info.trainable and method.info.class_aware
    images = batch["image"][:3]
    with torch.inference_mode():
        scores, maps = method.predict(images, batch["class_name"][:3])
    assert scores.shape == (3,) and maps.shape == (3, SIZE, SIZE)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 4.0  # sum of 4 layer maps
    other = make_method(backbone, softmax_after_upsampling=False)
    with torch.inference_mode():
        other_scores, other_maps = other.predict(images, batch["class_name"][:3])
    torch.testing.assert_close(other_scores, scores)
    assert (other_maps - maps).abs().max() > 1e-4
    assert float(other_maps.min()) >= 0.0 and float(other_maps.max()) <= 4.0


def test_describe_prompts_and_bad_options(backbone: Backbone) -> None:
    described = AprilGan.describe_prompts(AprilGanConfig())
    assert described["templates"] == list(APRIL_GAN_TEMPLATES)
    assert described["anomalous_states"] == list(WINCLIP_APRIL_GAN.anomalous_states)
    assert AprilGanConfig().layers == (6, 12, 18, 24)
    with pytest.raises(ValueError, match=r"layers \[30\]"):
        make_method(backbone, layers="6,30")
    with pytest.raises(ValueError, match="prompt_class_name"):
        make_method(backbone, prompt_class_name=" ")


def test_training_moves_only_the_linear_layers(backbone: Backbone, batch: dict) -> None:
    method = make_method(backbone)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    before = {k: v.clone() for k, v in method.trainable_state_dict().items()}
    assert sorted(before) == sorted(f"patch_projections.{i}.{p}" for i in range(4)
                                    for p in ("weight", "bias"))
    params = [p for group in method.parameter_groups() for p in group["params"]]
    assert len(params) == 8
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))
    method.train()
    losses = []
    for _ in range(5):
        loss, parts = method.loss(batch)
        assert set(parts) == {"focal", "dice"}
        assert parts["focal"] + parts["dice"] == pytest.approx(float(loss.detach()), rel=1e-5)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in backbone.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        optimizer.step()
        losses.append(float(loss.detach()))
    method.eval()
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, frozen[k]) for k, v in backbone.state_dict().items())
    after = method.trainable_state_dict()
    assert all(not torch.equal(after[k], before[k]) for k in before)


def test_upstream_checkpoint_round_trip(backbone: Backbone, batch: dict, tmp_path: Path
                                        ) -> None:
    checkpoint = upstream_checkpoint(4, backbone.vision_width, backbone.embed_dim)
    path = tmp_path / "epoch_15.pth"
    torch.save(checkpoint, path)
    converted = AprilGan.convert_upstream_checkpoint(torch.load(path, weights_only=True))
    method = make_method(backbone)
    method.load_trainable_state_dict(converted)
    state = method.trainable_state_dict()
    for i in range(4):
        for part in ("weight", "bias"):
            assert torch.equal(state[f"patch_projections.{i}.{part}"],
                               checkpoint["trainable_linearlayer"][f"fc.{i}.{part}"])
    # the bare LinearLayer state dict is accepted too
    bare = AprilGan.convert_upstream_checkpoint(checkpoint["trainable_linearlayer"])
    assert bare.keys() == converted.keys()
    with torch.inference_mode():
        scores, maps = method.predict(batch["image"][:2], batch["class_name"][:2])
    assert torch.isfinite(maps).all() and scores.shape == (2,)


def test_upstream_checkpoint_errors(backbone: Backbone) -> None:
    good = upstream_checkpoint(4, backbone.vision_width, backbone.embed_dim)
    state = good["trainable_linearlayer"]
    with pytest.raises(KeyError, match="unexpected keys"):
        AprilGan.convert_upstream_checkpoint({"prompt_learner": {"ctx": torch.zeros(1)}})
    with pytest.raises(KeyError, match=r"missing \['fc.2.bias'\]"):
        AprilGan.convert_upstream_checkpoint(
            {"trainable_linearlayer": {k: v for k, v in state.items() if k != "fc.2.bias"}})
    with pytest.raises(ValueError, match="fc.1.weight has shape"):
        AprilGan.convert_upstream_checkpoint(
            {"trainable_linearlayer": {**state, "fc.1.weight": torch.zeros(3, 3),
                                       "fc.1.bias": torch.zeros(3)}})
    with pytest.raises(ValueError, match="not a Linear layer"):
        AprilGan.convert_upstream_checkpoint(
            {"trainable_linearlayer": {**state, "fc.0.bias": torch.zeros(5)}})
    with pytest.raises(TypeError, match="state dict"):
        AprilGan.convert_upstream_checkpoint({"trainable_linearlayer": [1, 2]})
    method = make_method(backbone)
    three_layers = AprilGan.convert_upstream_checkpoint(
        upstream_checkpoint(3, backbone.vision_width, backbone.embed_dim))
    with pytest.raises(KeyError, match="missing"):
        method.load_trainable_state_dict(three_layers)
    wrong_width = AprilGan.convert_upstream_checkpoint(
        upstream_checkpoint(4, backbone.vision_width * 2, backbone.embed_dim))
    with pytest.raises(ValueError, match="has shape"):
        method.load_trainable_state_dict(wrong_width)


def test_position_embedding_resize_is_bicubic_antialias(backbone: Backbone, batch: dict) -> None:
    """APRIL-GAN's bundled open_clip resizes the position embedding with
    ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` (``resize_pos_embed``
    in its ``open_clip/model.py``); the other methods use bilinear."""
    assert AprilGanConfig().pos_embed_interpolation == "bicubic-antialias"
    assert MethodConfig().pos_embed_interpolation == "bilinear"
    assert make_config("april_gan", {"pos_embed_interpolation": "bilinear"}
                       ).pos_embed_interpolation == "bilinear"
    # built from its config: the backbone is loaded with the option
    torch.manual_seed(0)
    loaded = build_method("april_gan", TINY)
    assert loaded.backbone.pos_embed_interpolation == "bicubic-antialias"
    # a given (bilinear) backbone computes as the method config says, sharing its weights
    assert backbone.pos_embed_interpolation == "bilinear"
    method = make_method(backbone)
    assert method.backbone.pos_embed_interpolation == "bicubic-antialias"
    assert method.backbone.model is backbone.model
    assert backbone.pos_embed_interpolation == "bilinear"  # the given backbone is unchanged
    native = backbone.model.visual.positional_embedding
    grid = native[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True,
                             align_corners=False)[0].permute(1, 2, 0).reshape(16, -1)
    torch.testing.assert_close(method.backbone.positional_embedding((4, 4))[1:], expected,
                               atol=0, rtol=0)
    torch.testing.assert_close(loaded.backbone.positional_embedding((4, 4)),
                               method.backbone.positional_embedding((4, 4)), atol=0, rtol=0)
    bilinear = make_method(backbone, pos_embed_interpolation="bilinear")
    assert bilinear.backbone is backbone
    images = batch["image"][:2]
    with torch.inference_mode():
        _, maps = method.predict(images, batch["class_name"][:2])
        _, bilinear_maps = bilinear.predict(images, batch["class_name"][:2])
    assert (maps - bilinear_maps).abs().max() > 1e-4
