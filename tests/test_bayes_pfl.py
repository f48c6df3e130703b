"""Bayes-PFL on the tiny random-weight backbone: flows, sampling, scores, loss, importer."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.method_fixtures import SIZE, TINY, seeded_method
from zsbench.backbone import Backbone
from zsbench.checkpoint_import import import_checkpoint
from zsbench.errors import ConfigError
from zsbench.method import build_method, describe_method, make_config
from zsbench.methods.bayes_pfl import (
    BayesPFL,
    ResidualCrossAttention,
    balanced_focal_loss,
    foreground_dice_loss,
    orthogonality_loss,
)
from zsbench.normalizing_flows import flow_kl, planar_flow, planar_step
from zsbench.train import load_method_from_checkpoint

FAST = {**TINY, "samples": 2}
NAMES = ["bottle", "bottle"]


def make(backbone: Backbone, seed: int = 1, **overrides: object) -> BayesPFL:
    return seeded_method("bayes_pfl", {**FAST, **overrides}, backbone, seed)


@pytest.fixture(scope="module")
def method(backbone: Backbone) -> BayesPFL:
    return make(backbone)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


def predict(method: BayesPFL, images: torch.Tensor, seed: int = 0, category: str = "bottle",
            names: list[str] | None = None):
    method.begin_category(category, seed)
    with torch.inference_mode():
        return method.predict(images, names or ["bottle"] * images.shape[0])


# -- registration, config -------------------------------------------------------------------------
def test_registered_kind_prompts_and_defaults() -> None:
    described = describe_method("bayes_pfl")
    info = described["info"]
    assert info["trainable"] and info["stochastic"] and info["class_aware"]
    assert info["kinds"] == ["auxiliary-trained", "stochastic"]
    ctx = " ".join(["X"] * 5)
    assert described["prompts"]["normal"] == [f"{ctx} {ctx} {{}}"] * 3
    defaults = {o["name"]: o["default"] for o in described["options"]}
    assert defaults["samples"] == 10 and defaults["num_flows"] == 10
    assert defaults["layers"] == (6, 12, 18, 24) and defaults["sigma"] == 8.0
    assert defaults["pos_embed_interpolation"] == "bicubic-antialias"
    assert not any(defaults[q] for q in ("planar_unconstrained", "agnostic_samples_per_category",
                                         "image_fusion_head", "small_top_k_categories"))


@pytest.mark.parametrize(("overrides", "match"), [
    ({"samples": 0}, "samples must be >= 1"),
    ({"num_flows": -1}, "num_flows"),
    ({"image_score": "max"}, "image_score"),
    ({"image_fusion_head": True}, "classifier_epochs"),
    ({"rca_heads": 3}, "rca_heads=3"),
])
def test_bad_config_values_are_config_errors(backbone: Backbone, overrides: dict,
                                             match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make(backbone, **overrides)


def test_upstream_preset_sets_every_quirk(backbone: Backbone) -> None:
    config = make_config("bayes_pfl", FAST, preset="upstream")
    assert config.planar_unconstrained and config.agnostic_samples_per_category
    assert config.image_fusion_head and config.classifier_epochs == 4
    assert config.small_top_k_categories
    torch.manual_seed(1)
    upstream = build_method("bayes_pfl", config, backbone=backbone)
    assert upstream.config != make(backbone).config


# -- normalizing flows ----------------------------------------------------------------------------
def test_planar_log_det_equals_the_jacobian() -> None:
    g = torch.Generator().manual_seed(0)
    z, u, w = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(3))
    b = torch.tensor(0.3, dtype=torch.float64)
    for invertible in (True, False):
        out, log_det = planar_step(z, u, w, b, invertible)
        jacobian = torch.autograd.functional.jacobian(
            lambda x, inv=invertible: planar_step(x, u, w, b, inv)[0], z)
        expected = torch.log(torch.linalg.det(jacobian).abs() + 1e-5)
        torch.testing.assert_close(log_det, expected)
    # u as is when unconstrained: z + u tanh(w.z + b)
    torch.testing.assert_close(planar_step(z, u, w, b, False)[0],
                               z + u * torch.tanh(w @ z + b))


def test_invertibility_constraint_only_changes_non_invertible_steps() -> None:
    w = torch.tensor([1.0, 0.0])
    u_bad = torch.tensor([-3.0, 0.5])  # w.u = -3 < -1: not invertible as is
    z = torch.zeros(2)
    constrained, _ = planar_step(z, u_bad, w, torch.tensor(0.2), invertible=True)
    raw, _ = planar_step(z, u_bad, w, torch.tensor(0.2), invertible=False)
    assert not torch.allclose(constrained, raw)
    # u_hat = u + (m(w.u) - w.u) w / |w|^2, m(x) = -1 + softplus(x): w.u_hat = m(-3) > -1
    u_hat = u_bad + (F.softplus(torch.tensor(-3.0)) - 1 + 3) * w
    torch.testing.assert_close(constrained, u_hat * torch.tanh(torch.tensor(0.2)))
    assert float(w @ u_hat) > -1


def test_flow_kl_matches_gaussian_densities() -> None:
    g = torch.Generator().manual_seed(3)
    mean, variance = torch.randn(5, 6, generator=g), torch.rand(5, 6, generator=g) + 0.5
    z0 = mean + variance.sqrt() * torch.randn(5, 6, generator=g)
    u, w = torch.randn(5, 3, 6, generator=g), torch.randn(5, 3, 6, generator=g)
    zk, log_det = planar_flow(z0, u, w, torch.randn(5, 3, generator=g))
    q0 = torch.distributions.Normal(mean, variance.sqrt()).log_prob(z0).sum(-1)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(zk).sum(-1)
    torch.testing.assert_close(flow_kl(z0, mean, variance, zk, log_det),
                               (q0 - prior - log_det).mean())


# -- modules and losses ---------------------------------------------------------------------------
def test_rca_matches_a_per_head_computation() -> None:
    torch.manual_seed(4)
    rca = ResidualCrossAttention(vision_width=12, dim=8, heads=2, n_layers=2)
    text = F.normalize(torch.randn(2, 3, 8), dim=-1)
    patches = torch.randn(2, 5, 12)
    updated, dense = rca(text, patches, 1)
    projected = F.normalize(patches @ rca.patch_projections[1].weight.t(), dim=-1)
    query = text @ rca.query.weight.t() + rca.query.bias
    heads = []
    for h in range(2):
        part = slice(4 * h, 4 * h + 4)
        weights = (query[..., part] @ projected[..., part].transpose(1, 2) / 8 ** 0.5).softmax(-1)
        heads.append(weights @ projected[..., part])
    torch.testing.assert_close(dense, projected)
    torch.testing.assert_close(updated, F.normalize(torch.cat(heads, -1) + text, dim=-1))


def test_losses_against_small_computations() -> None:
    probs_abn = torch.tensor([[[0.9, 0.2], [0.4, 0.1]]])
    mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    probs = torch.stack([1 - probs_abn, probs_abn], dim=1)
    pt = torch.tensor([0.9, 0.8, 0.4, 0.9])  # per pixel, row-major
    per_pixel = -(1 - pt) ** 2 * torch.log(pt + 1e-8)
    expected = (per_pixel[0] + per_pixel[2]) / 2 + (per_pixel[1] + per_pixel[3]) / 2
    torch.testing.assert_close(balanced_focal_loss(probs, mask), expected)
    dice = 1 - (2 * 1.3 + 1e-5) / (1.6 + 2 + 1e-5)
    torch.testing.assert_close(foreground_dice_loss(probs_abn, mask), torch.tensor(dice))
    e = torch.eye(3)
    assert float(orthogonality_loss(e[None])) == 0.0
    pair = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # cos^2 = 0.5 on the 2 off-diagonal entries
    torch.testing.assert_close(orthogonality_loss(pair), torch.tensor(0.25))


def test_pixel_probabilities_are_the_pair_softmax_of_upsampled_logits(method: BayesPFL) -> None:
    logits = torch.randn(2, 16, 3, 2, generator=torch.Generator().manual_seed(6))
    out = method._upsampled_probabilities(logits, SIZE)
    grid = logits.reshape(2, 4, 4, 6).permute(0, 3, 1, 2)
    up = F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    expected = up.reshape(2, 3, 2, SIZE, SIZE).softmax(dim=2)[:, :, 1]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# -- prediction and sampling ----------------------------------------------------------------------
def test_predict_shapes_and_ranges(method: BayesPFL, images: torch.Tensor) -> None:
    scores, maps = predict(method, images)
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)
    assert ((scores > 0) & (scores < 1)).all() and ((maps > 0) & (maps < 1)).all()
    assert maps.std() > 0


def test_prediction_assembles_the_pieces(backbone: Backbone, images: torch.Tensor) -> None:
    """One sample, one prompt pair, one layer, no smoothing: the map is the pair softmax of the
    upsampled RCA logits and the score the pair softmax of the mapped-text logits."""
    model = make(backbone, samples=1, prompt_bank_size=1, layers=(24,), sigma=0.0,
                 image_score="global")
    scores, maps = predict(model, images, 11)
    model.begin_category("bottle", 11)
    with torch.inference_mode():
        global_embedding, patches = model.encode_image(images)
        drawn = model.sample_prompts(global_embedding, 1, training=False)
        text = model.encode_prompts(model.token_ids(NAMES), drawn)[:, 0, 0]  # [B, 2, D]
        mapped = F.normalize(model.class_mapping(text), dim=-1)
        logits = model.temperature_image.exp() * (
            mapped @ F.normalize(global_embedding, dim=-1)[..., None])[..., 0]
        updated, dense = model.rca(text, patches[0], 0)
        pixel = model.temperature_pixel.exp() * dense @ updated.transpose(1, 2)  # [B, N, 2]
        grid = pixel.reshape(2, 4, 4, 2).permute(0, 3, 1, 2)
        up = F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    torch.testing.assert_close(scores, logits.softmax(-1)[:, 1])
    torch.testing.assert_close(maps, up.softmax(1)[:, 1], atol=1e-5, rtol=1e-5)


def test_training_samples_follow_the_flow(method: BayesPFL) -> None:
    """Training: z_0 = mean + sqrt(variance) eps (variance = exp(h / 2)), then the planar flow
    with the image's amortised parameters; noise from torch's global RNG."""
    embedding = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(12)
    with torch.no_grad():
        drawn = method.sample_prompts(embedding, 1, training=True)
        torch.manual_seed(12)
        eps = torch.randn(3, 1, 32)
        encoder = method.image_specific_encoder
        mean = encoder.mean(embedding)
        variance = torch.exp(0.5 * encoder.log_variance(embedding))
        u, w, b = method.image_specific_flow.flow_parameters(embedding)
        z0 = mean[:, None] + variance.sqrt()[:, None] * eps
        expected, _ = planar_flow(z0, u[:, None], w[:, None], b[:, None])
    torch.testing.assert_close(drawn.context, expected)
    assert drawn.normal.shape == (1, 1, 32) and set(drawn.kl) == {"kl_context", "kl_normal",
                                                                  "kl_abnormal"}


def test_reproducible_per_seed_and_different_across_seeds(method: BayesPFL,
                                                          images: torch.Tensor) -> None:
    first, again, other = predict(method, images, 3), predict(method, images, 3), \
        predict(method, images, 4)
    assert torch.equal(first.image_scores, again.image_scores)
    assert torch.equal(first.anomaly_maps, again.anomaly_maps)
    assert not torch.allclose(first.anomaly_maps, other.anomaly_maps)
    assert not torch.allclose(first.image_scores, other.image_scores)
    # the category enters the seed
    assert not torch.allclose(predict(method, images, 3, "cable").anomaly_maps,
                              first.anomaly_maps)


def test_draws_do_not_depend_on_the_batching(method: BayesPFL, images: torch.Tensor) -> None:
    whole = predict(method, images, 7)
    method.begin_category("bottle", 7)
    with torch.inference_mode():
        parts = [method.predict(images[i:i + 1], ["bottle"]) for i in range(2)]
    torch.testing.assert_close(torch.cat([p.anomaly_maps for p in parts]), whole.anomaly_maps)
    torch.testing.assert_close(torch.cat([p.image_scores for p in parts]), whole.image_scores)


def test_samples_change_the_output(backbone: Backbone, method: BayesPFL,
                                   images: torch.Tensor) -> None:
    more = make(backbone, samples=5)
    more.load_trainable_state_dict(method.trainable_state_dict())
    assert not torch.allclose(predict(more, images).anomaly_maps,
                              predict(method, images).anomaly_maps)


def test_agnostic_samples_per_category_reuses_the_draws(backbone: Backbone,
                                                        method: BayesPFL) -> None:
    shared = make(backbone, agnostic_samples_per_category=True)
    shared.load_trainable_state_dict(method.trainable_state_dict())
    embedding = torch.randn(3, 32)
    for model, reused in ((shared, True), (method, False)):
        model.begin_category("bottle", 0)
        with torch.inference_mode():
            a, b = (model.sample_prompts(embedding, 2, training=False) for _ in range(2))
        assert a.normal.shape[1:] == (2, 32) and a.context.shape == (3, 2, 32)
        assert torch.equal(a.normal, b.normal) is reused
        assert torch.equal(a.abnormal, b.abnormal) is reused
        assert not torch.equal(a.context, b.context)  # image-specific draws are always fresh


def test_fused_image_score_and_top_k(method: BayesPFL, backbone: Backbone,
                                     images: torch.Tensor) -> None:
    glob = make(backbone, image_score="global")
    glob.load_trainable_state_dict(method.trainable_state_dict())
    fused_scores, maps = predict(method, images)
    global_scores, _ = predict(glob, images)
    assert not torch.allclose(fused_scores, global_scores)
    assert method.top_k(518) == 2000 and method.top_k(SIZE) == round(2000 * SIZE ** 2 / 518 ** 2)
    small = make(backbone, small_top_k_categories=True)
    small.begin_category("screw", 0)
    assert small.top_k(518) == 20
    small.begin_category("bottle", 0)
    assert small.top_k(518) == 2000


# -- training -------------------------------------------------------------------------------------
def _batch(images: torch.Tensor) -> dict:
    mask = torch.zeros(2, SIZE, SIZE)
    mask[1, 10:30, 20:40] = 1
    return {"image": images, "mask": mask, "label": torch.tensor([0, 1]), "class_name": NAMES}


def test_loss_parts_and_gradients(backbone: Backbone, images: torch.Tensor) -> None:
    model = make(backbone, image_fusion_head=True, classifier_epochs=1)
    model.train()
    torch.manual_seed(0)
    loss, parts = model.loss(_batch(images))
    assert {"image_ce", "focal", "dice", "kl", "orthogonality", "kl_context", "kl_normal",
            "kl_abnormal"} <= set(parts)
    assert torch.isfinite(loss)
    summed = sum(parts[k] for k in ("image_ce", "focal", "dice", "kl", "orthogonality"))
    torch.testing.assert_close(float(loss.detach()), summed, rtol=1e-5, atol=1e-5)
    loss.backward()
    grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0)
             for n, p in model.named_parameters() if not n.startswith("backbone")}
    head = {n for n in grads if n.startswith(("fusion.", "image_mapping."))}
    assert all(grads[n] for n in grads if n not in head)
    assert not any(grads[n] for n in head)  # the fusion head waits for the classifier stage
    declared = {id(p) for g in model.parameter_groups() for p in g["params"]}
    assert declared == {id(p) for n, p in model.named_parameters()
                        if not n.startswith("backbone")}
    assert sorted(g["lr"] for g in model.parameter_groups()) == [1e-4, 1e-3, 1e-3, 1e-2]

    model.zero_grad(set_to_none=True)
    model.start_epoch(15, 15)  # the last epoch is the classifier stage
    loss, parts = model.loss(_batch(images))
    assert set(parts) == {"image_ce"}
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {n for n, _ in model.named_parameters()
                       if n.startswith(("fusion.", "image_mapping.", "class_mapping."))}
    model.start_epoch(14, 15)
    assert not model._classifier_stage


def test_a_few_steps_reduce_the_segmentation_loss(backbone: Backbone,
                                                  images: torch.Tensor) -> None:
    model = make(backbone, train_one_prompt_per_step=False, lr_linear=1e-3)
    model.train()
    optimizer = torch.optim.Adam(model.parameter_groups(), betas=(0.5, 0.999))
    torch.manual_seed(0)
    history = []
    for _ in range(8):
        loss, parts = model.loss(_batch(images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(parts["focal"] + parts["dice"])
    assert history[-1] < history[0]


# -- released checkpoints -------------------------------------------------------------------------
def upstream_state(width: int = 32, vision: int = 32, flows: int = 10, seed: int = 9
                   ) -> OrderedDict[str, torch.Tensor]:
    """A ``Context_Prompting.state_dict()`` laid out like upstream ``models/VPB.py`` (the
    released ``train_visa.pth`` holds ``{"MyModel": state}``), random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    hidden = vision // 2
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    state["prompt_context"] = r(3, 5, width)
    state["prompt_state_normal"] = r(3, 5, width) + 0.5
    state["prompt_state_abnormal"] = r(3, 5, width) - 0.5
    state["temperature_pixel"] = torch.tensor(2.6)
    state["temperature_image"] = torch.tensor(2.7)

    def mlp(prefix: str) -> None:
        for i, (out, inp) in zip((0, 2, 4), ((hidden, width), (hidden, hidden), (width, hidden)),
                                 strict=True):
            state[f"{prefix}.module.{i}.weight"] = r(out, inp)
            state[f"{prefix}.module.{i}.bias"] = r(out)

    for part in ("context", "state"):
        mlp(f"{part}_encoder.weight_mean")
        mlp(f"{part}_encoder.weight_log_variance")
        mlp(f"{part}_decoder.weight_mean")
    for name, encoder, decoder in (("context", "context_encoder", "context_decoder"),
                                   ("normal", "state_encoder", "state_decoder"),
                                   ("abnormal", "state_encoder", "state_decoder")):
        if name != "context":
            state[f"PFL_{name}.amor_u"] = r(1, flows, width, 1)
            state[f"PFL_{name}.amor_w"] = r(1, flows, 1, width)
            state[f"PFL_{name}.amor_b"] = r(1, flows, 1, 1)
            state[f"PFL_{name}.state"] = r(1, width)
        for key in [k for k in state if k.startswith((encoder + ".", decoder + "."))]:
            copy = key.replace(encoder, f"PFL_{name}.encoder").replace(decoder,
                                                                        f"PFL_{name}.decoder")
            state[copy] = state[key].clone()
        state[f"PFL_{name}.p_mu.0.weight"] = r(width, width)
        state[f"PFL_{name}.p_mu.0.bias"] = r(width)
        if name == "context":
            for p, n in (("u", flows * width), ("w", flows * width), ("b", flows)):
                state[f"PFL_context.amor_{p}.weight"] = r(n, width)
                state[f"PFL_context.amor_{p}.bias"] = r(n)
    state["fuse.fuse_modules.weight"] = r(hidden, 4 * vision)
    state["fuse.fuse_modules.bias"] = r(hidden)
    state["fuse.compress.weight"] = r(1, hidden)
    state["fuse.compress.bias"] = r(1)
    state["fuse.post_process.weight"] = r(width, hidden)
    state["fuse.post_process.bias"] = r(width)
    state["RCA.q_proj_pre.weight"] = r(width, width, 1)
    state["RCA.q_proj_pre.bias"] = r(width)
    for i in range(4):
        state[f"RCA.linear_proj.{i}.weight"] = r(width, vision)
    for name in ("class_mapping", "image_mapping"):
        state[f"{name}.weight"] = r(width, width)
        state[f"{name}.bias"] = r(width)
    return state


def set_directly(model: BayesPFL, s: dict[str, torch.Tensor]) -> None:
    """The upstream tensors copied into ``model`` by hand (independent of the converter)."""
    with torch.no_grad():
        for name in ("prompt_context", "prompt_state_normal", "prompt_state_abnormal",
                     "temperature_pixel", "temperature_image"):
            getattr(model, name).copy_(s[name])
        for ours, theirs in ((model.image_specific_encoder, "context_encoder"),
                             (model.image_agnostic_encoder, "state_encoder")):
            for head, upstream in (("mean", "weight_mean"), ("log_variance",
                                                             "weight_log_variance")):
                for i in (0, 2, 4):
                    layer = getattr(ours, head)[i]
                    layer.weight.copy_(s[f"{theirs}.{upstream}.module.{i}.weight"])
                    layer.bias.copy_(s[f"{theirs}.{upstream}.module.{i}.bias"])
        for p in "uwb":
            layer = getattr(model.image_specific_flow, f"amortize_{p}")
            layer.weight.copy_(s[f"PFL_context.amor_{p}.weight"])
            layer.bias.copy_(s[f"PFL_context.amor_{p}.bias"])
        for name in ("normal", "abnormal"):
            flow = getattr(model, f"{name}_flow")
            flow.u.copy_(s[f"PFL_{name}.amor_u"][0, :, :, 0])
            flow.w.copy_(s[f"PFL_{name}.amor_w"][0, :, 0, :])
            flow.b.copy_(s[f"PFL_{name}.amor_b"][0, :, 0, 0])
            flow.state.copy_(s[f"PFL_{name}.state"][0])
        model.rca.query.weight.copy_(s["RCA.q_proj_pre.weight"][:, :, 0])
        model.rca.query.bias.copy_(s["RCA.q_proj_pre.bias"])
        for i in range(4):
            model.rca.patch_projections[i].weight.copy_(s[f"RCA.linear_proj.{i}.weight"])
        for ours, theirs in (("fuse", "fuse_modules"), ("compress", "compress"),
                             ("post", "post_process")):
            getattr(model.fusion, ours).weight.copy_(s[f"fuse.{theirs}.weight"])
            getattr(model.fusion, ours).bias.copy_(s[f"fuse.{theirs}.bias"])
        for name in ("class_mapping", "image_mapping"):
            getattr(model, name).weight.copy_(s[f"{name}.weight"])
            getattr(model, name).bias.copy_(s[f"{name}.bias"])


def write(path: Path, state: dict) -> Path:
    torch.save({"MyModel": state}, path)
    return path


def test_import_round_trip_equals_direct_parameters(backbone: Backbone, images: torch.Tensor,
                                                    tmp_path: Path) -> None:
    state = upstream_state()
    config = {**FAST, "image_fusion_head": True, "classifier_epochs": 1}
    out = import_checkpoint("bayes_pfl", write(tmp_path / "train_visa.pth", state),
                            tmp_path / "imported.pt", config, backbone=backbone)
    imported = load_method_from_checkpoint(out, backbone=backbone)
    torch.manual_seed(5)
    direct = build_method("bayes_pfl", config, backbone=backbone)
    set_directly(direct, state)
    expected, actual = predict(direct, images, 2), predict(imported, images, 2)
    assert torch.equal(actual.image_scores, expected.image_scores)
    assert torch.equal(actual.anomaly_maps, expected.anomaly_maps)


def test_bad_upstream_files_are_clear_errors(backbone: Backbone, tmp_path: Path) -> None:
    state = upstream_state()
    del state["PFL_normal.state"]
    with pytest.raises(ValueError, match=r"broken\.pth is not an upstream bayes_pfl .*"
                                         r"normal_flow\.state"):
        import_checkpoint("bayes_pfl", write(tmp_path / "broken.pth", state),
                          tmp_path / "out.pt", FAST, backbone=backbone)
    extra = upstream_state()
    extra["mystery"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected \['mystery'\]"):
        import_checkpoint("bayes_pfl", write(tmp_path / "x.pth", extra), tmp_path / "out.pt",
                          FAST, backbone=backbone)
    twin = upstream_state()
    twin["PFL_normal.encoder.weight_mean.module.0.bias"] += 1
    with pytest.raises(ValueError, match="differs from 'state_encoder"):
        import_checkpoint("bayes_pfl", write(tmp_path / "t.pth", twin), tmp_path / "out.pt",
                          FAST, backbone=backbone)
    with pytest.raises(ValueError, match="768"):
        import_checkpoint("bayes_pfl", write(tmp_path / "vit_l.pth", upstream_state(768, 1024)),
                          tmp_path / "out.pt", FAST, backbone=backbone)
    assert not (tmp_path / "out.pt").exists()
