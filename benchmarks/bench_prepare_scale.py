"""Benchmark Real-IAD-sized preparation: images/s and peak memory against the number of images.

Writes (once, into a cache folder) a tree in Real-IAD's download layout with small JPEG images
(``realiad_256/<cat>/OK/Sxxxx/*_C<v>_*.jpg``, ``NG/<code>/Sxxxx/*.jpg`` + ``.png`` masks, and
the split files ``realiad_jsons/realiad_jsons/<cat>.json``), one tree per size, then prepares
each tree with the ``real_iad`` adapter in a fresh process and reports:

- images/s of ``zsbench.prepare.prepare`` (listing, source checksum, encoding, shards, card);
- peak resident memory of that process above its footprint before ``prepare``
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), and with ``--tracemalloc`` the peak of the
  Python heap during ``prepare`` (``tracemalloc``; slower, a separate run).

Memory should stay near flat from the smallest to the largest size: shards are written from a
bounded window of encoded rows; what grows with the count is the list of records (paths and
labels, a few hundred bytes per image) and the per-row summary used for the counts.

    python benchmarks/bench_prepare_scale.py [--sizes 5000,20000] [--cache-dir DIR]
                                             [--workers N] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ("audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood",
              "mint", "mounts", "pcb", "phone_battery")
CODES = ("AK", "BX", "HS", "QS")
VIEWS = 5
SIZE = 64  # small images: the benchmark measures the pipeline's scaling, not JPEG decoding
ANOMALOUS_EVERY = 4  # one sample in four is NG, like Real-IAD's ~1/3 share


def write_tree(root: Path, n_images: int) -> None:
    """A Real-IAD-layout tree of ``n_images`` images (5 views per sample) unless complete."""
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == str(n_images):
        return
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(0)
    res = root / "realiad_256"
    samples = n_images // VIEWS
    per_category: dict[str, dict[str, list[dict]]] = {c: {"train": [], "test": []}
                                                      for c in CATEGORIES}
    base = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:30, 20:34] = 255
    for s in range(samples):
        category = CATEGORIES[s % len(CATEGORIES)]
        sid = f"S{s:05d}"
        anomalous = s % ANOMALOUS_EVERY == 0
        code = CODES[s % len(CODES)] if anomalous else "OK"
        folder = res / category / ("NG" if anomalous else "OK")
        folder = folder / code / sid if anomalous else folder / sid
        folder.mkdir(parents=True, exist_ok=True)
        split = "test" if anomalous or s % 3 == 0 else "train"
        for view in range(1, VIEWS + 1):
            stem = f"{category}_{s:05d}_{'NG' if anomalous else 'OK'}_{code}_C{view}_2023"
            pixels = np.roll(base, s * 7 + view, axis=1)
            Image.fromarray(pixels).save(folder / f"{stem}.jpg", quality=90)
            entry = {"category": category, "anomaly_class": code,
                     "image_path": (folder / f"{stem}.jpg").relative_to(res).as_posix(),
                     "mask_path": None}
            if anomalous:
                Image.fromarray(mask).save(folder / f"{stem}.png")
                entry["mask_path"] = (folder / f"{stem}.png").relative_to(res).as_posix()
            per_category[category][split].append(entry)
    jsons = root / "realiad_jsons" / "realiad_jsons"
    jsons.mkdir(parents=True, exist_ok=True)
    for category, splits in per_category.items():
        (jsons / f"{category}.json").write_text(json.dumps({"meta": {}, **splits}))
    marker.write_text(str(n_images))


def child(raw: Path, workers: int, trace: bool) -> dict:
    """Prepare ``raw`` in this process; return the measurements (run in a fresh process)."""
    import tracemalloc

    import zsbench.adapters  # noqa: F401  (registers real_iad)
    from zsbench.prepare import prepare

    out = Path(tempfile.mkdtemp(prefix="zsbench-scale-out-"))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    target = prepare("real_iad", raw, out, workers=workers,
                     adapter_options={"categories": ",".join(CATEGORIES)})
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] if trace else None
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from zsbench.data import dataset_info

    n = sum(split["n"] for split in dataset_info(target)["splits"].values())
    shard_bytes = sum(p.stat().st_size for p in (target / "data").glob("*.parquet"))
    shutil.rmtree(out)
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds,
            "rss_before_mib": rss_before / 1024, "rss_peak_mib": rss_after / 1024,
            "rss_growth_mib": (rss_after - rss_before) / 1024,
            "traced_peak_mib": None if traced is None else traced / 2**20,
            "shard_mib": shard_bytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000,20000", help="Image counts, comma separated.")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "zsbench-bench-scale")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tracemalloc", action="store_true", help="Also measure the Python "
                        "heap peak with tracemalloc (a second, slower run per size).")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.workers, args.trace)))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows = []
    for n in sizes:
        raw = args.cache_dir / f"real_iad_{n}"
        t0 = time.perf_counter()
        write_tree(raw, n)
        print(f"tree of {n} images ready in {time.perf_counter() - t0:.1f} s: {raw}", flush=True)
        for trace in ([False, True] if args.tracemalloc else [False]):
            command = [sys.executable, __file__, "--child", str(raw), "--workers",
                       str(args.workers)] + (["--trace"] if trace else [])
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["tracemalloc"] = trace
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"{'images':>8} {'trace':>5} {'s':>7} {'img/s':>7} {'RSS peak':>9} {'RSS growth':>10} "
          f"{'heap peak':>9}")
    for r in rows:
        heap = "-" if r["traced_peak_mib"] is None else f"{r['traced_peak_mib']:.1f}"
        print(f"{r['images']:>8} {str(r['tracemalloc'])[0]:>5} {r['seconds']:>7.1f} "
              f"{r['images_per_s']:>7.0f} {r['rss_peak_mib']:>8.0f}M {r['rss_growth_mib']:>9.0f}M "
              f"{heap:>8}M")
    plain = [r for r in rows if not r["tracemalloc"]]
    if len(plain) >= 2:
        small, large = plain[0], plain[-1]
        ratio = large["images"] / small["images"]
        per_image = ((large["rss_growth_mib"] - small["rss_growth_mib"]) * 1024
                     / (large["images"] - small["images"]))
        print(f"\n{ratio:.0f}x the images: RSS growth {small['rss_growth_mib']:.0f} -> "
              f"{large['rss_growth_mib']:.0f} MiB during prepare "
              f"({per_image:+.2f} KiB per extra image)")


if __name__ == "__main__":
    main()
