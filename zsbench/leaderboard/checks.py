"""What may be published: the checks that ``leaderboard build`` and ``submit --check`` share.

A result is shown only when it is a full run (no smoke run), holds finite numbers, covers at
least one image with at least one metric, and names gallery images that lie inside its own
folder (symlinks resolved), so a result can never publish a file from elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["resolve_sample", "smoke_reason"]

GALLERY_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


class SampleError(ValueError):
    """A ``samples`` entry that must not be published; the message says why."""


def resolve_sample(result_file: str | Path, entry: str) -> Path:
    """The real path of a ``samples`` entry of ``result_file``.

    Raises :class:`SampleError` unless ``entry`` is a relative path to an existing image file
    that, after resolving ``..`` and symlinks, lies inside the result file's folder."""
    if not isinstance(entry, str) or not entry:
        raise SampleError(f"{entry!r} is not a path")
    if Path(entry).is_absolute():
        raise SampleError(f"{entry!r} must be relative to the result file")
    folder = Path(result_file).parent.resolve()
    try:
        source = (folder / entry).resolve()
    except (OSError, RuntimeError, ValueError) as err:  # NUL byte, symlink loop, long name
        raise SampleError(f"{entry!r} is not a usable path: {err}") from None
    if not source.is_relative_to(folder):
        raise SampleError(f"{entry!r} points outside the result's folder {folder} (to {source}); "
                          "only files under that folder may be published")
    if source.suffix.lower() not in GALLERY_SUFFIXES:
        raise SampleError(f"{entry!r} is not an image ({', '.join(GALLERY_SUFFIXES)})")
    if not source.is_file():
        raise SampleError(f"file not found: {entry!r} (paths are relative to the result file)")
    return source


def smoke_reason(result: dict[str, Any]) -> str | None:
    """Why a result is a smoke run (``smoke: true`` or a non-null ``protocol.limit``), or None."""
    if result.get("smoke") is True:
        return "smoke run (field smoke is true): not a full result"
    protocol = result.get("protocol")
    limit = protocol.get("limit") if isinstance(protocol, dict) else None
    if limit is not None:
        return f"smoke run (field protocol/limit is {limit!r}): not a full result"
    return None
