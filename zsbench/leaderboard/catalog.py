"""Names the leaderboard shows: dataset ids, titles, domains and order; metric ids and labels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset as the leaderboard knows it: its zsbench id, the name papers use, a domain."""

    id: str
    paper_name: str
    title: str
    domain: str  # "industrial" | "medical" | "synthetic"


# Column order of the leaderboard: industrial first, then medical.
DATASETS: tuple[DatasetEntry, ...] = (
    DatasetEntry("mvtec", "MVTecAD", "MVTec AD", "industrial"),
    DatasetEntry("visa", "VisA", "VisA", "industrial"),
    DatasetEntry("mpdd", "MPDD", "MPDD", "industrial"),
    DatasetEntry("btad", "BTAD", "BTAD", "industrial"),
    DatasetEntry("sdd", "SDD", "KSDD", "industrial"),
    DatasetEntry("aitex", "AITEX", "AITEX", "industrial"),
    DatasetEntry("dagm", "DAGM", "DAGM", "industrial"),
    DatasetEntry("dtd_synthetic", "DTD-Synthetic", "DTD-Synthetic", "industrial"),
    DatasetEntry("elpv", "ELPV", "ELPV", "industrial"),
    DatasetEntry("sd_saliency_900", "SD-saliency-900", "SD-Saliency-900", "industrial"),
    DatasetEntry("rsdds", "RSDDs", "RSDDs", "industrial"),
    DatasetEntry("headct", "HeadCT", "HeadCT", "medical"),
    DatasetEntry("brainmri", "BrainMRI", "BrainMRI", "medical"),
    DatasetEntry("br35h", "Br35H", "Br35H", "medical"),
    DatasetEntry("covid19", "COVID-19", "COVID-19", "medical"),
    DatasetEntry("lag", "LAG", "LAG", "medical"),
    DatasetEntry("isic", "ISIC", "ISIC", "medical"),
    DatasetEntry("cvc_colondb", "CVC-ColonDB", "CVC-ColonDB", "medical"),
    DatasetEntry("cvc_clinicdb", "CVC-ClinicDB", "CVC-ClinicDB", "medical"),
    DatasetEntry("kvasir", "Kvasir", "Kvasir", "medical"),
    DatasetEntry("endo", "Endo", "Endo", "medical"),
    DatasetEntry("tn3k", "TN3K", "TN3K", "medical"),
    DatasetEntry("msd", "MSD", "MSD (lung)", "medical"),
)

DATASET_BY_ID: dict[str, DatasetEntry] = {d.id: d for d in DATASETS}
DATASET_ID_BY_PAPER_NAME: dict[str, str] = {d.paper_name: d.id for d in DATASETS}
DOMAINS: tuple[str, ...] = ("industrial", "medical", "synthetic")

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
# README: "Training-free methods (CLIP, CLIP-AC, WinCLIP, AnoVL)"): their published values
# hold whatever the table's protocol says, so they compare with untrained runs (method_key form).
TRAINING_FREE_METHODS: frozenset[str] = frozenset({"clip", "clipac", "winclip", "anovl"})


def dataset_id(paper_name: str, where: str = "") -> str:
    """The zsbench id of a dataset as papers spell it (``"MVTecAD"`` -> ``"mvtec"``).

    Raises ``ValueError`` naming ``where`` (file/line) and the unknown name."""
    try:
        return DATASET_ID_BY_PAPER_NAME[paper_name]
    except KeyError:
        known = ", ".join(sorted(DATASET_ID_BY_PAPER_NAME))
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown dataset name {paper_name!r}; known: {known}") from None


def dataset_domain(dataset: str, declared: str | None = None) -> str:
    """Domain of a dataset id: the catalog's, else ``declared`` (from a result), else synthetic
    for ``synthetic*`` ids, else ``"other"``."""
    if dataset in DATASET_BY_ID:
        return DATASET_BY_ID[dataset].domain
    if declared:
        return declared
    return "synthetic" if dataset.startswith("synthetic") else "other"


def dataset_title(dataset: str) -> str:
    entry = DATASET_BY_ID.get(dataset)
    return entry.title if entry else dataset


def method_key(name: str) -> str:
    """Name-insensitive key that pairs reported and reproduced rows of one method
    (``"APRIL-GAN"``, ``"april_gan"`` -> ``"aprilgan"``)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())
