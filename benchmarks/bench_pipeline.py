"""The evaluation pipeline without the model: can the CPUs feed a fast GPU?

The method's forward is replaced by a stub (a channel mean, microseconds), as if a GPU ran the
model in no time; what remains is the pipeline: PNG decoding, resizing and normalising in the
loader, masks, the copies, and the exact metrics of every category. 700 x 700 PNGs are
evaluated at 518 px, batch 8, with the evaluator's defaults (loader workers min(8, cores - 1),
metrics in a background thread) against the reference of the first wave (decoding in the main
process, metrics after each category, in line). The sides alternate and repeat; figures are
medians with min-max. Also: the loader alone, and how much of the metrics time is hidden behind
the inference (the metrics time that does not add to the wall time).

    python benchmarks/bench_pipeline.py                  # 560 images, 3 repeats
    python benchmarks/bench_pipeline.py --images 120 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from datasets import Dataset

import zsbench.evaluate as evaluate
from zsbench.evaluate import EvalSettings, _loader, default_num_workers, evaluate_dataset
from zsbench.method import Prediction, build_method
from zsbench.synthetic import synthetic_records


def stub_method(size: int) -> Any:
    method = build_method("clip", {"backbone": "zsbench-tiny", "pretrained": None,
                                   "image_size": size})

    def fast_forward(images, class_names):  # stands in for a GPU forward
        maps = images.mean(dim=1)
        return Prediction(maps.flatten(1).amax(1), maps)

    method._predict = fast_forward
    return method


def timed_metrics(seconds: list[float]):
    original = evaluate.metrics.category_metrics

    def compute(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return out

    return original, compute


def run_side(method: Any, data: Dataset, settings: EvalSettings, no_metrics: bool = False
             ) -> tuple[float, float]:
    """(wall seconds, summed metrics seconds) of one evaluation."""
    seconds: list[float] = []
    original, compute = timed_metrics(seconds)
    evaluate.metrics.category_metrics = (
        (lambda *a, **k: (dict.fromkeys(evaluate.metrics.METRIC_NAMES), 0)) if no_metrics
        else compute)
    try:
        start = time.perf_counter()
        evaluate_dataset(method, data, settings)
        return time.perf_counter() - start, sum(seconds)
    finally:
        evaluate.metrics.category_metrics = original


def loader_only(method: Any, data: Dataset, settings: EvalSettings) -> float:
    labels = [int(v) for v in data["label"]]
    plan = list(evaluate.select_indices(list(data["category"]), labels, None, 0).items())
    start = time.perf_counter()
    batches, _ = _loader(method, evaluate.raw_records(data), plan, settings)
    n = sum(len(batch["index"]) for batch in batches)
    return n / (time.perf_counter() - start)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=560)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    per_category = max(1, args.images // 6)
    data = Dataset.from_list(synthetic_records("synthetic_b", size=700, n_train=0,
                                               n_normal=per_category,
                                               n_anomalous=per_category))
    n = len(data)
    method = stub_method(args.size)
    defaults = EvalSettings(resolution=args.size, batch_size=args.batch_size,
                            num_workers=default_num_workers())
    reference = EvalSettings(resolution=args.size, batch_size=args.batch_size, num_workers=0,
                             metrics_workers=0)
    run_side(method, data.select(range(8)), defaults)  # warm-up
    rates: dict[str, list[float]] = {"loader": [], "defaults": [], "reference": []}
    hidden: list[float] = []
    for repeat in range(args.repeats):
        sides = ["defaults", "reference"] if repeat % 2 == 0 else ["reference", "defaults"]
        for side in sides:
            wall, _ = run_side(method, data, defaults if side == "defaults" else reference)
            rates[side].append(n / wall)
        rates["loader"].append(loader_only(method, data, defaults))
        wall, metrics_s = run_side(method, data, defaults)
        bare, _ = run_side(method, data, defaults, no_metrics=True)
        hidden.append(max(0.0, min(1.0, (bare + metrics_s - wall) / metrics_s)))
    print(f"{n} PNGs of 700 px at {args.size} px, batch {args.batch_size}, forward stubbed, "
          f"{defaults.num_workers} loader workers (defaults), {args.repeats} alternating "
          f"repeats: medians (min-max)")
    print(f"  loader alone (defaults)                  {spread(rates['loader'])} images/s")
    print(f"  end to end, defaults                     {spread(rates['defaults'])} images/s")
    print(f"  end to end, first-wave reference         {spread(rates['reference'])} images/s")
    print(f"  metrics time hidden behind the inference {100 * statistics.median(hidden):.0f} %"
          f" ({100 * min(hidden):.0f}-{100 * max(hidden):.0f} %)")


if __name__ == "__main__":
    main()
