"""Process bodies for the torch.distributed tests (importable by spawned children)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zsbench.method import AnomalyMethod, MethodInfo, Prediction

TINY = {"backbone": "zsbench-tiny", "pretrained": None, "image_size": 56}


class LinearProbe(AnomalyMethod):
    """A trainable test method whose loss is a mean over samples: logistic regression of the
    label on the frozen global embedding."""

    info = MethodInfo(name="test_linear_probe", title="Linear probe (test)", paper="test",
                      trainable=True)

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.weight = torch.nn.Parameter(0.01 * torch.randn(backbone.embed_dim))
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def _logits(self, images):
        with torch.no_grad():
            features = self.backbone.encode_image(images).global_embedding
        return features @ self.weight + self.bias

    def _predict(self, images, class_names):
        scores = torch.sigmoid(self._logits(images))
        return Prediction(scores, scores[:, None, None].expand(-1, *images.shape[-2:]))

    def loss(self, batch):
        loss = F.binary_cross_entropy_with_logits(self._logits(batch["image"]),
                                                  batch["label"].float())
        return loss, {}

    def parameter_groups(self):
        return [{"params": [self.weight, self.bias]}]


def register_test_methods() -> None:
    from tests.method_fixtures import ColourDeviation
    from zsbench.registry import METHODS

    for name, cls in (("test_colour_deviation", ColourDeviation),
                      ("test_linear_probe", LinearProbe)):
        if name not in METHODS:
            METHODS.register(name, cls)


def _join(rank: int, world_size: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def run_worker(rank: int, world_size: int, port: int, method: str, protocol: str,
               overrides: dict[str, Any], options: dict[str, Any], report: str) -> None:
    """``zsbench.runner.run`` in one process of a gloo group; rank 0 reports the outcomes."""
    import torch.distributed as dist

    from zsbench.runner import RunOptions, run

    _join(rank, world_size, port)
    register_test_methods()
    outcomes = run(method, protocol, overrides, RunOptions(**options))
    if rank == 0:
        Path(report).write_text(json.dumps([[o.target, o.status, str(o.path)] for o in outcomes]))
    dist.destroy_process_group()


def train_worker(rank: int, world_size: int, port: int, batch_size: int, report: str,
                 epochs: int = 1, checkpoint_dir: str | None = None, resume: bool = False
                 ) -> None:
    """The linear probe trained in a gloo group (optionally with checkpoints, resumed); rank 0
    saves the trained parameters to ``report``."""
    import torch.distributed as dist

    from zsbench.distributed import init_from_env

    _join(rank, world_size, port)
    init_from_env("cpu")
    method, records = build_probe_and_data()
    from zsbench.train import TrainConfig, train_method

    train_method(method, [records], TrainConfig(epochs=epochs, batch_size=batch_size, seed=3),
                 checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
                 resume=resume)
    if rank == 0:
        torch.save(method.trainable_state_dict(), report)
    dist.destroy_process_group()


def build_probe_and_data() -> tuple[LinearProbe, Any]:
    """The same initial probe and the same 12 training images in every process."""
    from datasets import Dataset

    from zsbench.method import build_method
    from zsbench.synthetic import synthetic_records

    register_test_methods()
    torch.manual_seed(0)
    method = build_method("test_linear_probe", TINY)
    records = Dataset.from_list(synthetic_records("synthetic_a", size=56, n_train=0,
                                                  n_normal=2, n_anomalous=2))
    return method, records


def gradient_flags_worker(rank: int, world_size: int, port: int, report: str) -> None:
    """Rank 0 has a gradient for ``a`` only, rank 1 for nothing; ``b`` has none anywhere."""
    from zsbench.distributed import all_reduce_gradients, init_from_env

    _join(rank, world_size, port)
    init_from_env("cpu")
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    if rank == 0:
        a.grad = torch.full((3,), 2.0)
    all_reduce_gradients([a, b], weight=0.5)
    if rank == 0:
        Path(report).write_text(json.dumps({"a": a.grad.tolist(), "b": b.grad is None}))
    torch.distributed.destroy_process_group()
