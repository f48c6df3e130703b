"""Names the leaderboard shows: dataset ids, titles, domains and order; metric ids and labels.

The dataset catalog is derived from the registered adapters' :class:`~zsbench.adapter.DatasetInfo`
(title, domain, paper name, order): adding a dataset adapter adds its leaderboard column. Only
:data:`PUBLISHED_ONLY` is listed here, for datasets of published tables without an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zsbench.adapter import DOMAINS, DatasetInfo, display_key

# (DATASETS, DATASET_BY_ID and DATASET_ID_BY_PAPER_NAME are derived on access: __getattr__)
__all__ = ["DOMAINS", "METRICS", "METRIC_IDS", "PUBLISHED_ONLY", "TRAINING_FREE_METHODS",
           "DatasetEntry", "dataset_by_id", "dataset_domain", "dataset_entries", "dataset_id",
           "dataset_id_by_paper_name", "dataset_title", "entry_of", "method_key"]


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset as the leaderboard knows it: its zsbench id, the name papers use, a domain."""

    id: str
    paper_name: str
    title: str
    domain: str  # "industrial" | "medical" | "synthetic"
    order: int = 1000  # position among its domain's columns


# Datasets of the published tables that zsbench has no adapter for: their reported values are
# shown, but no result on them can be reproduced until an adapter exists.
PUBLISHED_ONLY: tuple[DatasetEntry, ...] = (
    DatasetEntry("covid19", "COVID-19", "COVID-19", "medical", order=40),
)


def entry_of(info: DatasetInfo) -> DatasetEntry:
    """The leaderboard entry of an adapter's :class:`DatasetInfo`."""
    return DatasetEntry(info.name, info.published_name, info.display_title, info.domain,
                        info.order)


_cache: dict[str, Any] = {}


def dataset_entries() -> tuple[DatasetEntry, ...]:
    """The leaderboard's datasets in column order (industrial first, then medical): every
    registered real dataset (:func:`zsbench.protocols.real_datasets`: no synthetic demo sets,
    no user folders) plus :data:`PUBLISHED_ONLY`. Rebuilt when the registry changes."""
    from zsbench.protocols import real_datasets
    from zsbench.registry import ADAPTERS

    names = real_datasets()
    key = tuple((name, id(ADAPTERS.get(name))) for name in names)
    if _cache.get("key") != key:
        entries = [entry_of(ADAPTERS.get(name).info) for name in names]
        entries += [e for e in PUBLISHED_ONLY if e.id not in names]
        entries.sort(key=lambda e: display_key(e.domain, e.order, e.id))
        _cache.update(key=key, entries=tuple(entries),
                      by_id={e.id: e for e in entries},
                      by_paper_name={e.paper_name: e.id for e in entries})
    return _cache["entries"]


def dataset_by_id() -> dict[str, DatasetEntry]:
    """:func:`dataset_entries` by zsbench id."""
    dataset_entries()
    return _cache["by_id"]


def dataset_id_by_paper_name() -> dict[str, str]:
    """zsbench id by the name published tables use (``"MVTecAD"`` -> ``"mvtec"``)."""
    dataset_entries()
    return _cache["by_paper_name"]


def __getattr__(name: str) -> Any:
    """``DATASETS``, ``DATASET_BY_ID`` and ``DATASET_ID_BY_PAPER_NAME``, derived on first use
    (importing this module does not import the adapters)."""
    derived = {"DATASETS": dataset_entries, "DATASET_BY_ID": dataset_by_id,
               "DATASET_ID_BY_PAPER_NAME": dataset_id_by_paper_name}
    if name in derived:
        return derived[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# (id, label) of the metric tabs, in display order; values are shown in percent.
METRICS: tuple[tuple[str, str], ...] = (
    ("image_auroc", "Image AUROC"),
    ("image_ap", "Image AP"),
    ("pixel_auroc", "Pixel AUROC"),
    ("aupro", "AUPRO"),
    ("aupro_legacy", "AUPRO (legacy)"),
)
METRIC_IDS: tuple[str, ...] = tuple(m for m, _ in METRICS)

# Methods of the reported tables that use no auxiliary training data (leaderboard/reported
# README: "Training-free methods (CLIP, CLIP-AC, WinCLIP, AnoVL)", and MuSc, Dual-Image CLIP):
# their published values hold whatever the table's protocol says, so they compare with untrained
# runs (method_key form).
TRAINING_FREE_METHODS: frozenset[str] = frozenset({"clip", "clipac", "winclip", "anovl", "musc",
                                                   "dualimageclip"})


def dataset_id(paper_name: str, where: str = "") -> str:
    """The zsbench id of a dataset as papers spell it (``"MVTecAD"`` -> ``"mvtec"``).

    Raises ``ValueError`` naming ``where`` (file/line) and the unknown name."""
    by_paper_name = dataset_id_by_paper_name()
    try:
        return by_paper_name[paper_name]
    except KeyError:
        known = ", ".join(sorted(by_paper_name))
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown dataset name {paper_name!r}; known: {known}") from None


def dataset_domain(dataset: str, declared: str | None = None) -> str:
    """Domain of a dataset id: the catalog's, else ``declared`` (from a result), else synthetic
    for ``synthetic*`` ids, else ``"other"``."""
    entry = dataset_by_id().get(dataset)
    if entry is not None:
        return entry.domain
    if declared:
        return declared
    return "synthetic" if dataset.startswith("synthetic") else "other"


def dataset_title(dataset: str) -> str:
    entry = dataset_by_id().get(dataset)
    return entry.title if entry else dataset


def method_key(name: str) -> str:
    """Name-insensitive key that pairs reported and reproduced rows of one method
    (``"APRIL-GAN"``, ``"april_gan"`` -> ``"aprilgan"``)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())
