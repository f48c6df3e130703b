"""Small image and mask writers for raw-layout fixtures (odd formats included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def image_array(size: tuple[int, int] = (32, 32), channels: int = 3, seed: int = 0) -> np.ndarray:
    """A random uint8 image, (h, w) or (h, w, channels)."""
    h, w = size
    shape = (h, w) if channels == 1 else (h, w, channels)
    return _rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def mask_array(size: tuple[int, int] = (32, 32), seed: int = 0, empty: bool = False,
               value: int = 255) -> np.ndarray:
    """A 0/``value`` mask with one rectangle (or all zeros)."""
    h, w = size
    m = np.zeros((h, w), dtype=np.uint8)
    if not empty:
        r = _rng(seed)
        y, x = int(r.integers(0, h // 2)), int(r.integers(0, w // 2))
        m[y:y + h // 4 + 1, x:x + w // 4 + 1] = value
    return m


def write_image(path: Path, size: tuple[int, int] = (32, 32), mode: str = "RGB",
                seed: int = 0) -> Path:
    """Write a random image; the format follows the suffix (.png .jpg .JPG .bmp .tif).

    ``mode`` may be RGB, RGBA or L (greyscale)."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image_array(size, channels, seed), mode=mode)
    if path.suffix.lower() in (".jpg", ".jpeg") and mode == "RGBA":
        img = img.convert("RGB")
    img.save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (32, 32), seed: int = 0, empty: bool = False,
               value: int = 255, rgb: bool = False) -> Path:
    """Write a binary mask (PNG/BMP exact; JPEG adds compression noise like Kvasir-SEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = mask_array(size, seed, empty, value)
    img = Image.fromarray(np.stack([m] * 3, -1) if rgb else m)
    img.save(path)
    return path


def write_text(path: Path, text: str, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes(data.encode("utf-8"))
    return path
