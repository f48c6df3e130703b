"""From unified records to tensors: image and mask transforms and a torch Dataset.

Images are squashed to ``image_size`` x ``image_size`` (no aspect-preserving crop) and normalised
with the backbone's mean/std. The resampling filter is a per-method setting
(``MethodConfig.input_interpolation``): bicubic by default, as the AnomalyCLIP family does;
"bilinear" is what a torchvision ``transforms.Resize((S, S))`` on a PIL image does (its default
interpolation), e.g. AnoVL's ``vl_test.py``. Both go through PIL's ``Image.resize``, which
antialiases when downscaling by construction (the filter support widens with the scale factor),
exactly as torchvision's PIL path does. Masks
are resized bilinearly on the 0/255 mask and binarised at ``> threshold`` (METHODS.md section 0);
records without a mask get an all-zero mask.
"""

from __future__ import annotations

import io
import zlib
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


#: input resize filters by name (``MethodConfig.input_interpolation``) -> PIL resampling filter
INPUT_INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def resampling_filter(interpolation: str) -> int:
    """The PIL filter of an ``input_interpolation`` name; an unknown name lists the known ones."""
    from zsbench.errors import ConfigError

    try:
        return INPUT_INTERPOLATIONS[interpolation]
    except (KeyError, TypeError):
        raise ConfigError(f"input_interpolation {interpolation!r} is not one of "
                         f"{', '.join(INPUT_INTERPOLATIONS)}") from None


def image_to_tensor(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float],
                    interpolation: str = "bicubic") -> Tensor:
    """RGB, squash to ``size`` with PIL's ``interpolation`` filter (antialiased), [0, 1],
    normalised: [3, size, size] float32.

    The image is converted to RGB before the resize. torchvision's ``Resize`` then
    ``convert("RGB")`` (AnoVL) resizes in the file's own mode first; for RGB and greyscale (L)
    files, the modes of the industrial benchmarks, both orders give the same bytes."""
    img = image.convert("RGB").resize((size, size), resampling_filter(interpolation))
    pixels = np.asarray(img).transpose(2, 0, 1)  # a CHW view of the uint8 pixels
    out = np.empty((3, size, size), dtype=np.float32)
    # (x / 255 - mean) / std as one multiply and one subtract per channel, written in place
    for channel in range(3):
        np.multiply(pixels[channel], np.float32(1.0 / (255.0 * std[channel])),
                    out=out[channel], casting="unsafe")
        out[channel] -= np.float32(mean[channel] / std[channel])
    return torch.from_numpy(out)


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

    Items are dicts: ``image`` [3, S, S] float32, ``mask`` [M, M] uint8 0/1, ``label`` (int),
    ``class_name`` (prompt word), ``category``, ``index`` (position in ``records``).
    ``interpolation`` is the image resize filter (the method's ``input_interpolation``)."""

    def __init__(self, records: Any, image_size: int, mean: Sequence[float], std: Sequence[float],
                 mask_size: int | None = None, mask_threshold: float = 0.5,
                 indices: Sequence[int] | None = None, interpolation: str = "bicubic"):
        resampling_filter(interpolation)  # fail here, not in a loader worker
        self.records = records
        self.interpolation = interpolation
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
        image, mask = _decode_record(row, index)
        return {
            "image": image_to_tensor(image, self.image_size, self.mean, self.std,
                                     self.interpolation),
            "mask": mask_to_tensor(mask, self.mask_size, self.mask_threshold).to(torch.uint8),
            "label": int(row["label"]),
            "class_name": row.get("prompt_name") or "object",
            "category": row.get("category", ""),
            "index": index,
        }


def _decode_record(row: Any, index: int) -> tuple[Image.Image, Image.Image | None]:
    """The record's image and mask, decoded in full; corrupt bytes raise a
    :class:`~zsbench.errors.DataError` naming the record (dataset, category, source path)."""
    from zsbench.data import image_error_reason
    from zsbench.errors import DataError

    where = (f"record {index} of {row.get('dataset') or 'the dataset'} (category "
             f"{row.get('category', '?')!r}, source {row.get('source_path', '?')!r})")
    decoded = []
    for column in ("image", "mask"):
        try:
            value = _open(row.get(column))
            if value is not None:
                value.load()
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as err:
            raise DataError(f"{where}: cannot decode its {column}: {image_error_reason(err)}; "
                            "prepare the dataset again") from err
        decoded.append(value)
    if decoded[0] is None:
        raise DataError(f"{where} has no image")
    return decoded[0], decoded[1]
