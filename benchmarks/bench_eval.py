"""Evaluator throughput against a plain per-image loop, on the same model and data, in one run.

The reference loop is what upstream test scripts do: one image at a time (batch 1), decode and
transform in the loop, predict, move the map to numpy, smooth nothing more, keep Python lists,
then compute the metrics at the end with scikit-learn per category. The evaluator batches,
decodes in the DataLoader, keeps float16 maps per category and uses zsbench.metrics.

    python benchmarks/bench_eval.py                 # tiny config and ViT-B-16 @ 224, CPU
    python benchmarks/bench_eval.py --configs tiny --images 16
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from zsbench.evaluate import EvalSettings, evaluate_dataset
from zsbench.method import build_method
from zsbench.preprocess import image_to_tensor, mask_to_tensor
from zsbench.synthetic import synthetic_records

CONFIGS = {
    "tiny": {"backbone": "zsbench-tiny", "pretrained": None, "image_size": 112},
    "vit-b-16": {"backbone": "ViT-B-16", "pretrained": None, "image_size": 224},
}


def per_image_loop(method, records, resolution: int) -> tuple[float, dict[str, float]]:
    """The upstream-style reference: batch 1, everything per image in Python."""
    start = time.perf_counter()
    by_cat: dict[str, dict[str, list]] = {}
    bb = method.backbone
    for row in records:
        img = Image.open(io.BytesIO(row["image"]["bytes"]))
        x = image_to_tensor(img, method.config.image_size, bb.mean, bb.std)[None]
        mask = None if row["mask"] is None else Image.open(io.BytesIO(row["mask"]["bytes"]))
        gt = mask_to_tensor(mask, resolution).numpy()
        with torch.no_grad():
            score, amap = method.predict(x, [row["prompt_name"]])
        amap = torch.nn.functional.interpolate(amap[None], size=(resolution, resolution),
                                               mode="bilinear", align_corners=False)[0, 0]
        d = by_cat.setdefault(row["category"], {"labels": [], "scores": [], "maps": [],
                                                "masks": []})
        d["labels"].append(row["label"])
        d["scores"].append(float(score))
        d["maps"].append(amap.numpy().tolist())  # upstream keeps Python lists of arrays
        d["masks"].append(gt)
    aurocs = []
    for d in by_cat.values():
        maps, masks = np.array(d["maps"]).ravel(), np.array(d["masks"]).ravel()
        aurocs.append(roc_auc_score(masks, maps))
        average_precision_score(masks, maps)
        roc_auc_score(d["labels"], d["scores"])
        average_precision_score(d["labels"], d["scores"])
    return time.perf_counter() - start, {"pixel_auroc": float(np.mean(aurocs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="clip")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--images", type=int, default=8, help="normal and anomalous images "
                        "per category (3 categories)")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    records = synthetic_records("synthetic_b", size=256, n_normal=args.images,
                                n_anomalous=args.images)
    dataset = Dataset.from_list(records)
    n = len(records)
    print(f"method {args.method}, {n} images of 256 px, evaluation at {args.resolution} px, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'config':<10} {'evaluator img/s':>16} {'per-image loop img/s':>21} {'speed-up':>9} "
          f"{'pixel AUROC (ours / loop)':>27}")
    for name in args.configs:
        method = build_method(args.method, CONFIGS[name])
        settings = EvalSettings(resolution=args.resolution, batch_size=args.batch_size,
                                num_workers=args.workers)
        evaluate_dataset(method, dataset.select(range(4)), settings)  # warm-up
        t0 = time.perf_counter()
        ours = evaluate_dataset(method, dataset, settings)
        t_ours = time.perf_counter() - t0
        per_image_loop(method, records[:4], args.resolution)  # warm-up
        t_loop, loop_metrics = per_image_loop(method, records, args.resolution)
        print(f"{name:<10} {n / t_ours:>16.1f} {n / t_loop:>21.1f} {t_loop / t_ours:>8.1f}x "
              f"{ours.mean['pixel_auroc']:>13.4f} / {loop_metrics['pixel_auroc']:.4f}")


if __name__ == "__main__":
    main()
