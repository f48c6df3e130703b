"""BMAD (Benchmarks for Medical Anomaly Detection): six medical sets in BMAD's reorganised layout.

BMAD (Bao et al., 2024; github.com/DorisBao/BMAD) re-packs six public medical datasets as
``train/good`` (normal only), a validation split and ``test/{good,Ungood}``; three of them
(BraTS2021 brain MRI, liver CT from BTCV + LiTS, RESC retinal OCT) ship pixel masks, the other
three (OCT2017, RSNA chest X-ray, Camelyon16 histopathology) are image-level only.

The six archives of the BMAD download (``Brain_AD``, ``Liver_AD``, ``Retina_RESC_AD``,
``Retina_OCT2017_AD``, ``Chest_AD`` or ``Chest-AD``, ``Histopathology_AD``) do not share one
layout; public loaders of the download record these variants, all accepted here::

    <set>/train/good/*.png                       RESC: Train/train/good/*.png
    <set>/{valid,val}/{good,Ungood}/*.png        image-level sets
    <set>/{valid,test}/{good,Ungood}/img/*.png   + .../Ungood/label/*.png   (BraTS2021)
    <set>/{valid,test}/img/{good,ungood}/*.png   + .../label/ungood/*.png   (liver)
    <set>/{Val,Test}/{val,test}/{good,ungood}    + .../{val,test}_label/ungood (RESC)

So a file's role is read from the folder names between the split folder and the file: ``good``
(normal) or ``Ungood`` (anomalous, any case), and a mask when one of them is a label folder
(``label``, ``test_label``, ``val_label``). Masks pair with anomalous images by stem (``x`` or
``x_mask``), never by sorted index (anomalib's BMAD loader pairs by sorted position). The split
is the source's: ``train``, ``valid`` (``val``/``valid``) and ``test``; zsbench protocols
evaluate the ``test`` split.

Licences: BMAD's re-packaging is distributed for research; each source keeps its own terms
(BraTS data-use agreement, LiTS CC BY-NC-SA, BTCV Synapse terms, RESC unstated, OCT2017 CC BY,
RSNA Kaggle competition rules, Camelyon16 CC0) and none of this was verified for the re-packed
copies: not re-hostable, every set is built locally from the user's download.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.layout_search import find_layout
from zsbench.adapters.mvtec import name_files
from zsbench.raw_files import describe_folder, list_images, relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
NORMAL_FOLDERS = frozenset({"good"})
ANOMALOUS_FOLDERS = frozenset({"ungood"})
MASK_FOLDERS = frozenset({"label", "labels", "test_label", "val_label", "valid_label"})
BMAD_CITATION = ("Bao, Sun, Deng, He, Zhang, Li. BMAD: Benchmarks for Medical Anomaly Detection. "
                 "CVPR Workshops (VAND) 2024.")
BMAD_HOMEPAGE = "https://github.com/DorisBao/BMAD"


class BMADAdapter(DatasetAdapter):
    """One BMAD set; subclasses set ``info``, ``wrappers`` (folders the set may sit in, under
    the BMAD root) and ``defect_type``."""

    options_accepted: ClassVar[tuple[str, ...]] = ("strict",)
    option_types: ClassVar[dict[str, type]] = {"strict": bool}
    wrappers: ClassVar[tuple[str, ...]] = ("",)
    defect_type: ClassVar[str] = "lesion"

    def locate_root(self, raw_dir: Path) -> Path:
        """The set's folder: the one holding ``test/`` (``raw_dir`` or a BMAD wrapper in it)."""
        return find_layout(raw_dir, self.info.name, [("test",)], ("", *self.wrappers)).base

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        root = self.locate_root(raw_dir)
        splits = [(p, SPLIT_FOLDERS[p.name.lower()]) for p in sorted(root.iterdir())
                  if p.is_dir() and p.name.lower() in SPLIT_FOLDERS]
        found = 0
        for folder, split in splits:
            for record in self.split_records(root, folder, split):
                found += 1
                yield record
        if not found:
            raise DatasetLayoutError(f"{self.info.name}: no image under {root} in a 'good' or "
                                     f"'Ungood' folder of train/, valid/ or test/. "
                                     f"Found: {describe_folder(root)}")

    def split_records(self, root: Path, split_dir: Path, split: str) -> Iterator[RawRecord]:
        """Images of one split folder, labelled by their ``good``/``Ungood`` folder."""
        name = self.info.name
        images: dict[tuple[int, str], Path] = {}
        masks: dict[str, Path] = {}
        unknown: list[Path] = []
        for file in list_images(split_dir, recursive=True):
            folders = {p.lower() for p in file.relative_to(split_dir).parts[:-1]}
            label = 1 if folders & ANOMALOUS_FOLDERS else 0 if folders & NORMAL_FOLDERS else None
            if label is None:
                unknown.append(file)
            elif folders & MASK_FOLDERS:
                if label == 1:
                    key = file.stem.removesuffix("_mask")
                    if key in masks:
                        raise DatasetLayoutError(f"{name}: two masks for the same image: "
                                                 f"{masks[key]} and {file}")
                    masks[key] = file
            elif (label, file.stem) in images:
                raise DatasetLayoutError(f"{name}: two images with the stem {file.stem!r} in "
                                         f"{split_dir}: {images[(label, file.stem)]} and {file}")
            else:
                images[(label, file.stem)] = file
        if unknown:
            logger.warning("%s: %d files in %s are in neither a 'good' nor an 'Ungood' folder "
                           "(ignored): %s", name, len(unknown), split_dir,
                           name_files(unknown, root))
        anomalous = [p for (label, _), p in images.items() if label == 1]
        if self.info.has_masks and split != "train":
            without = [p for p in anomalous if p.stem not in masks]
            strays = sorted(m for key, m in masks.items() if (1, key) not in images)
            problems = []
            if without:
                problems.append(f"{len(without)} anomalous images without a mask (kept, "
                                f"has_mask False): {name_files(without, root)}")
            if strays:
                problems.append(f"{len(strays)} masks without an image (ignored): "
                                f"{name_files(strays, root)}")
            if problems and self.options.get("strict", False):
                raise DatasetLayoutError(f"{name}: " + "; ".join(problems) + " (strict=True)")
            for problem in problems:
                logger.warning("%s: %s", name, problem)
        for (label, stem), image in sorted(images.items(), key=lambda kv: str(kv[1])):
            mask = masks.get(stem) if label == 1 and self.info.has_masks else None
            yield RawRecord(category=self.info.categories[0], label=label, split=split,
                            source_path=relative_posix(image, root), image=image, mask=mask,
                            defect_type=self.defect_type if label else "good")


def _bmad_info(name: str, title: str, category: str, prompt: str, source_licence: str,
               has_masks: bool, description: str, homepage: str = BMAD_HOMEPAGE,
               order: int = 1000) -> DatasetInfo:
    return DatasetInfo(
        name=name, title=title, domain="medical", categories=(category,),
        prompt_names={category: prompt},
        license=f"{source_licence} (via BMAD; unverified)",
        rehostable=False, citation=BMAD_CITATION, homepage=homepage, has_masks=has_masks,
        has_normals=True, splits=("train", "valid", "test"), order=order,
        description=description + " BMAD layout. Not re-hosted (licence unverified); build "
                                  "it locally from the BMAD download.")


@register_adapter("bmad_brats2021")
class BMADBraTSAdapter(BMADAdapter):
    """BMAD brain MRI: axial BraTS2021 slices, tumour masks."""

    wrappers = ("Brain_AD/BraTS2021_slice", "Brain_AD", "BraTS2021_slice", "Brain", "BraTS2021")
    defect_type = "tumor"
    info = _bmad_info("bmad_brats2021", "BMAD BraTS2021 (brain MRI)", "brain", "brain",
                      "BraTS 2021 terms", True,
                      "Brain MRI slices; tumour slices anomalous with masks.", order=130)


@register_adapter("bmad_liver")
class BMADLiverAdapter(BMADAdapter):
    """BMAD liver CT: BTCV (normal) and LiTS (tumour) slices, tumour masks."""

    wrappers = ("Liver_AD/hist_DIY", "Liver_AD", "hist_DIY", "Liver", "liver")
    defect_type = "tumor"
    info = _bmad_info("bmad_liver", "BMAD liver CT (BTCV + LiTS)", "liver", "liver",
                      "BTCV Synapse / LiTS CC BY-NC-SA 4.0", True,
                      "Abdominal CT slices; liver tumour slices anomalous with masks.", order=140)


@register_adapter("bmad_resc")
class BMADRESCAdapter(BMADAdapter):
    """BMAD RESC: retinal OCT B-scans with fluid (edema) masks."""

    wrappers = ("Retina_RESC_AD/RESC", "Retina_RESC_AD", "RESC", "Retina_RESC")
    defect_type = "edema"
    info = _bmad_info("bmad_resc", "BMAD RESC (retinal OCT)", "retina", "retina",
                      "RESC terms unstated", True,
                      "Retinal OCT B-scans; scans with fluid anomalous with masks.", order=150)


@register_adapter("bmad_oct2017")
class BMADOCT2017Adapter(BMADAdapter):
    """BMAD OCT2017: retinal OCT (Kermany et al.), image-level labels only."""

    wrappers = ("Retina_OCT2017_AD/OCT2017", "Retina_OCT2017_AD", "OCT2017", "Retina_OCT2017")
    defect_type = "disease"
    info = _bmad_info("bmad_oct2017", "BMAD OCT2017 (retinal OCT)", "retina", "retina",
                      "OCT2017 CC BY 4.0", False,
                      "Retinal OCT scans; CNV, DME and drusen scans anomalous (no masks).",
                      order=160)


@register_adapter("bmad_rsna")
class BMADRSNAAdapter(BMADAdapter):
    """BMAD RSNA: chest X-rays of the RSNA Pneumonia Detection Challenge, image-level only."""

    wrappers = ("Chest_AD/Chest-RSNA", "Chest-AD/Chest-RSNA", "Chest_AD", "Chest-AD",
                "Chest-RSNA", "Chest", "RSNA")
    defect_type = "opacity"
    info = _bmad_info("bmad_rsna", "BMAD RSNA (chest X-ray)", "chest", "chest",
                      "RSNA Kaggle competition rules", False,
                      "Chest X-rays; lung opacity anomalous (no masks).", order=170)


@register_adapter("bmad_camelyon16")
class BMADCamelyon16Adapter(BMADAdapter):
    """BMAD Camelyon16: 256 px lymph-node histopathology patches, image-level only."""

    wrappers = ("Histopathology_AD/camelyon16_256", "Histopathology_AD", "camelyon16_256",
                "camelyon16", "Histopathology")
    defect_type = "metastasis"
    info = _bmad_info("bmad_camelyon16", "BMAD Camelyon16 (histopathology)", "histopathology",
                      "histopathology", "Camelyon16 CC0 1.0", False,
                      "Lymph-node histopathology patches; metastasis patches anomalous (no "
                      "masks).", order=180)
