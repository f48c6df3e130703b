"""Small trees in the original layouts of MVTec AD (and MPDD, DTD-Synthetic), VisA, BTAD, DAGM
and KolektorSDD, with the odd cases real downloads have: RGBA and greyscale PNGs, BMP files,
upper-case extensions, spaces in names, CRLF label files, masks whose sorted order differs from
the images' order.

Each ``make_<dataset>(root)`` returns the counts the adapter must find and ``mask_seeds``
({source_path: seed of the mask drawn for it}) so a test can check that every mask went to its
own image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.raw_layouts._draw import mask_array, write_image, write_mask, write_text

SIZE = (24, 32)  # (height, width): not square, so swapped axes are caught

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper")


def _counts() -> dict[str, Any]:
    return {"train": 0, "test": 0, "anomalous": 0, "with_mask": 0, "mask_seeds": {},
            "categories": []}


def make_mvtec_layout(root: Path, categories: tuple[str, ...] = MVTEC_CATEGORIES,
                      normal: str = "good", defect: str = "crack", gt_suffix: str = "_mask",
                      image_ext: str = ".png", mask_ext: str = ".png") -> dict[str, Any]:
    """Per category: 1 train image, 1 normal test image, 2 anomalous test images with masks
    (3 in the first category).

    The first category gets the odd cases: an RGBA train image, a greyscale normal image,
    anomalous images named ``a`` and ``a_b`` whose masks (``a_b_mask``, ``a_mask``) sort in the
    other order, so pairing by sorted index would swap them, and one named ``crack 1``."""
    counts = _counts()
    seed = 100
    for index, category in enumerate(categories):
        counts["categories"].append(category)
        odd = index == 0
        c = root / category
        write_image(c / "train" / normal / f"000{image_ext}", SIZE, "RGBA" if odd else "RGB",
                    seed=seed)
        write_image(c / "test" / normal / f"000{image_ext}", SIZE, "L" if odd else "RGB",
                    seed=seed + 1)
        counts["train"] += 1
        counts["test"] += 1
        stems = ("a", "a_b", "crack 1") if odd else ("000", "001")
        for k, stem in enumerate(stems):
            seed += 7
            write_image(c / "test" / defect / f"{stem}{image_ext}", SIZE, seed=seed)
            write_mask(c / "ground_truth" / defect / f"{stem}{gt_suffix}{mask_ext}", SIZE,
                       seed=seed + k)
            source = f"{category}/test/{defect}/{stem}{image_ext}"
            counts["mask_seeds"][source] = seed + k
            counts["test"] += 1
            counts["anomalous"] += 1
            counts["with_mask"] += 1
        seed += 11
    return counts


def make_mvtec(root: Path) -> dict[str, Any]:
    """All 15 MVTec AD categories (the adapter reads them all by default)."""
    return make_mvtec_layout(root)


def break_mvtec_masks(root: Path, category: str = "cable",
                      defect: str = "crack") -> tuple[str, str]:
    """Delete one mask (-> an anomalous image without a mask) and add a mask without an image.

    Returns (image without mask, stray mask) as paths relative to ``root``."""
    gt = root / category / "ground_truth" / defect
    (gt / "000_mask.png").unlink()
    write_mask(gt / "099_mask.png", SIZE, seed=5)
    return f"{category}/test/{defect}/000.png", f"{category}/ground_truth/{defect}/099_mask.png"


def make_btad(root: Path) -> dict[str, Any]:
    """BTAD: 01 with BMP images and PNG masks, 02 all PNG, 03 all BMP (no ``_mask`` suffix)."""
    counts = _counts()
    formats = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
    seed = 300
    for category, (image_ext, mask_ext) in formats.items():
        counts["categories"].append(category)
        c = root / "BTech_Dataset_transformed" / category
        for k in range(2):
            write_image(c / "train" / "ok" / f"{k:04d}{image_ext}", SIZE, seed=seed + k)
        write_image(c / "test" / "ok" / f"0000{image_ext}", SIZE, seed=seed + 5)
        counts["train"] += 2
        counts["test"] += 1
        for k in range(2):
            seed += 3
            write_image(c / "test" / "ko" / f"{k:04d}{image_ext}", SIZE, seed=seed)
            write_mask(c / "ground_truth" / "ko" / f"{k:04d}{mask_ext}", SIZE, seed=seed)
            counts["mask_seeds"][f"{category}/test/ko/{k:04d}{image_ext}"] = seed
            counts["test"] += 1
            counts["anomalous"] += 1
            counts["with_mask"] += 1
    return counts


VISA_MASK_IDS = 3  # VisA masks hold defect ids 0..k, not 0/255


def make_visa(root: Path, categories: tuple[str, ...] = ("candle", "pcb1")) -> dict[str, Any]:
    """VisA: ``.JPG`` images, PNG masks with defect ids 1..3, ``split_csv/1cls.csv``."""
    counts = _counts()
    rows = ["object,split,label,image,mask"]
    seed = 500
    anno = {}
    for category in categories:
        counts["categories"].append(category)
        images = root / category / "Data" / "Images"
        anno[category] = ["image,label,mask"]
        for k, split in enumerate(("train", "train", "test")):
            rel = f"{category}/Data/Images/Normal/{k:04d}.JPG"
            write_image(root / rel, SIZE, seed=seed + k)
            rows.append(f"{category},{split},normal,{rel},")
            counts[split] += 1
        for k in range(2):
            seed += 5
            rel = f"{category}/Data/Images/Anomaly/{k:03d}.JPG"
            mask_rel = f"{category}/Data/Masks/Anomaly/{k:03d}.png"
            write_image(root / rel, SIZE, seed=seed)
            ids = mask_array(SIZE, seed=seed, value=1 + k % VISA_MASK_IDS)
            (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids).save(root / mask_rel)
            rows.append(f"{category},test,anomaly,{rel},{mask_rel}")
            anno[category].append(f"{rel},scratch,{mask_rel}")
            counts["mask_seeds"][rel] = seed
            counts["test"] += 1
            counts["anomalous"] += 1
            counts["with_mask"] += 1
        assert images.is_dir()
    write_text(root / "split_csv" / "1cls.csv", "\n".join(rows) + "\n")
    write_text(root / categories[0] / "image_anno.csv", "\n".join(anno[categories[0]]) + "\n")
    return counts


def make_dagm(root: Path, classes: tuple[str, ...] = ("Class1", "Class2")) -> dict[str, Any]:
    """DAGM Kaggle layout inside ``DAGM_KaggleUpload/``: upper-case ``.PNG``, CRLF
    ``Labels.txt`` (first line ``1``; trailing tab on defect-free rows, as in the real files)."""
    counts = _counts()
    seed = 700
    for category in classes:
        counts["categories"].append(category)
        for folder, split in (("Train", "train"), ("Test", "test")):
            base = root / "DAGM_KaggleUpload" / category / folder
            lines = ["1"]
            for k in range(1, 5):
                name = f"{k:04d}.PNG"
                write_image(base / name, SIZE, "L", seed=seed + k)
                defective = k in (2, 4)
                if defective:
                    mask = f"{k:04d}_label.PNG"
                    write_mask(base / "Label" / mask, SIZE, seed=seed + k)
                    lines.append(f"{k:04d}\t1\t{name}\t0\t{mask}")
                    counts["mask_seeds"][f"{category}/{folder}/{name}"] = seed + k
                    counts["anomalous"] += 1
                    counts["with_mask"] += 1
                else:
                    lines.append(f"{k:04d}\t0\t{name}\t0\t0\t")
                counts[split] += 1
            write_text(base / "Label" / "Labels.txt", "\n".join(lines) + "\n", crlf=True)
            seed += 10
    return counts


SDD_SIZE = (90, 30)  # (height, width): tall like the 1260x500 originals


def make_sdd(root: Path) -> dict[str, Any]:
    """KolektorSDD: ``kos01``/``kos02`` with ``PartK.jpg`` + ``PartK_label.bmp``.

    ``kos01/Part1`` has a defect only in the bottom third (rows 70..79), ``kos02/Part0`` one
    that crosses the first/second third boundary (rows 25..34); the rest are defect-free."""
    counts = _counts()
    defects = {("kos01", "Part1"): (70, 80), ("kos02", "Part0"): (25, 35)}
    seed = 900
    for folder in ("kos01", "kos02"):
        for k in range(3):
            seed += 1
            write_image(root / "KolektorSDD" / folder / f"Part{k}.jpg", SDD_SIZE, "L", seed=seed)
            label = np.zeros(SDD_SIZE, dtype=np.uint8)
            rows = defects.get((folder, f"Part{k}"))
            if rows:
                label[rows[0]:rows[1], 10:20] = 255
                counts["anomalous"] += 1
                counts["with_mask"] += 1
            Image.fromarray(label).save(root / "KolektorSDD" / folder / f"Part{k}_label.bmp")
            counts["test"] += 1
    counts["categories"] = ["electrical_commutators"]
    counts["defect_rows"] = {f"{f}/{p}.jpg": r for (f, p), r in defects.items()}
    return counts
