"""The contract every dataset adapter implements.

An adapter reads the original public download of a dataset (its own folder layout) and yields
:class:`RawRecord` objects; :mod:`zsbench.prepare` turns those into the unified Parquet dataset.
Adapters pair masks with images by file stem, never by sorted index.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal


class DatasetLayoutError(ValueError):
    """The raw folder does not have the layout the adapter expects; says what and where."""


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata every adapter declares (shown by ``zsbench data list``, written to the card)."""

    name: str  # zsbench id, e.g. "mvtec"
    title: str  # e.g. "MVTec AD"
    domain: Literal["industrial", "medical", "synthetic"]
    categories: tuple[str, ...]
    prompt_names: dict[str, str]  # category -> word used in prompts
    license: str
    rehostable: bool  # may the unified dataset be re-published on the Hub?
    citation: str
    homepage: str
    has_masks: bool
    has_normals: bool  # normal images in the test split
    splits: tuple[str, ...] = ("test",)
    description: str = ""
    checksums: dict[str, str] = field(default_factory=dict)  # archive name -> sha256


@dataclass
class RawRecord:
    """One image of a raw download, before encoding into the unified schema.

    ``image``/``mask`` are a path to a file inside the download or already-encoded bytes (for
    images cut or sliced by the adapter); ``mask`` is None where the image has no mask."""

    category: str
    label: int  # 0 normal, 1 anomaly
    split: str
    source_path: str  # path relative to the download root (posix)
    image: Path | bytes
    mask: Path | bytes | None = None
    defect_type: str = "good"
    extra: dict[str, Any] = field(default_factory=dict)


class DatasetAdapter:
    """Base class of adapters; subclasses set ``info`` and implement :meth:`records`."""

    info: ClassVar[DatasetInfo]

    def __init__(self, **options: Any):
        self.options = options

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        """Yield every image of the download under ``raw_dir``."""
        raise NotImplementedError
