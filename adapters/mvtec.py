"""MVTec AD, and :class:`MVTecLayoutAdapter`, the base of every dataset in the MVTec layout.

Layout of the download (one folder per category)::

    <cat>/train/good/000.png
    <cat>/test/good/000.png
    <cat>/test/<defect>/000.png
    <cat>/ground_truth/<defect>/000_mask.png      (0/255; "000.png" is accepted too)

Masks are paired with images by stem (``000`` <-> ``000_mask``), never by sorted index. An
anomalous image without a mask and a mask without an image are logged as warnings that name the
files; the image is kept (``has_mask`` False), the stray mask is ignored.

Subclassing: set ``info`` (categories, prompt words, licence, ...) and register it. The
categories read are ``info.categories``; a subclass that sets ``discover_categories = True``
reads every folder of the root that has a ``test/`` folder instead (in name order). Both accept
the option ``categories`` ("a,b" or a list) to prepare a subset, and ``include_train``
(default True) to skip ``train/``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.layout_search import find_layout
from zsbench.raw_files import describe_folder, list_images, pair_by_stem, relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

MAX_NAMED_FILES = 10


def name_files(paths: list[Path], root: Path) -> str:
    """A short list of files relative to ``root`` for log and error messages."""
    names = [relative_posix(p, root) if p.is_relative_to(root) else str(p) for p in paths]
    more = f", ... ({len(names) - MAX_NAMED_FILES} more)" if len(names) > MAX_NAMED_FILES else ""
    return ", ".join(names[:MAX_NAMED_FILES]) + more


def parse_bool(value: Any, option: str, dataset: str) -> bool:
    """An adapter option given as bool or as a CLI string ("true", "0", ...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{dataset}: option {option}={value!r} must be true or false")


def parse_categories(value: Any) -> list[str] | None:
    """The ``categories`` option: None, "a,b" or a sequence of names."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return [str(c) for c in value]


def strip_mask_suffix(stem: str) -> str:
    """Mask stem -> image stem: ``000_mask`` -> ``000`` (a plain ``000`` stays)."""
    return stem.removesuffix("_mask")


class MVTecLayoutAdapter(DatasetAdapter):
    """Base adapter for datasets in the MVTec AD layout (see the module docstring)."""

    discover_categories: ClassVar[bool] = False
    normal_folder: ClassVar[str] = "good"
    options_accepted: ClassVar[tuple[str, ...]] = ("categories", "include_train")

    def selected_categories(self, root: Path) -> list[str]:
        """The categories to read: ``info.categories`` or the discovered folders, filtered by
        the ``categories`` option."""
        name = self.info.name
        if self.discover_categories:
            available = sorted(p.name for p in root.iterdir()
                               if p.is_dir() and not p.name.startswith(".")
                               and (p / "test").is_dir())
        else:
            available = list(self.info.categories)
        wanted = parse_categories(self.options.get("categories"))
        if wanted is None:
            return available
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise DatasetLayoutError(f"{name}: option categories names unknown categories "
                                     f"{unknown}; known: {', '.join(available)}")
        return wanted

    def locate_root(self, raw_dir: Path) -> Path:
        """The folder holding the category folders (``raw_dir`` or a single wrapper in it)."""
        name = self.info.name
        if self.discover_categories:
            if not raw_dir.is_dir():
                raise DatasetLayoutError(f"{name}: the raw folder {raw_dir} does not exist.")
            if any((p / "test").is_dir() for p in raw_dir.iterdir() if p.is_dir()):
                return raw_dir
            wrappers = [p for p in raw_dir.iterdir() if p.is_dir()
                        and any((q / "test").is_dir() for q in p.iterdir() if q.is_dir())]
            if len(wrappers) == 1:
                return wrappers[0]
            raise DatasetLayoutError(f"{name}: expected category folders '<category>/test/' "
                                     f"under {raw_dir}. Found: {describe_folder(raw_dir)}")
        layouts = [(f"{category}/test",) for category in self.info.categories]
        return find_layout(raw_dir, name, layouts).base

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        root = self.locate_root(raw_dir)
        categories = self.selected_categories(root)
        missing = [c for c in categories if not (root / c / "test").is_dir()]
        if missing:
            raise DatasetLayoutError(
                f"{self.info.name}: expected the folder '<category>/test/' for categories "
                f"{missing} under {root}. Prepare a subset with --option categories=a,b. "
                f"Found: {describe_folder(root)}")
        include_train = parse_bool(self.options.get("include_train", True), "include_train",
                                   self.info.name)
        for category in categories:
            if include_train:
                yield from self.train_records(root, category)
            yield from self.test_records(root, category)

    def train_records(self, root: Path, category: str) -> Iterator[RawRecord]:
        """Normal images of ``<cat>/train/good`` (nothing if the folder is absent)."""
        train = root / category / "train"
        if not train.is_dir():
            return
        others = sorted(p.name for p in train.iterdir()
                        if p.is_dir() and p.name != self.normal_folder)
        if others:
            logger.warning("%s: ignoring folders %s in %s (only '%s' is read)",
                           self.info.name, others, train, self.normal_folder)
        folder = train / self.normal_folder
        if folder.is_dir():
            for image in list_images(folder):
                yield RawRecord(category=category, label=0, split="train",
                                source_path=relative_posix(image, root), image=image)

    def test_records(self, root: Path, category: str) -> Iterator[RawRecord]:
        """Test images: ``test/good`` normal, ``test/<defect>`` anomalous with masks from
        ``ground_truth/<defect>``."""
        name = self.info.name
        test = root / category / "test"
        gt_root = root / category / "ground_truth"
        defect_dirs = sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not defect_dirs or not any(list_images(d) for d in defect_dirs):
            raise DatasetLayoutError(f"{name}: no images in the folders of {test} (expected "
                                     f"'good/' and one folder per defect type). "
                                     f"Found: {describe_folder(test)}")
        for folder in defect_dirs:
            images = list_images(folder)
            if folder.name == self.normal_folder:
                for image in images:
                    yield RawRecord(category=category, label=0, split="test",
                                    source_path=relative_posix(image, root), image=image)
                continue
            mask_dir = gt_root / folder.name
            masks = list_images(mask_dir) if mask_dir.is_dir() else []
            pairs, unpaired, strays = pair_by_stem(images, masks, name, mask_key=strip_mask_suffix)
            if unpaired and self.info.has_masks:
                logger.warning("%s: %d anomalous images without a mask in %s (kept, has_mask "
                               "False): %s", name, len(unpaired), mask_dir, name_files(unpaired,
                                                                                      root))
            if strays:
                logger.warning("%s: %d masks without an image in %s (ignored): %s", name,
                               len(strays), test / folder.name, name_files(strays, root))
            for image in images:
                yield RawRecord(category=category, label=1, split="test",
                                source_path=relative_posix(image, root), image=image,
                                mask=pairs.get(image), defect_type=folder.name)
        if gt_root.is_dir():
            orphan_dirs = sorted(p.name for p in gt_root.iterdir()
                                 if p.is_dir() and not (test / p.name).is_dir())
            if orphan_dirs:
                logger.warning("%s: mask folders without a test folder in %s (ignored): %s",
                               name, gt_root, orphan_dirs)


MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper")


@register_adapter("mvtec")
class MVTecAdapter(MVTecLayoutAdapter):
    """MVTec AD (Bergmann et al., CVPR 2019): 15 categories, 1,725 test images."""

    info = DatasetInfo(
        name="mvtec",
        title="MVTec AD",
        domain="industrial",
        categories=MVTEC_CATEGORIES,
        prompt_names={c: c.replace("_", " ") for c in MVTEC_CATEGORIES},
        license="CC BY-NC-SA 4.0",
        rehostable=True,
        citation=("Bergmann, Fauser, Sattlegger, Steger. MVTec AD - A Comprehensive Real-World "
                  "Dataset for Unsupervised Anomaly Detection. CVPR 2019."),
        homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
        has_masks=True,
        has_normals=True,
        paper_name="MVTecAD", order=10,
        splits=("train", "test"),
        description="Industrial inspection: 5 textures and 10 objects; pixel-precise masks.",
    )
