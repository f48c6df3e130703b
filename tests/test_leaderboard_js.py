"""Size of the leaderboard's JavaScript functions: none over 60 lines (a brace-matching scan)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "zsbench" / "leaderboard" / "assets"
MAX_LINES = 60
_START = re.compile(r"\bfunction\b\s*(?P<name>[A-Za-z_$][\w$]*)?\s*\(|=>\s*\{")


def _code_mask(source: str) -> str:
    """``source`` with the contents of comments, strings and template literals blanked (newlines
    kept), so braces and the word ``function`` are only seen in code."""
    out = list(source)
    i, n = 0, len(source)
    while i < n:
        two = source[i:i + 2]
        if two in ("//", "/*"):
            end = source.find("\n" if two == "//" else "*/", i + 2)
            end = n if end < 0 else end + (0 if two == "//" else 2)
        elif source[i] in "\"'`":
            end, quote = i + 1, source[i]
            while end < n and source[end] != quote:
                end += 2 if source[end] == "\\" else 1
            end += 1
        else:
            i += 1
            continue
        for k in range(i, min(end, n)):
            if out[k] != "\n":
                out[k] = " "
        i = end
    return "".join(out)


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, number of lines) of every function and braced arrow function, from
    the line of its ``function`` keyword (or arrow) to the line of its closing brace."""
    code = _code_mask(source)
    found = []
    for match in _START.finditer(code):
        if match.group(0).startswith("=>"):
            open_at = match.end() - 1
        else:
            close_params = code.index(")", match.end())
            open_at = code.index("{", close_params)
        depth, pos = 0, open_at
        while True:
            depth += {"{": 1, "}": -1}.get(code[pos], 0)
            if depth == 0:
                break
            pos += 1
        first = code.count("\n", 0, match.start()) + 1
        last = code.count("\n", 0, pos) + 1
        name = match.group("name") if "name" in match.groupdict() else None
        found.append((name or "<anonymous>", first, last - first + 1))
    return found


def test_the_scan_measures_functions_and_ignores_strings_and_comments() -> None:
    source = "\n".join([
        "function outer(a) {",            # 1
        "  const s = '{ function fake() {';",
        "  // function commented() {",
        "  const f = function () {",      # 4
        "    return `}`;",
        "  };",                            # 6
        "  list.map((x) => { return x; });",
        "}",                               # 8
    ])
    assert function_lengths(source) == [("outer", 1, 8), ("<anonymous>", 4, 3),
                                        ("<anonymous>", 7, 1)]


@pytest.mark.parametrize("name", ["app.js", "table.js", "charts.js"])
def test_no_function_over_60_lines(name: str) -> None:
    functions = function_lengths((ASSETS / name).read_text(encoding="utf-8"))
    assert len(functions) >= 5  # the scan found the file's functions
    too_long = [f"{name}:{line} {fn} ({n} lines)" for fn, line, n in functions if n > MAX_LINES]
    assert too_long == []


def test_every_asset_script_is_checked() -> None:
    assert sorted(p.name for p in ASSETS.glob("*.js")) == ["app.js", "charts.js", "table.js"]


# ---------- the table model (assets/table.js) run in Node, against the Python reference ----------

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")
_RUN_MODEL = """
global.window = global;
require(process.argv[1]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const m = ZS.table.tableModel(input.data, input.view);
process.stdout.write(JSON.stringify({
  rows: m.rows.map(function (r) { return r.id; }),
  columns: m.columns.map(function (d) { return d.id; }),
  common: m.common, summary: m.summary, unranked: m.unranked, groups: m.groups, best: m.best,
}));
"""
VIEW = {"metric": "image_auroc", "domain": "all", "kind": "all", "trained": "any", "search": "",
        "sort": "mean", "dir": "desc"}


def table_model(data: dict[str, Any], **view: str) -> dict[str, Any]:
    """``ZS.table.tableModel(data, view)`` computed by Node."""
    done = subprocess.run([NODE, "-e", _RUN_MODEL, str(ASSETS / "table.js")],
                          input=json.dumps({"data": data, "view": {**VIEW, **view}}),
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def site_data() -> dict[str, Any]:
    from tests.result_factory import make_result
    from zsbench.leaderboard.reported import load_reported
    from zsbench.leaderboard.site_data import build_site_data

    result = make_result("AnomalyCLIP", "mvtec", {"bottle": {"image_auroc": 0.95},
                                                   "cable": {"image_auroc": 0.91}},
                         config_hash="aaaaaaaaaaaa", protocol="paper", trained_on=("visa",))
    return json.loads(json.dumps(build_site_data([result], load_reported())))


@needs_node
def test_default_view_model_equals_python_summary(site_data: dict[str, Any]) -> None:
    from zsbench.leaderboard.site_data import page_summary

    model = table_model(site_data)
    common, summary = page_summary(site_data, "image_auroc")
    assert model["common"] == common and len(common) == 13
    assert model["columns"] == [d["id"] for d in site_data["datasets"]
                                if any(d["id"] in r["cells"].get("image_auroc", {})
                                       for r in site_data["rows"])]
    assert set(model["rows"]) <= set(summary)
    for row_id in model["rows"]:
        js, py = model["summary"][row_id], summary[row_id]
        assert js["ranked"] == py["ranked"] and js["count"] == py["count"]
        assert js["mean"] == pytest.approx(py["mean"], abs=1e-6)
        assert (js["mean_rank"] is None) == (py["mean_rank"] is None)
        if py["mean_rank"] is not None:
            assert js["mean_rank"] == pytest.approx(py["mean_rank"], abs=1e-6)
    # sorted by mean, best first; unranked rows after the ranked ones
    ranked = [summary[r]["ranked"] for r in model["rows"]]
    assert ranked == sorted(ranked, reverse=True)
    means = [summary[r]["mean"] for r in model["rows"] if summary[r]["ranked"]]
    assert means == sorted(means, reverse=True)
    assert model["unranked"] == ranked.count(False) > 0
    assert [g["domain"] for g in model["groups"]] == ["industrial", "medical"]
    assert sum(g["n"] for g in model["groups"]) == len(model["columns"])


@needs_node
def test_filtered_view_model_equals_python_summarize(site_data: dict[str, Any]) -> None:
    from zsbench.leaderboard.site_data import common_datasets, summarize

    model = table_model(site_data, domain="industrial", kind="reported", search="clip",
                        sort="mvtec", dir="asc")
    industrial = [d["id"] for d in site_data["datasets"] if d["domain"] == "industrial"]
    expected = [r for r in site_data["rows"] if r["kind"] == "reported"
                and "clip" in (r["label"] + " " + r["detail"]).lower()
                and any(d in r["cells"].get("image_auroc", {}) for d in industrial)]
    assert sorted(model["rows"]) == sorted(r["id"] for r in expected) and len(expected) >= 3
    assert set(model["columns"]) <= set(industrial)
    assert model["common"] == common_datasets(expected, "image_auroc", model["columns"])
    summary = summarize(expected, "image_auroc", model["columns"])
    for row_id, s in summary.items():
        assert model["summary"][row_id]["mean"] == pytest.approx(s.mean, abs=1e-6)
        assert model["summary"][row_id]["ranked"] == s.ranked
    # sorted by the MVTec AD column, ascending, NA last
    by_id = {r["id"]: r for r in expected}
    mvtec = [(by_id[r]["cells"]["image_auroc"].get("mvtec") or {}).get("value")
             for r in model["rows"]]
    present = [v for v in mvtec if v is not None]
    assert present == sorted(present) and mvtec[:len(present)] == present
    best = sorted(present, reverse=True)
    assert model["best"]["mvtec"][0] == best[0]
    assert model["best"]["mvtec"][1] == next(v for v in best if v < best[0])
