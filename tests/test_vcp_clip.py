"""VCP-CLIP on the tiny random-weight backbone: prompts, both VCP modules, scores, loss,
training, the GELU quirk and the upstream checkpoint importer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from tests.method_fixtures import (
    SIZE,
    TINY,
    normal_and_anomalous_batch,
    seeded_method,
)
from zsbench.anomaly_maps import gaussian_smooth
from zsbench.backbone import Backbone
from zsbench.checkpoint_import import import_checkpoint
from zsbench.errors import ConfigError
from zsbench.losses import dice_loss, focal_loss
from zsbench.method import build_method, describe_method, make_config
from zsbench.methods.vcp_clip import VCPCLIP, top_k_mean
from zsbench.synthetic import synthetic_records
from zsbench.train import TrainConfig, load_method_from_checkpoint, train_method


def make(backbone: Backbone, seed: int = 1, **overrides: object) -> VCPCLIP:
    return seeded_method("vcp_clip", {**TINY, **overrides}, backbone, seed)


@pytest.fixture(scope="module")
def method(backbone: Backbone) -> VCPCLIP:
    return make(backbone)


@pytest.fixture(scope="module")
def batch(backbone: Backbone) -> dict[str, object]:
    return normal_and_anomalous_batch(backbone, "stripes")


def test_registered_with_prompts_and_defaults() -> None:
    described = describe_method("vcp_clip")
    assert described["info"]["trainable"] and not described["info"]["class_aware"]
    assert described["prompts"]["normal"] == ["a photo of a good [v1 v2]"]
    assert described["prompts"]["abnormal"] == ["a photo of a damaged [v1 v2]"]
    defaults = {o["name"]: o["default"] for o in described["options"]}
    assert defaults["layers"] == (6, 12, 18, 24) and defaults["image_size"] == 518
    assert defaults["sigma"] == 8.0 and defaults["pre_map_weight"] == 0.2
    assert defaults["image_score_top_k"] == 2000 and defaults["mlp_activation"] == "native"
    assert defaults["pos_embed_interpolation"] == "bicubic-antialias"


def test_presets_build_and_differ(backbone: Backbone) -> None:
    upstream = make_config("vcp_clip", TINY, preset="upstream")
    assert upstream.mlp_activation == "gelu"
    assert make_config("vcp_clip", TINY).mlp_activation == "native"
    assert isinstance(build_method("vcp_clip", upstream, backbone=backbone), VCPCLIP)


def test_predict_shapes_and_ranges(method: VCPCLIP, batch: dict) -> None:
    with torch.inference_mode():
        scores, maps = method.predict(batch["image"], batch["class_name"])
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)
    assert ((scores > 0) & (scores < 2)).all()  # two top-k means of probabilities
    assert ((maps > 0) & (maps < 1)).all() and maps.std() > 0


def reference_text(method: VCPCLIP, context: torch.Tensor) -> torch.Tensor:
    """Upstream ``models/model_CLIP.py: CLIP.encode_text`` + ``Prompt_Ensemble``, written out
    with the open_clip modules, one image and one template at a time (eval: no dropout)."""
    clip, dtp, r = method.backbone.model, method.text_prompt, context.shape[1]
    n = dtp.length
    tokenizer_ids = method.backbone.tokenize
    slot_id = int(tokenizer_ids(["X"])[0, 1])

    def proj(raw: torch.Tensor) -> torch.Tensor:
        return raw @ dtp.projection.weight.t() + dtp.projection.bias

    out = []
    for image in range(context.shape[0]):
        classes = []
        for templates in (method.config.normal_templates, method.config.abnormal_templates):
            embeddings = []
            for template in templates:
                ids = tokenizer_ids([template.format("X")])[0]
                pos = int((ids == slot_id).nonzero()[0])
                x = clip.token_embedding(ids)
                x = torch.cat([x[:pos], context[image], x[pos + 1:77 - r + 1]])
                x = x + clip.positional_embedding
                x = torch.cat([x[:1], proj(dtp.shallow[0]), x[1:-n]])
                for index, block in enumerate(clip.transformer.resblocks):
                    if index >= 1:
                        x = torch.cat([x[:1], proj(dtp.deep[index - 1]), x[1 + n:]])
                    x = block(x[None], attn_mask=clip.attn_mask)[0]
                x = torch.cat([x[:1], x[1 + n:]])
                x = clip.ln_final(dtp.norm(x))
                embedding = x[int(ids.argmax()) + r - 1] @ clip.text_projection
                embeddings.append(embedding / embedding.norm())
            mean = torch.stack(embeddings).mean(0)
            classes.append(mean / mean.norm())
        out.append(torch.stack(classes))
    return torch.stack(out)


def test_text_encoding_equals_upstream_loop(backbone: Backbone) -> None:
    method = make(backbone, normal_templates=("a photo of a good {}", "{} without defect"))
    context = torch.randn(2, 2, backbone.text_width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = method.encode_prompts(context)
        expected = reference_text(method, context)
    assert ours.shape == (2, 2, backbone.embed_dim)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[0], ours[1])  # per-image prompts


def test_pre_vcp_uses_the_global_embedding(method: VCPCLIP, backbone: Backbone) -> None:
    pre = method.pre_vcp
    g = torch.randn(3, backbone.embed_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        vectors = pre(g)
        w, b = pre.context.weight, pre.context.bias  # [r, 1, 3], [r]
        padded = F.pad(g, (1, 1))
        conv = torch.stack([sum(w[k, 0, j] * padded[:, j:j + g.shape[1]] for j in range(3))
                            + b[k] for k in range(w.shape[0])], dim=1)
    torch.testing.assert_close(vectors, pre.query + conv)
    static = make(backbone, use_global_context=False)
    static.load_trainable_state_dict(method.trainable_state_dict())
    with torch.no_grad():
        torch.testing.assert_close(static.pre_vcp(g), pre.query.expand(3, -1, -1))


def test_post_vcp_equals_per_head_attention(method: VCPCLIP, backbone: Backbone) -> None:
    post, g = method.post_vcp, torch.Generator().manual_seed(4)
    text = torch.randn(2, 2, backbone.embed_dim, generator=g)
    patches = F.normalize(torch.randn(2, 16, backbone.vision_width, generator=g), dim=-1)
    with torch.no_grad():
        ours = post(text, patches)
        q, k, v = post.query(text), post.key(patches), post.value(patches)
        d = backbone.vision_width // post.heads
        heads = []
        for h in range(post.heads):
            part = slice(h * d, (h + 1) * d)
            weights = (q[..., part] @ k[..., part].transpose(1, 2)).softmax(-1)  # no 1/sqrt(d)
            heads.append(weights @ v[..., part])
        expected = F.normalize(post.out(torch.cat(heads, dim=-1)), dim=-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_scores_follow_test_py(method: VCPCLIP, batch: dict) -> None:
    images = batch["image"]
    with torch.no_grad():
        out = method.forward_features(images)
        pre = torch.stack([method.probability_map(x, images, SIZE)[:, 1]
                           for x in out.pre_logits]).mean(0)
        post = torch.stack([method.probability_map(x, images, SIZE)[:, 1]
                            for x in out.post_logits]).mean(0)
        prediction = method.predict(images, batch["class_name"])
        grid = out.pre_logits[0].reshape(2, 4, 4, 2).permute(0, 3, 1, 2)
        first = F.interpolate(grid, size=SIZE, mode="bilinear", align_corners=True).softmax(1)
    torch.testing.assert_close(method.probability_map(out.pre_logits[0], images, SIZE), first)
    torch.testing.assert_close(prediction.anomaly_maps, gaussian_smooth(0.2 * pre + 0.8 * post, 8))
    top = [m.flatten(1).sort(dim=1, descending=True).values[:, :2000].mean(1)
           for m in (pre, post)]
    torch.testing.assert_close(prediction.image_scores, top[0] + top[1])
    assert top_k_mean(torch.arange(6.0).reshape(1, 2, 3), 2).item() == 4.5
    assert top_k_mean(torch.arange(6.0).reshape(1, 2, 3), 99).item() == 2.5


def test_loss_is_focal_plus_abnormal_dice_over_layers_and_branches(method: VCPCLIP,
                                                                   batch: dict) -> None:
    method.eval()  # no dropout, so that two forwards agree
    with torch.no_grad():
        total, parts = method.loss(batch)
        out = method.forward_features(batch["image"])
        mask = batch["mask"]
        expected = sum(focal_loss(p, mask) + dice_loss(p[:, 1], mask)
                       for p in (method.probability_map(x, batch["image"], SIZE)
                                 for x in out.pre_logits + out.post_logits))
    assert set(parts) == {"pre_focal", "pre_dice", "post_focal", "post_dice"}
    torch.testing.assert_close(total, expected)


def test_exact_gelu_quirk_equals_a_gelu_copy_of_the_model(backbone: Backbone,
                                                          method: VCPCLIP) -> None:
    quirky = make(backbone, mlp_activation="gelu")
    quirky.load_trainable_state_dict(method.trainable_state_dict())
    gelu_backbone = copy.deepcopy(backbone)
    for module in gelu_backbone.model.modules():
        if isinstance(module, nn.Sequential) and hasattr(module, "gelu"):
            module.gelu = nn.GELU()
    reference = make(gelu_backbone)
    reference.load_trainable_state_dict(method.trainable_state_dict())
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, expected = quirky.predict(images, ["a", "b"]), reference.predict(images, ["a", "b"])
        plain = method.predict(images, ["a", "b"])
    torch.testing.assert_close(ours.anomaly_maps, expected.anomaly_maps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.image_scores, expected.image_scores, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours.anomaly_maps, plain.anomaly_maps, atol=1e-5)


def test_bad_options_are_named(backbone: Backbone) -> None:
    for options, name in (({"pre_map_weight": 1.5}, "pre_map_weight"),
                          ({"context_vectors": 0}, "context_vectors"),
                          ({"post_vcp_heads": 5}, "post_vcp_heads"),
                          ({"normal_templates": ("a good object",)}, "exactly one"),
                          ({"abnormal_templates": ("x marks a damaged {}",)}, "must not appear"),
                          ({"sigma": -1.0}, "sigma")):
        with pytest.raises(ConfigError, match=name):
            make(backbone, **options)
    with pytest.raises(ValueError, match="layers"):
        make(backbone, layers=(6, 25))


@pytest.fixture(scope="module")
def trained(backbone: Backbone, batch: dict) -> dict[str, object]:
    """A fresh method before and after two epochs of zsbench's trainer on synthetic_a."""
    fresh = make(backbone, seed=5, learning_rate=1e-3)
    fresh.eval()
    with torch.no_grad():
        initial, _ = fresh.loss(batch)
    fresh.train()
    total, _ = fresh.loss(batch)
    total.backward()
    with_grad = {n for n, p in fresh.named_parameters() if p.grad is not None}
    fresh.zero_grad(set_to_none=True)
    declared = [p for g in fresh.parameter_groups() for p in g["params"]]
    before = [p.detach().clone() for p in declared]
    records = Dataset.from_list(synthetic_records("synthetic_a", size=64, n_normal=2,
                                                  n_anomalous=2))
    outcome = train_method(fresh, [records], TrainConfig(epochs=2, batch_size=4))
    fresh.eval()
    with torch.no_grad():
        final, _ = fresh.loss(batch)
    return {"method": fresh, "losses": [initial.item(), final.item()], "with_grad": with_grad,
            "declared": declared, "before": before, "history": outcome.history}


def test_training_lowers_the_loss_and_touches_only_declared_parameters(trained: dict) -> None:
    method = trained["method"]
    initial, final = trained["losses"]
    assert [r["epoch"] for r in trained["history"]] == [1, 2] and final < initial
    names = {n for n, p in method.named_parameters()
             if any(p is q for q in trained["declared"])}
    assert trained["with_grad"] == names  # every trainable part gets a gradient
    assert not any(n.startswith("backbone.") for n in names)
    groups = method.parameter_groups()
    assert [g["lr"] for g in groups] == [1e-3, 0.01]
    assert {id(p) for p in groups[1]["params"]} == {id(method.pre_logit_scale),
                                                    id(method.post_logit_scale)}
    assert all(not torch.equal(p, b) for p, b in zip(trained["declared"], trained["before"],
                                                    strict=True))


# -- upstream checkpoints ---------------------------------------------------------------------


def upstream_checkpoint(method: VCPCLIP) -> dict[str, object]:
    """``method``'s parameters written in ``train.py``'s save_dict layout."""
    s = {k: v.clone() for k, v in method.trainable_state_dict().items()}
    conv = {"query": "q_proj_pre", "key": "k_proj_pre_1", "value": "v_proj_pre_1",
            "out": "proj_post_t"}
    zero = {f"{theirs}.{p}": s[f"post_vcp.{ours}.{p}"].unsqueeze(-1) if p == "weight"
            else s[f"post_vcp.{ours}.{p}"] for ours, theirs in conv.items()
            for p in ("weight", "bias")}
    zero["prompt_temp_l1"] = s["post_logit_scale"]
    layers = len(method.layers)
    return {
        "trainable_linearlayer": {f"fc.{i}.{p}": s[f"patch_projections.{i}.{p}"]
                                  for i in range(layers) for p in ("weight", "bias")},
        "New_Lan_Embed": {"prompt_query": s["pre_vcp.query"],
                          "prompt_temp": s["pre_logit_scale"],
                          "prompt_linear1.fc.weight": s["pre_vcp.context.weight"],
                          "prompt_linear1.fc.bias": s["pre_vcp.context.bias"]},
        "Zero_try": zero,
        "prompt_embeddings": nn.Parameter(s["text_prompt.shallow"]),
        "deep_prompt_embeddings": nn.Parameter(s["text_prompt.deep"]),
        "prompt_proj.weight": nn.Parameter(s["text_prompt.projection.weight"]),
        "prompt_proj.bias": nn.Parameter(s["text_prompt.projection.bias"]),
        "prompt_norm.weight": nn.Parameter(s["text_prompt.norm.weight"]),
        "prompt_norm.bias": nn.Parameter(s["text_prompt.norm.bias"]),
        "prompt_text_projection": nn.Parameter(torch.randn(32, 32)),  # never used upstream
    }


def test_import_round_trip(backbone: Backbone, tmp_path: Path) -> None:
    source_method = make(backbone, seed=9)
    path = tmp_path / "train_visa.pth"
    torch.save(upstream_checkpoint(source_method), path)
    out = import_checkpoint("vcp_clip", path, tmp_path / "imported.pt", TINY, backbone=backbone)
    imported = load_method_from_checkpoint(out, backbone=backbone)
    expected, actual = source_method.trainable_state_dict(), imported.trainable_state_dict()
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[k], v) for k, v in expected.items())
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        a, b = source_method.predict(images, ["a", "b"]), imported.predict(images, ["a", "b"])
    assert torch.equal(a.anomaly_maps, b.anomaly_maps)
    assert torch.equal(a.image_scores, b.image_scores)


def test_import_errors_name_what_does_not_fit(method: VCPCLIP, backbone: Backbone,
                                              tmp_path: Path) -> None:
    good = upstream_checkpoint(method)
    with pytest.raises(ValueError, match="Zero_try"):
        VCPCLIP.convert_upstream_checkpoint({k: v for k, v in good.items() if k != "Zero_try"})
    with pytest.raises(ValueError, match="prompt_norm.bias"):
        VCPCLIP.convert_upstream_checkpoint({k: v for k, v in good.items()
                                             if k != "prompt_norm.bias"})
    extra = {**good, "New_Lan_Embed": {**good["New_Lan_Embed"], "stray": torch.zeros(1)}}
    with pytest.raises(ValueError, match="stray"):
        VCPCLIP.convert_upstream_checkpoint(extra)
    lenient = {**good, "Zero_try": {**good["Zero_try"], "k_proj_pre_2.weight": torch.zeros(1)}}
    assert sorted(VCPCLIP.convert_upstream_checkpoint(lenient)) == sorted(
        VCPCLIP.convert_upstream_checkpoint(good))  # test.py loads Zero_try with strict=False
    short = {**good, "Zero_try": {k: v for k, v in good["Zero_try"].items()
                                  if k != "proj_post_t.bias"}}
    with pytest.raises(ValueError, match="proj_post_t.bias"):
        VCPCLIP.convert_upstream_checkpoint(short)
    with pytest.raises(TypeError, match="dict"):
        VCPCLIP.convert_upstream_checkpoint([1, 2])
    wide = {**good, "prompt_embeddings": torch.zeros(1, 1, 64)}
    path = tmp_path / "wide.pth"
    torch.save(wide, path)
    with pytest.raises(Exception, match="text_prompt.shallow"):
        import_checkpoint("vcp_clip", path, tmp_path / "out.pt", TINY, backbone=backbone)
