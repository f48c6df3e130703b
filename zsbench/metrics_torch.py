"""The single-sort pixel metrics with the sort on the maps' torch device (CUDA or CPU).

For maps that are already on a GPU: the pixels are sorted and grouped on the device, and only
the groups of tied anomalous scores (and 200 legacy counts) come back to the host, where
:class:`zsbench.metrics_store.PixelStream` turns them into the metrics in float64. Regions are
labelled on the host (scipy) from the masks. Equal to :func:`zsbench.metrics.compute_metrics`
to ~1e-15 (CUDA sums the region weights of tied pixels in an unspecified order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from zsbench import metrics
from zsbench.metrics_store import PixelStream


def _host(values: Any) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _anomalous_regions(masks_b: np.ndarray, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, int]:
    """Flat positions and region tags of the anomalous pixels (on ``device``), the regions'
    weights and their number (8-connected regions per image, labelled on the host)."""
    per_image = int(np.prod(masks_b.shape[1:])) if masks_b.ndim == 3 else 0
    positions, tags, areas, n_regions = [], [], [], 0
    for index, mask in enumerate(masks_b):
        if not mask.any():
            continue
        labels, count = metrics._label_mask(mask)
        flat_labels = labels.ravel()
        where = np.flatnonzero(flat_labels)
        positions.append(where + index * per_image)
        tags.append(flat_labels[where].astype(np.int64) + n_regions)
        areas.append(np.bincount(flat_labels, minlength=count + 1)[1:].astype(np.int64))
        n_regions += count
    tag_weights, n_regions = metrics._region_weights(areas)
    position_t = torch.from_numpy(np.concatenate([np.zeros(0, np.int64), *positions])).to(device)
    tag_t = torch.from_numpy(np.concatenate([np.zeros(0, np.int64), *tags])).to(device)
    return position_t, tag_t, tag_weights, n_regions


def pixel_metrics_torch(masks: Any, maps: torch.Tensor, steps: int = 200,
                        fpr_limit: float = 0.3) -> dict[str, float | None]:
    """pixel_auroc, pixel_ap, pixel_f1_max, aupro and aupro_legacy of float16/float32 ``maps``
    ``[N, H, W]`` (a torch tensor, sorted on its device) against ``masks`` (tensor or array)."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a torch tensor; got {type(maps).__name__}")
    if maps.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"maps must be float16, bfloat16 or float32; got {maps.dtype}")
    masks_b = metrics._as_binary(_host(masks), "masks")
    if masks_b.ndim != 3 or masks_b.shape != tuple(maps.shape):
        raise ValueError(f"masks and maps must both be [N, H, W] of the same shape; got "
                         f"{masks_b.shape} and {tuple(maps.shape)}")
    device = maps.device
    flat = maps.reshape(-1).float() + 0.0  # a new tensor; -0.0 becomes +0.0 (they tie)
    finite = torch.isfinite(flat)
    if not bool(finite.all()):
        where = int(torch.nonzero(~finite)[0])
        raise ValueError(f"maps must be finite; found {float(flat[where])!r} at flat index "
                         f"{where}")
    del finite
    position_t, tag_t, tag_weights, n_regions = _anomalous_regions(masks_b, device)
    n_items, n_anomalous = flat.numel(), int(position_t.numel())

    sorted_all = torch.sort(flat).values
    del flat
    low, high = (np.float32(sorted_all[0].item()), np.float32(sorted_all[-1].item())) \
        if n_items else (np.float32(0), np.float32(0))
    stream = PixelStream(n_items, n_anomalous, n_regions, low, high, steps, fpr_limit)
    thresholds = torch.from_numpy(metrics._scores_from_keys(stream.legacy_keys)).to(device)
    le_counts = torch.searchsorted(sorted_all, thresholds, right=True).cpu().numpy()

    # anomalous pixels ordered by (score, region tag), as the numpy reference's packed sort
    anomalous = sorted_all.new_empty(0)
    if n_anomalous:
        anomalous = maps.reshape(-1).float()[position_t] + 0.0
        by_tag = torch.argsort(tag_t, stable=True)
        anomalous, tag_t = anomalous[by_tag], tag_t[by_tag]
        by_score = torch.argsort(anomalous, stable=True)
        anomalous, tag_t = anomalous[by_score], tag_t[by_score]
    values, counts = torch.unique_consecutive(anomalous, return_counts=True)
    group = torch.repeat_interleave(torch.arange(values.numel(), device=device), counts)
    weights = torch.from_numpy(tag_weights).to(device)[tag_t]
    hit_weight = torch.zeros(values.numel(), dtype=torch.float64, device=device)
    hit_weight.index_add_(0, group, weights)
    start = torch.searchsorted(sorted_all, values, right=False)
    end = torch.searchsorted(sorted_all, values, right=True)
    values_host = values.cpu().numpy().astype(np.float32)
    stream.feed(start.cpu().numpy().astype(np.int64), end.cpu().numpy().astype(np.int64),
                counts.cpu().numpy().astype(np.int64), hit_weight.cpu().numpy(),
                metrics._order_keys(values_host), le_counts.astype(np.int64))
    return stream.result()


def compute_metrics_torch(labels: Any, scores: Any, masks: Any = None,
                          maps: torch.Tensor | None = None) -> dict[str, float | None]:
    """:func:`zsbench.metrics.compute_metrics` with the pixel sort on ``maps``' device."""
    result = metrics.compute_metrics(_host(labels), _host(scores))
    if masks is None:
        return result
    if maps is None:
        raise ValueError("maps is None but masks were given; pass the anomaly maps too")
    n_images = len(_host(labels))
    if tuple(masks.shape)[:1] != (n_images,):
        raise ValueError(f"masks has shape {tuple(masks.shape)}; expected [{n_images}, H, W] to "
                         f"match the {n_images} labels")
    result.update(pixel_metrics_torch(masks, maps))
    return result
