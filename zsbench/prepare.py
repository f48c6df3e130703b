"""Raw download -> Hub-ready folder: ``<out>/<name>/data/<split>-NNNNN-of-NNNNN.parquet`` shards
and a ``README.md`` dataset card, written atomically.

Encoding rules (the adapter contract, :mod:`zsbench.adapter`):

* Images: PNG and JPEG bytes are stored as they are (RGBA and greyscale included); other
  formats (BMP, TIFF) are re-encoded to PNG losslessly. Width and height come from the header.
  Every image and mask is decoded in full once, so a truncated or corrupt file fails here, with
  the dataset, category and file named, rather than later in a run.
* Masks become single-channel PNGs with values 0/255. A pixel is foreground when its value is
  ``> threshold``: ``extra["mask_threshold"]`` if the adapter sets it, else 127 for JPEG masks
  (compression noise) and 0 for every other format (VisA's defect ids 1..k become 255). Palette
  masks are read as their indices. A mask must have the image's size.
* A normal image has no mask: an all-zero mask given for it is dropped, a non-zero one is an
  error. ``extra["crop"] = (left, top, right, bottom)`` crops image and mask (stored as PNG);
  ``extra["piece"]`` enters the sample id.
* Adapter options: an adapter that lists ``options_accepted`` (a tuple of names), or declares
  ``option_types``, gets unknown options rejected with an error naming them; values are
  converted to the declared types first (``strict=false`` is False, see
  :func:`zsbench.adapter.convert_options`).

Work runs in a thread pool (decoding and PNG encoding release the GIL) with a bounded window,
so memory stays near one shard. Preparing again with the same inputs (adapter, options, zsbench
version, the raw folder's file names, sizes and times) is a no-op. The output folder's
writability is checked before any work, and staging folders left by a killed run are removed
(:func:`zsbench.atomic.remove_stale_staging`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from zsbench import __version__
from zsbench.adapter import (
    AdapterOptionError,
    DatasetAdapter,
    DatasetInfo,
    DatasetLayoutError,
    RawRecord,
    accepted_options,
    convert_options,
)
from zsbench.atomic import atomic_directory, ensure_writable_dir, remove_stale_staging
from zsbench.data import image_error_reason
from zsbench.dataset_card import read_card_file, render_card
from zsbench.errors import DataError
from zsbench.provenance import sha256_file, update_with_file
from zsbench.raw_files import describe_folder
from zsbench.schema import (
    NORMAL_DEFECT_TYPE,
    SPLIT_PATTERN,
    arrow_schema,
    make_sample_id,
    validate_record,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (images done, images in total)
T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_SHARD_BYTES = 500 * 1024**2  # the Hub's usual shard size
ROWS_PER_ROW_GROUP = 100  # small row groups keep streaming and category filters cheap
PNG_COMPRESS_LEVEL = 3
KEPT_FORMATS = ("PNG", "JPEG")


class PrepareError(DataError):
    """Preparing failed for a reason that names the dataset and the file or option at fault."""


def _sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    return None


def _read(source: Path | bytes) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _png_bytes(image: Image.Image) -> bytes:
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _crop_box(record: RawRecord) -> tuple[int, int, int, int] | None:
    crop = record.extra.get("crop")
    return None if crop is None else tuple(int(v) for v in crop)  # type: ignore[return-value]


def encode_image(source: Path | bytes, crop: tuple[int, int, int, int] | None = None
                 ) -> tuple[bytes, int, int]:
    """Stored bytes and (width, height): PNG/JPEG kept as is, the rest re-encoded to PNG."""
    data = _read(source)
    fmt = _sniff_format(data)
    if crop is None and fmt in KEPT_FORMATS:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if fmt == "JPEG":  # DCT-scaled decoding still reads every byte, at less cost
                img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
            img.load()  # decode fully: a truncated or corrupt file fails here, not in a run
        return data, width, height
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if crop is not None:
            img = img.crop(crop)
        return _png_bytes(img), img.size[0], img.size[1]


def encode_mask(source: Path | bytes, threshold: int | None = None,
                crop: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, bytes]:
    """A mask file -> (boolean array [H, W], PNG bytes mode L 0/255). Foreground is
    value > threshold (see the module doc). A PNG that already is L with values 0/255 keeps its
    bytes."""
    data = _read(source)
    fmt = _sniff_format(data)
    if threshold is None:
        threshold = 127 if fmt == "JPEG" else 0
    with Image.open(io.BytesIO(data)) as img:
        if crop is not None:
            img = img.crop(crop)
        mode = img.mode
        if mode in ("1", "L", "P", "I", "I;16", "F"):
            values = np.asarray(img)
        else:
            values = np.asarray(img.convert("L"))
    mask = values > threshold
    if fmt == "PNG" and crop is None and mode == "L" and np.all((values == 0) | (values == 255)):
        return mask, data
    return mask, mask_png(mask)


def normalise_mask(source: Path | bytes, threshold: int | None = None,
                   crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A mask file -> boolean array [H, W] (foreground = value > threshold, see module doc)."""
    return encode_mask(source, threshold, crop)[0]


def mask_png(mask: np.ndarray) -> bytes:
    """Boolean mask -> PNG bytes, mode L, values 0/255."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _download_root(record: RawRecord) -> Path | None:
    """The folder ``source_path`` is relative to, when the image is a file under it."""
    if isinstance(record.image, bytes):
        return None
    image = Path(record.image)
    parts = Path(record.source_path).parts
    if len(parts) <= len(image.parts) and image.parts[-len(parts):] == parts:
        return Path(*image.parts[:-len(parts)]) if len(parts) < len(image.parts) else Path(".")
    return None


def _mask_path(record: RawRecord) -> str | None:
    if record.mask is None or isinstance(record.mask, bytes):
        return None
    mask = Path(record.mask)
    root = _download_root(record)
    if root is not None and mask.is_relative_to(root):
        return mask.relative_to(root).as_posix()
    return mask.name


def _describe(source: Path | bytes, record: RawRecord) -> str:
    return str(source) if isinstance(source, Path) else f"the bytes of {record.source_path!r}"


def encode_record(record: RawRecord, info: DatasetInfo) -> dict[str, Any]:
    """One :class:`RawRecord` -> one row of the unified schema (validated)."""
    name = info.name
    crop = _crop_box(record)
    try:
        image_bytes, width, height = encode_image(record.image, crop)
    except Exception as err:
        raise PrepareError(f"{name}: cannot read the image {_describe(record.image, record)} "
                           f"(category {record.category!r}): {image_error_reason(err)}"
                           ) from err
    mask_bytes = None
    if record.mask is not None:
        try:
            mask, encoded = encode_mask(record.mask, record.extra.get("mask_threshold"), crop)
        except Exception as err:
            raise PrepareError(f"{name}: cannot read the mask {_describe(record.mask, record)} "
                               f"(category {record.category!r}, image {record.source_path!r}): "
                               f"{image_error_reason(err)}") from err
        if mask.shape != (height, width):
            raise PrepareError(f"{name}: the mask {_describe(record.mask, record)} is "
                               f"{mask.shape[1]}x{mask.shape[0]} but the image "
                               f"{_describe(record.image, record)} is {width}x{height}")
        if record.label == 0:
            if mask.any():
                raise PrepareError(f"{name}: the normal image {record.source_path!r} has a "
                                   f"non-empty mask {_describe(record.mask, record)}")
        else:
            mask_bytes = encoded
    row = {
        "image": {"bytes": image_bytes, "path": record.source_path},
        "mask": None if mask_bytes is None else {"bytes": mask_bytes, "path": _mask_path(record)},
        "label": int(record.label),
        "dataset": name,
        "category": record.category,
        "prompt_name": info.prompt_names.get(record.category, record.category.replace("_", " ")),
        "defect_type": record.defect_type,
        "split": record.split,
        "sample_id": make_sample_id(name, record.source_path, record.extra.get("piece")),
        "source_path": record.source_path,
        "has_mask": mask_bytes is not None,
        "width": int(width),
        "height": int(height),
    }
    validate_record(row)
    return row


def check_raw_records(records: list[RawRecord], info: DatasetInfo) -> None:
    """Reject records whose label, split or defect type is inconsistent, and duplicates."""
    seen: dict[str, str] = {}
    for r in records:
        where = f"{info.name}: record {r.source_path!r}"
        if r.label not in (0, 1):
            raise PrepareError(f"{where}: label must be 0 or 1, got {r.label!r}")
        if not SPLIT_PATTERN.match(r.split):
            raise PrepareError(f"{where}: split {r.split!r} is not a valid split name")
        if (r.label == 0) != (r.defect_type == NORMAL_DEFECT_TYPE):
            raise PrepareError(f"{where}: label {r.label} with defect_type {r.defect_type!r} "
                               f"(normal images, and only they, have defect_type 'good')")
        sid = make_sample_id(info.name, r.source_path, r.extra.get("piece"))
        if sid in seen:
            raise PrepareError(f"{where}: the adapter yields the same image twice "
                               f"(set extra['piece'] for pieces cut from one file)")
        seen[sid] = r.source_path


def _estimated_bytes(record: RawRecord) -> int:
    total = 0
    for part in (record.image, record.mask):
        if isinstance(part, bytes):
            total += len(part)
        elif part is not None:
            with contextlib.suppress(OSError):
                total += Path(part).stat().st_size
    return total


def plan_shards(records: list[RawRecord], max_shard_bytes: int) -> list[list[RawRecord]]:
    """Consecutive groups whose estimated size stays under ``max_shard_bytes`` (>= 1 record)."""
    shards: list[list[RawRecord]] = [[]]
    size = 0
    for record in records:
        estimate = _estimated_bytes(record)
        if shards[-1] and size + estimate > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(record)
        size += estimate
    return shards


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows -> Arrow table, column by column (several times faster than ``from_pylist`` for
    large binary values)."""
    arrays = []
    for field in schema:
        values = [row[field.name] for row in rows]
        if pa.types.is_struct(field.type):
            children = [pa.array([v[child.name] if v else None for v in values], type=child.type)
                        for child in field.type]
            arrays.append(pa.StructArray.from_arrays(
                children, fields=list(field.type), mask=pa.array([v is None for v in values])))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def parquet_writer_options(schema: pa.Schema) -> dict[str, Any]:
    """Writer options as ``datasets`` uses for media: image/mask bytes stored uncompressed with
    PLAIN encoding (already compressed, and deduplicated well by the Hub's storage), the other
    columns snappy with dictionaries; page index and content-defined chunking where pyarrow
    supports them."""
    import inspect

    compression: dict[str, str] = {}
    encoding: dict[str, str] = {}
    dictionary: list[str] = []
    for field in schema:
        if pa.types.is_struct(field.type):
            for child in field.type:
                leaf = f"{field.name}.{child.name}"
                compression[leaf] = "none"
                encoding[leaf] = "PLAIN"
        else:
            compression[field.name] = "snappy"
            dictionary.append(field.name)
    options: dict[str, Any] = {"compression": compression, "use_dictionary": dictionary,
                               "column_encoding": encoding}
    accepted = inspect.signature(pq.ParquetWriter.__init__).parameters
    if "write_page_index" in accepted or "kwargs" in accepted:
        options["write_page_index"] = True
    if "use_content_defined_chunking" in accepted:
        options["use_content_defined_chunking"] = True
    return options


def ordered_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T],
                window: int) -> Iterator[R]:
    """``pool.map`` with at most ``window`` tasks in flight (bounded memory), in order."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def count_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per split and category: ``{split: {n, anomalous, with_mask, categories: {..}}}``."""
    counts: dict[str, Any] = {}
    for row in rows:
        split = counts.setdefault(row["split"], {"n": 0, "anomalous": 0, "with_mask": 0,
                                                 "categories": {}})
        category = split["categories"].setdefault(row["category"],
                                                  {"n": 0, "anomalous": 0, "with_mask": 0})
        for target in (split, category):
            target["n"] += 1
            target["anomalous"] += int(row["label"] == 1)
            target["with_mask"] += int(bool(row["has_mask"]))
    for split in counts.values():
        split["categories"] = dict(sorted(split["categories"].items()))
    return dict(sorted(counts.items()))


def inputs_key(name: str, adapter: type[DatasetAdapter], raw_dir: Path,
               options: Mapping[str, Any]) -> str:
    """sha256 over what determines the output: adapter, options, zsbench version and the raw
    folder's file list with sizes and modification times."""
    digest = hashlib.sha256()
    header = {"name": name, "adapter": f"{adapter.__module__}.{adapter.__qualname__}",
              "options": {k: str(v) for k, v in sorted(options.items())},
              "zsbench": __version__}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for folder, dirs, files in os.walk(raw_dir):
        dirs.sort()
        for file in sorted(files):
            path = Path(folder) / file
            stat = path.stat()
            rel = path.relative_to(raw_dir).as_posix()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def source_checksum(raw_dir: str | Path) -> str:
    """``sha256:<hex>`` over the raw folder's file list and contents: for every file in path
    order, its posix path relative to ``raw_dir``, its size, then its bytes. Names, sizes and
    contents count, times do not: a re-download with the same files gives the same checksum,
    one that differs in any byte or file does not."""
    raw_dir = Path(raw_dir)
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(raw_dir):
        dirs.sort()
        for file in sorted(files):
            path = Path(folder) / file
            rel = path.relative_to(raw_dir).as_posix()
            digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
            update_with_file(digest, path)
    return f"sha256:{digest.hexdigest()}"


class VerifyError(DataError):
    """A prepared folder whose shards, or raw source, differ from what its card records."""


def _with_integrity(card: str, source_sha256: str, shard_sha256: dict[str, str]) -> str:
    """The card text with ``zsbench.source_sha256`` and ``zsbench.shard_sha256`` added."""
    from zsbench.dataset_card import parse_card

    header = parse_card(card)
    body = header.pop("body")
    block = header.setdefault("zsbench", {})
    if source_sha256:
        block["source_sha256"] = source_sha256
    block["shard_sha256"] = dict(sorted(shard_sha256.items()))
    return ("---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n"
            + body)


def verify_prepared(folder: str | Path, raw_dir: str | Path | None = None) -> dict[str, Any]:
    """Re-check a prepared folder against its card: every shard's sha256 (missing, changed and
    unlisted shards) and, with ``raw_dir``, the raw source's checksum. Returns
    ``{"shards": n, "source": "match"|"not checked"}``; any difference raises
    :class:`VerifyError` listing them all."""
    folder = Path(folder)
    card = folder / "README.md"
    if not card.is_file():
        raise VerifyError(f"{folder}: no README.md dataset card (not a prepared dataset)")
    try:
        block = read_card_file(card).get("zsbench", {})
    except ValueError as err:
        raise VerifyError(f"{card}: {err}") from err
    recorded = block.get("shard_sha256")
    if not recorded:
        raise VerifyError(f"{card} records no shard checksums (prepared by an older zsbench); "
                          "prepare it again with --overwrite to record them")
    problems = []
    on_disk = {p.relative_to(folder).as_posix() for p in (folder / "data").glob("*.parquet")}
    for rel, expected in sorted(recorded.items()):
        if rel not in on_disk:
            problems.append(f"missing shard {rel}")
        elif sha256_file(folder / rel) != expected:
            problems.append(f"shard {rel} differs from the recorded sha256 {expected[:12]}...")
    problems += [f"unlisted shard {rel}" for rel in sorted(on_disk - set(recorded))]
    source = "not checked"
    if raw_dir is not None:
        expected_source = block.get("source_sha256")
        if not expected_source:
            problems.append(f"{card} records no source checksum (built without a raw folder)")
        else:
            actual = source_checksum(raw_dir)
            if actual != expected_source:
                problems.append(f"the raw source {raw_dir} differs from the one it was built "
                                f"from ({actual[:19]}... != recorded {expected_source[:19]}...)")
            else:
                source = "match"
    if problems:
        raise VerifyError(f"{folder}: " + "; ".join(problems))
    return {"shards": len(recorded), "source": source}


def check_options(adapter_cls: type[DatasetAdapter], options: Mapping[str, Any]) -> None:
    """Reject options the adapter does not take, when it lists them in ``options_accepted``
    (else in ``option_types``, when it declares any)."""
    accepted = accepted_options(adapter_cls)
    if accepted is None:
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = ", ".join(accepted) if accepted else "none"
        raise AdapterOptionError(f"{adapter_cls.info.name}: unknown adapter option(s) "
                                 f"{unknown}; this adapter takes: {known}")


def _adapter_class(name: str) -> type[DatasetAdapter]:
    from zsbench.registry import ADAPTERS

    return ADAPTERS.get(name)


def prepared_key(folder: Path) -> str | None:
    """The inputs key recorded in a prepared folder's card, or None."""
    card = folder / "README.md"
    if not card.is_file() or not (folder / "data").is_dir():
        return None
    try:
        return read_card_file(card).get("zsbench", {}).get("inputs_key")
    except ValueError:
        return None


def is_prepared(name: str, raw_dir: str | Path, out_dir: str | Path,
                adapter_options: Mapping[str, Any] | None = None) -> bool:
    """True if ``out_dir/name`` was prepared from the same inputs (``prepare`` would skip)."""
    adapter_cls = _adapter_class(name)
    options = convert_options(adapter_cls, dict(adapter_options or {}))
    key = inputs_key(name, adapter_cls, Path(raw_dir), options)
    return prepared_key(Path(out_dir) / name) == key


def prepare(name: str, raw_dir: str | Path, out_dir: str | Path, *,
            adapter_options: Mapping[str, Any] | None = None, overwrite: bool = False,
            progress: ProgressCallback | None = None, workers: int | None = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Build ``out_dir/name`` from the raw download in ``raw_dir`` with the adapter ``name``.

    Returns the prepared folder. Skips the work when the folder was built from the same inputs
    (unless ``overwrite``); a folder built from other inputs needs ``overwrite=True``.
    ``progress(done, total)`` is called as images are written.
    """
    adapter_cls = _adapter_class(name)
    options = convert_options(adapter_cls, dict(adapter_options or {}))
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise DatasetLayoutError(f"{name}: the raw folder {raw_dir} does not exist or is not a "
                                 "folder")
    target = out_dir / name
    key = inputs_key(name, adapter_cls, raw_dir, options)
    existing = prepared_key(target)
    if existing == key and not overwrite:
        logger.info("%s is already prepared from the same inputs; skipped", target)
        return target
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists and was built from other inputs "
                              "(raw files, options or zsbench version); pass overwrite=True "
                              "(--overwrite) to replace it")
    ensure_writable_dir(out_dir, f"output folder of {name}")
    remove_stale_staging(target)  # left by a killed run: reclaim the space before the work
    check_options(adapter_cls, options)
    adapter = adapter_cls(**options)
    info = adapter_cls.info
    logger.info("%s: listing %s", name, raw_dir)
    records = list(adapter.records(raw_dir))
    if not records:
        raise DatasetLayoutError(f"{name}: no images found under {raw_dir}. "
                                 f"Found: {describe_folder(raw_dir)}")
    checksum = source_checksum(raw_dir)
    previous = _recorded_source(target)
    if previous and previous != checksum:
        logger.warning("%s: the raw files under %s differ from those %s was built from "
                       "(source sha256 %s, recorded %s)", name, raw_dir, target, checksum[:19],
                       previous[:19])
    return write_prepared(info, records, target, adapter_name=name, adapter_options=options,
                          inputs_key_value=key, progress=progress, workers=workers,
                          source_sha256=checksum,
                          max_shard_bytes=max_shard_bytes,
                          adapter_class=f"{adapter_cls.__module__}.{adapter_cls.__qualname__}")


def _recorded_source(target: Path) -> str | None:
    """The source checksum recorded in a prepared folder's card, or None."""
    try:
        return read_card_file(target / "README.md").get("zsbench", {}).get("source_sha256")
    except (OSError, ValueError):
        return None


def write_prepared(info: DatasetInfo, records: list[RawRecord], target: Path, *,
                   adapter_name: str, adapter_options: Mapping[str, Any] | None = None,
                   inputs_key_value: str = "", progress: ProgressCallback | None = None,
                   workers: int | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                   adapter_class: str = "", source_sha256: str = "") -> Path:
    """Encode ``records`` and write shards and card to ``target`` atomically (used by
    :func:`prepare` and by the meta.json importer). The card records each shard's sha256 and
    ``source_sha256`` (:func:`source_checksum` of the raw folder) for
    :func:`verify_prepared`."""
    check_raw_records(records, info)
    by_split: dict[str, list[RawRecord]] = {}
    for record in records:
        by_split.setdefault(record.split, []).append(record)
    for split_records in by_split.values():
        split_records.sort(key=lambda r: (r.category, r.source_path, r.extra.get("piece", -1)))
    total = len(records)
    done = 0
    tallies: dict[tuple[str, str, int, bool], int] = {}  # (split, category, label, mask) -> n
    shard_files: dict[str, list[str]] = {}
    schema = arrow_schema()
    writer_options = parquet_writer_options(schema)
    workers = workers or os.cpu_count() or 1
    with atomic_directory(target) as staging, ThreadPoolExecutor(workers) as pool:
        (staging / "data").mkdir()
        for split in sorted(by_split):
            shards = plan_shards(by_split[split], max_shard_bytes)
            for index, shard in enumerate(shards):
                rel = f"data/{split}-{index:05d}-of-{len(shards):05d}.parquet"
                shard_files.setdefault(split, []).append(rel)
                with pq.ParquetWriter(staging / rel, schema, **writer_options) as writer:
                    batch: list[dict[str, Any]] = []
                    for row in ordered_map(pool, lambda r: encode_record(r, info), shard,
                                           window=4 * workers):
                        batch.append(row)
                        key = (row["split"], row["category"], row["label"], row["has_mask"])
                        tallies[key] = tallies.get(key, 0) + 1  # memory flat in the rows
                        done += 1
                        if progress is not None:
                            progress(done, total)
                        if len(batch) >= ROWS_PER_ROW_GROUP:
                            writer.write_table(rows_to_table(batch, schema))
                            batch = []
                    if batch:
                        writer.write_table(rows_to_table(batch, schema))
        counts = count_rows({"split": sp, "category": cat, "label": label, "has_mask": mask}
                            for (sp, cat, label, mask), n in tallies.items() for _ in range(n))
        card = render_card(info, counts, shard_files, adapter_name=adapter_name,
                           adapter_options=dict(adapter_options or {}),
                           inputs_key=inputs_key_value, adapter_class=adapter_class)
        shard_sums = {rel: sha256_file(staging / rel)
                      for rels in shard_files.values() for rel in rels}
        card = _with_integrity(card, source_sha256, shard_sums)
        (staging / "README.md").write_text(card, encoding="utf-8")
    logger.info("%s: wrote %d images to %s", info.name, total, target)
    return target
