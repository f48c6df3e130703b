"""CVC-ClinicDB: 612 colonoscopy frames of polyps with masks (all anomalous).

Layouts: the original ``Original/`` + ``Ground Truth/`` (.tif, same file names), its Kaggle copy
with ``PNG/`` and ``TIF/`` versions of that pair (the PNG one is read, never both), and the PraNet
test copy ``images/`` + ``masks/``.
"""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.image_mask_folders import ImageMaskFoldersAdapter
from zsbench.registry import register_adapter


@register_adapter("cvc_clinicdb")
class CVCClinicDBAdapter(ImageMaskFoldersAdapter):
    """CVC-ClinicDB polyps: images and masks paired by file stem."""

    info = DatasetInfo(
        name="cvc_clinicdb",
        title="CVC-ClinicDB",
        domain="medical",
        categories=("colon",),
        prompt_names={"colon": "colon"},
        license="CVC terms: research use with citation (redistribution not granted)",
        rehostable=False,
        citation=("Bernal et al., WM-DOVA maps for accurate polyp highlighting in colonoscopy: "
                  "Validation vs. saliency maps from physicians, Computerized Medical Imaging "
                  "and Graphics 43, 2015"),
        homepage="https://polyp.grand-challenge.org/CVCClinicDB/",
        has_masks=True,
        has_normals=False,
        order=80,
        description=("Colonoscopy polyp frames, every one anomalous with a polyp mask (.tif in "
                     "the original). Not re-hosted: no licence granting redistribution was "
                     "found; build it locally."),
    )
    layouts = (("Original", "Ground Truth"), ("PNG/Original", "PNG/Ground Truth"),
               ("TIF/Original", "TIF/Ground Truth"), ("images", "masks"))
    wrappers = ("", "CVC-ClinicDB", "TestDataset/CVC-ClinicDB")
    defect_type = "polyp"
