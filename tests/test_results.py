"""Result JSONs: schema validation with clear errors, atomic writes, tables."""

from __future__ import annotations

import json
import math

import pytest

from tests.result_factory import make_result
from zsbench import atomic
from zsbench.results import (
    ResultValidationError,
    load_results,
    protocol_slug,
    read_result,
    result_path,
    results_table,
    validate_result,
    write_result,
)


def test_valid_result_round_trips(tmp_path):
    result = make_result()
    path = write_result(result, tmp_path / "r.json")
    assert read_result(path) == result


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["metrics"]["mean"].update(image_auroc=1.5), "metrics/mean/image_auroc"),
    (lambda r: r["metrics"]["mean"].update(image_auroc=-0.1), "metrics/mean/image_auroc"),
    (lambda r: r["metrics"]["mean"].update(made_up_metric=0.5), "metrics/mean"),
    (lambda r: r.pop("provenance"), "(top level)"),
    (lambda r: r.update(config_hash="XYZ"), "config_hash"),
    (lambda r: r["counts"]["total"].update(images=-1), "counts/total/images"),
])
def test_invalid_results_name_the_field(mutate, field):
    result = make_result()
    mutate(result)
    with pytest.raises(ResultValidationError) as info:
        validate_result(result, "some/file.json")
    assert str(info.value).startswith(f"some/file.json: field {field}:")


def test_null_metrics_are_valid_but_nan_is_not_written(tmp_path):
    result = make_result(per_category={"a": {"image_auroc": None, "pixel_auroc": 0.5}})
    assert result["metrics"]["mean"]["image_auroc"] is None
    write_result(result, tmp_path / "ok.json")
    result["metrics"]["per_category"]["a"]["pixel_auroc"] = math.nan
    with pytest.raises((ValueError, ResultValidationError)):
        write_result(result, tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_load_results_skips_and_names_bad_files(tmp_path):
    write_result(make_result("winclip", "mvtec"), tmp_path / "a" / "good.json")
    (tmp_path / "a" / "broken.json").write_text("{not json")
    bad = make_result("winclip", "visa")
    bad["metrics"]["mean"]["image_auroc"] = 2.0
    (tmp_path / "a" / "invalid.json").write_text(json.dumps(bad))
    results, problems = load_results([tmp_path])
    assert [r["dataset"]["name"] for r in results] == ["mvtec"]
    assert len(problems) == 2
    assert any("broken.json: not valid JSON" in p for p in problems)
    assert any("invalid.json: field metrics/mean/image_auroc" in p for p in problems)


def test_result_path_and_slug():
    assert protocol_slug("mvtec+visa->btad,mpdd") == "mvtec+visa-to-btad,mpdd"
    p = result_path("out", "tps", "0123456789ab", "mvtec->all", "visa")
    assert p.as_posix() == "out/tps/0123456789ab/mvtec-to-all/visa.json"


def test_results_table_has_one_column_per_dataset_and_skips_na_in_the_mean():
    results = [
        make_result("winclip", "mvtec", {"a": {"image_auroc": 0.9}}),
        make_result("winclip", "visa", {"a": {"image_auroc": 0.7}}),
        make_result("clip", "mvtec", {"a": {"image_auroc": 0.6}}),
        make_result("clip", "visa", {"a": {"image_auroc": None}}),
    ]
    table = results_table(results, "image_auroc")
    assert list(table.columns) == ["mvtec", "visa", "mean"]
    win = table.xs("winclip", level="method").iloc[0]
    assert win["mean"] == pytest.approx(80.0)
    clip = table.xs("clip", level="method").iloc[0]
    assert math.isnan(clip["visa"]) and clip["mean"] == pytest.approx(60.0)
    assert list(table.index.names) == ["method", "kind", "config", "protocol", "run"]
    with pytest.raises(ValueError, match="unknown metric"):
        results_table(results, "accuracy")
