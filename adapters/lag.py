"""LAG (Large-scale Attention-based Glaucoma database): fundus images, glaucoma vs not.

Layout (not confirmed): ``suspicious_glaucoma/image/`` (anomalous) and ``non_glaucoma/image/``
(normal), usually inside ``LAG_database_part_1/``; the ``attention_map/`` and ``label/`` folders
beside ``image/`` are not read. Variants with the images directly in ``suspicious_glaucoma/`` and
``non_glaucoma/``, or named ``glaucoma/``, are accepted. Its licence forbids re-uploading: the
unified dataset is only ever built locally from the user's copy.
"""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.class_folders import ClassFoldersAdapter
from zsbench.registry import register_adapter


@register_adapter("lag")
class LAGAdapter(ClassFoldersAdapter):
    """LAG: suspicious-glaucoma (anomalous) and non-glaucoma fundus images."""

    info = DatasetInfo(
        name="lag",
        title="LAG (Large-scale Attention-based Glaucoma database)",
        domain="medical",
        categories=("fundus",),
        prompt_names={"fundus": "fundus"},
        license="academic use only; re-uploading the database is not allowed",
        rehostable=False,
        citation=("Li, Xu, Wang, Jiang, Liu, Attention Based Glaucoma Detection: A Large-Scale "
                  "Database and CNN Model, CVPR 2019"),
        homepage="https://github.com/smilell/AG-CNN",
        has_masks=False,
        has_normals=True,
        short_title="LAG", order=50,
        description=("Fundus photographs labelled suspicious glaucoma (anomalous) or not; "
                     "image-level labels only. The licence forbids re-upload: build locally "
                     "only, never publish."),
    )
    layouts = (("suspicious_glaucoma/image", "non_glaucoma/image"),
               ("suspicious_glaucoma", "non_glaucoma"),
               ("glaucoma/image", "non_glaucoma/image"),
               ("glaucoma", "non_glaucoma"))
    wrappers = ("", "LAG_database_part_1", "LAG")
    defect_type = "glaucoma"
