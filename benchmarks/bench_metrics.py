"""Time zsbench.metrics against the plain loops and scikit-learn calls they replace.

Builds ``--n`` seeded maps of ``--size`` x ``--size`` pixels with blob-shaped masks (half of the
images normal) and prints, from one run, time and value of:
  * ``aupro`` and ``aupro_legacy`` next to a plain loop of the cflow-ad routine (regions labelled at
    each of the ``--steps`` thresholds, as upstream does);
  * ``pixel_auroc`` + ``pixel_ap`` next to ``sklearn.metrics.roc_auc_score`` +
    ``average_precision_score``;
  * ``compute_metrics`` (all 8), by default and with ``consume=True`` (ranked in the maps' buffer).
Targets (2 cores, 200 x 518 x 518): aupro < 20 s and >= 10x the loop; aupro_legacy >= 10x the loop;
pixel_auroc + pixel_ap no slower than sklearn.

    python benchmarks/bench_metrics.py [--n 200 --size 518 --steps 200 --seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from zsbench import metrics


def make_category(n_images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded bool masks and float32 maps [n, size, size]; odd-indexed images are anomalous."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    maps = np.empty((n_images, size, size), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for index in range(n_images):
        if index % 2:
            for _ in range(rng.integers(1, 5)):
                cy, cx = rng.uniform(0.1, 0.9, size=2) * size
                ry, rx = rng.uniform(0.02, 0.08, size=2) * size
                masks[index] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=4.0) * 4.0
        signal = ndimage.gaussian_filter(masks[index].astype(np.float64), sigma=6.0) * 1.5
        maps[index] = noise + signal
    return masks, maps


def legacy_loop(masks: np.ndarray, maps: np.ndarray, steps: int = 200,
                fpr_limit: float = 0.3) -> float:
    """The cflow-ad AUPRO evaluated threshold by threshold, labelling regions at each one."""
    low, high = maps.min(), maps.max()
    delta = (high - low) / steps
    normal_pixels = np.logical_not(masks)
    n_normal = normal_pixels.sum()
    fprs, pros = [], []
    for threshold in np.arange(low, high, delta):
        above = maps > threshold
        recalls = []
        for image_above, mask in zip(above, masks, strict=True):
            for region in measure.regionprops(measure.label(mask)):
                rows, cols = region.coords[:, 0], region.coords[:, 1]
                recalls.append(image_above[rows, cols].sum() / region.area)
        pros.append(np.mean(recalls))
        fprs.append(np.logical_and(normal_pixels, above).sum() / n_normal)
    fprs_a, pros_a = np.array(fprs), np.array(pros)
    keep = fprs_a < fpr_limit
    kept = fprs_a[keep]
    return float(auc((kept - kept.min()) / (kept.max() - kept.min()), pros_a[keep]))


def timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of maps")
    parser.add_argument("--size", type=int, default=518, help="map side in pixels")
    parser.add_argument("--steps", type=int, default=200, help="legacy thresholds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    masks, maps = make_category(args.n, args.size, args.seed)
    print(f"{args.n} maps of {args.size}x{args.size} ({maps.size / 1e6:.1f} M pixels, float32), "
          f"{int(masks.any(axis=(1, 2)).sum())} anomalous images, "
          f"{metrics.count_regions(masks)} regions, {int(masks.sum())} anomalous pixels")

    exact, t_exact = timed(metrics.aupro, masks, maps)
    legacy, t_legacy = timed(metrics.aupro_legacy, masks, maps, args.steps)
    all_metrics, t_all = timed(metrics.compute_metrics, masks.any(axis=(1, 2)),
                               maps.max(axis=(1, 2)), masks, maps)
    consumed, t_consume = timed(lambda m: metrics.compute_metrics(
        masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, m, consume=True), maps.copy())
    ours_auroc, t_auroc = timed(metrics.pixel_auroc, masks, maps)
    ours_ap, t_ap = timed(metrics.pixel_ap, masks, maps)
    sk_auroc, t_sk_auroc = timed(roc_auc_score, masks.ravel(), maps.ravel())
    sk_ap, t_sk_ap = timed(average_precision_score, masks.ravel(), maps.ravel())
    loop, t_loop = timed(legacy_loop, masks, maps, args.steps)

    rows = [
        ("legacy loop (reference)", t_loop, loop, ""),
        ("aupro (exact MVTec)", t_exact, exact, f"{t_loop / t_exact:.1f}x faster than loop"),
        ("aupro_legacy", t_legacy, legacy,
         f"{t_loop / t_legacy:.1f}x faster than loop, |diff| = {abs(legacy - loop):.2e}"),
        ("sklearn roc_auc + AP", t_sk_auroc + t_sk_ap, f"{sk_auroc:.9f} / {sk_ap:.9f}", ""),
        ("pixel_auroc + pixel_ap", t_auroc + t_ap, f"{ours_auroc:.9f} / {ours_ap:.9f}",
         f"{(t_sk_auroc + t_sk_ap) / (t_auroc + t_ap):.1f}x faster than sklearn, |diff| = "
         f"{max(abs(ours_auroc - sk_auroc), abs(ours_ap - sk_ap)):.2e}"),
        ("compute_metrics (all 8)", t_all, f"aupro {all_metrics['aupro']:.6f}", "one sort"),
        ("  same, consume=True", t_consume, f"aupro {consumed['aupro']:.6f}",
         f"{t_all / t_consume:.1f}x, identical: {consumed == all_metrics}"),
    ]
    print(f"{'routine':<26}{'time s':>9}  {'value':<28}comparison")
    for name, seconds, value, note in rows:
        shown = f"{value:.9f}" if isinstance(value, float) else str(value)
        print(f"{name:<26}{seconds:>9.2f}  {shown:<28}{note}")
    checks = {
        "aupro < 20 s": t_exact < 20.0,
        "aupro >= 10x loop": t_loop / t_exact >= 10.0,
        "aupro_legacy >= 10x loop": t_loop / t_legacy >= 10.0,
        "aupro_legacy == loop (1e-9)": abs(legacy - loop) <= 1e-9,
        "pixel_auroc+ap no slower than sklearn": t_auroc + t_ap <= t_sk_auroc + t_sk_ap,
    }
    for name, passed in checks.items():
        print(f"target {name}: {'met' if passed else 'NOT met'}")


if __name__ == "__main__":
    main()
