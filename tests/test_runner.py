"""The runner end to end on a prepared synthetic dataset, with a test-only detector.

The detector scores each pixel by its colour distance from the image's median colour (a fair
detector of the synthetic defects), so the pipeline's numbers are checkable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zsbench.results import read_result
from zsbench.runner import RunOptions, run

TINY = {"backbone": "zsbench-tiny", "pretrained": None, "image_size": 56}


@pytest.fixture
def data_dir(synthetic_data_dir) -> Path:
    return synthetic_data_dir


pytestmark = pytest.mark.usefixtures("colour_deviation")


def _options(data_dir, out, **kw):
    return RunOptions(data_dir=data_dir, output_dir=out, device="cpu", resolution=64, **kw)


def test_run_writes_a_valid_result_with_sensible_numbers(data_dir, tmp_path):
    outcomes = run("test_colour_deviation", "none->synthetic_b", TINY, _options(data_dir, tmp_path))
    assert [(o.target, o.status) for o in outcomes] == [("synthetic_b", "written")]
    result = read_result(outcomes[0].path)
    assert result["counts"]["total"] == {"images": 18, "anomalous": 9, "with_mask": 9,
                                         "regions": result["counts"]["total"]["regions"]}
    assert result["counts"]["total"]["regions"] >= 9
    assert sorted(result["metrics"]["per_category"]) == ["checker", "fibre", "tablet"]
    assert result["metrics"]["categories_used"]["pixel_auroc"] == 3
    assert result["metrics"]["mean"]["pixel_auroc"] > 0.8
    assert result["protocol"]["resolution"] == 64 and result["trained_on"] == []
    assert result["dataset"]["domain"] == "synthetic"
    assert len(result["dataset"]["fingerprint"]) >= 16
    assert outcomes[0].path.parts[-3] == "none-to-synthetic_b"
    assert outcomes[0].path.parts[-2].startswith("full-seed111-res64-fp32-")
    assert outcomes[0].path.name == "synthetic_b.json"
    assert result["smoke"] is False and result["identity"]["limit"] is None
    assert result["evaluation"]["map_dtype"] == "float32"


def test_skip_existing_does_nothing(data_dir, tmp_path):
    first = run("test_colour_deviation", "none->synthetic_b", TINY, _options(data_dir, tmp_path))
    before = first[0].path.stat().st_mtime_ns
    again = run("test_colour_deviation", "none->synthetic_b", TINY,
                _options(data_dir, tmp_path, skip_existing=True))
    assert [o.status for o in again] == ["skipped"]
    assert again[0].path.stat().st_mtime_ns == before
    assert again[0].mean == first[0].mean


def test_limit_takes_a_stratified_subset_per_category(data_dir, tmp_path):
    outcomes = run("test_colour_deviation", "none->synthetic_b", TINY,
                   _options(data_dir, tmp_path, limit=2))
    result = read_result(outcomes[0].path)
    for counts in result["counts"]["per_category"].values():
        assert counts["images"] == 2 and counts["anomalous"] == 1
    assert result["protocol"]["limit"] == 2


def test_an_interrupted_run_leaves_no_partial_json(data_dir, tmp_path, monkeypatch):
    import zsbench.evaluate as evaluate

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate.metrics, "summarize", crash)
    with pytest.raises(KeyboardInterrupt):
        run("test_colour_deviation", "none->synthetic_b", TINY, _options(data_dir, tmp_path))
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.tmp"))


def test_save_maps_writes_overlays_referenced_by_the_result(data_dir, tmp_path):
    outcomes = run("test_colour_deviation", "none->synthetic_b", TINY,
                   _options(data_dir, tmp_path, save_maps=1))
    result = read_result(outcomes[0].path)
    assert len(result["samples"]) == 3
    for rel in result["samples"]:
        png = outcomes[0].path.parent / rel
        from PIL import Image

        with Image.open(png) as im:
            assert im.size == (3 * 64 + 8, 64)


def test_cli_run_and_results_table(data_dir, tmp_path):
    from zsbench.cli import app

    runner = CliRunner()
    args = ["run", "--method", "test_colour_deviation", "--protocol", "none->synthetic_b",
            "--data-dir", str(data_dir), "--output-dir", str(tmp_path), "--resolution", "64",
            "--backbone", "zsbench-tiny", "--pretrained", "none", "--image-size", "56",
            "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "written" in result.output
    table = runner.invoke(app, ["results", "table", str(tmp_path), "--metric", "pixel_auroc",
                                "--json"])
    assert table.exit_code == 0, table.output
    rows = json.loads(table.output)
    assert rows[0]["method"] == "test_colour_deviation" and rows[0]["synthetic_b"] > 80


def test_cli_reports_unknown_dataset_and_missing_data(data_dir, tmp_path):
    from zsbench.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["run", "-m", "test_colour_deviation", "-p", "none->synthetic_x",
                              "--data-dir", str(data_dir)])
    assert bad.exit_code == 1 and "Unknown dataset 'synthetic_x'" in bad.output
    missing = runner.invoke(app, ["run", "-m", "test_colour_deviation", "-p", "none->mvtec",
                                  "--data-dir", str(data_dir), "--output-dir", str(tmp_path),
                                  "--pretrained", "none", "--backbone", "zsbench-tiny",
                                  "--image-size", "56"])
    assert missing.exit_code == 1 and "mvtec" in missing.output
    assert "zsbench data prepare" in missing.output


def test_skip_existing_reruns_an_invalid_result(data_dir, tmp_path):
    first = run("test_colour_deviation", "none->synthetic_b", TINY, _options(data_dir, tmp_path))
    first[0].path.write_text("{broken")
    again = run("test_colour_deviation", "none->synthetic_b", TINY,
                _options(data_dir, tmp_path, skip_existing=True))
    assert [o.status for o in again] == ["written"]
    assert read_result(again[0].path)["metrics"]["mean"]["pixel_auroc"] > 0.8


def test_cli_train_evaluate_and_import_checkpoint(data_dir, tmp_path):
    from tests.test_checkpoint_import import upstream_state, write
    from zsbench.cli import app

    runner = CliRunner()
    common = ["--backbone", "zsbench-tiny", "--pretrained", "none", "--image-size", "56"]
    trained = runner.invoke(app, ["train", "-m", "anomalyclip", "-p", "synthetic_a->synthetic_b",
                                  "--data-dir", str(data_dir), "-o", str(tmp_path / "ckpt"),
                                  "--epochs", "1", "--device", "cpu", *common])
    assert trained.exit_code == 0, trained.output
    checkpoint = next((tmp_path / "ckpt").rglob("epoch_001.pt"))
    assert f"trained on synthetic_a: {checkpoint}" in trained.output.replace("\n", "")

    evaluated = runner.invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "-p",
                                    "synthetic_a->synthetic_b", "--data-dir", str(data_dir),
                                    "-o", str(tmp_path / "res"), "--resolution", "64",
                                    "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    result = read_result(next((tmp_path / "res").rglob("synthetic_b.json")))
    assert result["checkpoint"]["path"] == str(checkpoint)
    assert result["trained_on"] == ["synthetic_a"]

    upstream = write(tmp_path / "epoch_15.pth", upstream_state())
    imported = runner.invoke(app, ["import-checkpoint", str(upstream), "-m", "anomalyclip",
                                   "--out", str(tmp_path / "imported.pt"), *common[:4]])
    assert imported.exit_code == 0, imported.output
    assert (tmp_path / "imported.pt").is_file()
    missing = runner.invoke(app, ["import-checkpoint", str(tmp_path / "nope.pth"), "-m",
                                  "anomalyclip", "--out", str(tmp_path / "x.pt")])
    assert missing.exit_code == 1 and "nope.pth" in missing.output


def test_cli_without_weights_offline_fails_fast_with_instructions(data_dir, tmp_path,
                                                                 monkeypatch):
    from zsbench.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    result = CliRunner().invoke(app, ["run", "-m", "clip", "-p", "none->synthetic_b",
                                      "--data-dir", str(data_dir), "-o", str(tmp_path)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "Cannot get the 'ViT-L-14-336-quickgelu' weights for tag 'openai'" in text
    assert "--pretrained /path/to/file" in text
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("*.json"))


def test_python_api_accepts_string_paths(data_dir, tmp_path):
    options = RunOptions(data_dir=str(data_dir), output_dir=str(tmp_path), device="cpu",
                         resolution=64, train_overrides={"epochs": 1})
    outcomes = run("anomalyclip", "synthetic_a->synthetic_b", TINY, options)
    assert [o.status for o in outcomes] == ["written"]
    assert (tmp_path / "checkpoints").is_dir()
