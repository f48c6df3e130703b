"""The contract of :class:`zsbench.method.AnomalyMethod` that every method meets through the base
class (the template ``predict``, the registry key, the declared hooks), and the stable Python API
for users' scripts."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from tests.method_fixtures import tiny_backbone
from zsbench.errors import ConfigError
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction
from zsbench.registry import METHODS, register_method
from zsbench.synthetic import synthetic_records

SIZE = 56


class Scripted(AnomalyMethod):
    """Returns whatever ``output(images)`` gives: a double to probe the base-class checks."""

    info = MethodInfo(name="test_scripted", title="Scripted (test)", paper="test",
                      trainable=False)

    def __init__(self, config, backbone, output=None):
        super().__init__(config, backbone)
        self.output = output or (lambda images: Prediction(images.mean(dim=(1, 2, 3)),
                                                           images[:, 0]))
        self.seen_names: list[list[str]] = []

    def _predict(self, images, class_names):
        self.seen_names.append(class_names)
        return self.output(images)


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(SIZE)


def scripted(backbone, output=None) -> Scripted:
    config = MethodConfig(backbone="zsbench-tiny", pretrained=None, image_size=SIZE)
    return Scripted(config, backbone, output)


def test_predict_checks_the_inputs_with_clear_errors(backbone) -> None:
    method = scripted(backbone)
    images = torch.randn(2, 3, SIZE, SIZE)
    scores, maps = method.predict(images, ["a", "b"])
    torch.testing.assert_close(scores, images.mean(dim=(1, 2, 3)))
    assert maps.shape == (2, SIZE, SIZE) and method.seen_names == [["a", "b"]]
    method.predict(images[:1], "bottle")  # one word for one image
    assert method.seen_names[-1] == ["bottle"]
    bad_images = [(torch.randn(2, 3, 112, 112), r"got Tensor \[2, 3, 112, 112\]"),
                  (torch.randn(2, 1, SIZE, SIZE), r"got Tensor \[2, 1, 56, 56\]"),
                  (torch.randn(3, SIZE, SIZE), r"got Tensor \[3, 56, 56\]"),
                  (images.numpy(), r"got ndarray \[2, 3, 56, 56\]")]
    for bad, message in bad_images:
        with pytest.raises(ValueError, match=r"test_scripted expects images \[B, 3, 56, 56\] "
                                             r"\(config image_size=56\); " + message):
            method.predict(bad, ["a", "b"])
    with pytest.raises(ValueError, match="test_scripted needs one class name per image: got 1 "
                                         "class names for 2 images"):
        method.predict(images, ["a"])
    assert len(method.seen_names) == 2  # no bad batch reached the method's own step


@pytest.mark.parametrize(("output", "message"), [
    (lambda x: Prediction(x.mean(dim=(1, 2, 3))[:1], x[:, 0]),
     r"returned image scores \[1\] and maps \[2, 56, 56\] for 2 images; expected \[2\] and "
     r"\[2, H, W\]"),
    (lambda x: Prediction(x.mean(dim=(1, 2, 3)), x[:, 0, 0]),
     r"returned image scores \[2\] and maps \[2, 56\]"),
    (lambda x: Prediction(x.mean(dim=(1, 2, 3))[:, None], x[:, 0]),
     r"returned image scores \[2, 1\]"),
    (lambda x: Prediction(x.mean(dim=(1, 2, 3)), x[:, 0].index_fill(1, torch.tensor([3]),
                                                                    math.nan)),
     "returned non-finite anomaly maps"),
    (lambda x: Prediction(x.mean(dim=(1, 2, 3)).index_fill(0, torch.tensor([1]), math.inf),
                          x[:, 0]),
     "returned non-finite image scores"),
])
def test_predict_checks_the_output_with_clear_errors(backbone, output, message) -> None:
    with pytest.raises(RuntimeError, match="test_scripted._predict " + message):
        scripted(backbone, output).predict(torch.randn(2, 3, SIZE, SIZE), ["a", "b"])


def test_maps_at_another_size_than_the_input_are_accepted(backbone) -> None:
    coarse = scripted(backbone, lambda x: Prediction(x.mean(dim=(1, 2, 3)), x[:, 0, :8, :8]))
    assert coarse.predict(torch.randn(2, 3, SIZE, SIZE), ["a", "b"]).anomaly_maps.shape == \
        (2, 8, 8)


def test_every_builtin_method_implements_its_step_under_the_template_predict() -> None:
    names = METHODS.names()
    assert {"anomalyclip", "clip", "coop", "winclip", "anovl"} <= set(names)
    for name in names:
        cls = METHODS.get(name)
        if METHODS.entry(name).source != "built-in" or name.startswith("test_"):
            continue
        assert cls.predict is AnomalyMethod.predict, name  # the checks are never bypassed
        assert cls._predict is not AnomalyMethod._predict, name
        assert name == cls.info.name  # the registry key is the method's own name


def test_the_registry_key_is_the_methods_info_name() -> None:
    class Named(Scripted):
        info = MethodInfo(name="test_named", title="Named (test)", paper="test",
                          trainable=False)

    try:
        assert register_method(Named) is Named  # bare @register_method
        assert METHODS.get("test_named") is Named
        assert register_method("test_named")(Named) is Named  # the same name is allowed
        with pytest.raises(ValueError, match="Named has info.name 'test_named' but is "
                                             "registered as 'other'"):
            register_method("other")(Named)
        assert "other" not in METHODS
    finally:
        METHODS.unregister("test_named")


def test_upstream_checkpoint_import_is_a_declared_optional_hook(tmp_path) -> None:
    from zsbench.checkpoint_import import import_checkpoint

    importable = {n for n in METHODS.names() if METHODS.get(n).can_import_upstream()}
    assert {"anomalyclip", "april_gan", "faprompt", "tps", "adaclip", "adaptclip", "vcp_clip",
            "bayes_pfl", "aa_clip"} <= importable
    assert not {"clip", "winclip", "coop", "musc", "dual_image_clip"} & importable
    with pytest.raises(NotImplementedError, match="'clip' cannot import upstream checkpoints"):
        METHODS.get("clip").convert_upstream_checkpoint({})
    (tmp_path / "x.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"method 'clip' cannot import upstream checkpoints .*"
                                          r"methods that can: aa_clip, adaclip, adaptclip, "
                                          r"anomalyclip, april_gan, bayes_pfl"):
        import_checkpoint("clip", tmp_path / "x.pth", tmp_path / "out.pt")


def test_the_grad_need_at_test_time_is_declared_apart_from_transductive(backbone) -> None:
    from zsbench.evaluate import EvalSettings, evaluate_dataset

    assert METHODS.get("anovl").needs_grad_at_test and METHODS.get("anovl").info.transductive
    assert not any(METHODS.get(n).needs_grad_at_test for n in ("clip", "winclip", "anomalyclip"))
    records = Dataset.from_list(synthetic_records("synthetic_b", size=64, n_train=0, n_normal=1,
                                                  n_anomalous=1)[:2])
    modes = {}
    for needs_grad, transductive in ((True, False), (False, True)):
        class Probe(Scripted):
            info = MethodInfo(name="test_probe", title="Probe (test)", paper="test",
                              trainable=False, transductive=transductive)
            needs_grad_at_test = needs_grad

            def _predict(self, images, class_names):
                modes[self.needs_grad_at_test] = torch.is_inference_mode_enabled()
                return super()._predict(images, class_names)

        probe = Probe(MethodConfig(backbone="zsbench-tiny", pretrained=None, image_size=SIZE),
                      backbone)
        evaluate_dataset(probe, records, EvalSettings(resolution=SIZE, batch_size=2))
    assert modes == {True: False, False: True}  # no_grad when it needs grad, else inference


def test_the_python_api_imports_from_the_modules_users_import_it_from() -> None:
    import zsbench
    from zsbench import checkpoints, data, overlays, provenance, results, seeding
    from zsbench.backbone import file_sha256, load_backbone
    from zsbench.backbone.loading import load_backbone as load_backbone_home
    from zsbench.checkpoint_import import import_checkpoint
    from zsbench.evaluate import evaluate_dataset, raw_records
    from zsbench.method import build_method, config_from_dict
    from zsbench.metrics import METRIC_NAMES, compute_metrics
    from zsbench.prediction import predict
    from zsbench.preprocess import image_to_tensor
    from zsbench.runner import build_result, run
    from zsbench.train import (
        CHECKPOINT_FORMAT,
        TrainConfig,
        load_checkpoint_into,
        load_method_from_checkpoint,
        read_checkpoint_metadata,
        save_checkpoint,
        seed_everything,
        train_method,
    )
    from zsbench.train import config_from_dict as train_config_from_dict

    # moved names are the same objects in their old and new homes (re-exports, not copies)
    assert load_backbone is load_backbone_home
    assert (load_checkpoint_into, save_checkpoint, read_checkpoint_metadata,
            load_method_from_checkpoint) == (
        checkpoints.load_checkpoint_into, checkpoints.save_checkpoint,
        checkpoints.read_checkpoint_metadata, checkpoints.load_method_from_checkpoint)
    assert CHECKPOINT_FORMAT == checkpoints.CHECKPOINT_FORMAT == "zsbench-checkpoint"
    assert train_config_from_dict is config_from_dict and seed_everything is \
        seeding.seed_everything
    assert raw_records is data.raw_records and build_result is results.build_result
    assert results.METRIC_NAMES is METRIC_NAMES and file_sha256 is provenance.sha256_file
    assert zsbench.predict is predict
    assert callable(overlays.save_overlay_image) and callable(evaluate_dataset)
    assert all(callable(f) for f in (build_method, import_checkpoint, compute_metrics, run,
                                     image_to_tensor, train_method, TrainConfig))
