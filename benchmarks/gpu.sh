#!/usr/bin/env bash
# The GPU benchmark in one command (ViT-L-14-336 at 518 px, random weights): forward images/s in
# fp32, bf16 and fp16, and end-to-end images/s with the fraction of time the GPU is busy; then
# MuSc's peak memory on a 200-image category (measured against its estimate).
# On a machine without open_clip, install the wheels carried beside the tree first:
#   pip install --no-deps .whl/*.whl && pip install --no-deps -e .
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python benchmarks/bench_gpu.py "$@"
python benchmarks/bench_musc_memory.py --images 200
