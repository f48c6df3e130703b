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
from zsbench.leaderboard.site_data import common_datasets, summarize

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
    assert len(table_rows(browser)) == len(expected_rows) == 14
    assert len(browser.find_elements(By.CSS_SELECTOR, 'tr[data-kind="reproduced"]')) == 1
    # the default view shows what Python computed: the common datasets, means, ranked or not
    caption = browser.find_element(By.ID, "table-caption")
    assert caption.get_attribute("data-common") == ",".join(data["summary_datasets"]
                                                            ["image_auroc"])
    for tr in table_rows(browser):
        s = data["summary"]["image_auroc"][tr.get_attribute("data-row-id")]
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
    assert numbers == sorted(numbers, reverse=True) and len(numbers) == 14
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
    assert headers == ["mvtec"]
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
