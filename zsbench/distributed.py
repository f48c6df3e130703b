"""torch.distributed for zsbench: who am I, exact sharding, gathering to rank 0.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) or Slurm (``SLURM_PROCID``/
``SLURM_NTASKS``/``SLURM_LOCALID``, as CLIP_benchmark reads them) a process knows its rank and the
world size. Evaluation shards a category's images with :func:`shard` — every image exactly once,
no padded duplicates (PyTorch's ``DistributedSampler`` repeats samples to even out the shards,
which corrupts AUROC and AUPRO) — and gathers scores and maps to rank 0, which alone computes the
metrics and writes the result. Training averages the gradients of the trainable parameters only
(:func:`all_reduce_gradients`), weighted by each rank's share of the global batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WorldInfo:
    """This process's place among the processes of a job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(env: dict[str, str] | None = None) -> WorldInfo:
    """Rank, world size and local rank from torchrun's or Slurm's variables (1 process when
    neither is set)."""
    env = dict(os.environ if env is None else env)
    for rank, size, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"),
                              ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if rank in env and size in env:
            info = WorldInfo(int(env[rank]), int(env[size]), int(env.get(local, 0)))
            if not 0 <= info.rank < info.world_size:
                raise ValueError(f"{rank}={info.rank} is not in 0..{info.world_size - 1}")
            return info
    return WorldInfo()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current_world() -> WorldInfo:
    """The initialised process group's view, or a single process."""
    if not is_distributed():
        return WorldInfo()
    return WorldInfo(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(device: str) -> WorldInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA) when the world has
    more than one process; a no-op otherwise or when already initialised. Returns the world."""
    info = world_from_env()
    if info.world_size <= 1 or is_distributed():
        return current_world() if is_distributed() else info
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR is not set: start the processes with "
                           "torchrun (or set MASTER_ADDR/MASTER_PORT)")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(minutes=60))
    logger.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return info


def local_device(device: str, world: WorldInfo) -> str:
    """``cuda`` becomes this process's own GPU (``cuda:<local rank>``) in a multi-GPU world."""
    if device == "cuda" and world.world_size > 1:
        return f"cuda:{world.local_rank}"
    return device


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Every ``world_size``-th item from ``rank``: the shards cover ``items`` exactly once
    (sizes differ by at most one; no padding, no duplicates)."""
    return list(items[rank::world_size])


def gather_to_main(value: T) -> list[T] | None:
    """Every rank's ``value`` on rank 0 (in rank order), None on the other ranks."""
    if not is_distributed():
        return [value]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, out, dst=0)
    return out


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter], weight: float) -> None:
    """Replace each gradient by the sum over ranks of ``weight`` x the rank's gradient (a
    gradient missing on some ranks counts as zero there). With ``weight`` = this rank's share of
    the global batch and a loss that is a mean over samples, the result is the gradient of the
    global batch's mean loss. A parameter that has no gradient on any rank keeps ``grad=None``
    (a frozen stage of a staged method), so the optimizer skips it as in one process."""
    if not is_distributed():
        return
    parameters = list(parameters)
    has_grad = torch.tensor([float(p.grad is not None) for p in parameters], dtype=torch.float32)
    dist.all_reduce(has_grad, op=dist.ReduceOp.SUM)
    for p, anywhere in zip(parameters, has_grad.tolist(), strict=True):
        if not anywhere:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.mul_(weight)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def all_reduce_values(values: dict[str, float], weight: float) -> dict[str, float]:
    """The ``weight``-weighted sum over ranks of each value (e.g. logged losses)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    packed = torch.tensor([values[k] * weight for k in keys], dtype=torch.float64)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return dict(zip(keys, packed.tolist(), strict=True))
