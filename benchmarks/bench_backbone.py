"""Images per second of the real-size backbone (random weights), with the methods' feature paths.

Measures ``ViT-L-14-336-quickgelu`` at 518 px (37 x 37 patches) as the AnomalyCLIP family runs
it: open_clip's own ``encode_image`` (the reference, in the same run), our step-by-step
``encode_image`` with four patch layers, and the same with the V-V path from layer 6. On CUDA it
uses bf16 autocast and large batches; on CPU fp32 and a small batch (slow: a handful of images).

    python benchmarks/bench_backbone.py                      # GPU when there is one
    python benchmarks/bench_backbone.py --batch 2 --iters 1  # a quick CPU look
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

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
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch = args.batch or (64 if cuda else 2)
    iters = args.iters or (10 if cuda else 2)
    precision = args.precision or ("bf16" if cuda else "fp32")
    torch.manual_seed(0)
    native = load_backbone(args.model, None, device=device, precision=precision)
    bb = load_backbone(args.model, None, image_size=args.size, device=device,
                       precision=precision)
    bb.model.load_state_dict(native.model.state_dict())
    gpu = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"{args.model}, random weights, {precision}, batch {batch}, {iters} iterations, {gpu}")
    layers = (6, 12, 18, 24)
    x_native = torch.randn(batch, 3, native.image_size, native.image_size, device=device)
    x = torch.randn(batch, 3, args.size, args.size, device=device)

    def reference() -> object:  # open_clip's own forward runs at the native size only
        with native.autocast():
            return native.model.encode_image(x_native)

    rows = [
        (native.image_size, "open_clip encode_image (reference)", reference),
        (native.image_size, "zsbench encode_image, global only",
         lambda: native.encode_image(x_native)),
        (args.size, "zsbench encode_image, 4 patch layers",
         lambda: bb.encode_image(x, layers=layers)),
        (args.size, "zsbench encode_image, 4 layers + V-V from 6",
         lambda: bb.encode_image(x, layers=layers, vv_from=6, global_ln_post=False)),
    ]
    with torch.inference_mode():
        ref = None
        for size, label, fn in rows:
            ips = images_per_second(fn, batch, iters, cuda)
            ref = ref or ips
            print(f"{size:>4} px  {label:<44} {ips:10.2f} images/s  ({ips / ref:.2f}x reference)")
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
