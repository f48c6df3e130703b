"""Kvasir-SEG: 1,000 colonoscopy images of polyps with segmentation masks (all anomalous).

Layout: ``Kvasir-SEG/images/<id>.jpg`` + ``Kvasir-SEG/masks/<id>.jpg``; the masks are RGB JPEGs
with compression noise (binarise > 127). The PraNet test copy (``TestDataset/Kvasir/images``,
``masks``, PNG) is accepted too.
"""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.image_mask_folders import ImageMaskFoldersAdapter
from zsbench.registry import register_adapter


@register_adapter("kvasir")
class KvasirAdapter(ImageMaskFoldersAdapter):
    """Kvasir-SEG polyps: ``images/`` + ``masks/`` paired by file stem."""

    info = DatasetInfo(
        name="kvasir",
        title="Kvasir-SEG",
        domain="medical",
        categories=("colon",),
        prompt_names={"colon": "colon"},
        license="Kvasir-SEG terms: research and education only; commercial use needs permission",
        rehostable=False,
        citation=("Jha et al., Kvasir-SEG: A Segmented Polyp Dataset, MultiMedia Modeling "
                  "(MMM) 2020, doi:10.1007/978-3-030-37734-2_37"),
        homepage="https://datasets.simula.no/kvasir-seg/",
        has_masks=True,
        has_normals=False,
        paper_name="Kvasir", order=90,
        description=("Colonoscopy polyp images, every one anomalous with a polyp mask (JPEG, "
                     "binarise > 127). Not re-hosted: the terms restrict use to research and "
                     "education and do not grant redistribution; build it locally."),
    )
    layouts = (("images", "masks"),)
    wrappers = ("", "Kvasir-SEG", "Kvasir", "TestDataset/Kvasir")
    defect_type = "polyp"
