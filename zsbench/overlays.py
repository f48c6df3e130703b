"""Side-by-side overlay images (image | ground truth | heat map) for visual inspection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zsbench import atomic
from zsbench.anomaly_maps import upsample
from zsbench.preprocess import denormalize

# anchor colours of a perceptually ordered dark-to-bright heat map (black-purple-red-yellow)
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
                    dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB with a dark-to-bright heat map."""
    v = np.clip(values, 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (v - lo)[..., None]
    return (_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).astype(np.uint8)


def overlay_panel(image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray,
                  vmin: float, vmax: float) -> np.ndarray:
    """Three panels side by side: the image, the ground truth outlined in green over the image,
    and the heat map blended over the image. ``image`` uint8 [H, W, 3]; ``mask`` bool [H, W];
    ``anomaly_map`` float [H, W], normalised with the category's ``vmin``/``vmax``."""
    norm = (anomaly_map.astype(np.float32) - vmin) / max(vmax - vmin, 1e-12)
    heat = (0.45 * image + 0.55 * colormap(norm)).astype(np.uint8)
    truth = image.copy()
    if mask.any():
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1)
                        & np.roll(mask, -1, 1))
        truth[mask] = (0.6 * truth[mask] + 0.4 * np.array([0, 255, 0])).astype(np.uint8)
        truth[edge] = (0, 255, 0)
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([image, gap, truth, gap, heat], axis=1)


def save_overlay(path: str | Path, image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray,
                 vmin: float, vmax: float) -> Path:
    panel = overlay_panel(image, mask, anomaly_map, vmin, vmax)
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(panel).save(tmp, format="PNG")
    return Path(path)


def save_overlay_image(path: Path, image: Any, mask: np.ndarray, anomaly_map: np.ndarray,
                       backbone: Any, resolution: int, low: float, high: float) -> Path:
    """The overlay PNG of one evaluated image (its preprocessed ``[3, S, S]`` tensor, shown at
    ``resolution``), its map drawn on the colour scale ``low``..``high``."""
    rgb = denormalize(image[None].float(), backbone.mean, backbone.std)
    rgb = upsample(rgb, resolution)[0].permute(1, 2, 0).numpy()
    rgb = (rgb.clip(0, 1) * 255).astype(np.uint8)
    return save_overlay(path, rgb, mask, anomaly_map, low, high)
