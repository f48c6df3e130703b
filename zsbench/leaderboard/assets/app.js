/* zsbench leaderboard: page state, views and events. Reads window.ZSBENCH_DATA (data.js); the
   table's numbers come from the pure model in table.js (ZS.table.tableModel). */
"use strict";

/* a block, not a function: strict-mode function declarations stay local to it */
{
  const DATA = window.ZSBENCH_DATA;
  const T = ZS.table, C = ZS.charts;
  const DOMAIN_LABELS = { industrial: "Industrial", medical: "Medical", synthetic: "Synthetic",
    other: "Other" };
  const VIEWS = ["table", "compare", "datasets", "gallery"];

  const state = {
    view: "table", metric: DATA.metrics[0].id, domain: "all", kind: "all", trained: "any",
    search: "", sort: "mean", dir: "desc", dataset: null, leak: "show", mkind: "all",
    measure: "latency",
  };

  /* ---------- small DOM helpers ---------- */
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      const v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    });
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) node.appendChild(typeof c === "string" ?
        document.createTextNode(c) : c);
    });
    return node;
  }
  function $(id) { return document.getElementById(id); }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function metricLabel(id) {
    const m = DATA.metrics.find(function (x) { return x.id === id; });
    return m ? m.label : id;
  }
  function datasetById(id) { return DATA.datasets.find(function (d) { return d.id === id; }); }
  const rowById = {}, labelCount = {};
  DATA.rows.forEach(function (r) {
    rowById[r.id] = r;
    labelCount[r.label] = (labelCount[r.label] || 0) + 1;
  });
  /** Row label for charts: the method, plus its source or run when the method repeats. */
  function displayName(row) {
    return labelCount[row.label] > 1 ? row.label + " (" + row.detail + ")" : row.label;
  }

  /* ---------- state <-> URL hash (works under file://) ---------- */
  function readHash() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    Object.keys(state).forEach(function (k) { if (params.has(k)) state[k] = params.get(k); });
    if (VIEWS.indexOf(state.view) < 0) state.view = "table";
    if (!DATA.metrics.some(function (m) { return m.id === state.metric; })) {
      state.metric = DATA.metrics[0].id;
    }
  }
  function writeHash() {
    const params = new URLSearchParams();
    Object.keys(state).forEach(function (k) { if (state[k]) params.set(k, state[k]); });
    history.replaceState(null, "", "#" + params.toString());
  }

  /* ---------- what the filters leave visible ---------- */
  function visibleRows() {
    return T.evidenceFilter(T.filterRows(DATA.rows, state.kind, state.search), state.leak,
      state.mkind);
  }
  function domainDatasets() { return T.inDomain(DATA.datasets, state.domain); }

  /* ---------- provenance ---------- */
  function provenanceLines(cell) {
    const p = cell.provenance || {};
    const keys = ["source", "table", "protocol", "trained_on", "config_hash", "zsbench_version",
      "git_commit", "created_at", "backbone", "seed", "file"];
    const lines = [];
    keys.forEach(function (k) {
      if (p[k] !== undefined && p[k] !== null && p[k] !== "") lines.push([k, String(p[k])]);
    });
    if (p.hardware && Object.keys(p.hardware).length) {
      lines.push(["hardware", Object.keys(p.hardware).map(function (k) {
        return k + ": " + JSON.stringify(p.hardware[k]);
      }).join(", ")]);
    }
    return lines;
  }
  function intervalText(iv) {
    return "95 % interval " + iv.low.toFixed(2) + " \u2013 " + iv.high.toFixed(2) +
      (iv.replicates ? " (bootstrap, " + iv.replicates + " replicates)" : "");
  }
  /** Lines on a cell's evidence: its interval, its seeds (each value) and its leakage. */
  function evidenceLines(cell) {
    const lines = [];
    if (cell.interval) lines.push(["interval", intervalText(cell.interval)]);
    if (cell.seeds) {
      lines.push(["seeds", "mean " + cell.value.toFixed(2) + " \u00b1 " +
        cell.seeds.std.toFixed(2) + " (std, n = " + cell.seeds.n + ")"]);
      cell.seeds.values.forEach(function (s) {
        lines.push(["seed " + s.seed, s.value.toFixed(2) + (s.interval ? " (" +
          intervalText(s.interval) + ")" : "") + (s.file ? " \u00b7 " + s.file : "")]);
      });
    }
    if (cell.leakage && !cell.leakage.zero_shot) {
      lines.push(["leakage", "not zero-shot: " + cell.leakage.flags.map(function (f) {
        return f.kind + " " + f.dataset + (f.categories ? " (" + f.categories.join(", ") + ")" :
          "") + " [" + f.role + "]";
      }).join("; ")]);
    }
    return lines;
  }
  function provenanceTitle(row, dataset, cell) {
    return row.label + " \u00b7 " + dataset.title + " = " + cell.value.toFixed(2) + "\n" +
      evidenceLines(cell).concat(provenanceLines(cell)).map(function (l) {
        return l[0] + ": " + l[1];
      }).join("\n");
  }
  function showProvenance(row, dataset, cell, extra) {
    const panel = $("provenance");
    clear(panel);
    panel.appendChild(el("button", { class: "close", "aria-label": "close", text: "\u00d7",
      onclick: function () { panel.hidden = true; } }));
    panel.appendChild(el("h3", { text: row.label + " \u00b7 " + dataset.title }));
    panel.appendChild(el("p", { class: "prov-value" }, [
      metricLabel(state.metric) + ": ", el("strong", { text: cell.value.toFixed(2) }),
      " (" + row.kind + ")"]));
    const dl = el("dl");
    evidenceLines(cell).concat(provenanceLines(cell), extra || []).forEach(function (l) {
      dl.appendChild(el("dt", { text: l[0] }));
      dl.appendChild(el("dd", { text: l[1] }));
    });
    panel.appendChild(dl);
    panel.appendChild(el("a", { href: "#", class: "link", text: "Per-category values \u2192",
      onclick: function (ev) {
        ev.preventDefault(); state.view = "datasets"; state.dataset = dataset.id; render();
      } }));
    panel.hidden = false;
  }

  /* ---------- controls ---------- */
  function renderControls() {
    document.querySelectorAll("#views button").forEach(function (b) {
      b.classList.toggle("active", b.dataset.view === state.view);
      b.setAttribute("aria-selected", b.dataset.view === state.view ? "true" : "false");
    });
    const tabs = clear($("metric-tabs"));
    DATA.metrics.forEach(function (m) {
      const n = DATA.rows.filter(function (r) { return r.cells[m.id]; }).length;
      tabs.appendChild(el("button", {
        class: "tab" + (m.id === state.metric ? " active" : ""), "data-metric": m.id,
        role: "tab", "aria-selected": m.id === state.metric ? "true" : "false",
        title: n + " rows with values",
        onclick: function () { state.metric = m.id; render(); },
      }, [m.label, el("span", { class: "tab-count", text: String(n) })]));
    });
    $("filter-domain").value = state.domain;
    $("filter-kind").value = state.kind;
    $("filter-trained").value = state.trained;
    $("filter-search").value = state.search;
    $("filter-leak").value = state.leak;
    $("filter-mkind").value = state.mkind;
  }
  function initFilters() {
    const domains = [];
    DATA.datasets.forEach(function (d) { if (domains.indexOf(d.domain) < 0) domains.push(d.domain); });
    const dsel = $("filter-domain");
    dsel.appendChild(el("option", { value: "all", text: "All domains" }));
    domains.forEach(function (d) {
      dsel.appendChild(el("option", { value: d, text: DOMAIN_LABELS[d] || d }));
    });
    const trained = [];
    DATA.rows.forEach(function (r) {
      Object.keys(r.cells).forEach(function (m) {
        Object.keys(r.cells[m]).forEach(function (d) {
          const list = r.cells[m][d].trained_on || [];
          if (!list.length && trained.indexOf("none") < 0) trained.push("none");
          list.forEach(function (t) { if (trained.indexOf(t) < 0) trained.push(t); });
        });
      });
    });
    const tsel = $("filter-trained");
    tsel.appendChild(el("option", { value: "any", text: "Any training data" }));
    trained.sort().forEach(function (t) {
      const d = datasetById(t);
      tsel.appendChild(el("option", { value: t, text: t === "none" ? "Training-free (none)" :
        "Trained on " + (d ? d.title : t) }));
    });
    dsel.addEventListener("change", function () { state.domain = dsel.value; render(); });
    $("filter-kind").addEventListener("change", function (e) { state.kind = e.target.value; render(); });
    tsel.addEventListener("change", function () { state.trained = tsel.value; render(); });
    $("filter-search").addEventListener("input", function (e) { state.search = e.target.value; render(); });
    $("filter-leak").addEventListener("change", function (e) { state.leak = e.target.value; render(); });
    $("filter-mkind").addEventListener("change", function (e) { state.mkind = e.target.value; render(); });
    document.querySelectorAll("#views button").forEach(function (b) {
      b.addEventListener("click", function () { state.view = b.dataset.view; render(); });
    });
  }

  /* ---------- leaderboard table ---------- */
  function sortHeader(label, column, attrs) {
    const active = state.sort === column;
    const th = el("th", Object.assign({
      class: "sortable" + (active ? " sorted" : ""), "data-sort": column, scope: "col",
      "aria-sort": active ? (state.dir === "asc" ? "ascending" : "descending") : "none",
      title: "Sort by " + label,
      onclick: function () {
        if (state.sort === column) state.dir = state.dir === "asc" ? "desc" : "asc";
        else { state.sort = column; state.dir = column === "rank" || column === "method" ? "asc" : "desc"; }
        render();
      },
    }, attrs || {}), [label, el("span", { class: "arrow", text: active ?
      (state.dir === "asc" ? " \u25b2" : " \u25bc") : "" })]);
    return th;
  }

  function titles(ids) {
    return ids.map(function (d) { return datasetById(d).title; }).join(", ");
  }
  function renderCaption(model) {
    const caption = $("table-caption");
    caption.textContent = metricLabel(model.metric) + " (%) \u2014 " + model.rows.length +
      " rows \u00d7 " + model.columns.length + " datasets. Mean and mean rank over the " +
      model.common.length + " datasets every ranked row has (" + titles(model.common) + ")" +
      (model.unranked ? "; the " + model.unranked + " rows lacking any of them are not " +
      "ranked: their mean (grey) is over their own n datasets and not comparable" : "") +
      ". \u2013 = not reported. Click a header to sort, a value for its provenance." +
      evidenceCaption(model);
    caption.setAttribute("data-common", model.common.join(","));
  }
  /** What the caption says about seeds, intervals and the leakage flag. */
  function evidenceCaption(model) {
    const evidence = model.rows.some(function (r) {
      const cells = r.cells[model.metric] || {};
      return Object.keys(cells).some(function (d) { return cells[d].seeds || cells[d].interval; });
    });
    const text = [evidence ? " Values with \u00b1 are the mean \u00b1 std (n seeds); hover a " +
      "value for its 95 % bootstrap interval when the run has one." : ""];
    if (state.leak === "hide") text.push("Rows flagged \u201cnot zero-shot\u201d are hidden.");
    else if (model.flagged) {
      text.push(model.flagged + " row(s) flagged \u201cnot zero-shot\u201d (trained or " +
        "selected on data of their target) are shown with a badge; the Zero-shot filter hides " +
        "them.");
    }
    return text.join(" ");
  }
  function renderEmpty(metric) {
    $("table-empty").hidden = false;
    $("table-empty").textContent = "No values for " + metricLabel(metric) + " under these " +
      "filters." + (metric === "aupro" ? " Published tables report only the legacy AUPRO; " +
      "exact AUPRO values come from reproduced runs." : "");
    clear($("heatmap"));
  }
  /** Is column i the first of its domain group? */
  function startsGroup(columns, i) {
    return i === 0 || columns[i - 1].domain !== columns[i].domain;
  }

  /** Header: a row of domain groups over a row of dataset columns and the summary columns. */
  function tableHead(model) {
    const groupRow = el("tr", { class: "group-row" }, [
      sortHeader("Method", "method", { rowspan: 2, class: "sortable method-col" })]);
    model.groups.forEach(function (g) {
      groupRow.appendChild(el("th", { colspan: g.n, class: "group group-" + g.domain,
        scope: "colgroup", text: DOMAIN_LABELS[g.domain] || g.domain }));
    });
    groupRow.appendChild(el("th", { colspan: 3, class: "group group-summary", text: "Summary" }));
    if (model.costs) {
      groupRow.appendChild(el("th", { colspan: T.COST_COLUMNS.length, class: "group group-cost",
        scope: "colgroup", text: "Cost" }));
    }
    const headRow = el("tr", { class: "dataset-row" });
    model.columns.forEach(function (d, i) {
      headRow.appendChild(sortHeader(d.title, d.id, { class: "sortable num" +
        (startsGroup(model.columns, i) ? " group-start" : ""), "data-dataset": d.id }));
    });
    headRow.appendChild(sortHeader("Mean", "mean", { class: "sortable num group-start" }));
    headRow.appendChild(sortHeader("Mean rank", "rank", { class: "sortable num" }));
    headRow.appendChild(sortHeader("n", "count", { class: "sortable num",
      title: "Datasets with a value (of " + model.columns.length + ")" }));
    if (model.costs) {
      T.COST_COLUMNS.forEach(function (c, i) {
        headRow.appendChild(sortHeader(c[1], "cost:" + c[0], { class: "sortable num cost" +
          (i ? "" : " group-start"), "data-cost": c[0], title: "Sort by " + c[2] }));
      });
    }
    return el("thead", {}, [groupRow, headRow]);
  }

  function methodCell(r) {
    const kind = T.kindLabel(r);
    return el("th", { scope: "row", class: "method-col" }, [
      el("span", { class: "method-name", text: r.label }),
      el("span", { class: "badge badge-" + r.kind, text: r.kind }),
      kind ? el("span", { class: "badge badge-mkind", "data-mkind": kind, text: kind }) : null,
      kind ? el("span", { class: "badge badge-" + (r.method_kind.transductive ? "transductive" :
        "inductive"), text: r.method_kind.transductive ? "transductive" : "inductive",
        title: r.method_kind.transductive ? "scores each image with the other test images " +
          "of its category (its reference pool) or adapts on them" :
          "never sees the test set before scoring" }) : null,
      kind && r.method_kind.stochastic ? el("span", { class: "badge badge-stochastic",
        text: "stochastic", title: "samples at test time" + (r.method_kind.samples ?
          " (" + r.method_kind.samples + " samples, seeded)" : "") }) : null,
      T.flagged(r) ? el("span", { class: "badge badge-leak", text: "not zero-shot",
        title: "trained or checkpoint-selected on data of its target: " +
          r.leakage.flagged.map(function (d) { return datasetById(d).title; }).join(", ") }) :
        null,
      el("span", { class: "detail", text: r.detail })]);
  }

  /** A value cell: NA as a dash, best and second best marked, provenance on click. */
  function valueCell(model, r, i) {
    const d = model.columns[i];
    const cell = T.cellOf(r, model.metric, d.id);
    const v = T.visibleValue(r, model.metric, d.id, model.trainedOn);
    const cls = ["num"];
    if (startsGroup(model.columns, i)) cls.push("group-start");
    if (v === null) {
      cls.push("na");
      return el("td", { class: cls.join(" "), "data-dataset": d.id, text: "\u2013",
        title: cell ? "hidden by the training-data filter" : "not reported" });
    }
    if (v === model.best[d.id][0]) cls.push("best");
    else if (v === model.best[d.id][1]) cls.push("second");
    if (cell.leakage && !cell.leakage.zero_shot) cls.push("leak");
    return el("td", { class: cls.join(" "), "data-dataset": d.id, "data-value": v,
      title: provenanceTitle(r, d, cell), tabindex: "0",
      "data-low": cell.interval ? cell.interval.low : null,
      "data-high": cell.interval ? cell.interval.high : null,
      onclick: function () { showProvenance(r, d, cell); },
      onkeydown: function (ev) { if (ev.key === "Enter") showProvenance(r, d, cell); },
    }, [T.cellText(cell), cell.seeds ? el("span", { class: "seed-n",
      text: " n=" + cell.seeds.n }) : null]);
  }

  /** The cost cells of a row (dash when unknown). */
  function costCells(r) {
    return T.COST_COLUMNS.map(function (c, i) {
      const v = T.costOf(r, c[0]);
      return el("td", { class: "num cost" + (i ? "" : " group-start") + (v === null ? " na" : ""),
        "data-cost": c[0], "data-exact": v, title: c[2], text: T.formatCost(c[0], v) });
    });
  }

  /** Mean, mean rank and n of a row; an unranked row says which common datasets it lacks. */
  function summaryCells(model, r) {
    const s = model.summary[r.id];
    const unranked = s.ranked ? "" : " unranked";
    const why = s.ranked ? null : "not ranked: lacks " +
      titles(T.missingDatasets(r, model.metric, model.common, model.trainedOn)) +
      (s.count ? "; mean over its own " + s.count + " datasets" : "");
    return [
      el("td", { class: "num summary group-start" + unranked, "data-col": "mean",
        "data-exact": s.mean, "data-ranked": s.ranked ? "true" : "false", title: why,
        text: T.format(s.mean) }),
      el("td", { class: "num summary" + unranked, "data-col": "rank",
        "data-exact": s.mean_rank, title: why, text: T.format(s.mean_rank, 2) }),
      el("td", { class: "num summary count", "data-col": "count",
        text: s.count + "/" + model.columns.length })];
  }

  function tableRow(model, r) {
    const tr = el("tr", { "data-row-id": r.id, "data-kind": r.kind, class: "row-" + r.kind +
      (model.summary[r.id].ranked ? "" : " row-unranked") + (T.flagged(r) ? " row-flagged" : ""),
      "data-flagged": T.flagged(r) ? "true" : "false" }, [methodCell(r)]);
    model.columns.forEach(function (d, i) { tr.appendChild(valueCell(model, r, i)); });
    summaryCells(model, r).forEach(function (td) { tr.appendChild(td); });
    if (model.costs) costCells(r).forEach(function (td) { tr.appendChild(td); });
    return tr;
  }

  /** Heat map of the table's rows, in the table's order. */
  function renderHeatmap(model) {
    const heat = clear($("heatmap"));
    heat.appendChild(el("h2", { text: "Heat map \u2014 " + metricLabel(model.metric) + " (%)" }));
    heat.appendChild(el("p", { class: "hint", text: "Rows in the table's order; \u2605 marks " +
      "reproduced rows; grey = not reported." }));
    heat.appendChild(C.heatmap({
      rows: model.rows, columns: model.columns, title: "heat map of " + metricLabel(model.metric),
      label: displayName,
      value: function (r, d) { return T.visibleValue(r, model.metric, d.id, model.trainedOn); },
    }));
  }

  function renderTable() {
    const model = T.tableModel(DATA, state);
    const table = clear($("leaderboard"));
    renderCaption(model);
    if (!model.rows.length) { renderEmpty(model.metric); return; }
    $("table-empty").hidden = true;
    const tbody = el("tbody");
    model.rows.forEach(function (r) { tbody.appendChild(tableRow(model, r)); });
    table.appendChild(tableHead(model));
    table.appendChild(tbody);
    renderHeatmap(model);
    renderCostChart(model);
  }

  /** Accuracy vs cost: the table's rows with a cost, x = the chosen measure (log scale). */
  function renderCostChart(model) {
    const box = clear($("cost-chart"));
    const points = T.scatterPoints(model.rows, model.metric, model.rankedOver, state.measure,
      model.trainedOn);
    if (!points.length) { box.hidden = true; return; }
    box.hidden = false;
    points.forEach(function (p) { p.label = displayName(rowById[p.row_id]); });
    const measure = T.COST_MEASURES[state.measure];
    const select = el("select", { id: "cost-measure", "aria-label": "cost measure",
      onchange: function (ev) { state.measure = ev.target.value; render(); } });
    Object.keys(T.COST_MEASURES).forEach(function (k) {
      select.appendChild(el("option", { value: k, text: T.COST_MEASURES[k][2] }));
    });
    select.value = state.measure;
    box.appendChild(el("div", { class: "dataset-head" }, [el("h2", { text: "Accuracy vs cost " +
      "\u2014 " + metricLabel(model.metric) + " (%)" }), select]));
    box.appendChild(C.scatter({ points: points, xLabel: measure[2], title: "accuracy vs cost",
      yLabel: "mean " + metricLabel(model.metric) + " (%)" }));
    box.appendChild(el("p", { class: "hint", text: "Rows with a measured cost. y: mean over " +
      "the datasets they all have (hollow: over their own datasets, not comparable); " +
      "x: log scale, 0 (no trainable parameter) at the left edge." }));
  }

  /* ---------- reported vs reproduced ---------- */
  function renderCompare() {
    const metric = state.metric;
    const domainIds = domainDatasets().map(function (d) { return d.id; });
    const kept = visibleRows().map(function (r) { return r.id; });
    const comps = DATA.comparisons.filter(function (c) {
      return c.metric === metric && domainIds.indexOf(c.dataset) >= 0 &&
        kept.indexOf(c.reproduced_row) >= 0;
    });
    const box = clear($("compare"));
    box.appendChild(el("h2", { text: "Reported vs reproduced \u2014 " + metricLabel(metric) }));
    box.appendChild(el("p", { class: "hint", text: "Each cell: reproduced value, the published " +
      "value it is compared with, and the difference (reproduced \u2212 reported, in points). " +
      "Only values of the same target dataset and training data are compared (a run trained " +
      "on VisA is never compared with a published value trained on MVTec AD; training-free " +
      "methods use none). The published value comes from the method's own paper when " +
      "available." }));
    if (!comps.length) {
      box.appendChild(el("p", { class: "empty", text: "No reproduced result has a published " +
        "counterpart for " + metricLabel(metric) + " under these filters." }));
      return;
    }
    const columns = DATA.datasets.filter(function (d) {
      return comps.some(function (c) { return c.dataset === d.id; });
    });
    const rowsIds = [];
    comps.forEach(function (c) { if (rowsIds.indexOf(c.reproduced_row) < 0) rowsIds.push(c.reproduced_row); });
    const table = el("table", { class: "grid compare-table", id: "compare-table" });
    const head = el("tr", {}, [el("th", { class: "method-col", text: "Reproduced run" })]);
    columns.forEach(function (d) { head.appendChild(el("th", { class: "num", text: d.title })); });
    head.appendChild(el("th", { class: "num", text: "Mean difference" }));
    table.appendChild(el("thead", {}, [head]));
    const tbody = el("tbody");
    rowsIds.forEach(function (id) { tbody.appendChild(compareRow(rowById[id], columns, comps)); });
    table.appendChild(tbody);
    box.appendChild(el("div", { class: "table-wrap" }, [table]));
  }
  /** One reproduced run: its difference to the published value per dataset, and the mean. */
  function compareRow(r, columns, comps) {
    const own = comps.filter(function (c) { return c.reproduced_row === r.id; });
    const sources = [];
    own.forEach(function (c) {
      const source = c.reported_source + " (" + c.reported_protocol + ")";
      if (sources.indexOf(source) < 0) sources.push(source);
    });
    const tr = el("tr", { "data-row-id": r.id }, [
      el("th", { class: "method-col", scope: "row" }, [
        el("span", { class: "method-name", text: r.label }),
        el("span", { class: "detail", text: r.detail }),
        el("span", { class: "detail", text: "vs " + sources.join("; ") })])]);
    const diffs = [];
    columns.forEach(function (d) {
      const c = own.find(function (x) { return x.dataset === d.id; });
      if (c) diffs.push(c.difference);
      tr.appendChild(c ? differenceCell(r, d, c) : el("td", { class: "num na", text: "\u2013" }));
    });
    const mean = diffs.reduce(function (s, x) { return s + x; }, 0) / diffs.length;
    tr.appendChild(el("td", { class: "num summary", text: T.formatDifference(mean) }));
    return tr;
  }
  function differenceCell(r, d, c) {
    const strength = Math.min(1, Math.abs(c.difference) / 5);
    const colour = c.difference >= 0 ? "rgba(26, 152, 80," : "rgba(215, 48, 39,";
    return el("td", {
      class: "num diff-cell " + (c.difference >= 0 ? "diff-pos" : "diff-neg"),
      style: "background:" + colour + (0.1 + 0.45 * strength).toFixed(3) + ")",
      "data-dataset": d.id, "data-difference": c.difference,
      title: "reproduced " + c.reproduced.toFixed(2) + " (" + c.protocol + ", trained on " +
        (c.trained_on.join("+") || "none") + ") \u2212 reported " + c.reported.toFixed(2) +
        " (" + c.reported_source + ", " + c.reported_protocol + ")",
      onclick: function () {
        showProvenance(r, d, r.cells[c.metric][d.id], [["compared with", c.reported_source +
          ": " + c.reported.toFixed(2)], ["difference", T.formatDifference(c.difference)]]);
      },
    }, [el("span", { class: "diff", text: T.formatDifference(c.difference) }),
      el("span", { class: "pair", text: T.format(c.reproduced) + " vs " + T.format(c.reported) })]);
  }

  /* ---------- per-dataset drill-down ---------- */
  function renderDatasets() {
    const metric = state.metric;
    const datasets = domainDatasets();
    const box = clear($("datasets"));
    if (!datasets.length) return;
    if (!datasets.some(function (d) { return d.id === state.dataset; })) state.dataset = datasets[0].id;
    const d = datasetById(state.dataset);
    const select = el("select", { id: "dataset-select", "aria-label": "dataset",
      onchange: function (ev) { state.dataset = ev.target.value; render(); } });
    datasets.forEach(function (x) {
      select.appendChild(el("option", { value: x.id, text: x.title + " (" +
        (DOMAIN_LABELS[x.domain] || x.domain) + ")" }));
    });
    select.value = d.id;
    box.appendChild(el("div", { class: "dataset-head" }, [
      el("h2", { text: d.title + " \u2014 " + metricLabel(metric) }), select]));
    box.appendChild(datasetBars(d, metric));
    const entries = (DATA.drilldown[d.id] || []).filter(function (e) {
      return (e.metrics[metric] && Object.keys(e.metrics[metric]).length) &&
        (state.kind === "all" || e.kind === state.kind);
    });
    box.appendChild(el("h3", { text: "Per-category values" }));
    if (!entries.length) {
      box.appendChild(el("p", { class: "empty", text: "No per-category " + metricLabel(metric) +
        " for " + d.title + ". Reproduced results carry them; of the published sources only " +
        "AnomalyCLIP's released logs (MVTec AD, VisA) list per-class values." }));
      return;
    }
    box.appendChild(el("div", { class: "table-wrap" }, [categoriesTable(entries, metric)]));
  }
  /** A cell's error bar: its 95 % interval, else the mean -+ std of its seeds, else null. */
  function errorOf(cell) {
    if (cell.interval) {
      return { low: cell.interval.low, high: cell.interval.high, kind: "ci",
        label: intervalText(cell.interval) };
    }
    if (cell.seeds) {
      return { low: cell.value - cell.seeds.std, high: cell.value + cell.seeds.std, kind: "std",
        label: "\u00b1 1 std over " + cell.seeds.n + " seeds" };
    }
    return null;
  }
  /** Bar chart of the visible rows' dataset-level values, or a note that there are none. */
  function datasetBars(d, metric) {
    const items = visibleRows().map(function (r) {
      const v = T.visibleValue(r, metric, d.id, state.trained);
      return v === null ? null : { label: displayName(r), value: v, kind: r.kind,
        err: errorOf(T.cellOf(r, metric, d.id)) };
    }).filter(Boolean);
    if (!items.length) {
      return el("p", { class: "empty", text: "No dataset-level " + metricLabel(metric) +
        " for " + d.title + "." });
    }
    const lowest = Math.min.apply(null, items.map(function (i) { return i.value; }));
    return el("figure", { class: "chart-box", id: "dataset-bars" }, [
      C.bars({ items: items, min: Math.max(0, Math.floor(lowest / 10) * 10 - 10),
        title: "bar chart of " + d.title }),
      el("figcaption", { text: "Dataset-level " + metricLabel(metric) + " (%), best first. " +
        "Blue: reported; orange: reproduced. Whiskers: 95 % bootstrap interval (solid) or " +
        "\u00b1 1 std over seeds (dashed), where the run has them." })]);
  }
  /** Per-category values of the drill-down entries, one row per run, with the class mean. */
  function categoriesTable(entries, metric) {
    const categories = [];
    entries.forEach(function (e) {
      Object.keys(e.metrics[metric]).forEach(function (c) { if (categories.indexOf(c) < 0) categories.push(c); });
    });
    categories.sort();
    const table = el("table", { class: "grid categories-table", id: "categories-table" });
    const head = el("tr", {}, [el("th", { class: "method-col", text: "Run" })]);
    categories.forEach(function (c) { head.appendChild(el("th", { class: "num", text: c })); });
    head.appendChild(el("th", { class: "num group-start", text: "Mean of classes" }));
    table.appendChild(el("thead", {}, [head]));
    const tbody = el("tbody");
    entries.forEach(function (e) {
      const p = e.provenance || {};
      const tr = el("tr", { "data-kind": e.kind }, [el("th", { class: "method-col", scope: "row" }, [
        el("span", { class: "method-name", text: e.label }),
        el("span", { class: "badge badge-" + e.kind, text: e.kind }),
        el("span", { class: "detail", text: e.kind === "reported" ? p.source :
          p.protocol + " \u00b7 " + p.config_hash })])]);
      const vals = [];
      categories.forEach(function (c) {
        const v = e.metrics[metric][c];
        const has = v !== null && v !== undefined;
        if (has) vals.push(v);
        const iv = ((e.intervals || {})[metric] || {})[c];
        tr.appendChild(el("td", { class: "num" + (has ? "" : " na"), "data-category": c,
          title: has && iv ? intervalText(iv) : null, text: T.format(has ? v : null) }));
      });
      const mean = vals.length ? vals.reduce(function (s, x) { return s + x; }, 0) / vals.length : null;
      tr.appendChild(el("td", { class: "num summary group-start", text: T.format(mean) }));
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    return table;
  }

  /* ---------- gallery ---------- */
  function renderGallery() {
    const box = clear($("gallery"));
    box.appendChild(el("h2", { text: "Anomaly-map gallery" }));
    box.appendChild(el("p", { class: "hint", id: "gallery-scale-note", text: "One colour " +
      "scale per dataset: every overlay of a run on a dataset maps the same score to the same " +
      "colour (the dataset's min\u2013max), so maps are comparable across images; a " +
      "per-image scale would make every image look anomalous." }));
    const kept = visibleRows().map(function (r) { return r.id; });
    const domainIds = domainDatasets().map(function (d) { return d.id; });
    const groups = DATA.gallery.filter(function (g) {
      return kept.indexOf(g.row_id) >= 0 && domainIds.indexOf(g.dataset) >= 0;
    });
    if (!groups.length) {
      box.appendChild(el("p", { class: "empty", text: "No saved anomaly maps. Runs that save " +
        "overlays list them in the result field \u201csamples\u201d; the build copies them here." }));
      return;
    }
    groups.forEach(function (g) {
      const d = datasetById(g.dataset);
      const section = el("section", { class: "gallery-group" }, [
        el("h3", { text: g.method + " \u00b7 " + (d ? d.title : g.dataset) }),
        el("p", { class: "detail", text: g.protocol + " \u00b7 " + g.config_hash +
          (g.seed !== undefined && g.seed !== null ? " \u00b7 seed " + g.seed : "") }),
        g.scale ? el("p", { class: "detail gallery-scale", text: "colour scale " +
          g.scale.low.toPrecision(3) + " \u2013 " + g.scale.high.toPrecision(3) +
          " (this dataset's scores)" }) : null]);
      const grid = el("div", { class: "gallery-grid" });
      g.images.forEach(function (img) {
        grid.appendChild(el("figure", { class: "thumb" }, [
          el("a", { href: img.src, target: "_blank" }, [
            el("img", { src: img.src, alt: g.method + " " + img.caption, loading: "lazy" })]),
          el("figcaption", { text: img.caption })]));
      });
      section.appendChild(grid);
      box.appendChild(section);
    });
  }

  /* ---------- page ---------- */
  function renderSkipped() {
    const box = $("skipped");
    clear(box);
    if (!DATA.skipped.length) { box.hidden = true; return; }
    box.hidden = false;
    box.appendChild(el("strong", { text: DATA.skipped.length + " result file(s) skipped:" }));
    const ul = el("ul");
    DATA.skipped.forEach(function (s) { ul.appendChild(el("li", { text: s })); });
    box.appendChild(ul);
  }
  function renderFooter() {
    const sources = [];
    DATA.rows.forEach(function (r) {
      if (r.kind === "reported" && sources.indexOf(r.detail) < 0) sources.push(r.detail);
    });
    const nRep = DATA.rows.filter(function (r) { return r.kind === "reported"; }).length;
    $("footer-text").textContent = "Built by zsbench " + DATA.zsbench_version + ". " + nRep +
      " reported rows (" + sources.join("; ") + ") and " + (DATA.rows.length - nRep) +
      " reproduced rows. Values in percent; PRO of published tables is the legacy 200-threshold " +
      "AUPRO.";
  }
  function render() {
    renderControls();
    VIEWS.forEach(function (v) { $("view-" + v).hidden = v !== state.view; });
    if (state.view === "table") renderTable();
    else if (state.view === "compare") renderCompare();
    else if (state.view === "datasets") renderDatasets();
    else renderGallery();
    writeHash();
  }

  readHash();
  initFilters();
  renderSkipped();
  renderFooter();
  render();
  document.body.setAttribute("data-ready", "true");
}
