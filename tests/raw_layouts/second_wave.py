"""Fixture trees of the second-wave datasets in their download layouts (BMAD's six sets,
KolektorSDD2, MVTec AD 2, MVTec LOCO AD, Real-IAD) and of a user's own folder.

Each ``make_<dataset>(root)`` writes the tree and returns what the adapter must find."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.raw_layouts._draw import write_image, write_mask

SIZE = (16, 16)


def make_bmad(root: Path, variant: str) -> dict[str, Any]:
    """One BMAD set in one of the download's layouts:

    ``brain``: ``Brain_AD/BraTS2021_slice/{valid,test}/{good,Ungood}/img`` + ``Ungood/label``;
    ``liver``: ``Liver_AD/hist_DIY/{valid,test}/img/{good,ungood}`` + ``label/ungood``;
    ``resc``: ``Retina_RESC_AD/RESC/{Train/train,Val/val,Test/test}`` + ``{val,test}_label``;
    ``chest``: ``Chest_AD/Chest-RSNA/{train,val,test}/{good,Ungood}`` (no masks).

    Anomalous test images get masks except ``*_9`` (none); a stray mask ``orphan`` has no
    image. Returns counts per split and the anomalous test stems with masks."""
    seed = 0
    counts: dict[str, dict[str, int]] = {}
    masked: set[str] = set()

    def image(path: Path) -> None:
        nonlocal seed
        seed += 1
        write_image(path, SIZE, "L", seed=seed)

    def add(split: str, label: int) -> None:
        counts.setdefault(split, {"normal": 0, "anomalous": 0})
        counts[split]["anomalous" if label else "normal"] += 1

    if variant == "brain":
        base = root / "Brain_AD" / "BraTS2021_slice"
        for stem in ("00003_60", "00003_61"):
            image(base / "train" / "good" / f"{stem}.png")
            add("train", 0)
        for split in ("valid", "test"):
            for k in range(2):
                image(base / split / "good" / "img" / f"{split}_n{k}.png")
                add(split, 0)
            for stem in (f"{split}_a0", f"{split}_a1", f"{split}_9"):
                image(base / split / "Ungood" / "img" / f"{stem}.png")
                add(split, 1)
                if not stem.endswith("_9"):
                    write_mask(base / split / "Ungood" / "label" / f"{stem}.png", SIZE, seed=seed)
                    masked.add(stem)
        write_mask(base / "test" / "Ungood" / "label" / "orphan.png", SIZE)
    elif variant == "liver":
        base = root / "Liver_AD" / "hist_DIY"
        image(base / "train" / "good" / "t0.png")
        add("train", 0)
        for split in ("valid", "test"):
            image(base / split / "img" / "good" / f"{split}_n0.png")
            add(split, 0)
            for stem in (f"{split}_a0", f"{split}_9"):
                image(base / split / "img" / "ungood" / f"{stem}.png")
                add(split, 1)
                if not stem.endswith("_9"):
                    write_mask(base / split / "label" / "ungood" / f"{stem}.png", SIZE, seed=seed)
                    masked.add(stem)
    elif variant == "resc":
        base = root / "Retina_RESC_AD" / "RESC"
        image(base / "Train" / "train" / "good" / "t0.png")
        add("train", 0)
        for folder, inner, split in (("Val", "val", "valid"), ("Test", "test", "test")):
            image(base / folder / inner / "good" / f"{inner}_n0.png")
            add(split, 0)
            stem = f"{inner}_a0"
            image(base / folder / inner / "ungood" / f"{stem}.png")
            add(split, 1)
            write_mask(base / folder / f"{inner}_label" / "ungood" / f"{stem}.png", SIZE,
                       seed=seed)
            masked.add(stem)
    elif variant == "chest":
        base = root / "Chest_AD" / "Chest-RSNA"
        image(base / "train" / "good" / "t0.png")
        add("train", 0)
        for split, folder in (("valid", "val"), ("test", "test")):
            for k in range(2):
                image(base / folder / "good" / f"{folder}_n{k}.png")
                add(split, 0)
            image(base / folder / "Ungood" / f"{folder}_a0.png")
            add(split, 1)
    else:
        raise ValueError(variant)
    return {"counts": counts, "masked": masked}


def make_ksdd2(root: Path) -> dict[str, Any]:
    """``KolektorSDD2/{train,test}/NNNNN.png`` + ``NNNNN_GT.png`` (all zero when defect-free);
    one test image without a GT image."""
    base = root / "KolektorSDD2"
    defective = {"10001", "20000"}
    stems = {"train": ["10000", "10001", "10002"], "test": ["20000", "20001"]}
    for seed, (split, names) in enumerate(stems.items()):
        for k, stem in enumerate(names):
            write_image(base / split / f"{stem}.png", (24, 8), "RGB", seed=seed * 10 + k)
            write_mask(base / split / f"{stem}_GT.png", (24, 8), seed=k,
                       empty=stem not in defective)
    write_image(base / "test" / "20002.png", (24, 8), "RGB", seed=99)
    return {"train": (1, 2), "test": (1, 1), "defective": defective, "skipped": "20002"}


MVTEC_AD2 = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs",
             "walnuts")


def make_mvtec_ad2(root: Path, categories: tuple[str, ...] = ("can", "vial")) -> dict[str, Any]:
    """``mvtec_ad_2/<obj>/{train,validation}/good``, ``test_public/{good,bad}``,
    ``test_public/ground_truth/bad/<stem>_mask.png``, unlabelled ``test_private/``."""
    for c, category in enumerate(categories):
        base = root / "mvtec_ad_2" / category
        for k in range(2):
            write_image(base / "train" / "good" / f"{k:03d}_regular.png", SIZE, seed=c * 50 + k)
        write_image(base / "validation" / "good" / "000_regular.png", SIZE, seed=c * 50 + 5)
        write_image(base / "test_public" / "good" / "000_regular.png", SIZE, seed=c * 50 + 6)
        for k in range(2):
            stem = f"{k:03d}_overexposed"
            write_image(base / "test_public" / "bad" / f"{stem}.png", SIZE, seed=c * 50 + 7 + k)
            write_mask(base / "test_public" / "ground_truth" / "bad" / f"{stem}_mask.png", SIZE,
                       seed=k)
        write_image(base / "test_private" / "000.png", SIZE, seed=c * 50 + 20)
    per = {"train": 2, "validation": 1, "test": 3, "anomalous": 2}
    return {"categories": categories, "per_category": per}


def make_mvtec_loco(root: Path, categories: tuple[str, ...] = ("juice_bottle",)
                    ) -> dict[str, Any]:
    """``<cat>/{train,validation}/good``, ``test/{good,logical_anomalies,structural_anomalies}``
    and ``ground_truth/<type>/<stem>/KKK.png``; logical ``000`` has two region images (merged
    by union), structural ``001`` has no ground-truth folder."""
    regions: dict[str, np.ndarray] = {}
    for category in categories:
        base = root / "mvtec_loco_anomaly_detection" / category
        write_image(base / "train" / "good" / "000.png", SIZE, seed=1)
        write_image(base / "validation" / "good" / "000.png", SIZE, seed=2)
        write_image(base / "test" / "good" / "000.png", SIZE, seed=3)
        for kind in ("logical_anomalies", "structural_anomalies"):
            for k in range(2):
                write_image(base / "test" / kind / f"{k:03d}.png", SIZE, seed=10 + k)
        gt = base / "ground_truth"
        first = np.zeros(SIZE, np.uint8)
        first[0:4, 0:4] = 255
        second = np.zeros(SIZE, np.uint8)
        second[10:12, 10:14] = 119  # LOCO region images are non-zero, not always 255
        (gt / "logical_anomalies" / "000").mkdir(parents=True)
        Image.fromarray(first).save(gt / "logical_anomalies" / "000" / "000.png")
        Image.fromarray(second).save(gt / "logical_anomalies" / "000" / "001.png")
        regions[f"{category}/logical_anomalies/000"] = (first > 0) | (second > 0)
        write_mask(gt / "logical_anomalies" / "001" / "000.png", SIZE, seed=4)
        write_mask(gt / "structural_anomalies" / "000" / "000.png", SIZE, seed=5)
    return {"categories": categories, "union": regions}


def make_real_iad(root: Path, json_layout: str = "nested") -> dict[str, Any]:
    """``Real-IAD/realiad_256/<cat>/OK/S0001/*.jpg`` and ``NG/<code>/S0002/*.jpg`` with
    ``*.png`` masks of the same stem, and split files ``realiad_jsons/realiad_jsons/<cat>.json``
    (``json_layout="flat"``: ``realiad_jsons/<cat>.json``). Paths in the split file are relative
    to the resolution folder for ``audiojack`` and to the category folder for ``usb``."""
    base = root / "Real-IAD"
    res = base / "realiad_256"
    expected: dict[str, Any] = {"train": 0, "test": 0, "anomalous": 0, "views": set()}
    for c, category in enumerate(("audiojack", "usb")):
        train, test = [], []
        for view in (1, 2):
            name = f"{category}_0001_OK_C{view}_20230922093015"
            rel = f"{category}/OK/S0001/{name}.jpg"
            write_image(res / rel, SIZE, seed=c * 10 + view)
            entry_rel = rel if category == "audiojack" else rel.split("/", 1)[1]
            train.append({"category": category, "anomaly_class": "OK", "image_path": entry_rel,
                          "mask_path": None})
            expected["views"].add(f"C{view}")
        ok_test = f"{category}/OK/S0003/{category}_0003_OK_C1_20230922093100.jpg"
        write_image(res / ok_test, SIZE, seed=c * 10 + 5)
        test.append({"category": category, "anomaly_class": "OK",
                     "image_path": ok_test if category == "audiojack"
                     else ok_test.split("/", 1)[1], "mask_path": None})
        name = f"{category}_0002_NG_HS_C3_20230922094000"
        image_rel = f"{category}/NG/HS/S0002/{name}.jpg"
        mask_rel = f"{category}/NG/HS/S0002/{name}.png"
        write_image(res / image_rel, SIZE, seed=c * 10 + 7)
        write_mask(res / mask_rel, SIZE, seed=c)
        strip = (lambda p: p) if category == "audiojack" else (lambda p: p.split("/", 1)[1])
        test.append({"category": category, "anomaly_class": "HS",
                     "image_path": strip(image_rel), "mask_path": strip(mask_rel)})
        expected["views"].add("C3")
        folder = ("realiad_jsons/realiad_jsons" if json_layout == "nested" else "realiad_jsons")
        (base / folder).mkdir(parents=True, exist_ok=True)
        (base / folder / f"{category}.json").write_text(json.dumps(
            {"meta": {"prefix": "", "normal_class": "OK"}, "train": train, "test": test}))
        expected["train"] += len(train)
        expected["test"] += len(test)
        expected["anomalous"] += 1
    return expected


def make_folder(root: Path, categories: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A user's folder: ``good/``, ``scratch/``, ``dent/`` and ``masks/scratch/<stem>.png``
    (``dent`` has no masks); with ``categories``, one such folder per category."""
    targets = [(root, root.name)] if not categories else [(root / c, c) for c in categories]
    for base, _ in targets:
        for k in range(3):
            write_image(base / "good" / f"ok_{k}.png", SIZE, seed=k)
        for k in range(2):
            write_image(base / "scratch" / f"s_{k}.jpg", SIZE, seed=10 + k)
            write_mask(base / "masks" / "scratch" / f"s_{k}.png", SIZE, seed=k)
        write_image(base / "dent" / "d_0.png", SIZE, seed=20)
    return {"categories": [name for _, name in targets], "normal": 3, "anomalous": 3,
            "with_mask": 2}
