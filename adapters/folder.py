"""Your own images: a folder of ``good/`` and anomaly-type folders, optional masks by stem.

Layout (one category)::

    DIR/good/*.png                 normal images
    DIR/<anomaly type>/*.png       anomalous images, one folder per type (any name)
    DIR/masks/<anomaly type>/<stem>.png  (optional; ``<stem>_mask.png`` and ``ground_truth/``
                                          accepted too, as in MVTec AD)

or several categories, one level above: ``DIR/<category>/good/``, ``DIR/<category>/<type>/``,
``DIR/<category>/masks/<type>/``. Every image is in the "test" split; the category folder name
is the category and its prompt word (underscores become spaces). Masks pair with images by
stem; an anomalous image without a mask is kept (``has_mask`` False). The dataset is yours: it
is never re-hosted by zsbench and never part of a protocol's ``all``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.mvtec import name_files, strip_mask_suffix
from zsbench.raw_files import describe_folder, list_images, pair_by_stem, relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

NORMAL = "good"
MASK_FOLDERS = ("masks", "ground_truth")


def is_category(folder: Path) -> bool:
    return (folder / NORMAL).is_dir()


@register_adapter("folder")
class FolderAdapter(DatasetAdapter):
    """A user's own images in ``good/`` + anomaly-type folders (see the module docstring)."""

    options_accepted: ClassVar[tuple[str, ...]] = ()
    in_all: ClassVar[bool] = False  # a user's folder is not a benchmark dataset
    info = DatasetInfo(
        name="folder",
        title="Your own images (folder)",
        domain="industrial",
        categories=(),
        prompt_names={},
        license="yours (not re-hosted)",
        rehostable=False,
        citation="",
        homepage="",
        has_masks=True,
        has_normals=True,
        description=("A folder of good/ and anomaly-type folders (optional masks by stem); "
                     "categories from the level above."),
    )

    def categories(self, raw_dir: Path) -> list[Path]:
        if not raw_dir.is_dir():
            raise DatasetLayoutError(f"folder: {raw_dir} does not exist or is not a folder")
        if is_category(raw_dir):
            return [raw_dir]
        found = [p for p in sorted(raw_dir.iterdir())
                 if p.is_dir() and not p.name.startswith(".") and is_category(p)]
        if not found:
            raise DatasetLayoutError(f"folder: expected a 'good/' folder (normal images) in "
                                     f"{raw_dir} or in its category folders. "
                                     f"Found: {describe_folder(raw_dir)}")
        return found

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        for folder in self.categories(raw_dir):
            yield from self.category_records(raw_dir, folder)

    def category_records(self, raw_dir: Path, folder: Path) -> Iterator[RawRecord]:
        category = folder.name
        good = list_images(folder / NORMAL)
        types = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
                 and p.name != NORMAL and p.name.lower() not in MASK_FOLDERS]
        if not good and not any(list_images(t) for t in types):
            raise DatasetLayoutError(f"folder: no images in {folder} (good/ and anomaly-type "
                                     "folders)")
        for image in good:
            yield RawRecord(category=category, label=0, split="test",
                            source_path=relative_posix(image, raw_dir), image=image)
        mask_root = next((folder / m for m in MASK_FOLDERS if (folder / m).is_dir()), None)
        for kind in types:
            images = list_images(kind)
            masks: list[Path] = []
            if mask_root is not None:
                # masks/<type>/ first; a flat masks/ folder serves a single anomaly type
                typed = mask_root / kind.name
                masks = list_images(typed) if typed.is_dir() else (
                    list_images(mask_root) if len(types) == 1 else [])
            pairs, unpaired, strays = pair_by_stem(images, masks, "folder",
                                                   mask_key=strip_mask_suffix)
            if masks and unpaired:
                logger.warning("folder: %d images of %s without a mask (kept, has_mask False): "
                               "%s", len(unpaired), kind, name_files(unpaired, raw_dir))
            if strays:
                logger.warning("folder: %d masks without an image (ignored): %s", len(strays),
                               name_files(strays, raw_dir))
            for image in images:
                yield RawRecord(category=category, label=1, split="test",
                                source_path=relative_posix(image, raw_dir), image=image,
                                mask=pairs.get(image), defect_type=kind.name)
