"""Endo (EndoTect 2020 segmentation test set): 200 polyp images with masks (all anomalous).

Layout (PraNet-style, not confirmed): ``images/`` + ``masks/``, possibly inside a wrapper folder.
"""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.image_mask_folders import ImageMaskFoldersAdapter
from zsbench.registry import register_adapter


@register_adapter("endo")
class EndoAdapter(ImageMaskFoldersAdapter):
    """EndoTect 2020 polyps: images and masks paired by file stem."""

    info = DatasetInfo(
        name="endo",
        title="Endo (EndoTect 2020 segmentation test set)",
        domain="medical",
        categories=("colon",),
        prompt_names={"colon": "colon"},
        license="EndoTect / Simula terms: research and education (redistribution not granted)",
        rehostable=False,
        citation=("Hicks et al., The EndoTect 2020 Challenge: Evaluation and Comparison of "
                  "Classification, Segmentation and Inference Time for Endoscopy, ICPR 2020 "
                  "Workshops, LNCS 12668, 2021"),
        homepage="https://endotect.com/",
        has_masks=True,
        has_normals=False,
        description=("Endoscopy polyp images, every one anomalous with a polyp mask. Not "
                     "re-hosted: the challenge terms do not grant redistribution; build it "
                     "locally."),
    )
    layouts = (("images", "masks"),)
    wrappers = ("", "Endo", "EndoTect", "segmentation")
    defect_type = "polyp"
