// compare.js: the Compare page: runs side by side (#/compare?runs=A,B) or a `compare` / `sweep`
// output directory (#/compare?collection=P). Metrics with the best per column marked, curves
// overlaid, a Pareto chart, the config keys that differ; for sweeps the trials, the
// optimisation history and the parameter importances. Without parameters: a run picker.

import { api, query } from "./api.js";
import { chartDiv, historyChart, importanceChart, lineChart, paretoChart } from "./charts.js";
import { badge, display, el, html, link, section, table } from "./dom.js";

const PARETO_AXES = [
  ["trainable_params", "trainable parameters", true],
  ["train_time_s", "train time (s)", false],
  ["peak_rss_mb", "peak memory (MB)", false],
  ["size_mb", "saved size (MB)", false],
];

export async function render(params, ctx) {
  const collection = params.get("collection");
  const runs = (params.get("runs") || "").split(",").filter(Boolean);
  if (collection) return drawCollection(ctx, collection);
  if (runs.length) return drawComparison(ctx, await api(`/api/compare?${query({ runs })}`), "Compare");
  return picker(ctx);
}

async function picker(ctx) {
  const data = await api("/api/runs");
  const chosen = new Set();
  const go = el("button", { type: "button", class: "primary", id: "compare-go" }, "Compare");
  go.addEventListener("click", () => {
    if (chosen.size >= 2) window.location.hash = `#/compare?runs=${[...chosen].map(encodeURIComponent).join(",")}`;
  });
  const rows = data.runs.map((r) => {
    const box = el("input", { type: "checkbox", value: r.path });
    box.addEventListener("change", () => (box.checked ? chosen.add(r.path) : chosen.delete(r.path)));
    return el("li", {}, el("label", {}, box, " ", badge(r.status), " ", r.name, el("span", { class: "muted small" }, ` ${r.method || ""}`)));
  });
  const collections = (data.collections || []).map((c) =>
    el("li", {}, el("span", { class: "badge badge-kind" }, c.kind), " ", el("a", { href: link("compare", { collection: c.path }) }, c.name)),
  );
  ctx.root.append(
    el("div", { class: "page-head" }, el("h1", {}, "Compare")),
    section("Pick two or more runs", el("ul", { class: "collections picker" }, rows), go),
    collections.length ? section("Or open a compare / sweep directory", el("ul", { class: "collections" }, collections)) : null,
  );
}

async function drawCollection(ctx, path) {
  const detail = await api(`/api/collection?${query({ path })}`);
  drawComparison(ctx, detail.comparison, `${detail.kind === "sweep" ? "Sweep" : "Comparison"}: ${detail.name}`);
  if (detail.kind === "sweep") ctx.root.append(...sweepSections(detail));
  if (detail.markdown_html) ctx.root.append(section("Summary", html("div", { class: "markdown", id: "collection-summary" }, detail.markdown_html)));
}

function drawComparison(ctx, comparison, title) {
  const runs = comparison.runs || [];
  ctx.root.append(
    el("div", { class: "page-head" }, el("h1", {}, title), el("p", { class: "muted" }, `${runs.length} runs`)),
    section("Metrics", metricsTable(comparison)),
    section("Curves", el("div", { class: "chart-grid" }, chartDiv("compare-loss"), chartDiv("compare-metric"))),
    section("Pareto chart", paretoControls(comparison), chartDiv("pareto")),
    section("Config differences", configDiff(comparison)),
  );
  drawCurves(ctx.root, comparison);
  drawPareto(ctx.root, comparison, PARETO_AXES[0]);
}

function metricsTable(comparison) {
  const columns = comparison.columns || [];
  const header = ["run", "method", ...columns.map((c) => c.label)];
  const rows = comparison.runs.map((run) => [
    el("td", { class: "run-name" }, el("a", { href: link("run", { path: run.path }) }, run.name)),
    run.method,
    ...columns.map((c) => {
      const value = run.values?.[c.key];
      const best = c.best === run.path;
      return el("td", { class: `num ${best ? "best" : ""}`.trim(), title: best ? "best in this column" : null }, display(value));
    }),
  ]);
  return el("div", { class: "table-wrap" }, table(header, rows, { class: "data compare", id: "compare-table" }));
}

function drawCurves(root, comparison) {
  const names = Object.fromEntries(comparison.runs.map((r) => [r.path, r.name]));
  const metric = comparison.metric ? `eval_${comparison.metric}` : null;
  const loss = {};
  const main = {};
  for (const [path, curves] of Object.entries(comparison.curves || {})) {
    const series = curves.series || {};
    if (series.loss) loss[names[path] || path] = series.loss;
    if (metric && series[metric]) main[names[path] || path] = series[metric];
  }
  const lossDiv = root.querySelector("#compare-loss");
  const metricDiv = root.querySelector("#compare-metric");
  if (Object.keys(loss).length) lineChart(lossDiv, loss, { title: "training loss", mode: "lines" });
  else lossDiv.hidden = true;
  if (Object.keys(main).length) lineChart(metricDiv, main, { title: `validation ${comparison.metric}` });
  else metricDiv.hidden = true;
}

function paretoControls(comparison) {
  const select = el(
    "select",
    { id: "pareto-x" },
    PARETO_AXES.map(([key, label]) => el("option", { value: key }, label)),
  );
  select.addEventListener("change", () => {
    const axis = PARETO_AXES.find(([key]) => key === select.value);
    drawPareto(select.closest(".page"), comparison, axis);
  });
  return el("label", { class: "inline" }, `${comparison.metric || "metric"} against `, select);
}

function drawPareto(root, comparison, [xKey, xTitle, logX]) {
  const div = root.querySelector("#pareto");
  const column = (comparison.columns || []).find((c) => c.key.endsWith(`.${comparison.metric}`));
  paretoChart(div, comparison.pareto || [], {
    xKey,
    xTitle,
    metric: comparison.metric || "metric",
    greaterIsBetter: column?.greater_is_better !== false,
    logX,
  });
}

function configDiff(comparison) {
  const diff = comparison.config_diff || [];
  if (!diff.length) return el("p", { class: "muted" }, "The configs are the same (apart from output_dir).");
  const paths = comparison.runs.map((r) => r.path);
  const header = ["key", ...comparison.runs.map((r) => r.name)];
  const rows = diff.map((d) => [el("td", {}, el("code", {}, d.key)), ...paths.map((p) => display(d.values[p]))]);
  return el("div", { class: "table-wrap" }, table(header, rows, { class: "data diff", id: "config-diff" }));
}

function sweepSections(detail) {
  const keys = [...new Set(detail.trials.flatMap((t) => Object.keys(t.params || {})))];
  const rows = detail.trials.map((t) => [
    t.path ? el("td", {}, el("a", { href: link("run", { path: t.path }) }, String(t.number))) : t.number,
    badge(t.state),
    display(t.value),
    ...keys.map((k) => display(t.params?.[k])),
  ]);
  const history = chartDiv("sweep-history");
  const importances = chartDiv("sweep-importances", "fit");
  const sections = [
    section("Trials", table(["trial", "state", "value", ...keys], rows, { class: "data trials", id: "sweep-trials" })),
    section("Optimisation history", history),
    section(
      "Parameter importances",
      Object.keys(detail.importances || {}).length ? importances : el("p", { class: "muted" }, "Needs two completed trials whose parameters differ."),
    ),
  ];
  requestAnimationFrame(() => {
    historyChart(history, detail.history, detail.comparison?.metric);
    if (Object.keys(detail.importances || {}).length) importanceChart(importances, detail.importances);
  });
  return sections;
}

