"""The method taxonomy (``MethodInfo.kinds``) and how the evaluator and the runner enforce it:
transductive methods score whole categories, stochastic ones draw from a per-category seeded
generator and record their samples, compute-only options stay out of the identity."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from datasets import Dataset
from typer.testing import CliRunner

from tests.method_fixtures import TINY, PoolMean, tiny_backbone
from zsbench.cli import app
from zsbench.evaluate import EvalSettings, evaluate_dataset
from zsbench.method import (
    METHOD_KINDS,
    AnomalyMethod,
    MethodConfig,
    MethodInfo,
    Prediction,
    check_method_class,
    config_hash,
    option,
)
from zsbench.registry import METHODS, register_method
from zsbench.synthetic import synthetic_records


def _info(**flags) -> MethodInfo:
    return MethodInfo(name="test_kind", title="t", paper="p", **{"trainable": False, **flags})


def test_kinds_list_the_training_regime_then_the_flags_in_order():
    assert _info().kinds == ("training-free",)
    assert _info(trainable=True, stochastic=True).kinds == ("auxiliary-trained", "stochastic")
    assert _info(transductive=True, few_shot=True).kind == "training-free, transductive, few-shot"
    assert set(_info(trainable=True, transductive=True, stochastic=True, few_shot=True).kinds) \
        == set(METHOD_KINDS) - {"training-free"}


@dataclasses.dataclass
class NoisyConfig(MethodConfig):
    samples: int = option(3, "draws per image")


class Noisy(AnomalyMethod):
    """Stochastic test method: redness plus noise averaged over ``samples`` draws."""

    info = MethodInfo(name="test_noisy", title="t", paper="p", trainable=False, stochastic=True)
    config_class = NoisyConfig

    def _predict(self, images, class_names):
        redness = images[:, 0] - images[:, 1]
        noise = torch.randn((self.config.samples, *redness.shape),
                            generator=self.sampling_generator)
        maps = redness + noise.mean(dim=0)
        return Prediction(maps.flatten(1).amax(1), maps)


@pytest.fixture(scope="module")
def records():
    return Dataset.from_list(synthetic_records("synthetic_b", size=64, n_train=0, n_normal=3,
                                               n_anomalous=4))


def _evaluate(method, records, **settings):
    return evaluate_dataset(method, records, EvalSettings(resolution=56, **settings))


def test_a_transductive_method_scores_each_whole_category_as_one_batch(records):
    method = PoolMean(MethodConfig(**TINY), tiny_backbone())
    PoolMean.batch_sizes = []
    by_two = _evaluate(method, records, batch_size=2)
    assert PoolMean.batch_sizes == [7, 7, 7]  # 3 categories of 7 images, never a slice
    by_five = _evaluate(method, records, batch_size=5)
    assert by_two.per_category == by_five.per_category
    assert {c["reference_pool"] for c in by_two.counts["per_category"].values()} == {7}
    limited = _evaluate(method, records, batch_size=2, limit=4)
    assert {c["reference_pool"] for c in limited.counts["per_category"].values()} == {4}


def test_an_inductive_method_records_no_reference_pool(records, colour_deviation):
    method = colour_deviation(MethodConfig(**TINY), tiny_backbone())
    out = _evaluate(method, records, batch_size=2)
    assert all("reference_pool" not in c for c in out.counts["per_category"].values())


def test_a_stochastic_method_is_reproducible_per_seed_and_independent_of_batching(records):
    method = Noisy(NoisyConfig(**TINY), tiny_backbone())
    first = _evaluate(method, records, batch_size=7, seed=1)
    again = _evaluate(method, records, batch_size=7, seed=1)
    other = _evaluate(method, records, batch_size=7, seed=2)
    assert first.per_category == again.per_category
    assert first.per_category != other.per_category
    # the generator restarts for every category from (seed, category): order does not matter
    method.begin_category("b", 5)
    b_first = torch.rand(3, generator=method.sampling_generator)
    method.begin_category("a", 5)
    method.begin_category("b", 5)
    assert torch.equal(torch.rand(3, generator=method.sampling_generator), b_first)


def test_registration_checks_the_contract_once():
    class NoPredict(AnomalyMethod):
        info = MethodInfo(name="test_no_predict", title="t", paper="p", trainable=True)

        def _predict(self, images, class_names):
            raise AssertionError

    with pytest.raises(TypeError, match="does not implement loss, parameter_groups"):
        register_method(NoPredict)
    assert "test_no_predict" not in METHODS

    class NoSamples(PoolMean):
        info = MethodInfo(name="test_no_samples", title="t", paper="p", trainable=False,
                          stochastic=True)

    with pytest.raises(TypeError, match="integer 'samples' field"):
        check_method_class(NoSamples)
    with pytest.raises(TypeError, match="needs an info"):
        check_method_class(type("Bare", (AnomalyMethod,), {}))
    check_method_class(Noisy)  # meets it


def test_compute_only_options_stay_out_of_the_config_hash():
    from zsbench.method import make_config

    assert config_hash("anovl", make_config("anovl", {"chunk_size": 1})) == \
        config_hash("anovl", make_config("anovl", {"chunk_size": 32}))
    assert config_hash("anovl", make_config("anovl", {"tta_steps": 1})) != \
        config_hash("anovl", make_config("anovl"))


@pytest.fixture
def noisy_registered():
    METHODS.register("test_noisy", Noisy)
    yield Noisy
    METHODS.unregister("test_noisy")


def test_a_stochastic_result_records_its_samples_and_seed(synthetic_data_dir, tmp_path,
                                                         noisy_registered):
    from zsbench.runner import RunOptions, run

    options = RunOptions(data_dir=synthetic_data_dir, output_dir=tmp_path, device="cpu",
                         batch_size=4, resolution=56, seed=7, cost=False)
    outcome = run("test_noisy", "none->synthetic_b", {**TINY, "samples": 2}, options)[0]
    result = json.loads(outcome.path.read_text())
    assert result["method_kind"] == {"trainable": False, "transductive": False,
                                     "stochastic": True, "few_shot": False,
                                     "kinds": ["training-free", "stochastic"],
                                     "samples": 2, "seed": 7}
    assert result["identity"]["config"]["samples"] == 2
    from zsbench.results import results_table

    assert list(results_table([result]).index.get_level_values("kind")) == [
        "training-free, stochastic"]


def test_cli_lists_kinds_and_refuses_samples_for_a_deterministic_method():
    runner = CliRunner()
    listed = runner.invoke(app, ["methods", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    kinds = {m["name"]: m["kinds"] for m in json.loads(listed.output)}
    assert kinds["anovl"] == ["training-free", "transductive"]
    assert kinds["anomalyclip"] == ["auxiliary-trained"]
    refused = runner.invoke(app, ["run", "-m", "clip", "-p", "none->synthetic_b",
                                  "--samples", "4"])
    assert refused.exit_code != 0
    assert "not stochastic" in refused.output and "--samples" in refused.output


def test_a_transductive_result_records_each_categorys_reference_pool(synthetic_data_dir,
                                                                     tmp_path):
    from zsbench.runner import RunOptions, run

    METHODS.register("test_pool_mean", PoolMean)
    try:
        options = RunOptions(data_dir=synthetic_data_dir, output_dir=tmp_path, device="cpu",
                             batch_size=2, resolution=56, cost=False)
        outcome = run("test_pool_mean", "none->synthetic_b", TINY, options)[0]
    finally:
        METHODS.unregister("test_pool_mean")
    result = json.loads(outcome.path.read_text())
    assert result["method_kind"]["kinds"] == ["training-free", "transductive"]
    pools = {c: v["reference_pool"] for c, v in result["counts"]["per_category"].items()}
    assert pools == {c: v["images"] for c, v in result["counts"]["per_category"].items()}
    assert set(pools.values()) == {6}


def test_a_methods_paper_recipe_is_the_training_default_and_the_command_line_wins():
    from zsbench.protocols import resolve_protocol
    from zsbench.runner import RunOptions, _train_config

    protocol = resolve_protocol("mvtec->visa", validate=False)
    vcp = METHODS.get("vcp_clip")
    assert dict(vcp.training_defaults) == {"epochs": 10, "batch_size": 32}
    config = _train_config(RunOptions(device="cpu"), protocol, vcp)
    assert (config.epochs, config.batch_size, config.lr) == (10, 32, 1e-3)
    config = _train_config(RunOptions(device="cpu", train_overrides={"batch_size": 4}),
                           protocol, vcp)
    assert (config.epochs, config.batch_size) == (10, 4)
    config = _train_config(RunOptions(device="cpu"), protocol, METHODS.get("anomalyclip"))
    assert (config.epochs, config.batch_size) == (15, 8)

    class BadRecipe(PoolMean):
        training_defaults = {"epoch": 3}

    from zsbench.errors import ConfigError

    with pytest.raises(ConfigError, match="method 'test_pool_mean' training_defaults epoch"):
        _train_config(RunOptions(device="cpu"), protocol, BadRecipe)
