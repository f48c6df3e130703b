"""Run identity: a result is skipped, reused or compared only when every setting that changes its
numbers is the same (issue: "every number is exactly what it claims")."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.method_fixtures import TINY, ColourDeviation
from zsbench.errors import CheckpointError, ConfigError, DataError
from zsbench.identity import identity_differences, run_identity, settings_folder
from zsbench.protocols import Protocol
from zsbench.registry import METHODS, PROTOCOLS
from zsbench.results import ResultValidationError, read_result, validate_result
from zsbench.runner import RunOptions, run
from zsbench.train import read_checkpoint_metadata

TRAIN = {"epochs": 1, "max_steps": 2, "batch_size": 4}


@pytest.fixture
def data_dir(synthetic_data_dir) -> Path:
    return synthetic_data_dir


pytestmark = pytest.mark.usefixtures("colour_deviation")


def _options(data_dir, out, **kw):
    return RunOptions(data_dir=data_dir, output_dir=out, device="cpu", resolution=64, **kw)


def _run(data_dir, out, **kw):
    return run("test_colour_deviation", "none->synthetic_b", TINY, _options(data_dir, out, **kw))


# -- point 1: smoke runs and seeds ----------------------------------------------------------------

def test_a_smoke_run_is_marked_and_never_skips_the_full_run(data_dir, tmp_path):
    smoke = _run(data_dir, tmp_path, limit=1)
    smoke_result = read_result(smoke[0].path)
    assert smoke_result["smoke"] is True and smoke_result["counts"]["total"]["images"] == 3
    assert smoke[0].path.parent.name.startswith("smoke1-seed111-")

    full = _run(data_dir, tmp_path, skip_existing=True)
    assert [o.status for o in full] == ["written"]
    full_result = read_result(full[0].path)
    assert full_result["smoke"] is False and full_result["counts"]["total"]["images"] == 18
    assert full[0].path != smoke[0].path and smoke[0].path.is_file()  # nothing overwritten
    again = _run(data_dir, tmp_path, skip_existing=True)
    assert [(o.status, o.path) for o in again] == [("skipped", full[0].path)]


def test_a_seed_change_runs_anew_and_records_the_new_seed(data_dir, tmp_path):
    first = _run(data_dir, tmp_path, limit=2)
    second = _run(data_dir, tmp_path, limit=2, seed=7, skip_existing=True)
    assert [o.status for o in second] == ["written"]
    assert second[0].path != first[0].path
    result = read_result(second[0].path)
    assert result["seed"] == 7 and result["identity"]["seed"] == 7
    assert result["protocol"]["seed"] == 7


def test_skip_existing_reruns_a_result_whose_recorded_identity_differs(data_dir, tmp_path):
    path = _run(data_dir, tmp_path)[0].path
    result = json.loads(path.read_text())
    result["identity"]["dataset_fingerprint"] = "sha256:" + "0" * 64  # an older preparation
    path.write_text(json.dumps(result))
    again = _run(data_dir, tmp_path, skip_existing=True)
    assert [o.status for o in again] == ["written"]
    assert read_result(path)["identity"]["dataset_fingerprint"] != "sha256:" + "0" * 64


@pytest.mark.parametrize("spoil", ["nan", "empty", "all_null"])
def test_skip_existing_never_trusts_a_nan_empty_or_null_result(data_dir, tmp_path, spoil):
    path = _run(data_dir, tmp_path)[0].path
    result = json.loads(path.read_text())
    if spoil == "nan":
        result["metrics"]["mean"]["image_auroc"] = math.nan
    elif spoil == "empty":
        result["counts"]["total"]["images"] = 0
    else:
        result["metrics"]["mean"] = dict.fromkeys(result["metrics"]["mean"])
    path.write_text(json.dumps(result))  # json writes NaN as the bare word NaN
    again = _run(data_dir, tmp_path, skip_existing=True)
    assert [o.status for o in again] == ["written"]
    assert read_result(path)["counts"]["total"]["images"] == 18


def test_validation_names_a_nan_field():
    from tests.result_factory import make_result

    result = make_result()
    result["metrics"]["mean"]["pixel_ap"] = math.nan
    with pytest.raises(ResultValidationError, match="metrics/mean/pixel_ap: not a finite"):
        validate_result(result, "x.json")


@pytest.mark.parametrize("field,value", [("limit", 0), ("limit", -1), ("resolution", 0),
                                         ("batch_size", 0)])
def test_options_out_of_range_are_refused_before_any_work(field, value, tmp_path):
    with pytest.raises(ConfigError, match=f"{field} must be >= 1"):
        RunOptions(output_dir=tmp_path, **{field: value})
    assert not any(tmp_path.iterdir())


def test_identity_differences_name_each_changed_setting():
    base = dict(method="m", config={"a": 1}, protocol="none->x", target="x",
                dataset_fingerprint="sha256:1", resolution=64, mask_threshold=0.5, limit=None,
                seed=1, precision="fp32")
    one, two = run_identity(**base), run_identity(**{**base, "seed": 2, "config": {"a": 3}})
    assert identity_differences(one, one) == []
    assert identity_differences(one, two) == ["config.a: 1 -> 3", "seed: 1 -> 2"]
    assert settings_folder(one) != settings_folder(two)
    assert settings_folder(one) == settings_folder({**one, "target": "y"})  # per-target parts
    assert settings_folder(run_identity(**{**base, "limit": 3})).startswith("smoke3-seed1-")


def test_a_weights_file_enters_the_identity_by_content_not_path(tmp_path):
    from zsbench.method import config_hash, make_config

    first, second, other = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    first.write_bytes(b"weights")
    second.write_bytes(b"weights")
    other.write_bytes(b"other weights")

    def chash(path):
        return config_hash("clip", make_config("clip", {"pretrained": str(path)}))

    assert chash(first) == chash(second) != chash(other)


# -- point 2: checkpoints per training identity --------------------------------------------------

def _train_run(data_dir, out, seed=None, lr=None, **kw):
    train = dict(TRAIN, **({} if lr is None else {"lr": lr}))
    return run("coop", "synthetic_a->synthetic_b", TINY,
               _options(data_dir, out, seed=seed, limit=2, train_overrides=train, **kw))


def test_a_seed_or_lr_change_trains_anew_instead_of_reusing_a_checkpoint(data_dir, tmp_path):
    first = read_result(_train_run(data_dir, tmp_path)[0].path)
    second = read_result(_train_run(data_dir, tmp_path, seed=2, lr=0.5)[0].path)
    assert first["checkpoint"]["path"] != second["checkpoint"]["path"]
    meta = read_checkpoint_metadata(second["checkpoint"]["path"])
    assert meta["training"]["config"]["seed"] == 2 and meta["training"]["config"]["lr"] == 0.5
    assert meta["trained_on"] == ["synthetic_a"]
    assert meta["training"]["fingerprints"]["synthetic_a"].startswith("sha256:")
    assert second["identity"]["training"] == meta["training"]
    assert second["trained_on"] == ["synthetic_a"] and second["trained_on_source"] == "training"
    # the same settings again reuse the checkpoint (and say the same training time)
    third = read_result(_train_run(data_dir, tmp_path, seed=2, lr=0.5)[0].path)
    assert third["checkpoint"] == second["checkpoint"]
    assert third["timings"]["train_s"] == second["timings"]["train_s"]


def test_only_the_final_epoch_checkpoint_is_kept(data_dir, tmp_path):
    result = read_result(_train_run(data_dir, tmp_path)[0].path)
    folder = Path(result["checkpoint"]["path"]).parent
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_001.pt"]


def test_a_checkpoint_of_other_training_data_is_refused_naming_both(data_dir, tmp_path):
    checkpoint = read_result(_train_run(data_dir, tmp_path)[0].path)["checkpoint"]["path"]
    options = _options(data_dir, tmp_path / "eval", checkpoint=Path(checkpoint))
    config = read_checkpoint_metadata(checkpoint)["config"]
    with pytest.raises(CheckpointError, match="trained on synthetic_a, but protocol "
                                              "'synthetic_b->synthetic_a' trains on synthetic_b"):
        run("coop", "synthetic_b->synthetic_a", config, options)
    assert not (tmp_path / "eval").exists()
    ok = run("coop", "synthetic_a->synthetic_b", config,
             _options(data_dir, tmp_path / "eval", checkpoint=Path(checkpoint), limit=2))
    assert read_result(ok[0].path)["trained_on_source"] == "checkpoint"


def test_an_unrecorded_checkpoint_cannot_stand_for_several_training_sets(data_dir, tmp_path):
    from tests.test_checkpoint_import import upstream_state, write
    from zsbench.checkpoint_import import import_checkpoint

    upstream = write(tmp_path / "epoch_15.pth", upstream_state())
    imported = import_checkpoint("anomalyclip", upstream, tmp_path / "imported.pt", TINY)
    config = read_checkpoint_metadata(imported)["config"]
    options = _options(data_dir, tmp_path / "eval", checkpoint=imported)
    two_groups = Protocol(id="test-two-groups", train=("synthetic_a",),
                          targets=("synthetic_b", "synthetic_a"),
                          train_overrides={"synthetic_a": ("synthetic_b",)})
    PROTOCOLS.register("test-two-groups", two_groups)
    try:
        with pytest.raises(CheckpointError, match="does not record its training data"):
            run("anomalyclip", "test-two-groups", config, options)
    finally:
        PROTOCOLS.unregister("test-two-groups")
    recorded = import_checkpoint("anomalyclip", upstream, tmp_path / "rec.pt", TINY,
                                 trained_on=["synthetic_b"])
    with pytest.raises(CheckpointError, match="trained on synthetic_b"):
        run("anomalyclip", "synthetic_a->synthetic_b", config,
            _options(data_dir, tmp_path / "eval", checkpoint=recorded))


def test_every_dataset_is_checked_before_any_training(data_dir, tmp_path):
    with pytest.raises(DataError, match="not prepared in .*: mvtec, visa"):
        run("coop", "synthetic_a->synthetic_b,mvtec,visa", TINY,
            _options(data_dir, tmp_path, train_overrides=TRAIN))
    assert not tmp_path.joinpath("checkpoints").exists()
    outcomes = run("test_colour_deviation", "none->synthetic_b,mvtec", TINY,
                   _options(data_dir, tmp_path, limit=1, skip_missing=True))
    assert sorted((o.target, o.status) for o in outcomes) == [("mvtec", "missing"),
                                                              ("synthetic_b", "written")]


# -- point 4: precision --------------------------------------------------------------------------

def test_training_steps_run_in_the_recorded_precision(data_dir, tmp_path, monkeypatch):
    from zsbench.data import load, resolve_source
    from zsbench.method import build_method
    from zsbench.train import TrainConfig, train_method

    seen = []
    method = build_method("coop", TINY)
    original = method.loss

    def spy(batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(batch)

    monkeypatch.setattr(method, "loss", spy)
    records = load(resolve_source("synthetic_a", data_dir))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an enclosing autocast is undone
        train_method(method, [records], TrainConfig(epochs=1, max_steps=1, batch_size=2))
    assert seen == [(False, torch.get_autocast_dtype("cpu"))]
    seen.clear()
    train_method(method, [records], TrainConfig(epochs=1, max_steps=1, batch_size=2,
                                                precision="bf16"))
    assert seen == [(True, torch.bfloat16)]
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train_method(method, [records], TrainConfig(epochs=1, max_steps=1, precision="fp16"))


def test_float32_maps_reach_the_metrics(data_dir, tmp_path, monkeypatch):
    import zsbench.evaluate as evaluate

    class FineMaps(ColourDeviation):
        def _predict(self, images, class_names):
            scores, maps = super()._predict(images, class_names)
            return scores, maps + 1e-4 * torch.rand_like(maps)  # differences below fp16 steps

    seen = []
    original = evaluate.metrics.category_metrics

    def spy(labels, scores, masks, maps, **kwargs):
        seen.append(maps.copy())
        return original(labels, scores, masks, maps, **kwargs)

    monkeypatch.setattr(evaluate.metrics, "category_metrics", spy)
    METHODS.register("test_fine_maps", FineMaps)
    try:
        run("test_fine_maps", "none->synthetic_b", TINY, _options(data_dir, tmp_path, limit=2))
    finally:
        METHODS.unregister("test_fine_maps")
    assert seen and all(m.dtype == np.float32 for m in seen)
    values = np.concatenate([m.ravel() for m in seen])
    assert len(np.unique(values)) > len(np.unique(values.astype(np.float16)))


def test_a_read_only_output_folder_fails_before_any_work(data_dir, tmp_path, monkeypatch,
                                                        read_only):
    from zsbench.atomic import NotWritableError

    folder = tmp_path / "ro"
    folder.mkdir()
    read_only(folder)
    monkeypatch.setattr("zsbench.runner.build_method", lambda *a, **k: pytest.fail("worked"))
    with pytest.raises(NotWritableError, match=f"output folder \\(--output-dir\\) {folder}"):
        _run(data_dir, folder)


def test_a_demo_over_an_older_demo_shows_only_its_own_numbers(tmp_path):
    from zsbench.demo import run_demo

    first = run_demo(tmp_path, ["coop"], epochs=2, build_site=False)
    second = run_demo(tmp_path, ["coop"], epochs=1, build_site=False)
    assert not first.failures and not second.failures
    (old,), (new,) = first.result_files, second.result_files
    assert old != new and old.is_file()  # the older demo's result is kept, but not shown
    assert read_result(new)["identity"]["training"]["config"]["epochs"] == 1
    folder = Path(read_result(new)["checkpoint"]["path"]).parent
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_001.pt"]
    assert sorted(p.name for p in Path(read_result(old)["checkpoint"]["path"]).parent.iterdir()
                  ) == ["epoch_002.pt"]  # only the final epoch is kept
