// ridepulse's built-in dashboard: polls /api/snapshot every 2 s and redraws in place.
// No framework, no chart library: tables are DOM, charts are hand-built SVG.
"use strict";

const POLL_MS = 2000;
const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#ff7b72",
  "#79c0ff", "#56d364", "#e3b341", "#db61a2", "#bc8cff", "#ffa198"];
let updates = 0;
let lastGood = null;

const $ = (id) => document.getElementById(id);
const fmt = (v, digits) => (v === null || v === undefined || Number.isNaN(v)) ? "–"
  : Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
const clock = (unix, seconds) => new Date(unix * 1000).toISOString().slice(11, seconds ? 19 : 16);

function colorOf(city, cities) {
  return COLORS[cities.indexOf(city) % COLORS.length];
}

// Every value from data (city names above all: they come from Kafka events) reaches the DOM
// as text or as an attribute value, never as markup: elements are built with createElementNS
// and filled with textContent/setAttribute, and no innerHTML is used anywhere.
const SVG_NS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = String(text);
  return node;
}

// A line chart: series = Map(name -> [[unixSeconds, value], ...]).
function lineChart(el, series, cities, opts = {}) {
  const W = 560, H = 220, L = 44, R = 96, T = 10, B = 22;
  const points = [...series.values()].flat();
  if (!points.length) {
    const empty = svgEl("svg", { viewBox: `0 0 ${W} ${H}` });
    empty.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
    el.replaceChildren(empty);
    return;
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 60);
  let y1 = Math.max(...ys, opts.threshold || 0) * 1.1 || 1;
  const x = (t) => L + (t - x0) / (x1 - x0) * (W - L - R);
  const y = (v) => H - B - v / y1 * (H - T - B);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  for (let i = 0; i <= 4; i++) {
    const v = y1 * i / 4;
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#2a3038" }));
    svg.appendChild(svgEl("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, fmt(v, v < 10 ? 1 : 0)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = x0 + (x1 - x0) * i / 4;
    // Minutes, or seconds too when the chart spans under five minutes (no repeated labels).
    svg.appendChild(svgEl("text", { x: x(t), y: H - 6, "text-anchor": "middle" }, clock(t, x1 - x0 < 300)));
  }
  if (opts.threshold) {
    svg.appendChild(svgEl("line", {
      class: "threshold", x1: L, x2: W - R, y1: y(opts.threshold), y2: y(opts.threshold),
      stroke: "#f85149", "stroke-dasharray": "6 4", "stroke-width": 2,
    }));
    const label = opts.thresholdUnit === undefined ? `${opts.threshold} %` : `${opts.threshold}${opts.thresholdUnit}`;
    svg.appendChild(svgEl("text", { x: W - R + 4, y: y(opts.threshold) + 3, style: "fill:#f85149" }, label));
  }
  let legendY = T + 8;
  for (const [name, pts] of series) {
    const color = opts.colors ? opts.colors[name] : colorOf(name, cities);
    const sorted = [...pts].sort((a, b) => a[0] - b[0]);
    const d = sorted.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(svgEl("path", { d, fill: "none", stroke: color, "stroke-width": 1.8, "data-series": name }));
    if (sorted.length === 1) svg.appendChild(svgEl("circle", { cx: x(sorted[0][0]), cy: y(sorted[0][1]), r: 2.5, fill: color }));
    if (legendY < H - B) {
      svg.appendChild(svgEl("text", { x: W - R + 6, y: legendY, style: `fill:${color}` }, name));
      legendY += 12;
    }
  }
  el.replaceChildren(svg);
}

function seriesOf(rows, timeKey, valueOf) {
  const series = new Map();
  for (const r of rows) {
    const v = valueOf(r);
    if (v === null || v === undefined || Number.isNaN(v)) continue;
    if (!series.has(r.city)) series.set(r.city, []);
    series.get(r.city).push([r[timeKey], v]);
  }
  return series;
}

function render(s) {
  const threshold = s.threshold_pct;
  $("threshold").textContent = threshold;
  // Freshness, prominently.
  const f = $("freshness");
  const sec = s.freshness_seconds;
  f.dataset.seconds = sec === null ? "" : String(sec);
  f.querySelector(".value").textContent = sec === null ? "no events" : `${fmt(sec, 1)} s`;
  f.className = "freshness " + (sec === null ? "unknown" : sec <= 15 ? "good" : sec <= 60 ? "slow" : "stale");
  // Lag and watermark delay next to it, from the job processes' /metrics (text only).
  const p = s.pipeline || {};
  const lag = p.lag_messages ?? null;
  const delay = p.watermark_delay_seconds ?? null;
  $("pipeline").dataset.lag = lag === null ? "" : String(lag);
  $("pipeline").dataset.delay = delay === null ? "" : String(delay);
  $("lag").textContent = lag === null ? "no job answering" : `${lag} messages`;
  $("watermark-delay").textContent = delay === null ? "–" : `${fmt(delay, 0)} s`;

  // The latest window (by end) of each city: its cancellation rate decides the highlight.
  const latest = new Map();
  const nowS = s.server_now_ms / 1000;
  for (const w of s.windows) {
    if (w.window_end > nowS) continue; // still open in wall-clock time
    const prev = latest.get(w.city);
    if (!prev || w.window_end > prev.window_end) latest.set(w.city, w);
  }
  const cities = [...new Set([...s.cities.map((c) => c.city), ...s.windows.map((w) => w.city)])].sort();

  // The city table of the last hour.
  const body = $("cities").querySelector("tbody");
  body.replaceChildren();
  for (const c of s.cities) {
    const w = latest.get(c.city);
    const cancelPct = w && w.requests > 0 ? 100 * w.cancellations / w.requests : null;
    const tr = document.createElement("tr");
    tr.dataset.city = c.city;
    if (cancelPct !== null && cancelPct > threshold) tr.className = "over-threshold";
    const cells = [
      ["city", c.city], ["requests", fmt(c.requests, 0)], ["completions", fmt(c.completions, 0)],
      ["cancellations", fmt(c.cancellations, 0)], ["completion_rate_pct", fmt(c.completion_rate_pct, 1)],
      ["avg_fare", fmt(c.avg_fare, 2)], ["unique_riders", fmt(c.unique_riders, 0)], ["events", fmt(c.events, 0)],
      ["cancellation_rate_pct", cancelPct === null ? "–" : fmt(cancelPct, 1)],
    ];
    for (const [col, text] of cells) {
      const td = document.createElement("td");
      td.dataset.col = col;
      td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }

  // Charts.
  lineChart($("chart-requests"), seriesOf(s.requests_per_minute, "minute", (r) => r.requests), cities);
  const closed = s.windows.filter((w) => w.requests > 0);
  lineChart($("chart-cancel"), seriesOf(closed, "window_end", (w) => 100 * w.cancellations / w.requests), cities, { threshold });
  lineChart($("chart-complete"), seriesOf(closed, "window_end", (w) => 100 * w.completions / w.requests), cities);
  lineChart($("chart-fare"), seriesOf(s.windows, "window_end", (w) => w.avg_fare), cities);
  lineChart($("chart-riders"), seriesOf(s.windows, "window_end", (w) => w.unique_riders), cities);
  const late = new Map([["late events", []], ["dead letters", []]]);
  for (const r of s.late_dead) {
    late.get("late events").push([r.minute, r.late_events]);
    late.get("dead letters").push([r.minute, r.dead_letters]);
  }
  lineChart($("chart-late"), late, [], { colors: { "late events": "#d29922", "dead letters": "#f85149" } });
  renderSupply(s);
}

// A city is under pressure when its riders outnumber its available drivers by more than the
// threshold, or when riders wait and no driver is available at all (pressure is null then).
function underPressure(row, threshold) {
  if (row.pressure === null || row.pressure === undefined) return row.available_drivers === 0 && row.waiting_riders > 0;
  return row.pressure > threshold;
}

// SPEC §5: where riders wait now (the server orders the cities, under pressure first), and
// available drivers, waiting riders and pressure per city over time.
function renderSupply(s) {
  const threshold = s.pressure_threshold;
  $("pressure-threshold").textContent = threshold;
  const body = $("supply").querySelector("tbody");
  body.replaceChildren();
  if (!s.supply_now.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 8;
    td.textContent = "no supply rows yet (city_supply has nothing in the last 15 minutes)";
    tr.appendChild(td);
    body.appendChild(tr);
  }
  for (const r of s.supply_now) {
    const tr = document.createElement("tr");
    tr.dataset.city = r.city;
    if (underPressure(r, threshold)) tr.className = "over-threshold";
    const cells = [
      ["city", r.city], ["minute", String(r.minute).slice(11, 16)],
      ["waiting_riders", fmt(r.waiting_riders, 0)], ["available_drivers", fmt(r.available_drivers, 0)],
      ["on_trip_drivers", fmt(r.on_trip_drivers, 0)], ["rides_in_progress", fmt(r.rides_in_progress, 0)],
      ["requests", fmt(r.requests, 0)], ["pressure", fmt(r.pressure, 2)],
    ];
    for (const [col, text] of cells) {
      const td = document.createElement("td");
      td.dataset.col = col;
      td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  const cities = [...new Set(s.supply.map((r) => r.city))].sort();
  lineChart($("chart-available"), seriesOf(s.supply, "minute", (r) => r.available_drivers), cities);
  lineChart($("chart-waiting"), seriesOf(s.supply, "minute", (r) => r.waiting_riders), cities);
  lineChart($("chart-pressure"), seriesOf(s.supply, "minute", (r) => r.pressure), cities,
    { threshold, thresholdUnit: "" });
}

async function poll() {
  try {
    const response = await fetch("/api/snapshot", { cache: "no-store" });
    const s = await response.json();
    if (!s.ok) throw new Error(s.error || `HTTP ${response.status}`);
    render(s);
    lastGood = new Date();
    updates += 1;
    $("notice").hidden = true;
    const u = $("updated");
    u.dataset.updates = String(updates);
    u.textContent = `updated ${lastGood.toISOString().slice(11, 19)} UTC · every ${POLL_MS / 1000} s`;
  } catch (error) {
    const n = $("notice");
    n.hidden = false;
    n.textContent = `ClickHouse is not answering (${error.message}). ` +
      (lastGood ? `Showing the numbers from ${lastGood.toISOString().slice(11, 19)} UTC; retrying every ${POLL_MS / 1000} s.` : "Retrying.");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
