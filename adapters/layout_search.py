"""Locate a dataset's expected folders inside the folder a user points at.

Users pass the extracted archive, its parent, or a re-packaged copy; adapters list the layouts
they accept (each a tuple of folders that must all exist) and the wrapper folders they may sit
in. The first match wins, in the order given, so a download that carries two copies of the same
files (BrainMRI) is read once. Folder names match exactly first, then case-insensitively.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zsbench.adapter import DatasetLayoutError
from zsbench.raw_files import describe_folder, require_dir

Layout = tuple[str, ...]


@dataclass(frozen=True)
class LayoutMatch:
    """Where a layout was found: the wrapper folder and each of the layout's folders."""

    base: Path
    folders: tuple[Path, ...]
    layout: Layout


def resolve_folder(parent: Path, relative: str) -> Path | None:
    """``parent / relative`` if it is a folder, matching each part exactly, then ignoring case."""
    current = parent
    for part in Path(relative).parts:
        exact = current / part
        if exact.is_dir():
            current = exact
            continue
        if not current.is_dir():
            return None
        lowered = part.lower()
        matches = sorted(p for p in current.iterdir() if p.is_dir() and p.name.lower() == lowered)
        if not matches:
            return None
        current = matches[0]
    return current if current.is_dir() else None


def _match(base: Path, layout: Layout) -> tuple[Path, ...] | None:
    folders = [resolve_folder(base, folder) for folder in layout]
    if any(f is None for f in folders):
        return None
    return tuple(f for f in folders if f is not None)


def _describe_layouts(layouts: Sequence[Layout], wrappers: Sequence[str]) -> str:
    shapes = " or ".join("{" + ", ".join(f"'{f}/'" for f in layout) + "}" for layout in layouts)
    named = [w for w in wrappers if w]
    where = f" (directly or inside {', '.join(repr(w + '/') for w in named)})" if named else ""
    return f"accepted layouts: {shapes}{where}"


def find_layout(raw_dir: Path, dataset: str, layouts: Sequence[Layout],
                wrappers: Sequence[str] = ("",)) -> LayoutMatch:
    """The first ``(wrapper, layout)`` whose folders all exist under ``raw_dir``.

    ``wrappers`` are folders relative to ``raw_dir`` ("" is ``raw_dir`` itself), tried in order,
    each with every layout in order. If none matches, a single immediate subfolder of
    ``raw_dir`` that holds a layout is accepted (an archive extracted into a folder of another
    name; hidden folders and macOS ``__MACOSX`` are not searched). Otherwise a
    :class:`DatasetLayoutError` names the folder that was expected."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DatasetLayoutError(f"{dataset}: the raw folder {raw_dir} does not exist "
                                 f"or is not a folder.")
    for wrapper in wrappers:
        base = resolve_folder(raw_dir, wrapper) if wrapper else raw_dir
        if base is None:
            continue
        for layout in layouts:
            folders = _match(base, layout)
            if folders is not None:
                return LayoutMatch(base, folders, layout)

    nested = []
    for sub in sorted(p for p in raw_dir.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX"):
        for layout in layouts:
            folders = _match(sub, layout)
            if folders is not None:
                nested.append(LayoutMatch(sub, folders, layout))
                break
    if len(nested) == 1:
        return nested[0]
    hint = _describe_layouts(layouts, wrappers)
    if len(nested) > 1:
        names = ", ".join(m.base.name for m in nested)
        raise DatasetLayoutError(f"{dataset}: several subfolders of {raw_dir} hold the dataset "
                                 f"({names}); point at one of them. ({hint})")
    # Nothing matched: let require_dir name the first missing folder of the closest candidate.
    best_base, best_layout, best_found = raw_dir, layouts[0], -1
    for wrapper in wrappers:
        base = resolve_folder(raw_dir, wrapper) if wrapper else raw_dir
        if base is None:
            continue
        for layout in layouts:
            found = sum(resolve_folder(base, f) is not None for f in layout)
            if found > best_found:
                best_base, best_layout, best_found = base, layout, found
    for folder in best_layout:
        if resolve_folder(best_base, folder) is None:
            require_dir(best_base, folder, dataset, hint=f"({hint})")
    raise DatasetLayoutError(f"{dataset}: no accepted layout under {raw_dir} ({hint}). "
                             f"Found: {describe_folder(raw_dir)}")
