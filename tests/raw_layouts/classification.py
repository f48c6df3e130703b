"""Small trees in the layouts of the image-level datasets ELPV and HeadCT (no masks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.raw_layouts._draw import write_image, write_text

ELPV_PROBABILITIES = (0.0, 1.0, 0.3333333333333333, 0.0, 0.6666666666666666, 0.0)


def make_elpv(root: Path, package_layout: bool = False) -> dict[str, Any]:
    """ELPV: ``labels.csv`` (whitespace aligned like the original) + ``images/cellNNNN.png``
    (greyscale). With ``package_layout`` the files sit in ``elpv_dataset/data/`` as in the
    ``elpv-dataset`` wheel."""
    base = root / "elpv_dataset" / "data" if package_layout else root
    lines = []
    for k, probability in enumerate(ELPV_PROBABILITIES, start=1):
        name = f"images/cell{k:04d}.png"
        write_image(base / name, (20, 20), "L", seed=k)
        cell_type = "mono" if k % 2 else "poly"
        lines.append(f"{name}  {probability!s:<20}{cell_type}")
    write_text(base / "labels.csv", "\n".join(lines) + "\n")
    anomalous = sum(p > 0 for p in ELPV_PROBABILITIES)
    return {"test": len(ELPV_PROBABILITIES), "anomalous": anomalous, "with_mask": 0,
            "mono": sum(1 for k in range(1, len(ELPV_PROBABILITIES) + 1) if k % 2)}


def make_headct(root: Path, labels_inside: bool = False, n: int = 10) -> dict[str, Any]:
    """HeadCT: ``head_ct/NNN.png`` (some RGBA, some greyscale, varying sizes) and
    ``labels.csv`` with the header ``id, hemorrhage`` (leading space), beside ``head_ct/`` as
    in the Kaggle download or inside it (``labels_inside``). The first half are anomalous."""
    folder = root / "head_ct"
    rows = ["id, hemorrhage"]
    for k in range(n):
        mode = "RGBA" if k % 4 == 1 else "L"
        write_image(folder / f"{k:03d}.png", (16 + k, 20), mode, seed=k)
        rows.append(f"{k:03d},{int(k < n // 2)}")
    labels = folder / "labels.csv" if labels_inside else root / "labels.csv"
    write_text(labels, "\n".join(rows) + "\n")
    return {"test": n, "anomalous": n // 2, "with_mask": 0, "rgba": sum(k % 4 == 1
                                                                       for k in range(n))}
