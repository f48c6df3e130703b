"""Importing upstream AnomalyCLIP, FAPrompt and TPS checkpoints (their released formats, in
tiny-backbone shapes)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from tests.method_fixtures import SIZE, TINY
from zsbench.backbone import Backbone
from zsbench.checkpoint_import import import_checkpoint
from zsbench.method import build_method
from zsbench.methods.anomalyclip import AnomalyCLIP
from zsbench.methods.faprompt import FAPrompt
from zsbench.methods.tps import TPS
from zsbench.registry import METHODS
from zsbench.train import load_method_from_checkpoint, read_checkpoint_metadata


def upstream_state(width: int = 32, seed: int = 7) -> OrderedDict[str, torch.Tensor]:
    """A prompt-learner state laid out like the released ``epoch_15.pth`` (width ``width``)."""
    g = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    state["ctx_pos"] = torch.randn(1, 1, 12, width, generator=g) * 0.02
    state["ctx_neg"] = torch.randn(1, 1, 12, width, generator=g) * 0.02
    for i in range(8):
        state[f"compound_prompts_text.{i}"] = torch.randn(4, width, generator=g) * 0.02
    for i in range(8):  # never used upstream
        state[f"compound_prompt_projections.{i}.weight"] = torch.randn(896, width, generator=g)
        state[f"compound_prompt_projections.{i}.bias"] = torch.randn(896, generator=g)
    for side in ("pos", "neg"):  # token buffers
        state[f"token_prefix_{side}"] = torch.randn(1, 1, 1, width, generator=g)
        state[f"token_suffix_{side}"] = torch.randn(1, 1, 64, width, generator=g)
    return state


def write(path: Path, state: dict) -> Path:
    torch.save({"prompt_learner": state}, path)
    return path


def test_round_trip_predictions_equal_direct_parameters(backbone: Backbone, tmp_path: Path
                                                        ) -> None:
    state = upstream_state()
    source = write(tmp_path / "epoch_15.pth", state)
    out = import_checkpoint("anomalyclip", source, tmp_path / "imported.pt", TINY,
                            backbone=backbone)
    meta = read_checkpoint_metadata(out)
    assert meta["method"] == "anomalyclip" and meta["epoch"] == 0
    assert meta["extra"]["imported_from"]["file"] == "epoch_15.pth"
    assert len(meta["extra"]["imported_from"]["sha256"]) == 64
    imported = load_method_from_checkpoint(out, backbone=backbone)

    direct = build_method("anomalyclip", TINY, backbone=backbone)
    with torch.no_grad():
        direct.prompt_learner.ctx[0].copy_(state["ctx_pos"][0, 0])
        direct.prompt_learner.ctx[1].copy_(state["ctx_neg"][0, 0])
        for i, prompt in enumerate(direct.prompt_learner.deep_prompts):
            prompt.copy_(state[f"compound_prompts_text.{i}"])
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        expected = direct.predict(images, ["object", "object"])
        actual = imported.predict(images, ["object", "object"])
    assert torch.equal(actual.image_scores, expected.image_scores)
    assert torch.equal(actual.anomaly_maps, expected.anomaly_maps)

    # the prompt learner's own upstream loader agrees with the converter
    reference = build_method("anomalyclip", TINY, backbone=backbone)
    reference.prompt_learner.load_anomalyclip_state_dict({"prompt_learner": state})
    converted = imported.trainable_state_dict()
    assert all(torch.equal(converted[k], v) for k, v in reference.trainable_state_dict().items())


def test_converter_maps_keys_and_ignores_unused() -> None:
    converted = AnomalyCLIP.convert_upstream_checkpoint({"prompt_learner": upstream_state()})
    assert sorted(converted) == ["prompt_learner.ctx"] + \
        [f"prompt_learner.deep_prompts.{i}" for i in range(8)]
    assert converted["prompt_learner.ctx"].shape == (2, 12, 32)
    bare = AnomalyCLIP.convert_upstream_checkpoint(upstream_state())  # without the wrapper
    assert all(torch.equal(bare[k], converted[k]) for k in converted)


def test_wrong_width_names_key_and_both_shapes(backbone: Backbone, tmp_path: Path) -> None:
    source = write(tmp_path / "vit_l.pth", upstream_state(width=768))
    with pytest.raises(ValueError) as err:
        import_checkpoint("anomalyclip", source, tmp_path / "out.pt", TINY, backbone=backbone)
    message = str(err.value)
    assert "vit_l.pth" in message and "'prompt_learner.ctx'" in message
    assert "(2, 12, 768)" in message and "(2, 12, 32)" in message
    assert not (tmp_path / "out.pt").exists()


def test_bad_upstream_files_are_clear_errors(backbone: Backbone, tmp_path: Path) -> None:
    state = upstream_state()
    del state["ctx_neg"]
    source = write(tmp_path / "broken.pth", state)
    with pytest.raises(ValueError, match=r"broken\.pth is not an upstream anomalyclip .*ctx_neg"):
        import_checkpoint("anomalyclip", source, tmp_path / "out.pt", TINY, backbone=backbone)
    extra = upstream_state()
    extra["mystery"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unexpected \\['mystery'\\]"):
        import_checkpoint("anomalyclip", write(tmp_path / "x.pth", extra), tmp_path / "out.pt",
                          TINY, backbone=backbone)
    fewer = upstream_state()
    del fewer["compound_prompts_text.7"]
    with pytest.raises(ValueError, match="prompt_learner.deep_prompts.7"):
        import_checkpoint("anomalyclip", write(tmp_path / "y.pth", fewer), tmp_path / "out.pt",
                          TINY, backbone=backbone)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        import_checkpoint("anomalyclip", tmp_path / "nowhere.pth", tmp_path / "out.pt", TINY)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not torch")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        import_checkpoint("anomalyclip", garbage, tmp_path / "out.pt", TINY)


def test_method_without_converter_is_a_clear_error(tmp_path: Path) -> None:
    source = write(tmp_path / "epoch_15.pth", upstream_state())
    with pytest.raises(ValueError, match="'coop' cannot import upstream checkpoints.*anomalyclip"):
        import_checkpoint("coop", source, tmp_path / "out.pt", TINY)


# -- FAPrompt ----------------------------------------------------------------------------------

def faprompt_upstream_state(width: int = 32, embed_dim: int = 32, prompts: int = 10,
                            seed: int = 11) -> OrderedDict[str, torch.Tensor]:
    """FAPrompt.py's prompt-learner state (tiny shapes): 5 normal ctx, ``prompts`` abnormal
    prompts of 2 own ctx, 8 deep prompts, the prior network ``Linear(embed_dim * 10, 480)``."""
    g = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    state["ctx_pos"] = torch.randn(1, 1, 5, width, generator=g) * 0.02
    state["ctx_neg"] = torch.randn(1, prompts, 2, width, generator=g) * 0.02
    state["token_prefix_pos"] = torch.randn(1, 1, 1, width, generator=g)
    state["token_suffix_pos"] = torch.randn(1, 1, 71, width, generator=g)
    state["token_prefix_neg"] = torch.randn(1, prompts, 1, width, generator=g)
    state["token_suffix_neg"] = torch.randn(1, prompts, 69, width, generator=g)
    state["tokenized_prompts_pos"] = torch.zeros(1, 1, 77, dtype=torch.int32)
    state["tokenized_prompts_neg"] = torch.zeros(1, prompts, 77, dtype=torch.int32)
    state["patch_meta_net.linear1.weight"] = torch.randn(480, embed_dim * 10, generator=g) * 0.05
    state["patch_meta_net.linear1.bias"] = torch.randn(480, generator=g) * 0.05
    state["patch_meta_net.linear2.weight"] = torch.randn(width, 480, generator=g) * 0.05
    state["patch_meta_net.linear2.bias"] = torch.randn(width, generator=g) * 0.05
    for i in range(8):
        state[f"compound_prompts_text.{i}"] = torch.randn(4, width, generator=g) * 0.02
    for i in range(8):  # never used upstream
        state[f"compound_prompt_projections.{i}.weight"] = torch.randn(896, width, generator=g)
        state[f"compound_prompt_projections.{i}.bias"] = torch.randn(896, generator=g)
    return state


def test_faprompt_round_trip_equals_direct_parameters(backbone: Backbone, tmp_path: Path
                                                      ) -> None:
    state = faprompt_upstream_state()
    source = write(tmp_path / "faprompt.pth", state)
    out = import_checkpoint("faprompt", source, tmp_path / "imported.pt", TINY,
                            backbone=backbone)
    assert read_checkpoint_metadata(out)["extra"]["imported_from"]["file"] == "faprompt.pth"
    imported = load_method_from_checkpoint(out, backbone=backbone)

    direct = build_method("faprompt", TINY, backbone=backbone)
    learner = direct.prompt_learner
    with torch.no_grad():
        learner.ctx_group["normal"].copy_(state["ctx_pos"][0, 0])
        for i in range(10):
            learner.ctx_group[f"abnormal{i}"].copy_(state["ctx_neg"][0, i])
        for i, prompt in enumerate(learner.deep_prompts):
            prompt.copy_(state[f"compound_prompts_text.{i}"])
        first, _, second = direct.prior.net
        first.weight.copy_(state["patch_meta_net.linear1.weight"])
        first.bias.copy_(state["patch_meta_net.linear1.bias"])
        second.weight.copy_(state["patch_meta_net.linear2.weight"])
        second.bias.copy_(state["patch_meta_net.linear2.bias"])
    expected_state, actual_state = direct.trainable_state_dict(), imported.trainable_state_dict()
    assert sorted(actual_state) == sorted(expected_state)
    assert all(torch.equal(actual_state[k], v) for k, v in expected_state.items())
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        expected = direct.predict(images, ["object", "object"])
        actual = imported.predict(images, ["object", "object"])
    assert torch.equal(actual.image_scores, expected.image_scores)
    assert torch.equal(actual.anomaly_maps, expected.anomaly_maps)


def test_faprompt_converter_ignores_unused_and_accepts_the_bare_state() -> None:
    wrapped = FAPrompt.convert_upstream_checkpoint({"prompt_learner": faprompt_upstream_state()})
    assert sorted(wrapped) == sorted(
        ["prompt_learner.ctx_group.normal"]
        + [f"prompt_learner.ctx_group.abnormal{i}" for i in range(10)]
        + [f"prompt_learner.deep_prompts.{i}" for i in range(8)]
        + [f"prior.net.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")])
    bare = FAPrompt.convert_upstream_checkpoint(faprompt_upstream_state())
    assert all(torch.equal(bare[k], wrapped[k]) for k in wrapped)


def test_faprompt_wrong_shape_names_key_and_both_shapes(backbone: Backbone, tmp_path: Path
                                                        ) -> None:
    state = faprompt_upstream_state()
    state["patch_meta_net.linear1.weight"] = torch.zeros(480, 7680)  # ViT-L/14's prior input
    source = write(tmp_path / "vit_l.pth", state)
    with pytest.raises(ValueError) as err:
        import_checkpoint("faprompt", source, tmp_path / "out.pt", TINY, backbone=backbone)
    message = str(err.value)
    assert "vit_l.pth" in message and "'prior.net.0.weight'" in message
    assert "(480, 7680)" in message and "(480, 320)" in message
    assert not (tmp_path / "out.pt").exists()

    wide = write(tmp_path / "wide.pth", faprompt_upstream_state(width=768, embed_dim=768))
    with pytest.raises(ValueError, match=r"'prompt_learner\.ctx_group\.normal' has shape "
                                         r"\(5, 768\).*\(5, 32\)"):
        import_checkpoint("faprompt", wide, tmp_path / "out.pt", TINY, backbone=backbone)


@pytest.mark.parametrize("key", ["ctx_neg", "patch_meta_net.linear2.bias"])
def test_faprompt_missing_key_is_named(key: str, backbone: Backbone, tmp_path: Path) -> None:
    state = faprompt_upstream_state()
    del state[key]
    source = write(tmp_path / "broken.pth", state)
    with pytest.raises(ValueError, match=rf"broken\.pth is not an upstream faprompt checkpoint: "
                                         rf".*missing \['{key}'\]"):
        import_checkpoint("faprompt", source, tmp_path / "out.pt", TINY, backbone=backbone)


def test_faprompt_other_mismatches_are_named(backbone: Backbone, tmp_path: Path) -> None:
    fewer = faprompt_upstream_state()
    del fewer["compound_prompts_text.7"]
    with pytest.raises(ValueError, match=r"missing \['prompt_learner\.deep_prompts\.7'\]"):
        import_checkpoint("faprompt", write(tmp_path / "a.pth", fewer), tmp_path / "out.pt",
                          TINY, backbone=backbone)
    extra = faprompt_upstream_state()
    extra["mystery"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected \['mystery'\]"):
        import_checkpoint("faprompt", write(tmp_path / "b.pth", extra), tmp_path / "out.pt",
                          TINY, backbone=backbone)
    five = write(tmp_path / "c.pth", faprompt_upstream_state(prompts=5))  # config says 10
    with pytest.raises(ValueError, match=r"missing \['prompt_learner\.ctx_group\.abnormal5'"):
        import_checkpoint("faprompt", five, tmp_path / "out.pt", TINY, backbone=backbone)
    two_classes = faprompt_upstream_state()
    two_classes["ctx_pos"] = torch.zeros(2, 1, 5, 32)
    with pytest.raises(ValueError, match=r"'ctx_pos' has shape \(2, 1, 5, 32\)"):
        import_checkpoint("faprompt", write(tmp_path / "d.pth", two_classes),
                          tmp_path / "out.pt", TINY, backbone=backbone)


# -- TPS ---------------------------------------------------------------------------------------

TPS_TINY = {**TINY, "pathway_heads": 4, "train_text_projection": True}


def tps_former_state(width: int = 32, vision_width: int = 32, seed: int = 13
                     ) -> OrderedDict[str, torch.Tensor]:
    """pathway.py's ``PathWay`` state (tiny shapes), image branch included."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    state["text_projection"] = randn(width, width)
    state["img_projection"] = randn(vision_width, width)
    for i in range(6):
        state[f"ln_{i}.weight"] = 1 + randn(width)
        state[f"ln_{i}.bias"] = randn(width)
    for name in ("text_attention", "cross_attention", "img_attention"):
        state[f"{name}.in_proj_weight"] = randn(3 * width, width)
        state[f"{name}.in_proj_bias"] = randn(3 * width)
        state[f"{name}.out_proj.weight"] = randn(width, width)
        state[f"{name}.out_proj.bias"] = randn(width)
    for name in ("text_feed", "img_feed"):
        state[f"{name}.0.weight"] = randn(4 * width, width)
        state[f"{name}.0.bias"] = randn(4 * width)
        state[f"{name}.2.weight"] = randn(width, 4 * width)
        state[f"{name}.2.bias"] = randn(width)
    return state


def tps_upstream_checkpoint(width: int = 32) -> dict[str, OrderedDict[str, torch.Tensor]]:
    """TPS train.py's file: the global and shunt learners (AnomalyCLIP layout) and the pathway."""
    return {"prompt_learner": upstream_state(width, seed=21),
            "class_learner": upstream_state(width, seed=22),
            "former": tps_former_state(width)}


def test_tps_round_trip_equals_direct_parameters(backbone: Backbone, tmp_path: Path) -> None:
    checkpoint = tps_upstream_checkpoint()
    source = tmp_path / "tps.pth"
    torch.save(checkpoint, source)
    out = import_checkpoint("tps", source, tmp_path / "imported.pt", TPS_TINY,
                            backbone=backbone)
    imported = load_method_from_checkpoint(out, backbone=backbone)

    direct = build_method("tps", TPS_TINY, backbone=backbone)
    former = checkpoint["former"]
    with torch.no_grad():
        for learner, key in ((direct.global_prompts, "prompt_learner"),
                             (direct.shunt_prompts, "class_learner")):
            learner.ctx[0].copy_(checkpoint[key]["ctx_pos"][0, 0])
            learner.ctx[1].copy_(checkpoint[key]["ctx_neg"][0, 0])
            for i, prompt in enumerate(learner.deep_prompts):
                prompt.copy_(checkpoint[key][f"compound_prompts_text.{i}"])
        pathway = direct.pathway
        for i in range(5):
            norm = getattr(pathway, f"ln_{i}")
            norm.weight.copy_(former[f"ln_{i}.weight"])
            norm.bias.copy_(former[f"ln_{i}.bias"])
        for attention, name in ((pathway.patch_attention, "text_attention"),
                                (pathway.global_text_attention, "cross_attention")):
            attention.in_proj_weight.copy_(former[f"{name}.in_proj_weight"])
            attention.in_proj_bias.copy_(former[f"{name}.in_proj_bias"])
            attention.out_proj.weight.copy_(former[f"{name}.out_proj.weight"])
            attention.out_proj.bias.copy_(former[f"{name}.out_proj.bias"])
        for i in (0, 2):
            pathway.feed_forward[i].weight.copy_(former[f"text_feed.{i}.weight"])
            pathway.feed_forward[i].bias.copy_(former[f"text_feed.{i}.bias"])
        direct.text_projection.copy_(former["text_projection"])
    expected_state, actual_state = direct.trainable_state_dict(), imported.trainable_state_dict()
    assert sorted(actual_state) == sorted(expected_state)
    assert all(torch.equal(actual_state[k], v) for k, v in expected_state.items())
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():  # the pathway is used (drop_pathway_at_test is false)
        expected = direct.predict(images, ["object", "object"])
        actual = imported.predict(images, ["object", "object"])
    assert torch.equal(actual.image_scores, expected.image_scores)
    assert torch.equal(actual.anomaly_maps, expected.anomaly_maps)


def test_tps_converter_ignores_the_image_branch() -> None:
    converted = TPS.convert_upstream_checkpoint(tps_upstream_checkpoint())
    assert "text_projection" in converted
    assert not any("img" in k or "ln_5" in k or "projections" in k or "token" in k
                   for k in converted)
    assert len(converted) == 2 * (1 + 8) + 22 + 1  # 2 learners, the pathway, text_projection


def test_tps_wrong_shape_names_key_and_both_shapes(backbone: Backbone, tmp_path: Path) -> None:
    checkpoint = tps_upstream_checkpoint()
    checkpoint["former"]["text_projection"] = torch.zeros(768, 768)
    source = tmp_path / "vit_l.pth"
    torch.save(checkpoint, source)
    with pytest.raises(ValueError) as err:
        import_checkpoint("tps", source, tmp_path / "out.pt", TPS_TINY, backbone=backbone)
    message = str(err.value)
    assert "vit_l.pth" in message and "'text_projection'" in message
    assert "(768, 768)" in message and "(32, 32)" in message
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize(("part", "key", "named"), [
    (None, "class_learner", r"missing \['class_learner'\]"),
    ("class_learner", "ctx_pos", r"'class_learner': .*missing \['ctx_pos'\]"),
    ("former", "cross_attention.out_proj.bias",
     r"missing \['former\.cross_attention\.out_proj\.bias'\]"),
    ("former", "text_projection", r"missing \['former\.text_projection'\]"),
])
def test_tps_missing_key_is_named(part: str | None, key: str, named: str, backbone: Backbone,
                                  tmp_path: Path) -> None:
    checkpoint = tps_upstream_checkpoint()
    del (checkpoint if part is None else checkpoint[part])[key]
    source = tmp_path / "broken.pth"
    torch.save(checkpoint, source)
    with pytest.raises(ValueError, match=r"broken\.pth is not an upstream tps checkpoint: .*"
                                         + named):
        import_checkpoint("tps", source, tmp_path / "out.pt", TPS_TINY, backbone=backbone)


def test_tps_unexpected_keys_and_text_projection_option(backbone: Backbone, tmp_path: Path
                                                         ) -> None:
    checkpoint = tps_upstream_checkpoint()
    checkpoint["former"]["mystery.weight"] = torch.zeros(3)
    torch.save(checkpoint, tmp_path / "a.pth")
    with pytest.raises(ValueError, match=r"unexpected \['former\.mystery\.weight'\]"):
        import_checkpoint("tps", tmp_path / "a.pth", tmp_path / "out.pt", TPS_TINY,
                          backbone=backbone)
    torch.save({**tps_upstream_checkpoint(), "epoch": torch.tensor(15)}, tmp_path / "b.pth")
    with pytest.raises(ValueError, match=r"unexpected \['epoch'\]"):
        import_checkpoint("tps", tmp_path / "b.pth", tmp_path / "out.pt", TPS_TINY,
                          backbone=backbone)
    # the trained text_projection replaces CLIP's upstream: a method without it cannot take it
    torch.save(tps_upstream_checkpoint(), tmp_path / "c.pth")
    with pytest.raises(ValueError, match=r"unexpected \['text_projection'\]"):
        import_checkpoint("tps", tmp_path / "c.pth", tmp_path / "out.pt",
                          {**TPS_TINY, "train_text_projection": False}, backbone=backbone)


# -- the CLI -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["faprompt", "tps"])
def test_cli_imports_faprompt_and_tps(method: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from zsbench.cli import app

    source = tmp_path / f"{method}.pth"
    if method == "faprompt":
        write(source, faprompt_upstream_state())
        sets: list[str] = []
    else:
        torch.save(tps_upstream_checkpoint(), source)
        sets = ["--set", "train_text_projection=true", "--set", "pathway_heads=4"]
    out = tmp_path / "imported.pt"
    result = CliRunner().invoke(app, ["import-checkpoint", str(source), "-m", method, "--out",
                                      str(out), "--backbone", "zsbench-tiny", "--pretrained",
                                      "none", *sets])
    assert result.exit_code == 0, result.output
    meta = read_checkpoint_metadata(out)
    assert meta["method"] == method and meta["extra"]["imported_from"]["file"] == source.name
    converted = METHODS.get(method).convert_upstream_checkpoint(
        torch.load(source, weights_only=True))
    stored = torch.load(out, weights_only=True)["state_dict"]
    assert sorted(stored) == sorted(converted)
    assert all(torch.equal(stored[k], v) for k, v in converted.items())
