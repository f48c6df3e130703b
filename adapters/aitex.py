"""AITEX Fabric Image Database: 4096x256 fabric images, defective with masks and defect-free.

Layout: ``Defect_images/<nnnn>_<ddd>_<ff>.png`` (image id, defect code, fabric code, as the
AITEX paper names them), ``Mask_images/<same stem>_mask.png`` and
``NODefect_images/<roll>/*.png``. Some defect images have several masks (``_mask1``,
``_mask2``, ...): they are merged by OR and delivered as PNG bytes; a single mask stays a path
(read with ``extra["mask_threshold"] = 127``). A defect image without a mask is skipped and a
mask without an image ignored, with a warning naming the files (``strict=True`` raises).
"""

from __future__ import annotations

import io
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.image_mask_folders import MASK_THRESHOLD, report_unpaired
from zsbench.adapters.layout_search import find_layout
from zsbench.raw_files import list_images, relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

# Defect codes of the AITEX paper (Silvestre-Blanes et al., 2019).
DEFECT_NAMES = {
    "002": "broken_end", "006": "broken_yarn", "010": "broken_pick", "016": "weft_curling",
    "019": "fuzzyball", "022": "cut_selvage", "023": "crease", "025": "warp_ball",
    "027": "knots", "029": "contamination", "030": "nep", "036": "weft_crack",
}
DEFECT_NAME_PATTERN = re.compile(r"^(?P<id>\d+)_(?P<code>\d{3})_(?P<fabric>\d+)$")
MASK_NAME_PATTERN = re.compile(r"^(?P<image>.+)_mask(?P<index>\d*)$", re.IGNORECASE)


def _foreground(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def merge_masks(paths: list[Path]) -> bytes:
    """OR of several binary masks (> 127 is foreground), as 0/255 PNG bytes."""
    if not paths:
        raise ValueError("merge_masks needs at least one mask file")
    merged = _foreground(paths[0]).copy()
    for path in paths[1:]:
        fg = _foreground(path)
        if fg.shape != merged.shape:
            raise DatasetLayoutError(f"aitex: masks of one image differ in size: {paths[0]} is "
                                     f"{merged.shape[::-1]}, {path} is {fg.shape[::-1]}")
        merged |= fg
    buffer = io.BytesIO()
    Image.fromarray(merged.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def defect_type_of(stem: str) -> str:
    """The defect name from ``<id>_<code>_<fabric>``; ``code_<ddd>`` for an unknown code."""
    match = DEFECT_NAME_PATTERN.match(stem)
    if match is None:
        logger.warning("aitex: defect image name %r is not <id>_<code>_<fabric>", stem)
        return "defect"
    code = match["code"]
    return DEFECT_NAMES.get(code, f"code_{code}")


@register_adapter("aitex")
class AITEXAdapter(DatasetAdapter):
    """AITEX fabric: defect images with (merged) masks, and defect-free rolls."""

    option_types = {"strict": bool}
    info = DatasetInfo(
        name="aitex",
        title="AITEX Fabric Image Database",
        domain="industrial",
        categories=("fabric",),
        prompt_names={"fabric": "fabric"},
        license="AITEX terms (listed as CC0 1.0 by third parties; not verified with AITEX)",
        rehostable=False,
        citation=("Silvestre-Blanes, Albero-Albero, Miralles, Perez-Llorens, Moreno, A Public "
                  "Fabric Database for Defect Detection Methods and Results, Autex Research "
                  "Journal 19(4), 2019"),
        homepage="https://www.aitex.es/afid/",
        has_masks=True,
        has_normals=True,
        short_title="AITEX", order=60,
        description=("Fabric images (4096x256, 7 fabrics): 105 with one of 12 defect types and "
                     "a mask (several masks of one image merged by OR), 140 defect-free. Not "
                     "re-hosted until AITEX's licence is confirmed; build it locally."),
    )

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        match = find_layout(raw_dir, "aitex",
                            (("Defect_images", "Mask_images", "NODefect_images"),),
                            ("", "AITEX", "AITEX Fabric Image Database"))
        defect_dir, mask_dir, normal_dir = match.folders
        strict = bool(self.options.get("strict", False))

        defects = list_images(defect_dir)
        masks_by_image: dict[str, list[Path]] = defaultdict(list)
        for mask in list_images(mask_dir):
            m = MASK_NAME_PATTERN.match(mask.stem)
            masks_by_image[m["image"] if m else mask.stem].append(mask)
        without_mask = [p for p in defects if p.stem not in masks_by_image]
        stems = {p.stem for p in defects}
        without_image = sorted(m for stem, ms in masks_by_image.items() if stem not in stems
                               for m in ms)
        report_unpaired("aitex", raw_dir, without_mask, without_image, strict)

        for image in defects:
            masks = masks_by_image.get(image.stem)
            if not masks:
                continue
            mask: Path | bytes = masks[0] if len(masks) == 1 else merge_masks(masks)
            parsed = DEFECT_NAME_PATTERN.match(image.stem)
            yield RawRecord(category="fabric", label=1, split="test",
                            source_path=relative_posix(image, raw_dir), image=image, mask=mask,
                            defect_type=defect_type_of(image.stem),
                            extra={"fabric": parsed["fabric"] if parsed else "",
                                   "mask_threshold": MASK_THRESHOLD})

        normals = list_images(normal_dir, recursive=True)
        if not normals:
            raise DatasetLayoutError(f"aitex: {normal_dir} holds no defect-free images "
                                     f"(expected NODefect_images/<roll>/*.png).")
        for image in normals:
            roll = image.parent.name if image.parent != normal_dir else ""
            yield RawRecord(category="fabric", label=0, split="test",
                            source_path=relative_posix(image, raw_dir), image=image, mask=None,
                            defect_type="good", extra={"roll": roll})
