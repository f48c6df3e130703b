/* zsbench leaderboard: inline SVG charts (heat map, horizontal bar chart). No libraries. */
"use strict";

window.ZS = window.ZS || {};

ZS.charts = (function () {
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
    const width = left + columns.length * cellW + 90;
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
    /* legend */
    const ly = top + rows.length * cellH + 12, lw = 160;
    for (let k = 0; k < 32; k += 1) {
      svg.appendChild(svgEl("rect", { x: left + k * lw / 32, y: ly, width: lw / 32 + 0.5,
        height: 10, fill: scaleColour(k / 31).fill }));
    }
    svg.appendChild(svgEl("text", { x: left - 6, y: ly + 9, "text-anchor": "end",
      class: "axis-label" }, lo.toFixed(1)));
    svg.appendChild(svgEl("text", { x: left + lw + 6, y: ly + 9, class: "axis-label" },
      hi.toFixed(1)));
    return svg;
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
      bar.appendChild(svgEl("title", {}, it.label + ": " + it.value.toFixed(2)));
      svg.appendChild(bar);
      svg.appendChild(svgEl("text", { x: xOf(it.value) + 5, y: y + barH / 2 + 4,
        class: "bar-value" }, it.value.toFixed(1)));
    });
    return svg;
  }

  return { heatmap: heatmap, bars: bars, scaleColour: scaleColour };
})();
