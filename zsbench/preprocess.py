"""From unified records to tensors: image and mask transforms and a torch Dataset.

Images are squashed to ``image_size`` x ``image_size`` (no aspect-preserving crop) with bicubic
resampling and normalised with the backbone's mean/std, as the AnomalyCLIP family does. Masks
are resized bilinearly on the 0/255 mask and binarised at ``> threshold`` (METHODS.md section 0);
records without a mask get an all-zero mask.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset


def _open(value: Any) -> Image.Image | None:
    """A PIL image from a datasets ``Image`` value: PIL, {"bytes", "path"} dict or None."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
        return None
    raise TypeError(f"cannot read an image from {type(value).__name__}")


def image_to_tensor(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]
                    ) -> Tensor:
    """RGB, bicubic squash to ``size``, [0, 1], normalised: [3, size, size] float32."""
    img = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def mask_to_tensor(mask: Image.Image | None, size: int, threshold: float = 0.5) -> Tensor:
    """Bilinear resize of the 0/255 mask to ``size``, binarised ``> threshold``: [size, size]
    bool. ``None`` gives all zeros."""
    if mask is None:
        return torch.zeros(size, size, dtype=torch.bool)
    m = mask.convert("L").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0 > threshold)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo :func:`image_to_tensor`'s normalisation: [B, 3, H, W] in [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * s + m).clamp(0, 1)


class AnomalyImageDataset(Dataset):
    """A torch Dataset over a unified (Hugging Face) dataset, or any sequence of records.

    Items are dicts: ``image`` [3, S, S], ``mask`` [M, M] float 0/1, ``label`` (int),
    ``class_name`` (prompt word), ``category``, ``index`` (position in ``records``)."""

    def __init__(self, records: Any, image_size: int, mean: Sequence[float], std: Sequence[float],
                 mask_size: int | None = None, mask_threshold: float = 0.5,
                 indices: Sequence[int] | None = None):
        self.records = records
        self.image_size = image_size
        self.mask_size = mask_size or image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.mask_threshold = mask_threshold
        self.indices = list(range(len(records))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        row = self.records[index]
        image = _open(row["image"])
        if image is None:
            raise ValueError(f"record {index} ({row.get('source_path', '?')}) has no image")
        mask = _open(row.get("mask"))
        return {
            "image": image_to_tensor(image, self.image_size, self.mean, self.std),
            "mask": mask_to_tensor(mask, self.mask_size, self.mask_threshold).float(),
            "label": int(row["label"]),
            "class_name": row.get("prompt_name") or "object",
            "category": row.get("category", ""),
            "index": index,
        }
