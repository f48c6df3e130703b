"""KolektorSDD2 (KSDD2): surface defects on electrical commutators, train and test folders.

Layout of the download (``KolektorSDD2.zip``)::

    train/10000.png  train/10000_GT.png   (2,331 images, 246 defective)
    test/20000.png   test/20000_GT.png    (1,004 images, 110 defective)

Every image has a ground-truth image ``<stem>_GT.png`` (all zero for defect-free surfaces): an
image is anomalous iff its GT has a non-zero pixel, and then it keeps the GT as its mask. The
split is the source's (the train folder holds defective images too). An image without a GT
image is skipped with a warning naming it (normal or not is unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.layout_search import find_layout
from zsbench.adapters.mvtec import name_files
from zsbench.raw_files import list_images, relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

GT_SUFFIX = "_GT"
CATEGORY = "electrical_commutators"


def mask_has_foreground(path: Path) -> bool:
    """True if the ground-truth image has a non-zero pixel."""
    with Image.open(path) as img:
        return bool(np.asarray(img.convert("L")).any())


@register_adapter("ksdd2")
class KolektorSDD2Adapter(DatasetAdapter):
    """KolektorSDD2 (Bozic, Tabernik, Skocaj, 2021): 3,335 images, 356 defective."""

    options_accepted: ClassVar[tuple[str, ...]] = ()
    info = DatasetInfo(
        name="ksdd2",
        title="KolektorSDD2",
        domain="industrial",
        categories=(CATEGORY,),
        prompt_names={CATEGORY: "electrical commutators"},
        license="CC BY-NC-SA 4.0 (as stated on the download page; unverified)",
        rehostable=False,
        citation=("Bozic, Tabernik, Skocaj. Mixed supervision for surface-defect detection: from "
                  "weakly to fully supervised learning. Computers in Industry 129, 2021."),
        homepage="https://www.vicos.si/resources/kolektorsdd2/",
        has_masks=True,
        has_normals=True,
        order=140,
        splits=("train", "test"),
        description=("Surface defects of electrical commutators; an image is anomalous iff its "
                     "_GT image is non-zero. Not re-hosted (licence unverified)."),
    )

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        match = find_layout(raw_dir, "ksdd2", [("train", "test"), ("test",)],
                            ("", "KolektorSDD2", "ksdd2"))
        root = match.base
        for split in ("train", "test"):
            folder = root / split
            if folder.is_dir():
                yield from self.split_records(root, folder, split)

    def split_records(self, root: Path, folder: Path, split: str) -> Iterator[RawRecord]:
        files = list_images(folder)
        gts = {p.stem.removesuffix(GT_SUFFIX): p for p in files if p.stem.endswith(GT_SUFFIX)}
        images = [p for p in files if not p.stem.endswith(GT_SUFFIX)]
        if not images:
            raise DatasetLayoutError(f"ksdd2: {folder} holds no images (expected NNNNN.png with "
                                     "NNNNN_GT.png)")
        without = [p for p in images if p.stem not in gts]
        if without:
            logger.warning("ksdd2: %d images without a _GT image (skipped): %s", len(without),
                           name_files(without, root))
        strays = [gts[s] for s in sorted(set(gts) - {p.stem for p in images})]
        if strays:
            logger.warning("ksdd2: %d _GT images without an image (ignored): %s", len(strays),
                           name_files(strays, root))
        for image in images:
            gt = gts.get(image.stem)
            if gt is None:
                continue
            anomalous = mask_has_foreground(gt)
            yield RawRecord(category=CATEGORY, label=int(anomalous), split=split,
                            source_path=relative_posix(image, root), image=image,
                            mask=gt if anomalous else None,
                            defect_type="defect" if anomalous else "good")
