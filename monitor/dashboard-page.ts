// The dashboard: one self-contained HTML page (no CDN, no build step) whose script fetches
// /api/dashboard and draws every chart as hand-written SVG, then refreshes itself. It lives in a
// TypeScript string so `tsc` ships it with the rest; its script avoids backticks and "${" for that
// reason. Data is put on the page with textContent and SVG attributes only, never as HTML.

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>streamserve monitor</title>
<link rel="icon" href="data:,">
<style>
  :root { --bg: #f6f7f9; --card: #fff; --ink: #1f2430; --muted: #6b7280; --grid: #e5e7eb;
          --ok: #2f9e44; --warning: #e8a400; --alert: #d6336c; --skipped: #adb5bd;
          --ref: #4c6ef5; --cur: #f76707; --c1: #4c6ef5; --c2: #f76707; --c3: #2f9e44; --c4: #ae3ec9; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: var(--bg); }
  header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 16px; padding: 14px 24px; background: #1f2430; color: #fff; }
  header h1 { font-size: 18px; margin: 0; font-weight: 600; }
  header .meta { color: #c9ced8; font-size: 13px; }
  header .pill { padding: 2px 10px; border-radius: 10px; font-size: 12px; font-weight: 600; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; padding: 16px 24px 32px; }
  section { background: var(--card); border-radius: 8px; padding: 12px 16px 8px; box-shadow: 0 1px 2px rgba(0,0,0,.06); min-width: 0; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 15px; margin: 0 0 2px; }
  .sub { color: var(--muted); font-size: 12px; margin: 0 0 6px; }
  svg { width: 100%; height: auto; display: block; }
  svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
  svg .title { fill: var(--ink); font-weight: 600; }
  svg .label { fill: var(--ink); }
  .axis line, .grid line { stroke: var(--grid); }
  .empty { color: var(--muted); padding: 24px 0; text-align: center; }
  .legend { display: flex; flex-wrap: wrap; gap: 12px; font-size: 12px; color: var(--muted); margin: 2px 0 6px; }
  .legend span::before { content: ""; display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; background: var(--c); vertical-align: -1px; }
  table { border-collapse: collapse; width: 100%; font-size: 11px; margin: 6px 0; }
  th, td { text-align: right; padding: 3px 4px; border-bottom: 1px solid var(--grid); white-space: nowrap; }
  th { white-space: normal; font-weight: 600; }
  .experiment { overflow-x: auto; }
  th:first-child, td:first-child { text-align: left; }
  .verdict-ok { color: var(--ok); } .verdict-warning { color: var(--warning); } .verdict-alert { color: var(--alert); font-weight: 600; } .verdict-skipped { color: var(--skipped); }
  .note { color: var(--alert); font-size: 12px; margin: 4px 0; }
  .note.warning { color: #9a6b00; }
  #error { display: none; margin: 16px 24px 0; padding: 10px 14px; border-radius: 6px; background: #fff0f3; color: var(--alert); }
  ul.alerts { list-style: none; padding: 0; margin: 0; font-size: 12px; }
  ul.alerts li { padding: 4px 0; border-bottom: 1px solid var(--grid); }
  ul.alerts time { color: var(--muted); margin-right: 8px; }
</style>
</head>
<body>
<header>
  <h1>streamserve monitor</h1>
  <span class="meta" id="model"></span>
  <span class="meta" id="summary"></span>
  <span class="meta" id="updated"></span>
</header>
<div id="error" role="alert"></div>
<main>
  <section class="wide" id="timeline"><h2>Model versions</h2><p class="sub">Production version over time; promotions, rollbacks and other registry events.</p><div class="chart"></div></section>
  <section id="traffic"><h2>Requests</h2><p class="sub">Answered requests per minute.</p><div class="chart"></div></section>
  <section id="latency"><h2>Latency</h2><p class="sub">Server latency percentiles per minute (ms).</p><div class="chart"></div></section>
  <section id="drift"><h2>Drift per feature</h2><p class="sub"></p><div class="chart"></div></section>
  <section id="distributions"><h2>Distributions behind the worst drift</h2><p class="sub">Share of values per reference-quantile bin (or category): training reference against served traffic.</p><div class="chart"></div></section>
  <section id="quality"><h2>Quality from feedback</h2><p class="sub"></p><div class="chart"></div></section>
  <section id="ab"><h2>A/B experiments</h2><p class="sub"></p><div class="chart"></div></section>
  <section class="wide" id="alerts"><h2>Recent alerts</h2><div class="chart"></div></section>
</main>
<script>
"use strict";
var SVG = "http://www.w3.org/2000/svg";
var PALETTE = ["var(--c1)", "var(--c2)", "var(--c3)", "var(--c4)"];
var params = new URLSearchParams(location.search);
var REFRESH_S = Math.max(5, Number(params.get("refresh")) || 30);

function el(tag, attrs, text) {
  var e = document.createElementNS(SVG, tag);
  for (var k in attrs || {}) if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function html(tag, attrs, text) {
  var e = document.createElement(tag);
  for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
// Charts are drawn at the width of their box, so 11 px text stays 11 px on any screen.
function widthOf(box) { return Math.max(360, Math.round(box.clientWidth || 640)); }
function finite(v) { return typeof v === "number" && isFinite(v); }
function fmt(v, digits) {
  if (!finite(v)) return "–";
  if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(1);
  if (Math.abs(v) >= 1e4) return v.toFixed(0);
  return v.toFixed(digits === undefined ? 3 : digits);
}
function pct(v) { return finite(v) ? (v * 100).toFixed(1) + " %" : "–"; }
function scale(d0, d1, r0, r1) {
  if (d1 === d0) { d0 -= 1; d1 += 1; }
  return function (v) { return r0 + (v - d0) / (d1 - d0) * (r1 - r0); };
}
function ticks(min, max, count) {
  if (!(max > min)) return [min];
  var step = Math.pow(10, Math.floor(Math.log10((max - min) / count)));
  var err = (max - min) / count / step;
  step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
  var out = [];
  for (var t = Math.ceil(min / step) * step; t <= max + step * 1e-9; t += step) out.push(Math.round(t / step) * step);
  return out;
}
function timeLabel(ms, span) {
  var d = new Date(ms);
  var hm = String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  return span > 36 * 3600e3 ? (d.getMonth() + 1) + "/" + d.getDate() + " " + hm : hm;
}
function emptyNote(box, text) { box.replaceChildren(html("div", { class: "empty" }, text)); }
function legend(box, items) {
  var l = html("div", { class: "legend" });
  items.forEach(function (it) { var s = html("span", {}, it.name); s.style.setProperty("--c", it.color); l.append(s); });
  box.append(l);
}

// A time-series chart: lines (with points), optional horizontal threshold lines and event markers.
function timeChart(box, opts) {
  var W = widthOf(box), H = opts.height || 220, m = { l: 48, r: 16, t: 12, b: 28 };
  var xs = [], ys = [];
  opts.series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p.x); ys.push(p.y); }); });
  (opts.markers || []).forEach(function (mk) { xs.push(mk.x); if (finite(mk.y)) ys.push(mk.y); });
  (opts.thresholds || []).forEach(function (t) { ys.push(t.y); });
  if (!xs.length) return emptyNote(box, opts.empty || "No data yet.");
  var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
  if (x0 === x1) { x0 -= 30 * 60e3; x1 += 30 * 60e3; }
  var y0 = opts.yMin !== undefined ? opts.yMin : Math.min(0, Math.min.apply(null, ys));
  var y1 = opts.yMax !== undefined ? opts.yMax : Math.max.apply(null, ys.concat([y0 + 1e-9])) * 1.08;
  var x = scale(x0, x1, m.l, W - m.r), y = scale(y0, y1, H - m.b, m.t);
  var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": opts.label || "" });
  var grid = el("g", { class: "grid" });
  ticks(y0, y1, 4).forEach(function (t) {
    grid.append(el("line", { x1: m.l, x2: W - m.r, y1: y(t), y2: y(t) }));
    svg.append(el("text", { x: m.l - 6, y: y(t) + 4, "text-anchor": "end" }, opts.yFormat ? opts.yFormat(t) : String(+t.toFixed(6))));
  });
  svg.prepend(grid);
  var tx = ticks(x0, x1, 6);
  var stepMs = tx.length > 1 ? tx[1] - tx[0] : 1;
  var niceMs = [60e3, 5 * 60e3, 15 * 60e3, 30 * 60e3, 3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3, 86400e3];
  var step = niceMs.find(function (s) { return s >= stepMs; }) || 86400e3;
  for (var t = Math.ceil(x0 / step) * step; t <= x1; t += step) {
    svg.append(el("text", { x: x(t), y: H - 8, "text-anchor": "middle" }, timeLabel(t, x1 - x0)));
  }
  (opts.thresholds || []).forEach(function (th) {
    svg.append(el("line", { class: "threshold", x1: m.l, x2: W - m.r, y1: y(th.y), y2: y(th.y), stroke: th.color, "stroke-dasharray": "5 4" }));
    svg.append(el("text", { x: W - m.r, y: y(th.y) - 4, "text-anchor": "end", fill: th.color }, th.label));
  });
  opts.series.forEach(function (s, i) {
    var color = s.color || PALETTE[i % PALETTE.length];
    var pts = s.points.filter(function (p) { return finite(p.y); }).sort(function (a, b) { return a.x - b.x; });
    if (!pts.length) return;
    var d = "";
    pts.forEach(function (p, j) {
      if (s.step && j > 0) d += "H" + x(p.x).toFixed(1) + "V" + y(p.y).toFixed(1);
      else d += (j ? "L" : "M") + x(p.x).toFixed(1) + "," + y(p.y).toFixed(1);
    });
    if (s.step && opts.extendTo) d += "H" + x(Math.max(opts.extendTo, pts[pts.length - 1].x)).toFixed(1);
    svg.append(el("path", { class: "line", d: d, fill: "none", stroke: color, "stroke-width": 2, "data-series": s.name }));
    if (pts.length <= 60) pts.forEach(function (p) {
      var c = el("circle", { class: "point", cx: x(p.x), cy: y(p.y), r: 2.5, fill: color });
      c.append(el("title", {}, s.name + ": " + fmt(p.y) + " at " + new Date(p.x).toLocaleString()));
      svg.append(c);
    });
  });
  (opts.markers || []).forEach(function (mk) {
    var g = el("g", { class: "marker", "data-kind": mk.kind, transform: "translate(" + x(mk.x).toFixed(1) + "," + y(mk.y === undefined ? y0 : mk.y).toFixed(1) + ")" });
    g.append(el("circle", { r: 5, fill: mk.color, stroke: "#fff", "stroke-width": 1.5 }));
    g.append(el("title", {}, mk.title));
    svg.append(g);
  });
  box.append(svg);
}

// Horizontal bars with labels, a value note and vertical threshold lines.
function barChart(box, items, opts) {
  if (!items.length) return emptyNote(box, opts.empty);
  var W = widthOf(box), rowH = 26, m = { l: 170, r: 190, t: 20, b: 24 }, H = m.t + m.b + items.length * rowH;
  var max = Math.max.apply(null, items.map(function (i) { return finite(i.value) ? i.value : 0; }).concat(opts.thresholds.map(function (t) { return t.x * 1.2; })));
  var x = scale(0, max, m.l, W - m.r);
  var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": opts.label });
  ticks(0, max, 5).forEach(function (t) {
    svg.append(el("line", { x1: x(t), x2: x(t), y1: m.t, y2: H - m.b, stroke: "var(--grid)" }));
    svg.append(el("text", { x: x(t), y: H - 8, "text-anchor": "middle" }, String(+t.toFixed(4))));
  });
  items.forEach(function (it, i) {
    var top = m.t + i * rowH;
    svg.append(el("text", { class: "label", x: m.l - 8, y: top + rowH / 2 + 4, "text-anchor": "end" }, it.label));
    var w = finite(it.value) ? Math.max(1, x(it.value) - m.l) : 0;
    var bar = el("rect", { class: "bar", x: m.l, y: top + 5, width: w, height: rowH - 10, rx: 2, fill: "var(--" + it.verdict + ")", "data-feature": it.label, "data-verdict": it.verdict });
    bar.append(el("title", {}, it.title));
    svg.append(bar);
    svg.append(el("text", { x: W - m.r + 8, y: top + rowH / 2 + 4, class: "verdict-" + it.verdict }, it.note));
  });
  opts.thresholds.forEach(function (t, i) {
    svg.append(el("line", { class: "threshold", x1: x(t.x), x2: x(t.x), y1: m.t, y2: H - m.b, stroke: t.color, "stroke-dasharray": "5 4", "stroke-width": 1.5 }));
    // First label left of its line, the next right of it: close thresholds keep readable labels.
    svg.append(el("text", { x: x(t.x) + (i % 2 ? 4 : -4), y: m.t - 6, "text-anchor": i % 2 ? "start" : "end", fill: t.color }, t.label));
  });
  box.append(svg);
}

// Grouped vertical bars: reference against current share per bin or category.
function distributionChart(box, title, dist) {
  var W = widthOf(box), H = 220, m = { l: 44, r: 12, t: 22, b: 64 };
  var n = dist.labels.length;
  var max = Math.max.apply(null, dist.reference.concat(dist.current).filter(finite).concat([1e-9]));
  var y = scale(0, max * 1.1, H - m.b, m.t);
  var band = (W - m.l - m.r) / n;
  var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title });
  svg.append(el("text", { class: "title", x: m.l, y: 13 }, title));
  ticks(0, max * 1.1, 4).forEach(function (t) {
    svg.append(el("line", { x1: m.l, x2: W - m.r, y1: y(t), y2: y(t), stroke: "var(--grid)" }));
    svg.append(el("text", { x: m.l - 6, y: y(t) + 4, "text-anchor": "end" }, (t * 100).toFixed(0) + "%"));
  });
  dist.labels.forEach(function (label, i) {
    var x0 = m.l + i * band, bw = Math.max(1, band * 0.38);
    [["reference", "var(--ref)"], ["current", "var(--cur)"]].forEach(function (s, k) {
      var v = dist[s[0]][i];
      var r = el("rect", { class: "dist-bar", "data-sample": s[0], x: x0 + band * 0.1 + k * bw, y: y(v), width: bw, height: Math.max(0, H - m.b - y(v)), fill: s[1] });
      r.append(el("title", {}, s[0] + " " + label + ": " + pct(v)));
      svg.append(r);
    });
    var t = el("text", { x: x0 + band / 2, y: H - m.b + 14, "text-anchor": n > 6 ? "end" : "middle" }, label.length > 18 ? label.slice(0, 17) + "…" : label);
    if (n > 6) t.setAttribute("transform", "rotate(-30 " + (x0 + band / 2) + " " + (H - m.b + 14) + ")");
    svg.append(t);
  });
  box.append(svg);
}

// Point estimates with confidence intervals on a shared axis (A/B conversion rates, lifts).
function intervalChart(box, items, opts) {
  var W = widthOf(box), rowH = 24, m = { l: 150, r: 150, t: 20, b: 24 }, H = m.t + m.b + items.length * rowH;
  var vals = [];
  items.forEach(function (i) { [i.value, i.lower, i.upper].forEach(function (v) { if (finite(v)) vals.push(v); }); });
  if (opts.zero) vals.push(0);
  if (!vals.length) return;
  var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals), pad = (hi - lo) * 0.1 || 0.01;
  var x = scale(lo - pad, hi + pad, m.l, W - m.r);
  var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": opts.title });
  svg.append(el("text", { class: "title", x: 4, y: 13 }, opts.title));
  ticks(lo - pad, hi + pad, 5).forEach(function (t) {
    svg.append(el("line", { x1: x(t), x2: x(t), y1: m.t, y2: H - m.b, stroke: "var(--grid)" }));
    svg.append(el("text", { x: x(t), y: H - 8, "text-anchor": "middle" }, opts.format(t)));
  });
  if (opts.zero) svg.append(el("line", { x1: x(0), x2: x(0), y1: m.t, y2: H - m.b, stroke: "var(--muted)" }));
  items.forEach(function (it, i) {
    var cy = m.t + i * rowH + rowH / 2;
    svg.append(el("text", { class: "label", x: m.l - 8, y: cy + 4, "text-anchor": "end" }, it.label));
    if (finite(it.lower) && finite(it.upper)) svg.append(el("line", { class: "ci", x1: x(it.lower), x2: x(it.upper), y1: cy, y2: cy, stroke: it.color, "stroke-width": 3, "stroke-linecap": "round", "data-variant": it.label }));
    if (finite(it.value)) {
      var c = el("circle", { class: "estimate", cx: x(it.value), cy: cy, r: 5, fill: it.color });
      c.append(el("title", {}, it.label + ": " + opts.format(it.value) + " [" + opts.format(it.lower) + ", " + opts.format(it.upper) + "]"));
      svg.append(c);
    }
    svg.append(el("text", { x: W - m.r + 8, y: cy + 4 }, opts.format(it.value) + "  [" + opts.format(it.lower) + ", " + opts.format(it.upper) + "]"));
  });
  box.append(svg);
}

function drawTimeline(data) {
  var box = document.querySelector("#timeline .chart");
  box.replaceChildren();
  var events = data.timeline.map(function (e) { return Object.assign({}, e, { x: Date.parse(e.time) }); });
  var moves = events.filter(function (e) { return e.alias === "production" && e.to; });
  var colors = { promote: "var(--ok)", rollback: "var(--alert)", publish: "var(--muted)", reject: "var(--warning)", load_failed: "var(--warning)" };
  var markers = events.map(function (e) {
    var v = Number(e.to || e.from);
    return { x: e.x, y: finite(v) ? v : undefined, kind: e.kind, color: colors[e.kind] || "var(--c4)",
      title: e.kind + (e.alias ? " " + e.alias : "") + (e.from ? " from " + e.from : "") + (e.to ? " to " + e.to : "") + " by " + e.actor + (e.reason ? " (" + e.reason + ")" : "") + ", " + new Date(e.x).toLocaleString() };
  });
  var versions = events.map(function (e) { return Number(e.to || e.from); }).filter(finite);
  var minVersion = versions.length ? Math.min.apply(null, versions) : 0, maxVersion = versions.length ? Math.max.apply(null, versions) : 1;
  legend(box, [{ name: "production version", color: "var(--c1)" }, { name: "promote", color: "var(--ok)" }, { name: "rollback", color: "var(--alert)" }, { name: "publish", color: "var(--muted)" }, { name: "reject / load failed", color: "var(--warning)" }]);
  timeChart(box, { label: "model versions", height: 180, series: [{ name: "production", step: true, points: moves.map(function (e) { return { x: e.x, y: Number(e.to) }; }) }],
    markers: markers, extendTo: Date.parse(data.generatedAt), yMin: Math.max(0, minVersion - 0.5), yMax: maxVersion + 0.5,
    yFormat: function (t) { return Number.isInteger(t) ? "v" + t : ""; },
    empty: "No registry events in ClickHouse yet." });
}

function drawTraffic(data) {
  var t = data.traffic.map(function (r) { return Object.assign({}, r, { x: Date.parse(r.minute) }); });
  var box = document.querySelector("#traffic .chart");
  box.replaceChildren();
  timeChart(box, { label: "requests per minute", series: [{ name: "requests/min", points: t.map(function (r) { return { x: r.x, y: r.requests }; }) }], empty: "No requests logged in this period." });
  var lbox = document.querySelector("#latency .chart");
  lbox.replaceChildren();
  if (t.length) legend(lbox, [{ name: "p50", color: "var(--c1)" }, { name: "p95", color: "var(--c2)" }, { name: "p99", color: "var(--c4)" }]);
  timeChart(lbox, { label: "latency percentiles", series: [
    { name: "p50", color: "var(--c1)", points: t.map(function (r) { return { x: r.x, y: r.p50 }; }) },
    { name: "p95", color: "var(--c2)", points: t.map(function (r) { return { x: r.x, y: r.p95 }; }) },
    { name: "p99", color: "var(--c4)", points: t.map(function (r) { return { x: r.x, y: r.p99 }; }) }], empty: "No requests logged in this period." });
}

var RANK = { skipped: 0, ok: 1, warning: 2, alert: 3 };
function drawDrift(data) {
  var box = document.querySelector("#drift .chart");
  box.replaceChildren();
  var th = data.thresholds;
  var byFeature = {};
  data.drift.forEach(function (r) {
    var key = r.kind === "prediction_drift" ? "score (prediction)" : r.feature;
    var f = byFeature[key] || (byFeature[key] = { label: key, verdict: "skipped", version: r.version });
    f[r.statistic] = r;
    if (RANK[r.verdict] > RANK[f.verdict]) f.verdict = r.verdict;
  });
  var items = Object.keys(byFeature).map(function (k) {
    var f = byFeature[k], test = f.ks || f.chi2, psi = f.psi || {};
    var note = test ? (f.ks ? "KS " + fmt(test.value) : "χ² " + fmt(test.value, 1)) + ", p " + fmt(test.pValue) : "";
    if (f.non_finite && f.non_finite.value > 0) note += ", NaN " + pct(f.non_finite.value);
    if (f.verdict === "skipped") note = "not judged (too few values)";
    return { label: f.label, value: psi.value, verdict: f.verdict, note: note,
      title: f.label + ": PSI " + fmt(psi.value) + (test ? "; " + note : "") + "; " + (psi.currentN || 0) + " served values against " + (psi.referenceN || 0) };
  }).sort(function (a, b) { return (RANK[b.verdict] - RANK[a.verdict]) || ((b.value || 0) - (a.value || 0)); });
  var version = data.drift.length ? data.drift[0].version : "";
  document.querySelector("#drift .sub").textContent = data.drift.length
    ? "PSI of the last hour against the training reference of version " + version + " (" + new Date(data.drift[0].time).toLocaleString() + "); KS or χ² p-values corrected for " + items.length + " tests, alert below " + th.alpha + "."
    : "";
  barChart(box, items, { label: "PSI per feature", empty: data.driftNote || "No drift check has run yet.",
    thresholds: [{ x: th.psiWarning, label: "warning " + th.psiWarning, color: "var(--warning)" }, { x: th.psiAlert, label: "alert " + th.psiAlert, color: "var(--alert)" }] });
}

function drawDistributions(data) {
  var box = document.querySelector("#distributions .chart");
  box.replaceChildren();
  if (!data.distributions.length) return emptyNote(box, "No drift check has run yet.");
  legend(box, [{ name: "training reference", color: "var(--ref)" }, { name: "served (last hour)", color: "var(--cur)" }]);
  data.distributions.forEach(function (d) {
    distributionChart(box, (d.kind === "prediction_drift" ? "predicted score" : d.feature) + " — PSI " + fmt(d.psi) + " (" + d.verdict + ")", d.distribution);
  });
}

function drawQuality(data) {
  var box = document.querySelector("#quality .chart");
  box.replaceChildren();
  var groups = {};
  data.quality.forEach(function (r) {
    var k = "v" + r.version + (r.variant === "all" ? "" : " · " + r.variant);
    (groups[k] = groups[k] || []).push({ x: Date.parse(r.hour), y: r.auc, verdict: r.verdict });
  });
  var series = Object.keys(groups).sort().map(function (k, i) { return { name: k, color: PALETTE[i % PALETTE.length], points: groups[k] }; });
  document.querySelector("#quality .sub").textContent = "Hourly AUC of the served scores against clicks, per version and variant; alert below " + data.thresholds.aucFloor + ".";
  if (series.length) legend(box, series);
  timeChart(box, { label: "AUC per hour", series: series, yMin: 0.4, yMax: 1, thresholds: [{ y: data.thresholds.aucFloor, label: "floor " + data.thresholds.aucFloor, color: "var(--alert)" }],
    empty: "No hour with feedback has been evaluated yet." });
}

function wilson(x, n) {
  if (!(n > 0)) return [NaN, NaN];
  var z = 1.959964, p = x / n, d = 1 + z * z / n, c = (p + z * z / (2 * n)) / d, h = z * Math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d;
  return [c - h, c + h];
}

function drawAb(data) {
  var box = document.querySelector("#ab .chart");
  box.replaceChildren();
  var byExp = {};
  data.ab.forEach(function (r) { (byExp[r.experiment] = byExp[r.experiment] || []).push(r); });
  var names = Object.keys(byExp).sort();
  document.querySelector("#ab .sub").textContent = names.length ? "Conversion per user with 95 % Wilson intervals; lift against control with the 95 % delta-method interval." : "";
  if (!names.length) return emptyNote(box, "No experiment has been analysed yet.");
  names.forEach(function (name) {
    var rows = byExp[name];
    var wrap = html("div", { class: "experiment", "data-experiment": name });
    box.append(wrap);
    intervalChart(wrap, rows.map(function (r, i) {
      var ci = wilson(r.conversions, r.users);
      return { label: r.variant + (r.control ? " (control)" : ""), value: r.conversionRate, lower: ci[0], upper: ci[1], color: PALETTE[i % PALETTE.length] };
    }), { title: name + ": conversion rate", format: pct });
    var treat = rows.filter(function (r) { return !r.control; });
    intervalChart(wrap, treat.map(function (r, i) {
      return { label: r.variant, value: r.lift, lower: r.liftLower, upper: r.liftUpper, color: PALETTE[(i + 1) % PALETTE.length] };
    }), { title: name + ": lift over control", format: pct, zero: true });
    var table = html("table");
    var head = html("tr");
    ["variant", "users", "exposures", "conv.", "rate", "revenue/user", "lift", "p", "p revenue"].forEach(function (h) { head.append(html("th", {}, h)); });
    table.append(head);
    rows.forEach(function (r) {
      var tr = html("tr");
      [r.variant + (r.control ? " (control)" : ""), String(r.users), String(r.exposures), String(r.conversions), pct(r.conversionRate), fmt(r.avgRevenue, 2),
        r.control ? "" : pct(r.lift), r.control ? "" : fmt(r.pValue), r.control ? "" : fmt(r.revenuePValue)].forEach(function (c) { tr.append(html("td", {}, c)); });
      table.append(tr);
    });
    wrap.append(table);
    var note = rows[0].note;
    if (note) wrap.append(html("p", { class: "note" + (rows[0].verdict === "alert" ? "" : " warning") }, note));
  });
}

function drawAlerts(data) {
  var box = document.querySelector("#alerts .chart");
  box.replaceChildren();
  if (!data.alerts.length) return emptyNote(box, "No alerts so far.");
  var ul = html("ul", { class: "alerts" });
  data.alerts.forEach(function (a) {
    var li = html("li");
    li.append(html("time", {}, new Date(a.time).toLocaleString()));
    li.append(html("span", { class: "verdict-" + (a.status === "resolved" ? "ok" : a.severity) }, a.status === "resolved" ? "resolved " : a.severity + " "));
    li.append(document.createTextNode(a.message));
    ul.append(li);
  });
  box.append(ul);
}

function drawHeader(data) {
  document.getElementById("model").textContent = "model " + data.model + (data.production ? " · production v" + data.production : "");
  // One count per condition: a feature (worst of its statistics), a version and variant's latest hour.
  var worstOf = {}, latest = {};
  data.drift.forEach(function (r) { var k = r.kind + r.feature; if (!worstOf[k] || RANK[r.verdict] > RANK[worstOf[k]]) worstOf[k] = r.verdict; });
  data.quality.forEach(function (r) { var k = "q" + r.version + r.variant; if (!latest[k] || latest[k].hour < r.hour) latest[k] = r; });
  Object.keys(latest).forEach(function (k) { worstOf[k] = latest[k].verdict; });
  var firing = {};
  Object.keys(worstOf).forEach(function (k) { var v = worstOf[k]; if (v === "alert" || v === "warning") firing[v] = (firing[v] || 0) + 1; });
  var s = document.getElementById("summary");
  s.replaceChildren();
  [["alert", "var(--alert)"], ["warning", "var(--warning)"]].forEach(function (v) {
    if (!firing[v[0]]) return;
    var p = html("span", { class: "pill" }, firing[v[0]] + " " + v[0] + (firing[v[0]] > 1 ? "s" : ""));
    p.style.background = v[1];
    s.append(p, document.createTextNode(" "));
  });
  document.getElementById("updated").textContent = "updated " + new Date(data.generatedAt).toLocaleTimeString() + ", refreshes every " + REFRESH_S + " s";
}

function render(data) {
  drawHeader(data);
  drawTimeline(data);
  drawTraffic(data);
  drawDrift(data);
  drawDistributions(data);
  drawQuality(data);
  drawAb(data);
  drawAlerts(data);
  document.body.setAttribute("data-rendered", data.generatedAt);
}

function load() {
  var q = new URLSearchParams();
  if (params.get("model")) q.set("model", params.get("model"));
  if (params.get("hours")) q.set("hours", params.get("hours"));
  return fetch("api/dashboard?" + q.toString(), { cache: "no-store" })
    .then(function (res) { return res.json().then(function (body) { if (!res.ok) throw new Error(body.error || res.statusText); return body; }); })
    .then(function (data) { document.getElementById("error").style.display = "none"; render(data); })
    .catch(function (err) { var e = document.getElementById("error"); e.textContent = "Could not load the monitoring data: " + err.message; e.style.display = "block"; })
    .finally(function () { setTimeout(load, REFRESH_S * 1000); });
}
load();
</script>
</body>
</html>
`;
