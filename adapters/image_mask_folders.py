"""Base of the "images folder + masks folder" datasets: every image anomalous, paired by stem.

Kvasir-SEG, CVC-ColonDB, CVC-ClinicDB, EndoTect, TN3K and ISIC 2016 (and, through
:func:`paired_records`, SD-saliency-900 and RSDDs) hold only anomalous images, each with a binary
mask whose file stem is the image's (ISIC: ``<id>_Segmentation``). Masks are paired by stem,
never by sorted index. Their records set ``extra["mask_threshold"] = 127``: the masks are 0/255
but JPEG noise and anti-aliased edges (PraNet's PNG copies) leave intermediate values, which
preparation must not count as foreground.

Unpaired files: an image without a mask is skipped (it has no ground truth to score) and a mask
without an image is ignored; both are logged as a warning that names the files. With the adapter
option ``strict=True`` either case raises :class:`DatasetLayoutError` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from zsbench.adapter import DatasetAdapter, DatasetLayoutError, RawRecord
from zsbench.adapters.layout_search import Layout, find_layout
from zsbench.raw_files import list_images, pair_by_stem, relative_posix

logger = logging.getLogger(__name__)

MASK_THRESHOLD = 127  # foreground = mask value > 127 (see the module docstring)


def _listing(paths: Sequence[Path], root: Path, limit: int = 10) -> str:
    names = [relative_posix(p, root) if p.is_relative_to(root) else str(p) for p in paths]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def report_unpaired(dataset: str, raw_dir: Path, images_without_mask: Sequence[Path],
                    masks_without_image: Sequence[Path], strict: bool) -> None:
    """Warn about (or, if ``strict``, raise on) images without a mask and masks without an image."""
    problems = []
    if images_without_mask:
        problems.append(f"{len(images_without_mask)} anomalous image(s) without a mask, skipped: "
                        f"{_listing(images_without_mask, raw_dir)}")
    if masks_without_image:
        problems.append(f"{len(masks_without_image)} mask(s) without an image, ignored: "
                        f"{_listing(masks_without_image, raw_dir)}")
    if not problems:
        return
    message = f"{dataset}: " + "; ".join(problems)
    if strict:
        raise DatasetLayoutError(message + " (strict=True)")
    logger.warning(message)


def paired_records(images: Sequence[Path], masks: Sequence[Path], raw_dir: Path, *,
                   dataset: str, category: str, defect_type_of: Callable[[Path], str],
                   mask_stem: Callable[[str], str] = lambda stem: stem, strict: bool = False,
                   extra: dict[str, Any] | None = None) -> Iterator[RawRecord]:
    """Anomalous test records for ``images``, each with its mask found by stem."""
    pairs, without_mask, without_image = pair_by_stem(images, masks, dataset, mask_stem=mask_stem)
    report_unpaired(dataset, raw_dir, without_mask, without_image, strict)
    for image in images:
        mask = pairs.get(image)
        if mask is None:
            continue
        yield RawRecord(category=category, label=1, split="test",
                        source_path=relative_posix(image, raw_dir), image=image, mask=mask,
                        defect_type=defect_type_of(image),
                        extra={"mask_threshold": MASK_THRESHOLD, **(extra or {})})


class ImageMaskFoldersAdapter(DatasetAdapter):
    """An anomalous-only dataset stored as an images folder beside a masks folder.

    Subclasses set ``info``, ``layouts`` (accepted ``(images, masks)`` folder pairs, first match
    wins), ``wrappers`` (folders the pair may sit in) and ``defect_type``; they may override
    :meth:`mask_stem`, :meth:`keep_image` and :meth:`defect_type_of`."""

    option_types: ClassVar[dict[str, type]] = {"strict": bool}
    layouts: ClassVar[tuple[Layout, ...]] = (("images", "masks"),)
    wrappers: ClassVar[tuple[str, ...]] = ("",)
    defect_type: ClassVar[str] = "lesion"

    def mask_stem(self, image_stem: str) -> str:
        """The stem of an image's mask file."""
        return image_stem

    def keep_image(self, path: Path) -> bool:
        """False for files in the images folder that are not dataset images."""
        return True

    def defect_type_of(self, image: Path) -> str:
        return self.defect_type

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        name = self.info.name
        match = find_layout(raw_dir, name, self.layouts, self.wrappers)
        images_dir, masks_dir = match.folders
        images = [p for p in list_images(images_dir) if self.keep_image(p)]
        if not images:
            raise DatasetLayoutError(f"{name}: the images folder {images_dir} holds no images "
                                     f"(.png .jpg .jpeg .bmp .tif .tiff).")
        logger.info("%s: %d images in %s, masks in %s", name, len(images), images_dir, masks_dir)
        yield from paired_records(
            images, list_images(masks_dir), raw_dir, dataset=name,
            category=self.info.categories[0], defect_type_of=self.defect_type_of,
            mask_stem=self.mask_stem, strict=bool(self.options.get("strict", False)))
