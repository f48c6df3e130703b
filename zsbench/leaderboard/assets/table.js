/* zsbench leaderboard: table logic (no DOM). Means, mean ranks, sorting and cell filters.
   Mirrors zsbench.leaderboard.site_data.summarize: missing values are skipped, never 0, and
   only rows having every common dataset are ranked. */
"use strict";

window.ZS = window.ZS || {};

ZS.table = (function () {
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

  return {
    cellOf: cellOf, trainedOnMatches: trainedOnMatches, visibleValue: visibleValue,
    covered: covered, commonDatasets: commonDatasets, summarize: summarize, compareKeys: compareKeys, sortRows: sortRows, format: format,
    formatDifference: formatDifference,
  };
})();
