"""BrainMRI (Kaggle "Brain MRI Images for Brain Tumor Detection"): 155 tumour, 98 normal.

Layout: ``brain_tumor_dataset/{yes,no}/`` with mixed extensions (.jpg .JPG .jpeg .png) and names
with spaces. The Kaggle download also carries a duplicate ``yes/`` + ``no/`` pair at its root:
when ``brain_tumor_dataset/`` is present only that copy is read; a root ``yes/`` + ``no/`` pair
alone is accepted too.
"""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.class_folders import ClassFoldersAdapter
from zsbench.registry import register_adapter


@register_adapter("brainmri")
class BrainMRIAdapter(ClassFoldersAdapter):
    """BrainMRI: ``brain_tumor_dataset/yes`` (tumour) and ``brain_tumor_dataset/no``."""

    info = DatasetInfo(
        name="brainmri",
        title="BrainMRI (Brain MRI Images for Brain Tumor Detection)",
        domain="medical",
        categories=("brain",),
        prompt_names={"brain": "brain"},
        license="unspecified on Kaggle (original sources of the images not stated)",
        rehostable=False,
        citation=("Chakrabarty, Brain MRI Images for Brain Tumor Detection, Kaggle dataset, "
                  "2019"),
        homepage="https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection",
        has_masks=False,
        has_normals=True,
        short_title="BrainMRI", order=20,
        description=("Brain MRI slices labelled tumour (yes) or not (no); image-level labels "
                     "only. Only brain_tumor_dataset/ is read when the root duplicate yes/no "
                     "pair is present. Not re-hosted: no licence is stated; build it locally."),
    )
    layouts = (("yes", "no"),)
    wrappers = ("brain_tumor_dataset", "")
    defect_type = "tumor"
