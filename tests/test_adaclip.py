"""AdaCLIP on the tiny random-weight backbone: prompts, maps, HSF, presets, training, import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from scipy.ndimage import gaussian_filter

from tests.method_fixtures import SIZE, normal_and_anomalous_batch, seeded_method
from tests.method_fixtures import TINY as TINY_BACKBONE
from zsbench.anomaly_maps import l2_normalize
from zsbench.backbone import Backbone
from zsbench.checkpoint_import import import_checkpoint
from zsbench.errors import ConfigError
from zsbench.method import build_method, describe_method, make_config
from zsbench.methods.adaclip import (
    AdaCLIP,
    hsf_mean_of_top_clusters,
    hsf_most_anomalous_cluster,
    kmeans,
)
from zsbench.synthetic import synthetic_records
from zsbench.train import TrainConfig, load_method_from_checkpoint, train_method

TINY = {**TINY_BACKBONE, "prompt_ensemble": "minimal"}


def make(backbone: Backbone, seed: int = 1, **overrides: object) -> AdaCLIP:
    return seeded_method("adaclip", {**TINY, **overrides}, backbone, seed)


@pytest.fixture(scope="module")
def method(backbone: Backbone) -> AdaCLIP:
    return make(backbone)


@pytest.fixture(scope="module")
def batch(backbone: Backbone) -> dict[str, object]:
    return normal_and_anomalous_batch(backbone)


def test_registered_with_paper_defaults_and_prompts() -> None:
    described = describe_method("adaclip")
    info = described["info"]
    assert info["trainable"] and info["class_aware"] and not info["transductive"]
    prompts = described["prompts"]
    assert prompts["normal_states"] == ["{}", "flawless {}", "perfect {}", "unblemished {}",
                                        "{} without flaw", "{} without defect",
                                        "{} without damage"]
    assert prompts["anomalous_states"] == ["damaged {}", "broken {}", "{} with flaw",
                                           "{} with defect", "{} with damage"]
    assert prompts["templates"] == ["a bad photo of a {}.", "a low resolution photo of the {}.",
                                    "a bad photo of the {}.", "a cropped photo of the {}."]
    assert "blocks 2..4" in prompts["text_prompts"]
    defaults = {o["name"]: o["default"] for o in described["options"]}
    assert defaults["layers"] == (6, 12, 18, 24)
    assert (defaults["prompt_depth"], defaults["prompt_length"]) == (4, 5)
    assert defaults["k_clusters"] == 20 and defaults["hsf_alpha"] == 0.2
    assert defaults["sigma"] == 4.0 and defaults["learning_rate"] == 0.01
    assert defaults["logit_scale"] == 100.0 and defaults["image_size"] == 518
    assert defaults["hsf_mean_of_top_clusters"] is False
    assert defaults["prompt_fp16_cast"] is False


def test_predict_shapes_and_ranges(method: AdaCLIP, batch: dict) -> None:
    with torch.inference_mode():
        scores, maps = method.predict(batch["image"], batch["class_name"])
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)
    assert ((scores > 0) & (scores < 1)).all()
    assert ((maps >= 0) & (maps <= 1)).all() and maps.std() > 0


def test_full_ensemble_encodes_48_prompts_per_image(backbone: Backbone, batch: dict) -> None:
    full = make(backbone, prompt_ensemble="adaclip")
    assert full._class_ids("metal-nut").shape[0] == 7 * 4 + 5 * 4
    with torch.inference_mode():
        scores, maps = full.predict(batch["image"][:1], ["object"])
    assert scores.shape == (1,) and torch.isfinite(maps).all()


def manual_vision(backbone: Backbone, images: torch.Tensor, prompts: list[torch.Tensor],
                  layers: tuple[int, ...]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The vision tower run block by block with the prompt tokens placed right after the CLS
    (not after the patches, as the method's hooks do): appended before block 1, replaced before
    blocks 2..depth, carried along after."""
    visual = backbone.model.visual
    batch_first = getattr(visual.transformer, "batch_first", True)
    hidden = backbone._embed_image(images)
    n = prompts[0].shape[1]
    tokens = {}
    for index, block in enumerate(visual.transformer.resblocks, start=1):
        if index == 1:
            hidden = torch.cat([hidden[:, :1], prompts[0], hidden[:, 1:]], dim=1)
        elif index <= len(prompts):
            hidden = torch.cat([hidden[:, :1], prompts[index - 1], hidden[:, 1 + n:]], dim=1)
        hidden = backbone._run_block(block, hidden, batch_first)
        if index in layers:
            tokens[index] = hidden[:, 1 + n:]
    return visual.ln_post(hidden[:, 0]) @ visual.proj, tokens


def test_forward_matches_an_independent_computation(backbone: Backbone, batch: dict) -> None:
    method = make(backbone, use_hsf=False, prompt_ensemble="minimal")
    images, names = batch["image"], ["object", "candle"]
    with torch.no_grad():
        frozen = backbone.encode_image(images).global_embedding
        dyn_v = torch.stack([h(frozen) for h in method.dynamic_visual_generator], dim=1)
        dyn_t = torch.stack([h(frozen) for h in method.dynamic_text_generator], dim=1)
        prompts = [method.visual_static_prompts[j] + dyn_v for j in range(4)]
        global_embedding, tokens = manual_vision(backbone, images, prompts, method.layers)
        # text: each image on its own, full 77-token ids, one shared deep prompt per block
        text = []
        for b, name in enumerate(names):
            ids = backbone.tokenize(["a bad photo of a " + name + ".",
                                     "a bad photo of a damaged " + name + "."])
            deep = [method.text_static_prompts[j] + dyn_t[b] for j in range(3)]
            text.append(l2_normalize(backbone.encode_text(ids, deep_prompts=deep)))
        text = torch.stack(text)  # [B, 2, D]
        logits = [100 * l2_normalize(head(tokens[layer])) @ text.transpose(1, 2)
                  for head, layer in zip(method.patch_projections, method.layers, strict=True)]
        mean = torch.stack(logits).mean(0).reshape(2, 4, 4, 2).permute(0, 3, 1, 2)
        probs = F.interpolate(mean, size=SIZE, mode="bilinear", align_corners=True).softmax(1)
        expected_maps = np.stack([gaussian_filter(p.numpy().astype(np.float64), sigma=4,
                                                  mode="reflect", truncate=4.0)
                                  for p in probs[:, 1]])
        image = l2_normalize(method.cls_projection(global_embedding))
        expected_scores = (100 * torch.einsum("bd,bcd->bc", image, text)).softmax(-1)[:, 1]
        scores, maps = method.predict(images, names)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(maps.numpy(), expected_maps, atol=1e-5)


def test_dynamic_text_is_per_image_and_batch_independent(method: AdaCLIP, batch: dict,
                                                         backbone: Backbone) -> None:
    images = batch["image"]
    with torch.no_grad():
        _, dyn_t = method._dynamic_prompts(images)
        pair = method.text_features(["object", "object"], dyn_t, 2)
        alone = method.text_features(["object"], dyn_t[1:], 1)
        torch.testing.assert_close(pair[1:], alone, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(pair[0], pair[1], atol=1e-4)  # same class, other image
        static_only = make(backbone, dynamic_prompts=False)
        shared = static_only.text_features(["object", "object"], None, 2)
        torch.testing.assert_close(shared[0], shared[1])
        scores, _ = static_only.predict(images, ["object", "object"])
    assert not hasattr(static_only, "dynamic_text_generator")
    assert scores.shape == (2,)


def test_kmeans_recovers_separated_groups() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(6)
    points = centres[truth] + 0.1 * torch.randn(18, 2, generator=generator)
    order = torch.randperm(18, generator=generator)
    labels = kmeans(points[order].unsqueeze(0), 3, 100)[0]
    truth = truth[order]
    for group in range(3):  # same partition, whatever the label numbers
        assert labels[truth == group].unique().numel() == 1
    assert labels.unique().numel() == 3
    assert kmeans(points[None, :2], 5, 10).shape == (1, 2)  # k capped at the point count


def test_hsf_paper_picks_the_most_anomalous_cluster() -> None:
    torch.manual_seed(2)
    d = 4
    a = F.normalize(torch.tensor([1.0, 0, 0, 0]) + 0.01 * torch.randn(5, d), dim=-1)
    b = F.normalize(torch.tensor([0, 1.0, 0, 0]) + 0.01 * torch.randn(7, d), dim=-1)
    tokens = torch.cat([b[:3], a, b[3:]]).unsqueeze(0)  # [1, 12, 4]
    scores = torch.tensor([[0.1, 0.2, 0.1, 0.9, 0.8, 0.7, 0.9, 0.6, 0.3, 0.1, 0.2, 0.1]])
    layers = [tokens, tokens * 0.5 + 0.5 * tokens]  # mean over layers = tokens
    out = hsf_most_anomalous_cluster(layers, scores, k=2, max_iterations=50)
    torch.testing.assert_close(out[0], l2_normalize(a.mean(0)))


def test_hsf_upstream_averages_centroids_of_the_top_patches() -> None:
    torch.manual_seed(3)
    layer1, layer2 = torch.randn(1, 30, 4), torch.randn(1, 30, 4)
    scores = torch.rand(1, 30)
    # k = 1: one cluster of the 5 most anomalous patches; its centroid is their mean over layers
    top = scores[0].topk(5).indices
    expected = l2_normalize(torch.cat([layer1[0, top], layer2[0, top]]).mean(0))
    out = hsf_mean_of_top_clusters([layer1, layer2], scores, k=1, max_iterations=10)
    torch.testing.assert_close(out[0], expected)
    # k = 2: the mean of the two cluster centroids, computed by hand from the labels
    top = scores[0].topk(10).indices
    labels = kmeans(torch.cat([layer1[:, top], layer2[:, top]], dim=-1), 2, 300)[0]
    centroids = [torch.cat([layer1[0, top][labels == c], layer2[0, top][labels == c]]).mean(0)
                 for c in range(2)]
    out = hsf_mean_of_top_clusters([layer1, layer2], scores, k=2, max_iterations=300)
    torch.testing.assert_close(out[0], l2_normalize(torch.stack(centroids).mean(0)))


def test_hsf_changes_only_the_image_score(backbone: Backbone, method: AdaCLIP,
                                          batch: dict) -> None:
    plain = make(backbone, use_hsf=False)
    plain.load_trainable_state_dict(method.trainable_state_dict())
    with torch.inference_mode():
        fused = method.predict(batch["image"], batch["class_name"])
        alone = plain.predict(batch["image"], batch["class_name"])
    torch.testing.assert_close(fused.anomaly_maps, alone.anomaly_maps)
    assert not torch.allclose(fused.image_scores, alone.image_scores, atol=1e-4)


def test_upstream_preset_builds_and_differs(backbone: Backbone, method: AdaCLIP,
                                            batch: dict) -> None:
    config = make_config("adaclip", TINY, preset="upstream")
    assert config.hsf_mean_of_top_clusters and config.prompt_fp16_cast
    assert (config.mlp_activation, config.pos_embed_interpolation) == ("gelu", "bicubic")
    # the method's own quirks, on the same backbone computation as the defaults
    config = make_config("adaclip", {**TINY, "mlp_activation": "native",
                                     "pos_embed_interpolation": "bilinear"}, preset="upstream")
    quirky = build_method("adaclip", config, backbone=backbone)
    quirky.load_trainable_state_dict(method.trainable_state_dict())
    with torch.inference_mode():
        ours = method.predict(batch["image"], batch["class_name"])
        theirs = quirky.predict(batch["image"], batch["class_name"])
        tokens = quirky._prompt_tokens(quirky.visual_static_prompts, None, 0)
    assert not torch.allclose(ours.image_scores, theirs.image_scores, atol=1e-4)
    assert torch.equal(tokens, method.visual_static_prompts[0].detach().half().float())
    torch.testing.assert_close(theirs.anomaly_maps, ours.anomaly_maps, atol=2e-3, rtol=0)


def test_bad_config_values_are_clear_errors(backbone: Backbone) -> None:
    for overrides, match in (({"prompt_depth": 0}, "prompt_depth"),
                             ({"prompt_depth": 13}, "prompt_depth"),
                             ({"prompt_length": 0}, "prompt_length"),
                             ({"static_prompts": False, "dynamic_prompts": False},
                              "static_prompts"),
                             ({"k_clusters": 0}, "k_clusters"),
                             ({"hsf_alpha": 1.5}, "hsf_alpha"),
                             ({"prompt_ensemble": "huge"}, "prompt_ensemble"),
                             ({"sigma": -1.0}, "sigma")):
        with pytest.raises(ConfigError, match=match):
            make(backbone, **overrides)
    with pytest.raises(ValueError, match="layers"):
        make(backbone, layers=(6, 25))


@pytest.fixture(scope="module")
def trained(backbone: Backbone, batch: dict) -> dict[str, object]:
    """A fresh method before and after three epochs of zsbench's trainer on synthetic_a."""
    fresh = make(backbone, seed=5)
    backbone_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    declared = [p for g in fresh.parameter_groups() for p in g["params"]]
    declared_before = [p.detach().clone() for p in declared]
    total, parts = fresh.loss(batch)
    total.backward()
    with_grad = {n for n, p in fresh.named_parameters() if p.grad is not None
                 and p.grad.abs().sum() > 0}
    fresh.zero_grad(set_to_none=True)
    records = Dataset.from_list(synthetic_records("synthetic_a", size=64, n_normal=2,
                                                  n_anomalous=2))
    outcome = train_method(fresh, [records], TrainConfig(epochs=3, batch_size=4))
    with torch.no_grad():
        final, _ = fresh.loss(batch)
    return {"method": fresh, "losses": [total.item(), final.item()], "parts": parts,
            "history": outcome.history, "with_grad": with_grad, "declared": declared,
            "declared_before": declared_before, "backbone_before": backbone_before}


def test_loss_parts_and_decrease(trained: dict) -> None:
    assert set(trained["parts"]) == {"image_focal", "seg_layer6", "seg_layer12", "seg_layer18",
                                     "seg_layer24"}
    initial, final = trained["losses"]
    assert [record["epoch"] for record in trained["history"]] == [1, 2, 3]
    assert np.isfinite([initial, final]).all() and final < initial


def test_gradients_reach_every_declared_parameter_only(trained: dict,
                                                       backbone: Backbone) -> None:
    method = trained["method"]
    groups = method.parameter_groups()
    assert len(groups) == 1 and groups[0]["lr"] == 0.01
    names = {n for n, p in method.named_parameters()
             if id(p) in {id(q) for q in trained["declared"]}}
    assert trained["with_grad"] == names
    assert not any(n.startswith("backbone.") for n in names)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, trained["backbone_before"][key]), key
    assert all(not torch.equal(p, before) for p, before
               in zip(trained["declared"], trained["declared_before"], strict=True))


# -- released checkpoints ------------------------------------------------------------------------

def upstream_layout(method: AdaCLIP) -> dict[str, torch.Tensor]:
    """``method``'s trainable state written as trainer.py ``AdaCLIP_Trainer.save`` lays it out
    (plus the text prompt of block 1 that upstream allocates but never uses)."""
    state = method.trainable_state_dict()
    out = {"clip_model.text_prompter.static_prompts.0": torch.randn(5, 32)}
    for j in range(4):
        out[f"clip_model.visual_prompter.static_prompts.{j}"] = state[f"visual_static_prompts.{j}"]
    for j in range(3):
        out[f"clip_model.text_prompter.static_prompts.{j + 1}"] = state[f"text_static_prompts.{j}"]
    for i in range(4):
        for p in ("weight", "bias"):
            out[f"clip_model.patch_token_layer.head.{i}.{p}"] = state[f"patch_projections.{i}.{p}"]
    for p in ("weight", "bias"):
        out[f"clip_model.cls_token_layer.head.0.{p}"] = state[f"cls_projection.{p}"]
        for i in range(5):
            out[f"clip_model.dynamic_visual_prompt_generator.head.{i}.{p}"] = \
                state[f"dynamic_visual_generator.{i}.{p}"]
            out[f"clip_model.dynamic_text_prompt_generator.head.{i}.{p}"] = \
                state[f"dynamic_text_generator.{i}.{p}"]
    return out


def test_import_round_trip(backbone: Backbone, trained: dict, batch: dict,
                           tmp_path: Path) -> None:
    source = tmp_path / "pretrained_mvtec_colondb.pth"
    torch.save(upstream_layout(trained["method"]), source)
    out = import_checkpoint("adaclip", source, tmp_path / "imported.pt", TINY, backbone=backbone)
    imported = load_method_from_checkpoint(out, backbone=backbone)
    with torch.inference_mode():
        expected = trained["method"].eval().predict(batch["image"], batch["class_name"])
        actual = imported.predict(batch["image"], batch["class_name"])
    assert torch.equal(actual.image_scores, expected.image_scores)
    assert torch.equal(actual.anomaly_maps, expected.anomaly_maps)
    # the "clip_model." prefix is optional
    bare = {k.removeprefix("clip_model."): v for k, v in upstream_layout(imported).items()}
    converted = AdaCLIP.convert_upstream_checkpoint(bare)
    assert set(converted) == set(imported.trainable_state_dict())


def test_import_errors_name_the_keys(backbone: Backbone, method: AdaCLIP,
                                     tmp_path: Path) -> None:
    layout = upstream_layout(method)
    extra = {**layout, "clip_model.mystery.weight": torch.zeros(2)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra\.pth .*mystery"):
        import_checkpoint("adaclip", tmp_path / "extra.pth", tmp_path / "o.pt", TINY,
                          backbone=backbone)
    no_cls = {k: v for k, v in layout.items() if "cls_token_layer" not in k}
    torch.save(no_cls, tmp_path / "no_cls.pth")
    with pytest.raises(ValueError, match="cls_token_layer.head.0.weight"):
        import_checkpoint("adaclip", tmp_path / "no_cls.pth", tmp_path / "o.pt", TINY,
                          backbone=backbone)
    shallow = {k: v for k, v in layout.items() if "static_prompts.3" not in k}
    torch.save(shallow, tmp_path / "shallow.pth")
    with pytest.raises(ValueError, match="visual_static_prompts.3"):
        import_checkpoint("adaclip", tmp_path / "shallow.pth", tmp_path / "o.pt", TINY,
                          backbone=backbone)
    torch.save({"prompt_learner": {}}, tmp_path / "anomalyclip.pth")
    with pytest.raises(ValueError, match="prompt_learner"):
        import_checkpoint("adaclip", tmp_path / "anomalyclip.pth", tmp_path / "o.pt", TINY,
                          backbone=backbone)
    assert not (tmp_path / "o.pt").exists()
