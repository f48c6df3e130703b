"""BTAD (beanTech Anomaly Detection): three products in an MVTec-like layout with ok/ko folders.

Layout: ``<cat>/train/ok/``, ``<cat>/test/{ok,ko}/``, ``<cat>/ground_truth/ko/`` with images and
masks as ``.bmp`` or ``.png`` (mixed across categories; BMP images are re-encoded to PNG
losslessly). Masks pair with images by stem. The defect type of anomalous images is ``ko``.
"""

from __future__ import annotations

from typing import ClassVar

from zsbench.adapter import DatasetInfo
from zsbench.adapters.mvtec import MVTecLayoutAdapter
from zsbench.registry import register_adapter


@register_adapter("btad")
class BTADAdapter(MVTecLayoutAdapter):
    """BTAD (Mishra et al., ISIE 2021): categories 01, 02, 03."""

    normal_folder: ClassVar[str] = "ok"
    info = DatasetInfo(
        name="btad",
        title="BTAD",
        domain="industrial",
        categories=("01", "02", "03"),
        prompt_names={"01": "object", "02": "object", "03": "object"},
        license="CC BY-SA 4.0 (as stated on the download page; unverified)",
        rehostable=False,
        citation=("Mishra, Verk, Fornasier, Piciarelli, Foresti. VT-ADL: A Vision Transformer "
                  "Network for Image Anomaly Detection and Localization. ISIE 2021."),
        homepage="https://github.com/pankajmishra000/VT-ADL",
        has_masks=True,
        has_normals=True,
        order=40,
        splits=("train", "test"),
        description="Three industrial products; 2,540 images, pixel masks for defects.",
    )
