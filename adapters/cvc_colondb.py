"""CVC-ColonDB: 380 colonoscopy frames of polyps with masks (all anomalous).

Layout: ``images/`` + ``masks/`` (the PraNet test-set copy, ``TestDataset/CVC-ColonDB``); an
``Original/`` + ``Ground Truth/`` pair is accepted as well.
"""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.image_mask_folders import ImageMaskFoldersAdapter
from zsbench.registry import register_adapter


@register_adapter("cvc_colondb")
class CVCColonDBAdapter(ImageMaskFoldersAdapter):
    """CVC-ColonDB polyps: images and masks paired by file stem."""

    info = DatasetInfo(
        name="cvc_colondb",
        title="CVC-ColonDB",
        domain="medical",
        categories=("colon",),
        prompt_names={"colon": "colon"},
        license="CVC terms: research use with citation (redistribution not granted)",
        rehostable=False,
        citation=("Bernal, Sanchez, Vilarino, Towards automatic polyp detection with a polyp "
                  "appearance model, Pattern Recognition 45(9), 2012"),
        homepage="http://mv.cvc.uab.es/projects/colon-qa/cvccolondb",
        has_masks=True,
        has_normals=False,
        order=70,
        description=("Colonoscopy polyp frames, every one anomalous with a polyp mask. Not "
                     "re-hosted: no licence granting redistribution was found; build it "
                     "locally."),
    )
    layouts = (("images", "masks"), ("Original", "Ground Truth"))
    wrappers = ("", "CVC-ColonDB", "TestDataset/CVC-ColonDB")
    defect_type = "polyp"
