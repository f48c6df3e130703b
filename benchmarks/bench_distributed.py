"""Data-parallel evaluation under torchrun against one process, on this machine's CPUs.

Both sides run the same ``zsbench run`` on the same prepared synthetic dataset as child
processes: one process with every core (``torch`` threads = cores), and ``torchrun
--nproc-per-node N`` with cores / N threads per rank (gloo). The sides alternate and repeat
(shared machines are noisy); the figures are medians with min-max of the evaluation time that each
result JSON records (``timings.eval_s``, rank 0's wall time of the whole evaluation including the
gather) and of the whole command (start-up included). The metrics of both sides must be equal.

    python benchmarks/bench_distributed.py                      # ViT-B-16 @ 224, 2 ranks
    python benchmarks/bench_distributed.py --model tiny --images 12 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "tiny": ["--backbone", "zsbench-tiny", "--pretrained", "none", "--image-size", "112"],
    "vit-b-16": ["--backbone", "ViT-B-16", "--pretrained", "none", "--image-size", "224"],
}


def prepare(root: Path, images: int) -> Path:
    from zsbench.prepare import prepare as prepare_dataset
    from zsbench.synthetic import write_synthetic_dataset

    per_category = max(2, images // 3)
    write_synthetic_dataset(root / "raw", "synthetic_b", size=128, n_train=1,
                            n_normal=per_category - per_category // 2,
                            n_anomalous=per_category // 2)
    prepare_dataset("synthetic_b", root / "raw", root / "data")
    return root / "data"


def one_side(ranks: int, data: Path, out: Path, model: list[str], cores: int
             ) -> tuple[float, float, dict]:
    args = ["run", "-m", "clip", "-p", "none->synthetic_b", "--data-dir", str(data),
            "--output-dir", str(out), "--resolution", "112", "--device", "cpu",
            "--batch-size", "4", *model]
    threads = str(max(1, cores // ranks))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if ranks == 1:
        command = [sys.executable, "-m", "zsbench", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={ranks}", "-m", "zsbench", *args]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    result = json.loads(next(out.rglob("synthetic_b.json")).read_text())
    return result["timings"]["eval_s"], wall, result["metrics"]["mean"]


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-b-16")
    parser.add_argument("--images", type=int, default=48, help="images in the dataset")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = prepare(root, args.images)
        timings: dict[int, tuple[list[float], list[float]]] = {1: ([], []), args.ranks: ([], [])}
        means = {}
        for repeat in range(args.repeats):
            order = [1, args.ranks] if repeat % 2 == 0 else [args.ranks, 1]
            for ranks in order:
                out = root / f"out-{ranks}-{repeat}"
                eval_s, wall, mean = one_side(ranks, data, out, MODELS[args.model], cores)
                timings[ranks][0].append(eval_s)
                timings[ranks][1].append(wall)
                means[ranks] = mean
    print(f"{args.model}, {args.images} images at 112 px, {cores} cores, "
          f"{args.repeats} alternating repeats")
    for ranks, (eval_times, walls) in timings.items():
        label = "1 process   " if ranks == 1 else f"{ranks} ranks gloo"
        print(f"  {label}: evaluation {summary(eval_times)}; command {summary(walls)}")
    speedup = statistics.median(timings[1][0]) / statistics.median(timings[args.ranks][0])
    print(f"  speed-up of the evaluation: {speedup:.2f}x")
    differences = {k: abs((means[1][k] or 0) - (means[args.ranks][k] or 0)) for k in means[1]}
    print(f"  largest metric difference between the sides: {max(differences.values()):.2e}")


if __name__ == "__main__":
    main()
