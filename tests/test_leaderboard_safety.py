"""The leaderboard compares like with like and publishes nothing it should not.

Comparisons are matched on training data; means and ranks are over a common dataset set;
``samples`` cannot reach outside the result's folder (``..`` or symlinks) in ``leaderboard
build`` or ``submit --check``; smoke runs, NaN and empty results are never shown as results;
bad ``--results``/``--out`` folders fail before any work.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.result_factory import make_result, write_result_file
from zsbench.atomic import NotWritableError
from zsbench.cli import app
from zsbench.leaderboard import build as build_module
from zsbench.leaderboard.build import SiteBuildError, build
from zsbench.leaderboard.reported import load_reported
from zsbench.leaderboard.site_data import (
    build_site_data,
    common_datasets,
    page_summary,
    summarize,
)
from zsbench.submit import check_submission

SECRET = b"\x89PNG\r\n\x1a\nTOP-SECRET-BYTES-OUTSIDE-THE-RESULTS-TREE"


def reported_value(source_id: str, method: str, dataset: str, metric: str) -> float:
    return next(v.value for v in load_reported() if v.source_id == source_id
                and v.method == method and v.dataset == dataset and v.metric == metric
                and not v.category)


def site_files(site: Path) -> dict[str, bytes]:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in site.rglob("*") if p.is_file()}


# ---------- comparisons matched on training data and protocol ----------

def test_comparisons_match_training_data() -> None:
    per_category = {"01": {"image_auroc": 0.5}, "02": {"image_auroc": 0.6}}  # mean 55 %
    visa_trained = make_result("AnomalyCLIP", "btad", per_category, config_hash="111111111111",
                               protocol="visa->all", trained_on=("visa",))
    mvtec_trained = make_result("AnomalyCLIP", "btad", per_category, config_hash="222222222222",
                                protocol="mvtec->all", trained_on=("mvtec",))
    untrained = make_result("AnomalyCLIP", "btad", per_category, config_hash="333333333333",
                            protocol="none->btad", trained_on=())
    winclip = make_result("winclip", "btad", per_category, config_hash="444444444444",
                          protocol="none->btad", trained_on=())
    data = build_site_data([visa_trained, mvtec_trained, untrained, winclip], load_reported())
    by_row = {}
    for c in data["comparisons"]:
        if c["metric"] == "image_auroc" and c["dataset"] == "btad":
            by_row.setdefault(c["reproduced_row"].split("/")[2], []).append(c)
    # published BTAD values are mvtec->btad: never compared with a VisA-trained or untrained run
    assert set(by_row) == {"222222222222", "444444444444"}
    (mvtec,) = by_row["222222222222"]
    assert mvtec["reported_row"] == "reported/anomalyclip_paper/AnomalyCLIP"
    assert mvtec["reported_protocol"] == "mvtec->btad" and mvtec["trained_on"] == ["mvtec"]
    published = reported_value("anomalyclip_paper", "AnomalyCLIP", "btad", "image_auroc")
    assert mvtec["reported"] == published
    assert mvtec["difference"] == pytest.approx(55.0 - published)
    # a training-free method compares with its published (training-free) value
    (free,) = by_row["444444444444"]
    assert free["reported_row"] == "reported/faprompt_tables/WinCLIP"
    assert free["trained_on"] == []
    assert free["reported"] == reported_value("faprompt_tables", "WinCLIP", "btad",
                                              "image_auroc")


def test_visa_trained_mvtec_target_matches_visa_trained_value() -> None:
    good = make_result("AnomalyCLIP", "mvtec", {"bottle": {"image_auroc": 0.9}},
                       config_hash="555555555555", protocol="visa->mvtec", trained_on=("visa",))
    wrong = make_result("AnomalyCLIP", "mvtec", {"bottle": {"image_auroc": 0.9}},
                        config_hash="666666666666", protocol="mpdd->mvtec", trained_on=("mpdd",))
    comps = build_site_data([good, wrong], load_reported())["comparisons"]
    assert {c["reproduced_row"] for c in comps} == {"reproduced/AnomalyCLIP/555555555555/"
                                                    "visa->mvtec"}
    assert comps[0]["reported"] == reported_value("anomalyclip_paper", "AnomalyCLIP", "mvtec",
                                                  "image_auroc")


# ---------- means and ranks over a common set of datasets ----------

FAPROMPT_IMAGE_SETS = ["mvtec", "visa", "mpdd", "btad", "sdd", "aitex", "dagm", "dtd_synthetic",
                       "elpv", "headct", "brainmri", "br35h", "lag"]


def test_means_and_ranks_over_the_common_datasets() -> None:
    sparse = make_result("AnomalyCLIP", "btad", {"01": {"image_auroc": 0.99}},
                         config_hash="777777777777", protocol="mvtec->all", trained_on=("mvtec",))
    data = build_site_data([sparse], load_reported())
    rows = {r["id"]: r for r in data["rows"]}
    common, summary = page_summary(data, "image_auroc")
    # the 13 image-level datasets of the FAPrompt tables: 11 rows have all of them
    assert common == FAPROMPT_IMAGE_SETS
    ranked = sorted(r for r, s in summary.items() if s["ranked"])
    assert len(ranked) == 11 and all(r.startswith("reported/faprompt_tables/") for r in ranked)
    for row_id in ranked:
        values = [rows[row_id]["cells"]["image_auroc"][d]["value"] for d in common]
        assert summary[row_id]["mean"] == pytest.approx(sum(values) / 13)
        assert summary[row_id]["count"] == 13
    # ranks over the 11 comparable rows only: each dataset hands out ranks 1..11
    assert sum(summary[r]["mean_rank"] for r in ranked) == pytest.approx(11 * 12 / 2)
    # rows with fewer datasets: mean over their own datasets, no rank
    tps = summary["reported/tps_readme/TPS"]
    tps_values = list(rows["reported/tps_readme/TPS"]["cells"]["image_auroc"].values())
    assert tps["ranked"] is False and tps["mean_rank"] is None and tps["count"] == 7
    assert tps["mean"] == pytest.approx(sum(c["value"] for c in tps_values) / 7)
    reproduced = summary["reproduced/AnomalyCLIP/777777777777/mvtec->all"]
    assert reproduced == {"mean": 99.0, "mean_rank": None, "count": 1, "ranked": False}
    # the reproduced row does not change the ranks of the comparable rows
    alone = page_summary(build_site_data([], load_reported()), "image_auroc")[1]
    assert {r: summary[r]["mean_rank"] for r in ranked} == {r: alone[r]["mean_rank"]
                                                            for r in ranked}


def _row(row_id: str, values: dict[str, float]) -> dict[str, Any]:
    return {"id": row_id, "cells": {"m": {d: {"value": v} for d, v in values.items()}}}


def test_common_set_prefers_more_ranked_values() -> None:
    rows = [_row("A", {"d1": 80.0, "d2": 60.0, "d3": 90.0}), _row("B", {"d1": 70.0, "d2": 50.0}),
            _row("C", {"d1": 60.0, "d2": 95.0}), _row("D", {"d3": 99.0})]
    # {d1,d2}: 3 rows x 2 = 6 values; {d1,d2,d3}: 1 x 3; {d3}: 2 x 1
    assert common_datasets(rows, "m", ["d1", "d2", "d3"]) == ["d1", "d2"]
    s = summarize(rows, "m", ["d1", "d2", "d3"])
    # A ranked over d1, d2 only (its d3 is not in the common set): mean 70, ranks 1 and 2
    assert (s["A"].mean, s["A"].mean_rank, s["A"].count) == (70.0, 1.5, 2)
    assert (s["B"].mean, s["B"].mean_rank) == (60.0, 2.5)
    assert (s["C"].mean, s["C"].mean_rank) == (77.5, 2.0)
    assert (s["D"].mean, s["D"].mean_rank, s["D"].ranked) == (99.0, None, False)
    assert common_datasets([_row("E", {})], "m", ["d1"]) == []


# ---------- samples: nothing outside the result's folder is published ----------

def _result_with_samples(results: Path, samples: list[str], config_hash: str) -> Path:
    result = make_result("winclip", "synthetic_s", samples=samples, domain="synthetic",
                         trained_on=(), config_hash=config_hash)
    return write_result_file(results, result)


def test_path_traversal_in_samples_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(SECRET)
    results = tmp_path / "results"
    probe = _result_with_samples(results, ["x.png"], "aaaaaaaaaaaa")
    depth = len(probe.parent.relative_to(tmp_path).parts)
    escape = "/".join([".."] * depth) + "/outside/secret.png"
    assert (probe.parent / escape).resolve() == (outside / "secret.png").resolve()
    path = _result_with_samples(results, [escape], "aaaaaaaaaaaa")
    built = build([results], tmp_path / "site")
    assert built.gallery_images == 0
    assert any(str(path) in p and "samples/0" in p and "outside the result's folder" in p
               for p in built.problems), built.problems
    files = site_files(tmp_path / "site")
    assert SECRET not in files.values() and not any("secret" in f for f in files)
    problems = check_submission([path])
    assert [(p.kind, p.field) for p in problems] == [("samples", "samples/0")]
    assert escape in problems[0].message and "outside" in problems[0].message
    res = CliRunner().invoke(app, ["submit", "--check", str(path)])
    assert res.exit_code == 1 and "samples/0" in res.output


def test_symlink_escaping_the_result_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(SECRET)
    results = tmp_path / "results"
    path = _result_with_samples(results, ["maps/link.png", "maps/ok.png", "maps/inner.png"],
                                "bbbbbbbbbbbb")
    maps = path.parent / "maps"
    maps.mkdir()
    (maps / "link.png").symlink_to(outside / "secret.png")
    ok = b"\x89PNG\r\n\x1a\nfine"
    (maps / "ok.png").write_bytes(ok)
    (maps / "inner.png").symlink_to(maps / "ok.png")  # a link that stays inside is fine
    built = build([results], tmp_path / "site")
    assert built.gallery_images == 2
    assert [p for p in built.problems if "samples/0" in p and "link.png" in p
            and "outside the result's folder" in p]
    assert len(built.problems) == 1
    files = site_files(tmp_path / "site")
    assert SECRET not in files.values()
    assert sum(1 for content in files.values() if content == ok) == 2
    problems = check_submission([path])
    assert [(p.kind, p.field) for p in problems] == [("samples", "samples/0")]
    assert "link.png" in problems[0].message


# ---------- results that are not full, finite results ----------

def _write_nan(results: Path) -> Path:
    bad = make_result("winclip", "btad", config_hash="cccccccccccc", trained_on=())
    bad["metrics"]["per_category"]["cable"]["image_ap"] = float("nan")
    path = results / "nan.json"
    path.write_text(json.dumps(bad, allow_nan=True))
    return path


def test_nan_file_is_skipped_with_its_reason_and_the_rest_builds(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_result_file(results, make_result("winclip", "mvtec", trained_on=()))
    nan = _write_nan(results)
    inf = make_result("winclip", "visa", config_hash="dddddddddddd", trained_on=())
    inf["timings"]["eval_s"] = float("inf")
    (results / "inf.json").write_text(json.dumps(inf, allow_nan=True))
    res = CliRunner().invoke(app, ["leaderboard", "build", "--results", str(results),
                                   "--out", str(tmp_path / "site")])
    assert res.exit_code == 0, res.output
    assert "warning" in res.output and "nan.json" in res.output
    data = json.loads((tmp_path / "site" / "data.json").read_text())
    assert len(data["skipped"]) == 2
    assert any(str(nan) in s and "metrics/per_category/cable/image_ap" in s
               and "not a finite number" in s for s in data["skipped"])
    assert any("inf.json" in s and "timings/eval_s" in s and "not a finite number" in s
               for s in data["skipped"])
    ids = [r["id"] for r in data["rows"] if r["kind"] == "reproduced"]
    assert ids == ["reproduced/winclip/0123456789ab/mvtec->all"]
    problems = check_submission([nan])
    assert ("value", "metrics/per_category/cable/image_ap") in {(p.kind, p.field)
                                                                 for p in problems}


def _smoke_results(results: Path) -> tuple[Path, Path]:
    limited = make_result("winclip", "mvtec", config_hash="eeeeeeeeeeee", trained_on=())
    limited["protocol"]["limit"] = 2
    flagged = make_result("winclip", "visa", config_hash="ffffffffffff", trained_on=())
    flagged["smoke"] = True
    return write_result_file(results, limited), write_result_file(results, flagged)


def test_smoke_runs_are_not_shown_and_not_accepted(tmp_path: Path) -> None:
    results = tmp_path / "results"
    limited, flagged = _smoke_results(results)
    full = write_result_file(results, make_result("winclip", "btad", trained_on=()))
    built = build([results], tmp_path / "site")
    data = json.loads((tmp_path / "site" / "data.json").read_text())
    assert built.reproduced_rows == 1 and built.results_loaded == 1
    row = next(r for r in data["rows"] if r["kind"] == "reproduced")
    assert set(row["cells"]["image_auroc"]) == {"btad"}
    assert sorted(built.problems) == sorted([
        f"{limited}: smoke run (field protocol/limit is 2): not a full result",
        f"{flagged}: smoke run (field smoke is true): not a full result"])
    problems = [p for p in check_submission([limited, flagged, full]) if p.kind == "smoke"]
    assert sorted((Path(p.path).name, p.field) for p in problems) == [
        ("mvtec.json", "protocol/limit"), ("visa.json", "smoke")]
    assert all("smoke run" in p.message and "--limit" in p.message for p in problems)
    res = CliRunner().invoke(app, ["submit", "--check", str(limited)])
    assert res.exit_code == 1 and "smoke run" in res.output


def test_submit_rejects_empty_results(tmp_path: Path) -> None:
    none_measured = make_result("winclip", "btad", {"a": {"image_auroc": None}}, trained_on=())
    path = tmp_path / "null.json"
    path.write_text(json.dumps(none_measured))
    no_images = make_result("winclip", "btad", trained_on=(), config_hash="999999999999")
    no_images["counts"]["total"]["images"] = 0
    path0 = tmp_path / "zero.json"
    path0.write_text(json.dumps(no_images))
    problems = check_submission([path, path0])
    found = {(Path(p.path).name, p.kind, p.field) for p in problems}
    assert ("null.json", "empty", "metrics/mean") in found
    assert ("zero.json", "empty", "counts/total/images") in found
    assert any("0 images" in p.message for p in problems)
    built = build([path, path0], tmp_path / "site")
    assert built.reproduced_rows == 0 and len(built.problems) == 2


# ---------- bad folders fail before any work ----------

def _no_work(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("results were loaded before the folders were checked")


def test_missing_results_folder_is_an_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-results"
    res = CliRunner().invoke(app, ["leaderboard", "build", "--results", str(missing),
                                   "--out", str(tmp_path / "site")])
    assert res.exit_code != 0
    assert "no-such-results" in res.output and "no such file or folder" in res.output
    assert not (tmp_path / "site").exists()
    monkeypatch.setattr(build_module, "load_results", _no_work)
    with pytest.raises(SiteBuildError, match="no-such-results"):
        build([tmp_path, missing], tmp_path / "site")


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def test_read_only_out_folder_fails_before_any_work(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if _writable(parent):  # root ignores permission bits: use a read-only mount instead
            parent = next((p for p in (Path("/sys"), Path("/proc/sys"))
                           if p.is_dir() and not _writable(p)), None)
            if parent is None:
                pytest.skip("no read-only folder available (running as root?)")
        monkeypatch.setattr(build_module, "load_results", _no_work)
        out = parent / "site"
        with pytest.raises(NotWritableError, match=f"cannot write the --out folder {out}"):
            build([tmp_path], out)
        res = CliRunner().invoke(app, ["leaderboard", "build", "--results", str(tmp_path),
                                       "--out", str(out)])
        assert res.exit_code == 1 and str(parent) in res.output
    finally:
        os.chmod(tmp_path / "readonly", 0o755)
