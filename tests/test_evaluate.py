"""The evaluator's NA handling across categories, subsets and result counts."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from zsbench.evaluate import EvalSettings, evaluate_dataset, select_indices
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction
from zsbench.synthetic import synthetic_records


class RedShift(AnomalyMethod):
    """Scores pixels by how much redder than green they are (the synthetic defect signature)."""

    info = MethodInfo(name="test_red_shift", title="Red shift (test)", paper="test",
                      trainable=False)

    def _predict(self, images, class_names):
        maps = images[:, 0] - images[:, 1]
        return Prediction(maps.flatten(1).amax(1), maps)


@pytest.fixture(scope="module")
def method():
    from zsbench.backbone import load_backbone

    config = MethodConfig(backbone="zsbench-tiny", pretrained=None, image_size=56)
    return RedShift(config, load_backbone("zsbench-tiny", None, image_size=56))


@pytest.fixture(scope="module")
def records():
    return synthetic_records("synthetic_b", size=64, n_train=0, n_normal=2, n_anomalous=2)


SETTINGS = EvalSettings(resolution=56, batch_size=4)


def test_a_category_without_anomalies_is_na_and_left_out_of_the_mean(method, records):
    kept = [r for r in records if not (r["category"] == "checker" and r["label"] == 1)]
    out = evaluate_dataset(method, Dataset.from_list(kept), SETTINGS)
    checker = out.per_category["checker"]
    assert checker["image_auroc"] is None and checker["pixel_auroc"] is None
    assert checker["aupro"] is None
    others = [out.per_category[c]["pixel_auroc"] for c in ("fibre", "tablet")]
    assert out.mean["pixel_auroc"] == pytest.approx(sum(others) / 2)
    assert out.categories_used["pixel_auroc"] == 2 and out.categories_used["image_auroc"] == 2
    assert out.mean["pixel_auroc"] > 0.9  # the detector matches the synthetic defects
    assert out.counts["per_category"]["checker"] == {"images": 2, "anomalous": 0,
                                                     "with_mask": 0, "regions": 0}


def test_a_maskless_dataset_has_image_metrics_only(method, records):
    maskless = [{**r, "mask": None, "has_mask": False} for r in records]
    out = evaluate_dataset(method, Dataset.from_list(maskless), SETTINGS)
    assert out.mean["pixel_auroc"] is None and out.categories_used["pixel_auroc"] == 0
    assert out.mean["aupro"] is None and out.mean["aupro_legacy"] is None
    assert out.categories_used["image_auroc"] == 3
    assert 0.0 <= out.mean["image_auroc"] <= 1.0
    assert out.counts["total"]["with_mask"] == 0


def test_an_anomalous_only_dataset_has_pixel_metrics_only(method, records):
    anomalous = [r for r in records if r["label"] == 1]
    out = evaluate_dataset(method, Dataset.from_list(anomalous), SETTINGS)
    assert out.mean["image_auroc"] is None and out.categories_used["image_auroc"] == 0
    assert out.mean["pixel_auroc"] is not None and out.categories_used["pixel_auroc"] == 3


def test_limit_selection_is_seeded_stratified_and_bounded():
    categories = ["a"] * 10 + ["b"] * 3
    labels = [0] * 6 + [1] * 4 + [0, 1, 1]
    picked = select_indices(categories, labels, limit=4, seed=0)
    assert picked["b"] == [10, 11, 12]  # fewer than the limit: all kept
    assert len(picked["a"]) == 4 and sum(labels[i] for i in picked["a"]) == 2
    assert picked == select_indices(categories, labels, limit=4, seed=0)
    assert picked != select_indices(categories, labels, limit=4, seed=1)


def test_predict_runs_under_inference_mode(method, records):
    seen = []

    class Spy(RedShift):
        def _predict(self, images, class_names):
            seen.append(torch.is_inference_mode_enabled())
            return super()._predict(images, class_names)

    spy = Spy(method.config, method.backbone)
    evaluate_dataset(spy, Dataset.from_list(records[:4]), SETTINGS)
    assert seen and all(seen)


def test_the_evaluator_starts_every_category_before_its_images(records):
    from zsbench.backbone import load_backbone

    events = []

    class Recording(RedShift):
        def start_category(self, category):
            events.append(("start", category))

        def _predict(self, images, class_names):
            events.append(("predict", len(class_names)))
            return super()._predict(images, class_names)

    config = MethodConfig(backbone="zsbench-tiny", pretrained=None, image_size=56)
    recording = Recording(config, load_backbone("zsbench-tiny", None, image_size=56))
    evaluate_dataset(recording, Dataset.from_list(records), EvalSettings(resolution=56,
                                                                         batch_size=8))
    starts = [i for i, e in enumerate(events) if e[0] == "start"]
    assert [events[i][1] for i in starts] == ["checker", "fibre", "tablet"]
    # each category: its start, then its 4 images in one batch
    assert all(events[i + 1] == ("predict", 4) for i in starts)


def test_loader_workers_and_background_metrics_give_the_same_evaluation(method, records):
    data = Dataset.from_list(records)
    inline = evaluate_dataset(method, data, EvalSettings(resolution=56, batch_size=3,
                                                         num_workers=0, metrics_workers=0))
    piped = evaluate_dataset(method, data, EvalSettings(resolution=56, batch_size=3,
                                                        num_workers=1, metrics_workers=2))
    assert piped.per_category == inline.per_category and piped.counts == inline.counts
    assert list(piped.per_category) == ["checker", "fibre", "tablet"]


def test_category_batches_never_straddle_categories():
    from zsbench.evaluate import CategoryBatches

    sampler = CategoryBatches([5, 0, 2], batch_size=2)
    assert sampler.batches == [[0, 1], [2, 3], [4], [5, 6]]
    assert sampler.batches_per_category == [3, 0, 1] and len(sampler) == 4


def test_an_error_in_background_metrics_is_raised(method, records, monkeypatch):
    import zsbench.evaluate as evaluate

    def broken(*args, **kwargs):
        raise ZeroDivisionError("metrics bug")

    monkeypatch.setattr(evaluate.metrics, "category_metrics", broken)
    with pytest.raises(ZeroDivisionError, match="metrics bug"):
        evaluate_dataset(method, Dataset.from_list(records),
                         EvalSettings(resolution=56, metrics_workers=1))


def test_streamed_maps_within_a_memory_budget_give_the_same_evaluation(method, records,
                                                                       tmp_path):
    from zsbench.metrics_store import _BASE_BYTES

    data = Dataset.from_list(records)
    kept = evaluate_dataset(method, data, EvalSettings(resolution=56, save_maps=1),
                            samples_dir=tmp_path / "kept")
    # a budget just above the fixed overhead: every category spills to disk
    spilled = evaluate_dataset(method, data, EvalSettings(resolution=56, save_maps=1,
                                                          max_memory=_BASE_BYTES + 1000),
                               samples_dir=tmp_path / "spilled")
    assert spilled.counts == kept.counts
    for cat, values in kept.per_category.items():
        for metric, value in values.items():
            other = spilled.per_category[cat][metric]
            assert (value is None and other is None) or abs(value - other) <= 1e-12
    assert spilled.samples_scale == kept.samples_scale
    assert [p.name for p in spilled.samples] == [p.name for p in kept.samples]
    for a, b in zip(kept.samples, spilled.samples, strict=True):
        assert a.read_bytes() == b.read_bytes()  # the same overlays, on the same scale
