"""Golden regression tests: zsbench against the upstream AnomalyCLIP, FAPrompt and TPS outputs.

``../shared/golden/upstream-tiny`` (its README) holds, per case, the image scores and anomaly maps
that the unmodified upstream test code computed on a tiny seeded CLIP in the OpenAI weight format,
the learned-prompt checkpoint in the upstream file format, and the raw images. Each test
regenerates the tiny weights with the shared script, builds the backbone through
:func:`load_backbone` (config ``zsbench-golden-tiny``), imports the upstream checkpoint with the
public importer, preprocesses the raw images as the evaluator does and compares ``predict`` with
the upstream outputs to 1e-5. Skipped when the golden folder is absent; the shared folder is
``<repo>/../shared``, or the environment variable ``ZSBENCH_SHARED``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from zsbench.backbone import Backbone, load_backbone
from zsbench.checkpoint_import import import_checkpoint
from zsbench.method import build_method
from zsbench.preprocess import image_to_tensor
from zsbench.train import load_checkpoint_into, read_checkpoint_metadata

SHARED = Path(os.environ.get("ZSBENCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GOLDEN = SHARED / "golden" / "upstream-tiny"
CASES_FILE = GOLDEN / "cases.json"

pytestmark = pytest.mark.skipif(not CASES_FILE.is_file(),
                                reason=f"no golden upstream outputs at {GOLDEN}")

MODEL = "zsbench-golden-tiny"  # zsbench/backbone/model_configs/zsbench-golden-tiny.json
SIZE = 224
BATCH = 4
ATOL = 1e-5  # the README's tolerance; fp32 noise between two correct implementations ~2e-6
EXPECTED_CASES = {"anomalyclip_224", "anomalyclip_224_L2-4-6", "faprompt_224_bug",
                  "faprompt_224_fixed", "tps_224"}
CASES: dict[str, Any] = json.loads(CASES_FILE.read_text()) if CASES_FILE.is_file() else {}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP weights, regenerated with the shared script and checked by sha256.

    The file must be called ``tiny_clip.pt``: ``torch.save`` names the zip archive's root folder
    after the file, so the bytes (and the recorded sha256) depend on the name."""
    weights = CASES["weights"]
    out = tmp_path_factory.mktemp("golden") / "tiny_clip.pt"
    subprocess.run([sys.executable, str(GOLDEN / weights["script"]), "--out", str(out),
                    "--seed", str(weights["seed"])], check=True, capture_output=True, timeout=120)
    assert sha256(out) == weights["sha256"], "make_tiny_weights.py no longer gives the golden " \
        "weights (torch version?): the golden outputs do not apply"
    return out


@pytest.fixture(scope="module")
def golden_backbone(tiny_weights: Path) -> Backbone:
    return load_backbone(MODEL, pretrained=tiny_weights, image_size=SIZE)


def test_all_cases_present() -> None:
    assert set(CASES["cases"]) == EXPECTED_CASES


def test_model_config_is_the_golden_open_clip_config(golden_backbone: Backbone) -> None:
    assert open_clip.get_model_config(MODEL) == CASES["weights"]["open_clip_config"]
    assert golden_backbone.embed_dim == CASES["weights"]["dims"]["embed_dim"]
    # upstream normalises with the OpenAI mean/std
    assert np.allclose(golden_backbone.mean, open_clip.OPENAI_DATASET_MEAN)
    assert np.allclose(golden_backbone.std, open_clip.OPENAI_DATASET_STD)


@pytest.mark.parametrize("case_name", sorted(CASES.get("cases", {})))
def test_matches_upstream_outputs(case_name: str, golden_backbone: Backbone, tiny_weights: Path,
                                  tmp_path: Path) -> None:
    case = CASES["cases"][case_name]
    assert case["image_size"] == SIZE
    overrides = {**case["options"], "backbone": MODEL, "pretrained": str(tiny_weights),
                 "image_size": SIZE}
    upstream = GOLDEN / case["upstream_checkpoint"]
    imported = import_checkpoint(case["method"], upstream, tmp_path / "imported.pt", overrides,
                                 backbone=golden_backbone)
    method = build_method(case["method"], overrides, backbone=golden_backbone)
    meta = load_checkpoint_into(method, imported)
    assert meta["extra"]["imported_from"]["sha256"] == sha256(upstream)
    assert read_checkpoint_metadata(imported)["backbone"]["weights_sha256"] == \
        CASES["weights"]["sha256"]
    method.eval()

    arrays = np.load(GOLDEN / case["arrays"])
    raw = arrays["images_uint8"]
    assert raw.shape[0] == BATCH
    images = torch.stack([image_to_tensor(Image.fromarray(image), SIZE, golden_backbone.mean,
                                          golden_backbone.std) for image in raw])
    with torch.inference_mode():
        prediction = method.predict(images, ["object"] * BATCH)
    scores = prediction.image_scores.float().numpy()
    maps = prediction.anomaly_maps.float().numpy()
    assert maps.shape == arrays["anomaly_map"].shape
    np.testing.assert_allclose(scores, arrays["image_scores"], rtol=0, atol=ATOL,
                               err_msg=f"{case_name}: image scores")
    np.testing.assert_allclose(maps, arrays["anomaly_map"], rtol=0, atol=ATOL,
                               err_msg=f"{case_name}: anomaly maps")
