"""Finding files in raw dataset downloads: image globbing, folder checks, mask pairing by stem."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from zsbench.adapter import DatasetLayoutError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (extensions matched case-insensitively), sorted by name.

    Hidden files (``.DS_Store``, ``._x.png`` from macOS archives) are skipped."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def describe_folder(folder: Path, limit: int = 8) -> str:
    """A short listing of what a folder holds, for error messages."""
    if not folder.exists():
        return f"{folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return f"{folder} is empty"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{folder} contains: {', '.join(names[:limit])}{more}"


def require_dir(root: Path, relative: str | Path, dataset: str, hint: str = "") -> Path:
    """``root / relative`` if it is a folder, else a :class:`DatasetLayoutError` saying what
    was expected and what was found."""
    path = root / relative
    if not path.is_dir():
        found = describe_folder(path.parent if path.parent.exists() else root)
        extra = f" {hint}" if hint else ""
        raise DatasetLayoutError(
            f"{dataset}: expected the folder '{relative}' under {root} "
            f"(the layout of the original download).{extra} Found: {found}")
    return path


def require_file(root: Path, relative: str | Path, dataset: str, hint: str = "") -> Path:
    path = root / relative
    if not path.is_file():
        extra = f" {hint}" if hint else ""
        found = describe_folder(path.parent if path.parent.exists() else root)
        raise DatasetLayoutError(f"{dataset}: expected the file '{relative}' under {root}.{extra} "
                                 f"Found: {found}")
    return path


def pair_by_stem(images: Iterable[Path], masks: Iterable[Path], dataset: str,
                 mask_stem: Callable[[str], str] = lambda stem: stem,
                 mask_key: Callable[[str], str] | None = None,
                 ) -> tuple[dict[Path, Path], list[Path], list[Path]]:
    """Pair each image with the mask whose stem is ``mask_stem(image stem)``.

    ``mask_key`` (optional) maps a mask's stem to the key it is looked up by, e.g.
    ``lambda s: s.removesuffix("_mask")`` to accept both ``000.png`` and ``000_mask.png``.
    Returns ``(pairs, images_without_mask, masks_without_image)``. Never pairs by sorted index.
    Two masks with the same key (e.g. ``a.png`` and ``a.bmp``) are an error."""
    by_stem: dict[str, Path] = {}
    for m in masks:
        key = m.stem if mask_key is None else mask_key(m.stem)
        if key in by_stem:
            raise DatasetLayoutError(f"{dataset}: two masks for the same image: "
                                     f"{by_stem[key]} and {m}")
        by_stem[key] = m
    pairs: dict[Path, Path] = {}
    unpaired: list[Path] = []
    for img in images:
        mask = by_stem.pop(mask_stem(img.stem), None)
        if mask is None:
            unpaired.append(img)
        else:
            pairs[img] = mask
    return pairs, unpaired, sorted(by_stem.values())


def relative_posix(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with forward slashes (the ``source_path`` column)."""
    return path.relative_to(root).as_posix()
