"""HeadCT (Kaggle "Head CT - hemorrhage"): 200 brain CT slices, 100 with haemorrhage.

Layout: ``head_ct/NNN.png`` and ``labels.csv`` (header ``id, hemorrhage`` with a leading space;
ids may be written ``000`` or ``0``). ``labels.csv`` may sit beside ``head_ct/`` (the Kaggle
download) or inside it; ``--raw`` may also point at ``head_ct/`` itself. Some PNGs are RGBA:
their bytes are kept as they are. No masks; everything is "test".
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.mvtec import name_files
from zsbench.raw_files import describe_folder, list_images
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

CATEGORY = "brain"


def parse_labels(path: Path) -> dict[int, int]:
    """``labels.csv`` -> {image number: 0/1}; header names are stripped (`` hemorrhage``)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:2] != ["id", "hemorrhage"]:
            raise DatasetLayoutError(f"headct: {path} must start with the header "
                                     f"'id, hemorrhage'; found {header}")
        labels: dict[int, int] = {}
        for number, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            try:
                image_id, flag = int(row[0]), int(row[1])
                if flag not in (0, 1):
                    raise ValueError
            except (ValueError, IndexError):
                raise DatasetLayoutError(f"headct: {path} line {number}: expected "
                                         f"'<id>,<0|1>', got {row}") from None
            labels[image_id] = flag
    return labels


def locate(raw_dir: Path) -> tuple[Path, Path, Path]:
    """(root, image folder, labels.csv) for the accepted layouts."""
    candidates = [(raw_dir / "head_ct", raw_dir / "labels.csv"),
                  (raw_dir / "head_ct", raw_dir / "head_ct" / "labels.csv"),
                  (raw_dir, raw_dir / "labels.csv")]
    for images, labels in candidates:
        if images.is_dir() and labels.is_file() and list_images(images):
            return raw_dir, images, labels
    raise DatasetLayoutError(f"headct: expected 'head_ct/NNN.png' and 'labels.csv' (beside or "
                             f"inside head_ct/) under {raw_dir}. Found: {describe_folder(raw_dir)}")


@register_adapter("headct")
class HeadCTAdapter(DatasetAdapter):
    """HeadCT: 100 normal and 100 haemorrhage slices, image-level labels only."""

    options_accepted: ClassVar[tuple[str, ...]] = ()
    info = DatasetInfo(
        name="headct",
        title="HeadCT",
        domain="medical",
        categories=(CATEGORY,),
        prompt_names={CATEGORY: "brain"},
        license="Kaggle dataset terms (unverified)",
        rehostable=False,
        citation="Kitamura, F. Head CT - hemorrhage. Kaggle, 2018.",
        homepage="https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
        has_masks=False,
        has_normals=True,
        order=10,
        description="Head CT slices with and without intracranial haemorrhage.",
    )

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        root, image_dir, labels_csv = locate(Path(raw_dir))
        labels = parse_labels(labels_csv)
        images: dict[int, Path] = {}
        unlabelled: list[Path] = []
        for image in list_images(image_dir):
            if image.stem.isdigit() and int(image.stem) in labels:
                images[int(image.stem)] = image
            else:
                unlabelled.append(image)
        if unlabelled:
            logger.warning("headct: %d images not listed in %s (ignored): %s", len(unlabelled),
                           labels_csv, name_files(unlabelled, root))
        missing = sorted(set(labels) - set(images))
        if missing:
            raise DatasetLayoutError(f"headct: {len(missing)} ids of {labels_csv} have no image "
                                     f"{image_dir}/NNN.png: {missing[:10]}")
        for image_id in sorted(images):
            image = images[image_id]
            flag = labels[image_id]
            yield RawRecord(category=CATEGORY, label=flag, split="test",
                            source_path=image.relative_to(root).as_posix(), image=image,
                            defect_type="hemorrhage" if flag else "good")
