"""Images per second of the real-size backbone (random weights), with the methods' feature paths.

Measures ``ViT-L-14-336-quickgelu`` at 518 px (37 x 37 patches) as the AnomalyCLIP family runs
it: open_clip's own ``encode_image`` on a model built for the same input size (the reference, in
the same run), our step-by-step ``encode_image`` with four patch layers, and the same with the V-V
path from layer 6. The rows alternate and repeat; the figures are medians with min-max. On CUDA it
uses bf16 autocast and large batches; on CPU fp32 and a small batch (slow: a handful of images).

    python benchmarks/bench_backbone.py                      # GPU when there is one
    python benchmarks/bench_backbone.py --batch 2 --iters 1  # a quick CPU look
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import open_clip
import torch

from zsbench.backbone import load_backbone


def images_per_second(fn: Callable[[], object], batch: int, iters: int, cuda: bool) -> float:
    fn()  # warm-up
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-L-14-336-quickgelu")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 2 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="default: 10 on CUDA, 2 on CPU")
    parser.add_argument("--precision", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per row")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch = args.batch or (64 if cuda else 2)
    iters = args.iters or (10 if cuda else 2)
    precision = args.precision or ("bf16" if cuda else "fp32")
    torch.manual_seed(0)
    bb = load_backbone(args.model, None, image_size=args.size, device=device,
                       precision=precision)
    # the reference: open_clip's own model built for the same input size (force_image_size)
    reference_model = open_clip.create_model(bb.name, force_image_size=args.size)
    reference_model = reference_model.to(device).eval()
    gpu = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"{bb.name}, random weights, {precision}, batch {batch}, {iters} iterations, "
          f"{args.repeats} alternating repeats (median, min-max), every row at {args.size} px, "
          f"{gpu}")
    layers = (6, 12, 18, 24)
    x = torch.randn(batch, 3, args.size, args.size, device=device)

    def reference() -> object:
        with bb.autocast():
            return reference_model.encode_image(x)

    rows = [
        ("open_clip encode_image (reference)", reference),
        ("zsbench encode_image, global only", lambda: bb.encode_image(x)),
        ("zsbench encode_image, 4 patch layers", lambda: bb.encode_image(x, layers=layers)),
        ("zsbench encode_image, 4 layers + V-V from 6",
         lambda: bb.encode_image(x, layers=layers, vv_from=6, global_ln_post=False)),
    ]
    rates: dict[str, list[float]] = {label: [] for label, _ in rows}
    with torch.inference_mode():
        for repeat in range(args.repeats):
            order = rows if repeat % 2 == 0 else rows[::-1]
            for label, fn in order:
                rates[label].append(images_per_second(fn, batch, iters, cuda))
    ref = statistics.median(rates[rows[0][0]])
    for label, values in rates.items():
        ips = statistics.median(values)
        print(f"  {label:<44} {ips:10.2f} images/s ({min(values):.2f}-{max(values):.2f})  "
              f"{ips / ref:.2f}x reference")
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

if __name__ == "__main__":
    main()
