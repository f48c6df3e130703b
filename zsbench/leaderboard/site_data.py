"""The leaderboard's data model: reported values and reproduced result JSONs -> one JSON-ready
dict that the static page renders (rows, cells with provenance, comparisons, per-category
drill-down). Means and mean ranks are computed where they are shown, by the page's table model
(``assets/table.js``) for the filters a reader picks; :func:`summarize` is the same
computation in Python (the reference the browser test checks the page against, and for
scripts reading ``data.json``).

All values in the model are percentages. A missing value is absent (never 0) and is left out
of means and ranks.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from zsbench import __version__
from zsbench.identity import canonical_hash
from zsbench.leaderboard.catalog import (
    METRICS,
    TRAINING_FREE_METHODS,
    dataset_domain,
    dataset_entries,
    dataset_title,
    method_key,
)
from zsbench.leaderboard.reported import ReportedValue

logger = logging.getLogger(__name__)

PERCENT_DIGITS = 6  # reproduced fractions -> percent, rounded to hide float noise
#: the numeric fields of a result's ``cost`` (zsbench.cost.method_cost) a row shows
COST_FIELDS = ("latency_batch1_ms", "throughput_images_per_s", "peak_memory_bytes",
               "flops_per_image", "trainable_parameters", "training_time_s")


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


def page_summary(data: dict[str, Any], metric: str
                 ) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """What the page shows for ``metric`` with no filter set, from a built ``data`` dict: the
    common datasets of the ranking and, per row id, ``{mean, mean_rank, count, ranked}``.

    Its columns are the datasets with a value for ``metric``; means and ranks are over their
    :func:`summary_datasets` (as ``ZS.table.tableModel`` in ``assets/table.js``)."""
    rows = data["rows"]
    shown = [d for d in data["datasets"] if _covered_by_any(rows, metric, d["id"])]
    ids = summary_datasets(shown)
    return (common_datasets(rows, metric, ids),
            {row_id: dict(s.__dict__) for row_id, s in summarize(rows, metric, ids).items()})


#: the accuracy-vs-cost chart's x measures: id -> (cost field, divisor, axis label)
COST_MEASURES = {"latency": ("latency_batch1_ms", 1.0, "latency, batch 1 (ms)"),
                 "gflops": ("flops_per_image", 1e9, "GFLOPs per image"),
                 "trainable": ("trainable_parameters", 1.0, "trainable parameters")}


def cost_value(row: dict[str, Any], measure: str) -> float | None:
    """A row's cost measure (:data:`COST_MEASURES`; GFLOPs from FLOPs), None when unknown."""
    name, divisor, _ = COST_MEASURES[measure]
    value = (row.get("cost") or {}).get(name)
    return None if value is None else value / divisor


def scatter_points(rows: Sequence[dict[str, Any]], metric: str, dataset_ids: Iterable[str],
                   measure: str) -> list[dict[str, Any]]:
    """The accuracy-vs-cost chart's points: per row with the cost measure, x = the measure and
    y = its mean of ``metric`` (:func:`summarize` over the rows with a cost, so the ranked ones
    share their common datasets). Mirrored by ``ZS.table.scatterPoints``."""
    with_cost = [row for row in rows if cost_value(row, measure) is not None]
    summary = summarize(with_cost, metric, dataset_ids)
    return [{"row_id": row["id"], "label": row["label"], "x": cost_value(row, measure),
             "y": summary[row["id"]].mean, "count": summary[row["id"]].count,
             "ranked": summary[row["id"]].ranked}
            for row in with_cost if summary[row["id"]].mean is not None]


def _covered_by_any(rows: Sequence[dict[str, Any]], metric: str, dataset: str) -> bool:
    return any(_covered(row, metric, [dataset]) for row in rows)


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
            "detail": v.source, "cells": {}, "method_kind": None, "cost": None,
            "leakage": None})
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


def seedless_settings(result: dict[str, Any]) -> str | None:
    """8 hex digits naming a result's run settings without its target and seeds (the identity
    less ``seed``, ``target``, ``dataset_fingerprint`` and ``training.config.seed``): results
    of one method, config and protocol that share it differ only by seed. None for a schema 1.0
    result (no identity)."""
    identity = result.get("identity")
    if identity is None:
        return None
    shared = {k: v for k, v in identity.items()
              if k not in ("seed", "target", "dataset_fingerprint")}
    training = shared.get("training")
    if isinstance(training, dict) and isinstance(training.get("config"), dict):
        shared["training"] = {**training, "config": {k: v for k, v in training["config"].items()
                                                     if k != "seed"}}
    return canonical_hash(shared, 8)


def _seed_key(result: dict[str, Any]) -> tuple[Any, Any] | None:
    """(evaluation seed, training seed) of a schema 1.1 result; None without identity."""
    identity = result.get("identity")
    if identity is None:
        return None
    training = identity.get("training") or {}
    return identity.get("seed"), (training.get("config") or {}).get("seed")


def reproduced_row_id(result: dict[str, Any]) -> str:
    """The id of the leaderboard row a result belongs to (its seeds share it)."""
    settings = seedless_settings(result)
    return (f"reproduced/{result['method']}/{result['config_hash']}/{result['protocol']['id']}"
            + (f"/{settings}" if settings else ""))


def _seed_label(result: dict[str, Any]) -> str:
    seed, training_seed = _seed_key(result) or (result.get("seed"), None)
    if training_seed is not None and training_seed != seed:
        return f"{seed} (training {training_seed})"
    return str(seed)


def _interval(result: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """The result's bootstrap interval of ``metric``'s dataset mean, in percent."""
    boot = result.get("bootstrap") or {}
    low, high = (boot.get("low") or {}).get(metric), (boot.get("high") or {}).get(metric)
    if low is None or high is None:
        return None
    return {"low": _percent(low), "high": _percent(high),
            "confidence": boot.get("confidence"), "replicates": boot.get("replicates")}


def _leakage(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The leakage verdict of a cell's results: flagged when any of them is; None when none
    carries a ledger."""
    ledgers = [r["leakage"] for r in results if r.get("leakage")]
    if not ledgers:
        return None
    flags = [flag for ledger in ledgers for flag in ledger.get("flags", [])]
    zero_shot = all(ledger.get("zero_shot", True) for ledger in ledgers)
    return {"zero_shot": zero_shot, "label": "zero-shot" if zero_shot else "not zero-shot",
            "flags": flags}


def _cell(group: Sequence[dict[str, Any]], metric: str, protocol: str) -> dict[str, Any] | None:
    """One table cell from the results of a row and dataset that differ only by seed: the
    value, or the mean of the seeds' values with ``seeds`` = {n, std (ddof 1), values} when
    there are two or more; the 95 % bootstrap interval of a single result."""
    present = [(r, r["metrics"]["mean"].get(metric)) for r in group]
    present = [(r, v) for r, v in present if v is not None]
    if not present:
        return None
    first = present[0][0]
    provenance = _result_provenance(first)
    cell: dict[str, Any] = {"trained_on": list(first["trained_on"]), "protocol": protocol,
                            "provenance": provenance}
    values = [_percent(v) for _, v in present]
    if len(present) == 1:
        cell["value"] = values[0]
        if (interval := _interval(first, metric)) is not None:
            cell["interval"] = interval
    else:
        cell["value"] = round(statistics.mean(values), PERCENT_DIGITS)
        cell["seeds"] = {"n": len(values), "std": round(statistics.stdev(values), PERCENT_DIGITS),
                         "values": [{"seed": _seed_label(r), "value": v, "file": r.get("_path"),
                                     "interval": _interval(r, metric)}
                                    for (r, _), v in zip(present, values, strict=True)]}
        cell["provenance"] = {**provenance, "seed": ", ".join(_seed_label(r) for r, _ in present),
                              "file": None}
    if (leakage := _leakage([r for r, _ in present])) is not None:
        cell["leakage"] = leakage
    return cell


def _row_cost(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The row's cost: per field the median over its results that measured it (the same method
    and config on each target); None when no result carries ``cost``."""
    costs = [r["cost"] for r in results if r.get("cost")]
    if not costs:
        return None
    out: dict[str, Any] = {"results": len(costs)}
    for name in COST_FIELDS:
        values = [c[name] for c in costs if c.get(name) is not None]
        out[name] = statistics.median(values) if values else None
    out["device"] = costs[0].get("device")
    out["peak_memory_kind"] = costs[0].get("peak_memory_kind")
    return out


def _choose(results: Iterable[dict[str, Any]], problems: list[str]
            ) -> dict[tuple[Any, ...], dict[str, Any]]:
    """One result per (row, dataset, seed); of two, the newest (by ``created_at``), the other
    reported in ``problems``."""
    chosen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for result in results:
        key = (reproduced_row_id(result), result["dataset"]["name"], _seed_key(result))
        other = chosen.get(key)
        if other is not None:
            newer, older = sorted([result, other], reverse=True,
                                  key=lambda r: r["provenance"].get("created_at", ""))
            message = (f"{older.get('_path')}: duplicate of {newer.get('_path')} (same method, "
                       f"config_hash, protocol, run settings, seed and dataset); kept the newer")
            logger.warning(message)
            problems.append(message)
            result = newer
        chosen[key] = result
    return chosen


def _drill_entry(row_id: str, result: dict[str, Any], label: str) -> dict[str, Any]:
    categories: dict[str, dict[str, float | None]] = {}
    for category, metric_set in result["metrics"]["per_category"].items():
        for metric, fraction in metric_set.items():
            categories.setdefault(metric, {})[category] = _percent(fraction)
    intervals: dict[str, dict[str, dict[str, float | None]]] = {}
    for category, metric_set in ((result.get("bootstrap") or {}).get("per_category")
                                 or {}).items():
        for metric, bounds in metric_set.items():
            if bounds.get("low") is not None and bounds.get("high") is not None:
                intervals.setdefault(metric, {})[category] = {
                    "low": _percent(bounds["low"]), "high": _percent(bounds["high"])}
    return {"row_id": row_id, "label": label, "kind": "reproduced",
            "dataset": result["dataset"]["name"], "trained_on": list(result["trained_on"]),
            "provenance": _result_provenance(result), "metrics": categories,
            "intervals": intervals}


def _reproduced_rows(results: Iterable[dict[str, Any]], problems: list[str]
                     ) -> tuple[list[dict], list[dict], dict[str, str]]:
    """One row per (method, config hash, protocol, run settings less the seeds); one cell per
    target dataset and metric, over the seeds of that dataset (:func:`_cell`).

    Returns rows, drill-down entries and the dataset domains the results declare. Two results
    for the same row, dataset and seed keep the newest (by ``created_at``) and report the
    other."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (row_id, dataset, _), result in _choose(results, problems).items():
        groups.setdefault(row_id, {}).setdefault(dataset, []).append(result)
    rows: list[dict] = []
    drill: list[dict] = []
    domains: dict[str, str] = {}
    for row_id, by_dataset in groups.items():
        members = [r for group in by_dataset.values() for r in group]
        first = members[0]
        method, protocol = first["method"], first["protocol"]["id"]
        kinds = [r["method_kind"] for r in members if r.get("method_kind")]
        row = {"id": row_id, "kind": "reproduced", "method": method,
               "method_key": method_key(method), "label": method, "source_id": None,
               "detail": f"{protocol} · {first['config_hash']}", "cells": {},
               "method_kind": dict(kinds[0]) if kinds else None, "cost": _row_cost(members),
               "leakage": None}
        for dataset, group in by_dataset.items():
            group.sort(key=lambda r: (str(_seed_key(r)), r["provenance"].get("created_at", "")))
            domains[dataset] = dataset_domain(dataset, group[0]["dataset"].get("domain"))
            metric_names = {m for r in group for m in r["metrics"]["mean"]}
            for metric in sorted(metric_names):
                if (cell := _cell(group, metric, protocol)) is not None:
                    row["cells"].setdefault(metric, {})[dataset] = cell
            for result in group:
                if result["metrics"]["per_category"]:
                    label = method + (f" (seed {_seed_label(result)})" if len(group) > 1 else "")
                    drill.append(_drill_entry(row_id, result, label))
        row["leakage"] = _row_leakage(by_dataset)
        rows.append(row)
    _disambiguate(rows)
    return rows, drill, domains


def _row_leakage(by_dataset: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """``{zero_shot, flagged: [datasets]}`` of a row; None when no result carries a ledger."""
    verdicts = {d: _leakage(group) for d, group in by_dataset.items()}
    checked = {d: v for d, v in verdicts.items() if v is not None}
    if not checked:
        return None
    flagged = sorted(d for d, v in checked.items() if not v["zero_shot"])
    return {"zero_shot": not flagged, "flagged": flagged}


def _disambiguate(rows: list[dict[str, Any]]) -> None:
    """Rows of one method, config and protocol with different run settings name them."""
    details: dict[str, int] = {}
    for row in rows:
        details[row["detail"]] = details.get(row["detail"], 0) + 1
    for row in rows:
        settings = row["id"].split("/")[4:]
        if details[row["detail"]] > 1 and settings:
            row["detail"] += f" · settings {settings[0]}"


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
    known = dataset_entries()
    ordered = [d.id for d in known if d.id in used]
    ordered += sorted(used - {d.id for d in known})
    return [{"id": d, "title": dataset_title(d),
             "domain": dataset_domain(d, extra_domains.get(d))} for d in ordered]


def build_site_data(results: Iterable[dict[str, Any]], reported: Iterable[ReportedValue],
                    problems: Sequence[str] = (), gallery: Sequence[dict] = ()) -> dict[str, Any]:
    """Assemble the page's data: datasets, metrics, rows with provenance, reproduced-vs-reported
    comparisons, drill-down, gallery, skipped files. (Means and ranks: :func:`summarize` over
    ``summary_datasets(data["datasets"])``, as the page computes them.)"""
    problems = list(problems)
    reported_rows, reported_drill = _reported_rows(reported)
    reproduced_rows, reproduced_drill, domains = _reproduced_rows(results, problems)
    rows = reported_rows + reproduced_rows
    datasets = _dataset_list(rows, domains)
    metric_ids = [m for m, _ in METRICS]
    extra = sorted({m for row in rows for m in row["cells"]} - set(metric_ids))
    metrics = [{"id": m, "label": label} for m, label in METRICS]
    metrics += [{"id": m, "label": m.replace("_", " ")} for m in extra]
    drill: dict[str, list[dict]] = {}
    for entry in reported_drill + reproduced_drill:
        drill.setdefault(entry["dataset"], []).append(entry)
    return {"format": 2, "zsbench_version": __version__, "metrics": metrics,
            "datasets": datasets, "rows": rows,
            "comparisons": _comparisons(rows), "drilldown": drill, "gallery": list(gallery),
            "skipped": problems}
