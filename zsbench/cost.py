"""Compute cost of a method: latency, throughput, peak memory, parameters, FLOPs per image.

:func:`measure_cost` times any ``forward(images)`` on random images; :func:`method_cost` wraps
an :class:`~zsbench.method.AnomalyMethod`'s ``predict``. All fields go into the result JSON.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the measured calls (reset
first); on CPU the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` where Linux allows it, else the lifetime peak ``ru_maxrss``), which
includes everything the process holds, not only the method. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` on one image (a multiply-add counts 2; operators it
does not know, e.g. elementwise ones, count 0).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared parameters counted once."""
    params = {id(p): p for p in module.parameters()}.values()
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def flops_per_image(forward: Callable[[Tensor], Any], image: Tensor) -> int:
    """FLOPs of ``forward`` on a batch of one ``image`` ``[1, ...]`` (FlopCounterMode)."""
    if image.shape[0] != 1:
        raise ValueError(f"flops_per_image needs a batch of one image; got {list(image.shape)}")
    return _flops(forward, image)


def _flops(forward: Callable[[Tensor], Any], images: Tensor) -> int:
    """FLOPs of one call of ``forward`` on ``images`` (FlopCounterMode)."""
    counter = FlopCounterMode(display=False)
    with counter:
        forward(images)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _timed(forward: Callable[[Tensor], Any], images: Tensor, repeats: int,
           device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        forward(images)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure_cost(forward: Callable[[Tensor], Any], image_shape: Sequence[int],
                 module: nn.Module | None = None, *, batch_size: int = 8, repeats: int = 3,
                 warmup: int = 1, device: str | torch.device | None = None,
                 training_time_s: float | None = None, seed: int = 0,
                 pool: int = 1) -> dict[str, Any]:
    """Cost of ``forward`` on random images ``[B, *image_shape]``.

    ``pool`` > 1 (a transductive method, which scores an image only among others): latency
    and FLOPs per image are those of one call on ``pool`` images divided by ``pool``, and the
    result records ``pool``.

    Returns ``latency_batch1_ms`` (median of ``repeats`` calls on one image),
    ``throughput_images_per_s`` (``batch_size`` x repeats / their total time),
    ``peak_memory_bytes`` and ``peak_memory_kind``, ``flops_per_image``,
    ``trainable_parameters``/``total_parameters`` (of ``module``), ``device``,
    ``training_time_s`` (as given) and the settings used."""
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"batch_size and repeats must be >= 1 and warmup >= 0; got "
                         f"{batch_size}, {repeats}, {warmup}")
    if device is None:
        device = next(module.parameters()).device if module is not None and any(
            True for _ in module.parameters()) else torch.device("cpu")
    device = torch.device(device)
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    generator = torch.Generator().manual_seed(seed)
    one = torch.rand((pool, *image_shape), generator=generator).to(device)
    batch = torch.rand((batch_size, *image_shape), generator=generator).to(device)
    for _ in range(warmup):
        forward(one)
        forward(batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        memory_kind = "cuda_max_memory_allocated"
    else:
        memory_kind = "cpu_peak_rss" if _reset_peak_rss() else "cpu_peak_rss_process_lifetime"
    latency = _timed(forward, one, repeats, device)
    batch_times = _timed(forward, batch, repeats, device)
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        peak = _peak_rss_bytes() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainable, total = count_parameters(module) if module is not None else (None, None)
    cpu_name = platform.processor() or platform.machine()
    return {
        "latency_batch1_ms": 1000.0 * statistics.median(latency) / pool,
        "throughput_images_per_s": batch_size * repeats / sum(batch_times),
        "batch_size": batch_size,
        "repeats": repeats,
        "peak_memory_bytes": peak,
        "peak_memory_kind": memory_kind,
        "flops_per_image": _flops(forward, one) // pool,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "device": str(device) if device.type != "cpu" else f"cpu ({cpu_name})",
        "training_time_s": training_time_s,
        **({"pool": pool} if pool > 1 else {}),
    }


def method_cost(method: nn.Module, *, class_name: str = "object", batch_size: int = 8,
                repeats: int = 3, warmup: int = 1, training_time_s: float | None = None
                ) -> dict[str, Any]:
    """:func:`measure_cost` of an ``AnomalyMethod.predict`` at its ``config.image_size``, under
    ``torch.inference_mode`` (``torch.no_grad`` for test-time-adapting methods). A transductive
    method is timed on pools of ``batch_size`` images (per-image figures, ``pool`` recorded)."""
    size = int(method.config.image_size)
    grad_mode = torch.no_grad if getattr(method, "needs_grad_at_test", False) \
        else torch.inference_mode
    was_training = method.training
    method.eval()

    def forward(images: Tensor) -> Any:
        with grad_mode():
            return method.predict(images, [class_name] * images.shape[0])

    try:
        pool = max(2, batch_size) if method.info.transductive else 1
        return measure_cost(forward, (3, size, size), method, batch_size=batch_size,
                            repeats=repeats, warmup=warmup, training_time_s=training_time_s,
                            pool=pool)
    finally:
        method.train(was_training)
