"""Fixture trees in the download layouts of the surface-inspection datasets (SD-saliency-900,
RSDDs, AITEX), with the odd cases of the real downloads.

Each ``make_<dataset>(root)`` writes the tree under ``root`` and returns what the adapter must
find: ``anomalous`` and ``normal`` counts and per-case details."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.raw_layouts._draw import mask_array, write_image, write_mask, write_text

SIZE = (20, 20)


def make_sd_saliency_900(root: Path) -> dict[str, Any]:
    """``SD-saliency-900/Source Images/{In,Pa,Sc}_N.bmp`` (greyscale) + ``Ground truth/*.png``;
    ``Sc_10`` sorts before ``Sc_2``, and one mask has no image."""
    base = root / "SD-saliency-900"
    stems = {"In_1": "inclusion", "In_2": "inclusion", "Pa_7": "patches", "Sc_10": "scratches",
             "Sc_2": "scratches"}
    for seed, stem in enumerate(stems):
        write_image(base / "Source Images" / f"{stem}.bmp", SIZE, mode="L", seed=seed)
        write_mask(base / "Ground truth" / f"{stem}.png", SIZE, seed=seed)
    write_mask(base / "Ground truth" / "In_0.png", SIZE, seed=42)
    return {"anomalous": len(stems), "normal": 0, "defect_types": stems}


def make_rsdds(root: Path, image_folder_type2: str = "images") -> dict[str, Any]:
    """``Type-I RSDDs dataset/{Rail surface images,GroundTruth}/rail_N.jpg`` and Type-II with the
    image folder named ``image_folder_type2`` (the name is not confirmed upstream)."""
    parts = {"Type-I RSDDs dataset": ("Rail surface images", 3, (40, 8)),
             "Type-II RSDDs dataset": (image_folder_type2, 2, (50, 4))}
    counts = {}
    for folder, (images, count, size) in parts.items():
        for i in range(1, count + 1):
            write_image(root / folder / images / f"rail_{i}.jpg", size, mode="L", seed=i)
            write_mask(root / folder / "GroundTruth" / f"rail_{i}.jpg", size, seed=i)
        counts[folder.split()[0]] = count
    return {"anomalous": sum(counts.values()), "normal": 0, "per_type": counts}


AITEX_SIZE = (8, 64)  # (h, w): the real images are 256 x 4096


def make_aitex(root: Path) -> dict[str, Any]:
    """``Defect_images/<id>_<code>_<fabric>.png`` with ``Mask_images/<stem>_mask.png``; one image
    with two masks (``_mask1``, ``_mask2``: merged by OR); one image without a mask; one mask
    without an image; ``NODefect_images/<roll>/*.png`` in two rolls."""
    defects = {"0001_002_00": "broken_end", "0044_019_04": "fuzzyball",
               "0094_027_05": "knots", "0100_030_01": "nep"}
    for seed, stem in enumerate(defects):
        write_image(root / "Defect_images" / f"{stem}.png", AITEX_SIZE, mode="L", seed=seed)
    write_mask(root / "Mask_images" / "0001_002_00_mask.png", AITEX_SIZE, seed=1)
    write_mask(root / "Mask_images" / "0044_019_04_mask.png", AITEX_SIZE, seed=2)
    first = np.zeros(AITEX_SIZE, np.uint8)
    first[1:3, 2:10] = 255
    second = np.zeros(AITEX_SIZE, np.uint8)
    second[4:7, 40:60] = 255
    for i, array in enumerate((first, second), start=1):
        Image.fromarray(array).save(root / "Mask_images" / f"0094_027_05_mask{i}.png")
    write_mask(root / "Mask_images" / "0200_006_03_mask.png", AITEX_SIZE, seed=3)
    rolls = {"2311694-2040n7u": 3, "2608691-202020u": 2}
    for roll, count in rolls.items():
        for i in range(count):
            write_image(root / "NODefect_images" / roll / f"{i:04d}_000_05.png", AITEX_SIZE,
                        mode="L", seed=10 + i)
    write_text(root / "NODefect_images" / roll / "Thumbs.db", "junk")
    return {"anomalous": 3, "normal": sum(rolls.values()), "rolls": rolls,
            "defect_types": {k: v for k, v in defects.items() if k != "0100_030_01"},
            "merged_stem": "0094_027_05", "merged_mask": (first > 0) | (second > 0),
            "skipped": ["Defect_images/0100_030_01.png"],
            "orphan_masks": ["Mask_images/0200_006_03_mask.png"],
            "single_mask": {"0001_002_00": mask_array(AITEX_SIZE, seed=1) > 0}}
