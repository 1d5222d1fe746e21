// ridepulse's built-in dashboard: polls /api/snapshot every 2 s and redraws in place.
// No framework. Tables are DOM; charts are uPlot (vendored by scripts/vendor-uplot into
// vendor/uplot/ and served by the binary itself: no CDN).
"use strict";

const POLL_MS = 2000;
// Cities drawn by default on every chart: the busiest by events in the last hour. The others
// are listed in each legend, hidden until clicked.
const TOP_CITIES = 5;
// Twelve hues, none red (red is the thresholds' and the dead letters' colour).
const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#39c5cf",
  "#f0883e", "#c9d1d9", "#9be35f", "#bf8a5a", "#8a9cff", "#f2cc60"];
const GRID = "#2a3038", AXIS = "#8b96a5";
let updates = 0;
let lastGood = null;

const $ = (id) => document.getElementById(id);
const fmt = (v, digits) => (v === null || v === undefined || Number.isNaN(v)) ? "–"
  : Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
const clock = (unix, seconds) => new Date(unix * 1000).toISOString().slice(11, seconds ? 19 : 16);

// Every value from data (city names above all: they come from Kafka events) reaches the DOM
// as text, never as markup: tables are filled with textContent, and uPlot writes series
// labels and legend values with textContent too (the vendored build has no innerHTML).

// The page's cities, busiest first (events in the last hour, then the rest by name): one
// order, one colour per city and one default selection for every chart.
let cityRank = [];
// What the viewer chose by clicking a legend entry (city -> shown), kept across redraws and
// applied to every chart; cities not in it follow the default (the TOP_CITIES busiest).
const chosen = new Map();
const isShown = (city) => chosen.has(city) ? chosen.get(city) : cityRank.indexOf(city) < TOP_CITIES;
const colorOf = (city) => COLORS[Math.max(0, cityRank.indexOf(city)) % COLORS.length];

// The charts by element id: { plot, key, spec } (window.ridepulseCharts lets the browser test
// hover a known point and read the legend).
const charts = new Map();
window.ridepulseCharts = charts;
// True while the page itself (not a viewer's click) shows or hides series.
let applying = false;

// A legend click on a city shows or hides it on every chart of the page.
function onSetSeries(u, index, opts) {
  if (applying || index === null || opts.show === undefined) return;
  const entry = [...charts.values()].find((c) => c.plot === u);
  if (!entry || !entry.spec.cities) return;
  const city = u.series[index].label;
  if (!entry.spec.names.includes(city)) return;
  const show = u.series[index].show;
  chosen.set(city, show);
  applying = true;
  try {
    for (const other of charts.values()) {
      if (other.plot === u || !other.spec.cities) continue;
      const j = other.plot.series.findIndex((s, k) => k > 0 && s.label === city);
      if (j > 0 && other.plot.series[j].show !== show) other.plot.setSeries(j, { show });
    }
  } finally {
    applying = false;
  }
}

// A line chart of series = Map(name -> [[unixSeconds, value], ...]) as uPlot, updated in
// place when its series are the same as last time (so the hovered point and the legend
// choices stay), rebuilt when they change. opts: xLabel and yLabel (axis titles, saying
// what the time of a point is and the unit), xName (the time's name in the legend), digits
// (of the hovered values), threshold and thresholdLabel (a dashed red line, listed in the
// legend), colors (fixed colours for series that are not cities).
function lineChart(el, series, opts) {
  const cities = !opts.colors;
  const names = [...series.keys()];
  if (cities) names.sort((a, b) => rankOf(a) - rankOf(b));
  if (!names.some((n) => series.get(n).length)) {
    const old = charts.get(el.id);
    if (old) old.plot.destroy();
    charts.delete(el.id);
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = "no data yet";
    el.replaceChildren(empty);
    return;
  }
  const xs = [...new Set(names.flatMap((n) => series.get(n).map((p) => p[0])))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const data = [xs];
  for (const n of names) {
    const ys = new Array(xs.length).fill(null);
    for (const [x, y] of series.get(n)) ys[at.get(x)] = y;
    data.push(ys);
  }
  const hasThreshold = opts.threshold !== undefined && opts.threshold !== null;
  if (hasThreshold) data.push(xs.map(() => opts.threshold));
  const key = JSON.stringify([names, hasThreshold ? opts.threshold : null]);
  const width = Math.max(300, el.clientWidth);
  const old = charts.get(el.id);
  if (old && old.key === key) {
    applying = true;
    try {
      for (let i = 0; i < names.length; i++) {
        if (cities && old.plot.series[i + 1].show !== isShown(names[i])) old.plot.setSeries(i + 1, { show: isShown(names[i]) });
      }
    } finally {
      applying = false;
    }
    old.plot.setData(data);
    if (old.plot.width !== width) old.plot.setSize({ width, height: 220 });
    return;
  }
  if (old) old.plot.destroy();
  const value = (u, v) => fmt(v, opts.digits);
  const plot = new uPlot({
    width,
    height: 220,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    series: [
      { label: opts.xName, value: (u, v) => v === null || v === undefined ? "–" : `${clock(v)} UTC` },
      ...names.map((n) => ({
        label: n,
        stroke: cities ? colorOf(n) : opts.colors[n],
        width: 1.8,
        spanGaps: true,
        show: cities ? isShown(n) : true,
        value,
        points: { size: 5 },
      })),
      ...(hasThreshold ? [{
        label: "threshold", stroke: "#f85149", width: 2, dash: [6, 4], points: { show: false },
        value: () => opts.thresholdLabel,
      }] : []),
    ],
    axes: [
      {
        label: opts.xLabel, stroke: AXIS, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 },
        // 24-hour UTC, seconds too when the chart spans under five minutes.
        values: (u, splits) => splits.map((v) => clock(v, u.data[0][u.data[0].length - 1] - u.data[0][0] < 300)),
      },
      { label: opts.yLabel, stroke: AXIS, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 }, size: 56 },
    ],
    legend: { live: true },
    hooks: { setSeries: [onSetSeries] },
  }, data);
  el.replaceChildren(plot.root);
  charts.set(el.id, { plot, key, spec: { cities, names } });
}

function rankOf(city) {
  const i = cityRank.indexOf(city);
  return i < 0 ? cityRank.length : i;
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
  // The page's city order: by events in the last hour, then any other city by name.
  const busiest = [...s.cities].sort((a, b) => b.events - a.events || (a.city < b.city ? -1 : 1)).map((c) => c.city);
  const others = [...new Set([...s.windows, ...s.requests_per_minute, ...s.supply].map((r) => r.city))]
    .filter((c) => !busiest.includes(c)).sort();
  cityRank = [...busiest, ...others];

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

  // Charts. Window charts plot each 5-minute window at its end (so the newest point can be
  // up to 5 minutes after the newest event); per-minute charts at the minute's start.
  const windowEnd = { xLabel: "window end (UTC)", xName: "window end" };
  const minuteStart = { xLabel: "minute start (UTC)", xName: "minute start" };
  lineChart($("chart-requests"), seriesOf(s.requests_per_minute, "minute", (r) => r.requests),
    { ...minuteStart, yLabel: "requests per minute", digits: 0 });
  const closed = s.windows.filter((w) => w.requests > 0);
  lineChart($("chart-cancel"), seriesOf(closed, "window_end", (w) => 100 * w.cancellations / w.requests),
    { ...windowEnd, yLabel: "% of requests", digits: 1, threshold, thresholdLabel: `${threshold} %` });
  lineChart($("chart-complete"), seriesOf(closed, "window_end", (w) => 100 * w.completions / w.requests),
    { ...windowEnd, yLabel: "% of requests", digits: 1 });
  lineChart($("chart-fare"), seriesOf(s.windows, "window_end", (w) => w.avg_fare),
    { ...windowEnd, yLabel: "fare per ride", digits: 2 });
  lineChart($("chart-riders"), seriesOf(s.windows, "window_end", (w) => w.unique_riders),
    { ...windowEnd, yLabel: "riders per window", digits: 0 });
  const late = new Map([["late events", []], ["dead letters", []]]);
  for (const r of s.late_dead) {
    late.get("late events").push([r.minute, r.late_events]);
    late.get("dead letters").push([r.minute, r.dead_letters]);
  }
  lineChart($("chart-late"), late, { ...minuteStart, yLabel: "messages per minute", digits: 0,
    colors: { "late events": "#d29922", "dead letters": "#f85149" } });
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
  // Each row describes the state at its minute's end (SPEC §5): plotted at that instant.
  const minuteEnd = { xLabel: "minute end (UTC): the state at that instant", xName: "minute end" };
  const ended = s.supply.map((r) => ({ ...r, end: r.minute + 60 }));
  lineChart($("chart-available"), seriesOf(ended, "end", (r) => r.available_drivers),
    { ...minuteEnd, yLabel: "available drivers", digits: 0 });
  lineChart($("chart-waiting"), seriesOf(ended, "end", (r) => r.waiting_riders),
    { ...minuteEnd, yLabel: "waiting riders", digits: 0 });
  lineChart($("chart-pressure"), seriesOf(ended, "end", (r) => r.pressure),
    { ...minuteEnd, yLabel: "riders per driver", digits: 2, threshold, thresholdLabel: `${threshold}` });
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
