"""DAGM 2007 (Kaggle upload): ten synthetic textures, ``Train`` and ``Test`` folders.

Layout: ``ClassN/{Train,Test}/NNNN.PNG`` with ``ClassN/{Train,Test}/Label/Labels.txt`` and the
masks ``Label/NNNN_label.PNG``. ``Labels.txt`` is tab separated with CRLF line ends; its first
line is ``1``, then one row per image: id, defect flag (0/1), image file, 0, mask file or 0.
Labels come from ``Labels.txt``; the split is the source's (``Train`` -> "train",
``Test`` -> "test"). Images on disk that ``Labels.txt`` does not list, and masks no row names,
are warnings naming the files; a listed image that is missing is an error.

Without ``Label/Labels.txt`` (copies that dropped it), labels come from the masks alone, as
the upstream preparation scripts derive them: an image is defective iff ``Label/`` holds its
mask ``<stem>_label.<ext>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.layout_search import find_layout
from zsbench.adapters.mvtec import name_files, parse_categories
from zsbench.raw_files import (
    list_images,
    pair_by_stem,
    relative_posix,
    require_dir,
    require_file,
)
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

DAGM_CATEGORIES = tuple(f"Class{i}" for i in range(1, 11))
SPLIT_FOLDERS = {"Train": "train", "Test": "test"}


@dataclass(frozen=True)
class DAGMLabel:
    """One row of ``Labels.txt``: image file and mask file (None for defect-free images)."""

    image_id: str
    defective: bool
    image: str
    mask: str | None


def parse_labels_txt(path: Path) -> list[DAGMLabel]:
    """Read a DAGM ``Labels.txt``; a malformed row is a :class:`DatasetLayoutError` naming it."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if not lines:
        raise DatasetLayoutError(f"dagm: {path} is empty")
    labels = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) < 5 or fields[1] not in ("0", "1"):
            raise DatasetLayoutError(f"dagm: {path} line {number}: expected 'id<TAB>0|1<TAB>"
                                     f"image<TAB>0<TAB>mask|0', got {line!r}")
        defective = fields[1] == "1"
        mask = fields[4] if defective and fields[4] not in ("", "0") else None
        if defective and mask is None:
            raise DatasetLayoutError(f"dagm: {path} line {number}: a defective image names no "
                                     f"mask file: {line!r}")
        labels.append(DAGMLabel(fields[0], defective, fields[2], mask))
    return labels


@register_adapter("dagm")
class DAGMAdapter(DatasetAdapter):
    """DAGM 2007 (Wieler and Hahn), Kaggle layout; categories Class1..Class10."""

    options_accepted: ClassVar[tuple[str, ...]] = ("categories",)
    info = DatasetInfo(
        name="dagm",
        title="DAGM 2007",
        domain="industrial",
        categories=DAGM_CATEGORIES,
        prompt_names={c: "textured surface" for c in DAGM_CATEGORIES},
        license="DAGM 2007 competition terms (non-commercial research; unverified)",
        rehostable=False,
        citation=("Wieler, Hahn. Weakly Supervised Learning for Industrial Optical Inspection. "
                  "DAGM 2007 competition dataset."),
        homepage="https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection",
        has_masks=True,
        has_normals=True,
        paper_name="DAGM", order=70,
        splits=("train", "test"),
        description="Ten synthetic textured surfaces; defects labelled with coarse ellipses.",
    )

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        wanted = parse_categories(self.options.get("categories")) or list(DAGM_CATEGORIES)
        unknown = [c for c in wanted if c not in DAGM_CATEGORIES]
        if unknown:
            raise DatasetLayoutError(f"dagm: option categories names unknown categories "
                                     f"{unknown}; known: {', '.join(DAGM_CATEGORIES)}")
        root = find_layout(Path(raw_dir), "dagm", [(f"{c}/Test",) for c in wanted],
                           wrappers=("", "DAGM_KaggleUpload")).base
        for category in wanted:
            require_dir(root, category, "dagm", hint="Prepare a subset with "
                        "--option categories=Class1,Class2.")
            for folder, split in SPLIT_FOLDERS.items():
                split_dir = root / category / folder
                if split_dir.is_dir():
                    yield from self.split_records(root, category, split_dir, split)

    def split_records(self, root: Path, category: str, split_dir: Path,
                      split: str) -> Iterator[RawRecord]:
        if not (split_dir / "Label" / "Labels.txt").is_file():
            yield from self.mask_derived_records(root, category, split_dir, split)
            return
        labels_file = require_file(split_dir, "Label/Labels.txt", "dagm")
        labels = parse_labels_txt(labels_file)
        missing = [split_dir / lab.image for lab in labels if not (split_dir / lab.image).is_file()]
        if missing:
            raise DatasetLayoutError(f"dagm: {len(missing)} images listed in {labels_file} do "
                                     f"not exist: {name_files(missing, root)}")
        listed = {lab.image for lab in labels}
        unlisted = [p for p in list_images(split_dir) if p.name not in listed]
        if unlisted:
            logger.warning("dagm: %d images not listed in %s (ignored): %s", len(unlisted),
                           labels_file, name_files(unlisted, root))
        label_dir = split_dir / "Label"
        named_masks = {lab.mask for lab in labels if lab.mask}
        strays = [m for m in list_images(label_dir) if m.name not in named_masks]
        if strays:
            logger.warning("dagm: %d masks without an image in %s (ignored): %s", len(strays),
                           labels_file, name_files(strays, root))
        without_mask = [split_dir / lab.image for lab in labels
                        if lab.mask and not (label_dir / lab.mask).is_file()]
        if without_mask:
            logger.warning("dagm: %d defective images without their mask file in %s (kept, "
                           "has_mask False): %s", len(without_mask), label_dir,
                           name_files(without_mask, root))
        for lab in labels:
            image = split_dir / lab.image
            mask = label_dir / lab.mask if lab.mask else None
            yield RawRecord(category=category, label=int(lab.defective), split=split,
                            source_path=relative_posix(image, root), image=image,
                            mask=mask if mask is not None and mask.is_file() else None,
                            defect_type="defect" if lab.defective else "good")

    def mask_derived_records(self, root: Path, category: str, split_dir: Path,
                             split: str) -> Iterator[RawRecord]:
        """Records of a split folder without ``Labels.txt``: defective iff a mask exists."""
        images = list_images(split_dir)
        if not images:
            raise DatasetLayoutError(f"dagm: {split_dir} holds neither Label/Labels.txt nor "
                                     "images")
        label_dir = split_dir / "Label"
        masks = list_images(label_dir) if label_dir.is_dir() else []
        pairs, _, strays = pair_by_stem(images, masks, "dagm",
                                        mask_key=lambda stem: stem.removesuffix("_label"))
        logger.info("dagm: %s has no Label/Labels.txt; %d of %d images are defective by their "
                    "masks", split_dir, len(pairs), len(images))
        if strays:
            logger.warning("dagm: %d masks without an image in %s (ignored): %s", len(strays),
                           label_dir, name_files(strays, root))
        for image in images:
            mask = pairs.get(image)
            yield RawRecord(category=category, label=int(mask is not None), split=split,
                            source_path=relative_posix(image, root), image=image, mask=mask,
                            defect_type="defect" if mask is not None else "good")
