"""The static leaderboard: reported data files, site data, summaries, gallery, CLI, server."""

from __future__ import annotations

import csv
import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.result_factory import make_result, write_result_file
from zsbench.cli import app
from zsbench.leaderboard import reported as reported_module
from zsbench.leaderboard.build import SiteBuildError, build
from zsbench.leaderboard.catalog import DATASET_ID_BY_PAPER_NAME
from zsbench.leaderboard.reported import (
    REPORTED_FILE,
    ReportedDataError,
    convert,
    default_reported_dir,
    load_reported,
)
from zsbench.leaderboard.serve import make_server
from zsbench.leaderboard.site_data import common_datasets, page_summary, summarize

REPO = Path(__file__).resolve().parents[1]
CURATED_SOURCES = reported_module.CURATED_SOURCES
FAPROMPT_METHODS = {"CLIP", "CLIP-AC", "WinCLIP", "APRIL-GAN", "AnoVL", "CoOp", "CoCoOp", "BLIP",
                    "AnomalyCLIP", "FiLO", "FAPrompt"}
METRIC_BY_LEVEL = {("image", "auroc"): "image_auroc", ("image", "ap"): "image_ap",
                   ("pixel", "auroc"): "pixel_auroc", ("pixel", "aupro"): "aupro_legacy"}


def shared_dir() -> Path:
    return Path(os.environ.get("ZSBENCH_SHARED") or Path(__file__).resolve().parents[2] / "shared")


@pytest.fixture
def reference_dir() -> Path:
    ref = shared_dir() / "reference"
    if not (ref / "faprompt_paper_tables.csv").is_file():
        pytest.skip(f"shared reference CSVs not found under {ref} (set ZSBENCH_SHARED)")
    return ref


@pytest.fixture(scope="module")
def reported_site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Site data built from the reported numbers alone (an empty results folder)."""
    root = tmp_path_factory.mktemp("reported_site")
    (root / "results").mkdir()
    built = build([root / "results"], root / "site")
    assert built.problems == [] and built.reproduced_rows == 0
    return json.loads((root / "site" / "data.json").read_text())


def cell_value(data: dict, row_id: str, metric: str, dataset: str) -> float | None:
    row = next(r for r in data["rows"] if r["id"] == row_id)
    cell = row["cells"].get(metric, {}).get(dataset)
    return None if cell is None else cell["value"]


# ---------- reported data files ----------

def test_committed_reported_files_are_convert_output(reference_dir: Path, tmp_path: Path) -> None:
    convert(reference_dir, tmp_path)
    committed = REPO / "leaderboard" / "reported"
    for name in (REPORTED_FILE, "README.md"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name


def test_reported_csv_keeps_every_value_exactly(reference_dir: Path) -> None:
    values = load_reported(REPO / "leaderboard" / "reported")
    by_key = {(v.source_id, v.method, v.dataset, v.metric, v.category): v.value_text
              for v in values}
    with (reference_dir / "faprompt_paper_tables.csv").open() as f:
        fa_rows = list(csv.DictReader(f))
    for row in fa_rows:
        key = ("faprompt_tables", row["method"], DATASET_ID_BY_PAPER_NAME[row["dataset"]],
               METRIC_BY_LEVEL[(row["level"], row["metric"])], "")
        assert by_key[key] == row["value"], key
    with (reference_dir / "anomalyclip_released_logs.csv").open() as f:
        logs = list(csv.DictReader(f))
    for row in logs:
        key = ("anomalyclip_logs", "AnomalyCLIP", DATASET_ID_BY_PAPER_NAME[row["dataset"]],
               "aupro_legacy", row["category"])
        assert by_key[key] == row["pixel_aupro_legacy"]
    with (reference_dir / "reported_other.csv").open() as f:
        other = list(csv.DictReader(f))
    with (REPO / "leaderboard" / "curated" / "second_wave_papers.csv").open() as f:
        curated = list(csv.DictReader(f))
    assert len(values) == len(fa_rows) + len(other) + 4 * len(logs) + len(curated)
    # every PRO of these tables is the legacy routine, never exact AUPRO
    assert not any(v.metric == "aupro" for v in values)


def test_shipped_reported_dir_is_the_committed_one() -> None:
    assert (default_reported_dir() / REPORTED_FILE).read_text() == \
        (REPO / "leaderboard" / "reported" / REPORTED_FILE).read_text()


def test_convert_names_file_line_and_value(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "faprompt_paper_tables.csv").write_text(
        "dataset,domain,method,level,metric,value\n"
        "MVTecAD,industrial,CLIP,image,auroc,74.1\n"
        "NoSuchSet,industrial,CLIP,image,auroc,50\n")
    with pytest.raises(ReportedDataError, match=r"faprompt_paper_tables.csv:3.*'NoSuchSet'"):
        convert(ref, tmp_path / "out")
    (ref / "faprompt_paper_tables.csv").write_text(
        "dataset,domain,method,level,metric,value\nMVTecAD,industrial,CLIP,image,auroc,174\n")
    with pytest.raises(ReportedDataError, match=r":2: field value: '174'"):
        convert(ref, tmp_path / "out")
    assert not (tmp_path / "out" / REPORTED_FILE).exists()


# ---------- site built from reported numbers ----------

def test_reported_site_has_all_faprompt_methods_and_tps(reported_site: dict) -> None:
    fa = {r["method"] for r in reported_site["rows"] if r["source_id"] == "faprompt_tables"}
    assert fa == FAPROMPT_METHODS
    tps = [r for r in reported_site["rows"] if r["method"] == "TPS"]
    assert len(tps) == 1
    assert set(tps[0]["cells"]["image_auroc"]) == {"mvtec", "visa", "mpdd", "btad", "headct",
                                                   "brainmri", "br35h"}
    assert all(r["kind"] == "reported" for r in reported_site["rows"])
    # FAPrompt tables: 13 datasets at image level, 14 at pixel level, for every method
    for row in reported_site["rows"]:
        if row["source_id"] == "faprompt_tables":
            assert len(row["cells"]["image_auroc"]) == 13, row["method"]
            assert len(row["cells"]["aupro_legacy"]) == 14, row["method"]
            assert "aupro" not in row["cells"]


def test_reported_site_values_equal_the_csvs(reported_site: dict) -> None:
    ref = shared_dir() / "reference"
    if (ref / "faprompt_paper_tables.csv").is_file():
        with (ref / "faprompt_paper_tables.csv").open() as f:
            expected = [("faprompt_tables", r["method"], DATASET_ID_BY_PAPER_NAME[r["dataset"]],
                         METRIC_BY_LEVEL[(r["level"], r["metric"])], r["value"])
                        for r in csv.DictReader(f)]
        source_ids = {"TPS README results figure (majitao-xd/TPS)": "tps_readme",
                      "AnomalyCLIP paper, ICLR 2024 (README tables)": "anomalyclip_paper"}
        with (ref / "reported_other.csv").open() as f:
            expected += [(source_ids[r["source"]], r["method"],
                          DATASET_ID_BY_PAPER_NAME[r["dataset"]],
                          METRIC_BY_LEVEL[(r["level"], r["metric"])], r["value"])
                         for r in csv.DictReader(f)]
        assert len(expected) == 594 + 82
        expected += [(v.source_id, v.method, v.dataset, v.metric, v.value_text)
                     for v in load_reported() if v.source_id in CURATED_SOURCES]
    else:  # no shared folder: the committed data files are the reference
        expected = [(v.source_id, v.method, v.dataset, v.metric, v.value_text)
                    for v in load_reported() if not v.category]
    for source_id, method, dataset, metric, text in expected:
        got = cell_value(reported_site, f"reported/{source_id}/{method}", metric, dataset)
        assert got == float(text), (source_id, method, dataset, metric)
    n_cells = sum(len(c) for r in reported_site["rows"] for c in r["cells"].values())
    assert n_cells == len(expected)


def test_reported_site_per_class_drilldown(reported_site: dict) -> None:
    mvtec = [e for e in reported_site["drilldown"]["mvtec"] if e["kind"] == "reported"]
    assert len(mvtec) == 1
    assert mvtec[0]["metrics"]["image_auroc"]["carpet"] == 100.0
    assert mvtec[0]["metrics"]["aupro_legacy"]["cable"] == 64.0
    assert len(mvtec[0]["metrics"]["pixel_auroc"]) == 15
    assert len(reported_site["drilldown"]["visa"][0]["metrics"]["image_ap"]) == 12


def test_reported_site_default_summary(reported_site: dict) -> None:
    summary = page_summary(reported_site, "image_auroc")[1]["reported/faprompt_tables/FAPrompt"]
    row = next(r for r in reported_site["rows"] if r["id"] == "reported/faprompt_tables/FAPrompt")
    values = [c["value"] for c in row["cells"]["image_auroc"].values()]
    assert summary["count"] == 13
    assert summary["mean"] == pytest.approx(sum(values) / 13)
    # data.json carries no copy of the means: the page computes them (assets/table.js)
    assert reported_site["format"] == 2 and "summary" not in reported_site


# ---------- summaries ----------

def _row(row_id: str, values: dict[str, float | None]) -> dict:
    return {"id": row_id, "cells": {"m": {d: {"value": v} for d, v in values.items()
                                          if v is not None}}}


def test_mean_rank_on_a_hand_made_case() -> None:
    rows = [_row("A", {"d1": 90.0, "d2": 80.0}), _row("B", {"d1": 70.0}),
            _row("C", {"d1": 90.0, "d2": 85.0, "d3": None}), _row("D", {})]
    # common set {d1, d2}: 2 rows x 2 datasets = 4 values ranked (beats {d1}: 3 rows x 1)
    assert common_datasets(rows, "m", ["d1", "d2", "d3"]) == ["d1", "d2"]
    s = summarize(rows, "m", ["d1", "d2", "d3"])
    # d1: A and C tie for ranks 1-2 (1.5 each); d2: C 1st, A 2nd; d3: nobody
    assert s["A"].mean == 85.0 and s["A"].mean_rank == 1.75 and s["A"].count == 2
    assert s["C"].mean == 87.5 and s["C"].mean_rank == 1.25 and s["C"].count == 2
    assert s["A"].ranked and s["C"].ranked
    # B lacks d2: its mean is over its own dataset, it is not ranked (was rank 3.0 on d1 alone)
    assert s["B"].mean == 70.0 and s["B"].mean_rank is None and s["B"].count == 1
    assert not s["B"].ranked
    assert s["D"].mean is None and s["D"].mean_rank is None and s["D"].count == 0
    only_d2 = summarize(rows, "m", ["d2"])
    assert only_d2["B"].count == 0 and only_d2["A"].mean_rank == 2.0


# ---------- reproduced results ----------

def _anomalyclip_results(out: Path) -> list[Path]:
    mvtec = make_result("AnomalyCLIP", "mvtec", {
        "bottle": {"image_auroc": 0.90, "image_ap": 0.96, "pixel_auroc": None},
        "cable": {"image_auroc": 0.92, "image_ap": 0.94, "pixel_auroc": None}},
        config_hash="aaaaaaaaaaaa", protocol="paper", trained_on=("visa",))
    visa = make_result("AnomalyCLIP", "visa", {
        "candle": {"image_auroc": 0.80, "image_ap": 0.86},
        "pcb1": {"image_auroc": 0.84, "image_ap": 0.84}},
        config_hash="aaaaaaaaaaaa", protocol="paper", trained_on=("mvtec",))
    return [write_result_file(out, mvtec), write_result_file(out, visa)]


def test_reproduced_rows_and_differences(tmp_path: Path) -> None:
    _anomalyclip_results(tmp_path / "results")
    built = build([tmp_path / "results"], tmp_path / "site")
    data = json.loads((tmp_path / "site" / "data.json").read_text())
    assert built.reproduced_rows == 1 and built.reported_rows == 13 + len(CURATED_SOURCES)
    row_id = "reproduced/AnomalyCLIP/aaaaaaaaaaaa/paper"
    row = next(r for r in data["rows"] if r["id"] == row_id)
    assert row["kind"] == "reproduced"
    assert row["cells"]["image_auroc"]["mvtec"]["value"] == pytest.approx(91.0)
    assert row["cells"]["image_ap"]["visa"]["value"] == pytest.approx(85.0)
    # NA (all categories null): no cell at all, so never averaged as 0
    assert "pixel_auroc" not in row["cells"]
    summary = page_summary(data, "image_auroc")[1][row_id]
    assert summary["mean"] == pytest.approx(86.5) and summary["count"] == 2
    prov = row["cells"]["image_auroc"]["mvtec"]["provenance"]
    assert prov["config_hash"] == "aaaaaaaaaaaa" and prov["git_commit"] == "abcdef1234567890"
    assert prov["created_at"] and prov["zsbench_version"] and prov["hardware"]["cpus"] == 2
    diffs = {(c["metric"], c["dataset"]): c for c in data["comparisons"]}
    assert set(diffs) == {("image_auroc", "mvtec"), ("image_ap", "mvtec"),
                          ("image_auroc", "visa"), ("image_ap", "visa")}
    # the method's own paper is preferred: AnomalyCLIP paper VisA AP is 85.4 (FAPrompt: 84.6)
    assert diffs[("image_ap", "visa")]["reported"] == 85.4
    assert diffs[("image_ap", "visa")]["difference"] == pytest.approx(85.0 - 85.4)
    assert diffs[("image_auroc", "mvtec")]["difference"] == pytest.approx(91.0 - 91.5)
    assert diffs[("image_auroc", "visa")]["difference"] == pytest.approx(82.0 - 82.1)
    for c in data["comparisons"]:
        assert c["reported_row"] == "reported/anomalyclip_paper/AnomalyCLIP"
    drill = [e for e in data["drilldown"]["mvtec"] if e["kind"] == "reproduced"]
    assert drill[0]["metrics"]["image_auroc"] == {"bottle": 90.0, "cable": 92.0}
    assert drill[0]["metrics"]["pixel_auroc"] == {"bottle": None, "cable": None}


def test_bad_result_files_are_skipped_and_named(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _anomalyclip_results(results)
    (results / "broken.json").write_text("{not json")
    bad = make_result("AnomalyCLIP", "btad", config_hash="bbbbbbbbbbbb")
    bad["metrics"]["mean"]["image_auroc"] = 91.5  # percent, not a fraction
    (results / "percent.json").write_text(json.dumps(bad))
    built = build([results], tmp_path / "site")
    assert len(built.problems) == 2
    assert any("broken.json" in p and "not valid JSON" in p for p in built.problems)
    assert any("percent.json" in p and "metrics/mean/image_auroc" in p for p in built.problems)
    data = json.loads((tmp_path / "site" / "data.json").read_text())
    assert data["skipped"] == built.problems
    assert not any("bbbbbbbbbbbb" in r["id"] for r in data["rows"])
    assert built.results_loaded == 2


def test_duplicate_results_keep_the_newer_and_say_so(tmp_path: Path) -> None:
    old = make_result("winclip", "synthetic_a", {"a": {"image_auroc": 0.5}},
                      created_at="2024-01-01T00:00:00", trained_on=())
    new = make_result("winclip", "synthetic_a", {"a": {"image_auroc": 0.7}},
                      created_at="2025-01-01T00:00:00", trained_on=())
    write_result_file(tmp_path / "r1", old)
    write_result_file(tmp_path / "r2", new)
    built = build([tmp_path / "r1", tmp_path / "r2"], tmp_path / "site")
    data = json.loads((tmp_path / "site" / "data.json").read_text())
    row = next(r for r in data["rows"] if r["kind"] == "reproduced")
    assert row["cells"]["image_auroc"]["synthetic_a"]["value"] == 70.0
    assert len(built.problems) == 1 and "duplicate" in built.problems[0]
    assert {"id": "synthetic_a", "title": "synthetic_a", "domain": "industrial"} in \
        data["datasets"]


def test_gallery_images_are_copied(tmp_path: Path) -> None:
    results = tmp_path / "results"
    result = make_result("winclip", "synthetic_b", samples=["maps/x.png", "maps/missing.png"],
                         domain="synthetic", trained_on=())
    path = write_result_file(results, result)
    (path.parent / "maps").mkdir()
    png = b"\x89PNG\r\n\x1a\n" + b"fake-but-copied-bytes"
    (path.parent / "maps" / "x.png").write_bytes(png)
    built = build([results], tmp_path / "site")
    data = json.loads((tmp_path / "site" / "data.json").read_text())
    assert built.gallery_images == 1
    image = data["gallery"][0]["images"][0]
    assert (tmp_path / "site" / image["src"]).read_bytes() == png
    assert data["gallery"][0]["dataset"] == "synthetic_b"
    assert len(built.problems) == 1 and "samples/1" in built.problems[0]
    assert "missing.png" in built.problems[0]


def test_site_is_self_contained(tmp_path: Path) -> None:
    _anomalyclip_results(tmp_path / "results")
    site = build([tmp_path / "results"], tmp_path / "site").out_dir
    index = (site / "index.html").read_text()
    for asset in ("style.css", "data.js", "table.js", "charts.js", "app.js"):
        assert f'"{asset}"' in index and (site / asset).is_file()
    for name in ("index.html", "style.css", "table.js", "charts.js", "app.js"):
        text = (site / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "fetch(" not in text, name
    data_js = (site / "data.js").read_text()
    prefix = "window.ZSBENCH_DATA = "
    assert data_js.startswith(prefix)
    assert json.loads(data_js[len(prefix):].rstrip().rstrip(";")) == \
        json.loads((site / "data.json").read_text())


def test_out_dir_that_is_not_a_site_is_never_replaced(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SiteBuildError, match="precious"):
        build([], precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    site = tmp_path / "site"
    build([], site)
    build([], site)  # a folder built by zsbench is replaced
    assert (site / "index.html").is_file()


# ---------- CLI and server ----------

def test_cli_build_prints_skipped_files(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _anomalyclip_results(results)
    (results / "broken.json").write_text("[]")
    out = tmp_path / "site"
    res = CliRunner().invoke(app, ["leaderboard", "build", "--results", str(results),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "broken.json" in res.output
    assert "1 reproduced rows" in res.output
    assert (out / "index.html").is_file()
    res = CliRunner().invoke(app, ["leaderboard", "build", "--results", str(results),
                                   "--out", str(results)])
    assert res.exit_code == 1 and "refusing" in res.output


def test_serve_returns_the_site(tmp_path: Path) -> None:
    site = build([], tmp_path / "site").out_dir
    server = make_server(site, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as resp:
            assert resp.status == 200 and b"zsbench" in resp.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data.json", timeout=10) as resp:
            assert len(json.loads(resp.read())["rows"]) == 13 + len(CURATED_SOURCES)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(FileNotFoundError, match="no index.html"):
        make_server(tmp_path, port=0)


def test_synthetic_datasets_do_not_enter_means_when_real_ones_exist():
    from zsbench.leaderboard.site_data import build_site_data

    real = make_result("winclip", "mvtec", {"bottle": {"image_auroc": 0.8}})
    synthetic = make_result("winclip", "synthetic_b", {"a": {"image_auroc": 0.2}},
                            domain="synthetic")
    demo_only = make_result("tps", "synthetic_b", {"a": {"image_auroc": 0.9}},
                            domain="synthetic", trained_on=(), protocol="none->synthetic_b")
    data = build_site_data([real, synthetic, demo_only], [])
    rows = {row["label"]: row["id"] for row in data["rows"]}
    summary = page_summary(data, "image_auroc")[1]
    assert len(rows) == 2  # winclip covers mvtec and synthetic_b in one row
    assert summary[rows["winclip"]]["mean"] == pytest.approx(80.0)
    assert summary[rows["winclip"]]["count"] == 1
    assert summary[rows["tps"]]["mean"] is None and summary[rows["tps"]]["count"] == 0
    only_synthetic = build_site_data([synthetic], [])
    only_summary = page_summary(only_synthetic, "image_auroc")[1]
    assert next(iter(only_summary.values()))["mean"] == pytest.approx(20.0)


def test_second_wave_reported_rows_are_shipped_with_their_sources() -> None:
    from zsbench.leaderboard.reported import CURATED_SOURCES

    values = [v for v in load_reported(REPO / "leaderboard" / "reported")
              if v.source_id in CURATED_SOURCES]
    by_key = {(v.method, v.dataset, v.metric): v for v in values}
    musc = by_key[("MuSc", "mvtec", "image_auroc")]
    assert (musc.value_text, musc.trained_on, musc.protocol) == ("97.8", "", "zero-shot")
    adaclip = by_key[("AdaCLIP", "mvtec", "image_auroc")]
    assert adaclip.protocol == "visa+cvc_clinicdb->mvtec" and adaclip.value == 89.2
    assert by_key[("AA-CLIP", "mvtec", "pixel_auroc")].value_text == "91.88"
    assert {v.source_id for v in values} == set(CURATED_SOURCES)


def test_a_curated_row_with_an_unknown_source_names_file_and_line(tmp_path: Path) -> None:
    from zsbench.leaderboard.reported import ReportedDataError, _curated_rows

    path = tmp_path / "curated.csv"
    path.write_text("source_id,table,method,dataset,metric,value,trained_on\n"
                    "musc_readme,T,MuSc,mvtec,image_auroc,97.8,\n"
                    "nowhere,T,X,mvtec,image_auroc,50,\n")
    with pytest.raises(ReportedDataError, match=r"curated.csv:3: field source_id: unknown "
                                                r"source 'nowhere'"):
        _curated_rows(path)
    path.write_text("source_id,table,method,dataset,metric,value,trained_on\n"
                    "musc_readme,T,MuSc,mvtec,pixel_f1,50,\n")
    with pytest.raises(ReportedDataError, match="field metric: 'pixel_f1' is not one of"):
        _curated_rows(path)
