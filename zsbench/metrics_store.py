"""Exact category metrics in bounded memory: batches in, metrics out, in memory or out of core.

:class:`CategoryAccumulator` takes a category's images batch by batch as they are inferred and
returns :func:`zsbench.metrics.compute_metrics`'s dict. While the category fits the memory budget
its maps are kept as float32 and ranked in place (:func:`zsbench.metrics.rank_pixels_in_place`);
beyond it every pixel is spilled to disk as an order-preserving uint32 key (anomalous pixels as
``key << 32 | region tag``) and ranked one key range ("bucket") at a time, highest first, by
:class:`PixelStream`, which computes the same metrics from the tied groups of each bucket. Every
pixel metric is a weighted count of the scores above a threshold, so this is exact: counts are
integers and the floating-point sums run in the same order as in memory (AUROC and AP sums are
split per bucket; they agree to ~1e-15).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from zsbench import metrics
from zsbench.metrics import METRIC_NAMES

logger = logging.getLogger(__name__)

_BIN_SHIFT = 16  # buckets are unions of the 65,536 ranges of keys sharing their top 16 bits
_N_BINS = 1 << (32 - _BIN_SHIFT)
_READ_CHUNK = 1 << 21  # keys per read of a spill file
_BASE_BYTES = 384 << 20  # interpreter, libraries, read buffers (about 150 MB measured)
_BYTES_PER_PIXEL = 6  # float32 map + bool mask, ranked in place (6.2 measured with 1 % anomalous)
_BYTES_PER_ANOMALOUS = 44  # packed key|tag + hit-group arrays, in memory or per bucket


def threshold_keys(thresholds: np.ndarray) -> np.ndarray:
    """uint32 keys ``k``: a float32 score is ``<= t`` exactly when its key is ``<= k``."""
    return metrics._order_keys(metrics.round_down_float32(thresholds))


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the system: glibc keeps freed arrays below its mmap
    threshold (tens of MB) resident, which would count against the budget. No-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PixelStream:
    """The pixel metrics of :func:`~zsbench.metrics.compute_metrics` from tied groups fed block by
    block, highest scores first.

    A block covers a key range: every item (pixel) with a key in it belongs to it. :meth:`feed`
    takes its groups of tied anomalous items, ascending: global ``start``/``end`` positions in
    the ascending order of all items, anomalous counts, region weights, uint32 keys; and, for
    each legacy threshold key, the number of the block's items at or below it.
    """

    def __init__(self, n_items: int, n_anomalous: int, n_regions: int, low: np.floating,
                 high: np.floating, steps: int = 200, fpr_limit: float = 0.3) -> None:
        self.n_items, self.n_pos, self.n_regions = n_items, n_anomalous, n_regions
        self.n_neg = n_items - n_anomalous
        self.limit = fpr_limit
        self.anomalous_above, self.weight_above = 0, 0.0
        self.wins, self.ap_sum, self.f1 = 0.0, 0.0, -np.inf
        self.last_point, self.pro_area, self.pro_done = (0.0, 0.0), 0.0, False
        thresholds = (metrics.legacy_thresholds(low, high, steps) if n_items
                      else None)
        self.legacy_keys = (threshold_keys(thresholds) if thresholds is not None
                            else np.zeros(0, dtype=np.uint32))
        self.legacy_defined = thresholds is not None
        self.le_counts = np.zeros(self.legacy_keys.size, dtype=np.int64)
        self.anomalous_le = np.zeros(self.legacy_keys.size, dtype=np.int64)
        self.legacy_pros = np.zeros(self.legacy_keys.size, dtype=np.float64)

    def feed(self, start: np.ndarray, end: np.ndarray, anomalous: np.ndarray, weight: np.ndarray,
             keys: np.ndarray, le_counts: np.ndarray) -> None:
        """Add one block (see the class docstring); blocks come in descending key order."""
        self.le_counts += le_counts
        if anomalous.size == 0:
            return
        pos_from = np.empty(anomalous.size + 1, dtype=np.int64)
        pos_from[-1] = self.anomalous_above
        pos_from[:-1] = np.cumsum(anomalous[::-1])[::-1] + self.anomalous_above
        reversed_weights = np.empty(anomalous.size + 1, dtype=np.float64)
        reversed_weights[0] = self.weight_above
        reversed_weights[1:] = weight[::-1]
        weight_from = np.cumsum(reversed_weights)[::-1]  # same additions, same order as in memory
        n_items, n_pos, n_neg = self.n_items, self.n_pos, self.n_neg
        true_pos = pos_from[:-1].astype(np.float64)
        predicted = (n_items - start).astype(np.float64)
        if n_neg:
            anomalous_below = n_pos - pos_from[:-1]
            normal_below = start - anomalous_below
            normal_tied = (end - start) - anomalous
            self.wins += float(np.dot(anomalous.astype(np.float64),
                                      normal_below + 0.5 * normal_tied))
            if self.n_regions and not self.pro_done:
                self._pro_block(start, end, pos_from, weight_from)
        self.ap_sum += float(np.dot(anomalous, true_pos / predicted))
        self.f1 = max(self.f1, float(np.max(2.0 * true_pos / (predicted + n_pos))))
        if self.legacy_keys.size:
            at = np.searchsorted(keys, self.legacy_keys, side="right")
            self.anomalous_le += np.concatenate(([0], np.cumsum(anomalous)))[at]
            above = at < keys.size
            self.legacy_pros[above] = weight_from[at[above]]
        self.anomalous_above = int(pos_from[0])
        self.weight_above = float(weight_from[0])

    def _pro_block(self, start: np.ndarray, end: np.ndarray, pos_from: np.ndarray,
                   weight_from: np.ndarray) -> None:
        n_items, n_neg, n = self.n_items, self.n_neg, start.size
        fpr = np.empty(2 * n + 1)
        pro = np.empty(2 * n + 1)
        fpr[0], pro[0] = self.last_point
        fpr[1::2] = ((n_items - end - pos_from[1:]) / n_neg)[::-1]
        fpr[2::2] = ((n_items - start - pos_from[:-1]) / n_neg)[::-1]
        pro[1::2], pro[2::2] = weight_from[1:][::-1], weight_from[:-1][::-1]
        np.minimum(pro, 1.0, out=pro)
        self._integrate(fpr, pro)

    def _integrate(self, fpr: np.ndarray, pro: np.ndarray) -> None:
        """Add the area under the curve through ``fpr``/``pro`` (starting at the last point)."""
        limit = self.limit
        inside = int(np.searchsorted(fpr, limit, side="right"))
        self.pro_area += float(np.trapezoid(pro[:inside], fpr[:inside]))
        if inside < fpr.size:
            x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
            pro_at_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            self.pro_area += (limit - x0) * (y0 + pro_at_limit) / 2.0
            self.pro_done = True
        else:
            self.last_point = (float(fpr[-1]), float(pro[-1]))

    def result(self) -> dict[str, float | None]:
        """The five pixel metrics (None where undefined, as :func:`compute_metrics`)."""
        n_pos, n_neg, limit = self.n_pos, self.n_neg, self.limit
        both = n_pos > 0 and n_neg > 0
        out: dict[str, float | None] = {
            "pixel_auroc": float(self.wins / (float(n_pos) * float(n_neg))) if both else None,
            "pixel_ap": float(self.ap_sum / n_pos) if n_pos else None,
            "pixel_f1_max": self.f1 if n_pos else None,
            "aupro": None, "aupro_legacy": None}
        if self.n_regions == 0 or n_neg == 0:
            return out
        if not self.pro_done:
            self._integrate(np.array([self.last_point[0], 1.0]),
                            np.array([self.last_point[1], 1.0]))
        out["aupro"] = float(min(max(self.pro_area / limit, 0.0), 1.0))
        if self.legacy_defined:
            n_above = self.n_items - self.le_counts
            fprs = (n_above - (n_pos - self.anomalous_le)) / n_neg
            out["aupro_legacy"] = metrics.legacy_area(fprs, np.minimum(self.legacy_pros, 1.0),
                                                      limit)
        return out


def _bucket_bounds(cost: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive bin ranges ``[lo, hi)`` whose summed ``cost`` stays within ``budget``."""
    bounds: list[tuple[int, int]] = []
    lo, total = 0, 0
    for hi in np.flatnonzero(cost).tolist():
        if total and total + int(cost[hi]) > budget:
            bounds.append((lo, hi))
            lo, total = hi, 0
        total += int(cost[hi])
        if int(cost[hi]) > budget:
            logger.warning("one key range of %d bytes exceeds the %d-byte metrics budget (scores "
                           "concentrated on a few values); ranking it in memory", cost[hi], budget)
    bounds.append((lo, _N_BINS))
    return bounds


class _SpillStore:
    """Pixels of a category on disk: keys of normal pixels (uint32) and ``key << 32 | tag`` of
    anomalous ones (uint64), with per-bin counts and the region areas."""

    def __init__(self, spill_dir: str | Path | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="zsbench-metrics-", dir=spill_dir))
        self.normal_path, self.anomalous_path = self.dir / "normal.u32", self.dir / "anomalous.u64"
        self.normal_file = self.normal_path.open("wb")
        self.anomalous_file = self.anomalous_path.open("wb")
        self.normal_hist = np.zeros(_N_BINS, dtype=np.int64)
        self.anomalous_hist = np.zeros(_N_BINS, dtype=np.int64)
        self.areas: list[np.ndarray] = []
        self.n_regions = 0
        self.min_key, self.max_key = np.uint32(0xFFFF_FFFF), np.uint32(0)
        self.n_buckets = 0

    def add(self, masks: np.ndarray, maps: np.ndarray, first_index: int) -> None:
        for offset, (mask, image) in enumerate(zip(masks, maps, strict=True)):
            metrics._check_finite_image(image, first_index + offset)
            keys = metrics._order_keys(image.ravel())
            if keys.size:
                self.min_key, self.max_key = min(self.min_key, keys.min()), max(self.max_key,
                                                                              keys.max())
            if not mask.any():
                self._write_normal(keys)
                continue
            labels, count = metrics._label_mask(mask)
            tags = labels.ravel().astype(np.uint32)
            self.areas.append(np.bincount(tags, minlength=count + 1)[1:].astype(np.int64))
            anomalous = tags > 0
            self._write_normal(keys[~anomalous])
            packed = keys[anomalous].astype(np.uint64) << np.uint64(32)
            packed |= tags[anomalous] + np.uint64(self.n_regions)
            self.n_regions += count
            self.anomalous_hist += np.bincount(packed >> np.uint64(32 + _BIN_SHIFT),
                                               minlength=_N_BINS)
            packed.tofile(self.anomalous_file)

    def _write_normal(self, keys: np.ndarray) -> None:
        self.normal_hist += np.bincount(keys >> np.uint32(_BIN_SHIFT), minlength=_N_BINS)
        keys.tofile(self.normal_file)

    def _read_range(self, path: Path, dtype: type, shift: int, hist: np.ndarray, lo: int,
                    hi: int) -> np.ndarray:
        """All items of a spill file whose bin is in ``[lo, hi)`` (one sequential read)."""
        out = np.empty(int(hist[lo:hi].sum()), dtype=dtype)
        # fixed buffers: per-chunk temporaries would fragment the heap and stay resident
        buffer, bins = np.empty(_READ_CHUNK, dtype=dtype), np.empty(_READ_CHUNK, dtype=dtype)
        chosen, below = np.empty(_READ_CHUNK, dtype=bool), np.empty(_READ_CHUNK, dtype=bool)
        filled = 0
        with path.open("rb") as handle:
            while n_bytes := handle.readinto(buffer.view(np.uint8)):
                n = n_bytes // buffer.itemsize
                np.right_shift(buffer[:n], dtype(shift), out=bins[:n])
                np.greater_equal(bins[:n], lo, out=chosen[:n])
                np.less(bins[:n], hi, out=below[:n])
                chosen[:n] &= below[:n]
                count = int(np.count_nonzero(chosen[:n]))
                np.compress(chosen[:n], buffer[:n], out=out[filled:filled + count])
                filled += count
        if filled != out.size:
            raise RuntimeError(f"spill file {path} changed while ranking: expected {out.size} "
                               f"items in key bins [{lo}, {hi}), read {filled}")
        return out

    def metrics(self, budget: int, steps: int = 200) -> dict[str, float | None]:
        """Rank the spilled pixels bucket by bucket (each within ``budget`` bytes)."""
        self.normal_file.close()
        self.anomalous_file.close()
        tag_weights, n_regions = metrics._region_weights(self.areas)
        n_normal, n_anomalous = int(self.normal_hist.sum()), int(self.anomalous_hist.sum())
        n_items = n_normal + n_anomalous
        low, high = metrics._scores_from_keys(np.array([self.min_key, self.max_key],
                                                       dtype=np.uint32))
        stream = PixelStream(n_items, n_anomalous, n_regions, low, high, steps)
        cost = 4 * self.normal_hist + _BYTES_PER_ANOMALOUS * self.anomalous_hist
        below = np.concatenate(([0], np.cumsum(self.normal_hist + self.anomalous_hist)))
        bounds = _bucket_bounds(cost, budget)
        self.n_buckets = len(bounds)
        logger.info("out-of-core metrics: %d pixels in %d key buckets", n_items, len(bounds))
        for lo, hi in reversed(bounds):
            _release_freed_memory()
            normal = self._read_range(self.normal_path, np.uint32, _BIN_SHIFT,
                                      self.normal_hist, lo, hi)
            normal.sort()
            packed = self._read_range(self.anomalous_path, np.uint64, 32 + _BIN_SHIFT,
                                      self.anomalous_hist, lo, hi)
            packed.sort()
            halves = packed.view(np.uint32).reshape(-1, 2)
            anomalous_keys = np.ascontiguousarray(halves[:, metrics._HIGH])
            start, end, counts, weight, keys = metrics._hit_groups(
                normal, anomalous_keys, halves[:, metrics._LOW], tag_weights)
            del packed, halves
            before = np.cumsum(counts) - counts  # anomalous items of the bucket below each group
            offset = int(below[lo])
            le_counts = (np.searchsorted(normal, stream.legacy_keys, side="right")
                         + np.searchsorted(anomalous_keys, stream.legacy_keys, side="right"))
            del normal, anomalous_keys
            stream.feed(start + before + offset, end + before + counts + offset, counts, weight,
                        keys, le_counts)
            del start, end, counts, weight, keys, before
        return stream.result()

    def close(self) -> None:
        for handle in (self.normal_file, self.anomalous_file):
            handle.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class CategoryAccumulator:
    """One category's metrics from batches appended as they are inferred, within a memory budget.

    Usage::

        acc = CategoryAccumulator(max_memory=4 << 30)       # bytes; None: no limit
        for batch in category:
            acc.append(labels, scores, masks, maps)         # [B], [B], [B, H, W], [B, H, W]
        values = acc.finish()                               # compute_metrics' dict

    ``masks``/``maps`` are given for every batch or for none (then the pixel metrics are None);
    ``masks`` are bool or 0/1, ``maps`` float32 (float16 is widened exactly; float64 and torch
    tensors are converted to float32 numpy arrays, as the evaluator stores them). The arrays are
    copied, so the caller may reuse its buffers. The category stays in memory (float32 maps ranked
    in place, about 6 bytes per pixel plus 44 per anomalous pixel, plus 384 MiB for the
    interpreter and buffers) while that estimate fits ``max_memory``; past it (or from the first
    batch when ``expected_images`` announces a category that will not fit), everything is spilled
    to a temporary folder under ``spill_dir`` and ranked out of core, exactly, in key buckets
    sized to ``max_memory`` (the disk then holds 4 bytes per normal and 8 per anomalous pixel).
    ``finish`` removes the folder; call :meth:`close` instead to abandon a category. ``spilled``
    tells which path ran. ``max_memory`` bounds the metrics' arrays, not the caller's (model...).
    """

    def __init__(self, max_memory: int | None = None, spill_dir: str | Path | None = None,
                 steps: int = 200, expected_images: int | None = None) -> None:
        if max_memory is not None and (isinstance(max_memory, bool)
                                       or int(max_memory) <= _BASE_BYTES):
            raise ValueError(f"max_memory must be more than {_BASE_BYTES} bytes (the fixed "
                             f"overhead); got {max_memory!r}")
        self.max_memory = None if max_memory is None else int(max_memory)
        self.spill_dir, self.steps, self.expected_images = spill_dir, steps, expected_images
        self.labels: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []
        self.with_maps: bool | None = None
        self.image_shape: tuple[int, ...] | None = None
        self.n_images, self.n_pixels, self.n_anomalous, self.n_images_with_maps = 0, 0, 0, 0
        self.store: _SpillStore | None = None

    @property
    def spilled(self) -> bool:
        return self.store is not None

    @property
    def n_buckets(self) -> int:
        """Key buckets ranked out of core (after :meth:`finish`; 0 in memory)."""
        return self.store.n_buckets if self.store is not None else 0

    def _estimate(self) -> int:
        return (_BASE_BYTES + _BYTES_PER_PIXEL * self.n_pixels
                + _BYTES_PER_ANOMALOUS * self.n_anomalous)

    def _projected(self) -> int:
        """The estimate for ``expected_images`` images like those seen so far (0 if unknown)."""
        if not self.expected_images or not self.n_images_with_maps:
            return 0
        return int(_BASE_BYTES + (self._estimate() - _BASE_BYTES) * self.expected_images
                   / self.n_images_with_maps)

    def append(self, labels: ArrayLike, scores: ArrayLike, masks: Any = None,
               maps: Any = None) -> None:
        """Add a batch of images (see the class docstring)."""
        labels_a, scores_a = np.asarray(labels).reshape(-1), np.asarray(scores).reshape(-1)
        if labels_a.shape != scores_a.shape:
            raise ValueError(f"labels and scores must have equal length; got {labels_a.shape} "
                             f"and {scores_a.shape}")
        with_maps = masks is not None
        if with_maps and maps is None:
            raise ValueError("maps is None but masks were given; pass the anomaly maps too")
        if self.with_maps is not None and with_maps != self.with_maps:
            raise ValueError("masks/maps must be given for every batch of a category or for none")
        self.with_maps = with_maps
        self.labels.append(labels_a.copy())
        self.scores.append(scores_a.copy())
        if with_maps:
            masks_b, maps_f = _batch_arrays(masks, maps, labels_a.size)
            if self.image_shape is not None and maps_f.shape[1:] != self.image_shape:
                raise ValueError(f"maps of one category must share one size; got "
                                 f"{maps_f.shape[1:]} after {self.image_shape}")
            self.image_shape = maps_f.shape[1:]
            self.n_pixels += maps_f.size
            self.n_images_with_maps += len(maps_f)
            self.n_anomalous += int(np.count_nonzero(masks_b))
            if self.store is None and self.max_memory is not None and (
                    self._estimate() > self.max_memory or self._projected() > self.max_memory):
                self._spill()
            if self.store is not None:
                self.store.add(masks_b, maps_f, self.n_images)
            else:
                self.masks.append(masks_b)
                self.maps.append(maps_f)
        self.n_images += labels_a.size

    def _spill(self) -> None:
        logger.info("category exceeds the metrics budget (%d bytes): ranking out of core",
                    self.max_memory)
        self.store = _SpillStore(self.spill_dir)
        first = 0
        while self.maps:
            masks, maps = self.masks.pop(0), self.maps.pop(0)
            self.store.add(masks, maps, first)
            first += len(maps)
            del masks, maps
        _release_freed_memory()

    def finish(self) -> dict[str, float | None]:
        """All :data:`~zsbench.metrics.METRIC_NAMES` of the category."""
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=bool)
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        if self.store is not None:
            try:
                result = metrics.compute_metrics(labels, scores)
                budget = self.max_memory - _BASE_BYTES if self.max_memory else 1 << 62
                result.update(self.store.metrics(budget, self.steps))
                return {name: result[name] for name in METRIC_NAMES}
            finally:
                self.store.close()
        if not self.with_maps:
            return metrics.compute_metrics(labels, scores)
        shape = (self.n_images, *(self.image_shape or (0, 0)))
        maps = np.empty(shape, dtype=np.float32)
        masks = np.empty(shape, dtype=bool)
        row = 0
        while self.maps:
            batch_maps, batch_masks = self.maps.pop(0), self.masks.pop(0)
            maps[row:row + len(batch_maps)] = batch_maps
            masks[row:row + len(batch_maps)] = batch_masks
            row += len(batch_maps)
            del batch_maps, batch_masks
            _release_freed_memory()  # so that the batches and the full arrays never coexist
        return metrics.compute_metrics(labels, scores, masks, maps, consume=True)

    def close(self) -> None:
        """Drop what was accumulated (and any spill folder)."""
        if self.store is not None:
            self.store.close()
        self.labels, self.scores, self.masks, self.maps = [], [], [], []


def _batch_arrays(masks: Any, maps: Any, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's masks as bool and maps as float32 numpy copies, checked."""
    if hasattr(maps, "detach"):  # torch tensor
        maps = maps.detach().float().cpu().numpy()
    if hasattr(masks, "detach"):
        masks = masks.detach().cpu().numpy()
    masks_b = metrics._as_binary(masks, "masks")
    maps_a = np.asarray(maps)
    if maps_a.dtype == bool or not (np.issubdtype(maps_a.dtype, np.floating)
                                    or np.issubdtype(maps_a.dtype, np.integer)):
        raise TypeError(f"maps must be real numbers, got dtype {maps_a.dtype}")
    maps_f = np.array(maps_a, dtype=np.float32, order="C")
    if masks_b.ndim != 3 or masks_b.shape != maps_f.shape or len(maps_f) != n_images:
        raise ValueError(f"masks and maps must both be [B, H, W] for the {n_images} images of the "
                         f"batch; got {masks_b.shape} and {maps_f.shape}")
    return np.array(masks_b, dtype=bool, order="C"), maps_f
