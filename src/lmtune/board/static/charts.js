// charts.js: the board's plotly.js charts (curves, confusion heatmap, Pareto, sweep charts).
//
// plotly.js is loaded by index.html from /static/plotly.min.js (the installed plotly wheel's
// copy: nothing comes from the internet). Each function draws into a given <div>.

import { el } from "./dom.js";

const FONT = { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12, color: "#24292f" };
const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

function layout(extra = {}) {
  return {
    font: FONT,
    margin: { l: 56, r: 16, t: 32, b: 44 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#fff",
    hovermode: "closest",
    legend: { orientation: "h", y: -0.2 },
    ...extra,
    xaxis: { gridcolor: "#eaeef2", zeroline: false, ...(extra.xaxis || {}) },
    yaxis: { gridcolor: "#eaeef2", zeroline: false, ...(extra.yaxis || {}) },
  };
}

/** A chart container: <div class="chart" id=...>. */
export function chartDiv(id, extraClass = "") {
  return el("div", { class: `chart ${extraClass}`.trim(), id });
}

function draw(div, traces, chartLayout) {
  if (!window.Plotly) {
    div.textContent = "plotly.js did not load (/static/plotly.min.js)";
    return Promise.resolve(div);
  }
  return window.Plotly.react(div, traces, chartLayout, CONFIG);
}

/** Lines of {name: {x, y}} series against the training step. */
/** `shown(name)` false: the series starts hidden (a click on its legend entry shows it). */
export function lineChart(div, series, { title = "", yTitle = "", logY = false, mode = "lines+markers", shown = null } = {}) {
  const traces = Object.entries(series).map(([name, s]) => ({
    type: "scatter",
    mode,
    name,
    x: s.x,
    y: s.y,
    visible: shown && !shown(name) ? "legendonly" : true,
    marker: { size: 5 },
    line: { width: 2 },
    hovertemplate: `${name}<br>step %{x}: %{y:.4g}<extra></extra>`,
  }));
  return draw(
    div,
    traces,
    layout({
      title: { text: title, x: 0.02, font: { size: 13 } },
      xaxis: { title: { text: "step" } },
      yaxis: { title: { text: yTitle }, type: logY ? "log" : "linear" },
      showlegend: traces.length > 1,
      legend: { orientation: "v", x: 1.02, xanchor: "left", y: 1, yanchor: "top" },
    }),
  );
}

/** The confusion matrix: gold labels on y (top to bottom), predicted on x; counts in cells. */
export function confusionChart(div, labels, matrix, { title = "" } = {}) {
  const names = labels.map(String);
  const trace = {
    type: "heatmap",
    x: names,
    y: names,
    z: matrix,
    colorscale: [
      [0, "#f6f8fa"],
      [1, "#0969da"],
    ],
    showscale: false,
    xgap: 2,
    ygap: 2,
    texttemplate: "%{z}",
    hovertemplate: "gold %{y}<br>predicted %{x}<br>%{z} examples<extra></extra>",
  };
  const size = Math.max(260, Math.min(560, 90 + names.length * 48));
  return draw(
    div,
    [trace],
    layout({
      title: { text: title, x: 0.02, font: { size: 13 } },
      height: size,
      width: size + 80,
      margin: { l: 110, r: 16, t: 36, b: 90 },
      xaxis: { title: { text: "predicted" }, type: "category", side: "bottom", gridcolor: "rgba(0,0,0,0)" },
      yaxis: { title: { text: "gold" }, type: "category", autorange: "reversed", gridcolor: "rgba(0,0,0,0)" },
    }),
  );
}

/** Scatter of the main metric against an x (log for parameter counts), with the Pareto front. */
export function paretoChart(div, points, { xKey, xTitle, metric, greaterIsBetter = true, logX = false }) {
  const usable = points.filter((p) => typeof p[xKey] === "number" && typeof p.metric === "number");
  const front = paretoFront(usable, xKey, greaterIsBetter);
  const traces = [
    {
      type: "scatter",
      mode: "markers+text",
      name: "runs",
      x: usable.map((p) => p[xKey]),
      y: usable.map((p) => p.metric),
      text: usable.map((p) => p.name),
      textposition: "top center",
      cliponaxis: false,
      marker: { size: 10, color: "#0969da" },
      hovertemplate: `%{text}<br>${xTitle}: %{x:.4g}<br>${metric}: %{y:.4g}<extra></extra>`,
    },
    {
      type: "scatter",
      mode: "lines",
      name: "Pareto front",
      x: front.map((p) => p[xKey]),
      y: front.map((p) => p.metric),
      line: { dash: "dot", color: "#8250df", shape: "hv" },
      hoverinfo: "skip",
    },
  ];
  return draw(
    div,
    traces,
    layout({
      xaxis: { title: { text: xTitle }, type: logX ? "log" : "linear" },
      yaxis: { title: { text: metric } },
      showlegend: true,
    }),
  );
}

/** Runs no other run beats on both axes (lower x, better metric), sorted by x. */
export function paretoFront(points, xKey, greaterIsBetter = true) {
  const sign = greaterIsBetter ? 1 : -1;
  const sorted = [...points].sort((a, b) => a[xKey] - b[xKey] || sign * (b.metric - a.metric));
  const front = [];
  let best = -Infinity;
  for (const p of sorted) {
    if (sign * p.metric > best) {
      front.push(p);
      best = sign * p.metric;
    }
  }
  return front;
}

/** A sweep's optimisation history: each trial's value and the best so far. */
export function historyChart(div, history, metric) {
  const traces = [
    {
      type: "scatter",
      mode: "markers",
      name: "trial value",
      x: history.x,
      y: history.y,
      marker: { size: 8, color: "#0969da" },
      hovertemplate: "trial %{x}: %{y:.4g}<extra></extra>",
    },
    {
      type: "scatter",
      mode: "lines",
      name: "best so far",
      x: history.x,
      y: history.best,
      line: { shape: "hv", color: "#1a7f37", width: 2 },
      hovertemplate: "best after trial %{x}: %{y:.4g}<extra></extra>",
    },
  ];
  const xaxis = { title: { text: "trial" }, dtick: history.x.length <= 20 ? 1 : null };
  return draw(div, traces, layout({ xaxis, yaxis: { title: { text: metric || "value" } } }));
}

/** Horizontal bars of parameter importances, largest on top. */
export function importanceChart(div, importances) {
  const entries = Object.entries(importances).sort((a, b) => a[1] - b[1]);
  const trace = {
    type: "bar",
    orientation: "h",
    x: entries.map((e) => e[1]),
    y: entries.map((e) => e[0]),
    marker: { color: "#8250df" },
    hovertemplate: "%{y}: %{x:.3f}<extra></extra>",
  };
  return draw(
    div,
    [trace],
    layout({
      height: Math.max(180, 100 + entries.length * 28),
      margin: { l: 180, r: 16, t: 16, b: 40 },
      xaxis: { title: { text: "importance" } },
      yaxis: { type: "category" },
    }),
  );
}

/** Forget a chart's plotly state before its div leaves the page. */
export function purge(root) {
  if (!window.Plotly || !root) return;
  for (const div of root.querySelectorAll(".js-plotly-plot")) window.Plotly.purge(div);
}
