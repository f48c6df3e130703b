"""TN3K: thyroid ultrasound images with nodule masks; the 614-image test split (all anomalous).

Layout: ``test-image/`` + ``test-mask/`` (the download nests them in ``Thyroid Dataset/tn3k/``).
The ``trainval-*`` folders are not read.
"""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.image_mask_folders import ImageMaskFoldersAdapter
from zsbench.registry import register_adapter


@register_adapter("tn3k")
class TN3KAdapter(ImageMaskFoldersAdapter):
    """TN3K thyroid nodules: ``test-image/`` + ``test-mask/`` paired by file stem."""

    info = DatasetInfo(
        name="tn3k",
        title="TN3K (thyroid nodules, test split)",
        domain="medical",
        categories=("thyroid",),
        prompt_names={"thyroid": "thyroid"},
        license="unspecified (research release with the TRFE-Net paper)",
        rehostable=False,
        citation=("Gong et al., Multi-task Learning for Thyroid Nodule Segmentation with "
                  "Thyroid Region Prior, IEEE ISBI 2021"),
        homepage="https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation",
        has_masks=True,
        has_normals=False,
        short_title="TN3K", order=110,
        description=("Thyroid ultrasound test images, every one anomalous with a nodule mask. "
                     "Not re-hosted: no licence is stated; build it locally."),
    )
    layouts = (("test-image", "test-mask"),)
    wrappers = ("", "tn3k", "Thyroid Dataset/tn3k")
    defect_type = "nodule"
