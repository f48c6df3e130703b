"""MVTec LOCO AD: five objects with structural and logical anomalies.

Layout of the download (one folder per category)::

    <cat>/train/good/NNN.png
    <cat>/validation/good/NNN.png
    <cat>/test/{good,logical_anomalies,structural_anomalies}/NNN.png
    <cat>/ground_truth/{logical_anomalies,structural_anomalies}/NNN/KKK.png

Each anomalous image has a folder of ground-truth images named by its stem, one image per
annotated defect region (values are non-zero inside a region); zsbench merges them into one
mask (union of the non-zero pixels).

The anomaly type is kept in the record: ``defect_type`` is ``logical_anomalies`` or
``structural_anomalies``. Logical anomalies break a constraint between parts of the scene (a
missing or surplus item, a wrong count, a mixed-up arrangement) in images whose every local
patch looks normal; a zero-shot detector that sees one image and a text prompt has no reference
for "how many" or "which combination" is normal, so these images measure something the method
cannot know. Zero-shot protocols therefore exclude them: ``--option anomalies=structural``
keeps the normal and structural images only (the option enters the dataset card and the
prepared shards, so results on the two variants never mix). ``anomalies=all`` (default) keeps
both, as the MVTec LOCO paper evaluates; ``anomalies=logical`` keeps the normal and logical ones.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from zsbench.adapter import AdapterOptionError, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.mvtec import MVTecLayoutAdapter, name_files
from zsbench.raw_files import list_images, relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag",
                   "splicing_connectors")
LOGICAL, STRUCTURAL = "logical_anomalies", "structural_anomalies"
ANOMALY_CHOICES = {"all": (LOGICAL, STRUCTURAL), "structural": (STRUCTURAL,),
                   "logical": (LOGICAL,)}


def merge_masks(files: list[Path]) -> Path | bytes:
    """One mask from a defect's ground-truth images: the file itself when there is one, else
    PNG bytes (mode L, 0/255) of the union of their non-zero pixels."""
    if len(files) == 1:
        return files[0]
    union = None
    for file in files:
        with Image.open(file) as img:
            values = np.asarray(img.convert("L") if img.mode not in ("L", "P", "I", "I;16")
                                else img) != 0
        if union is not None and union.shape != values.shape:
            raise DatasetLayoutError(f"mvtec_loco: {file} is {values.shape[1]}x"
                                     f"{values.shape[0]} but {files[0]} is {union.shape[1]}x"
                                     f"{union.shape[0]}")
        union = values if union is None else union | values
    buffer = io.BytesIO()
    Image.fromarray(union.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@register_adapter("mvtec_loco")
class MVTecLOCOAdapter(MVTecLayoutAdapter):
    """MVTec LOCO AD (Bergmann et al., IJCV 2022): 5 categories, logical and structural."""

    options_accepted: ClassVar[tuple[str, ...]] = ("categories", "include_train", "anomalies")
    option_types: ClassVar[dict[str, type]] = {"include_train": bool, "anomalies": str}
    info = DatasetInfo(
        name="mvtec_loco",
        title="MVTec LOCO AD",
        domain="industrial",
        categories=LOCO_CATEGORIES,
        prompt_names={c: c.replace("_", " ") for c in LOCO_CATEGORIES},
        license="CC BY-NC-SA 4.0",
        rehostable=True,
        citation=("Bergmann, Batzner, Fauser, Sattlegger, Steger. Beyond Dents and Scratches: "
                  "Logical Constraints in Unsupervised Anomaly Detection and Localization. "
                  "IJCV 130, 2022."),
        homepage="https://www.mvtec.com/company/research/datasets/mvtec-loco",
        has_masks=True,
        has_normals=True,
        order=130,
        splits=("train", "validation", "test"),
        description=("Structural and logical anomalies; defect_type keeps the kind. Zero-shot "
                     "protocols use --option anomalies=structural (logical anomalies need a "
                     "reference a single image does not give)."),
    )

    def kept_types(self) -> tuple[str, ...]:
        choice = str(self.options.get("anomalies", "all")).strip().lower()
        if choice not in ANOMALY_CHOICES:
            raise AdapterOptionError(f"mvtec_loco: option anomalies={choice!r} must be one of "
                                     f"{', '.join(ANOMALY_CHOICES)}")
        return ANOMALY_CHOICES[choice]

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        self.kept_types()  # a bad value fails before any listing
        yield from super().records(raw_dir)
        if self.options.get("include_train", True):  # normal-only like train
            root = self.locate_root(Path(raw_dir))
            for category in self.selected_categories(root):
                good = root / category / "validation" / "good"
                for image in list_images(good) if good.is_dir() else []:
                    yield RawRecord(category=category, label=0, split="validation",
                                    source_path=relative_posix(image, root), image=image)

    def test_records(self, root: Path, category: str) -> Iterator[RawRecord]:
        kept = self.kept_types()
        test = root / category / "test"
        good = test / "good"
        for image in list_images(good) if good.is_dir() else []:
            yield RawRecord(category=category, label=0, split="test",
                            source_path=relative_posix(image, root), image=image)
        for kind in (LOGICAL, STRUCTURAL):
            folder = test / kind
            if not folder.is_dir():
                raise DatasetLayoutError(f"mvtec_loco: expected the folder '{kind}/' in {test}")
            if kind not in kept:
                continue
            without = []
            for image in list_images(folder):
                gt_dir = root / category / "ground_truth" / kind / image.stem
                masks = list_images(gt_dir) if gt_dir.is_dir() else []
                if not masks:
                    without.append(image)
                yield RawRecord(category=category, label=1, split="test",
                                source_path=relative_posix(image, root), image=image,
                                mask=merge_masks(masks) if masks else None, defect_type=kind)
            if without:
                logger.warning("mvtec_loco: %d anomalous images without a ground-truth folder "
                               "(kept, has_mask False): %s", len(without),
                               name_files(without, root))
