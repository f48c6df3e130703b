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

from zsbench.errors import ConfigError, DataError


class DatasetLayoutError(DataError):
    """The raw folder does not have the layout the adapter expects; says what and where."""


class AdapterOptionError(ConfigError):
    """An adapter option the adapter does not take, or a value that does not parse."""


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_option(value: Any, kind: type, option: str, dataset: str) -> Any:
    """An adapter option value (a command-line string, or already typed) as ``kind``: ``bool``
    (true/false, yes/no, on/off, 1/0), ``int``, ``float`` or ``str``. A value that does not
    parse raises :class:`AdapterOptionError` naming the option."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE_WORDS or text in FALSE_WORDS:
            return text in TRUE_WORDS
        raise AdapterOptionError(f"{dataset}: option {option}={value!r} must be true or false")
    if kind in (int, float):
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
        if not isinstance(value, (bool, bytes)):
            try:
                number = float(str(value).strip()) if kind is float else int(str(value).strip())
            except ValueError:
                pass
            else:
                if kind is int or number == number:  # NaN is not a value
                    return number
        kind_name = "an integer" if kind is int else "a number"
        raise AdapterOptionError(f"{dataset}: option {option}={value!r} must be {kind_name}")
    if kind is str:
        return value if isinstance(value, str) else str(value)
    raise TypeError(f"{dataset}: option {option} declares the type {kind!r}; adapter options "
                    "are bool, int, float or str")


def convert_options(adapter_cls: type[DatasetAdapter], options: dict[str, Any]
                    ) -> dict[str, Any]:
    """``options`` with each value converted to the type the adapter declares for it in
    ``option_types`` (others unchanged)."""
    types = getattr(adapter_cls, "option_types", {})
    info = getattr(adapter_cls, "info", None)
    dataset = getattr(info, "name", adapter_cls.__name__)
    return {key: parse_option(value, types[key], key, dataset) if key in types else value
            for key, value in options.items()}


#: Dataset domains in display order (leaderboard column groups, dataset tables).
DOMAINS: tuple[str, ...] = ("industrial", "medical", "synthetic")


def display_key(domain: str, order: int, name: str) -> tuple[int, int, str]:
    """Sort key of datasets in displays: domain (:data:`DOMAINS` order), then
    :attr:`DatasetInfo.order`, then id."""
    rank = DOMAINS.index(domain) if domain in DOMAINS else len(DOMAINS)
    return rank, order, name


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata every adapter declares: the one source of a dataset's facts. ``zsbench data
    list`` shows it, the card records it, and the leaderboard catalog
    (:mod:`zsbench.leaderboard.catalog`) and the README/docs dataset tables
    (:mod:`zsbench.dataset_docs`) are derived from it."""

    name: str  # zsbench id, e.g. "mvtec"
    title: str  # e.g. "MVTec AD"
    domain: Literal["industrial", "medical", "synthetic"]
    categories: tuple[str, ...]
    prompt_names: dict[str, str]  # category -> word used in prompts
    license: str
    rehostable: bool  # may the unified dataset be re-published on the Hub?
    citation: str
    homepage: str  # source URL of the original download
    has_masks: bool
    has_normals: bool  # normal images in the test split
    splits: tuple[str, ...] = ("test",)
    description: str = ""
    checksums: dict[str, str] = field(default_factory=dict)  # archive name -> sha256
    short_title: str = ""  # leaderboard column and table name; "" = ``title``
    paper_name: str = ""  # spelling in published tables ("MVTecAD"); "" = the short title
    order: int = 1000  # position among its domain's datasets (leaderboard columns, tables)
    install_extra: str = ""  # pip extra the adapter needs: "medical" = zsbench[medical]

    @property
    def display_title(self) -> str:
        """The short name shown in leaderboard columns and dataset tables."""
        return self.short_title or self.title

    @property
    def published_name(self) -> str:
        """The dataset's name as published result tables spell it."""
        return self.paper_name or self.display_title


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
    #: option name -> type (bool, int, float, str); command-line strings are converted to it
    #: (``strict=false`` is False) and values that do not parse are an error naming the option.
    #: Without ``options_accepted``, these names are the options the adapter takes.
    option_types: ClassVar[dict[str, type]] = {}

    def __init__(self, **options: Any):
        self.options = convert_options(type(self), options)

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        """Yield every image of the download under ``raw_dir``."""
        raise NotImplementedError


def accepted_options(adapter_cls: type[DatasetAdapter]) -> tuple[str, ...] | None:
    """The option names an adapter takes: its ``options_accepted``, else the names in its
    ``option_types`` when it declares any; None when it does not say (options unchecked)."""
    accepted = getattr(adapter_cls, "options_accepted", None)
    if accepted is None:
        accepted = tuple(getattr(adapter_cls, "option_types", {})) or None
    return None if accepted is None else tuple(accepted)
