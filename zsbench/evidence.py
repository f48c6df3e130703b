"""What an evaluation keeps beyond its metrics: bootstrap intervals, stored maps, overlays.

The evaluator hands each finished category to an :class:`EvidenceCollector`; it bootstraps the
category (``--bootstrap N``: :mod:`zsbench.bootstrap`), writes its scores and maps to a map store
(``--save-maps all``: :mod:`zsbench.map_store`), and keeps the few images whose overlays are
saved. The overlays are drawn at the end, all on one colour scale: the dataset's min and max map
value (a per-image scale would make every image look anomalous).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsbench.bootstrap import CategoryData, CategoryReplicates, category_replicates, combine
from zsbench.map_store import write_category
from zsbench.overlays import save_overlay_image

_LOCK = threading.Lock()  # guards collectors' shared state (the store manifest too)


@dataclass
class EvidenceSettings:
    """What to keep of an evaluation besides its metrics."""

    bootstrap: int = 0  # replicates (0: no intervals)
    bootstrap_seed: int = 0
    store: Path | None = None  # map store folder (--save-maps all)
    store_precision: str = "uint16"
    identity_key: str = "0" * 16  # the result the store belongs to


@dataclass
class _Sample:
    category: str
    image: Any  # preprocessed [3, S, S] tensor
    mask: np.ndarray
    anomaly_map: np.ndarray


@dataclass
class EvidenceCollector:
    """Collects evidence category by category (see the module docstring)."""

    settings: EvidenceSettings
    replicates: dict[str, CategoryReplicates] = field(default_factory=dict)
    exact: dict[str, dict[str, float | None]] = field(default_factory=dict)
    samples: list[_Sample] = field(default_factory=list)
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, category: str, labels: np.ndarray, scores: np.ndarray,
            masks: np.ndarray | None, maps: np.ndarray | None, image_ids: list[str],
            metrics: dict[str, float | None] | None,
            samples: list[tuple[Any, np.ndarray, np.ndarray]],
            bounds: tuple[float, float] | None) -> None:
        """One finished category: its data (``masks``/``maps`` may be None when the maps were
        streamed to the metrics), its overlay ``samples`` (input image, mask row, map row) and
        the ``bounds`` (min, max) of its maps."""
        data = CategoryData(labels=np.asarray(labels), scores=np.asarray(scores), masks=masks,
                            maps=maps, image_ids=image_ids)
        replicates = (category_replicates(category, data, self.settings.bootstrap,
                                          self.settings.bootstrap_seed, exact=metrics)
                      if self.settings.bootstrap > 0 else None)
        kept = [_Sample(category, image, mask, anomaly_map)
                for image, mask, anomaly_map in samples]
        with _LOCK:  # categories may finish in several threads at once
            if self.settings.store is not None:
                write_category(self.settings.store, category, data,
                               self.settings.identity_key, self.settings.store_precision)
            if replicates is not None:
                self.replicates[category], self.exact[category] = replicates, metrics
            self.samples += kept
            if bounds is not None:
                self.low, self.high = min(self.low, bounds[0]), max(self.high, bounds[1])

    @classmethod
    def combined(cls, parts: list[EvidenceCollector]) -> EvidenceCollector:
        """One collector holding what several ranks collected (distributed evaluation by
        category); each part is taken once, whichever rank it comes from."""
        out = cls(parts[0].settings)
        for part in parts:
            out.replicates.update(part.replicates)
            out.exact.update(part.exact)
            out.samples += part.samples
            out.low, out.high = min(out.low, part.low), max(out.high, part.high)
        return out

    def bootstrap_result(self, order: list[str]) -> dict[str, Any] | None:
        """The intervals of every metric (JSON-ready), or None without ``--bootstrap``."""
        if not self.replicates:
            return None
        ordered = {c: self.replicates[c] for c in order if c in self.replicates}
        result = combine(ordered, {c: self.exact[c] for c in ordered},
                         self.settings.bootstrap, self.settings.bootstrap_seed)
        return result.to_dict()

    def write_overlays(self, folder: Path, backbone: Any, resolution: int
                       ) -> tuple[list[Path], dict[str, float] | None]:
        """The overlay PNGs, all on the dataset's colour scale, and that scale."""
        if not self.samples:
            return [], None
        paths, numbers = [], {}
        for sample in sorted(self.samples, key=lambda s: s.category):
            number = numbers.get(sample.category, 0)
            numbers[sample.category] = number + 1
            paths.append(save_overlay_image(
                folder / f"{sample.category}_{number:03d}.png", sample.image, sample.mask,
                sample.anomaly_map, backbone, resolution, self.low, self.high))
        return paths, {"low": self.low, "high": self.high}
