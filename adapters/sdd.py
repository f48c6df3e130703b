"""KolektorSDD (surface defects of electrical commutators).

Layout: ``kosNN/PartK.jpg`` with ``kosNN/PartK_label.bmp`` (one label image per image; all
zero for defect-free parts). An image is anomalous iff its label image has a non-zero pixel.
No split: every image is "test".

Option ``pieces`` (default 1): AdaCLIP and FAPrompt cut each image (about 500x1260) along its
height into 3 pieces (rows ``[0, h//3)``, ``[h//3, 2h//3)``, ``[2h//3, h)``) and label each
piece by its own part of the mask; ``pieces=3`` reproduces that protocol. Pieces are cropped by
:mod:`zsbench.prepare` (``extra["crop"]``) and stored as PNG; ``extra["piece"]`` keeps the
piece index in the sample id.

With ``pieces=3`` the split follows AdaCLIP's ``data_preprocess/sdd-pre.py``: the normal pieces,
listed folder by folder, image by image, piece by piece, go 75 % to "train" and 25 % to "test"
by ``sklearn.model_selection.train_test_split(test_size=0.25, random_state=42)``, reproduced
exactly by :func:`adaclip_normal_train` (no sklearn needed); every anomalous piece is "test".
Upstream lists folders and files with ``os.listdir`` (file-system order, unsorted); zsbench
lists them sorted by name, the order that upstream gets on file systems that list sorted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.mvtec import name_files
from zsbench.raw_files import describe_folder, list_images, relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

CATEGORY = "electrical_commutators"


def piece_rows(height: int, pieces: int) -> list[tuple[int, int]]:
    """Row ranges of ``pieces`` horizontal bands: ``[k*h//n, (k+1)*h//n)``."""
    return [(k * height // pieces, (k + 1) * height // pieces) for k in range(pieces)]


ADACLIP_TEST_SIZE = 0.25  # AdaCLIP sdd-pre.py: train_test_split(test_size=0.25, ...)
ADACLIP_SEED = 42  # ... random_state=42


def adaclip_normal_train(count: int, test_size: float = ADACLIP_TEST_SIZE,
                         seed: int = ADACLIP_SEED) -> set[int]:
    """Indices (into the list of ``count`` normal pieces) that AdaCLIP sends to train.

    The same permutation as sklearn's ``train_test_split(..., test_size, random_state=seed)``
    with a float ``test_size``: ``n_test = ceil(test_size * count)``, a
    ``numpy.random.RandomState(seed).permutation(count)``, test = its first ``n_test`` entries,
    train = the rest (tests compare it with sklearn itself)."""
    n_test = math.ceil(test_size * count)
    permutation = np.random.RandomState(seed).permutation(count)
    return {int(i) for i in permutation[n_test:]}


def is_part_folder(folder: Path) -> bool:
    return folder.is_dir() and any(p.stem.endswith("_label") for p in list_images(folder))


@register_adapter("sdd")
class KolektorSDDAdapter(DatasetAdapter):
    """KolektorSDD (Tabernik et al., 2019): 50 commutators, 399 images, 52 defective."""

    options_accepted: ClassVar[tuple[str, ...]] = ("pieces",)
    info = DatasetInfo(
        name="sdd",
        title="KolektorSDD",
        domain="industrial",
        categories=(CATEGORY,),
        prompt_names={CATEGORY: "electrical commutators"},
        license="CC BY-NC-SA 4.0",
        rehostable=True,
        citation=("Tabernik, Sela, Skvarc, Skocaj. Segmentation-Based Deep-Learning Approach "
                  "for Surface-Defect Detection. Journal of Intelligent Manufacturing, 2019."),
        homepage="https://www.vicos.si/resources/kolektorsdd/",
        has_masks=True,
        has_normals=True,
        paper_name="SDD", order=50,
        description="Surface cracks on plastic-embedded electrical commutators.",
    )

    def pieces(self) -> int:
        value = self.options.get("pieces", 1)
        try:
            pieces = int(value)
        except (TypeError, ValueError):
            pieces = 0
        if pieces not in (1, 3):
            raise ValueError(f"sdd: option pieces={value!r} must be 1 (whole images) or 3 "
                             "(the AdaCLIP/FAPrompt cut)")
        return pieces

    def part_folders(self, raw_dir: Path) -> tuple[Path, list[Path]]:
        """The root and its ``kosNN`` folders (``raw_dir`` or a single wrapper inside it)."""
        if not raw_dir.is_dir():
            raise DatasetLayoutError(f"sdd: the raw folder {raw_dir} does not exist.")
        for root in [raw_dir, *sorted(p for p in raw_dir.iterdir() if p.is_dir())]:
            folders = sorted(p for p in root.iterdir() if is_part_folder(p))
            if folders:
                return root, folders
        raise DatasetLayoutError(f"sdd: expected folders 'kosNN/' holding 'PartK.jpg' and "
                                 f"'PartK_label.bmp' under {raw_dir}. "
                                 f"Found: {describe_folder(raw_dir)}")

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        pieces = self.pieces()
        if pieces == 1:
            yield from self.listed_records(Path(raw_dir), pieces)
            return
        records = list(self.listed_records(Path(raw_dir), pieces))
        normals = [i for i, r in enumerate(records) if r.label == 0]
        train = adaclip_normal_train(len(normals))
        for position, index in enumerate(normals):
            if position in train:
                records[index].split = "train"
        yield from records

    def listed_records(self, raw_dir: Path, pieces: int) -> Iterator[RawRecord]:
        """Records in listing order (folders, then images, then pieces), all "test"."""
        root, folders = self.part_folders(raw_dir)
        for folder in folders:
            files = list_images(folder)
            labels = {p.stem.removesuffix("_label"): p for p in files if p.stem.endswith("_label")}
            images = [p for p in files if not p.stem.endswith("_label")]
            unlabelled = [p for p in images if p.stem not in labels]
            if unlabelled:
                logger.warning("sdd: %d images without a label image (skipped: normal or not "
                               "is unknown): %s", len(unlabelled), name_files(unlabelled, root))
            strays = [labels[s] for s in sorted(set(labels) - {p.stem for p in images})]
            if strays:
                logger.warning("sdd: %d label images without an image (ignored): %s",
                               len(strays), name_files(strays, root))
            for image in images:
                if image.stem in labels:
                    yield from self.image_records(root, image, labels[image.stem], pieces)

    @staticmethod
    def image_records(root: Path, image: Path, label_file: Path,
                      pieces: int) -> Iterator[RawRecord]:
        with Image.open(image) as img:
            size = img.size
        with Image.open(label_file) as lab:
            mask = np.asarray(lab.convert("L")) != 0
        if mask.shape != (size[1], size[0]):
            raise DatasetLayoutError(f"sdd: {label_file} is {mask.shape[1]}x{mask.shape[0]} but "
                                     f"{image} is {size[0]}x{size[1]}")
        source = relative_posix(image, root)
        if pieces == 1:
            anomalous = bool(mask.any())
            yield RawRecord(category=CATEGORY, label=int(anomalous), split="test",
                            source_path=source, image=image,
                            mask=label_file if anomalous else None,
                            defect_type="crack" if anomalous else "good")
            return
        for index, (top, bottom) in enumerate(piece_rows(size[1], pieces)):
            anomalous = bool(mask[top:bottom].any())
            yield RawRecord(category=CATEGORY, label=int(anomalous), split="test",
                            source_path=source, image=image,
                            mask=label_file if anomalous else None,
                            defect_type="crack" if anomalous else "good",
                            extra={"piece": index, "crop": (0, top, size[0], bottom)})
