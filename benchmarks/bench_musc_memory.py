"""MuSc's memory on one category: measured peak against ``MuSc.estimate_peak_bytes``.

MuSc compares every patch of every image with the patches of the category's other images; its
forward and mutual scoring run in chunks (``chunk_size``, ``score_chunk_size``). On CUDA the
peak is ``torch.cuda.max_memory_allocated`` around one ``predict`` of the whole category (as the
evaluator calls a transductive method); on CPU it is the growth of the process's peak RSS
(VmHWM), a rougher figure. The acceptance point of the second-wave methods issue: 200 images of
ViT-L-14-336 at 518 px within 8 GB on a GPU.

    python benchmarks/bench_musc_memory.py                         # CUDA: 200 images, ViT-L 518
    python benchmarks/bench_musc_memory.py --device cpu --backbone zsbench-tiny \\
        --image-size 112 --images 40                               # a CPU smoke check
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

GIB = 1024 ** 3


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backbone", default="ViT-L-14-336-quickgelu")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--score-chunk-size", type=int, default=4)
    args = parser.parse_args()

    import zsbench.methods  # noqa: F401  (registers musc)
    from zsbench.method import build_method

    torch.manual_seed(0)
    method = build_method("musc", {"backbone": args.backbone, "pretrained": None,
                                   "image_size": args.image_size,
                                   "chunk_size": args.chunk_size,
                                   "score_chunk_size": args.score_chunk_size},
                          device=args.device)
    images = torch.randn(args.images, 3, args.image_size, args.image_size, device=args.device)
    estimate = method.estimate_peak_bytes(args.images)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_bytes()
    start = time.perf_counter()
    with torch.inference_mode():
        prediction = method.predict(images, ["object"] * args.images)
    if cuda:
        torch.cuda.synchronize()
        measured, kind = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
    else:
        measured, kind = peak_rss_bytes(), "process peak RSS"
    seconds = time.perf_counter() - start
    print(f"musc on {args.images} images of {args.image_size} px, {args.backbone} (random "
          f"weights), {args.device}, chunk {args.chunk_size}, score chunk "
          f"{args.score_chunk_size}: {seconds:.1f} s")
    print(f"  measured peak ({kind}): {measured / GIB:.2f} GiB"
          + ("" if cuda else f" (before the call: {before / GIB:.2f} GiB)"))
    print(f"  estimated peak: {estimate['peak'] / GIB:.2f} GiB "
          f"({', '.join(f'{k} {v / GIB:.2f}' for k, v in estimate.items() if k != 'peak')})")
    print(f"  outputs finite: {bool(torch.isfinite(prediction.anomaly_maps).all())}")


if __name__ == "__main__":
    main()
