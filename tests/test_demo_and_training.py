"""Acceptance on the synthetic cross-dataset protocol, through the real demo path.

One module-scoped ``run_demo`` (synthetic datasets written in the MVTec layout, prepared to
Parquet, every built-in method run through the runner with the tiny random backbone) feeds all
tests here. Trainable methods are trained on synthetic_a and evaluated on synthetic_b; each must
reach 0.75 pixel AUROC and clearly beat its untrained self."""

from __future__ import annotations

import pytest

from zsbench.demo import DEMO_BACKBONE, DEMO_METHOD_OVERRIDES, DEMO_RESOLUTION, run_demo
from zsbench.registry import METHODS
from zsbench.results import load_results
from zsbench.runner import RunOptions, run

TRAINABLE = ["april_gan", "coop", "cocoop", "anomalyclip", "faprompt", "tps", "adaclip",
             "adaptclip", "vcp_clip", "bayes_pfl", "aa_clip"]
TRAINING_FREE = ["clip", "clip_ac", "winclip", "anovl", "musc", "dual_image_clip"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return run_demo(tmp_path_factory.mktemp("demo"), build_site=True, workers=2)


def _pixel_auroc(outcome) -> float:
    return outcome.mean["pixel_auroc"]


def test_demo_runs_every_built_in_method_and_writes_valid_results(demo):
    assert demo.failures == {}
    built_in = {e.name for e in METHODS.entries() if e.source == "built-in"}
    assert set(TRAINABLE + TRAINING_FREE) <= built_in
    assert set(demo.outcomes) == built_in
    results, problems = load_results([demo.results_dir])
    assert problems == []
    assert {r["method"] for r in results} == built_in
    for r in results:
        assert r["dataset"]["name"] == "synthetic_b"
        assert r["trained_on"] == (["synthetic_a"] if METHODS.get(r["method"]).info.trainable
                                   else [])
        assert len(r["samples"]) == 6  # 2 overlays x 3 categories
    assert demo.site is not None and (demo.site / "index.html").is_file()


@pytest.mark.parametrize("name", TRAINABLE)
def test_trained_methods_transfer_to_the_other_synthetic_dataset(demo, name):
    trained = _pixel_auroc(demo.outcomes[name][0])
    untrained_outcome = run(name, "none->synthetic_b",
                            {**DEMO_BACKBONE, **DEMO_METHOD_OVERRIDES.get(name, {})},
                            RunOptions(data_dir=demo.out_dir / "data",
                                       output_dir=demo.out_dir / "untrained", device="cpu",
                                       batch_size=16, resolution=DEMO_RESOLUTION))[0]
    untrained = _pixel_auroc(untrained_outcome)
    assert trained >= 0.75, f"{name}: pixel AUROC {trained:.3f} after training"
    assert trained >= untrained + 0.05, f"{name}: trained {trained:.3f} vs {untrained:.3f}"


def test_demo_is_resumable(demo):
    again = run_demo(demo.out_dir, ["clip", "anomalyclip"], build_site=False)
    assert {o.status for outs in again.outcomes.values() for o in outs} == {"skipped"}
