"""AA-CLIP on the tiny random-weight backbone: adapters, anchors, surgery features, scores, the
two training stages (switching, gradients, resume) and the upstream checkpoint importer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from scipy.ndimage import gaussian_filter

from tests.method_fixtures import (
    SIZE,
    TINY,
    normal_and_anomalous_batch,
    seeded_method,
)
from zsbench.backbone import Backbone
from zsbench.checkpoint_import import import_checkpoint
from zsbench.checkpoints import read_checkpoint
from zsbench.errors import CheckpointError, ConfigError
from zsbench.method import build_method, describe_method, make_config
from zsbench.methods.aa_clip import AAClip, residual_adapt
from zsbench.synthetic import synthetic_records
from zsbench.train import TrainConfig, load_method_from_checkpoint, train_method


def make(backbone: Backbone, seed: int = 1, **overrides: object) -> AAClip:
    return seeded_method("aa_clip", {**TINY, **overrides}, backbone, seed)


@pytest.fixture(scope="module")
def method(backbone: Backbone) -> AAClip:
    return make(backbone)


@pytest.fixture(scope="module")
def batch(backbone: Backbone) -> dict[str, object]:
    return normal_and_anomalous_batch(backbone)


def test_registered_with_prompts_and_upstream_defaults() -> None:
    described = describe_method("aa_clip")
    assert described["info"]["trainable"] and described["info"]["class_aware"]
    prompts = described["prompts"]
    assert prompts["normal"] == ["{}.", "a photo of {}.", "a {}.", "a photo of a {}.",
                                 "the {}.", "a photo of the {}."]
    assert len(prompts["anomalous"]) == 10
    assert prompts["anomalous"][:2] == ["a damaged {}.", "a photo of a damaged {}."]
    assert prompts["anomalous"][-1] == "a photo of a {} with damage."
    defaults = {o["name"]: o["default"] for o in described["options"]}
    assert defaults["levels"] == (6, 12, 18, 24) and defaults["stage1_epochs"] == 5
    assert (defaults["text_lr"], defaults["image_lr"]) == (1e-5, 5e-4)
    assert (defaults["text_adapter_layers"], defaults["image_adapter_layers"]) == (3, 6)
    assert defaults["pos_embed_interpolation"] == "bicubic-antialias"
    upstream = make_config("aa_clip", preset="upstream")
    assert upstream.stage1_last_level_only and upstream.surgery_attention_across_batch
    assert upstream.class_descriptions and not make_config("aa_clip").class_descriptions
    described = AAClip.describe_prompts(upstream)
    assert described["class_descriptions"]["metal nut"] == "metal nut which has four notched edges"


def test_bad_config_values_are_named(backbone: Backbone) -> None:
    for option, value in (("grid_kernel_size", 6), ("map_weight", 1.5), ("text_lr", 0.0),
                          ("image_adapter_layers", 25), ("stage1_epochs", -1),
                          ("surgery_from", 0)):
        with pytest.raises(ConfigError, match=option):
            make(backbone, **{option: value})


def test_residual_adapter_formula() -> None:
    torch.manual_seed(3)
    linear = torch.nn.Linear(8, 8, bias=False)
    x = torch.randn(2, 5, 8)
    a = F.leaky_relu(x @ linear.weight.t())
    expected = 0.1 * a / a.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True) + 0.9 * x
    torch.testing.assert_close(residual_adapt(x, linear, 0.1), expected)
    assert torch.equal(residual_adapt(x, linear, 0.0), x)


def test_text_adapters_and_projection_are_wired(backbone: Backbone) -> None:
    plain = make(backbone, text_adapter_weight=0.0)
    ids = backbone.tokenize(["a photo of a screw."])
    pooled = backbone.encode_text(ids, text_projection=torch.eye(backbone.text_width))
    expected = F.leaky_relu(pooled @ plain.text_projection.weight.t())
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_texts(["a photo of a screw."]), expected)
        adapted = make(backbone, text_adapter_weight=0.1).encode_texts(["a photo of a screw."])
    assert not torch.allclose(adapted, expected)
    # anchors: prompt embeddings normalised, averaged per side, renormalised
    with torch.no_grad():
        anchors = plain.anchors(["screw"])[0]
        normal = F.normalize(plain.encode_texts(["screw.", "a photo of screw.", "a screw.",
                                                 "a photo of a screw.", "the screw.",
                                                 "a photo of the screw."]), dim=-1)
    torch.testing.assert_close(anchors[0], F.normalize(normal.mean(0), dim=0))
    assert anchors.shape == (2, backbone.embed_dim)


def test_image_features_and_scores_match_an_independent_computation(backbone: Backbone,
                                                                      batch: dict) -> None:
    method = make(backbone, image_adapter_weight=0.0)
    backbone = method.backbone  # bicubic-antialias position embeddings (the method's default)
    images = batch["image"]
    visual = backbone.model.visual
    tokens = backbone.encode_image(images, layers=(6, 12, 18, 24), token_source="residual")
    with torch.inference_mode():
        patches, detection = method.adapted_features(images)
        scores, maps = method.predict(images, batch["class_name"])
        anchors = method.frozen_anchors(batch["class_name"])
    expected24 = F.normalize(visual.ln_post(tokens.patch_tokens[24])
                             @ method.seg_projections[3].weight.t(), dim=-1)
    torch.testing.assert_close(patches[3], expected24)
    det = F.normalize(visual.ln_post(tokens.patch_tokens[24]) @ method.det_projection.weight.t(),
                      dim=-1).mean(1)
    torch.testing.assert_close(detection, det)
    # maps: per level (cos_a - cos_n + 1) / 2, blurred on the 4x4 grid (kernel 7, sigma 1,
    # scipy), upsampled with align_corners, averaged over the levels
    level_maps = []
    for f in patches:
        cos = torch.einsum("bnd,bcd->bnc", f, anchors)
        grid = ((cos[..., 1] - cos[..., 0] + 1) / 2).reshape(-1, 4, 4).numpy()
        blurred = torch.stack([torch.from_numpy(gaussian_filter(g, 1.0, truncate=3.0))
                               for g in grid]).float()
        level_maps.append(F.interpolate(blurred[:, None], size=(SIZE, SIZE), mode="bilinear",
                                        align_corners=True)[:, 0])
    expected_maps = torch.stack(level_maps).mean(0)
    torch.testing.assert_close(maps, expected_maps, atol=1e-5, rtol=1e-5)
    assert maps.shape == (2, SIZE, SIZE) and ((maps >= 0) & (maps <= 1)).all()
    expected_scores = (0.5 * expected_maps.flatten(1).amax(1)
                       + 0.5 * ((detection * anchors[:, 1]).sum(-1) + 1) / 2)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-5)
    assert ((scores >= 0) & (scores <= 1)).all()
    adapted = make(backbone, image_adapter_weight=0.1)
    with torch.no_grad():
        assert not torch.allclose(adapted.adapted_features(images)[0][3], expected24)


def test_surgery_block_matches_an_independent_computation(backbone: Backbone,
                                                            batch: dict) -> None:
    """With surgery only in block 24 and one image, V-V attention over the batch axis is
    ``out_proj(v)`` per token: check that block against a direct computation."""
    method = make(backbone, surgery_from=24, surgery_attention_across_batch=True)
    backbone = method.backbone
    image = batch["image"][:1]
    before = backbone.encode_image(image, layers=(23,), token_source="residual")
    block, width = backbone.model.visual.transformer.resblocks[23], backbone.vision_width
    x = before.patch_tokens[23]
    attn = block.attn
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    y = x + attn.out_proj(v)
    y = y + block.mlp(block.ln_2(y))
    visual = backbone.model.visual
    expected = (F.normalize(visual.ln_post(y) @ visual.proj, dim=-1)
                + F.normalize(before.global_embedding, dim=-1)[:, None])
    torch.testing.assert_close(method.surgery_features(image)[-1], expected, atol=1e-5,
                               rtol=1e-5)


def test_surgery_across_batch_quirk_mixes_images(backbone: Backbone, batch: dict) -> None:
    images = batch["image"]
    per_image = make(backbone)
    alone = per_image.surgery_features(images[:1])[-1]
    torch.testing.assert_close(per_image.surgery_features(images)[-1][:1], alone)
    mixing = make(backbone, surgery_attention_across_batch=True)
    assert not torch.allclose(mixing.surgery_features(images)[-1][:1],
                              mixing.surgery_features(images[:1])[-1], atol=1e-4)


def test_stage_switching_and_gradients(backbone: Backbone, batch: dict) -> None:
    method = make(backbone)
    assert [method.stage_of(e, 15) for e in (1, 5, 6, 15)] == [1, 1, 2, 2]
    assert method.stage1_epochs(3) == 2 and method.stage1_epochs(1) == 0  # stage 2 always runs
    for epoch, stage, trained, frozen in ((5, 1, method.text_parameters(),
                                           method.image_parameters()),
                                          (6, 2, method.image_parameters(),
                                           method.text_parameters())):
        method.start_epoch(epoch, 15)
        assert method.stage == stage
        total, parts = method.loss(batch)
        assert all(name.startswith(f"stage{stage}_") for name in parts)
        total.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
        assert all(p.grad is None for p in frozen)
        assert all(p.grad is None for p in backbone.parameters())
        method.zero_grad(set_to_none=True)
    groups = method.parameter_groups()
    assert [g["lr"] for g in groups] == [1e-5, 5e-4]
    assert sum(len(g["params"]) for g in groups) == len(list(method.parameters())) - len(
        list(backbone.parameters()))


def test_stage1_loss_parts_and_last_level_quirk(backbone: Backbone, batch: dict) -> None:
    default, quirk = make(backbone), make(backbone, stage1_last_level_only=True)
    _, parts = default.loss(batch)
    assert set(parts) == {"stage1_seg_layer6", "stage1_seg_layer12", "stage1_seg_layer18",
                          "stage1_seg_layer24", "stage1_disentangle"}
    total, quirk_parts = quirk.loss(batch)
    assert set(quirk_parts) == {"stage1_seg_layer24", "stage1_disentangle"}
    assert quirk_parts["stage1_seg_layer24"] == pytest.approx(parts["stage1_seg_layer24"])
    with torch.no_grad():
        anchors = default.anchors(["object"])[0]
    cosine = float(anchors[0] @ anchors[1])
    assert parts["stage1_disentangle"] == pytest.approx(0.1 * cosine ** 2, rel=1e-4)
    assert total.item() == pytest.approx(sum(quirk_parts.values()), rel=1e-5)


def test_anchor_cache_follows_the_text_parameters(backbone: Backbone) -> None:
    method = make(backbone)
    first = method.frozen_anchors(["screw"]).clone()
    assert torch.equal(method.frozen_anchors(["screw"]), first)
    with torch.no_grad():
        method.text_projection.weight.mul_(-1.0)
    assert not torch.allclose(method.frozen_anchors(["screw"]), first)


def test_class_descriptions_change_the_prompt_words(backbone: Backbone) -> None:
    upstream = build_method("aa_clip", make_config("aa_clip", TINY, preset="upstream"),
                            backbone=backbone)
    assert upstream.prompt_word("metal_nut") == "metal nut which has four notched edges"
    assert upstream.prompt_word("pipe fryum") == "pipe-shaped fryum"
    assert upstream.prompt_word("granite") == "granite"
    assert make(backbone).prompt_word("metal_nut") == "metal_nut"


def _records() -> Dataset:
    return Dataset.from_list(synthetic_records("synthetic_a", size=64, n_normal=2,
                                               n_anomalous=2))


def test_trainer_runs_the_stages_in_order_and_resumes_in_the_right_stage(
        backbone: Backbone, tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, batch_size=6, keep_epoch_checkpoints=True)
    first = make(backbone, seed=4, stage1_epochs=2)
    initial = first.trainable_state_dict()
    train_method(first, [_records()], config, checkpoint_dir=tmp_path)
    states = [initial] + [read_checkpoint(tmp_path / f"epoch_00{e}.pt")["state_dict"]
                          for e in (1, 2, 3)]

    def changed(before: dict, after: dict, prefix: tuple[str, ...]) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    text, image = ("text_adapters.", "text_projection."), ("image_adapters.", "seg_projections.",
                                                           "det_projection.")
    for epoch, stage in ((1, 1), (2, 1), (3, 2)):
        before, after = states[epoch - 1], states[epoch]
        assert changed(before, after, text) == (stage == 1), epoch
        assert changed(before, after, image) == (stage == 2), epoch
    # interrupted after epoch 1: the resumed run trains epoch 2 in stage 1, epoch 3 in stage 2
    for epoch in (2, 3):
        (tmp_path / f"epoch_00{epoch}.pt").unlink()
    resumed = make(backbone, seed=9, stage1_epochs=2)
    stages: list[int] = []
    train_method(resumed, [_records()], config, checkpoint_dir=tmp_path, resume=True,
                 progress=lambda *_: stages.append(resumed.stage))
    assert stages == [1, 1, 2, 2]
    final = resumed.trainable_state_dict()
    assert all(torch.equal(final[k], states[3][k]) for k in final)


# -- upstream checkpoints -------------------------------------------------------------------------

def upstream_file(path: Path, width: int = 32, relu: bool = False, seed: int = 5) -> Path:
    """A merged text_adapter.pth + image_adapter_15.pth in upstream's key layout."""
    g = torch.Generator().manual_seed(seed)
    text = {f"{i}.fc.0.weight": torch.randn(width, width, generator=g) for i in range(4)}
    proj = "fc.0.weight" if relu else "fc.weight"
    image = {f"layer_adapters.{i}.fc.0.weight": torch.randn(width, width, generator=g)
             for i in range(6)}
    image.update({f"seg_proj.{j}.{proj}": torch.randn(width, width, generator=g)
                  for j in range(4)})
    image[f"det_proj.{proj}"] = torch.randn(width, width, generator=g)
    torch.save({"epoch": 15, "text_adapter": text, "image_adapter": image,
                "text_optimizer": {"state": {}}, "image_optimizer": {"state": {}}}, path)
    return path


def test_upstream_checkpoint_round_trip(backbone: Backbone, tmp_path: Path, batch: dict) -> None:
    source = upstream_file(tmp_path / "aa_clip.pth")
    out = import_checkpoint("aa_clip", source, tmp_path / "imported.pt", TINY, backbone=backbone)
    imported = load_method_from_checkpoint(out, backbone=backbone)
    upstream = torch.load(source, weights_only=True)
    direct = make(backbone, seed=11)
    with torch.no_grad():
        for i in range(3):
            direct.text_adapters[i].weight.copy_(upstream["text_adapter"][f"{i}.fc.0.weight"])
        direct.text_projection.weight.copy_(upstream["text_adapter"]["3.fc.0.weight"])
        for i in range(6):
            direct.image_adapters[i].weight.copy_(
                upstream["image_adapter"][f"layer_adapters.{i}.fc.0.weight"])
        for j in range(4):
            direct.seg_projections[j].weight.copy_(
                upstream["image_adapter"][f"seg_proj.{j}.fc.weight"])
        direct.det_projection.weight.copy_(upstream["image_adapter"]["det_proj.fc.weight"])
    with torch.inference_mode():
        expected = direct.predict(batch["image"], batch["class_name"])
        actual = imported.predict(batch["image"], batch["class_name"])
    assert torch.equal(actual.image_scores, expected.image_scores)
    assert torch.equal(actual.anomaly_maps, expected.anomaly_maps)
    relu = AAClip.convert_upstream_checkpoint(
        torch.load(upstream_file(tmp_path / "relu.pth", relu=True), weights_only=True))
    assert set(relu) == set(imported.trainable_state_dict())


def test_bad_upstream_files_are_clear_errors(backbone: Backbone, tmp_path: Path) -> None:
    upstream = torch.load(upstream_file(tmp_path / "a.pth"), weights_only=True)
    text_only = {k: v for k, v in upstream.items() if k != "image_adapter"}
    torch.save(text_only, tmp_path / "text.pth")
    with pytest.raises(CheckpointError, match="missing \\['image_adapter'\\].*merge"):
        import_checkpoint("aa_clip", tmp_path / "text.pth", tmp_path / "o.pt", TINY,
                          backbone=backbone)
    extra = {**upstream, "image_adapter": {**upstream["image_adapter"],
                                           "cls_head.weight": torch.zeros(1)}}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="image_adapter.cls_head.weight"):
        import_checkpoint("aa_clip", tmp_path / "extra.pth", tmp_path / "o.pt", TINY,
                          backbone=backbone)
    upstream_file(tmp_path / "wide.pth", width=16)
    with pytest.raises(CheckpointError, match="text_adapters.0.weight.*16, 16.*32, 32"):
        import_checkpoint("aa_clip", tmp_path / "wide.pth", tmp_path / "o.pt", TINY,
                          backbone=backbone)
