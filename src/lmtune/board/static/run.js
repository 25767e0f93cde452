// run.js: the Run page (#/run?path=P): one run's header, metrics, training curves, confusion
// matrices (a click lists that cell's examples), per-class tables, data report, generations,
// config, report, model card and downloads. Refreshes every 3 s while the run is running.

import { api, query, showError } from "./api.js";
import { chartDiv, confusionChart, lineChart, purge } from "./charts.js";
import {
  badge,
  display,
  el,
  fmtBytes,
  fmtDate,
  fmtNumber,
  html,
  kvTable,
  link,
  progressBar,
  replace,
  section,
  shortModel,
  table,
} from "./dom.js";

const state = { tab: "overview" };
const NOT_CURVES = /(runtime|per_second|_epoch$|^epoch$|^step$|^time_s$)/;

export async function render(params, ctx) {
  const path = params.get("path");
  if (!path) return picker(ctx);
  const nav = document.getElementById("nav-run");
  if (nav) nav.href = link("run", { path });
  const view = { path, ctx, stamp: null, body: el("div") };
  ctx.root.append(view.body);
  await ctx.poll(
    async () => {
      const detail = await api(`/api/run?${query({ path })}`);
      const stamp = JSON.stringify([detail.status, detail.updated, detail.progress]);
      if (stamp !== view.stamp) {
        view.stamp = stamp;
        draw(view, detail);
      }
      view.running = detail.status === "running";
    },
    () => (view.running ? 3000 : null),
  );
}

async function picker(ctx) {
  ctx.root.append(el("div", { class: "page-head" }, el("h1", {}, "Run")));
  const data = await api("/api/runs");
  const list = el(
    "ul",
    { class: "collections" },
    data.runs.map((r) => el("li", {}, badge(r.status), " ", el("a", { href: link("run", { path: r.path }) }, r.name), el("span", { class: "muted small" }, `  ${r.path}`))),
  );
  ctx.root.append(section("Pick a run", data.runs.length ? list : el("p", { class: "muted" }, "No runs yet.")));
}

function draw(view, detail) {
  const scroll = window.scrollY;
  purge(view.body);
  const tabs = [
    ["overview", "Overview", () => overview(view, detail)],
    ["data", "Data", () => dataTab(detail)],
    detail.generations?.length ? ["generations", "Generations", () => generationsTab(detail)] : null,
    ["config", "Config", () => configTab(detail)],
    ["report", "Report", () => markdownTab(detail.report_html, "No report.md yet.", "report")],
    ["card", "Model card", () => markdownTab(detail.model_card_html, "No model card yet.", "model-card")],
    ["files", "Files", () => filesTab(detail)],
  ].filter(Boolean);
  if (!tabs.some(([key]) => key === state.tab)) state.tab = "overview";
  const bar = el("div", { class: "tabs", role: "tablist" });
  const panels = el("div");
  for (const [key, label, build] of tabs) {
    const panel = el("div", { class: "tab-panel", dataset: { tab: key }, hidden: key !== state.tab });
    panels.append(panel);
    bar.append(
      el("button", { type: "button", class: `tab ${key === state.tab ? "active" : ""}`, dataset: { tab: key }, onclick: () => selectTab(bar, panels, key) }, label),
    );
    panel.append(...build());
  }
  replace(view.body, header(detail), detail.error ? el("pre", { class: "run-error", id: "run-error" }, detail.error) : null, bar, panels);
  drawCharts(view, detail);
  window.scrollTo(0, scroll);
}

function selectTab(bar, panels, key) {
  state.tab = key;
  for (const button of bar.children) button.classList.toggle("active", button.dataset.tab === key);
  for (const panel of panels.children) {
    panel.hidden = panel.dataset.tab !== key;
    if (!panel.hidden && window.Plotly) {
      for (const chart of panel.querySelectorAll(".js-plotly-plot")) window.Plotly.Plots.resize(chart);
    }
  }
}

function header(detail) {
  const actions = el("div", { class: "actions" });
  if (detail.status === "failed" || detail.status === "interrupted") {
    actions.append(el("button", { type: "button", class: "primary", id: "resume", onclick: () => resume(detail.path) }, "Resume"));
  }
  if (detail.status === "complete") {
    actions.append(el("a", { class: "button", href: link("playground", { path: detail.path }) }, "Try in playground"));
  }
  actions.append(el("a", { class: "button", href: link("launch", { from: detail.path }) }, "Run again with changes"));
  const meta = [
    ["task", detail.task],
    ["method", detail.method],
    ["model", shortModel(String(detail.model ?? "–"))],
    ["updated", fmtDate(detail.updated)],
  ];
  return el(
    "div",
    { class: "page-head run-head" },
    el("div", {}, el("h1", {}, detail.name, " ", badge(detail.status), detail.status === "running" ? progressBar(detail.progress) : null), el("div", { class: "muted small" }, detail.path)),
    el("dl", { class: "meta" }, meta.map(([k, v]) => [el("dt", {}, k), el("dd", { title: k === "model" ? String(detail.model ?? "") : String(v ?? "") }, display(v))])),
    actions,
  );
}

async function resume(path) {
  try {
    const answer = await api(`/api/run/resume?${query({ path })}`, { method: "POST" });
    window.location.hash = link("launch", { job: answer?.job?.id });
  } catch (exc) {
    showError(exc);
  }
}

// ---- overview ----------------------------------------------------------------------------
function overview(view, detail) {
  const splits = Object.entries(detail.metrics || {});
  const metrics = el(
    "div",
    { class: "split-tables" },
    splits.map(([split, values]) => el("div", { class: "split-table" }, el("h3", {}, split), metricTable(values, split))),
    detail.train && Object.keys(detail.train).length ? el("div", { class: "split-table" }, el("h3", {}, "training"), kvTable(trainFigures(detail.train), { id: "train-figures" })) : null,
  );
  const confusion = Object.entries(detail.confusion || {});
  const cells = el("div", { id: "cell-examples" }, confusion.length ? el("p", { class: "muted" }, "Click a cell of a confusion matrix to list its examples.") : null);
  view.cells = cells;
  return [
    section("Metrics", splits.length ? metrics : el("p", { class: "muted" }, detail.status === "running" ? "Training… metrics appear when it ends." : "No metrics.")),
    section(
      "Training curves",
      el("div", { class: "chart-grid" }, chartDiv("curve-loss"), chartDiv("curve-lr"), chartDiv("curve-eval"), chartDiv("curve-other")),
      el("p", { class: "muted curves-empty", hidden: true }, "No training log yet."),
    ),
    confusion.length
      ? section("Confusion matrices", el("div", { class: "chart-row" }, confusion.map(([split]) => chartDiv(`confusion-${split}`, "confusion"))), cells)
      : null,
    ...(detail.tables || []).map((t) => section(t.title, table(t.columns, t.rows, { class: "data per-class" }))),
  ];
}

function metricTable(values, split) {
  const rows = Object.entries(values).map(([name, value]) => [name, typeof value === "number" ? value : display(value)]);
  return table(["metric", "value"], rows, { class: "data kv metrics", dataset: { split } });
}

function trainFigures(train) {
  const keep = {};
  for (const [key, value] of Object.entries(train)) {
    if (value === null || (Array.isArray(value) && !value.length)) continue;
    keep[key] = value;
  }
  return keep;
}

function drawCharts(view, detail) {
  const series = detail.curves?.series || {};
  const groups = { loss: {}, lr: {}, eval: {}, other: {} };
  for (const [name, s] of Object.entries(series)) {
    if (!s?.x?.length || NOT_CURVES.test(name)) continue;
    if (name === "loss" || name === "eval_loss" || name === "train_loss") groups.loss[name] = s;
    else if (name === "learning_rate") groups.lr[name] = s;
    else if (name.startsWith("eval_")) groups.eval[name.slice(5)] = s;
    else groups.other[name] = s;
  }
  const titles = { loss: "Loss", lr: "Learning rate", eval: "Evaluation metrics", other: "Other" };
  let drawn = 0;
  for (const [key, group] of Object.entries(groups)) {
    const div = view.body.querySelector(`#curve-${key}`);
    if (!div) continue;
    if (!Object.keys(group).length) {
      div.hidden = true;
      continue;
    }
    drawn += 1;
    const names = Object.keys(group);
    const title = key === "other" && names.length === 1 ? names[0] : titles[key];
    lineChart(div, group, { title, mode: key === "eval" ? "lines+markers" : "lines", shown: key === "eval" ? mainMetrics(detail, group) : null });
  }
  const empty = view.body.querySelector(".curves-empty");
  if (empty) empty.hidden = drawn > 0;
  for (const [split, cm] of Object.entries(detail.confusion || {})) {
    const div = view.body.querySelector(`#confusion-${CSS.escape(split)}`);
    if (!div) continue;
    confusionChart(div, cm.labels, cm.matrix, { title: split }).then(() => {
      if (!div.on) return;
      div.on("plotly_click", (event) => {
        const point = event?.points?.[0];
        if (point) showExamples(view, detail.path, split, point.y, point.x);
      });
    });
  }
}

/** With many eval metrics, the main one (and accuracy, loss) shown; the rest a legend click away. */
function mainMetrics(detail, group) {
  if (Object.keys(group).length <= 4) return null;
  const main = new Set([detail.metric?.name, "accuracy", "loss"]);
  return (name) => main.has(name);
}

async function showExamples(view, path, split, gold, predicted) {
  const target = view.cells;
  replace(target, el("p", { class: "muted" }, `Loading gold ${gold} / predicted ${predicted}…`));
  try {
    const answer = await api(`/api/run/examples?${query({ path, split, gold, predicted, limit: 50 })}`);
    const examples = answer.examples || [];
    const columns = [...new Set(examples.flatMap((e) => Object.keys(e)))];
    replace(
      target,
      el(
        "h3",
        {},
        `${split}: gold `,
        el("code", {}, String(gold)),
        ", predicted ",
        el("code", {}, String(predicted)),
        el("span", { class: "muted small" }, ` — ${examples.length} of ${answer.total ?? examples.length} examples`),
      ),
      examples.length
        ? table(columns, examples.map((e) => columns.map((c) => (typeof e[c] === "number" ? e[c] : display(e[c])))), { class: "data examples" })
        : el("p", { class: "muted" }, "No examples in this cell."),
    );
  } catch (exc) {
    replace(target);
    showError(exc);
  }
}

// ---- the other tabs ------------------------------------------------------------------------
function dataTab(detail) {
  const report = detail.data_report || {};
  const predictions = detail.predictions || {};
  return [
    el("section", { class: "card", id: "data-report" }, el("h2", {}, "Data report"), Object.keys(report).length ? nestedTable(report, 0) : el("p", { class: "muted" }, "No data report.")),
    Object.keys(predictions).length ? section("Saved predictions", kvTable(predictions)) : null,
  ];
}

/** A key/value table whose object values nest (two levels), deeper ones as pretty JSON. */
function nestedTable(object, depth) {
  const rows = Object.entries(object).map(([key, value]) => {
    let cell;
    if (value && typeof value === "object" && !Array.isArray(value) && depth < 2) cell = nestedTable(value, depth + 1);
    else if (Array.isArray(value) && value.every((v) => v === null || typeof v !== "object")) cell = value.map(display).join(", ");
    else if (value && typeof value === "object") cell = el("pre", { class: "json" }, JSON.stringify(value, null, 2));
    else cell = typeof value === "number" ? fmtNumber(value) : display(value);
    return el("tr", {}, el("th", {}, key), el("td", {}, cell));
  });
  return el("table", { class: `data kv nested depth-${depth}` }, el("tbody", {}, rows));
}

function generationsTab(detail) {
  const columns = ["prompt", "reference", "base", "tuned"].filter((c) => detail.generations.some((g) => g[c] !== undefined && g[c] !== null));
  return [
    section(
      "Generations",
      table(columns, detail.generations.map((g) => columns.map((c) => el("td", { class: `gen gen-${c}` }, display(g[c])))), { class: "data generations", id: "generations" }),
    ),
  ];
}

function configTab(detail) {
  return [
    section(
      "Config",
      el("div", { class: "actions" }, el("a", { class: "button primary", href: link("launch", { from: detail.path }), id: "run-again" }, "Run again with changes")),
      el("pre", { class: "yaml", id: "config-yaml" }, detail.config_yaml || JSON.stringify(detail.config, null, 2)),
    ),
  ];
}

function markdownTab(content, empty, id) {
  return [section(null, content ? html("div", { class: "markdown", id }, content) : el("p", { class: "muted" }, empty))];
}

function filesTab(detail) {
  const artefacts = detail.artefacts || [];
  return [
    section(
      "Downloads",
      artefacts.length
        ? el(
            "ul",
            { class: "files", id: "artefacts" },
            artefacts.map((a) => el("li", {}, el("a", { href: a.url, download: a.name.split("/").pop() }, a.name), el("span", { class: "muted small" }, ` ${fmtBytes(a.size)}`))),
          )
        : el("p", { class: "muted" }, "No files."),
    ),
  ];
}
