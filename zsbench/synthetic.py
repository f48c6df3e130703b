"""Seeded synthetic anomaly datasets in the MVTec AD layout (offline demo and tests).

Two families share one rule, so that a method trained on one can transfer to the other:
a defect is a region painted with a red shift (more red, less green) at the surface's own
brightness, a chromatic signature that random-weight features can pick up but that brightness
alone does not reveal (so untrained methods stay near chance). They differ in everything
else: ``synthetic_a`` has striped, granular and disc-object categories with elliptic blobs and
scratches; ``synthetic_b`` has checkerboard, fibre and tablet categories with polygons and
cracks.

Layout written (as the MVTec AD download)::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticSpec:
    """What a synthetic dataset contains."""

    name: str
    categories: tuple[str, ...]
    defects: tuple[str, ...]
    seed: int


SPECS = {
    "synthetic_a": SyntheticSpec("synthetic_a", ("stripes", "granite", "disc"),
                                 ("blob", "scratch"), seed=1),
    "synthetic_b": SyntheticSpec("synthetic_b", ("checker", "fibre", "tablet"),
                                 ("polygon", "crack"), seed=2),
}


def _surface(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A normal image of ``category`` as float RGB in [0, 1], shape [size, size, 3]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.45, 0.75, size=3)
    tint = rng.uniform(-0.08, 0.08, size=3)
    if category == "stripes":
        freq, phase = rng.uniform(8, 12), rng.uniform(0, 2 * np.pi)
        pattern = 0.12 * np.sin(2 * np.pi * freq * (xx + 0.3 * yy) + phase)
    elif category == "granite":
        noise = Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8))
        pattern = 0.25 * (np.asarray(noise.filter(ImageFilter.GaussianBlur(1.5))) / 255 - 0.5)
    elif category == "checker":
        cells = int(rng.integers(6, 10))
        pattern = 0.1 * (((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 - 0.5)
    elif category == "fibre":
        freq = rng.uniform(14, 20)
        pattern = 0.08 * np.sin(2 * np.pi * freq * yy + 3 * np.sin(6 * xx)) \
            + 0.04 * rng.standard_normal((size, size))
    else:  # object categories: a lit disc (disc) or a rounded tablet on a plain background
        pattern = 0.02 * rng.standard_normal((size, size))
    img = base[None, None, :] + pattern[..., None] + tint[None, None, :] * yy[..., None]
    if category in ("disc", "tablet"):
        cx, cy = rng.uniform(0.45, 0.55, size=2)
        if category == "disc":
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 < rng.uniform(0.09, 0.12)
        else:
            inside = (np.abs(xx - cx) < 0.32) & (np.abs(yy - cy) < 0.2)
        obj = np.clip(base[::-1] + 0.1, 0, 1)
        img[inside] = obj + 0.03 * rng.standard_normal((int(inside.sum()), 3))
    return np.clip(img, 0, 1)


def _defect_mask(defect: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean defect mask of ``defect`` shape."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.3, 0.7, size=2) * size
    r = rng.uniform(0.14, 0.22) * size
    if defect == "blob":
        draw.ellipse([cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r], fill=255)
    elif defect == "scratch":
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * 1.6 * r, np.sin(angle) * 1.6 * r
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=255, width=max(3, size // 9))
    elif defect == "polygon":
        n = int(rng.integers(3, 6))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = r * rng.uniform(0.8, 1.3, n)
        corners = [(cx + a * np.cos(t), cy + a * np.sin(t))
                   for a, t in zip(radii, angles, strict=True)]
        draw.polygon(corners, fill=255)
    else:  # crack: a jagged polyline
        points = [(cx, cy)]
        for _ in range(4):
            x, y = points[-1]
            points.append((x + rng.uniform(-0.5, 0.5) * r * 1.5, y + rng.uniform(0.3, 0.8) * r))
        draw.line(points, fill=255, width=max(3, size // 10))
    return np.asarray(mask) > 127


def _apply_defect(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint the defect region with a red shift at the region's mean brightness."""
    level = img[mask].mean()
    colour = np.clip(level + np.array([0.35, -0.3, -0.05]) + rng.uniform(-0.04, 0.04, 3), 0, 1)
    out = img.copy()
    out[mask] = colour + 0.04 * rng.standard_normal((int(mask.sum()), 3))
    return np.clip(out, 0, 1)


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def generate(name: str, *, size: int = 128, n_train: int = 4, n_normal: int = 8,
             n_anomalous: int = 8, seed: int | None = None
             ) -> Iterator[tuple[str, str, str, int, np.ndarray, np.ndarray | None]]:
    """Yield ``(category, split, defect_type, index, image uint8 [S,S,3], mask bool or None)``
    for synthetic dataset ``name`` (see :data:`SPECS`); deterministic for a seed."""
    if name not in SPECS:
        raise ValueError(f"unknown synthetic dataset {name!r}; choose from {', '.join(SPECS)}")
    spec = SPECS[name]
    rng = np.random.default_rng(spec.seed if seed is None else seed)
    for category in spec.categories:
        for i in range(n_train):
            yield category, "train", "good", i, _to_uint8(_surface(category, size, rng)), None
        for i in range(n_normal):
            yield category, "test", "good", i, _to_uint8(_surface(category, size, rng)), None
        for i in range(n_anomalous):
            defect = spec.defects[i % len(spec.defects)]
            mask = _defect_mask(defect, size, rng)
            img = _apply_defect(_surface(category, size, rng), mask, rng)
            yield category, "test", defect, i // len(spec.defects), _to_uint8(img), mask


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (img * 255).astype(np.uint8)


def write_synthetic_dataset(root: str | Path, name: str = "synthetic_a",
                            **kwargs: int) -> dict[str, int]:
    """Write synthetic dataset ``name`` in the MVTec AD layout under ``root``.

    Keyword arguments as :func:`generate`. Returns ``{"test", "anomalous", "train"}`` counts."""
    root = Path(root)
    counts = {"test": 0, "anomalous": 0, "train": 0}
    for category, split, defect, index, img, mask in generate(name, **kwargs):
        folder = root / category / split / defect
        _save_png(folder / f"{index:03d}.png", img)
        counts[split] += 1
        if mask is not None:
            _save_png(root / category / "ground_truth" / defect / f"{index:03d}_mask.png",
                      mask.astype(np.uint8) * 255)
            counts["anomalous"] += 1
    logger.info("wrote synthetic dataset %s to %s: %s", name, root, counts)
    return counts


def synthetic_records(name: str = "synthetic_a", split: str = "test", **kwargs: int
                      ) -> list[dict[str, Any]]:
    """The same images as unified records in memory (PNG bytes), without touching disk.

    Handy for tests and notebooks: ``datasets.Dataset.from_list(synthetic_records(...))``."""
    records = []
    for category, sp, defect, index, img, mask in generate(name, **kwargs):
        if sp != split:
            continue
        records.append({
            "image": {"bytes": _png_bytes(img), "path": None},
            "mask": None if mask is None else {"bytes": _png_bytes(mask.astype(np.uint8) * 255),
                                               "path": None},
            "label": int(mask is not None), "dataset": name, "category": category,
            "prompt_name": "object", "defect_type": defect, "split": sp,
            "sample_id": f"{name}/{category}/{sp}/{defect}/{index:03d}",
            "source_path": f"{category}/{sp}/{defect}/{index:03d}.png",
            "has_mask": mask is not None, "width": img.shape[1], "height": img.shape[0]})
    return records


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
