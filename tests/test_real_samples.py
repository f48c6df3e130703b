"""Adapters on the real samples in ``../shared/data/real`` (skipped when that folder is absent).

The shared folder is ``<repo>/../shared``; the environment variable ``ZSBENCH_SHARED``
overrides it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsbench.adapters.dagm import parse_labels_txt
from zsbench.adapters.visa import parse_split_csv
from zsbench.registry import ADAPTERS

SHARED = Path(os.environ.get("ZSBENCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REAL = SHARED / "data" / "real"

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"no real samples at {REAL}")

# Defect rows per DAGM Labels.txt, counted from the real files (Class1-6: 575 rows each,
# Class7-10: 1150 rows each).
DAGM_DEFECTS = {
    ("Class1", "Train"): 79, ("Class1", "Test"): 71, ("Class2", "Train"): 66,
    ("Class2", "Test"): 84, ("Class3", "Train"): 66, ("Class3", "Test"): 84,
    ("Class4", "Train"): 82, ("Class4", "Test"): 68, ("Class5", "Train"): 70,
    ("Class5", "Test"): 80, ("Class6", "Train"): 83, ("Class6", "Test"): 67,
}


def test_headct_all_200_images_including_rgba():
    raw = REAL / "headct"
    records = list(ADAPTERS.get("headct")().records(raw))
    assert len(records) == 200
    assert sum(r.label for r in records) == 100
    assert all(r.mask is None for r in records)
    modes = [Image.open(r.image).mode for r in records]
    assert modes.count("RGBA") == 12
    assert [r.source_path for r in records[:2]] == ["head_ct/000.png", "head_ct/001.png"]


def test_visa_split_csv_paths_parse():
    rows = parse_split_csv(REAL / "visa" / "split_csv" / "1cls.csv")
    categories = ADAPTERS.get("visa").info.categories
    assert len(rows) == 10821
    assert {r.category for r in rows} == set(categories)
    test = [r for r in rows if r.split == "test"]
    assert sum(r.label for r in test) == 1200 and len(test) - 1200 == 962
    assert all(r.label == 0 for r in rows if r.split == "train")
    for r in rows:
        kind = "Anomaly" if r.label else "Normal"
        assert r.image.startswith(f"{r.category}/Data/Images/{kind}/"), r
        assert r.image.endswith(".JPG")
        if r.label:
            assert r.mask.startswith(f"{r.category}/Data/Masks/Anomaly/")
            assert r.mask.endswith(".png")
            assert Path(r.mask).stem == Path(r.image).stem
        else:
            assert r.mask == ""
    for name in ("2cls_fewshot.csv", "2cls_highshot.csv"):
        assert len(parse_split_csv(REAL / "visa" / "split_csv" / name)) == 10821


def test_dagm_labels_txt_defect_counts():
    root = REAL / "dagm" / "DAGM_KaggleUpload"
    for category in (f"Class{i}" for i in range(1, 11)):
        for folder in ("Train", "Test"):
            labels = parse_labels_txt(root / category / folder / "Label" / "Labels.txt")
            defects = [lab for lab in labels if lab.defective]
            expected_rows = 575 if int(category[5:]) <= 6 else 1150
            assert len(labels) == expected_rows, (category, folder)
            assert len(defects) == DAGM_DEFECTS.get((category, folder), 150), (category, folder)
            assert all(lab.mask == f"{lab.image[:-4]}_label.PNG" for lab in defects)
            assert all(lab.mask is None for lab in labels if not lab.defective)
            assert all(lab.image == f"{lab.image_id}.PNG" for lab in labels)
            assert len({lab.image_id for lab in labels}) == len(labels)


def test_headct_prepared_images_keep_their_bytes(tmp_path):
    from zsbench.data import load
    from zsbench.prepare import prepare

    out = prepare("headct", REAL / "headct", tmp_path)
    ds = load(out, decode=False)
    assert len(ds) == 200
    row = ds[7]
    original = (REAL / "headct" / row["source_path"]).read_bytes()
    assert row["image"]["bytes"] == original
    size = Image.open(REAL / "headct" / row["source_path"]).size
    assert (row["width"], row["height"]) == size
    assert np.asarray(Image.open(REAL / "headct" / row["source_path"])).size > 0
