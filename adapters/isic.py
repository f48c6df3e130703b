"""ISIC 2016 Part 1 test set: 379 dermoscopy images with lesion masks (all anomalous).

Layout: ``ISBI2016_ISIC_Part1_Test_Data/<id>.jpg`` +
``ISBI2016_ISIC_Part1_Test_GroundTruth/<id>_Segmentation.png``; masks are paired by the stem
``<id>_Segmentation``. ``*_superpixels`` files, if present in the images folder, are skipped.
"""

from __future__ import annotations

from pathlib import Path

from zsbench.adapter import DatasetInfo
from zsbench.adapters.image_mask_folders import ImageMaskFoldersAdapter
from zsbench.registry import register_adapter


@register_adapter("isic")
class ISICAdapter(ImageMaskFoldersAdapter):
    """ISIC 2016 skin lesions: each image ``<id>`` with the mask ``<id>_Segmentation``."""

    info = DatasetInfo(
        name="isic",
        title="ISIC 2016 (Part 1 test set)",
        domain="medical",
        categories=("skin",),
        prompt_names={"skin": "skin"},
        license="ISIC Archive terms (ISIC 2016 challenge data; licence not verified)",
        rehostable=False,
        citation=("Gutman et al., Skin Lesion Analysis toward Melanoma Detection: A Challenge "
                  "at ISBI 2016, hosted by ISIC, arXiv:1605.01397"),
        homepage="https://challenge.isic-archive.com/data/#2016",
        has_masks=True,
        has_normals=False,
        short_title="ISIC 2016", paper_name="ISIC", order=60,
        description=("Dermoscopy images of skin lesions, every one anomalous with a lesion "
                     "mask. Not re-hosted: the licence of the 2016 challenge data was not "
                     "verified; build it locally."),
    )
    layouts = (("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
               ("images", "ISBI2016_ISIC_Part1_Test_GroundTruth"))
    wrappers = ("", "ISIC2016", "ISIC_2016")
    defect_type = "lesion"

    def mask_stem(self, image_stem: str) -> str:
        return f"{image_stem}_Segmentation"

    def keep_image(self, path: Path) -> bool:
        return not path.stem.endswith(("_superpixels", "_Segmentation"))
