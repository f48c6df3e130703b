"""SD-saliency-900: 900 strip-steel surface images (200x200) with defect masks (all anomalous).

Layout: ``Source Images/{In,Pa,Sc}_N.bmp`` + ``Ground truth/<stem>.png``; the file prefix is the
defect type (In inclusion, Pa patches, Sc scratches).
"""

from __future__ import annotations

from pathlib import Path

from zsbench.adapter import DatasetInfo
from zsbench.adapters.image_mask_folders import ImageMaskFoldersAdapter
from zsbench.registry import register_adapter

DEFECT_PREFIXES = {"in": "inclusion", "pa": "patches", "sc": "scratches"}


@register_adapter("sd_saliency_900")
class SDSaliency900Adapter(ImageMaskFoldersAdapter):
    """SD-saliency-900 strip steel: ``Source Images/`` + ``Ground truth/`` paired by stem."""

    info = DatasetInfo(
        name="sd_saliency_900",
        title="SD-saliency-900",
        domain="industrial",
        categories=("iron",),
        prompt_names={"iron": "iron"},
        license="unspecified (research release of the authors)",
        rehostable=False,
        citation=("Song, Song, Yan, Saliency detection for strip steel surface defects using "
                  "multiple constraints and improved texture features, Optics and Lasers in "
                  "Engineering 128, 2020"),
        homepage="https://github.com/SongGuorong/MCITF",
        has_masks=True,
        has_normals=False,
        order=100,
        description=("Strip-steel surface images with inclusion, patch or scratch defects, every "
                     "one anomalous with a mask; defect_type from the file prefix. Not "
                     "re-hosted: no licence is stated; build it locally."),
    )
    layouts = (("Source Images", "Ground truth"),)
    wrappers = ("", "SD-saliency-900")
    defect_type = "defect"

    def defect_type_of(self, image: Path) -> str:
        prefix = image.stem.split("_", 1)[0].lower()
        return DEFECT_PREFIXES.get(prefix, self.defect_type)
