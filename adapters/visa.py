"""VisA (Visual Anomaly): twelve categories; the split comes from the official split CSV.

Layout of the download::

    <cat>/Data/Images/Normal/*.JPG
    <cat>/Data/Images/Anomaly/*.JPG
    <cat>/Data/Masks/Anomaly/*.png           (values are defect ids 0..k: binarised != 0)
    <cat>/image_anno.csv                      (optional: per-image defect description)
    split_csv/1cls.csv                        (object,split,label,image,mask; paths relative
                                               to the root)

The option ``split_file`` picks another file of ``split_csv/`` (``2cls_fewshot``,
``2cls_highshot``) or a path to a CSV of the same columns. Images listed in the CSV that do not
exist are an error; an anomalous row without a mask and a mask file no row refers to are
warnings naming the files.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.layout_search import find_layout
from zsbench.adapters.mvtec import name_files, parse_categories
from zsbench.raw_files import list_images, require_file
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

SPLIT_COLUMNS = ("object", "split", "label", "image", "mask")

VISA_PROMPTS = {
    "candle": "candle",
    "capsules": "capsules",
    "cashew": "cashew",
    "chewinggum": "chewing gum",
    "fryum": "fryum",
    "macaroni1": "macaroni",
    "macaroni2": "macaroni",
    "pcb1": "printed circuit board",
    "pcb2": "printed circuit board",
    "pcb3": "printed circuit board",
    "pcb4": "printed circuit board",
    "pipe_fryum": "pipe fryum",
}


@dataclass(frozen=True)
class VisASplitRow:
    """One row of a VisA split CSV (paths relative to the VisA root; mask "" when none)."""

    category: str
    split: str
    label: int
    image: str
    mask: str


def parse_split_csv(path: Path) -> list[VisASplitRow]:
    """Read a VisA split file; a wrong header or label is a :class:`DatasetLayoutError`."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = tuple(h.strip() for h in (reader.fieldnames or ()))
        if header[:5] != SPLIT_COLUMNS:
            raise DatasetLayoutError(f"visa: {path} must have the columns "
                                     f"{','.join(SPLIT_COLUMNS)}; found {','.join(header)}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            label = row["label"].lower()
            if label not in ("normal", "anomaly"):
                raise DatasetLayoutError(f"visa: {path} line {line}: label must be normal or "
                                         f"anomaly, got {row['label']!r}")
            if not row["image"] or row["split"] not in ("train", "test"):
                raise DatasetLayoutError(f"visa: {path} line {line}: expected an image path "
                                         f"and split train/test, got {raw}")
            rows.append(VisASplitRow(row["object"], row["split"], int(label == "anomaly"),
                                     row["image"], row["mask"]))
    return rows


def read_defect_descriptions(anno: Path) -> dict[str, str]:
    """``image_anno.csv`` (image,label,mask) -> {image path: defect description}; {} if absent."""
    if not anno.is_file():
        return {}
    with open(anno, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "label"} <= set(reader.fieldnames):
            return {}
        return {row["image"].strip(): row["label"].strip() for row in reader
                if row.get("image") and row.get("label")}


@register_adapter("visa")
class VisAAdapter(DatasetAdapter):
    """VisA (Zou et al., ECCV 2022), split from ``split_csv/1cls.csv`` (option ``split_file``)."""

    options_accepted: ClassVar[tuple[str, ...]] = ("split_file", "categories")
    info = DatasetInfo(
        name="visa",
        title="VisA",
        domain="industrial",
        categories=tuple(VISA_PROMPTS),
        prompt_names=VISA_PROMPTS,
        license="CC BY 4.0",
        rehostable=True,
        citation=("Zou, Jeong, Pemula, Zhang, Dabeer. SPot-the-Difference Self-Supervised "
                  "Pre-training for Anomaly Detection and Segmentation. ECCV 2022."),
        homepage="https://github.com/amazon-science/spot-diff",
        has_masks=True,
        has_normals=True,
        order=20,
        splits=("train", "test"),
        description="12 objects (PCBs, capsules, foods) with complex structures; 10,821 images.",
    )

    def split_file(self, root: Path) -> Path:
        choice = str(self.options.get("split_file", "1cls"))
        path = Path(choice)
        if path.suffix.lower() == ".csv" and path.is_file():
            return path
        return require_file(root, f"split_csv/{choice.removesuffix('.csv')}.csv", "visa",
                            hint="The split files ship with the VisA download (and with the "
                                 "amazon-science/spot-diff repository).")

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        root = find_layout(Path(raw_dir), "visa", [("split_csv",)]).base
        rows = parse_split_csv(self.split_file(root))
        wanted = parse_categories(self.options.get("categories"))
        if wanted is not None:
            unknown = sorted(set(wanted) - {r.category for r in rows})
            if unknown:
                raise DatasetLayoutError(f"visa: option categories names {unknown}, which the "
                                         f"split file does not list")
            rows = [r for r in rows if r.category in wanted]
        missing = [root / r.image for r in rows if not (root / r.image).is_file()]
        if missing:
            raise DatasetLayoutError(f"visa: {len(missing)} images listed in the split file do "
                                     f"not exist under {root}: {name_files(missing, root)}")
        without_mask = [root / r.image for r in rows
                        if r.label == 1 and not (r.mask and (root / r.mask).is_file())]
        if without_mask:
            logger.warning("visa: %d anomalous images without a mask file (kept, has_mask "
                           "False): %s", len(without_mask), name_files(without_mask, root))
        self.warn_unreferenced_masks(root, rows)
        descriptions: dict[str, dict[str, str]] = {}
        for r in rows:
            if r.category not in descriptions:
                descriptions[r.category] = read_defect_descriptions(
                    root / r.category / "image_anno.csv")
            mask = root / r.mask if r.label == 1 and r.mask else None
            defect = "good"
            if r.label == 1:
                defect = descriptions[r.category].get(r.image) or "anomaly"
            yield RawRecord(category=r.category, label=r.label, split=r.split,
                            source_path=r.image, image=root / r.image,
                            mask=mask if mask is not None and mask.is_file() else None,
                            defect_type=defect)

    @staticmethod
    def warn_unreferenced_masks(root: Path, rows: list[VisASplitRow]) -> None:
        referenced = {(root / r.mask).resolve() for r in rows if r.mask}
        strays: list[Path] = []
        for category in sorted({r.category for r in rows}):
            mask_dir = root / category / "Data" / "Masks" / "Anomaly"
            if mask_dir.is_dir():
                strays += [m for m in list_images(mask_dir) if m.resolve() not in referenced]
        if strays:
            logger.warning("visa: %d masks without an image in the split file (ignored): %s",
                           len(strays), name_files(strays, root))
