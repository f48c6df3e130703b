"""``--save-maps all``: every image's score and anomaly map, stored compactly, re-scored later.

A store is a folder keyed to one result (its ``identity_key``)::

    STORE/manifest.json        identity key, format, precision, categories
    STORE/<category>.npz       one compressed file per category

Each category file holds the image ids, labels, image scores (float64, exact), masks as packed
bits (exact) and the maps in the chosen ``precision``:

* ``"uint16"`` (default): quantised linearly between the category's min and max map value,
  ``q = round((v - min) / step)`` with ``step = (max - min) / 65535``; each value comes back within
  ``step / 2`` (about 7.6e-6 of the category's range);
* ``"uint8"``: the same with 255 levels (within ``(max - min) / 510``); a preview quality;
* ``"float16"``: IEEE half, relative error up to 2**-11 (about 3 significant digits).

**Precision loss.** Every stored map is coarser than the float32 maps the evaluator scored:
distinct scores can fall into one level and become ties, so rank metrics recomputed from a
store differ from the recorded ones. On 60 synthetic 256x256 maps (benchmarks/bench_bootstrap.py
``synthetic``, seed 3) pixel AP moved by -2.2e-5 (uint16), -6.7e-4 (float16) and -5.7e-3
(uint8), AUPRO by under 1e-4 for all three; METRICS.md measured float16 moving pixel AP by
-3.5e-4 on realistic maps and -3.5e-3 on narrow ones. :func:`rescore` therefore labels every
pixel metric it returns as computed from the stored maps and records their precision; image
metrics use the exact stored scores. Files are written atomically (:mod:`zsbench.atomic`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zsbench.atomic import atomic_path, write_text
from zsbench.bootstrap import CategoryData, EvaluationData
from zsbench.errors import DataError
from zsbench.metrics import METRIC_NAMES, summarize
from zsbench.rescoring import VARIANTS, rescore_category

logger = logging.getLogger(__name__)

FORMAT = "zsbench-map-store/1"
PRECISIONS = ("uint16", "uint8", "float16")
MANIFEST = "manifest.json"
PIXEL_NAMES = tuple(METRIC_NAMES[3:]) + tuple(name for name in VARIANTS
                                               if name not in METRIC_NAMES)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class MapStoreError(DataError):
    """A store that cannot be read or written; the message names the file and the problem."""


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise MapStoreError(f"unknown map precision {precision!r}; choose from {PRECISIONS}")
    return precision


def _category_file(store: Path, category: str) -> Path:
    if not _SAFE_NAME.match(category):
        raise MapStoreError(f"category name {category!r} cannot name a store file (use letters, "
                            "digits, '_', '-', '.', '+')")
    return store / f"{category}.npz"


def quantise(maps: np.ndarray, precision: str) -> tuple[np.ndarray, float, float]:
    """``(stored, low, high)``; ``low``/``high`` are the category's min/max map value."""
    _check_precision(precision)
    maps = np.asarray(maps, dtype=np.float64)
    if maps.size and not np.isfinite(maps).all():
        raise MapStoreError("maps must be finite to be stored")
    low = float(maps.min()) if maps.size else 0.0
    high = float(maps.max()) if maps.size else 0.0
    if precision == "float16":
        if maps.size and max(abs(low), abs(high)) > float(np.finfo(np.float16).max):
            raise MapStoreError(f"maps range [{low}, {high}] overflows float16; store them as "
                                "uint16")
        return maps.astype(np.float16), low, high
    levels = np.iinfo(np.dtype(precision)).max
    if high == low:
        return np.zeros(maps.shape, dtype=precision), low, high
    scaled = np.rint((maps - low) * (levels / (high - low)))
    return np.clip(scaled, 0, levels).astype(precision), low, high


def dequantise(stored: np.ndarray, low: float, high: float) -> np.ndarray:
    """float32 maps back from :func:`quantise` (float16 is widened as is)."""
    if stored.dtype == np.float16:
        return stored.astype(np.float32)
    levels = np.iinfo(stored.dtype).max
    step = (high - low) / levels
    return (low + stored.astype(np.float64) * step).astype(np.float32)


def quantisation_step(precision: str, low: float, high: float) -> float | None:
    """Width of one stored level (None for float16: relative precision 2**-11)."""
    if _check_precision(precision) == "float16":
        return None
    return (high - low) / np.iinfo(np.dtype(precision)).max


def write_category(store: str | os.PathLike[str], category: str, data: CategoryData,
                   identity_key: str, precision: str = "uint16") -> Path:
    """Write one category's file (atomically) and add it to the manifest."""
    store = Path(store)
    _check_precision(precision)
    path = _category_file(store, category)
    arrays: dict[str, np.ndarray] = {
        "identity_key": np.array(identity_key),
        "labels": data.labels.astype(np.uint8),
        "scores": np.asarray(data.scores, dtype=np.float64),
        "image_ids": np.array(data.image_ids if data.image_ids is not None else
                              [str(i) for i in range(data.n_images)], dtype=str),
    }
    if data.masks is not None and data.maps is not None:
        n, height, width = data.masks.shape
        stored, low, high = quantise(data.maps, precision)
        arrays.update({
            "masks_packed": np.packbits(data.masks.reshape(n, -1), axis=1),
            "map_shape": np.array([n, height, width], dtype=np.int64),
            "maps": stored,
            "map_range": np.array([low, high], dtype=np.float64),
        })
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    manifest = _read_manifest(store) if (store / MANIFEST).exists() else {
        "format": FORMAT, "identity_key": identity_key, "precision": precision,
        "categories": []}
    if manifest["identity_key"] != identity_key:
        raise MapStoreError(f"{store / MANIFEST} belongs to result {manifest['identity_key']}, "
                            f"not {identity_key}; use a separate store per result")
    if manifest["precision"] != precision:
        raise MapStoreError(f"{store / MANIFEST} stores maps as {manifest['precision']}, not "
                            f"{precision}")
    if category not in manifest["categories"]:
        manifest["categories"].append(category)
    write_text(store / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    logger.info("stored %d maps of %s in %s (%s)", data.n_images, category, path, precision)
    return path


def write_store(store: str | os.PathLike[str], data: EvaluationData, identity_key: str,
                precision: str = "uint16") -> Path:
    """Write every category of ``data``; returns the store folder."""
    if not re.fullmatch(r"[0-9a-f]{16}", identity_key):
        raise MapStoreError(f"identity_key must be 16 hex digits (zsbench.identity); got "
                            f"{identity_key!r}")
    for category, values in data.categories.items():
        write_category(store, category, values, identity_key, precision)
    return Path(store)


def _read_manifest(store: Path) -> dict[str, Any]:
    path = store / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MapStoreError(f"{store} is not a map store: {MANIFEST} is missing") from None
    except json.JSONDecodeError as err:
        raise MapStoreError(f"{path} is not valid JSON: {err}") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise MapStoreError(f"{path}: format {found!r} is not {FORMAT!r}")
    return manifest


def read_manifest(store: str | os.PathLike[str]) -> dict[str, Any]:
    """The store's manifest (identity key, precision, categories)."""
    return _read_manifest(_store_dir(store))


def _store_dir(store: str | os.PathLike[str]) -> Path:
    path = Path(store)
    return path.parent if path.name == MANIFEST else path


def read_store(store: str | os.PathLike[str]) -> EvaluationData:
    """All categories of a store, with maps dequantised to float32."""
    folder = _store_dir(store)
    manifest = _read_manifest(folder)
    categories: dict[str, CategoryData] = {}
    for category in manifest["categories"]:
        path = _category_file(folder, category)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                key = str(arrays["identity_key"])
                if key != manifest["identity_key"]:
                    raise MapStoreError(f"{path} belongs to result {key}, the manifest to "
                                        f"{manifest['identity_key']}")
                labels = arrays["labels"].astype(bool)
                masks = maps = None
                if "maps" in arrays:
                    n, height, width = (int(v) for v in arrays["map_shape"])
                    masks = np.unpackbits(arrays["masks_packed"], axis=1,
                                          count=height * width).astype(bool).reshape(
                        n, height, width)
                    low, high = (float(v) for v in arrays["map_range"])
                    maps = dequantise(arrays["maps"], low, high)
                categories[category] = CategoryData(
                    labels=labels, scores=arrays["scores"], masks=masks, maps=maps,
                    image_ids=[str(v) for v in arrays["image_ids"]])
        except FileNotFoundError:
            raise MapStoreError(f"{path} is listed in {folder / MANIFEST} but missing") from None
        except (KeyError, ValueError, OSError) as err:
            if isinstance(err, MapStoreError):
                raise
            raise MapStoreError(f"{path} is not a readable map-store file: {err}") from None
    return EvaluationData(categories)


def rescore(store: str | os.PathLike[str], metrics: Iterable[str] = METRIC_NAMES
            ) -> dict[str, Any]:
    """Recompute ``metrics`` (any of :data:`zsbench.metrics.METRIC_NAMES` and
    :data:`zsbench.rescoring.VARIANTS`) from a store, without the model.

    Returns ``{"identity_key", "precision", "per_category": {category: {metric: value}},
    "mean", "categories_used", "computed_from": {metric: note}}``; every pixel metric's note
    says it was computed from the stored (quantised) maps."""
    names = list(metrics)
    folder = _store_dir(store)
    manifest = _read_manifest(folder)
    data = read_store(folder)
    per_category = {
        category: rescore_category(values.labels, values.scores, values.masks, values.maps,
                                   names)
        for category, values in data.categories.items()}
    summary = summarize(per_category)
    precision = manifest["precision"]
    detail = ("stored float16 maps (relative error up to 2**-11)" if precision == "float16"
              else f"stored {precision}-quantised maps (error up to half a level of the "
                   "category's min-max range)")
    computed_from = {name: (f"computed from {detail}, not the evaluator's float32 maps"
                            if name in PIXEL_NAMES else "exact stored image scores")
                     for name in names}
    return {"identity_key": manifest["identity_key"], "precision": precision,
            "per_category": per_category,
            "mean": {name: summary["mean"].get(name) for name in names},
            "categories_used": {name: summary["categories_used"].get(name, 0) for name in names},
            "computed_from": computed_from}


def store_summary(store: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Manifest plus per-category image counts and map shapes (reads only the headers)."""
    folder = _store_dir(store)
    manifest = _read_manifest(folder)
    shapes: dict[str, Any] = {}
    for category in manifest["categories"]:
        with np.load(_category_file(folder, category), allow_pickle=False) as arrays:
            shapes[category] = (arrays["map_shape"].tolist() if "map_shape" in arrays
                                else [int(arrays["labels"].size)])
    return {**manifest, "shapes": shapes}
