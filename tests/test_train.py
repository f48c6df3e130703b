"""The trainer and zsbench checkpoints: frozen backbone, resume, skip, metadata, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset

from tests.method_fixtures import SIZE, TINY
from zsbench.backbone import Backbone
from zsbench.method import AnomalyMethod, MethodInfo, Prediction, build_method, config_hash
from zsbench.synthetic import synthetic_records
from zsbench.train import (
    TrainConfig,
    load_checkpoint_into,
    load_method_from_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
    train_method,
)


@pytest.fixture(scope="module")
def dataset() -> Dataset:  # 12 images (3 categories x 2 normal + 2 anomalous): 2 steps of 8
    return Dataset.from_list(synthetic_records("synthetic_a", size=64, n_normal=2,
                                               n_anomalous=2))


def fresh(backbone: Backbone, name: str = "anomalyclip", **overrides) -> AnomalyMethod:
    torch.manual_seed(5)  # the same initial prompts every time
    return build_method(name, {**TINY, **overrides}, backbone=backbone)


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_epochs(backbone: Backbone, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[AnomalyMethod, object, Path, dict, list]:
    """An uninterrupted 2-epoch run, the backbone state before it and the progress calls."""
    method = fresh(backbone)
    backbone_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    calls: list[tuple[str, int, int, bool, bool]] = []

    def progress(description: str, step: int, total: int) -> None:
        calls.append((description, step, total, method.training, backbone.model.training))

    folder = tmp_path_factory.mktemp("uninterrupted")
    outcome = train_method(method, [dataset], TrainConfig(epochs=2), checkpoint_dir=folder,
                           progress=progress)
    return method, outcome, folder, backbone_before, calls


def test_training_changes_only_declared_parameters(backbone: Backbone, two_epochs) -> None:
    method, outcome, folder, backbone_before, calls = two_epochs
    after = backbone.state_dict()
    assert all(torch.equal(backbone_before[k], after[k]) for k in backbone_before)
    initial = fresh(backbone).trainable_state_dict()
    trained = method.trainable_state_dict()
    assert all(not torch.equal(initial[k], trained[k]) for k in initial)
    assert not method.training and not backbone.model.training
    assert [c[1:3] for c in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(c[3] and not c[4] for c in calls)  # method in train mode, backbone in eval
    assert calls[0][0].startswith("train anomalyclip epoch 1/2 loss ")
    assert outcome.epochs == 2 and outcome.checkpoint == folder / "epoch_002.pt"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_002.pt"]  # earlier ones pruned
    assert [h["epoch"] for h in outcome.history] == [1, 2]
    assert all(h["steps"] == 2 and h["loss"] > 0 for h in outcome.history)


def test_training_lowers_the_loss_on_a_fixed_batch(backbone: Backbone, dataset: Dataset,
                                                   two_epochs) -> None:
    from torch.utils.data import default_collate

    from zsbench.evaluate import raw_records
    from zsbench.preprocess import AnomalyImageDataset

    method = two_epochs[0]
    items = AnomalyImageDataset(raw_records(dataset), SIZE, backbone.mean, backbone.std)
    batch = default_collate([items[i] for i in range(len(items))])
    with torch.no_grad():
        before, _ = fresh(backbone).loss(batch)
        after, _ = method.loss(batch)
    assert after < before


def test_checkpoint_metadata(backbone: Backbone, two_epochs) -> None:
    method, outcome, _, _, _ = two_epochs
    meta = read_checkpoint_metadata(outcome.checkpoint)
    assert meta["method"] == "anomalyclip" and meta["epoch"] == 2 and meta["step"] == 4
    assert meta["config_hash"] == config_hash("anomalyclip", method.config)
    assert meta["config"]["image_size"] == SIZE and meta["config"]["feature_layers"] == \
        [6, 12, 18, 24]
    assert meta["backbone"]["name"] == "zsbench-tiny" and meta["backbone"]["pretrained"] is None
    assert meta["train_config"]["lr"] == 1e-3 and meta["train_config"]["betas"] == [0.5, 0.999]
    assert meta["history"] == outcome.history and meta["zsbench_version"]
    raw = torch.load(outcome.checkpoint, weights_only=True)
    assert set(raw["rng"]) >= {"torch", "numpy", "python", "shuffle"}
    assert len(raw["optimizer"]["state"]) == 9  # Adam moments of the 9 prompt tensors


def test_resume_equals_uninterrupted_run(backbone: Backbone, dataset: Dataset, tmp_path: Path,
                                         two_epochs) -> None:
    uninterrupted, full, _, _, _ = two_epochs
    first = train_method(fresh(backbone), [dataset], TrainConfig(epochs=1),
                         checkpoint_dir=tmp_path)
    assert first.checkpoint == tmp_path / "epoch_001.pt"
    resumed_method = fresh(backbone)
    steps: list[int] = []
    resumed = train_method(resumed_method, [dataset], TrainConfig(epochs=2),
                           checkpoint_dir=tmp_path, resume=True,
                           progress=lambda _d, step, _t: steps.append(step))
    assert steps == [3, 4]  # only epoch 2 ran
    assert states_equal(resumed_method.trainable_state_dict(),
                        uninterrupted.trainable_state_dict())
    assert resumed.history[0] == full.history[0] | {"seconds": resumed.history[0]["seconds"]}
    assert resumed.history[1]["loss"] == full.history[1]["loss"]
    # the training time covers the epoch run before the interruption too
    assert resumed.history[0]["seconds"] == first.history[0]["seconds"]
    assert resumed.train_seconds == pytest.approx(first.history[0]["seconds"] +
                                                  resumed.history[1]["seconds"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_002.pt"]  # epoch 1 pruned


def test_existing_final_checkpoint_skips_training(backbone: Backbone, dataset: Dataset,
                                                  two_epochs) -> None:
    trained, full, folder, _, _ = two_epochs
    method = fresh(backbone)
    steps: list[int] = []
    outcome = train_method(method, [dataset], TrainConfig(epochs=2), checkpoint_dir=folder,
                           progress=lambda _d, step, _t: steps.append(step))
    assert steps == [] and outcome.checkpoint == folder / "epoch_002.pt"
    assert outcome.history == full.history
    assert states_equal(method.trainable_state_dict(), trained.trainable_state_dict())


def test_load_method_from_checkpoint_predicts_the_same(backbone: Backbone, two_epochs) -> None:
    trained, outcome, _, _, _ = two_epochs
    rebuilt = load_method_from_checkpoint(outcome.checkpoint, backbone=backbone)
    assert isinstance(rebuilt, type(trained)) and not rebuilt.training
    assert rebuilt.config == trained.config  # JSON lists restored as tuples
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        expected = trained.predict(images, ["object", "object"])
        actual = rebuilt.predict(images, ["object", "object"])
    assert torch.equal(expected.image_scores, actual.image_scores)
    assert torch.equal(expected.anomaly_maps, actual.anomaly_maps)


def test_checkpoint_mismatches_are_clear_errors(backbone: Backbone, two_epochs,
                                                tmp_path: Path) -> None:
    _, outcome, _, _, _ = two_epochs
    with pytest.raises(ValueError, match="for method 'anomalyclip', not 'coop'"):
        load_checkpoint_into(fresh(backbone, "coop"), outcome.checkpoint)
    with pytest.raises(ValueError, match="differing options: sigma"):
        load_checkpoint_into(fresh(backbone, sigma=2.0), outcome.checkpoint)
    foreign = tmp_path / "foreign.pth"
    torch.save({"prompt_learner": {"ctx_pos": torch.zeros(1)}}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pth is not a zsbench checkpoint"):
        read_checkpoint_metadata(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pt is not a zsbench checkpoint"):
        read_checkpoint_metadata(garbage)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_checkpoint_metadata(tmp_path / "missing.pt")


def test_save_checkpoint_is_atomic_and_loadable(backbone: Backbone, tmp_path: Path) -> None:
    method = fresh(backbone, "coop")
    path = save_checkpoint(method, tmp_path / "sub" / "coop.pt", epoch=3)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["coop.pt"]
    other = fresh(backbone, "coop")
    with torch.no_grad():
        other.prompt_learner.ctx.add_(1.0)
    assert load_checkpoint_into(other, path)["epoch"] == 3
    assert states_equal(other.trainable_state_dict(), method.trainable_state_dict())


class _TrainingFree(AnomalyMethod):
    info = MethodInfo(name="training_free_test", title="test", paper="none", trainable=False)

    def _predict(self, images: torch.Tensor, class_names) -> Prediction:
        raise NotImplementedError


def test_untrainable_method_and_empty_dataset_are_clear_errors(backbone: Backbone,
                                                               dataset: Dataset) -> None:
    frozen = _TrainingFree(build_method("coop", TINY, backbone=backbone).config, backbone)
    with pytest.raises(ValueError, match="'training_free_test' is training-free"):
        train_method(frozen, [dataset], TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="training dataset 2 of 2 .* is empty"):
        train_method(fresh(backbone, "coop"), [dataset, Dataset.from_list([])],
                     TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="non-empty list of training datasets"):
        train_method(fresh(backbone, "coop"), [], TrainConfig(epochs=1))


def test_max_steps_and_parameter_group_lr(backbone: Backbone, dataset: Dataset) -> None:
    method = fresh(backbone, "cocoop")
    groups = method.parameter_groups()
    method.parameter_groups = lambda: [{"params": groups[0]["params"][:1]},  # prompt ctx
                                       {"params": groups[0]["params"][1:], "lr": 0.0}]
    before = method.trainable_state_dict()
    outcome = train_method(method, [dataset], TrainConfig(epochs=5, max_steps=1))
    after = method.trainable_state_dict()
    assert outcome.epochs == 1 and outcome.checkpoint is None
    assert outcome.history[0]["steps"] == 1
    assert not torch.equal(before["prompt_learner.ctx"], after["prompt_learner.ctx"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("meta_net"))
