"""Br35H (Kaggle "Br35H :: Brain Tumor Detection 2020"): 1,500 tumour and 1,500 normal MRIs.

Layout: ``yes/`` + ``no/``; other folders of the download (``pred/``: unlabelled images) are
not read.
"""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.class_folders import ClassFoldersAdapter
from zsbench.registry import register_adapter


@register_adapter("br35h")
class Br35HAdapter(ClassFoldersAdapter):
    """Br35H: ``yes/`` (tumour) and ``no/``; ``pred/`` is ignored."""

    info = DatasetInfo(
        name="br35h",
        title="Br35H (Brain Tumor Detection 2020)",
        domain="medical",
        categories=("brain",),
        prompt_names={"brain": "brain"},
        license="Kaggle dataset licence not verified",
        rehostable=False,
        citation="Hamada, Br35H :: Brain Tumor Detection 2020, Kaggle dataset, 2020",
        homepage="https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
        has_masks=False,
        has_normals=True,
        short_title="Br35H", order=30,
        description=("Brain MRI slices labelled tumour (yes) or not (no); image-level labels "
                     "only; the unlabelled pred/ folder is ignored. Not re-hosted: the licence "
                     "was not verified; build it locally."),
    )
    layouts = (("yes", "no"),)
    wrappers = ("", "Br35H", "brain_tumor_dataset")
    defect_type = "tumor"
