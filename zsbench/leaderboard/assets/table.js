/* zsbench leaderboard: the table model (no DOM). Plain functions on data.json's rows and
   datasets: filters, means, mean ranks, sorting, best values; tableModel puts them together for
   app.js to render. Mirrors zsbench.leaderboard.site_data.summarize: missing values are
   skipped, never 0, and only rows having every common dataset are ranked. */
"use strict";

window.ZS = window.ZS || {};

/* a block, not a function: strict-mode function declarations stay local to it */
{
  /** The cell of a row for a metric and dataset, or null when absent. */
  function cellOf(row, metric, dataset) {
    const cells = row.cells[metric];
    const cell = cells ? cells[dataset] : undefined;
    return cell && cell.value !== null && cell.value !== undefined ? cell : null;
  }

  /** Does a cell pass the "trained on" filter ("any", "none" or a dataset id)? */
  function trainedOnMatches(cell, trainedOn) {
    if (trainedOn === "any") return true;
    const list = cell.trained_on || [];
    if (trainedOn === "none") return list.length === 0 || list.indexOf("none") >= 0;
    return list.indexOf(trainedOn) >= 0;
  }

  /** The value shown for a row and dataset under the filters, or null (NA). */
  function visibleValue(row, metric, dataset, trainedOn) {
    const cell = cellOf(row, metric, dataset);
    if (!cell || !trainedOnMatches(cell, trainedOn)) return null;
    return cell.value;
  }

  /** Dataset ids (of datasetIds) for which a row has a visible value. */
  function covered(row, metric, datasetIds, trainedOn) {
    return datasetIds.filter(function (d) {
      return visibleValue(row, metric, d, trainedOn || "any") !== null;
    });
  }

  /** The datasets means and ranks are taken over (mirrors site_data.common_datasets): of the
      rows' own dataset sets, the one putting the most values into the ranking (rows having all
      of it x its size), then the larger, then the earlier row's; in datasetIds order. */
  function commonDatasets(rows, metric, datasetIds, trainedOn) {
    const sets = rows.map(function (r) { return covered(r, metric, datasetIds, trainedOn); });
    let best = [], bestScore = 0, bestSize = 0;
    sets.forEach(function (candidate) {
      if (!candidate.length) return;
      const having = sets.filter(function (s) {
        return candidate.every(function (d) { return s.indexOf(d) >= 0; });
      }).length;
      const score = having * candidate.length;
      if (score > bestScore || (score === bestScore && candidate.length > bestSize)) {
        best = candidate; bestScore = score; bestSize = candidate.length;
      }
    });
    return datasetIds.filter(function (d) { return best.indexOf(d) >= 0; });
  }

  /** {rowId: {mean, mean_rank, count, ranked}} (mirrors site_data.summarize): rows having
      every common dataset are ranked over exactly those; the others get the mean over their
      own datasets (count of them) and no rank. Ties share their average rank. */
  function summarize(rows, metric, datasetIds, trainedOn) {
    trainedOn = trainedOn || "any";
    const common = commonDatasets(rows, metric, datasetIds, trainedOn);
    const ranked = rows.filter(function (r) {
      return common.length > 0 && covered(r, metric, common, trainedOn).length === common.length;
    });
    const ranks = {};
    ranked.forEach(function (r) { ranks[r.id] = []; });
    common.forEach(function (d) {
      const present = ranked.map(function (r) { return [r.id, visibleValue(r, metric, d, trainedOn)]; });
      present.forEach(function (p) {
        let better = 0, tied = 0;
        present.forEach(function (q) {
          if (q[1] > p[1]) better += 1;
          else if (q[1] === p[1]) tied += 1;
        });
        ranks[p[0]].push(better + (tied + 1) / 2);
      });
    });
    const sum = function (a) { return a.reduce(function (s, x) { return s + x; }, 0); };
    const out = {};
    rows.forEach(function (r) {
      const isRanked = Object.prototype.hasOwnProperty.call(ranks, r.id);
      const used = isRanked ? common : covered(r, metric, datasetIds, trainedOn);
      const values = used.map(function (d) { return visibleValue(r, metric, d, trainedOn); });
      const n = values.length;
      out[r.id] = {
        mean: n ? sum(values) / n : null,
        mean_rank: isRanked ? sum(ranks[r.id]) / n : null,
        count: n,
        ranked: isRanked,
      };
    });
    return out;
  }

  /** Compare two sort keys: numbers or strings; null (NA) always last. */
  function compareKeys(a, b, direction) {
    const aNa = a === null || a === undefined, bNa = b === null || b === undefined;
    if (aNa && bNa) return 0;
    if (aNa) return 1;
    if (bNa) return -1;
    let c;
    if (typeof a === "number" && typeof b === "number") c = a - b;
    else c = String(a).localeCompare(String(b));
    return direction === "desc" ? -c : c;
  }

  /** Sort key of a row for a column: "method", "mean", "rank", "count" or a dataset id. */
  function sortKey(row, column, metric, summary, trainedOn) {
    if (column === "method") return row.label.toLowerCase() + " " + row.detail;
    /* unranked rows' means cover other datasets: never sorted among the ranked ones */
    if (column === "mean") return summary[row.id].ranked ? summary[row.id].mean : null;
    if (column === "rank") return summary[row.id].mean_rank;
    if (column === "count") return summary[row.id].count;
    if (column.slice(0, 5) === "cost:") return costOf(row, column.slice(5));
    return visibleValue(row, metric, column, trainedOn);
  }

  /** Rows sorted by a column (stable; ties keep the label order). */
  function sortRows(rows, column, direction, metric, summary, trainedOn) {
    const keyed = rows.map(function (r, i) {
      return [sortKey(r, column, metric, summary, trainedOn), i, r];
    });
    keyed.sort(function (x, y) {
      return compareKeys(x[0], y[0], direction) || x[1] - y[1];
    });
    return keyed.map(function (k) { return k[2]; });
  }

  /** Percent with one decimal; NA as an en dash. */
  function format(value, digits) {
    if (value === null || value === undefined) return "\u2013";
    return value.toFixed(digits === undefined ? 1 : digits);
  }

  /** Signed difference with one decimal ("+1.2", "-0.3", "0.0"). */
  function formatDifference(value) {
    if (value === null || value === undefined) return "\u2013";
    const text = Math.abs(value).toFixed(1);
    if (text === "0.0") return "0.0";
    return (value > 0 ? "+" : "\u2212") + text;
  }

  /* ---------- the leaderboard table ---------- */

  /** Rows the row filters keep: kind ("all", "reported", "reproduced") and a search text
      matched against the label and detail. */
  function filterRows(rows, kind, search) {
    const q = (search || "").trim().toLowerCase();
    return rows.filter(function (r) {
      if (kind !== "all" && r.kind !== kind) return false;
      return !q || (r.label + " " + r.detail).toLowerCase().indexOf(q) >= 0;
    });
  }

  /* ---------- evidence: method kind, leakage, seeds, cost ---------- */

  /** "training-free" or "trained" from a row's method_kind, null when unknown (reported). */
  function kindLabel(row) {
    if (!row.method_kind) return null;
    return row.method_kind.trainable ? "trained" : "training-free";
  }

  /** Is a row flagged "not zero-shot" (any of its results shares data with its target)? */
  function flagged(row) { return !!(row.leakage && row.leakage.zero_shot === false); }

  /** Rows the evidence filters keep: leak "hide" drops flagged rows ("show", the default,
      keeps them, badged); methodKind "all", "training-free", "trained", "transductive" or
      "stochastic"
      (rows without a known kind only pass "all"). */
  function evidenceFilter(rows, leak, methodKind) {
    return rows.filter(function (r) {
      if (leak === "hide" && flagged(r)) return false;
      if (!methodKind || methodKind === "all") return true;
      if (!r.method_kind) return false;
      if (methodKind === "transductive") return !!r.method_kind.transductive;
      if (methodKind === "stochastic") return !!r.method_kind.stochastic;
      return kindLabel(r) === methodKind;
    });
  }

  /** A cell's text: the value, or "mean ± std" for seeds (n separately). */
  function cellText(cell) {
    if (!cell.seeds) return format(cell.value);
    return format(cell.value) + " \u00b1 " + format(cell.seeds.std);
  }

  /** The cost columns: [field, header, unit title]. */
  const COST_COLUMNS = [
    ["latency_batch1_ms", "Latency", "ms per image at batch 1 (median)"],
    ["throughput_images_per_s", "Throughput", "images per second at batch N"],
    ["peak_memory_bytes", "Peak mem.", "peak device memory, GiB"],
    ["trainable_parameters", "Trainable", "trainable parameters"],
    ["flops_per_image", "GFLOPs", "GFLOPs per image (torch flop counter)"],
    ["training_time_s", "Training", "training time"],
  ];

  /** A row's cost field, null when unknown. */
  function costOf(row, field) {
    const v = row.cost ? row.cost[field] : null;
    return v === undefined ? null : v;
  }

  /** Seconds as "12 s", "35 min" or "2.5 h". */
  function formatDuration(s) {
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  /** A cost value in its column's unit; NA (and no cost at all) as an en dash. */
  function formatCost(field, v) {
    if (v === null || v === undefined) return "\u2013";
    if (field === "latency_batch1_ms") return v.toFixed(1);
    if (field === "throughput_images_per_s") return v.toFixed(1);
    if (field === "peak_memory_bytes") return (v / Math.pow(2, 30)).toFixed(2);
    if (field === "flops_per_image") return (v / 1e9).toFixed(1);
    if (field === "training_time_s") return formatDuration(v);
    if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return String(v);
  }

  /** The accuracy-vs-cost chart's x measures (mirrors site_data.COST_MEASURES). */
  const COST_MEASURES = {
    latency: ["latency_batch1_ms", 1, "latency, batch 1 (ms)"],
    gflops: ["flops_per_image", 1e9, "GFLOPs per image"],
    trainable: ["trainable_parameters", 1, "trainable parameters"],
  };

  /** Points [{row_id, label, x, y, count, ranked}] of the rows with the cost measure: y is the
      mean of the metric over the common datasets of those rows (mirrors
      site_data.scatter_points). */
  function scatterPoints(rows, metric, datasetIds, measure, trainedOn) {
    const m = COST_MEASURES[measure];
    const xOf = function (r) { const v = costOf(r, m[0]); return v === null ? null : v / m[1]; };
    const withCost = rows.filter(function (r) { return xOf(r) !== null; });
    const s = summarize(withCost, metric, datasetIds, trainedOn);
    return withCost.filter(function (r) { return s[r.id].mean !== null; }).map(function (r) {
      return { row_id: r.id, label: r.label, x: xOf(r), y: s[r.id].mean, count: s[r.id].count,
        ranked: s[r.id].ranked };
    });
  }

  /** Datasets of a domain ("all" keeps every one), in data.json's order. */
  function inDomain(datasets, domain) {
    return datasets.filter(function (d) { return domain === "all" || d.domain === domain; });
  }

  /** Datasets with at least one visible value among the rows. */
  function columnsWithValues(datasets, rows, metric, trainedOn) {
    return datasets.filter(function (d) {
      return rows.some(function (r) { return visibleValue(r, metric, d.id, trainedOn) !== null; });
    });
  }

  /** Ids means and ranks use: the real (non-synthetic) datasets when any are shown
      (mirrors site_data.summary_datasets). */
  function summaryIds(columns) {
    const real = columns.filter(function (d) { return d.domain !== "synthetic"; });
    return (real.length ? real : columns).map(function (d) { return d.id; });
  }

  /** {datasetId: [best, second best]} of the visible values of each column. */
  function bestValues(rows, metric, ids, trainedOn) {
    const best = {};
    ids.forEach(function (d) {
      const vals = rows.map(function (r) { return visibleValue(r, metric, d, trainedOn); })
        .filter(function (v) { return v !== null; }).sort(function (a, b) { return b - a; });
      best[d] = [vals[0], vals.find(function (v) { return v < vals[0]; })];
    });
    return best;
  }

  /** Runs of consecutive columns of one domain: [{domain, n}] (the header's column groups). */
  function domainGroups(columns) {
    const groups = [];
    columns.forEach(function (d) {
      const last = groups[groups.length - 1];
      if (last && last.domain === d.domain) last.n += 1;
      else groups.push({ domain: d.domain, n: 1 });
    });
    return groups;
  }

  /** The common datasets (ids) a row has no visible value for. */
  function missingDatasets(row, metric, common, trainedOn) {
    return common.filter(function (d) { return visibleValue(row, metric, d, trainedOn) === null; });
  }

  /** What the leaderboard table shows for a view {metric, domain, kind, trained, search, sort,
      dir}: the columns with values, the rows with a value among them (sorted), their
      summaries over the common datasets, the best values and the domain groups. */
  function tableModel(data, view) {
    const metric = view.metric, trainedOn = view.trained;
    const candidates = evidenceFilter(filterRows(data.rows, view.kind, view.search), view.leak,
      view.mkind);
    const columns = columnsWithValues(inDomain(data.datasets, view.domain), candidates, metric,
      trainedOn);
    const ids = columns.map(function (d) { return d.id; });
    const rows = candidates.filter(function (r) {
      return ids.some(function (d) { return visibleValue(r, metric, d, trainedOn) !== null; });
    });
    const rankedOver = summaryIds(columns);
    const summary = summarize(rows, metric, rankedOver, trainedOn);
    return {
      metric: metric, trainedOn: trainedOn, columns: columns, summary: summary,
      common: commonDatasets(rows, metric, rankedOver, trainedOn),
      rows: sortRows(rows, view.sort, view.dir, metric, summary, trainedOn),
      unranked: rows.filter(function (r) { return !summary[r.id].ranked; }).length,
      best: bestValues(rows, metric, ids, trainedOn), groups: domainGroups(columns),
      rankedOver: rankedOver, costs: rows.some(function (r) { return !!r.cost; }),
      flagged: rows.filter(flagged).length,
    };
  }

  ZS.table = {
    cellOf: cellOf, trainedOnMatches: trainedOnMatches, visibleValue: visibleValue,
    covered: covered, commonDatasets: commonDatasets, summarize: summarize,
    compareKeys: compareKeys, sortRows: sortRows, format: format,
    formatDifference: formatDifference, filterRows: filterRows, inDomain: inDomain,
    columnsWithValues: columnsWithValues, summaryIds: summaryIds, bestValues: bestValues,
    domainGroups: domainGroups, missingDatasets: missingDatasets, tableModel: tableModel,
    kindLabel: kindLabel, flagged: flagged, evidenceFilter: evidenceFilter, cellText: cellText,
    COST_COLUMNS: COST_COLUMNS, costOf: costOf, formatCost: formatCost,
    formatDuration: formatDuration, COST_MEASURES: COST_MEASURES, scatterPoints: scatterPoints,
  };
}
