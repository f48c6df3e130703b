"""Convert between prepared datasets and the ``meta.json`` of AnomalyCLIP / APRIL-GAN.

Format (AnomalyCLIP ``generate_dataset_json/``)::

    {"train": {cls_name: [entry, ...]}, "test": {cls_name: [entry, ...]}}
    entry = {"img_path": str, "mask_path": str ("" without mask), "cls_name": str,
             "specie_name": str (defect type, "good" for normal), "anomaly": 0 | 1}

Paths are relative to the dataset root. Export writes the ``source_path`` of each image and the
original mask path (both inside the user's download). Images cut or re-encoded by the adapter
(KolektorSDD pieces) have no file of their own in the download: export them with
``materialize``, which writes every image and mask (0/255 PNG) under a folder of its own and
points the paths there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from zsbench.adapter import DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.atomic import write_bytes, write_text
from zsbench.errors import DataError

logger = logging.getLogger(__name__)

ENTRY_FIELDS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
SUFFIX_BY_FORMAT = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg"}


def _suffix(data: bytes) -> str:
    for magic, suffix in SUFFIX_BY_FORMAT.items():
        if data.startswith(magic):
            return suffix
    return ".png"


def _iter_rows(source: str | Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    from zsbench.data import DataSourceError, is_local, local_shards

    if not is_local(source):
        raise DataSourceError(f"{source}: meta.json export needs a prepared folder")
    for shard in local_shards(source):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=64):
            yield from batch.to_pylist()


def export_meta(source: str | Path, out: str | Path,
                materialize: str | Path | None = None) -> Path:
    """Write ``meta.json`` for a prepared dataset; with ``materialize`` also the image and mask
    files (paths in meta.json are then relative to ``materialize``). Returns ``out``."""
    meta: dict[str, dict[str, list[dict[str, Any]]]] = {}
    used: set[str] = set()
    target = None if materialize is None else Path(materialize)
    for row in _iter_rows(source):
        image_path = row["source_path"]
        mask = row["mask"]
        mask_path = (mask or {}).get("path") or ""
        if target is not None:
            data = row["image"]["bytes"]
            pure = PurePosixPath(image_path)
            image_path = str(pure.with_suffix(_suffix(data)))
            if image_path in used:  # pieces cut from one file
                image_path = str(pure.with_name(f"{pure.stem}_{row['sample_id'][:8]}"
                                                f"{_suffix(data)}"))
            write_bytes(target / image_path, data)
            if mask is not None:
                mask_path = str(PurePosixPath(image_path).with_name(
                    f"{PurePosixPath(image_path).stem}_mask.png"))
                mask_path = f"masks/{mask_path}"
                write_bytes(target / mask_path, mask["bytes"])
        elif image_path in used:
            raise DataError(f"{source}: several images come from {image_path!r} (pieces cut by "
                            "the adapter); export them with materialize (--materialize DIR)")
        used.add(image_path)
        if row["label"] == 1 and row["has_mask"] and not mask_path:
            raise DataError(f"{source}: the mask of {row['source_path']!r} was built by the "
                            "adapter and has no file in the download; use materialize")
        entry = {"img_path": image_path, "mask_path": mask_path, "cls_name": row["category"],
                 "specie_name": row["defect_type"], "anomaly": int(row["label"])}
        meta.setdefault(row["split"], {}).setdefault(row["category"], []).append(entry)
    for split in ("train", "test"):
        meta.setdefault(split, {})
    out = Path(out)
    write_text(out, json.dumps(meta, indent=2) + "\n")
    logger.info("wrote %s (%d images)", out, len(used))
    return out


def read_meta(meta_path: str | Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Load and check a meta.json; errors name the file, split, class and entry at fault."""
    meta_path = Path(meta_path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetLayoutError(f"{meta_path}: cannot read meta.json: {err}") from err
    if not isinstance(meta, dict) or not meta:
        raise DatasetLayoutError(f"{meta_path}: expected {{'train': {{cls: [...]}}, "
                                 "'test': {...}}")
    for split, classes in meta.items():
        if not isinstance(classes, dict):
            raise DatasetLayoutError(f"{meta_path}: split {split!r} must map class names to "
                                     "lists of entries")
        for cls_name, entries in classes.items():
            for index, entry in enumerate(entries):
                missing = [f for f in ENTRY_FIELDS if f not in entry]
                if missing or entry["anomaly"] not in (0, 1):
                    raise DatasetLayoutError(f"{meta_path}: {split}/{cls_name} entry {index} "
                                             f"needs {list(ENTRY_FIELDS)} with anomaly 0/1; "
                                             f"got {entry}")
    return meta


def meta_records(meta_path: str | Path, root: str | Path) -> list[RawRecord]:
    """The images a meta.json lists under ``root`` as :class:`RawRecord` objects."""
    meta = read_meta(meta_path)
    root = Path(root)
    records: list[RawRecord] = []
    missing: list[str] = []
    for split, classes in meta.items():
        for cls_name, entries in classes.items():
            for entry in entries:
                image = root / entry["img_path"]
                if not image.is_file():
                    missing.append(entry["img_path"])
                    continue
                mask = root / entry["mask_path"] if entry["mask_path"] else None
                if mask is not None and not mask.is_file():
                    logger.warning("%s: mask %s of %s does not exist (kept without mask)",
                                   meta_path, entry["mask_path"], entry["img_path"])
                    mask = None
                label = int(entry["anomaly"])
                specie = entry["specie_name"]
                defect = "good" if not label else (
                    specie if specie and specie != "good" else "anomaly")
                records.append(RawRecord(category=cls_name, label=label, split=split,
                                         source_path=entry["img_path"], image=image,
                                         mask=mask if label else None, defect_type=defect))
    if missing:
        raise DatasetLayoutError(f"{meta_path}: {len(missing)} images do not exist under "
                                 f"{root}: {missing[:10]}")
    return records


def import_meta(meta_path: str | Path, root: str | Path, name: str, out_dir: str | Path, *,
                overwrite: bool = False, progress: Any = None) -> Path:
    """Prepare ``out_dir/name`` from a meta.json and the dataset root it refers to.

    If ``name`` is a registered adapter its metadata (licence, citation, prompt words) goes to
    the card; otherwise the card says the licence is unknown and re-hosting is not allowed."""
    from zsbench.prepare import write_prepared
    from zsbench.registry import ADAPTERS

    records = meta_records(meta_path, root)
    if not records:
        raise DatasetLayoutError(f"{meta_path}: lists no images")
    categories = tuple(sorted({r.category for r in records}))
    if name in ADAPTERS:
        base = ADAPTERS.get(name).info
        info = DatasetInfo(**{**base.__dict__, "name": name})
    else:
        info = DatasetInfo(name=name, title=name, domain="industrial", categories=categories,
                           prompt_names={c: c.replace("_", " ") for c in categories},
                           license="unknown", rehostable=False,
                           citation="unknown (imported from a meta.json)", homepage="",
                           has_masks=any(r.mask is not None for r in records),
                           has_normals=any(r.label == 0 for r in records),
                           splits=tuple(sorted({r.split for r in records})))
    target = Path(out_dir) / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite)")
    return write_prepared(info, records, target, adapter_name=f"meta.json:{Path(meta_path).name}",
                          progress=progress)
