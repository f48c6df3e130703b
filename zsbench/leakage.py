"""The leakage ledger: is a result really zero-shot?

Every result records the auxiliary data that trained the method (datasets with their
categories and splits), the data used to pick its checkpoint, and the target. A result is
flagged **not zero-shot** when the target dataset is among them, or when a target category
has the same (normalised) name as one of theirs -- e.g. a checkpoint trained on MVTec AD and
evaluated on MVTec AD 2 categories of the same names. This is MTEB's zero-shot check applied to
anomaly detection: ``mvtec -> mvtec`` is flagged, ``visa -> mvtec`` is not (no shared names).
Protocols already refuse train == target; the ledger also covers shared categories across
datasets and checkpoints imported with their own training data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ROLES = ("train", "checkpoint_selection")


def normalise_name(name: str) -> str:
    """Lower case, runs of spaces/hyphens/underscores -> one underscore (``Metal-Nut`` ->
    ``metal_nut``)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset and category names must be non-empty strings; got {name!r}")
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


@dataclass(frozen=True)
class DataUse:
    """Data a method saw: ``dataset``, its ``categories`` (None: all of them), ``split`` and
    ``role`` (``train`` or ``checkpoint_selection``)."""

    dataset: str
    categories: tuple[str, ...] | None = None
    split: str = "test"
    role: str = "train"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}; got {self.role!r}")
        normalise_name(self.dataset)
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))
            for category in self.categories:
                normalise_name(category)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "categories": None if self.categories is None
                else list(self.categories), "split": self.split, "role": self.role}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> DataUse:
        unknown = set(value) - {"dataset", "categories", "split", "role"}
        if unknown or "dataset" not in value:
            raise ValueError(f"a data-use record needs 'dataset' and may have 'categories', "
                             f"'split', 'role'; got keys {sorted(value)}")
        categories = value.get("categories")
        return cls(dataset=value["dataset"],
                   categories=None if categories is None else tuple(categories),
                   split=value.get("split", "test"), role=value.get("role", "train"))


@dataclass
class LeakageReport:
    """The ledger of one result: ``zero_shot`` is False when any flag was raised."""

    target_dataset: str
    target_categories: tuple[str, ...]
    uses: tuple[DataUse, ...]
    flags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def zero_shot(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        return {"zero_shot": self.zero_shot,
                "label": "zero-shot" if self.zero_shot else "not zero-shot",
                "target": {"dataset": self.target_dataset,
                           "categories": list(self.target_categories)},
                "auxiliary": [use.to_dict() for use in self.uses if use.role == "train"],
                "checkpoint_selection": [use.to_dict() for use in self.uses
                                         if use.role == "checkpoint_selection"],
                "flags": self.flags}


def leakage_ledger(target_dataset: str, target_categories: Iterable[str],
                   auxiliary: Sequence[DataUse] = (),
                   checkpoint_selection: Sequence[DataUse] = (),
                   known_categories: Mapping[str, Sequence[str]] | None = None) -> LeakageReport:
    """Check a target against the data a method was trained on and selected with.

    A ``DataUse`` with ``categories=None`` means every category of its dataset; when
    ``known_categories`` (dataset -> categories) lists them, they are compared by name too.
    Flags: ``same_dataset`` (the target dataset was used) and ``shared_category`` (a target
    category name appears in the used data). ``checkpoint_selection`` uses get role
    ``checkpoint_selection`` whatever they say."""
    target = normalise_name(target_dataset)
    targets = tuple(target_categories)
    target_names = {normalise_name(name): name for name in targets}
    known = {normalise_name(k): list(v) for k, v in (known_categories or {}).items()}
    uses = tuple(auxiliary) + tuple(DataUse(use.dataset, use.categories, use.split,
                                            "checkpoint_selection")
                                    for use in checkpoint_selection)
    report = LeakageReport(target_dataset, targets, uses)
    for use in uses:
        dataset = normalise_name(use.dataset)
        if dataset == target:
            report.flags.append({"kind": "same_dataset", "role": use.role,
                                 "dataset": use.dataset, "split": use.split})
        categories = use.categories if use.categories is not None else known.get(dataset, ())
        shared = sorted({target_names[normalise_name(c)] for c in categories
                         if normalise_name(c) in target_names})
        if shared and dataset != target:
            report.flags.append({"kind": "shared_category", "role": use.role,
                                 "dataset": use.dataset, "split": use.split,
                                 "categories": shared})
    return report
