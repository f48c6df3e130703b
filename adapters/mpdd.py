"""MPDD (Metal Parts Defect Detection): six metal-part categories in the MVTec AD layout."""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.mvtec import MVTecLayoutAdapter
from zsbench.registry import register_adapter

MPDD_PROMPTS = {
    "bracket_black": "black bracket",
    "bracket_brown": "brown bracket",
    "bracket_white": "white bracket",
    "connector": "connector",
    "metal_plate": "metal plate",
    "tubes": "tubes",
}


@register_adapter("mpdd")
class MPDDAdapter(MVTecLayoutAdapter):
    """MPDD (Jezek et al., ICUMT 2021): MVTec layout, masks
    ``ground_truth/<defect>/NNN_mask.png``."""

    info = DatasetInfo(
        name="mpdd",
        title="MPDD",
        domain="industrial",
        categories=tuple(MPDD_PROMPTS),
        prompt_names=MPDD_PROMPTS,
        license="CC BY-NC-SA 4.0 (as stated by the authors' repository; unverified)",
        rehostable=False,
        citation=("Jezek, Jonak, Burget, Dvorak, Skotak. Deep learning-based defect detection of "
                  "metal parts: evaluating current methods in complex conditions. ICUMT 2021."),
        homepage="https://github.com/stepanje/MPDD",
        has_masks=True,
        has_normals=True,
        order=30,
        splits=("train", "test"),
        description="Painted metal parts under varied poses, lighting and backgrounds.",
    )
