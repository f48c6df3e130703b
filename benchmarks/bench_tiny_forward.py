"""Forward time of the tiny random-weight backbone on CPU (the test suite's backbone).

Times ``encode_image`` with four patch layers and the V-V path from layer 6 on a batch of 8 at
112 and 224 px (one warm-up call, then the median of ``--iters`` calls). A quick look at whether
the test suite's backbone got slower; it asserts nothing about speed.

    python benchmarks/bench_tiny_forward.py --iters 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zsbench.backbone import load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    tiny = load_backbone("zsbench-tiny")
    for size in (112, 224):
        batch = torch.randn(args.batch, 3, size, size)
        times = []
        with torch.no_grad():
            tiny.encode_image(batch, layers=(6, 12, 18, 24), vv_from=6)  # warm-up
            for _ in range(args.iters):
                start = time.perf_counter()
                features = tiny.encode_image(batch, layers=(6, 12, 18, 24), vv_from=6)
                times.append(time.perf_counter() - start)
        tokens = tuple(features.patch_tokens[24].shape)
        print(f"tiny encode_image batch {args.batch} at {size}px, 4 layers, V-V: "
              f"{1000 * statistics.median(times):.1f} ms (median of {args.iters}; "
              f"patch tokens {tokens})")


if __name__ == "__main__":
    main()
