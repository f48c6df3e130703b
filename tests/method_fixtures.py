"""Shared pieces of the method tests: the tiny backbone at a small size and trainer batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset

from zsbench.backbone import Backbone, load_backbone
from zsbench.method import AnomalyMethod, MethodInfo, Prediction, build_method
from zsbench.preprocess import AnomalyImageDataset
from zsbench.synthetic import synthetic_records

SIZE = 56  # a 4x4 patch grid on zsbench-tiny (patch 14)
TINY = {"backbone": "zsbench-tiny", "pretrained": None, "image_size": SIZE}


def tiny_backbone(size: int = SIZE) -> Backbone:
    """The random-weight ``zsbench-tiny`` backbone, the same weights every call (seed 0)."""
    torch.manual_seed(0)
    return load_backbone("zsbench-tiny", None, image_size=size)


def seeded_method(name: str, config: dict[str, Any], backbone: Backbone, seed: int = 1
                  ) -> AnomalyMethod:
    """Method ``name`` built on ``backbone`` with torch's RNG seeded first (its own parameters
    are then the same every call)."""
    torch.manual_seed(seed)
    return build_method(name, config, backbone=backbone)


def normal_and_anomalous_batch(backbone: Backbone, category: str = "granite") -> dict[str, Any]:
    """One normal and one anomalous synthetic_a image of ``category``, as the trainer sees
    them (labels [0, 1])."""
    wanted = (f"{category}/test/good/000.png", f"{category}/test/blob/000.png")
    records = [r for r in synthetic_records("synthetic_a", size=64, n_normal=2, n_anomalous=2)
               if r["source_path"] in wanted]
    assert [r["label"] for r in records] == [0, 1]
    return trainer_batch(records, backbone)


def trainer_batch(records: Sequence[dict[str, Any]], backbone: Backbone, size: int = SIZE
                  ) -> dict[str, Any]:
    """Unified records collated as the trainer feeds them to ``method.loss``."""
    dataset = AnomalyImageDataset(Dataset.from_list(list(records)), size, backbone.mean,
                                  backbone.std)
    items = [dataset[i] for i in range(len(dataset))]
    return {"image": torch.stack([item["image"] for item in items]),
            "mask": torch.stack([item["mask"] for item in items]).float(),  # as the trainer
            "label": torch.tensor([item["label"] for item in items]),
            "class_name": [item["class_name"] for item in items]}


class ColourDeviation(AnomalyMethod):
    """A test-only detector: each pixel's colour distance from the image's median colour (a
    fair detector of the synthetic defects, so a pipeline's numbers are checkable)."""

    info = MethodInfo(name="test_colour_deviation", title="Colour deviation (test)",
                      paper="test", trainable=False)

    def _predict(self, images, class_names):
        median = images.flatten(2).median(dim=2).values[:, :, None, None]
        maps = (images - median).norm(dim=1)
        return Prediction(maps.flatten(1).amax(1), maps)


class PoolMean(AnomalyMethod):
    """Transductive test method: a pixel's score is its redness minus the mean redness of the
    whole batch (its reference pool), so it depends on which images are scored together."""

    info = MethodInfo(name="test_pool_mean", title="t", paper="p", trainable=False,
                      transductive=True)
    batch_sizes: list[int] = []

    def _predict(self, images, class_names):
        type(self).batch_sizes.append(images.shape[0])
        redness = images[:, 0] - images[:, 1]
        maps = redness - redness.mean(dim=0, keepdim=True)
        return Prediction(maps.flatten(1).amax(1), maps)
