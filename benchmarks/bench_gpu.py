"""The GPU benchmark: ViT-L-14-336 at 518 px, random weights (``benchmarks/gpu.sh`` runs it).

1. Forward images/s of the AnomalyCLIP-family feature path (4 patch layers + V-V from layer 6)
   in fp32, bf16 and fp16, rows alternating and repeated (median, min-max).
2. End to end: ``evaluate_dataset`` of AnomalyCLIP on synthetic MVTec-sized data (700 x 700 PNGs,
   decoded, resized and normalised by the evaluator's loader, metrics included), images/s and the
   fraction of the wall time the GPU spends in the method's forward (CUDA events around
   ``predict``).

    bash benchmarks/gpu.sh                                    # on a CUDA machine
    python benchmarks/bench_gpu.py --device cpu --model zsbench-tiny --size 112 --images 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backbone import images_per_second  # noqa: E402  (the same timing loop)


def forward_rates(model: str, size: int, device: str, batch: int, iters: int, repeats: int,
                  precisions: list[str]) -> dict[str, list[float]]:
    from zsbench.backbone import load_backbone

    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    backbones = {p: load_backbone(model, None, image_size=size, device=device, precision=p)
                 for p in precisions}
    x = torch.randn(batch, 3, size, size, device=device)
    rates: dict[str, list[float]] = {p: [] for p in precisions}
    with torch.inference_mode():
        for repeat in range(repeats):
            order = precisions if repeat % 2 == 0 else precisions[::-1]
            for precision in order:
                bb = backbones[precision]

                def step(bb=bb) -> object:
                    return bb.encode_image(x, layers=(6, 12, 18, 24), vv_from=6,
                                           global_ln_post=False)

                rates[precision].append(images_per_second(step, batch, iters, cuda))
    return rates


def end_to_end(model: str, size: int, device: str, images: int, batch: int, workers: int,
               precision: str) -> tuple[float, float | None, float]:
    """(images/s, GPU-busy fraction or None on CPU, pixel AUROC) of one evaluation."""
    from datasets import Dataset

    from zsbench.evaluate import EvalSettings, evaluate_dataset
    from zsbench.method import build_method
    from zsbench.synthetic import synthetic_records

    per_category = max(1, images // 6)
    records = synthetic_records("synthetic_b", size=700, n_train=0, n_normal=per_category,
                                n_anomalous=per_category)
    torch.manual_seed(0)
    method = build_method("anomalyclip", {"backbone": model, "pretrained": None,
                                          "image_size": size, "precision": precision},
                          device=device)
    cuda = device.startswith("cuda")
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    original = method.predict

    def timed_predict(images, class_names):
        if not cuda:
            return original(images, class_names)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        out = original(images, class_names)
        end.record()
        events.append((begin, end))
        return out

    method.predict = timed_predict
    settings = EvalSettings(resolution=size, batch_size=batch, num_workers=workers,
                            device=device)
    data = Dataset.from_list(records)
    evaluate_dataset(method, data.select(range(min(len(records), batch))), settings)  # warm-up
    events.clear()
    start = time.perf_counter()
    evaluation = evaluate_dataset(method, data, settings)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    busy = (sum(b.elapsed_time(e) for b, e in events) / 1000 / wall) if cuda else None
    return len(records) / wall, busy, evaluation.mean["pixel_auroc"] or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-L-14-336-quickgelu")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=240, help="end-to-end images (700 px)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    precisions = ["fp32", "bf16", "fp16"] if cuda else ["fp32"]
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"{args.model} at {args.size} px, random weights, {name}, torch {torch.__version__}")
    rates = forward_rates(args.model, args.size, args.device, args.batch, args.iters,
                          args.repeats, precisions)
    print(f"forward, 4 patch layers + V-V from 6, batch {args.batch} "
          f"({args.repeats} alternating repeats: median, min-max)")
    for precision, values in rates.items():
        print(f"  {precision}: {statistics.median(values):9.1f} images/s "
              f"({min(values):.1f}-{max(values):.1f})")
    if cuda:
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    for precision in precisions:
        ips, busy, auroc = end_to_end(args.model, args.size, args.device, args.images,
                                      args.batch, args.workers, precision)
        busy_text = "n/a (CPU)" if busy is None else f"{100 * busy:.0f} %"
        print(f"end to end, AnomalyCLIP, {args.images} PNGs of 700 px, {precision}: "
              f"{ips:.1f} images/s, GPU busy {busy_text} (pixel AUROC {auroc:.3f})")


if __name__ == "__main__":
    main()
