"""AdaptCLIP on the tiny random-weight backbone: scores against an independent computation,
the alternating schedules, batch-norm state, upstream checkpoint import, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from scipy.ndimage import gaussian_filter
from torch import nn

from tests.method_fixtures import SIZE, TINY, seeded_method, trainer_batch
from zsbench.anomaly_maps import gaussian_smooth
from zsbench.backbone import Backbone
from zsbench.checkpoint_import import import_checkpoint
from zsbench.checkpoints import load_method_from_checkpoint
from zsbench.errors import CheckpointError, ConfigError
from zsbench.method import build_method, describe_method, make_config
from zsbench.methods.adaptclip import AdaptCLIP, fuse
from zsbench.prompt_ensembles import WINCLIP_ANOMALIB_TEMPLATES
from zsbench.synthetic import synthetic_records
from zsbench.train import TrainConfig, train_method


def make(backbone: Backbone, seed: int = 1, **overrides: object) -> AdaptCLIP:
    return seeded_method("adaptclip", {**TINY, **overrides}, backbone, seed)


def randomize_norms(method: AdaptCLIP, seed: int = 2) -> None:
    """Batch-norm affine and running statistics away from their identity initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in method.visual_adapter.modules():
            if isinstance(module, nn.BatchNorm1d):
                n = module.num_features
                module.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                module.bias.copy_(0.3 * torch.randn(n, generator=g))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                module.running_var.copy_(0.5 + torch.rand(n, generator=g))


@pytest.fixture(scope="module")
def method(backbone: Backbone) -> AdaptCLIP:
    built = make(backbone)
    randomize_norms(built)
    return built


@pytest.fixture(scope="module")
def batch(backbone: Backbone) -> dict[str, object]:
    """Two normal and two anomalous synthetic images, as the trainer sees them."""
    records = synthetic_records("synthetic_a", size=64, n_normal=2, n_anomalous=2)
    picked = [r for r in records if r["source_path"].startswith("stripes/")][:4]
    picked.sort(key=lambda r: r["label"])
    assert [r["label"] for r in picked] == [0, 0, 1, 1]
    return trainer_batch(picked, backbone)


def test_registered_with_prompts() -> None:
    described = describe_method("adaptclip")
    assert described["info"]["trainable"] and not described["info"]["class_aware"]
    assert not described["info"]["few_shot"]
    prompts = described["prompts"]
    learned = " ".join(["X"] * 12) + " ."
    assert prompts["textual_adapter"]["normal"] == learned == prompts["textual_adapter"]["abnormal"]
    static = prompts["visual_adapter_static"]
    assert len(static["normal"]) == 7 * 21 and len(static["abnormal"]) == 4 * 21
    assert static["normal"][0] == "a cropped photo of the object."
    assert static["abnormal"][-1] == "a photo of a object with damage for anomaly detection."
    defaults = {o["name"]: o["default"] for o in described["options"]}
    assert defaults["sigma"] == 4.0 and defaults["n_ctx"] == 12
    assert defaults["adapter_reduction"] == 4 and defaults["vv_from"] == 6
    assert defaults["fusion"] == "mean" and defaults["schedule"] == "simultaneous"
    assert defaults["static_prompt_averaging"] == "raw" and defaults["global_ln_post"] is False


def test_predict_shapes_and_ranges(method: AdaptCLIP, batch: dict) -> None:
    with torch.inference_mode():
        scores, maps = method.predict(batch["image"], batch["class_name"])
    assert scores.shape == (4,) and maps.shape == (4, SIZE, SIZE)
    assert ((scores > 0) & (scores < 1)).all()
    assert ((maps > 0) & (maps < 1)).all() and maps.std() > 0


def reference_prediction(method: AdaptCLIP, backbone: Backbone, images: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """test.py's zero-shot scores, written out from the backbone and the raw weights."""
    features = backbone.encode_image(images, layers=(24,), vv_from=6, global_ln_post=False)
    cls, patches = features.global_embedding, features.patch_tokens[24]

    def residual_mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w1, bn, w2 = module.fc[0].weight, module.fc[1], module.fc[3].weight
        h = x @ w1.t()
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        return x + h.clamp_min(0) @ w2.t()

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    states = {"normal": ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw",
                         "{} without defect", "{} without damage"],
              "abnormal": ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"]}
    static = unit(torch.stack([
        backbone.encode_text_features([t.format(s.format("object")) for s in side
                                       for t in WINCLIP_ANOMALIB_TEMPLATES]).mean(dim=0)
        for side in states.values()]))
    ids = backbone.tokenize([" ".join(["X"] * 12) + "."] * 2)
    embeddings = backbone.token_embedding(ids).clone()
    embeddings[:, 1:13] = method.textual_adapter.ctx
    learned = unit(backbone.encode_text(ids, embeddings))

    adapter = method.visual_adapter
    v_cls, v_patches = unit(residual_mlp(adapter.global_adapter, cls)), \
        unit(residual_mlp(adapter.local_adapter, patches))
    p_v = (v_cls @ static.t() / 0.07).softmax(-1)[:, 1]
    p_t = (unit(cls) @ learned.t() / 0.07).softmax(-1)[:, 1]
    maps = []
    for tokens, text in ((v_patches, static), (unit(patches), learned)):
        probs = (tokens @ text.t() / 0.07).softmax(-1)[..., 1].reshape(-1, 1, 4, 4)
        maps.append(F.interpolate(probs, size=(SIZE, SIZE), mode="bilinear")[:, 0])
    fused = ((maps[0] + maps[1]) / 2).numpy().astype(np.float64)
    pixel = torch.from_numpy(np.stack([gaussian_filter(m, sigma=4) for m in fused])).float()
    image = (p_v + p_t + pixel.flatten(1).amax(1)) / 3
    return image, pixel


def test_scores_equal_an_independent_computation(method: AdaptCLIP, backbone: Backbone,
                                                 batch: dict) -> None:
    with torch.no_grad():
        expected_image, expected_pixel = reference_prediction(method, backbone, batch["image"])
        scores, maps = method.predict(batch["image"], batch["class_name"])
    torch.testing.assert_close(maps, expected_pixel, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores, expected_image, atol=1e-5, rtol=1e-4)


def test_fusion_and_single_branch_presets(backbone: Backbone, method: AdaptCLIP,
                                          batch: dict) -> None:
    a, b = torch.tensor([0.2, 0.5]), torch.tensor([0.6, 0.5])
    torch.testing.assert_close(fuse([a, b], "mean"), torch.tensor([0.4, 0.5]))
    torch.testing.assert_close(fuse([a, b], "harmonic"), torch.tensor([0.3, 0.5]))
    state = method.trainable_state_dict()
    outputs = {}
    for preset in ("textual-only", "visual-only", None):
        config = make_config("adaptclip", TINY, preset=preset)
        other = build_method("adaptclip", config, backbone=backbone)
        other.load_trainable_state_dict(state)
        with torch.no_grad():
            outputs[preset] = other.predict(batch["image"], batch["class_name"])
            full = other.forward_branches(batch["image"], ("visual", "textual"))
        if preset is not None:
            branch = config.branches
            assert other.branches == (branch,)
            own_map = other.probability_map(full[branch], batch["image"], SIZE)[:, 1]
            torch.testing.assert_close(outputs[preset].anomaly_maps, gaussian_smooth(own_map, 4))
            own_score = full[branch].image_logits.softmax(-1)[:, 1]
            torch.testing.assert_close(outputs[preset].image_scores, (
                own_score + outputs[preset].anomaly_maps.flatten(1).amax(1)) / 2)
            trainable = {id(p) for g in other.parameter_groups() for p in g["params"]}
            textual_ids = {id(p) for p in other.textual_adapter.parameters()}
            assert (trainable == textual_ids) == (branch == "textual")
    both = outputs[None].anomaly_maps
    mean_of_single = (outputs["textual-only"].anomaly_maps + outputs["visual-only"].anomaly_maps)
    # smoothing is linear: the fused map is the mean of the single-branch maps
    torch.testing.assert_close(both, mean_of_single / 2, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(outputs["textual-only"].anomaly_maps,
                              outputs["visual-only"].anomaly_maps)


def test_each_branch_learns_against_the_other_modality_frozen(backbone: Backbone,
                                                              method: AdaptCLIP,
                                                              batch: dict) -> None:
    """Alternating learning: the textual loss does not see the visual adapter and vice versa,
    so the gradients of the summed loss are each branch's own."""
    other = make(backbone)
    other.load_trainable_state_dict(method.trainable_state_dict())
    other.eval()
    total, parts = other.loss(batch)
    total.backward()
    grads = {n: p.grad.clone() for n, p in other.named_parameters() if p.grad is not None}
    with torch.no_grad():
        other.textual_adapter.ctx.add_(0.5)
        _, after_text_change = other.loss(batch)
    assert after_text_change["visual_image_ce"] == parts["visual_image_ce"]
    assert after_text_change["visual_segmentation"] == parts["visual_segmentation"]
    assert after_text_change["textual_segmentation"] != parts["textual_segmentation"]
    # the textual loss alone gives the same ctx gradient as the total
    textual = make(backbone, branches="textual")
    textual.load_trainable_state_dict(method.trainable_state_dict())
    textual.eval()
    textual.loss(batch)[0].backward()
    torch.testing.assert_close(textual.textual_adapter.ctx.grad, grads["textual_adapter.ctx"])
    assert textual.visual_adapter.local_adapter.fc[0].weight.grad is None


def test_alternating_schedules(backbone: Backbone, batch: dict) -> None:
    steps = make(backbone, schedule="alternate-steps").train()
    steps.start_epoch(1, 3)
    seen = []
    for _ in range(3):
        seen.append(steps.trained_branches())
        steps.zero_grad(set_to_none=True)
        total, parts = steps.loss(batch)
        total.backward()
        ctx_grad = steps.textual_adapter.ctx.grad
        adapter_grad = steps.visual_adapter.global_adapter.fc[0].weight.grad
        if seen[-1] == ("visual",):
            assert ctx_grad is None and adapter_grad is not None
            assert parts["textual_image_ce"] == 0.0 and parts["visual_image_ce"] > 0
        else:
            assert adapter_grad is None and ctx_grad is not None
            assert parts["visual_image_ce"] == 0.0 and parts["textual_image_ce"] > 0
    assert seen == [("visual",), ("textual",), ("visual",)]
    steps.start_epoch(2, 3)  # the counter restarts each epoch
    assert steps.trained_branches() == ("visual",)
    epochs = make(backbone, schedule="alternate-epochs")
    expected = {1: ("visual",), 2: ("textual",), 3: ("visual",)}
    for epoch, branches in expected.items():
        epochs.start_epoch(epoch, 3)
        assert epochs.trained_branches() == branches
    assert make(backbone).trained_branches() == ("visual", "textual")
    assert make(backbone, schedule="alternate-steps",
                branches="textual").trained_branches() == ("textual",)


def test_batch_norm_state_round_trips_and_single_image_batches(backbone: Backbone,
                                                               batch: dict) -> None:
    trained = make(backbone, seed=3).train()
    local_bn = trained.visual_adapter.local_adapter.fc[1]
    global_bn = trained.visual_adapter.global_adapter.fc[1]
    before_local, before_global = local_bn.running_mean.clone(), global_bn.running_mean.clone()
    one = {k: v[2:3] for k, v in batch.items()}
    total, _ = trained.loss(one)  # one image: the global adapter uses running statistics
    assert torch.isfinite(total)
    assert torch.equal(global_bn.running_mean, before_global)
    assert not torch.equal(local_bn.running_mean, before_local)  # 16 patch rows
    trained.loss(batch)
    assert not torch.equal(global_bn.running_mean, before_global)
    trained.eval()
    state = trained.trainable_state_dict()
    assert state["visual_adapter.global_adapter.fc.1.num_batches_tracked"].item() == 1
    fresh = make(backbone, seed=4)
    with torch.no_grad():
        before = fresh.predict(batch["image"], batch["class_name"])
    fresh.load_trainable_state_dict(state)
    with torch.no_grad():
        expected = trained.predict(batch["image"], batch["class_name"])
        actual = fresh.predict(batch["image"], batch["class_name"])
    assert torch.equal(actual.anomaly_maps, expected.anomaly_maps)
    assert not torch.allclose(before.anomaly_maps, expected.anomaly_maps)
    with pytest.raises(KeyError, match="running_var"):
        fresh.load_trainable_state_dict({k: v for k, v in state.items()
                                         if not k.endswith("local_adapter.fc.1.running_var")})


def test_bad_options_are_named(backbone: Backbone) -> None:
    for option, value in (("branches", "neither"), ("schedule", "weekly"), ("fusion", "max"),
                          ("static_prompt_averaging", "median"), ("adapter_reduction", 0),
                          ("n_ctx", 0), ("sigma", -1.0)):
        with pytest.raises(ConfigError, match=option):
            make(backbone, **{option: value})
    with pytest.raises(ValueError, match="patch_layer"):
        make(backbone, patch_layer=25)


# -- upstream checkpoints ----------------------------------------------------------------------

class UpstreamResMLP(nn.Module):
    """The layout of adaptclip.py's ``ResMLP`` (``fc`` = Linear, BatchNorm1d, ReLU, Linear)."""

    def __init__(self, width: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, width // reduction, bias=False),
                                nn.BatchNorm1d(width // reduction), nn.ReLU(inplace=True),
                                nn.Linear(width // reduction, width, bias=False))


class UpstreamVisualAdapter(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.local_adater = UpstreamResMLP(width)  # upstream's spelling
        self.global_adapter = UpstreamResMLP(width)


def upstream_checkpoint(width: int = 32, embed_dim: int = 32, seed: int = 9) -> dict:
    """train.py's ``epoch_15.pth`` layout in tiny shapes (text width ``width``)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    visual = UpstreamVisualAdapter(embed_dim)
    with torch.no_grad():
        for module in visual.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(3225)
    textual = {"ctx_pos": torch.randn(1, 1, 12, width, generator=g) * 0.02,
               "ctx_neg": torch.randn(1, 1, 12, width, generator=g) * 0.02,
               "token_prefix_pos": torch.randn(1, 1, 1, width, generator=g),
               "token_suffix_pos": torch.randn(1, 1, 64, width, generator=g),
               "token_prefix_neg": torch.randn(1, 1, 1, width, generator=g),
               "token_suffix_neg": torch.randn(1, 1, 64, width, generator=g),
               "tokenized_prompts_pos": torch.zeros(1, 1, 77, dtype=torch.int32),
               "tokenized_prompts_neg": torch.zeros(1, 1, 77, dtype=torch.int32)}
    pq = {"sharebn.0.weight": torch.ones(embed_dim), "local_adapter.0.0.weight":
          torch.randn(8, embed_dim, 3, 3, generator=g)}
    return {"textual_learner": textual, "visual_learner": visual.state_dict(),
            "pq_learner": pq}


def test_upstream_checkpoint_round_trip(backbone: Backbone, batch: dict, tmp_path: Path) -> None:
    checkpoint = upstream_checkpoint()
    source = tmp_path / "epoch_15.pth"
    torch.save(checkpoint, source)
    out = import_checkpoint("adaptclip", source, tmp_path / "imported.pt", TINY,
                            backbone=backbone)
    imported = load_method_from_checkpoint(out, backbone=backbone)

    direct = make(backbone, seed=6)
    visual = checkpoint["visual_learner"]
    with torch.no_grad():
        direct.textual_adapter.ctx[0].copy_(checkpoint["textual_learner"]["ctx_pos"][0, 0])
        direct.textual_adapter.ctx[1].copy_(checkpoint["textual_learner"]["ctx_neg"][0, 0])
        for ours, theirs in (("local_adapter", "local_adater"),
                             ("global_adapter", "global_adapter")):
            mlp = getattr(direct.visual_adapter, ours).fc
            mlp[0].weight.copy_(visual[f"{theirs}.fc.0.weight"])
            mlp[3].weight.copy_(visual[f"{theirs}.fc.3.weight"])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(mlp[1], name).copy_(visual[f"{theirs}.fc.1.{name}"])
    with torch.inference_mode():
        expected = direct.predict(batch["image"], batch["class_name"])
        actual = imported.predict(batch["image"], batch["class_name"])
    assert torch.equal(actual.image_scores, expected.image_scores)
    assert torch.equal(actual.anomaly_maps, expected.anomaly_maps)
    assert imported.trainable_state_dict()[
        "visual_adapter.local_adapter.fc.1.num_batches_tracked"].item() == 3225
    converted = AdaptCLIP.convert_upstream_checkpoint(checkpoint)
    assert converted["textual_adapter.ctx"].shape == (2, 12, 32)
    assert not any(k.startswith("pq") for k in converted)


def test_bad_upstream_checkpoints_are_clear_errors(backbone: Backbone, tmp_path: Path) -> None:
    def attempt(obj: object, name: str) -> str:
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError) as err:
            import_checkpoint("adaptclip", tmp_path / name, tmp_path / "out.pt", TINY,
                              backbone=backbone)
        assert not (tmp_path / "out.pt").exists()
        return str(err.value)

    good = upstream_checkpoint()
    no_visual = {k: v for k, v in good.items() if k != "visual_learner"}
    assert "missing ['visual_learner']" in attempt(no_visual, "a.pth")
    renamed = {**good, "visual_learner": {k.replace("local_adater", "local_adapter"): v
                                          for k, v in good["visual_learner"].items()}}
    message = attempt(renamed, "b.pth")
    assert "visual_learner.local_adater.fc.0.weight" in message and "unexpected" in message
    no_ctx = {**good, "textual_learner": {k: v for k, v in good["textual_learner"].items()
                                          if k != "ctx_neg"}}
    assert "textual_learner.ctx_neg" in attempt(no_ctx, "c.pth")
    message = attempt(upstream_checkpoint(width=768, embed_dim=768), "vit_l.pth")
    assert "vit_l.pth" in message and "(2, 12, 768)" in message and "(2, 12, 32)" in message
    assert "is not an upstream adaptclip" in attempt([1, 2], "d.pth")


# -- training ----------------------------------------------------------------------------------

def test_training_lowers_the_loss_and_changes_only_the_adapters(backbone: Backbone,
                                                                batch: dict) -> None:
    fresh = make(backbone, seed=5)
    backbone_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    declared = [p for g in fresh.parameter_groups() for p in g["params"]]
    declared_before = [p.detach().clone() for p in declared]
    fresh.eval()
    with torch.no_grad():
        initial, _ = fresh.loss(batch)
    records = Dataset.from_list(synthetic_records("synthetic_a", size=64, n_normal=2,
                                                  n_anomalous=2))
    outcome = train_method(fresh, [records], TrainConfig(epochs=3, batch_size=4))
    with torch.no_grad():
        final, _ = fresh.loss(batch)
    assert [record["epoch"] for record in outcome.history] == [1, 2, 3]
    assert final < initial
    assert all(not torch.equal(p, before)
               for p, before in zip(declared, declared_before, strict=True))
    assert {id(p) for p in declared} == {id(p) for p in fresh.visual_adapter.parameters()} | \
        {id(p) for p in fresh.textual_adapter.parameters()}
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
