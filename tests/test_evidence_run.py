"""Evidence in a run: bootstrap intervals, stored maps with rescore/compare, cost, leakage,
method kind, seeds, and overlays on one colour scale per dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.method_fixtures import TINY
from zsbench.cli import app
from zsbench.results import read_result
from zsbench.runner import RunOptions, run

COMMON = ["--data-dir", None, "--backbone", "zsbench-tiny", "--pretrained", "none",
          "--image-size", "56", "--resolution", "64", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("colour_deviation")


def _run(data, out, **kw):
    options = RunOptions(data_dir=data, output_dir=out, device="cpu", resolution=64, **kw)
    return read_result(run("test_colour_deviation", "none->synthetic_b", TINY, options)[0].path)


def test_bootstrap_intervals_and_stored_maps_rescore_to_the_result(synthetic_data_dir,
                                                                   tmp_path):
    result = _run(synthetic_data_dir, tmp_path, bootstrap=50, save_maps="all")
    boot = result["bootstrap"]
    assert boot["replicates"] == 50 and boot["confidence"] == 0.95
    for metric, point in result["metrics"]["mean"].items():
        assert boot["point"][metric] == pytest.approx(point, abs=1e-12)
        if boot["low"][metric] is not None:
            assert boot["low"][metric] <= boot["high"][metric]
    path = next(tmp_path.rglob("synthetic_b.json"))
    store = path.parent / result["map_store"]
    assert (store / "manifest.json").is_file()
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["identity_key"] == result["identity_key"]
    out = CliRunner().invoke(app, ["rescore", str(path), "--json"])
    assert out.exit_code == 0, out.output
    rescored = json.loads(out.output)
    for metric in ("image_auroc", "image_ap", "image_f1_max"):  # exact scores are stored
        assert rescored["mean"][metric] == result["metrics"]["mean"][metric]
    for metric in ("pixel_auroc", "aupro"):  # from uint16-quantised maps
        assert rescored["mean"][metric] == pytest.approx(result["metrics"]["mean"][metric],
                                                         abs=2e-3)
    assert rescored["mean"]["aupro_anomalib_v2_2"] is not None
    # the overlays share one colour scale: the dataset's min and max
    ranges = [np.load(f)["map_range"] for f in store.glob("*.npz")]
    assert result["samples_scale"] == {"low": min(r[0] for r in ranges),
                                       "high": max(r[1] for r in ranges)}
    assert len(result["samples"]) == 3 * 4  # 4 overlays per category with --save-maps all


def test_compare_finds_no_difference_between_a_result_and_itself(synthetic_data_dir,
                                                                  tmp_path):
    _run(synthetic_data_dir, tmp_path, save_maps="all")
    path = str(next(tmp_path.rglob("synthetic_b.json")))
    out = CliRunner().invoke(app, ["compare", path, path, "--replicates", "50", "--json"])
    assert out.exit_code == 0, out.output
    paired = json.loads(out.output)
    assert paired["difference"]["pixel_auroc"] == 0.0
    assert paired["significant"]["pixel_auroc"] is False
    no_maps = _run(synthetic_data_dir, tmp_path / "plain")
    plain = str(next((tmp_path / "plain").rglob("synthetic_b.json")))
    assert "map_store" not in no_maps
    refused = CliRunner().invoke(app, ["compare", path, plain])
    assert refused.exit_code == 1 and "--save-maps all" in refused.output


def test_cost_leakage_and_kind_are_recorded(synthetic_data_dir, tmp_path):
    result = _run(synthetic_data_dir, tmp_path)
    cost = result["cost"]
    for field in ("latency_batch1_ms", "throughput_images_per_s", "peak_memory_bytes",
                  "total_parameters"):
        assert cost[field] > 0, field
    assert cost["trainable_parameters"] == 0 and cost["training_time_s"] is None
    assert cost["flops_per_image"] == 0  # median and norm: torch counts matmuls and convs
    assert result["leakage"]["zero_shot"] is True and result["leakage"]["auxiliary"] == []
    assert result["method_kind"] == {"trainable": False, "transductive": False,
                                     "stochastic": False, "few_shot": False,
                                     "kinds": ["training-free"]}
    assert "cost" not in _run(synthetic_data_dir, tmp_path / "nocost", cost=False)


def test_leakage_lists_the_auxiliary_data_of_a_trained_method(synthetic_data_dir, tmp_path):
    options = RunOptions(data_dir=synthetic_data_dir, output_dir=tmp_path, device="cpu",
                         resolution=64, limit=1,
                         train_overrides={"epochs": 1, "max_steps": 1})
    result = read_result(run("coop", "synthetic_a->synthetic_b", TINY, options)[0].path)
    cost = result["cost"]
    assert cost["flops_per_image"] > 0 and cost["trainable_parameters"] > 0
    assert cost["training_time_s"] == pytest.approx(result["timings"]["train_s"], abs=1e-3)
    assert cost["training_time_s"] > 0
    ledger = result["leakage"]
    assert ledger["zero_shot"] is True
    assert [use["dataset"] for use in ledger["auxiliary"]] == ["synthetic_a"]
    assert result["method_kind"]["trainable"] is True


def test_asking_for_intervals_reruns_a_result_without_them(synthetic_data_dir, tmp_path):
    first = _run(synthetic_data_dir, tmp_path)
    assert "bootstrap" not in first
    again = _run(synthetic_data_dir, tmp_path, bootstrap=20, skip_existing=True)
    assert again["bootstrap"]["replicates"] == 20
    skipped = run("test_colour_deviation", "none->synthetic_b", TINY,
                  RunOptions(data_dir=synthetic_data_dir, output_dir=tmp_path, device="cpu",
                             resolution=64, bootstrap=20, skip_existing=True))
    assert [o.status for o in skipped] == ["skipped"]


def test_cli_seeds_run_once_per_seed(synthetic_data_dir, tmp_path):
    args = [a if a is not None else str(synthetic_data_dir) for a in COMMON]
    out = CliRunner().invoke(app, ["run", "-m", "clip", "-p", "none->synthetic_b", *args,
                                   "-o", str(tmp_path), "--limit", "1", "--no-cost",
                                   "--seeds", "3,4"])
    assert out.exit_code == 0, out.output
    seeds = sorted(read_result(p)["seed"] for p in Path(tmp_path).rglob("synthetic_b.json"))
    assert seeds == [3, 4]
    both = CliRunner().invoke(app, ["run", "-m", "clip", "-p", "none->synthetic_b", *args,
                                    "--seed", "1", "--seeds", "3,4"])
    assert both.exit_code == 1 and "--seed or --seeds" in both.output
    bad = CliRunner().invoke(app, ["run", "-m", "clip", "--save-maps", "some"])
    assert bad.exit_code == 2 and "'all'" in bad.output
    small = CliRunner().invoke(app, ["run", "-m", "clip", "--max-memory", "10M"])
    assert small.exit_code == 2 and "--max-memory" in small.output and "512M" in small.output


def test_max_memory_sizes():
    from zsbench.cli.run import _parse_bytes

    assert _parse_bytes("8G") == 8 << 30 and _parse_bytes("512m") == 512 << 20
    assert _parse_bytes("4e9") == 4_000_000_000 and _parse_bytes(None) is None
