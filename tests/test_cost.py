"""Compute-cost fields (zsbench.cost)."""

from __future__ import annotations

import torch
from torch import nn

from tests.method_fixtures import SIZE, TINY
from zsbench.cost import count_parameters, flops_per_image, measure_cost, method_cost
from zsbench.method import build_method


def test_flops_of_a_linear_layer_equal_the_hand_count():
    layer = nn.Linear(12, 5)
    # one image [1, 12]: 12 x 5 multiply-adds = 2 * 12 * 5 FLOPs (the bias add is not counted)
    assert flops_per_image(layer, torch.zeros(1, 12)) == 2 * 12 * 5


def test_cost_fields_present_and_positive():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 7))
    model[1].bias.requires_grad_(False)
    cost = measure_cost(model, (3, 8, 8), model, batch_size=4, repeats=2)
    for key in ("latency_batch1_ms", "throughput_images_per_s", "peak_memory_bytes",
                "flops_per_image", "trainable_parameters", "total_parameters"):
        assert cost[key] > 0, key
    assert cost["flops_per_image"] == 2 * 3 * 8 * 8 * 7
    assert cost["trainable_parameters"] == 3 * 8 * 8 * 7
    assert cost["total_parameters"] == 3 * 8 * 8 * 7 + 7
    assert count_parameters(model) == (3 * 8 * 8 * 7, 3 * 8 * 8 * 7 + 7)
    assert cost["peak_memory_kind"].startswith("cpu_peak_rss")


def test_method_cost_on_the_tiny_backbone(backbone):
    method = build_method("clip", TINY, backbone=backbone)
    cost = method_cost(method, batch_size=2, repeats=1, training_time_s=0.0)
    for key in ("latency_batch1_ms", "throughput_images_per_s", "peak_memory_bytes",
                "flops_per_image", "total_parameters"):
        assert cost[key] > 0, key
    trainable, total = count_parameters(method)
    assert cost["trainable_parameters"] == trainable == 0  # training-free: backbone frozen
    assert cost["total_parameters"] == total
    assert cost["batch_size"] == 2 and cost["training_time_s"] == 0.0
    assert method.config.image_size == SIZE


def test_a_pool_divides_latency_and_flops_by_its_size():
    layer = nn.Linear(6, 4)
    calls: list[int] = []

    def forward(images):
        calls.append(images.shape[0])
        return layer(images)

    single = measure_cost(forward, (6,), layer, batch_size=2, repeats=1, warmup=0)
    pooled = measure_cost(forward, (6,), layer, batch_size=2, repeats=1, warmup=0, pool=4)
    assert "pool" not in single and pooled["pool"] == 4
    assert pooled["flops_per_image"] == single["flops_per_image"] == 2 * 6 * 4
    assert 4 in calls  # the "one image" calls ran on pools of 4


def test_a_transductive_method_is_timed_on_pools(backbone):
    from tests.method_fixtures import PoolMean
    from zsbench.method import MethodConfig

    PoolMean.batch_sizes = []
    method = PoolMean(MethodConfig(**TINY), backbone)
    cost = method_cost(method, batch_size=3, repeats=1, warmup=0)
    assert cost["pool"] == 3 and set(PoolMean.batch_sizes) == {3}
