"""Data-parallel evaluation and DDP training on CPU with the gloo backend, 2 processes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.distributed_workers import (
    TINY,
    build_probe_and_data,
    register_test_methods,
    run_worker,
    train_worker,
)
from zsbench.distributed import shard, world_from_env
from zsbench.results import read_result
from zsbench.runner import RunOptions, run
from zsbench.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> None:
    mp.start_processes(fn, args=(2, _free_port(), *args), nprocs=2, start_method="spawn",
                       join=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """synthetic_b with 5 images per category (15 in all): not a multiple of 2."""
    from zsbench.prepare import prepare

    root = tmp_path_factory.mktemp("dist")
    write_synthetic_dataset(root / "raw", "synthetic_b", size=64, n_train=1, n_normal=3,
                            n_anomalous=2)
    prepare("synthetic_b", root / "raw", root / "data")
    return root / "data"


def test_shards_cover_every_item_exactly_once():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            parts = [shard(list(range(n)), r, world) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_world_from_torchrun_and_slurm_variables():
    assert world_from_env({}).world_size == 1
    info = world_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (1, 4, 1, False)
    slurm = world_from_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"})
    assert (slurm.rank, slurm.world_size) == (3, 8)
    with pytest.raises(ValueError, match="RANK=4 is not in 0..1"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("method,overrides,batch_size", [
    ("test_colour_deviation", TINY, 4),  # inductive: images sharded per category
    ("clip", TINY, 1),  # a real method on the tiny backbone
    ("anovl", {**TINY, "tta_steps": 1}, 2),  # transductive: whole categories per rank
])
def test_distributed_evaluation_equals_one_process(data_dir, tmp_path, method, overrides,
                                                   batch_size):
    register_test_methods()
    common = dict(data_dir=str(data_dir), device="cpu", resolution=64, batch_size=batch_size,
                  save_maps=1)
    single = run(method, "none->synthetic_b", overrides,
                 RunOptions(output_dir=tmp_path / "one", **common))
    report = tmp_path / "report.json"
    _spawn(run_worker, method, "none->synthetic_b", overrides,
           dict(output_dir=str(tmp_path / "two"), **common), str(report))
    (target, status, path), = json.loads(report.read_text())
    assert (target, status) == ("synthetic_b", "written")
    one, two = read_result(single[0].path), read_result(path)
    assert two["counts"] == one["counts"] and one["counts"]["total"]["images"] == 15
    for cat, values in one["metrics"]["per_category"].items():
        for metric, value in values.items():
            other = two["metrics"]["per_category"][cat][metric]
            assert (value is None and other is None) or abs(value - other) <= 1e-9, (cat, metric)
    assert two["metrics"]["mean"] == pytest.approx(one["metrics"]["mean"], abs=1e-9)
    assert len(two["samples"]) == len(one["samples"]) == 3  # one overlay per category
    assert len(list((tmp_path / "two").rglob("*.json"))) == 1  # rank 0 alone wrote


@pytest.mark.parametrize("batch_size", [5, 11])  # 5,5,2 and 11,1: a rank with an empty slice
def test_ddp_training_equals_one_process(tmp_path, batch_size):
    from zsbench.train import TrainConfig, train_method

    method, records = build_probe_and_data()
    train_method(method, [records], TrainConfig(epochs=1, batch_size=batch_size, seed=3))
    single = method.trainable_state_dict()
    report = tmp_path / "ddp.pt"
    _spawn(train_worker, batch_size, str(report))
    ddp = torch.load(report, weights_only=True)
    initial = build_probe_and_data()[0].trainable_state_dict()
    for key in single:
        assert not torch.equal(single[key], initial[key])  # it trained
        torch.testing.assert_close(ddp[key], single[key], atol=1e-5, rtol=0)


def test_a_gradient_missing_on_every_rank_stays_none(tmp_path):
    """A staged method's frozen stage has no gradient anywhere: it must stay None (Adam skips
    it) instead of becoming zeros that Adam's momentum would still move."""
    from tests.distributed_workers import gradient_flags_worker

    report = tmp_path / "flags.json"
    _spawn(gradient_flags_worker, str(report))
    assert json.loads(report.read_text()) == {"a": [1.0, 1.0, 1.0], "b": True}


def test_ddp_training_resumes_under_torchrun(tmp_path):
    from zsbench.train import TrainConfig, train_method

    method, records = build_probe_and_data()
    train_method(method, [records], TrainConfig(epochs=2, batch_size=5, seed=3))
    single = method.trainable_state_dict()
    folder, report = tmp_path / "ckpt", tmp_path / "ddp.pt"
    _spawn(train_worker, 5, str(report), 1, str(folder))  # epoch 1, then "interrupted"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_001.pt"]  # rank 0 alone wrote
    _spawn(train_worker, 5, str(report), 2, str(folder), True)  # resumed to epoch 2
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_002.pt"]
    ddp = torch.load(report, weights_only=True)
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-5, rtol=0)
