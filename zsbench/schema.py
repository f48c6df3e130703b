"""The unified record of a prepared dataset: Hugging Face ``Features`` and the record validator.

One row per image (DATASETS.md): ``image`` (Image), ``mask`` (Image or None; mode L, values
0/255; None for normal images, the loader builds zeros), ``label`` (ClassLabel normal/anomaly),
``dataset``, ``category``, ``prompt_name``, ``defect_type`` ("good" for normals), ``split``,
``sample_id``, ``source_path`` (strings), ``has_mask`` (bool), ``width``, ``height`` (int32).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Features, Image, Value
from PIL import Image as PILImage

from zsbench.errors import DataError

LABEL_NAMES = ("normal", "anomaly")
NORMAL_DEFECT_TYPE = "good"
STRING_COLUMNS = ("dataset", "category", "prompt_name", "defect_type", "split", "sample_id",
                  "source_path")
COLUMNS = ("image", "mask", "label", *STRING_COLUMNS, "has_mask", "width", "height")
SPLIT_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")  # split names end up in shard file names


class SchemaError(DataError):
    """A record or a prepared dataset breaks the unified schema; says which record and why."""


@lru_cache(maxsize=1)
def features() -> Features:
    """The ``datasets.Features`` of the unified record (column order = :data:`COLUMNS`)."""
    spec: dict[str, Any] = {
        "image": Image(),
        "mask": Image(),
        "label": ClassLabel(names=list(LABEL_NAMES)),
    }
    spec.update({name: Value("string") for name in STRING_COLUMNS})
    spec.update({"has_mask": Value("bool"), "width": Value("int32"), "height": Value("int32")})
    return Features(spec)


def arrow_schema() -> pa.Schema:
    """The Arrow schema with the Hugging Face features metadata, so ``datasets`` reads the typed
    features back from the Parquet files."""
    return features().arrow_schema


def make_sample_id(dataset: str, source_path: str, piece: int | None = None) -> str:
    """A stable id: sha256 of dataset id + source path (+ piece index for cut images), 16 hex."""
    key = f"{dataset}\n{source_path}" + ("" if piece is None else f"\n{piece}")
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _image_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise SchemaError(f"expected image bytes or {{'bytes', 'path'}}, got {type(value).__name__}")


def _where(record: Mapping[str, Any]) -> str:
    return (f"{record.get('dataset', '?')}: record {record.get('source_path', '?')!r} "
            f"(sample_id {record.get('sample_id', '?')})")


def validate_record(record: Mapping[str, Any], *, check_pixels: bool = False) -> None:
    """Raise :class:`SchemaError` if ``record`` breaks the unified schema.

    Checks columns, label in {0, 1}, normal <=> defect_type "good", normal => no mask,
    has_mask <=> mask present, positive width/height equal to the image header, mask size equal
    to the image size. With ``check_pixels`` the mask is decoded: mode L with values in {0, 255}.
    """
    where = _where(record)
    _check_fields(record, where)
    mask = _image_bytes(record["mask"])
    if bool(record["has_mask"]) != (mask is not None):
        raise SchemaError(f"{where}: has_mask={record['has_mask']} but the mask is "
                          f"{'absent' if mask is None else 'present'}")
    if record["label"] == 0 and mask is not None:
        raise SchemaError(f"{where}: normal images carry no mask (the loader builds zeros)")
    width, height = record["width"], record["height"]
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise SchemaError(f"{where}: width/height must be positive integers, "
                          f"got {width!r} x {height!r}")
    image = _image_bytes(record["image"])
    if not image:
        raise SchemaError(f"{where}: the image has no bytes")
    size = _open_image(image, "image", where).size
    if size != (width, height):
        raise SchemaError(f"{where}: width x height {width}x{height} != image size "
                          f"{size[0]}x{size[1]}")
    if mask is not None:
        _check_mask(_open_image(mask, "mask", where), size, where, check_pixels)


def _check_fields(record: Mapping[str, Any], where: str) -> None:
    """Columns present, label in {0, 1}, non-empty strings, split name, normal <=> "good"."""
    missing = [c for c in COLUMNS if c not in record]
    if missing:
        raise SchemaError(f"{where}: missing columns {missing}")
    label = record["label"]
    if label not in (0, 1) or isinstance(label, bool):
        raise SchemaError(f"{where}: label must be 0 (normal) or 1 (anomaly), got {label!r}")
    for name in STRING_COLUMNS:
        if not isinstance(record[name], str) or not record[name]:
            raise SchemaError(f"{where}: column {name!r} must be a non-empty string, "
                              f"got {record[name]!r}")
    if not SPLIT_PATTERN.match(record["split"]):
        raise SchemaError(f"{where}: split {record['split']!r} must be lower-case letters, "
                          "digits or '_' (e.g. 'train', 'test')")
    is_good = record["defect_type"] == NORMAL_DEFECT_TYPE
    if label == 0 and not is_good:
        raise SchemaError(f"{where}: a normal image must have defect_type 'good', "
                          f"got {record['defect_type']!r}")
    if label == 1 and is_good:
        raise SchemaError(f"{where}: an anomalous image cannot have defect_type 'good'")


def _open_image(data: bytes, what: str, where: str) -> PILImage.Image:
    """The image (or mask) header of encoded bytes; unreadable bytes are a SchemaError."""
    try:
        return PILImage.open(io.BytesIO(data))
    except Exception as err:
        from zsbench.data import image_error_reason

        raise SchemaError(f"{where}: the {what} bytes cannot be read: "
                          f"{image_error_reason(err)}") from err


def _check_mask(mask_img: PILImage.Image, size: tuple[int, int], where: str,
                check_pixels: bool) -> None:
    """Mask size equal to the image's; with ``check_pixels`` mode L with values in {0, 255}."""
    if mask_img.size != size:
        raise SchemaError(f"{where}: mask size {mask_img.size[0]}x{mask_img.size[1]} != "
                          f"image size {size[0]}x{size[1]}")
    if check_pixels:
        if mask_img.mode != "L":
            raise SchemaError(f"{where}: mask mode must be L, got {mask_img.mode}")
        values = np.unique(np.asarray(mask_img))
        if not set(values.tolist()) <= {0, 255}:
            raise SchemaError(f"{where}: mask values must be 0/255, got {values[:8].tolist()}")


def validate_records(records: Iterable[Mapping[str, Any]], *, check_pixels: bool = False) -> int:
    """Validate every record and the uniqueness of ``sample_id``; returns the number of records."""
    seen: dict[str, str] = {}
    count = 0
    for record in records:
        validate_record(record, check_pixels=check_pixels)
        sid = record["sample_id"]
        if sid in seen:
            raise SchemaError(f"{_where(record)}: duplicate sample_id (also used by "
                              f"{seen[sid]!r})")
        seen[sid] = record["source_path"]
        count += 1
    return count


def validate_prepared(folder: str | Path, *, check_pixels: bool = False) -> int:
    """Validate every Parquet shard of a prepared folder (``<folder>/data/*.parquet``): the
    columns and types equal :func:`arrow_schema` and every record passes
    :func:`validate_record`. Returns the number of records."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    shards = sorted((folder / "data").glob("*.parquet"))
    if not shards:
        raise SchemaError(f"{folder}: no Parquet shards under {folder / 'data'}")
    expected = arrow_schema()

    def rows() -> Iterable[dict[str, Any]]:
        for shard in shards:
            pf = pq.ParquetFile(shard)
            if not pf.schema_arrow.remove_metadata().equals(expected.remove_metadata()):
                raise SchemaError(f"{shard}: columns/types differ from the unified schema:\n"
                                  f"{pf.schema_arrow.remove_metadata()}")
            split = shard.name.split("-", 1)[0]
            for batch in pf.iter_batches(batch_size=64):
                for row in batch.to_pylist():
                    if row["split"] != split:
                        raise SchemaError(f"{shard}: record {row['source_path']!r} has split "
                                          f"{row['split']!r} in a {split!r} shard")
                    yield row

    return validate_records(rows(), check_pixels=check_pixels)
