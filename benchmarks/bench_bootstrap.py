"""Bootstrap cost: 1000 replicates of all 8 metrics vs one exact ``compute_metrics``.

Acceptance (issue 14): 1000 stratified replicates for 200 maps of 518x518 take less than 10x
the time of one exact computation. Synthetic maps: smooth noise plus blob anomalies on half the
images, float32. The two timings alternate, ``--repeats`` times; the medians and their ratio are
printed. ``bootstrap`` is timed with the exact per-category metrics given (as the evaluator has
them) and, separately, the time of its own preparation is included in that figure.

    python benchmarks/bench_bootstrap.py                    # 200 x 518 x 518, 1000 replicates
    python benchmarks/bench_bootstrap.py --images 40 --size 256 --repeats 1   # a busy machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from scipy import ndimage

from zsbench.bootstrap import CategoryData, EvaluationData, bootstrap
from zsbench.metrics import compute_metrics


def synthetic(images: int, size: int, seed: int = 0) -> CategoryData:
    rng = np.random.default_rng(seed)
    labels = np.arange(images) % 2 == 1
    masks = np.zeros((images, size, size), dtype=bool)
    maps = np.empty((images, size, size), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(images):
        cells = -(-size // 8)  # ceil: the zoomed noise covers the whole map
        noise = ndimage.gaussian_filter(rng.random((cells, cells)), 1.0)
        maps[i] = ndimage.zoom(noise, 8, order=1)[:size, :size]
        if labels[i]:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, 2)
                radius = rng.integers(size // 40 + 1, size // 10 + 2)
                blob = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
                masks[i] |= blob
                maps[i] += 0.3 * blob * rng.random()
    maps += rng.normal(0, 0.02, maps.shape).astype(np.float32)
    scores = maps.reshape(images, -1).max(axis=1) + rng.normal(0, 0.05, images)
    return CategoryData(labels, scores, masks, maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = synthetic(args.images, args.size)
    evaluation = EvaluationData({"synthetic": data})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.images} maps of {args.size}x{args.size}, {args.replicates} replicates, "
          f"{args.repeats} repeats, {os.cpu_count()} CPUs, load {load:.2f}")
    exact_times, boot_times = [], []
    point = None
    for repeat in range(args.repeats):
        start = time.perf_counter()
        point = {"synthetic": compute_metrics(data.labels, data.scores, data.masks, data.maps)}
        exact_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = bootstrap(evaluation, args.replicates, seed=repeat, point=point)
        boot_times.append(time.perf_counter() - start)
        print(f"repeat {repeat}: exact {exact_times[-1]:.2f} s, bootstrap {boot_times[-1]:.2f} s")
    exact, boot = statistics.median(exact_times), statistics.median(boot_times)
    print(f"median exact compute_metrics: {exact:.2f} s")
    print(f"median bootstrap ({args.replicates} replicates, 8 metrics): {boot:.2f} s")
    print(f"ratio: {boot / exact:.2f}x (target < 10x)")
    print("binning error at w = 1:", {k: f"{v:.1e}" for k, v in result.binning_error.items()})
    print("intervals:", {k: (None if result.low[k] is None else
                             f"[{result.low[k]:.4f}, {result.high[k]:.4f}]")
                         for k in result.low})


if __name__ == "__main__":
    main()
