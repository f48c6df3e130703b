"""One-image prediction (``zsbench predict`` and ``zsbench.predict``) with the tiny backbone."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import zsbench
from tests.method_fixtures import TINY
from zsbench.method import build_method
from zsbench.overlays import overlay_panel
from zsbench.prediction import PredictError
from zsbench.preprocess import image_to_tensor

TINY_FLAGS = ["--backbone", "zsbench-tiny", "--pretrained", "none", "--image-size", "56",
              "--device", "cpu"]


def write_png(path: Path, seed: int, size: tuple[int, int] = (40, 60)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_cli_predict_writes_overlay_and_prints_score(tmp_path):
    from zsbench.cli import app

    image = write_png(tmp_path / "part.png", 0)
    torch.manual_seed(0)  # the tiny backbone's random weights: the same in both runs
    result = CliRunner().invoke(app, ["predict", str(image), "-m", "clip", "-o",
                                      str(tmp_path / "out"), "--json", *TINY_FLAGS])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [Path(r["image"]).name for r in rows] == ["part.png"]
    assert math.isfinite(rows[0]["score"])
    overlay = tmp_path / "out" / "part_overlay.png"
    assert rows[0]["overlay"] == str(overlay)
    assert np.asarray(Image.open(overlay)).shape == (40, 2 * 60 + 4, 3)  # image | gap | map
    torch.manual_seed(0)
    table = CliRunner().invoke(app, ["predict", str(image), "-m", "clip", "-o",
                                     str(tmp_path / "out2"), *TINY_FLAGS])
    assert table.exit_code == 0, table.output
    assert f"{rows[0]['score']:.6g}" in table.output


def test_python_predict_matches_the_method_on_the_same_input(tmp_path):
    image = write_png(tmp_path / "a.png", 1)
    torch.manual_seed(0)
    results = zsbench.predict(image, "winclip", overrides=TINY, device="cpu",
                              out_dir=tmp_path / "out", class_name="bottle")
    torch.manual_seed(0)
    method = build_method("winclip", TINY)
    pil = Image.open(image)
    x = image_to_tensor(pil, 56, method.backbone.mean, method.backbone.std,
                        method.config.input_interpolation)[None]
    with torch.inference_mode():
        scores, maps = method.predict(x, ["bottle"])
    (result,) = results
    assert result.score == pytest.approx(float(scores[0]), rel=1e-6)
    assert result.anomaly_map.shape == (40, 60)
    expected = torch.nn.functional.interpolate(maps[None].float(), size=(40, 60),
                                               mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(result.anomaly_map, expected.numpy(), rtol=1e-5, atol=1e-6)
    written = np.asarray(Image.open(result.overlay))
    panel = overlay_panel(np.asarray(pil.convert("RGB")), np.zeros((40, 60), bool),
                          result.anomaly_map, float(result.anomaly_map.min()),
                          float(result.anomaly_map.max()))
    np.testing.assert_array_equal(written[:, 64:], panel[:, 128:])  # the heat-map panel


def test_trainable_needs_a_checkpoint_of_the_same_method(tmp_path):
    from zsbench.train import save_checkpoint

    image = write_png(tmp_path / "a.png", 2)
    with pytest.raises(PredictError, match="'coop' is trainable: pass a checkpoint"):
        zsbench.predict(image, "coop", overrides=TINY, device="cpu")
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_method("coop", TINY), tmp_path / "coop.pt", epoch=1)
    (result,) = zsbench.predict(image, "coop", checkpoint=ckpt, device="cpu")
    assert math.isfinite(result.score) and result.anomaly_map.shape == (40, 60)
    with pytest.raises(PredictError, match="of method 'coop', not 'anomalyclip'"):
        zsbench.predict(image, "anomalyclip", checkpoint=ckpt, device="cpu")


def test_transductive_method_needs_a_set_of_images(tmp_path):
    from zsbench.cli import app

    one = write_png(tmp_path / "a.png", 3)
    result = CliRunner().invoke(app, ["predict", str(one), "-m", "anovl", *TINY_FLAGS])
    assert result.exit_code == 1
    assert "transductive" in result.output and "needs a set of images" in result.output
    folder = tmp_path / "set"
    folder.mkdir()
    for seed in (4, 5):
        write_png(folder / f"img{seed}.png", seed)
    results = zsbench.predict(folder, "anovl", overrides=TINY, device="cpu")
    assert [Path(r.image).name for r in results] == ["img4.png", "img5.png"]


def test_bad_inputs_are_named(tmp_path):
    from zsbench.cli import app

    missing = tmp_path / "nope.png"
    result = CliRunner().invoke(app, ["predict", str(missing), "-m", "clip", *TINY_FLAGS])
    assert result.exit_code == 1 and "nope.png" in result.output
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = CliRunner().invoke(app, ["predict", str(broken), "-m", "clip", *TINY_FLAGS])
    assert result.exit_code == 1 and "cannot read the image" in result.output


def test_import_zsbench_stays_light():
    code = ("import sys, zsbench; assert 'torch' not in sys.modules; "
            "assert callable(zsbench.predict); import zsbench.prediction; "
            "assert callable(zsbench.predict)")
    subprocess.run([sys.executable, "-c", code], check=True)
