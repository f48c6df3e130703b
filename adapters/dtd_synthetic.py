"""DTD-Synthetic: twelve DTD textures with synthetic defects, in the MVTec AD layout."""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.mvtec import MVTecLayoutAdapter
from zsbench.registry import register_adapter

DTD_CATEGORIES = ("Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114",
                  "Perforated_037", "Stratified_154", "Woven_001", "Woven_068", "Woven_104",
                  "Woven_125", "Woven_127")


@register_adapter("dtd_synthetic")
class DTDSyntheticAdapter(MVTecLayoutAdapter):
    """DTD-Synthetic (Aota et al., WACV 2023); the prompt word is the texture name."""

    info = DatasetInfo(
        name="dtd_synthetic",
        title="DTD-Synthetic",
        domain="industrial",
        categories=DTD_CATEGORIES,
        prompt_names={c: c.split("_")[0].lower() for c in DTD_CATEGORIES},
        license="research use (DTD terms; unverified)",
        rehostable=False,
        citation=("Aota, Tong, Okatani. Zero-shot versus Many-shot: Unsupervised Texture Anomaly "
                  "Detection. WACV 2023."),
        homepage="https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1",
        has_masks=True,
        has_normals=True,
        order=80,
        splits=("train", "test"),
        description="Textures from the Describable Textures Dataset with synthesized defects.",
    )
