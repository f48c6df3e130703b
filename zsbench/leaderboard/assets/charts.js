/* zsbench leaderboard: inline SVG charts (heat map, horizontal bar chart). No libraries. */
"use strict";

window.ZS = window.ZS || {};

/* a block, not a function: strict-mode function declarations stay local to it */
{
  const SVG_NS = "http://www.w3.org/2000/svg";

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* Sequential colour scale (light yellow -> green -> deep blue), t in [0, 1]. */
  const STOPS = [[255, 247, 214], [199, 233, 180], [65, 182, 196], [34, 94, 168], [8, 48, 107]];

  function scaleColour(t) {
    const x = Math.max(0, Math.min(1, t)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(x));
    const f = x - i;
    const c = STOPS[i].map(function (v, k) { return Math.round(v + f * (STOPS[i + 1][k] - v)); });
    return { fill: "rgb(" + c.join(",") + ")", dark: t > 0.55 };
  }

  /** Heat map: rows x columns of values (null = NA, drawn hatched-grey with a dash). */
  function heatmap(opts) {
    const rows = opts.rows, columns = opts.columns, value = opts.value;
    const label = opts.label || function (r) { return r.label; };
    const longest = rows.reduce(function (m, r) { return Math.max(m, label(r).length); }, 8);
    const cellW = 58, cellH = 24, left = Math.min(420, 24 + longest * 6.6), top = 96;
    const width = left + Math.max(columns.length * cellW, 200) + 90;  /* room for the legend */
    const height = top + rows.length * cellH + 34;
    const svg = svgEl("svg", {
      width: width, height: height, viewBox: "0 0 " + width + " " + height,
      role: "img", "aria-label": opts.title || "heat map", class: "chart heatmap",
    });
    const all = [];
    rows.forEach(function (r) {
      columns.forEach(function (c) { const v = value(r, c); if (v !== null) all.push(v); });
    });
    const lo = all.length ? Math.min.apply(null, all) : 0;
    const hi = all.length ? Math.max.apply(null, all) : 1;
    columns.forEach(function (c, j) {
      const x = left + j * cellW + cellW / 2;
      svg.appendChild(svgEl("text", {
        x: x, y: top - 8, class: "axis-label", "text-anchor": "start",
        transform: "rotate(-40 " + x + " " + (top - 8) + ")",
      }, c.title));
    });
    rows.forEach(function (r, i) {
      const y = top + i * cellH;
      svg.appendChild(svgEl("text", {
        x: left - 8, y: y + cellH / 2 + 4, "text-anchor": "end", class: "axis-label",
      }, label(r) + (r.kind === "reproduced" ? " \u2605" : "")));
      columns.forEach(function (c, j) {
        const v = value(r, c);
        const x = left + j * cellW;
        const g = svgEl("g", { class: "heat-cell", "data-row-id": r.id, "data-dataset": c.id });
        if (v === null) {
          g.appendChild(svgEl("rect", { x: x + 1, y: y + 1, width: cellW - 2, height: cellH - 2,
            class: "heat-na" }));
          g.appendChild(svgEl("text", { x: x + cellW / 2, y: y + cellH / 2 + 4,
            "text-anchor": "middle", class: "heat-text" }, "\u2013"));
        } else {
          const colour = scaleColour(hi > lo ? (v - lo) / (hi - lo) : 0.5);
          g.appendChild(svgEl("rect", { x: x + 1, y: y + 1, width: cellW - 2, height: cellH - 2,
            fill: colour.fill, rx: 2 }));
          g.appendChild(svgEl("text", { x: x + cellW / 2, y: y + cellH / 2 + 4,
            "text-anchor": "middle", class: "heat-text" + (colour.dark ? " on-dark" : "") },
            v.toFixed(1)));
        }
        g.appendChild(svgEl("title", {}, label(r) + " \u00b7 " + c.title + ": " +
          (v === null ? "no value" : v.toFixed(2))));
        svg.appendChild(g);
      });
    });
    drawLegend(svg, left, top + rows.length * cellH + 12, lo, hi);
    return svg;
  }

  /** The colour-scale legend of the heat map: a 160 px ramp from lo to hi at (left, y). */
  function drawLegend(svg, left, y, lo, hi) {
    const lw = 160;
    for (let k = 0; k < 32; k += 1) {
      svg.appendChild(svgEl("rect", { x: left + k * lw / 32, y: y, width: lw / 32 + 0.5,
        height: 10, fill: scaleColour(k / 31).fill }));
    }
    svg.appendChild(svgEl("text", { x: left - 6, y: y + 9, "text-anchor": "end",
      class: "axis-label" }, lo.toFixed(1)));
    svg.appendChild(svgEl("text", { x: left + lw + 6, y: y + 9, class: "axis-label" },
      hi.toFixed(1)));
  }

  /** Horizontal bars, best first: items [{label, detail, value, kind}] with values in percent. */
  function bars(opts) {
    const items = opts.items.slice().sort(function (a, b) { return b.value - a.value; });
    const longest = items.reduce(function (m, it) { return Math.max(m, it.label.length); }, 8);
    const barH = 20, gap = 6, left = Math.min(420, 24 + longest * 6.6), right = 60;
    const plotW = 460, top = 10;
    const width = left + plotW + right;
    const height = top + items.length * (barH + gap) + 24;
    const svg = svgEl("svg", {
      width: width, height: height, viewBox: "0 0 " + width + " " + height,
      role: "img", "aria-label": opts.title || "bar chart", class: "chart bars",
    });
    const lo = opts.min !== undefined ? opts.min : 0, hi = 100;
    const xOf = function (v) { return left + (Math.max(lo, v) - lo) / (hi - lo) * plotW; };
    [lo, lo + (hi - lo) / 2, hi].forEach(function (t) {
      svg.appendChild(svgEl("line", { x1: xOf(t), x2: xOf(t), y1: top - 4,
        y2: height - 20, class: "grid" }));
      svg.appendChild(svgEl("text", { x: xOf(t), y: height - 6, "text-anchor": "middle",
        class: "axis-label" }, String(Math.round(t))));
    });
    items.forEach(function (it, i) {
      const y = top + i * (barH + gap);
      svg.appendChild(svgEl("text", { x: left - 8, y: y + barH / 2 + 4, "text-anchor": "end",
        class: "axis-label" }, it.label + (it.detail ? " (" + it.detail + ")" : "")));
      const bar = svgEl("rect", { x: left, y: y, width: Math.max(1, xOf(it.value) - left),
        height: barH, rx: 3, class: "bar bar-" + it.kind });
      bar.appendChild(svgEl("title", {}, it.label + ": " + it.value.toFixed(2) +
        (it.err ? " (" + it.err.label + ")" : "")));
      svg.appendChild(bar);
      if (it.err) svg.appendChild(errorBar(xOf, y + barH / 2, it.err));
      const end = it.err ? Math.max(it.value, it.err.high) : it.value;
      svg.appendChild(svgEl("text", { x: xOf(end) + 5, y: y + barH / 2 + 4,
        class: "bar-value" }, it.value.toFixed(1)));
    });
    return svg;
  }

  /** A horizontal error bar with caps at height y from err.low to err.high (err.kind "ci":
      bootstrap interval, "std": seed spread), titled err.label. */
  function errorBar(xOf, y, err) {
    const g = svgEl("g", { class: "err-bar err-" + err.kind });
    const x1 = xOf(err.low), x2 = xOf(err.high);
    g.appendChild(svgEl("line", { x1: x1, x2: x2, y1: y, y2: y }));
    [x1, x2].forEach(function (x) {
      g.appendChild(svgEl("line", { x1: x, x2: x, y1: y - 5, y2: y + 5 }));
    });
    g.appendChild(svgEl("title", {}, err.label));
    return g;
  }

  /** Log-scale x positions over [left, left + w]: values <= 0 (e.g. no trainable parameter)
      at a separate "0" slot left of the axis. Returns {x, ticks, hasZero}. */
  function logScale(values, left, w) {
    const pos = values.filter(function (v) { return v > 0; });
    const lo = Math.floor(Math.log10(pos.length ? Math.min.apply(null, pos) : 1));
    const top = pos.length ? Math.max.apply(null, pos) : 10;
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(top)));
    const hasZero = values.some(function (v) { return v <= 0; });
    const start = left + (hasZero ? 40 : 0), span = w - (hasZero ? 40 : 0);
    const x = function (v) {
      return v <= 0 ? left + 10 : start + (Math.log10(v) - lo) / (hi - lo) * span;
    };
    const ticks = [];
    for (let e = lo; e <= hi; e += 1) ticks.push(Math.pow(10, e));
    return { x: x, ticks: ticks, hasZero: hasZero };
  }

  function tickText(v) {
    if (v >= 1e9) return v / 1e9 + "G";
    if (v >= 1e6) return v / 1e6 + "M";
    if (v >= 1e3) return v / 1e3 + "k";
    return String(v);
  }

  /** Axes of the scatter: x ticks (log), y ticks, axis titles. */
  function scatterAxes(svg, box, scale, yOf, yTicks, opts) {
    const ticks = scale.ticks.map(function (t) { return [t, tickText(t)]; });
    if (scale.hasZero) ticks.unshift([0, "0"]);
    ticks.forEach(function (t) {
      const x = scale.x(t[0]);
      svg.appendChild(svgEl("line", { x1: x, x2: x, y1: box.top, y2: box.bottom, class: "grid" }));
      svg.appendChild(svgEl("text", { x: x, y: box.bottom + 16, "text-anchor": "middle",
        class: "axis-label" }, t[1]));
    });
    yTicks.forEach(function (t) {
      svg.appendChild(svgEl("line", { x1: box.left, x2: box.right, y1: yOf(t), y2: yOf(t),
        class: "grid" }));
      svg.appendChild(svgEl("text", { x: box.left - 6, y: yOf(t) + 4, "text-anchor": "end",
        class: "axis-label" }, t.toFixed(0)));
    });
    svg.appendChild(svgEl("text", { x: (box.left + box.right) / 2, y: box.bottom + 36,
      "text-anchor": "middle", class: "axis-title" }, opts.xLabel + " (log scale)"));
    svg.appendChild(svgEl("text", { x: 14, y: (box.top + box.bottom) / 2, "text-anchor": "middle",
      class: "axis-title", transform: "rotate(-90 14 " + (box.top + box.bottom) / 2 + ")" },
    opts.yLabel));
  }

  /** Scatter of points [{row_id, label, x, y, ranked}]: x on a log scale, y in percent; each
      point labelled by its method; unranked points (mean over their own datasets) hollow. */
  function scatter(opts) {
    const width = 900, height = 380;
    const box = { left: 60, right: width - 300, top: 16, bottom: height - 50 };
    const svg = svgEl("svg", { width: width, height: height, viewBox: "0 0 " + width + " " +
      height, role: "img", "aria-label": opts.title || "scatter", class: "chart scatter" });
    const scale = logScale(opts.points.map(function (p) { return p.x; }), box.left,
      box.right - box.left);
    const ys = opts.points.map(function (p) { return p.y; });
    const yLo = Math.max(0, Math.floor((Math.min.apply(null, ys) - 1) / 10) * 10);
    const yHi = Math.min(100, Math.ceil((Math.max.apply(null, ys) + 1) / 10) * 10);
    const top = Math.max(yLo + 10, yHi);
    const yOf = function (v) {
      return box.bottom - (v - yLo) / (top - yLo) * (box.bottom - box.top);
    };
    const yTicks = [yLo, (yLo + top) / 2, top];
    scatterAxes(svg, box, scale, yOf, yTicks, opts);
    opts.points.forEach(function (p) {
      const g = svgEl("g", { class: "scatter-point" + (p.ranked ? "" : " unranked"),
        "data-row-id": p.row_id });
      g.appendChild(svgEl("circle", { cx: scale.x(p.x), cy: yOf(p.y), r: 5 }));
      g.appendChild(svgEl("text", { x: scale.x(p.x) + 8, y: yOf(p.y) + 4, class: "point-label" },
        p.label));
      g.appendChild(svgEl("title", {}, p.label + ": " + p.y.toFixed(2) + " at " +
        opts.xLabel + " " + p.x.toPrecision(3) + (p.ranked ? "" : " (unranked: mean over " +
        p.count + " datasets)")));
      svg.appendChild(g);
    });
    return svg;
  }

  ZS.charts = { heatmap: heatmap, bars: bars, scaleColour: scaleColour, scatter: scatter };
}
