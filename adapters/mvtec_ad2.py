"""MVTec AD 2 (2025): eight objects, a public test set with masks and two private test sets.

Layout of the download (one folder per object)::

    <obj>/train/good/*.png
    <obj>/validation/good/*.png
    <obj>/test_public/good/*.png
    <obj>/test_public/bad/*.png
    <obj>/test_public/ground_truth/bad/<stem>_mask.png     (0/255)
    <obj>/test_private/*.png, <obj>/test_private_mixed/*.png   (no labels)

(MVTec's ``mvtec_ad_2_public_offline.py`` reads these folders and finds a mask by replacing
``/bad/<name>.png`` with ``/ground_truth/bad/<name>_mask.png``.) The public test set is the
"test" split; ``validation`` and ``train`` keep their names. The private test sets carry no
labels (they are scored on MVTec's server) and are not read: a note in the log says so. MVTec
AD 2 names no defect types: anomalous images have the defect type ``bad``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.layout_search import find_layout
from zsbench.adapters.mvtec import name_files, parse_categories, strip_mask_suffix
from zsbench.raw_files import describe_folder, list_images, pair_by_stem, relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

AD2_CATEGORIES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs",
                  "walnuts")
NORMAL_SPLITS = {"train": "train", "validation": "validation"}
PRIVATE_SPLITS = ("test_private", "test_private_mixed")


@register_adapter("mvtec_ad2")
class MVTecAD2Adapter(DatasetAdapter):
    """MVTec AD 2 (Heckler-Kram et al., 2025): 8 objects; the public test set is evaluated."""

    options_accepted: ClassVar[tuple[str, ...]] = ("categories", "include_train")
    option_types: ClassVar[dict[str, type]] = {"include_train": bool}
    info = DatasetInfo(
        name="mvtec_ad2",
        title="MVTec AD 2",
        domain="industrial",
        categories=AD2_CATEGORIES,
        prompt_names={c: c.replace("_", " ") for c in AD2_CATEGORIES},
        license="CC BY-NC-SA 4.0",
        rehostable=True,
        citation=("Heckler-Kram, Neudeck, Scheler, Koenig, Steger. The MVTec AD 2 Dataset: "
                  "Advanced Scenarios for Unsupervised Anomaly Detection. arXiv:2503.21622, "
                  "2025."),
        homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad-2",
        has_masks=True,
        has_normals=True,
        order=120,
        splits=("train", "validation", "test"),
        description=("Eight objects under varied lighting; the public test set (test_public) "
                     "is the test split, the private test sets have no labels."),
    )

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        wanted = parse_categories(self.options.get("categories")) or list(AD2_CATEGORIES)
        unknown = [c for c in wanted if c not in AD2_CATEGORIES]
        if unknown:
            raise DatasetLayoutError(f"mvtec_ad2: option categories names unknown categories "
                                     f"{unknown}; known: {', '.join(AD2_CATEGORIES)}")
        root = find_layout(raw_dir, "mvtec_ad2", [(f"{c}/test_public",) for c in wanted],
                           ("", "mvtec_ad_2")).base
        missing = [c for c in wanted if not (root / c / "test_public").is_dir()]
        if missing:
            raise DatasetLayoutError(f"mvtec_ad2: expected '<object>/test_public/' for {missing} "
                                     f"under {root}; prepare a subset with --option "
                                     f"categories=a,b. Found: {describe_folder(root)}")
        include_train = self.options.get("include_train", True)
        for category in wanted:
            private = [p for p in PRIVATE_SPLITS if (root / category / p).is_dir()]
            if private:
                logger.info("mvtec_ad2: %s: %s not read (no labels; scored on MVTec's server)",
                            category, ", ".join(private))
            for folder, split in NORMAL_SPLITS.items():
                if split == "train" and not include_train:
                    continue
                good = root / category / folder / "good"
                for image in list_images(good) if good.is_dir() else []:
                    yield RawRecord(category=category, label=0, split=split,
                                    source_path=relative_posix(image, root), image=image)
            yield from self.test_records(root, category)

    def test_records(self, root: Path, category: str) -> Iterator[RawRecord]:
        test = root / category / "test_public"
        good = list_images(test / "good") if (test / "good").is_dir() else []
        bad = list_images(test / "bad") if (test / "bad").is_dir() else []
        if not good and not bad:
            raise DatasetLayoutError(f"mvtec_ad2: no images in {test}/good or {test}/bad. "
                                     f"Found: {describe_folder(test)}")
        mask_dir = test / "ground_truth" / "bad"
        masks = list_images(mask_dir) if mask_dir.is_dir() else []
        pairs, unpaired, strays = pair_by_stem(bad, masks, "mvtec_ad2",
                                               mask_key=strip_mask_suffix)
        if unpaired:
            logger.warning("mvtec_ad2: %d anomalous images without a mask in %s (kept, has_mask "
                           "False): %s", len(unpaired), mask_dir, name_files(unpaired, root))
        if strays:
            logger.warning("mvtec_ad2: %d masks without an image (ignored): %s", len(strays),
                           name_files(strays, root))
        for image in good:
            yield RawRecord(category=category, label=0, split="test",
                            source_path=relative_posix(image, root), image=image)
        for image in bad:
            yield RawRecord(category=category, label=1, split="test",
                            source_path=relative_posix(image, root), image=image,
                            mask=pairs.get(image), defect_type="bad")
