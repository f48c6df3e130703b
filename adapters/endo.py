"""Endo (EndoTect 2020 segmentation test set): 200 polyp images with masks (all anomalous).

Layout (PraNet-style, not confirmed): ``images/`` + ``masks/``, possibly inside a wrapper folder.
The upstream preparation script takes any folder beside ``masks/`` as the image folder, so
another name is accepted too (``images/`` first; with several candidates the first by name is
read and the others are named in a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from zsbench.adapter import DatasetInfo, RawRecord
from zsbench.adapters.image_mask_folders import ImageMaskFoldersAdapter
from zsbench.adapters.layout_search import resolve_folder
from zsbench.raw_files import list_images
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)


@register_adapter("endo")
class EndoAdapter(ImageMaskFoldersAdapter):
    """EndoTect 2020 polyps: images and masks paired by file stem."""

    info = DatasetInfo(
        name="endo",
        title="Endo (EndoTect 2020 segmentation test set)",
        domain="medical",
        categories=("colon",),
        prompt_names={"colon": "colon"},
        license="EndoTect / Simula terms: research and education (redistribution not granted)",
        rehostable=False,
        citation=("Hicks et al., The EndoTect 2020 Challenge: Evaluation and Comparison of "
                  "Classification, Segmentation and Inference Time for Endoscopy, ICPR 2020 "
                  "Workshops, LNCS 12668, 2021"),
        homepage="https://endotect.com/",
        has_masks=True,
        has_normals=False,
        short_title="Endo", order=100,
        description=("Endoscopy polyp images, every one anomalous with a polyp mask. Not "
                     "re-hosted: the challenge terms do not grant redistribution; build it "
                     "locally."),
    )
    layouts = (("images", "masks"),)
    wrappers = ("", "Endo", "EndoTect", "segmentation")
    defect_type = "polyp"

    def image_folders_beside_masks(self, raw_dir: Path) -> list[str]:
        """Names of the folders holding images beside a ``masks/`` folder (not ``images/``)."""
        bases = [resolve_folder(raw_dir, w) if w else raw_dir for w in self.wrappers]
        if raw_dir.is_dir():
            bases += sorted(p for p in raw_dir.iterdir() if p.is_dir())
        names: list[str] = []
        for base in bases:
            if base is None or resolve_folder(base, "masks") is None:
                continue
            names += [p.name for p in sorted(base.iterdir()) if p.is_dir()
                      and p.name.lower() not in ("masks", "images") and list_images(p)]
        return list(dict.fromkeys(names))

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        others = self.image_folders_beside_masks(raw_dir)
        if len(others) > 1:
            logger.warning("endo: several image folders beside masks/: %s (the first found is "
                           "read unless images/ exists)", ", ".join(others))
        self.layouts = (("images", "masks"), *((name, "masks") for name in others))
        yield from super().records(raw_dir)
