"""``zsbench submit --check``: every kind of problem is caught and names its file and field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.result_factory import make_result, write_result_file
from zsbench.adapter import DatasetAdapter, DatasetInfo
from zsbench.cli import app
from zsbench.registry import ADAPTERS
from zsbench.submit import Problem, check_submission

TEST_DATASET = "zz_submit_check_set"


class _ThreeCategoryAdapter(DatasetAdapter):
    info = DatasetInfo(
        name=TEST_DATASET, title="Submit check set", domain="industrial",
        categories=("alpha", "beta", "gamma"),
        prompt_names={"alpha": "alpha", "beta": "beta", "gamma": "gamma"}, license="CC0",
        rehostable=True, citation="", homepage="", has_masks=True, has_normals=True)


@pytest.fixture
def registered_dataset() -> Iterator[str]:
    ADAPTERS.register(TEST_DATASET, _ThreeCategoryAdapter)
    try:
        yield TEST_DATASET
    finally:
        ADAPTERS.unregister(TEST_DATASET)


def write(tmp_path: Path, result: dict[str, Any], name: str = "result.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(result, allow_nan=True))
    return path


def valid(**kwargs: Any) -> dict[str, Any]:
    """A reported method on a synthetic dataset: nothing to complain about."""
    kwargs.setdefault("trained_on", ("mvtec",))
    return make_result("AnomalyCLIP", "synthetic_demo", domain="synthetic", **kwargs)


def kinds(problems: list[Problem]) -> set[str]:
    return {p.kind for p in problems}


def test_valid_files_pass(tmp_path: Path, registered_dataset: str) -> None:
    full = make_result("AnomalyCLIP", registered_dataset, {
        c: {"image_auroc": 0.8, "pixel_auroc": None} for c in ("alpha", "beta", "gamma")})
    paths = [write(tmp_path, valid()), write_result_file(tmp_path / "r", full)]
    assert check_submission(paths) == []
    assert check_submission([tmp_path / "r"]) == []  # folders are searched


def test_schema_errors_name_every_field(tmp_path: Path) -> None:
    result = valid()
    del result["provenance"]
    result["config_hash"] = "XYZ"
    problems = check_submission([write(tmp_path, result)])
    assert kinds(problems) == {"schema"}
    fields = {p.field for p in problems}
    assert fields == {"(top level)", "config_hash"}
    assert any("'provenance' is a required property" in p.message for p in problems)
    assert all(p.path.endswith("result.json") for p in problems)


def test_unknown_method(tmp_path: Path) -> None:
    result = valid()
    result["method"] = "no_such_method_xyz"
    problems = check_submission([write(tmp_path, result)])
    assert [(p.kind, p.field) for p in problems] == [("method", "method")]
    assert "'no_such_method_xyz'" in problems[0].message


def test_reported_method_names_are_known_in_any_spelling(tmp_path: Path) -> None:
    result = valid()
    result["method"] = "april_gan"  # "APRIL-GAN" in the FAPrompt tables
    assert check_submission([write(tmp_path, result)]) == []


def test_unknown_dataset(tmp_path: Path) -> None:
    result = valid()
    result["dataset"]["name"] = "not_a_dataset"
    problems = check_submission([write(tmp_path, result)])
    assert [(p.kind, p.field) for p in problems] == [("dataset", "dataset/name")]
    assert "'not_a_dataset'" in str(problems[0])


def test_missing_and_unknown_categories(tmp_path: Path, registered_dataset: str) -> None:
    result = make_result("AnomalyCLIP", registered_dataset, {
        "alpha": {"image_auroc": 0.8}, "beta": {"image_auroc": 0.6},
        "delta": {"image_auroc": 0.7}})
    problems = check_submission([write(tmp_path, result)])
    assert kinds(problems) == {"categories"}
    messages = sorted(p.message for p in problems)
    assert messages == [f"categories not in {registered_dataset}: delta",
                        f"missing categories of {registered_dataset}: gamma"]
    assert {p.field for p in problems} == {"metrics/per_category"}


def test_values_out_of_range_and_not_finite(tmp_path: Path) -> None:
    result = valid()
    result["metrics"]["per_category"]["bottle"]["image_auroc"] = 90.0  # a percentage
    problems = check_submission([write(tmp_path, result, "percent.json")])
    fields = {(p.kind, p.field) for p in problems}
    assert ("schema", "metrics/per_category/bottle/image_auroc") in fields
    assert any("fractions" in p.message for p in problems)
    nan = valid()
    nan["metrics"]["per_category"]["cable"]["image_ap"] = float("nan")
    problems = check_submission([write(tmp_path, nan, "nan.json")])
    assert ("value", "metrics/per_category/cable/image_ap") in {(p.kind, p.field)
                                                                 for p in problems}


def test_mean_inconsistent_with_categories(tmp_path: Path) -> None:
    result = valid()  # bottle 0.9, cable 0.7 -> mean 0.8
    result["metrics"]["mean"]["image_auroc"] = 0.75
    result["metrics"]["mean"]["pixel_auroc"] = None
    result["metrics"]["categories_used"]["image_ap"] = 5
    problems = check_submission([write(tmp_path, result)])
    assert kinds(problems) == {"mean"}
    by_field = {p.field: p.message for p in problems}
    assert set(by_field) == {"metrics/mean/image_auroc", "metrics/mean/pixel_auroc",
                             "metrics/categories_used/image_ap"}
    assert "0.750000" in by_field["metrics/mean/image_auroc"]
    assert "0.800000" in by_field["metrics/mean/image_auroc"]
    # rounding within tolerance is fine
    close = valid()
    close["metrics"]["mean"]["image_auroc"] = 0.80001
    assert check_submission([write(tmp_path, close, "close.json")]) == []


def test_train_test_overlap(tmp_path: Path) -> None:
    result = valid(trained_on=("synthetic_demo",))
    problems = check_submission([write(tmp_path, result)])
    assert kinds(problems) == {"overlap"}
    assert {p.field for p in problems} == {"trained_on", "protocol/train"}
    assert "'synthetic_demo'" in problems[0].message


def test_unreadable_missing_duplicate_and_samples(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    missing = tmp_path / "missing.json"
    first = write(tmp_path, valid(), "a.json")
    second = write(tmp_path, valid(), "b.json")
    with_sample = write(tmp_path, valid(config_hash="cccccccccccc", samples=["maps/x.png"]),
                        "c.json")
    problems = check_submission([broken, missing, first, second, with_sample])
    found = {(Path(p.path).name, p.kind) for p in problems}
    assert found == {("broken.json", "read"), ("missing.json", "read"),
                     ("b.json", "duplicate"), ("c.json", "samples")}
    assert any("a.json" in p.message for p in problems if p.kind == "duplicate")


def test_cli_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, valid(), "good.json")
    bad_result = valid()
    bad_result["method"] = "no_such_method_xyz"
    bad = write(tmp_path, bad_result, "bad.json")
    runner = CliRunner()
    res = runner.invoke(app, ["submit", "--check", str(good)])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output
    res = runner.invoke(app, ["submit", "--check", str(good), str(bad)])
    assert res.exit_code == 1
    assert "bad.json" in res.output and "no_such_method_xyz" in res.output
    assert "good.json" not in res.output
    res = runner.invoke(app, ["submit", str(good)])
    assert res.exit_code == 2 and "--check" in res.output
