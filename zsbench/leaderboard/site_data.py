"""The leaderboard's data model: reported values and reproduced result JSONs -> one JSON-ready
dict that the static page renders (rows, cells with provenance, summaries, comparisons,
per-category drill-down).

All values in the model are percentages. A missing value is absent (never 0) and is left out
of means and ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from zsbench import __version__
from zsbench.leaderboard.catalog import (
    DATASET_BY_ID,
    DATASETS,
    METRICS,
    TRAINING_FREE_METHODS,
    dataset_domain,
    dataset_title,
    method_key,
)
from zsbench.leaderboard.reported import ReportedValue

logger = logging.getLogger(__name__)

PERCENT_DIGITS = 6  # reproduced fractions -> percent, rounded to hide float noise


@dataclass(frozen=True)
class Summary:
    """A row's mean and mean rank for one metric.

    A ranked row has every dataset of the common set (:func:`common_datasets`): its mean and
    mean rank are over that set, ``count`` is its size. An unranked row lacks some of them: its
    mean is over its own ``count`` datasets, not comparable with the others, and it has no rank.
    """

    mean: float | None
    mean_rank: float | None
    count: int
    ranked: bool = False


def summary_datasets(datasets: Sequence[dict[str, Any]]) -> list[str]:
    """The dataset ids that means and ranks use: the real (non-synthetic) ones when any are
    present, so smoke runs on synthetic data never compete with benchmark results."""
    real = [d["id"] for d in datasets if d.get("domain") != "synthetic"]
    return real or [d["id"] for d in datasets]


def _covered(row: dict[str, Any], metric: str, dataset_ids: Sequence[str]) -> list[str]:
    cells = row["cells"].get(metric, {})
    return [d for d in dataset_ids if (cells.get(d) or {}).get("value") is not None]


def common_datasets(rows: Sequence[dict[str, Any]], metric: str,
                    dataset_ids: Iterable[str]) -> list[str]:
    """The datasets that means and ranks are taken over, in ``dataset_ids`` order.

    Candidates are the rows' own dataset sets; the chosen one puts the most values into the
    ranking (rows having all of it x its size), then the larger set, then the earlier row.
    Rows having all of it are ranked over exactly these datasets; the others are not ranked.
    Mirrored by ``ZS.table.commonDatasets`` in ``assets/table.js``."""
    dataset_ids = list(dataset_ids)
    covered = [set(_covered(row, metric, dataset_ids)) for row in rows]
    best: set[str] = set()
    best_key = (0, 0)
    for candidate in covered:
        if not candidate:
            continue
        key = (len(candidate) * sum(1 for c in covered if candidate <= c), len(candidate))
        if key > best_key:
            best, best_key = candidate, key
    return [d for d in dataset_ids if d in best]


def summarize(rows: Sequence[dict[str, Any]], metric: str,
              dataset_ids: Iterable[str]) -> dict[str, Summary]:
    """Mean value and mean rank per row id for ``metric``, over :func:`common_datasets`.

    For each common dataset the ranked rows are ranked (1 = best, higher value is better, tied
    values share the average of their ranks). An unranked row gets the mean over the datasets
    of ``dataset_ids`` it has and no rank. Missing values are skipped, never counted as 0."""
    dataset_ids = list(dataset_ids)
    common = common_datasets(rows, metric, dataset_ids)
    ranked = [row for row in rows if common
              and set(common) <= set(_covered(row, metric, common))]
    ranks: dict[str, list[float]] = {row["id"]: [] for row in ranked}
    for dataset in common:
        present = [(row["id"], row["cells"][metric][dataset]["value"]) for row in ranked]
        for row_id, value in present:
            better = sum(1 for _, other in present if other > value)
            tied = sum(1 for _, other in present if other == value)
            ranks[row_id].append(better + (tied + 1) / 2)
    out = {}
    for row in rows:
        is_ranked = row["id"] in ranks
        used = common if is_ranked else _covered(row, metric, dataset_ids)
        values = [row["cells"][metric][d]["value"] for d in used]
        n = len(values)
        out[row["id"]] = Summary(
            mean=round(sum(values) / n, PERCENT_DIGITS) if n else None,
            mean_rank=(round(sum(ranks[row["id"]]) / n, PERCENT_DIGITS) if is_ranked else None),
            count=n, ranked=is_ranked)
    return out


def _reported_rows(reported: Iterable[ReportedValue]) -> tuple[list[dict], list[dict]]:
    """Dataset-level values -> one row per (source, method); per-class values -> drill-down."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    per_class: dict[tuple[str, str, str], dict[str, Any]] = {}
    for v in reported:
        if v.category:
            entry = per_class.setdefault((v.source_id, v.method, v.dataset), {
                "row_id": None, "label": v.method, "kind": "reported", "dataset": v.dataset,
                "trained_on": [v.trained_on],
                "provenance": {"source": v.source, "table": v.table, "protocol": v.protocol},
                "metrics": {}})
            entry["metrics"].setdefault(v.metric, {})[v.category] = v.value
            continue
        row = rows.setdefault((v.source_id, v.method), {
            "id": f"reported/{v.source_id}/{v.method}", "kind": "reported", "method": v.method,
            "method_key": method_key(v.method), "label": v.method, "source_id": v.source_id,
            "detail": v.source, "cells": {}})
        row["cells"].setdefault(v.metric, {})[v.dataset] = {
            "value": v.value, "trained_on": [v.trained_on], "protocol": v.protocol,
            "provenance": {"source": v.source, "table": v.table, "protocol": v.protocol,
                           "trained_on": v.trained_on}}
    return list(rows.values()), list(per_class.values())


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(100.0 * fraction, PERCENT_DIGITS)


def _result_provenance(result: dict[str, Any]) -> dict[str, Any]:
    prov = result["provenance"]
    return {"file": result.get("_path"), "config_hash": result["config_hash"],
            "protocol": result["protocol"]["id"], "trained_on": ", ".join(result["trained_on"])
            or "none", "zsbench_version": prov.get("zsbench_version"),
            "git_commit": prov.get("git_commit"), "created_at": prov.get("created_at"),
            "hardware": prov.get("hardware") or {}, "backbone": result["backbone"].get("name"),
            "seed": result.get("seed")}


def _reproduced_rows(results: Iterable[dict[str, Any]], problems: list[str]
                     ) -> tuple[list[dict], list[dict], dict[str, str]]:
    """One row per (method, config hash, protocol); one cell per target dataset and metric.

    Returns rows, drill-down entries and the dataset domains the results declare. Two results
    for the same row and dataset keep the newest (by ``created_at``) and report the other."""
    chosen: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for result in results:
        key = (result["method"], result["config_hash"], result["protocol"]["id"],
               result["dataset"]["name"])
        other = chosen.get(key)
        if other is not None:
            newer, older = sorted([result, other], reverse=True,
                                  key=lambda r: r["provenance"].get("created_at", ""))
            message = (f"{older.get('_path')}: duplicate of {newer.get('_path')} (same method, "
                       f"config_hash, protocol and dataset); kept the newer")
            logger.warning(message)
            problems.append(message)
            result = newer
        chosen[key] = result
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    drill: list[dict] = []
    domains: dict[str, str] = {}
    for (method, config_hash, protocol, dataset), result in chosen.items():
        row_id = f"reproduced/{method}/{config_hash}/{protocol}"
        row = rows.setdefault((method, config_hash, protocol), {
            "id": row_id, "kind": "reproduced", "method": method,
            "method_key": method_key(method), "label": method, "source_id": None,
            "detail": f"{protocol} · {config_hash}", "cells": {}})
        domains[dataset] = dataset_domain(dataset, result["dataset"].get("domain"))
        provenance = _result_provenance(result)
        per_category = result["metrics"]["per_category"]
        categories: dict[str, dict[str, float | None]] = {}
        for category, metric_set in per_category.items():
            for metric, fraction in metric_set.items():
                categories.setdefault(metric, {})[category] = _percent(fraction)
        for metric, fraction in result["metrics"]["mean"].items():
            if fraction is None:
                continue
            row["cells"].setdefault(metric, {})[dataset] = {
                "value": _percent(fraction), "trained_on": list(result["trained_on"]),
                "protocol": protocol, "provenance": provenance}
        if per_category:
            drill.append({"row_id": row_id, "label": method, "kind": "reproduced",
                          "dataset": dataset, "trained_on": list(result["trained_on"]),
                          "provenance": provenance, "metrics": categories})
    return list(rows.values()), drill, domains


def training_key(trained_on: Iterable[str], method: str, kind: str) -> tuple[str, ...]:
    """The auxiliary training data a value really used, as a sorted tuple (() = none).

    A reported value of a training-free method (:data:`TRAINING_FREE_METHODS`) used none,
    whatever its table's protocol names; ``"none"`` entries are dropped."""
    if kind == "reported" and method_key(method) in TRAINING_FREE_METHODS:
        return ()
    return tuple(sorted({t for t in trained_on if t and t != "none"}))


def _comparisons(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reproduced minus reported, per (reproduced row, metric, dataset) with a reported value
    of the same method, target dataset and training data (the protocol ``train->target``):
    a value trained on VisA is never compared with one trained on MVTec AD.

    The reported value comes from the method's own publication when there is one (a source id
    starting with the method's name), else from the first other source that has the cell."""
    reported_by_method: dict[str, list[dict]] = {}
    for row in rows:
        if row["kind"] == "reported":
            reported_by_method.setdefault(row["method_key"], []).append(row)
    for key, candidates in reported_by_method.items():
        candidates.sort(key=lambda r: not r["source_id"].startswith(key))
    out = []
    for row in rows:
        if row["kind"] != "reproduced":
            continue
        for metric, cells in row["cells"].items():
            for dataset, cell in cells.items():
                trained = training_key(cell["trained_on"], row["method"], row["kind"])
                match = next((r for r in reported_by_method.get(row["method_key"], [])
                              if (other := r["cells"].get(metric, {}).get(dataset)) is not None
                              and training_key(other["trained_on"], r["method"], r["kind"])
                              == trained), None)
                if match is None:
                    continue
                reported = match["cells"][metric][dataset]
                out.append({"reproduced_row": row["id"], "reported_row": match["id"],
                            "method": row["method"], "metric": metric, "dataset": dataset,
                            "trained_on": list(trained), "protocol": cell["protocol"],
                            "reported_protocol": reported["protocol"],
                            "reproduced": cell["value"], "reported": reported["value"],
                            "difference": round(cell["value"] - reported["value"],
                                                PERCENT_DIGITS),
                            "reported_source": match["detail"]})
    return out


def _dataset_list(rows: Sequence[dict[str, Any]], extra_domains: dict[str, str]) -> list[dict]:
    used = {d for row in rows for cells in row["cells"].values() for d in cells}
    ordered = [d.id for d in DATASETS if d.id in used]
    ordered += sorted(used - set(DATASET_BY_ID))
    return [{"id": d, "title": dataset_title(d),
             "domain": dataset_domain(d, extra_domains.get(d))} for d in ordered]


def build_site_data(results: Iterable[dict[str, Any]], reported: Iterable[ReportedValue],
                    problems: Sequence[str] = (), gallery: Sequence[dict] = ()) -> dict[str, Any]:
    """Assemble the page's data: datasets, metrics, rows with provenance, default summaries
    (over the :func:`common_datasets` of :func:`summary_datasets`, listed per metric in
    ``summary_datasets``), reproduced-vs-reported comparisons, drill-down, gallery, skipped
    files."""
    problems = list(problems)
    reported_rows, reported_drill = _reported_rows(reported)
    reproduced_rows, reproduced_drill, domains = _reproduced_rows(results, problems)
    rows = reported_rows + reproduced_rows
    datasets = _dataset_list(rows, domains)
    metric_ids = [m for m, _ in METRICS]
    extra = sorted({m for row in rows for m in row["cells"]} - set(metric_ids))
    metrics = [{"id": m, "label": label} for m, label in METRICS]
    metrics += [{"id": m, "label": m.replace("_", " ")} for m in extra]
    ranked_ids = summary_datasets(datasets)
    summary = {m["id"]: {row_id: s.__dict__ for row_id, s in
                         summarize(rows, m["id"], ranked_ids).items()} for m in metrics}
    common = {m["id"]: common_datasets(rows, m["id"], ranked_ids) for m in metrics}
    drill: dict[str, list[dict]] = {}
    for entry in reported_drill + reproduced_drill:
        drill.setdefault(entry["dataset"], []).append(entry)
    return {"format": 1, "zsbench_version": __version__, "metrics": metrics,
            "datasets": datasets, "rows": rows, "summary": summary, "summary_datasets": common,
            "comparisons": _comparisons(rows), "drilldown": drill, "gallery": list(gallery),
            "skipped": problems}
