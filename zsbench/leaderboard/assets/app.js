/* zsbench leaderboard: page state, views and events. Reads window.ZSBENCH_DATA (data.js). */
"use strict";

(function () {
  const DATA = window.ZSBENCH_DATA;
  const T = ZS.table, C = ZS.charts;
  const DOMAIN_LABELS = { industrial: "Industrial", medical: "Medical", synthetic: "Synthetic",
    other: "Other" };
  const VIEWS = ["table", "compare", "datasets", "gallery"];

  const state = {
    view: "table", metric: DATA.metrics[0].id, domain: "all", kind: "all", trained: "any",
    search: "", sort: "mean", dir: "desc", dataset: null,
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
    const q = state.search.trim().toLowerCase();
    return DATA.rows.filter(function (r) {
      if (state.kind !== "all" && r.kind !== state.kind) return false;
      if (q && (r.label + " " + r.detail).toLowerCase().indexOf(q) < 0) return false;
      return true;
    });
  }
  function domainDatasets() {
    return DATA.datasets.filter(function (d) {
      return state.domain === "all" || d.domain === state.domain;
    });
  }
  /** Datasets with at least one value among the given rows for the metric. */
  function columnsWithValues(rows, metric) {
    return domainDatasets().filter(function (d) {
      return rows.some(function (r) { return T.visibleValue(r, metric, d.id, state.trained) !== null; });
    });
  }

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
  function provenanceTitle(row, dataset, cell) {
    return row.label + " \u00b7 " + dataset.title + " = " + cell.value.toFixed(2) + "\n" +
      provenanceLines(cell).map(function (l) { return l[0] + ": " + l[1]; }).join("\n");
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
    provenanceLines(cell).concat(extra || []).forEach(function (l) {
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

  function renderTable() {
    const metric = state.metric;
    const candidates = visibleRows();
    const columns = columnsWithValues(candidates, metric);
    const ids = columns.map(function (d) { return d.id; });
    const rows = candidates.filter(function (r) {
      return ids.some(function (d) { return T.visibleValue(r, metric, d, state.trained) !== null; });
    });
    /* means and ranks use real datasets when any are shown (mirrors site_data.summary_datasets) */
    const realIds = columns.filter(function (d) { return d.domain !== "synthetic"; })
      .map(function (d) { return d.id; });
    const summaryIds = realIds.length ? realIds : ids;
    const summary = T.summarize(rows, metric, summaryIds, state.trained);
    const common = T.commonDatasets(rows, metric, summaryIds, state.trained);
    const unranked = rows.filter(function (r) { return !summary[r.id].ranked; }).length;
    const sorted = T.sortRows(rows, state.sort, state.dir, metric, summary, state.trained);
    const table = clear($("leaderboard"));
    $("table-caption").textContent = metricLabel(metric) + " (%) \u2014 " + sorted.length +
      " rows \u00d7 " + columns.length + " datasets. Mean and mean rank over the " +
      common.length + " datasets every ranked row has (" + common.map(function (d) {
        return datasetById(d).title; }).join(", ") + ")" + (unranked ? "; the " + unranked +
      " rows lacking any of them are not ranked: their mean (grey) is over their own n " +
      "datasets and not comparable" : "") + ". \u2013 = not reported. Click a header to sort, " +
      "a value for its provenance.";
    $("table-caption").setAttribute("data-common", common.join(","));
    if (!sorted.length) {
      $("table-empty").hidden = false;
      $("table-empty").textContent = "No values for " + metricLabel(metric) + " under these " +
        "filters." + (metric === "aupro" ? " Published tables report only the legacy AUPRO; " +
        "exact AUPRO values come from reproduced runs." : "");
      clear($("heatmap"));
      return;
    }
    $("table-empty").hidden = true;
    /* best and second best per column */
    const best = {};
    ids.forEach(function (d) {
      const vals = sorted.map(function (r) { return T.visibleValue(r, metric, d, state.trained); })
        .filter(function (v) { return v !== null; }).sort(function (a, b) { return b - a; });
      best[d] = [vals[0], vals.find(function (v) { return v < vals[0]; })];
    });
    /* header: group row + dataset row */
    const groups = [];
    columns.forEach(function (d) {
      const last = groups[groups.length - 1];
      if (last && last.domain === d.domain) last.n += 1;
      else groups.push({ domain: d.domain, n: 1 });
    });
    const thead = el("thead");
    const groupRow = el("tr", { class: "group-row" }, [
      sortHeader("Method", "method", { rowspan: 2, class: "sortable method-col" })]);
    groups.forEach(function (g) {
      groupRow.appendChild(el("th", { colspan: g.n, class: "group group-" + g.domain,
        scope: "colgroup", text: DOMAIN_LABELS[g.domain] || g.domain }));
    });
    groupRow.appendChild(el("th", { colspan: 3, class: "group group-summary", text: "Summary" }));
    thead.appendChild(groupRow);
    const headRow = el("tr", { class: "dataset-row" });
    columns.forEach(function (d, i) {
      const first = i === 0 || columns[i - 1].domain !== d.domain;
      headRow.appendChild(sortHeader(d.title, d.id, { class: "sortable num" +
        (first ? " group-start" : ""), "data-dataset": d.id }));
    });
    headRow.appendChild(sortHeader("Mean", "mean", { class: "sortable num group-start" }));
    headRow.appendChild(sortHeader("Mean rank", "rank", { class: "sortable num" }));
    headRow.appendChild(sortHeader("n", "count", { class: "sortable num",
      title: "Datasets with a value (of " + columns.length + ")" }));
    thead.appendChild(headRow);
    table.appendChild(thead);
    const tbody = el("tbody");
    sorted.forEach(function (r) {
      const tr = el("tr", { "data-row-id": r.id, "data-kind": r.kind, class: "row-" + r.kind +
        (summary[r.id].ranked ? "" : " row-unranked") });
      tr.appendChild(el("th", { scope: "row", class: "method-col" }, [
        el("span", { class: "method-name", text: r.label }),
        el("span", { class: "badge badge-" + r.kind, text: r.kind }),
        el("span", { class: "detail", text: r.detail })]));
      columns.forEach(function (d, i) {
        const first = i === 0 || columns[i - 1].domain !== d.domain;
        const cell = T.cellOf(r, metric, d.id);
        const v = T.visibleValue(r, metric, d.id, state.trained);
        const cls = ["num"];
        if (first) cls.push("group-start");
        if (v === null) {
          cls.push("na");
          tr.appendChild(el("td", { class: cls.join(" "), "data-dataset": d.id, text: "\u2013",
            title: cell ? "hidden by the training-data filter" : "not reported" }));
          return;
        }
        if (v === best[d.id][0]) cls.push("best");
        else if (v === best[d.id][1]) cls.push("second");
        tr.appendChild(el("td", { class: cls.join(" "), "data-dataset": d.id, "data-value": v,
          title: provenanceTitle(r, d, cell), tabindex: "0",
          onclick: function () { showProvenance(r, d, cell); },
          onkeydown: function (ev) { if (ev.key === "Enter") showProvenance(r, d, cell); },
        }, [T.format(v)]));
      });
      const s = summary[r.id];
      const why = s.ranked ? null : "not ranked: lacks " + common.filter(function (d) {
        return T.visibleValue(r, metric, d, state.trained) === null;
      }).map(function (d) { return datasetById(d).title; }).join(", ") +
        (s.count ? "; mean over its own " + s.count + " datasets" : "");
      tr.appendChild(el("td", { class: "num summary group-start" + (s.ranked ? "" : " unranked"),
        "data-col": "mean", "data-exact": s.mean, "data-ranked": s.ranked ? "true" : "false",
        title: why, text: T.format(s.mean) }));
      tr.appendChild(el("td", { class: "num summary" + (s.ranked ? "" : " unranked"),
        "data-col": "rank", "data-exact": s.mean_rank, title: why,
        text: T.format(s.mean_rank, 2) }));
      tr.appendChild(el("td", { class: "num summary count", "data-col": "count",
        text: s.count + "/" + columns.length }));
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    /* heat map in the table's order */
    const heat = clear($("heatmap"));
    heat.appendChild(el("h2", { text: "Heat map \u2014 " + metricLabel(metric) + " (%)" }));
    heat.appendChild(el("p", { class: "hint", text: "Rows in the table's order; \u2605 marks " +
      "reproduced rows; grey = not reported." }));
    heat.appendChild(C.heatmap({
      rows: sorted, columns: columns, title: "heat map of " + metricLabel(metric),
      label: displayName,
      value: function (r, d) { return T.visibleValue(r, metric, d.id, state.trained); },
    }));
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
    rowsIds.forEach(function (id) {
      const r = rowById[id];
      const sources = [];
      comps.forEach(function (c) {
        const source = c.reported_source + " (" + c.reported_protocol + ")";
        if (c.reproduced_row === id && sources.indexOf(source) < 0) sources.push(source);
      });
      const tr = el("tr", { "data-row-id": id }, [el("th", { class: "method-col", scope: "row" }, [
        el("span", { class: "method-name", text: r.label }),
        el("span", { class: "detail", text: r.detail }),
        el("span", { class: "detail", text: "vs " + sources.join("; ") })])]);
      const diffs = [];
      columns.forEach(function (d) {
        const c = comps.find(function (x) { return x.reproduced_row === id && x.dataset === d.id; });
        if (!c) { tr.appendChild(el("td", { class: "num na", text: "\u2013" })); return; }
        diffs.push(c.difference);
        const strength = Math.min(1, Math.abs(c.difference) / 5);
        const colour = c.difference >= 0 ? "rgba(26, 152, 80," : "rgba(215, 48, 39,";
        tr.appendChild(el("td", {
          class: "num diff-cell " + (c.difference >= 0 ? "diff-pos" : "diff-neg"),
          style: "background:" + colour + (0.1 + 0.45 * strength).toFixed(3) + ")",
          "data-dataset": d.id, "data-difference": c.difference,
          title: "reproduced " + c.reproduced.toFixed(2) + " (" + c.protocol + ", trained on " +
            (c.trained_on.join("+") || "none") + ") \u2212 reported " + c.reported.toFixed(2) +
            " (" + c.reported_source + ", " + c.reported_protocol + ")",
          onclick: function () {
            showProvenance(r, d, r.cells[metric][d.id], [["compared with", c.reported_source +
              ": " + c.reported.toFixed(2)], ["difference", T.formatDifference(c.difference)]]);
          },
        }, [el("span", { class: "diff", text: T.formatDifference(c.difference) }),
          el("span", { class: "pair", text: T.format(c.reproduced) + " vs " + T.format(c.reported) })]));
      });
      const mean = diffs.reduce(function (s, x) { return s + x; }, 0) / diffs.length;
      tr.appendChild(el("td", { class: "num summary", text: T.formatDifference(mean) }));
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    box.appendChild(el("div", { class: "table-wrap" }, [table]));
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
    const items = visibleRows().map(function (r) {
      const v = T.visibleValue(r, metric, d.id, state.trained);
      return v === null ? null : { label: displayName(r), value: v, kind: r.kind };
    }).filter(Boolean);
    if (items.length) {
      const lowest = Math.min.apply(null, items.map(function (i) { return i.value; }));
      box.appendChild(el("figure", { class: "chart-box", id: "dataset-bars" }, [
        C.bars({ items: items, min: Math.max(0, Math.floor(lowest / 10) * 10 - 10),
          title: "bar chart of " + d.title }),
        el("figcaption", { text: "Dataset-level " + metricLabel(metric) + " (%), best first. " +
          "Blue: reported; orange: reproduced." })]));
    } else {
      box.appendChild(el("p", { class: "empty", text: "No dataset-level " + metricLabel(metric) +
        " for " + d.title + "." }));
    }
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
        tr.appendChild(el("td", { class: "num" + (has ? "" : " na"), "data-category": c,
          text: T.format(has ? v : null) }));
      });
      const mean = vals.length ? vals.reduce(function (s, x) { return s + x; }, 0) / vals.length : null;
      tr.appendChild(el("td", { class: "num summary group-start", text: T.format(mean) }));
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    box.appendChild(el("div", { class: "table-wrap" }, [table]));
  }

  /* ---------- gallery ---------- */
  function renderGallery() {
    const box = clear($("gallery"));
    box.appendChild(el("h2", { text: "Anomaly-map gallery" }));
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
        el("p", { class: "detail", text: g.protocol + " \u00b7 " + g.config_hash })]);
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
})();
