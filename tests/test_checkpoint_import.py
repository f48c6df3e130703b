"""Importing upstream AnomalyCLIP checkpoints (the released format, tiny-backbone shapes)."""

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
