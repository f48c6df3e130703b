"""Peak memory and time of the category metrics: today's path, the consuming path, out of core.

Every measurement runs in a fresh subprocess (its own peak RSS, ``ru_maxrss``), which builds the
category procedurally image by image (seeded per image, so every side sees the same maps): smooth
float32 noise plus 1-4 elliptic defects on every second image, ~1 % anomalous pixels.

``--mode in-memory`` (default): ``compute_metrics`` on ``--n`` maps, side "before" (default
call, maps left intact; ``--before-module`` loads another metrics.py, e.g. from ``git show``,
and adds side "default", the default call of the current code) against side "consume"
(``consume=True``), alternated ``--repeats`` times; prints median
[min-max] of time and peak RSS, bytes per pixel all included (peak RSS over the pixel count,
inputs and interpreter included), and checks the values are identical.

``--mode out-of-core``: ``CategoryAccumulator(max_memory=--budget)`` fed batches of ``--batch``
maps (the path chosen from the budget), once; then, with ``--reference full``, the in-memory
consuming path on the same maps in another subprocess (needs ~5.5 bytes per pixel) and the
largest difference; ``--reference none`` skips it.

    python benchmarks/bench_metrics_memory.py --n 1000 --repeats 3
    python benchmarks/bench_metrics_memory.py --mode out-of-core --n 5000 --budget 4e9
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
from scipy import ndimage


def make_image(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One seeded (mask bool [size, size], map float32 [size, size]); odd indices anomalous."""
    rng = np.random.default_rng([seed, index])
    mask = np.zeros((size, size), dtype=bool)
    if index % 2:
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = rng.uniform(0.1, 0.9, size=2) * size
            ry, rx = np.maximum(rng.uniform(0.02, 0.08, size=2) * size, 1.0)
            y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, size))
            x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, size))
            yy, xx = np.ogrid[y0:y1, x0:x1]
            mask[y0:y1, x0:x1] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    coarse = rng.standard_normal((17, 17))
    smooth = ndimage.zoom(coarse, size / 17, order=1, grid_mode=True, mode="nearest")[:size, :size]
    image = smooth.astype(np.float32)
    image += rng.standard_normal((size, size), dtype=np.float32) * np.float32(0.3)
    image += mask * np.float32(1.5)
    return mask, image


def make_category(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    masks = np.empty((n, size, size), dtype=bool)
    maps = np.empty((n, size, size), dtype=np.float32)
    for index in range(n):
        masks[index], maps[index] = make_image(seed, index, size)
    return masks, maps


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(side: str, args: argparse.Namespace) -> dict:
    from zsbench import metrics
    from zsbench.metrics_store import CategoryAccumulator

    baseline = peak_rss()
    out: dict = {"side": side, "baseline_rss": baseline}
    if side == "out-of-core":
        acc = CategoryAccumulator(max_memory=int(args.budget), spill_dir=args.spill_dir)
        gen = 0.0
        start = time.perf_counter()
        for first in range(0, args.n, args.batch):
            t0 = time.perf_counter()
            rows = range(first, min(first + args.batch, args.n))
            pairs = [make_image(args.seed, i, args.size) for i in rows]
            masks = np.stack([p[0] for p in pairs])
            maps = np.stack([p[1] for p in pairs])
            del pairs
            gen += time.perf_counter() - t0
            acc.append(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps)
            del masks, maps
        t0 = time.perf_counter()
        values = acc.finish()
        out.update(finish_s=time.perf_counter() - t0, generate_s=gen, spilled=acc.spilled,
                   buckets=acc.n_buckets, disk_bytes=acc.n_pixels * 4 + acc.n_anomalous * 4,
                   seconds=time.perf_counter() - start - gen)
    else:
        if side == "before" and args.before_module:
            import importlib.util

            spec = importlib.util.spec_from_file_location("metrics_before", args.before_module)
            metrics = importlib.util.module_from_spec(spec)
            sys.modules["metrics_before"] = metrics
            spec.loader.exec_module(metrics)
        masks, maps = make_category(args.n, args.size, args.seed)
        out["anomalous_fraction"] = float(masks.mean())
        labels, scores = masks.any(axis=(1, 2)), maps.max(axis=(1, 2))
        out["inputs_rss"] = peak_rss()
        start = time.perf_counter()
        kwargs = {"consume": True} if side == "consume" else {}
        values = metrics.compute_metrics(labels, scores, masks, maps, **kwargs)
        out["seconds"] = time.perf_counter() - start
    out.update(values=values, peak_rss=peak_rss(), pixels=args.n * args.size**2)
    return out


def run_side(side: str, argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv, "--worker", side],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"side {side} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["in-memory", "out-of-core"], default="in-memory")
    parser.add_argument("--n", type=int, default=1000, help="number of maps")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=4e9, help="out-of-core max_memory bytes")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--spill-dir", default=None)
    parser.add_argument("--reference", choices=["full", "none"], default="full")
    parser.add_argument("--before-module", default=None,
                        help="metrics.py file for side 'before' (e.g. the committed one)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    argv = list(sys.argv[1:])
    pixels = args.n * args.size**2
    print(f"{args.n} maps of {args.size}x{args.size}: {pixels / 1e6:.0f} M pixels")
    if args.mode == "out-of-core":
        ooc = run_side("out-of-core", argv)
        print(f"out-of-core (budget {args.budget / 1e9:.2f} GB, spilled={ooc['spilled']}, "
              f"{ooc['buckets']} key buckets, {ooc['disk_bytes'] / 1e9:.2f} GB on disk): "
              f"{ooc['seconds']:.1f} s for append + finish (finish {ooc['finish_s']:.1f} s; "
              f"map generation {ooc['generate_s']:.1f} s excluded), peak RSS "
              f"{ooc['peak_rss'] / 1e9:.2f} GB")
        print(json.dumps(ooc["values"]))
        if args.reference == "full":
            ref = run_side("consume", argv)
            diff = max(abs(ooc["values"][k] - ref["values"][k]) for k in ref["values"]
                       if ref["values"][k] is not None)
            same_none = all((ooc["values"][k] is None) == (v is None)
                            for k, v in ref["values"].items())
            print(f"in-memory consume reference: {ref['seconds']:.1f} s, peak RSS "
                  f"{ref['peak_rss'] / 1e9:.2f} GB; max |out-of-core - in-memory| = {diff:.2e}, "
                  f"same None pattern: {same_none}")
            print(json.dumps(ref["values"]))
        return
    sides = ["before", "default", "consume"] if args.before_module else ["before", "consume"]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for side in (sides if repeat % 2 == 0 else sides[::-1]):
            runs[side].append(run_side(side, argv))
    for side, results in runs.items():
        print(f"{side:>8}: compute_metrics {spread([r['seconds'] for r in results])} s, "
              f"peak RSS {spread([r['peak_rss'] / 1e9 for r in results])} GB = "
              f"{spread([r['peak_rss'] / pixels for r in results])} B/px all included, "
              f"{spread([(r['peak_rss'] - r['baseline_rss']) / pixels for r in results])} B/px "
              f"above the interpreter "
              f"(inputs alone {statistics.median(r['inputs_rss'] for r in results) / 1e9:.2f} GB,"
              f" anomalous pixels {results[0]['anomalous_fraction']:.2%})")
    values = [r["values"] for rs in runs.values() for r in rs]
    print("values identical across sides and repeats:", all(v == values[0] for v in values))
    print(json.dumps(values[0]))
    speed = statistics.median(r["seconds"] for r in runs["before"]) / statistics.median(
        r["seconds"] for r in runs["consume"])
    print(f"consume is {speed:.2f}x the speed of before (median over median)")


if __name__ == "__main__":
    main()
