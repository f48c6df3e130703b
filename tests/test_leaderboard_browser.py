"""The built leaderboard in headless Chromium (Debian ``chromium`` + ``chromium-driver``,
driven by selenium): sorting, filters, means and ranks, the difference view, provenance.

Skips when Chromium, chromedriver or selenium is missing (``.ci/install_chromium.sh`` installs
the browser). The screenshot goes to a tmp dir and to ``tests/artifacts/leaderboard.png``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.result_factory import make_result, write_result_file
from zsbench.leaderboard.build import build
from zsbench.leaderboard.site_data import common_datasets, page_summary, summarize

CHROMIUM = Path(os.environ.get("ZSBENCH_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("ZSBENCH_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "leaderboard.png"
DASH = "\u2013"
MINUS = "\u2212"

if not CHROMIUM.exists():
    pytest.skip(f"Chromium not found at {CHROMIUM} (run .ci/install_chromium.sh)",
                allow_module_level=True)
if not CHROMEDRIVER.exists():
    pytest.skip(f"chromedriver not found at {CHROMEDRIVER} (Debian package chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("browser")
    mvtec = make_result("AnomalyCLIP", "mvtec", {
        "bottle": {"image_auroc": 0.95, "pixel_auroc": 0.91},
        "cable": {"image_auroc": 0.91, "pixel_auroc": 0.89}},
        config_hash="aaaaaaaaaaaa", protocol="paper", trained_on=("visa",))
    visa = make_result("AnomalyCLIP", "visa", {
        "candle": {"image_auroc": 0.86, "pixel_auroc": 0.96},
        "pcb1": {"image_auroc": 0.80, "pixel_auroc": None}},
        config_hash="aaaaaaaaaaaa", protocol="paper", trained_on=("mvtec",))
    write_result_file(root / "results", mvtec)
    write_result_file(root / "results", visa)
    out = build([root / "results"], root / "site").out_dir
    return out, json.loads((out / "data.json").read_text())


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1600,1100"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except Exception as err:  # a broken browser install is an environment problem
        pytest.skip(f"could not start headless Chromium: {err}")
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, site_dir: Path, fragment: str = "") -> None:
    driver.get((site_dir / "index.html").as_uri() + fragment)
    driver.refresh()  # a fragment-only change does not reload
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "true")


def table_rows(driver: Any) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")


def column_texts(driver: Any, dataset: str) -> list[tuple[str, str]]:
    return [(tr.get_attribute("data-row-id"),
             tr.find_element(By.CSS_SELECTOR, f'td[data-dataset="{dataset}"]').text)
            for tr in table_rows(driver)]


def rows_with(data: dict[str, Any], metric: str, datasets: list[str],
              trained: str = "any") -> list[dict[str, Any]]:
    def keep(cell: dict[str, Any]) -> bool:
        return trained == "any" or trained in cell["trained_on"]
    out = []
    for row in data["rows"]:
        cells = {d: c for d, c in row["cells"].get(metric, {}).items() if d in datasets and keep(c)}
        if cells:
            out.append({**row, "cells": {metric: cells}})
    return out


def test_table_sort_filter_and_screenshot(site: tuple[Path, dict], browser: Any,
                                          tmp_path: Path) -> None:
    site_dir, data = site
    open_page(browser, site_dir, "#metric=image_auroc")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    all_ids = [d["id"] for d in data["datasets"]]
    expected_rows = rows_with(data, "image_auroc", all_ids)
    # 13 first-wave reported rows, 4 second-wave ones with an image AUROC, 1 reproduced
    assert len(table_rows(browser)) == len(expected_rows) == 18
    assert len(browser.find_elements(By.CSS_SELECTOR, 'tr[data-kind="reproduced"]')) == 1
    # the default view shows what Python computed: the common datasets, means, ranked or not
    caption = browser.find_element(By.ID, "table-caption")
    common, summary = page_summary(data, "image_auroc")
    assert caption.get_attribute("data-common") == ",".join(common)
    for tr in table_rows(browser):
        s = summary[tr.get_attribute("data-row-id")]
        mean = tr.find_element(By.CSS_SELECTOR, 'td[data-col="mean"]')
        assert float(mean.get_attribute("data-exact")) == pytest.approx(s["mean"], abs=1e-6)
        assert mean.get_attribute("data-ranked") == str(s["ranked"]).lower()
    assert tr.get_attribute("data-row-id") == "reproduced/AnomalyCLIP/aaaaaaaaaaaa/paper"
    # NA is a dash: TPS has no AITEX value
    tps = browser.find_element(By.CSS_SELECTOR, 'tr[data-row-id="reported/tps_readme/TPS"]')
    assert tps.find_element(By.CSS_SELECTOR, 'td[data-dataset="aitex"]').text == DASH
    assert tps.find_element(By.CSS_SELECTOR, 'td[data-dataset="mvtec"]').text == "96.4"

    # sort by VisA: first click descending, NA last; second click ascending, NA still last
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="visa"]').click()
    visa = column_texts(browser, "visa")
    numbers = [float(t) for _, t in visa if t != DASH]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) == 17
    best_visa = max(r["cells"]["image_auroc"]["visa"]["value"]
                    for r in rows_with(data, "image_auroc", ["visa"]))
    assert float(visa[0][1]) == best_visa
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="visa"]').click()
    numbers = [float(t) for _, t in column_texts(browser, "visa") if t != DASH]
    assert numbers == sorted(numbers)
    # sort by a column with NA (AITEX): NA rows come last in both directions
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="aitex"]').click()
    aitex = [t for _, t in column_texts(browser, "aitex")]
    first_dash = aitex.index(DASH)
    assert all(t == DASH for t in aitex[first_dash:])
    assert first_dash == len(rows_with(data, "image_auroc", ["aitex"])) == 11
    present = [float(t) for t in aitex[:first_dash]]
    assert present == sorted(present, reverse=True)

    # domain filter: medical columns only; mean and mean rank as in Python's summarize
    Select(browser.find_element(By.ID, "filter-domain")).select_by_value("medical")
    headers = [th.get_attribute("data-dataset") for th in
               browser.find_elements(By.CSS_SELECTOR, "#leaderboard th[data-dataset]")]
    medical = [d["id"] for d in data["datasets"] if d["domain"] == "medical"]
    assert headers and set(headers) <= set(medical)
    expected = rows_with(data, "image_auroc", medical)
    summary = summarize(expected, "image_auroc", medical)
    shown = {tr.get_attribute("data-row-id"): tr for tr in table_rows(browser)}
    assert set(shown) == {r["id"] for r in expected}
    assert not any(r.startswith("reproduced/") for r in shown)  # it has no medical values
    # the page names the common datasets of the ranking, as Python's common_datasets
    common = common_datasets(expected, "image_auroc", medical)
    caption = browser.find_element(By.ID, "table-caption")
    assert caption.get_attribute("data-common") == ",".join(common)
    assert f"over the {len(common)} datasets every ranked row has" in caption.text
    assert common == ["headct", "brainmri", "br35h", "lag"]  # the FAPrompt tables' medical set
    n_unranked = 0
    for row_id, tr in shown.items():
        s = summary[row_id]
        mean = tr.find_element(By.CSS_SELECTOR, 'td[data-col="mean"]')
        rank = tr.find_element(By.CSS_SELECTOR, 'td[data-col="rank"]')
        assert float(mean.get_attribute("data-exact")) == pytest.approx(s.mean, abs=1e-6)
        assert abs(float(mean.text) - s.mean) <= 0.05 + 1e-9
        assert mean.get_attribute("data-ranked") == ("true" if s.ranked else "false")
        if s.ranked:
            assert float(rank.get_attribute("data-exact")) == pytest.approx(s.mean_rank,
                                                                            abs=1e-6)
            assert abs(float(rank.text) - s.mean_rank) <= 0.005 + 1e-9
        else:  # a mean over other datasets: grey, no rank, says what it lacks
            n_unranked += 1
            assert rank.text == DASH and rank.get_attribute("data-exact") is None
            assert "unranked" in mean.get_attribute("class")
            assert "not ranked: lacks" in mean.get_attribute("title")
        assert tr.find_element(By.CSS_SELECTOR, 'td[data-col="count"]').text == \
            f"{s.count}/{len(headers)}"
    assert n_unranked == 2  # TPS (3 of the 4) and the AnomalyCLIP paper (+ COVID-19, no LAG)
    # sorted by mean: ranked rows by their mean, unranked ones after them, never in between
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="mean"]').click()
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="mean"]').click()
    order = [tr.get_attribute("data-row-id") for tr in table_rows(browser)]
    assert [summary[r].ranked for r in order] == sorted((summary[r].ranked for r in order),
                                                        reverse=True)
    ranked_means = [summary[r].mean for r in order if summary[r].ranked]
    assert len(ranked_means) == 11
    assert ranked_means in (sorted(ranked_means), sorted(ranked_means, reverse=True))

    # training-data filter: only cells trained on VisA remain (the MVTec AD column)
    Select(browser.find_element(By.ID, "filter-domain")).select_by_value("all")
    Select(browser.find_element(By.ID, "filter-trained")).select_by_value("visa")
    headers = [th.get_attribute("data-dataset") for th in
               browser.find_elements(By.CSS_SELECTOR, "#leaderboard th[data-dataset]")]
    assert headers == ["mvtec", "mpdd", "btad"]  # MPDD, BTAD: AA-CLIP's VisA-trained log
    assert len(table_rows(browser)) == len(rows_with(data, "image_auroc", ["mvtec"], "visa"))

    # row-kind filter: reproduced only
    Select(browser.find_element(By.ID, "filter-trained")).select_by_value("any")
    Select(browser.find_element(By.ID, "filter-kind")).select_by_value("reproduced")
    rows = table_rows(browser)
    assert [r.get_attribute("data-row-id") for r in rows] == [
        "reproduced/AnomalyCLIP/aaaaaaaaaaaa/paper"]
    assert rows[0].find_element(By.CSS_SELECTOR, 'td[data-col="mean"]').text == "88.0"

    # provenance on click
    rows[0].find_element(By.CSS_SELECTOR, 'td[data-dataset="mvtec"]').click()
    panel = browser.find_element(By.ID, "provenance")
    assert panel.is_displayed()
    assert "aaaaaaaaaaaa" in panel.text and "abcdef1234567890" in panel.text
    assert "93.00" in panel.text

    # screenshot of the default view
    open_page(browser, site_dir, "#view=table&metric=image_auroc&sort=mean&dir=desc")
    shot = tmp_path / "leaderboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    print(f"leaderboard screenshot: {shot} (copied to {ARTIFACT})")


def test_difference_view_and_drilldown(site: tuple[Path, dict], browser: Any) -> None:
    site_dir, data = site
    open_page(browser, site_dir, "#view=compare&metric=image_auroc")
    cells = browser.find_elements(By.CSS_SELECTOR, "#compare-table td.diff-cell")
    got = {c.get_attribute("data-dataset"): c for c in cells}
    # reproduced - reported (AnomalyCLIP paper): MVTec 93.0 - 91.5, VisA 83.0 - 82.1
    assert set(got) == {"mvtec", "visa"}
    assert float(got["mvtec"].get_attribute("data-difference")) == pytest.approx(1.5)
    assert float(got["visa"].get_attribute("data-difference")) == pytest.approx(0.9)
    assert got["mvtec"].find_element(By.CSS_SELECTOR, ".diff").text == "+1.5"
    assert "93.0 vs 91.5" in got["mvtec"].text
    assert "diff-pos" in got["visa"].get_attribute("class")
    open_page(browser, site_dir, "#view=compare&metric=pixel_auroc")
    diffs = [c.find_element(By.CSS_SELECTOR, ".diff").text for c in
             browser.find_elements(By.CSS_SELECTOR, "#compare-table td.diff-cell")]
    assert diffs == [MINUS + "1.1", "+0.5"]  # 90.0 - 91.1, 96.0 - 95.5

    open_page(browser, site_dir, "#view=datasets&metric=image_auroc&dataset=visa")
    bars = browser.find_elements(By.CSS_SELECTOR, "#dataset-bars rect.bar")
    assert len(bars) == len(rows_with(data, "image_auroc", ["visa"]))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#dataset-bars rect.bar-reproduced")) == 1
    table = browser.find_element(By.ID, "categories-table")
    reproduced = table.find_element(By.CSS_SELECTOR, 'tr[data-kind="reproduced"]')
    assert reproduced.find_element(By.CSS_SELECTOR, 'td[data-category="pcb1"]').text == "80.0"
    assert reproduced.find_element(By.CSS_SELECTOR, 'td[data-category="cashew"]').text == DASH
    reported = table.find_element(By.CSS_SELECTOR, 'tr[data-kind="reported"]')
    assert reported.find_element(By.CSS_SELECTOR, 'td[data-category="cashew"]').text == "76.0"


# ---------- evidence (issue 14): badges, the zero-shot filter, seeds, intervals, cost ----------

EVIDENCE_ARTIFACT = ARTIFACT.parent / "leaderboard_evidence.png"


@pytest.fixture(scope="module")
def evidence_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from tests.result_factory import make_cost, make_leakage, with_bootstrap, with_seed

    root = tmp_path_factory.mktemp("evidence")
    trained = {"trainable": True, "transductive": False}
    for seed, values in ((111, (0.78, 0.82)), (112, (0.84, 0.84)), (113, (0.90, 0.82))):
        result = make_result("AnomalyCLIP", "mvtec", {
            "bottle": {"image_auroc": values[0]}, "cable": {"image_auroc": values[1]}},
            config_hash="aaaaaaaaaaaa", protocol="visa->all", method_kind=trained,
            leakage=make_leakage("mvtec", ("bottle", "cable"), ("visa",)),
            cost=make_cost(latency_ms=55.0 + seed - 112, trainable=9_216, gflops=150.0,
                           training_time_s=3600.0))
        write_result_file(root / "results", with_seed(result, seed, training_seed=seed))
    write_result_file(root / "results", make_result(
        "AnomalyCLIP", "mvtec", {"bottle": {"image_auroc": 0.97}, "cable": {"image_auroc": 0.95}},
        config_hash="bbbbbbbbbbbb", protocol="mvtec->mvtec", trained_on=("mvtec",),
        method_kind=trained, leakage=make_leakage("mvtec", ("bottle", "cable"), ("mvtec",)),
        cost=make_cost(latency_ms=60.0, trainable=9_216, gflops=160.0, training_time_s=5400.0)))
    winclip = with_bootstrap(make_result(
        "WinCLIP", "mvtec", {"bottle": {"image_auroc": 0.93}, "cable": {"image_auroc": 0.89}},
        config_hash="cccccccccccc", protocol="zero-shot", trained_on=(),
        method_kind={"trainable": False, "transductive": False},
        cost=make_cost(latency_ms=420.0, trainable=0, gflops=900.0, peak_gib=5.5),
        samples=["maps/bottle_000.png"], samples_scale={"low": 0.12, "high": 0.87}),
        half_width=0.025)
    path = write_result_file(root / "results", winclip)
    (path.parent / "maps").mkdir()
    Image.new("RGB", (64, 64), (200, 60, 40)).save(path.parent / "maps" / "bottle_000.png")
    write_result_file(root / "results", make_result(
        "AnoVL", "mvtec", {"bottle": {"image_auroc": 0.88}, "cable": {"image_auroc": 0.84}},
        config_hash="dddddddddddd", protocol="zero-shot", trained_on=(),
        method_kind={"trainable": False, "transductive": True}))
    return build([root / "results"], root / "site").out_dir


def test_evidence_badges_filters_seeds_intervals_and_cost(evidence_site: Path, browser: Any,
                                                          tmp_path: Path) -> None:
    open_page(browser, evidence_site, "#metric=image_auroc&kind=reproduced")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    flagged_id = "reproduced/AnomalyCLIP/bbbbbbbbbbbb/mvtec->mvtec"
    by_id = {tr.get_attribute("data-row-id"): tr for tr in table_rows(browser)}
    assert len(by_id) == 4
    # the leakage badge on the flagged row only; kind badges; transductive marked
    flagged = by_id[flagged_id]
    assert flagged.find_element(By.CSS_SELECTOR, ".badge-leak").text == "not zero-shot"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#leaderboard .badge-leak")) == 1
    kinds = {r: tr.find_element(By.CSS_SELECTOR, ".badge-mkind").text for r, tr in by_id.items()}
    assert sorted(kinds.values()) == ["trained", "trained", "training-free", "training-free"]
    anovl = by_id["reproduced/AnoVL/dddddddddddd/zero-shot"]
    assert anovl.find_element(By.CSS_SELECTOR, ".badge-transductive").text == "transductive"
    assert "1 row(s) flagged" in browser.find_element(By.ID, "table-caption").text
    # the seed group: mean +- std with n, each seed in the title
    seeds = next(tr for r, tr in by_id.items() if r.startswith("reproduced/AnomalyCLIP/aaaa"))
    cell = seeds.find_element(By.CSS_SELECTOR, 'td[data-dataset="mvtec"]')
    assert cell.text.replace("\n", " ") == "83.3 \u00b1 3.1 n=3"
    assert "seed 112: 84.00" in cell.get_attribute("title")
    # the bootstrap interval on hover
    winclip = by_id["reproduced/WinCLIP/cccccccccccc/zero-shot"]
    title = winclip.find_element(By.CSS_SELECTOR, 'td[data-dataset="mvtec"]').get_attribute(
        "title")
    assert "95 % interval 88.50 \u2013 93.50 (bootstrap, 1000 replicates)" in title
    # a cost column sorted: descending first, rows without a cost last; then ascending
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="cost:latency_batch1_ms"]').click()
    latency = [tr.find_element(By.CSS_SELECTOR, 'td[data-cost="latency_batch1_ms"]')
               for tr in table_rows(browser)]
    assert [td.text for td in latency] == ["420.0", "60.0", "55.0", DASH]
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="cost:latency_batch1_ms"]').click()
    assert [tr.find_element(By.CSS_SELECTOR, 'td[data-cost="latency_batch1_ms"]').text
            for tr in table_rows(browser)] == ["55.0", "60.0", "420.0", DASH]
    winclip = browser.find_element(By.CSS_SELECTOR, 'tr[data-row-id="reproduced/WinCLIP/'
                                   'cccccccccccc/zero-shot"]')
    assert winclip.find_element(By.CSS_SELECTOR, 'td[data-cost="peak_memory_bytes"]').text == \
        "5.50"
    # the accuracy-vs-cost chart: one labelled point per row with a cost
    points = browser.find_elements(By.CSS_SELECTOR, "#cost-chart .scatter-point")
    assert sorted(p.text for p in points) == [
        "AnomalyCLIP (mvtec->mvtec \u00b7 bbbbbbbbbbbb)",
        "AnomalyCLIP (visa->all \u00b7 aaaaaaaaaaaa)", "WinCLIP (zero-shot \u00b7 cccccccccccc)"]
    Select(browser.find_element(By.ID, "cost-measure")).select_by_value("trainable")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cost-chart .scatter-point")) == 3
    assert "trainable parameters (log scale)" in browser.find_element(By.ID, "cost-chart").text
    # provenance panel: each seed's value
    seeds = browser.find_element(By.CSS_SELECTOR, 'tr[data-row-id^="reproduced/AnomalyCLIP/aaaa"]')
    seeds.find_element(By.CSS_SELECTOR, 'td[data-dataset="mvtec"]').click()
    panel = browser.find_element(By.ID, "provenance")
    assert "seed 113" in panel.text and "86.00" in panel.text and "n = 3" in panel.text
    shot = tmp_path / "evidence.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    shutil.copyfile(shot, EVIDENCE_ARTIFACT)
    browser.find_element(By.CSS_SELECTOR, "#provenance .close").click()
    chart = browser.find_element(By.ID, "cost-chart")
    browser.execute_script("arguments[0].scrollIntoView();", chart)
    chart.screenshot(str(EVIDENCE_ARTIFACT.with_name("leaderboard_cost_chart.png")))

    # hide the flagged rows: one row fewer, no badge left
    Select(browser.find_element(By.ID, "filter-leak")).select_by_value("hide")
    ids = [tr.get_attribute("data-row-id") for tr in table_rows(browser)]
    assert len(ids) == 3 and flagged_id not in ids
    assert browser.find_elements(By.CSS_SELECTOR, "#leaderboard .badge-leak") == []
    assert "are hidden" in browser.find_element(By.ID, "table-caption").text


def test_evidence_error_bars_and_gallery_scale(evidence_site: Path, browser: Any) -> None:
    open_page(browser, evidence_site, "#view=datasets&metric=image_auroc&dataset=mvtec")
    # WinCLIP's bootstrap interval (solid) and the seed group's std (dashed); no other bars
    assert len(browser.find_elements(By.CSS_SELECTOR, "#dataset-bars .err-bar.err-ci")) == 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#dataset-bars .err-bar.err-std")) == 1
    bar = browser.find_element(By.CSS_SELECTOR, "#dataset-bars .err-ci title")
    assert "88.50" in bar.get_attribute("textContent")
    browser.find_element(By.ID, "dataset-bars").screenshot(
        str(EVIDENCE_ARTIFACT.with_name("leaderboard_error_bars.png")))
    open_page(browser, evidence_site, "#view=gallery")
    assert "One colour scale per dataset" in browser.find_element(
        By.ID, "gallery-scale-note").text
    assert browser.find_element(By.CSS_SELECTOR, ".gallery-scale").text.startswith(
        "colour scale 0.120 \u2013 0.870")
