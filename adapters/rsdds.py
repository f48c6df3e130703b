"""RSDDs: rail surface defect images with masks, two parts (all anomalous).

Layout: ``Type-I RSDDs dataset/`` (67 images, 160x1000, express rails) and ``Type-II RSDDs
dataset/`` (128 images, 55x1250, heavy-haul rails), each with ``Rail surface images/`` and
``GroundTruth/`` (masks of the same file name). The image folder name is not confirmed:
``Rail surface images``, ``images`` and ``Images`` are accepted. Both parts must be present; the
part is kept in ``extra['rail_type']``.

TPS (``generate_dataset_json/rsdds.py``) reads another copy: ``2D_Image/INPUT_IMG/`` with the
masks in ``Ground Truth/`` beside ``2D_Image/``, one class and no part; that layout is accepted
too (no ``rail_type``). Upstream pairs the two sorted listings by index; zsbench by file stem.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.image_mask_folders import paired_records
from zsbench.adapters.layout_search import find_layout, resolve_folder
from zsbench.raw_files import list_images
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

RAIL_TYPES = {"Type-I": "Type-I RSDDs dataset", "Type-II": "Type-II RSDDs dataset"}
IMAGE_FOLDERS = ("Rail surface images", "images")
TPS_LAYOUTS = (("2D_Image/INPUT_IMG", "Ground Truth"),
               ("2D_Image/INPUT_IMG", "2D_Image/Ground Truth"))


@register_adapter("rsdds")
class RSDDsAdapter(DatasetAdapter):
    """RSDDs rails: per part, rail images and ``GroundTruth/`` masks paired by file stem."""

    option_types = {"strict": bool}
    info = DatasetInfo(
        name="rsdds",
        title="RSDDs (Rail Surface Defect Datasets)",
        domain="industrial",
        categories=("rail",),
        prompt_names={"rail": "rail"},
        license="unspecified (research release of the authors)",
        rehostable=False,
        citation=("Gan, Li, Yao, Zhang, A Hierarchical Extractor-Based Visual Rail Surface "
                  "Inspection System, IEEE Sensors Journal 17(23), 2017"),
        homepage="https://ieee-dataport.org/documents/rsdds",
        has_masks=True,
        has_normals=False,
        short_title="RSDDs", order=110,
        description=("Rail surface images of express (Type-I) and heavy-haul (Type-II) rails, "
                     "every one anomalous with a defect mask; the part is in "
                     "extra['rail_type']. Not re-hosted: no licence is stated; build it "
                     "locally."),
    )

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        strict = bool(self.options.get("strict", False))
        if not any(resolve_folder(base, folder) is not None
                   for base in (raw_dir, *_subfolders(raw_dir)) for folder in RAIL_TYPES.values()):
            yield from self.tps_records(raw_dir, strict)
            return
        for rail_type, folder in RAIL_TYPES.items():
            layouts = tuple((f"{folder}/{images}", f"{folder}/GroundTruth")
                            for images in IMAGE_FOLDERS)
            match = find_layout(raw_dir, self.info.name, layouts, ("", "RSDDs", "RSDDs dataset"))
            images_dir, masks_dir = match.folders
            images = list_images(images_dir)
            if not images:
                raise DatasetLayoutError(f"rsdds: the images folder {images_dir} holds no images.")
            logger.info("rsdds: %s: %d images in %s", rail_type, len(images), images_dir)
            yield from paired_records(
                images, list_images(masks_dir), raw_dir, dataset=self.info.name,
                category="rail", defect_type_of=lambda _: "defect", strict=strict,
                extra={"rail_type": rail_type})

    def tps_records(self, raw_dir: Path, strict: bool) -> Iterator[RawRecord]:
        """The TPS copy: ``2D_Image/INPUT_IMG`` + ``Ground Truth`` (one class, no part)."""
        layouts = (*TPS_LAYOUTS,
                   *((f"{folder}/{images}", f"{folder}/GroundTruth")
                     for folder in RAIL_TYPES.values() for images in IMAGE_FOLDERS))
        match = find_layout(raw_dir, self.info.name, layouts, ("", "RSDDs", "rsdds"))
        images_dir, masks_dir = match.folders
        images = list_images(images_dir)
        if not images:
            raise DatasetLayoutError(f"rsdds: the images folder {images_dir} holds no images.")
        logger.info("rsdds: %d images in %s (TPS layout)", len(images), images_dir)
        yield from paired_records(
            images, list_images(masks_dir), raw_dir, dataset=self.info.name,
            category="rail", defect_type_of=lambda _: "defect", strict=strict)


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
