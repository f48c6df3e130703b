"""Benchmark ``zsbench.prepare.prepare`` on an MVTec-sized synthetic tree.

Writes (once, into a cache folder) 1,725 test images of 700x700 PNG in the 15 MVTec AD
categories with MVTec's per-category normal/anomalous counts and a mask per anomalous image,
then times ``prepare`` and, in the same run, a naive reference: ``datasets.Dataset.from_dict``
with file paths + ``cast_column(Image())`` + embedding the bytes (what ``push_to_hub`` does) +
``to_parquet``. Prints images per second for both; the target is >= 50 images/s on 2 cores.

    python benchmarks/bench_prepare.py [--cache-dir DIR] [--workers N] [--skip-naive]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# MVTec AD test split: category -> (normal, anomalous) images (1,725 in total).
MVTEC_TEST_COUNTS = {
    "bottle": (20, 63), "cable": (58, 92), "capsule": (23, 109), "carpet": (28, 89),
    "grid": (21, 57), "hazelnut": (40, 70), "leather": (32, 92), "metal_nut": (22, 93),
    "pill": (26, 141), "screw": (41, 119), "tile": (33, 84), "toothbrush": (12, 30),
    "transistor": (60, 40), "wood": (19, 60), "zipper": (32, 119),
}
SIZE = 700
TARGET_IMAGES_PER_S = 50.0


def _write_one(job: tuple[Path, Path | None, int]) -> None:
    image_path, mask_path, seed = job
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    base = rng.uniform(60, 190, size=3)
    wave = 25 * np.sin(2 * np.pi * rng.uniform(2, 6) * (xx + rng.uniform(0, 1) * yy))
    noise = rng.normal(0, 6, size=(SIZE, SIZE, 3))
    pixels = np.clip(base + wave[..., None] + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mask_path is not None:
        mask = Image.new("L", (SIZE, SIZE), 0)
        x, y = (int(v) for v in rng.integers(50, SIZE - 150, size=2))
        ImageDraw.Draw(mask).ellipse((x, y, x + 90, y + 60), fill=255)
        ImageDraw.Draw(image).ellipse((x, y, x + 90, y + 60), fill=(20, 20, 20))
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        mask.save(mask_path, compress_level=1)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(image_path, compress_level=1)


def write_tree(root: Path, workers: int) -> int:
    """Write the synthetic tree under ``root`` unless a complete one is there; returns n images."""
    done_marker = root / ".complete"
    total = sum(n + a for n, a in MVTEC_TEST_COUNTS.values())
    if done_marker.is_file():
        return total
    shutil.rmtree(root, ignore_errors=True)
    jobs = []
    seed = 0
    for category, (normal, anomalous) in MVTEC_TEST_COUNTS.items():
        for k in range(normal):
            jobs.append((root / category / "test" / "good" / f"{k:03d}.png", None, seed))
            seed += 1
        for k in range(anomalous):
            jobs.append((root / category / "test" / "defect" / f"{k:03d}.png",
                         root / category / "ground_truth" / "defect" / f"{k:03d}_mask.png", seed))
            seed += 1
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_one, jobs, chunksize=16))
    done_marker.write_text("ok")
    print(f"wrote the synthetic tree ({total} images) in {time.perf_counter() - started:.1f} s")
    return total


def naive_reference(raw: Path, out_file: Path) -> int:
    """``Dataset.from_dict`` (paths) + ``cast_column(Image())`` + embed bytes + ``to_parquet``."""
    import datasets
    from datasets.table import embed_table_storage

    columns: dict[str, list] = {"image": [], "mask": [], "label": [], "category": []}
    for category in MVTEC_TEST_COUNTS:
        for folder in sorted((raw / category / "test").iterdir()):
            for image in sorted(folder.glob("*.png")):
                mask = raw / category / "ground_truth" / folder.name / f"{image.stem}_mask.png"
                columns["image"].append(str(image))
                columns["mask"].append(str(mask) if mask.is_file() else None)
                columns["label"].append(int(folder.name != "good"))
                columns["category"].append(category)
    ds = datasets.Dataset.from_dict(columns)
    ds = ds.cast_column("image", datasets.Image()).cast_column("mask", datasets.Image())
    ds = ds.with_format("arrow").map(embed_table_storage, batched=True, batch_size=100,
                                     keep_in_memory=True).with_format(None)
    ds.to_parquet(str(out_file))
    return len(ds)


class Timer:
    """Wall time and this process's CPU time (all threads) of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = _cpu_seconds() - self.cpu


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def report(label: str, n: int, timer: Timer, cores: int, note: str = "") -> float:
    """Print wall and CPU figures; returns images/s of wall time."""
    rate = n / timer.wall
    print(f"{label:<16}: {n} images in {timer.wall:6.2f} s = {rate:6.1f} images/s wall; "
          f"CPU {timer.cpu:6.1f} s = {n / timer.cpu:6.1f} images per CPU-second "
          f"(<= {cores * n / timer.cpu:6.1f} images/s on {cores} free cores){note}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "zsbench-bench-prepare")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    import datasets

    from zsbench.prepare import prepare

    datasets.disable_progress_bars()
    raw = args.cache_dir / "mvtec_synthetic"
    n = write_tree(raw, args.workers)
    cores = min(args.workers, os.cpu_count() or 1)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(other processes share the CPUs: compare the two rows of this run, and the "
          "CPU-second figures)")
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        with Timer() as ours:
            out = prepare("mvtec", raw, Path(tmp), workers=args.workers)
        shards = sorted((out / "data").glob("*.parquet"))
        size = sum(p.stat().st_size for p in shards)
        rate = report("zsbench prepare", n, ours, cores,
                      f"; {args.workers} threads, {len(shards)} shards, {size / 1e6:.0f} MB")
        if not args.skip_naive:
            with Timer() as naive:
                rows = naive_reference(raw, Path(tmp) / "naive.parquet")
            report("naive reference", rows, naive, cores,
                   "; from_dict + cast_column(Image()) + embed + to_parquet, masks not "
                   "normalised")
            print(f"speed-up        : {naive.wall / ours.wall:.2f}x wall, "
                  f"{naive.cpu / ours.cpu:.2f}x CPU")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    verdict = "meets" if rate >= TARGET_IMAGES_PER_S else "misses"
    print(f"target          : >= {TARGET_IMAGES_PER_S:.0f} images/s wall -> {verdict} the target "
          "in this run")


if __name__ == "__main__":
    main()
