"""Evaluator throughput against a per-image loop as upstream test scripts run it, in one run.

The reference follows the test scripts of AnomalyCLIP/APRIL-GAN: one image at a time (batch 1),
decode and transform in the loop, predict, upsample, move the map to numpy and smooth it with
``scipy.ndimage.gaussian_filter`` per image, keep Python lists, then per category compute pixel
AUROC and image AUROC/AP with scikit-learn and the legacy AUPRO with its 200-threshold loop. The
evaluator batches, decodes in DataLoader workers, smooths on the tensor, keeps float32 maps per
category and computes all eight zsbench metrics (exact AUPRO and the legacy one) from one sort.
Both use the same model and produce the same maps (the pixel AUROC columns must agree). The two
sides alternate and repeat (shared machines are noisy); the figures are medians with min-max.

    python benchmarks/bench_eval.py                 # tiny config and ViT-B-16 @ 224, CPU
    python benchmarks/bench_eval.py --configs tiny --images 4
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from scipy.ndimage import gaussian_filter
from sklearn.metrics import average_precision_score, roc_auc_score

from zsbench.evaluate import EvalSettings, evaluate_dataset
from zsbench.method import build_method
from zsbench.preprocess import image_to_tensor, mask_to_tensor
from zsbench.synthetic import synthetic_records

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_metrics import legacy_loop  # noqa: E402  (the plain 200-threshold AUPRO loop)

CONFIGS = {
    "tiny": {"backbone": "zsbench-tiny", "pretrained": None, "image_size": 112},
    "vit-b-16": {"backbone": "ViT-B-16", "pretrained": None, "image_size": 224},
}
SIGMA = 4.0


def per_image_loop(method, records, resolution: int) -> tuple[float, float, float]:
    """The upstream-style reference; returns (inference seconds, total seconds, pixel AUROC)."""
    start = time.perf_counter()
    by_cat: dict[str, dict[str, list]] = {}
    bb = method.backbone
    for row in records:
        img = Image.open(io.BytesIO(row["image"]["bytes"]))
        x = image_to_tensor(img, method.config.image_size, bb.mean, bb.std)[None]
        mask = None if row["mask"] is None else Image.open(io.BytesIO(row["mask"]["bytes"]))
        gt = mask_to_tensor(mask, resolution).numpy()
        with torch.no_grad():
            score, amap = method.predict(x, [row["prompt_name"]])  # method built with sigma 0
        amap = torch.nn.functional.interpolate(amap[None], size=(resolution, resolution),
                                               mode="bilinear", align_corners=False)[0, 0]
        amap = gaussian_filter(amap.numpy(), sigma=SIGMA)
        d = by_cat.setdefault(row["category"], {"labels": [], "scores": [], "maps": [],
                                                "masks": []})
        d["labels"].append(row["label"])
        d["scores"].append(float(score))
        d["maps"].append(amap)
        d["masks"].append(gt)
    inference = time.perf_counter() - start
    aurocs = []
    for d in by_cat.values():
        maps, masks = np.array(d["maps"]), np.array(d["masks"])
        aurocs.append(roc_auc_score(masks.ravel(), maps.ravel()))
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # upstream's loop on empty slices
            legacy_loop(masks, maps)
        roc_auc_score(d["labels"], d["scores"])
        average_precision_score(d["labels"], d["scores"])
    return inference, time.perf_counter() - start, float(np.mean(aurocs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="clip", help="a method with a 'sigma' option")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--images", type=int, default=8, help="normal and anomalous images "
                        "per category (3 categories)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="evaluation resolution (default: each config's input size, so "
                             "both sides smooth the same maps)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per side")
    args = parser.parse_args()
    records = synthetic_records("synthetic_b", size=256, n_normal=args.images,
                                n_anomalous=args.images)
    dataset = Dataset.from_list(records)
    n = len(records)
    print(f"method {args.method}, {n} images of 256 px, torch threads "
          f"{torch.get_num_threads()}, DataLoader workers {args.workers}, {args.repeats} "
          f"alternating repeats: medians (min-max)")
    for name in args.configs:
        torch.manual_seed(0)
        method = build_method(args.method, {**CONFIGS[name], "sigma": SIGMA})
        torch.manual_seed(0)
        unsmoothed = build_method(args.method, {**CONFIGS[name], "sigma": 0.0})
        unsmoothed.load_state_dict(method.state_dict())
        resolution = args.resolution or CONFIGS[name]["image_size"]
        settings = EvalSettings(resolution=resolution, batch_size=args.batch_size,
                                num_workers=args.workers)
        evaluate_dataset(method, dataset.select(range(4)), settings)  # warm-up
        per_image_loop(unsmoothed, records[:2], resolution)  # warm-up
        times: dict[str, list[float]] = {"ours_infer": [], "ours": [], "loop_infer": [],
                                         "loop": []}
        for repeat in range(args.repeats):
            sides = ["ours", "loop"] if repeat % 2 == 0 else ["loop", "ours"]
            for side in sides:
                if side == "ours":
                    t0 = time.perf_counter()
                    ours = evaluate_dataset(method, dataset, settings)
                    times["ours"].append(time.perf_counter() - t0)
                    times["ours_infer"].append(n / ours.images_per_s)
                else:
                    t_infer, t_loop, loop_auroc = per_image_loop(unsmoothed, records,
                                                                 resolution)
                    times["loop_infer"].append(t_infer)
                    times["loop"].append(t_loop)
        rates = {k: [n / t for t in v] for k, v in times.items()}
        print(f"{name} at {resolution} px          evaluator          per-image loop    "
              f"speed-up")
        for label, ours_key, loop_key in (("inference", "ours_infer", "loop_infer"),
                                          ("end to end", "ours", "loop")):
            speedup = statistics.median(times[loop_key]) / statistics.median(times[ours_key])
            print(f"  {label:<10} img/s  {_spread(rates[ours_key])}  "
                  f"{_spread(rates[loop_key])}  {speedup:5.1f}x")
        print(f"  pixel AUROC {ours.mean['pixel_auroc']:.6f} (evaluator) / {loop_auroc:.6f} "
              f"(loop)")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"

if __name__ == "__main__":
    main()
