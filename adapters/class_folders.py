"""Base of the "anomalous folder + normal folder" datasets (image-level labels, no masks).

BrainMRI and Br35H store tumour images in ``yes/`` and tumour-free ones in ``no/``; LAG stores
glaucoma and non-glaucoma fundus images in two folders. Other folders (``pred/``, attention maps)
are not read. Layouts are tried in order and the first match wins, so a download carrying two
copies of the same pair is read once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from zsbench.adapter import DatasetAdapter, DatasetLayoutError, RawRecord
from zsbench.adapters.layout_search import Layout, find_layout
from zsbench.raw_files import list_images, relative_posix

logger = logging.getLogger(__name__)


class ClassFoldersAdapter(DatasetAdapter):
    """A dataset of two image folders: anomalous (label 1) and normal (label 0).

    Subclasses set ``info``, ``layouts`` (``(anomalous, normal)`` folder pairs, first match wins),
    ``wrappers`` (folders the pair may sit in, in priority order) and ``defect_type``."""

    layouts: ClassVar[tuple[Layout, ...]] = (("yes", "no"),)
    wrappers: ClassVar[tuple[str, ...]] = ("",)
    defect_type: ClassVar[str] = "anomaly"

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        name = self.info.name
        match = find_layout(raw_dir, name, self.layouts, self.wrappers)
        logger.info("%s: reading %s", name, ", ".join(str(f) for f in match.folders))
        category = self.info.categories[0]
        for folder, label in zip(match.folders, (1, 0), strict=True):
            images = list_images(folder)
            if not images:
                raise DatasetLayoutError(f"{name}: the folder {folder} holds no images "
                                         f"(.png .jpg .jpeg .bmp .tif .tiff).")
            for image in images:
                yield RawRecord(category=category, label=label, split="test",
                                source_path=relative_posix(image, raw_dir), image=image,
                                mask=None, defect_type=self.defect_type if label else "good")
