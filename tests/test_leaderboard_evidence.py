"""The leaderboard's evidence (issue 14): seed groups (mean +- std with n), bootstrap intervals,
the "not zero-shot" flag and its filter, the method kind, cost columns and the accuracy-vs-cost
chart; Python data model and the page's table model (assets/table.js, run in Node)."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.result_factory import (
    make_cost,
    make_leakage,
    make_result,
    with_bootstrap,
    with_seed,
    write_result_file,
)
from tests.test_leaderboard_js import ASSETS, NODE, VIEW, needs_node
from zsbench.leaderboard.build import build
from zsbench.leaderboard.site_data import (
    build_site_data,
    reproduced_row_id,
    scatter_points,
    seedless_settings,
    summarize,
)

TRAINED = {"trainable": True, "transductive": False}
FREE = {"trainable": False, "transductive": False}
TRANSDUCTIVE = {"trainable": False, "transductive": True}
STOCHASTIC = {"trainable": True, "transductive": False, "stochastic": True, "few_shot": False,
              "kinds": ["auxiliary-trained", "stochastic"], "samples": 10, "seed": 111}


def seeded(seed: int, auroc: tuple[float, float], **kw: Any) -> dict[str, Any]:
    """AnomalyCLIP trained on VisA, evaluated on MVTec AD with evaluation and training seed
    ``seed``; ``auroc`` = the two categories' image AUROC."""
    identity = kw.pop("identity", {})
    kw.setdefault("config_hash", "aaaaaaaaaaaa")
    result = make_result("AnomalyCLIP", "mvtec", {"bottle": {"image_auroc": auroc[0]},
                                                   "cable": {"image_auroc": auroc[1]}},
                         protocol="visa->all", method_kind=TRAINED, **kw)
    return with_seed(result, seed, training_seed=seed, **identity)


def rows_by_id(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in data["rows"]}


def data_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The page's data for ``results`` (no reported rows), as JSON round-trips it."""
    return json.loads(json.dumps(build_site_data(results, [])))


# ---------- seeds ----------

def test_seed_group_is_one_row_with_mean_std_and_n() -> None:
    # dataset means 0.80, 0.84, 0.86 -> 80, 84, 86 %: mean 250/3, std (ddof 1) sqrt(28/3)
    results = [seeded(111, (0.78, 0.82)), seeded(112, (0.84, 0.84)), seeded(113, (0.90, 0.82))]
    data = data_of(results)
    assert len(data["rows"]) == 1
    cell = data["rows"][0]["cells"]["image_auroc"]["mvtec"]
    assert cell["value"] == pytest.approx(250 / 3, abs=1e-6)
    assert cell["seeds"]["n"] == 3
    assert cell["seeds"]["std"] == pytest.approx(math.sqrt(28 / 3), abs=1e-6)
    assert cell["seeds"]["std"] == pytest.approx(statistics.stdev([80, 84, 86]), abs=1e-6)
    assert [(v["seed"], v["value"]) for v in cell["seeds"]["values"]] == [
        ("111", pytest.approx(80)), ("112", pytest.approx(84)), ("113", pytest.approx(86))]
    assert cell["provenance"]["seed"] == "111, 112, 113"
    # the seeds are one row in the ranking, with the mean as its value
    summary = summarize(data["rows"], "image_auroc", ["mvtec"])
    assert summary[data["rows"][0]["id"]].mean == pytest.approx(250 / 3, abs=1e-6)
    # the drill-down keeps each seed's per-category values
    labels = sorted(e["label"] for e in data["drilldown"]["mvtec"])
    assert labels == [f"AnomalyCLIP (seed {s})" for s in (111, 112, 113)]


def test_a_single_seed_shows_the_value_alone() -> None:
    data = data_of([seeded(111, (0.78, 0.82))])
    cell = data["rows"][0]["cells"]["image_auroc"]["mvtec"]
    assert cell["value"] == pytest.approx(80) and "seeds" not in cell
    assert cell["provenance"]["seed"] == 111


def test_results_differing_in_more_than_the_seed_are_not_grouped() -> None:
    base = seeded(111, (0.78, 0.82))
    other_resolution = seeded(112, (0.84, 0.84), identity={"resolution": 336})
    other_checkpoint = seeded(113, (0.90, 0.82), identity={"checkpoint_sha256": "c" * 64})
    other_lr = seeded(114, (0.70, 0.70))
    other_lr["identity"]["training"] = {**base["identity"]["training"],
                                        "config": {"epochs": 1, "lr": 0.01, "seed": 114}}
    other_config = seeded(115, (0.60, 0.60), config_hash="bbbbbbbbbbbb")
    results = [base, other_resolution, other_checkpoint, other_lr, other_config]
    assert len({seedless_settings(r) for r in results[:4]}) == 4
    data = data_of(results)
    assert len(data["rows"]) == 5
    assert all("seeds" not in r["cells"]["image_auroc"]["mvtec"] for r in data["rows"])
    # the training seed alone does not split a row; another evaluation seed neither
    assert seedless_settings(seeded(7, (0.5, 0.5))) == seedless_settings(base)
    # rows of one method, config and protocol name their settings to be told apart
    details = [r["detail"] for r in data["rows"] if "aaaaaaaaaaaa" in r["detail"]]
    assert len(set(details)) == 4 and all("settings" in d for d in details)
    assert {reproduced_row_id(r) for r in results} == {r["id"] for r in data["rows"]}


def test_a_repeated_seed_is_a_duplicate_and_the_newer_is_kept() -> None:
    older = seeded(111, (0.78, 0.82), created_at="2025-01-01T00:00:00+00:00")
    newer = seeded(111, (0.90, 0.90), created_at="2025-02-01T00:00:00+00:00")
    problems: list[str] = []
    data = build_site_data([older, newer], [], problems)
    cell = data["rows"][0]["cells"]["image_auroc"]["mvtec"]
    assert cell["value"] == pytest.approx(90) and "seeds" not in cell
    assert len(data["skipped"]) == 1 and "duplicate" in data["skipped"][0]


# ---------- intervals ----------

def test_bootstrap_intervals_reach_the_cells_and_the_drilldown(tmp_path: Path) -> None:
    result = with_bootstrap(make_result("winclip", "mvtec", {"bottle": {"image_auroc": 0.9},
                                                             "cable": {"image_auroc": 0.7}},
                                        method_kind=FREE), half_width=0.03)
    write_result_file(tmp_path / "results", result)
    site = build([tmp_path / "results"], tmp_path / "site", reported_dir=None).out_dir
    data = json.loads((site / "data.json").read_text())
    row = next(r for r in data["rows"] if r["kind"] == "reproduced")
    cell = row["cells"]["image_auroc"]["mvtec"]
    assert cell["value"] == pytest.approx(80)
    assert cell["interval"]["low"] == pytest.approx(77) and cell["interval"]["high"] == \
        pytest.approx(83)
    assert cell["interval"]["confidence"] == 0.95 and cell["interval"]["replicates"] == 1000
    entry = next(e for e in data["drilldown"]["mvtec"] if e["kind"] == "reproduced")
    assert entry["intervals"]["image_auroc"]["bottle"] == {"low": pytest.approx(87),
                                                           "high": pytest.approx(93)}
    # reported rows have none of these fields: no interval, no kind, no cost, no ledger
    reported = [r for r in data["rows"] if r["kind"] == "reported"]
    assert reported and all(r["cost"] is None and r["method_kind"] is None
                            and r["leakage"] is None for r in reported)
    assert not any("interval" in c for r in reported for cells in r["cells"].values()
                   for c in cells.values())


def test_seeds_keep_their_own_intervals() -> None:
    results = [with_bootstrap(seeded(s, v)) for s, v in ((111, (0.78, 0.82)),
                                                           (112, (0.84, 0.84)))]
    cell = data_of(results)["rows"][0]["cells"]["image_auroc"]["mvtec"]
    assert "interval" not in cell  # a seed mean has no bootstrap interval of its own
    assert [v["interval"]["low"] for v in cell["seeds"]["values"]] == [pytest.approx(78),
                                                                      pytest.approx(82)]


# ---------- leakage, kind, cost ----------

def evidence_results() -> list[dict[str, Any]]:
    """A flagged trained row (mvtec -> mvtec), a clean trained row, a training-free row with a
    cost, a transductive row, and one without any evidence field."""
    cats = {"bottle": {"image_auroc": 0.95}, "cable": {"image_auroc": 0.85}}
    return [
        make_result("AnomalyCLIP", "mvtec", cats, config_hash="111111111111",
                    protocol="mvtec->mvtec", trained_on=("mvtec",), method_kind=TRAINED,
                    leakage=make_leakage("mvtec", ("bottle", "cable"), ("mvtec",)),
                    cost=make_cost(latency_ms=60.0, trainable=9_216, gflops=160.0,
                                   training_time_s=5400.0)),
        make_result("AnomalyCLIP", "mvtec", {"bottle": {"image_auroc": 0.9},
                                             "cable": {"image_auroc": 0.8}},
                    config_hash="222222222222", protocol="visa->all", trained_on=("visa",),
                    method_kind=TRAINED,
                    leakage=make_leakage("mvtec", ("bottle", "cable"), ("visa",)),
                    cost=make_cost(latency_ms=50.0, trainable=9_216, gflops=150.0,
                                   training_time_s=3600.0)),
        make_result("AnomalyCLIP", "visa", {"candle": {"image_auroc": 0.7}},
                    config_hash="222222222222", protocol="visa->all", trained_on=("visa",),
                    method_kind=TRAINED,
                    leakage=make_leakage("visa", ("candle",), ("visa",)),
                    cost=make_cost(latency_ms=70.0, trainable=9_216, gflops=150.0,
                                   training_time_s=3600.0)),
        make_result("WinCLIP", "mvtec", {"bottle": {"image_auroc": 0.9},
                                         "cable": {"image_auroc": 0.9}},
                    config_hash="333333333333", protocol="zero-shot", trained_on=(),
                    method_kind=FREE, cost=make_cost(latency_ms=400.0, trainable=0,
                                                     gflops=900.0)),
        make_result("AnoVL", "mvtec", {"bottle": {"image_auroc": 0.85},
                                       "cable": {"image_auroc": 0.85}},
                    config_hash="444444444444", protocol="zero-shot", trained_on=(),
                    method_kind=TRANSDUCTIVE),
        make_result("clip", "mvtec", {"bottle": {"image_auroc": 0.6},
                                      "cable": {"image_auroc": 0.6}},
                    config_hash="555555555555", protocol="zero-shot", trained_on=()),
    ]


@pytest.fixture(scope="module")
def evidence_data() -> dict[str, Any]:
    return data_of(evidence_results())


def test_leakage_flag_per_row_and_cell(evidence_data: dict[str, Any]) -> None:
    rows = rows_by_id(evidence_data)
    flagged = rows["reproduced/AnomalyCLIP/111111111111/mvtec->mvtec"]
    assert flagged["leakage"] == {"zero_shot": False, "flagged": ["mvtec"]}
    cell = flagged["cells"]["image_auroc"]["mvtec"]
    assert cell["leakage"]["label"] == "not zero-shot"
    assert {f["kind"] for f in cell["leakage"]["flags"]} == {"same_dataset"}
    # trained on VisA: clean on MVTec AD, flagged on VisA (its own training set)
    mixed = rows["reproduced/AnomalyCLIP/222222222222/visa->all"]
    assert mixed["leakage"] == {"zero_shot": False, "flagged": ["visa"]}
    assert mixed["cells"]["image_auroc"]["mvtec"]["leakage"]["zero_shot"] is True
    # no ledger: no verdict (not "zero-shot" by default)
    assert rows["reproduced/clip/555555555555/zero-shot"]["leakage"] is None


def test_method_kind_and_cost_columns(evidence_data: dict[str, Any]) -> None:
    rows = rows_by_id(evidence_data)
    assert rows["reproduced/WinCLIP/333333333333/zero-shot"]["method_kind"] == FREE
    assert rows["reproduced/AnoVL/444444444444/zero-shot"]["method_kind"] == TRANSDUCTIVE
    assert rows["reproduced/clip/555555555555/zero-shot"]["method_kind"] is None
    # the row's cost: per field the median over its results (MVTec AD 50 ms, VisA 70 ms)
    cost = rows["reproduced/AnomalyCLIP/222222222222/visa->all"]["cost"]
    assert cost["results"] == 2 and cost["latency_batch1_ms"] == pytest.approx(60.0)
    assert cost["flops_per_image"] == 150_000_000_000 and cost["trainable_parameters"] == 9216
    assert cost["peak_memory_bytes"] == 2 * 2 ** 30 and cost["training_time_s"] == 3600.0
    assert rows["reproduced/WinCLIP/333333333333/zero-shot"]["cost"]["training_time_s"] is None
    assert rows["reproduced/AnoVL/444444444444/zero-shot"]["cost"] is None


def test_scatter_points_python(evidence_data: dict[str, Any]) -> None:
    points = scatter_points(evidence_data["rows"], "image_auroc", ["mvtec", "visa"], "gflops")
    got = {p["row_id"].split("/")[2]: (p["x"], p["y"], p["ranked"]) for p in points}
    # the three rows with a cost all have MVTec AD: means over it; the VisA row is unranked
    assert got == {"111111111111": (pytest.approx(160.0), pytest.approx(90.0), True),
                   "222222222222": (pytest.approx(150.0), pytest.approx(85.0), True),
                   "333333333333": (pytest.approx(900.0), pytest.approx(90.0), True)}
    trainable = scatter_points(evidence_data["rows"], "image_auroc", ["mvtec"], "trainable")
    assert sorted(p["x"] for p in trainable) == [0, 9216, 9216]


# ---------- the page's model (table.js in Node) ----------

_RUN = """
global.window = global;
require(process.argv[1]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const T = ZS.table;
const m = T.tableModel(input.data, input.view);
process.stdout.write(JSON.stringify({
  rows: m.rows.map(function (r) { return r.id; }), flagged: m.flagged, costs: m.costs,
  kinds: m.rows.map(T.kindLabel),
  texts: m.rows.map(function (r) { const c = T.cellOf(r, m.metric, "mvtec");
                                   return c ? T.cellText(c) : null; }),
  scatter: T.scatterPoints(m.rows, m.metric, m.rankedOver, input.measure, m.trainedOn),
  formats: input.formats.map(function (f) { return T.formatCost(f[0], f[1]); }),
}));
"""


def page_model(data: dict[str, Any], measure: str = "latency",
               formats: tuple = (), **view: str) -> dict[str, Any]:
    done = subprocess.run([NODE, "-e", _RUN, str(ASSETS / "table.js")],
                          input=json.dumps({"data": data, "view": {**VIEW, **view},
                                            "measure": measure, "formats": list(formats)}),
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@needs_node
def test_hide_flagged_filter_in_the_table_model(evidence_data: dict[str, Any]) -> None:
    shown = page_model(evidence_data)
    assert len(shown["rows"]) == 5 and shown["flagged"] == 2  # badged, not hidden, by default
    hidden = page_model(evidence_data, leak="hide")
    assert len(hidden["rows"]) == 3 and hidden["flagged"] == 0
    assert not any(r.startswith("reproduced/AnomalyCLIP/") for r in hidden["rows"])


@needs_node
def test_kind_filter_and_labels_in_the_table_model(evidence_data: dict[str, Any]) -> None:
    everything = page_model(evidence_data, sort="method", dir="asc")
    assert dict(zip(everything["rows"], everything["kinds"], strict=True)) == {
        "reproduced/AnomalyCLIP/111111111111/mvtec->mvtec": "trained",
        "reproduced/AnomalyCLIP/222222222222/visa->all": "trained",
        "reproduced/AnoVL/444444444444/zero-shot": "training-free",
        "reproduced/WinCLIP/333333333333/zero-shot": "training-free",
        "reproduced/clip/555555555555/zero-shot": None}
    assert page_model(evidence_data, mkind="transductive")["rows"] == [
        "reproduced/AnoVL/444444444444/zero-shot"]
    assert len(page_model(evidence_data, mkind="trained")["rows"]) == 2
    assert len(page_model(evidence_data, mkind="training-free")["rows"]) == 2
    assert page_model(evidence_data, mkind="stochastic")["rows"] == []


@needs_node
def test_stochastic_filter_in_the_table_model() -> None:
    data = data_of([*evidence_results(), make_result(
        "Bayes-PFL", "mvtec", {"bottle": {"image_auroc": 0.9}, "cable": {"image_auroc": 0.9}},
        config_hash="666666666666", protocol="visa->all", trained_on=("visa",),
        method_kind=STOCHASTIC)])
    assert page_model(data, mkind="stochastic")["rows"] == [
        "reproduced/Bayes-PFL/666666666666/visa->all"]
    assert "reproduced/Bayes-PFL/666666666666/visa->all" in page_model(data, mkind="trained")[
        "rows"]


@needs_node
def test_cost_sort_and_formats_in_the_table_model(evidence_data: dict[str, Any]) -> None:
    model = page_model(evidence_data, sort="cost:latency_batch1_ms", dir="asc", formats=(
        ("latency_batch1_ms", 41.26), ("peak_memory_bytes", 3 * 2 ** 30),
        ("flops_per_image", 1.5e11), ("trainable_parameters", 9216),
        ("trainable_parameters", 0), ("training_time_s", 5400), ("training_time_s", 30),
        ("training_time_s", None)))
    # 60 (mvtec->mvtec), 60 (median of 50 and 70), 400; rows without a cost last
    assert model["rows"][:3] == ["reproduced/AnomalyCLIP/111111111111/mvtec->mvtec",
                                 "reproduced/AnomalyCLIP/222222222222/visa->all",
                                 "reproduced/WinCLIP/333333333333/zero-shot"]
    assert model["costs"] is True
    assert model["formats"] == ["41.3", "3.00", "150.0", "9.2k", "0", "90 min", "30 s",
                                "\u2013"]


@needs_node
def test_scatter_points_js_equal_python(evidence_data: dict[str, Any]) -> None:
    for measure in ("latency", "gflops", "trainable"):
        model = page_model(evidence_data, measure=measure)
        expected = scatter_points(evidence_data["rows"], "image_auroc", ["mvtec", "visa"],
                                  measure)
        assert len(model["scatter"]) == len(expected) == 3
        for js, py in zip(sorted(model["scatter"], key=lambda p: p["row_id"]),
                          sorted(expected, key=lambda p: p["row_id"]), strict=True):
            assert js["row_id"] == py["row_id"] and js["ranked"] == py["ranked"]
            assert js["x"] == pytest.approx(py["x"]) and js["y"] == pytest.approx(py["y"])


@needs_node
def test_seed_text_in_the_table_model() -> None:
    data = data_of([seeded(111, (0.78, 0.82)), seeded(112, (0.84, 0.84)),
                    seeded(113, (0.90, 0.82))])
    assert page_model(data)["texts"] == ["83.3 \u00b1 3.1"]
    single = data_of([seeded(111, (0.78, 0.82))])
    assert page_model(single)["texts"] == ["80.0"]


def test_gallery_carries_the_dataset_colour_scale_and_seed(tmp_path: Path) -> None:
    result = seeded(111, (0.78, 0.82), samples=["maps/a.png"],
                    samples_scale={"low": 0.12, "high": 0.87})
    path = write_result_file(tmp_path / "results", result)
    (path.parent / "maps").mkdir()
    (path.parent / "maps" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"bytes")
    site = build([tmp_path / "results"], tmp_path / "site", reported_dir=None).out_dir
    data = json.loads((site / "data.json").read_text())
    entry = data["gallery"][0]
    assert entry["scale"] == {"low": 0.12, "high": 0.87} and entry["seed"] == 111
    row = next(r for r in data["rows"] if r["kind"] == "reproduced")
    assert entry["row_id"] == row["id"] == reproduced_row_id(result)
