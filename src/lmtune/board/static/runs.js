// runs.js: the Runs page (#/runs): every run under the runs root, filtered, sorted, selectable
// for comparison, and the compare/sweep collections. Polls every 3 s while a run is running.

import { api } from "./api.js";
import { badge, el, fmtDate, fmtDuration, fmtMb, fmtNumber, fmtPercent, link, progressBar, replace, shortModel } from "./dom.js";

const STATUSES = ["running", "complete", "failed", "interrupted"];

// The page's choices survive leaving and coming back (for this browser tab).
const state = { filter: "", status: "", sortKey: "updated", sortDesc: true, selected: new Set() };

const COLUMNS = [
  { key: "name", label: "Run", value: (r) => r.name, cell: nameCell },
  { key: "status", label: "Status", value: (r) => r.status, cell: statusCell },
  { key: "task", label: "Task", value: (r) => r.task },
  { key: "method", label: "Method", value: (r) => r.method },
  { key: "model", label: "Model", value: (r) => r.model, cell: modelCell },
  { key: "metric", label: "Main metric", value: (r) => r.metric?.value ?? null, cell: metricCell, num: true },
  { key: "trainable_percent", label: "Trainable", value: (r) => r.trainable_percent, format: fmtPercent, num: true },
  { key: "train_time_s", label: "Train time", value: (r) => r.train_time_s, format: fmtDuration, num: true },
  { key: "peak_rss_mb", label: "Peak memory", value: (r) => r.peak_rss_mb, format: fmtMb, num: true },
  { key: "updated", label: "Date", value: (r) => r.updated, format: fmtDate },
];

export async function render(params, ctx) {
  const view = {
    data: null,
    tbody: el("tbody"),
    count: el("span", { class: "muted", id: "runs-count" }),
    compareButton: el("button", { type: "button", id: "compare-selected", class: "primary", onclick: compareSelected }, "Compare selected"),
    collections: el("div", { id: "collections" }),
    head: el("tr"),
    root: el("p", { class: "muted" }),
  };
  ctx.root.append(
    el("div", { class: "page-head" }, el("h1", {}, "Runs"), view.root),
    toolbar(view),
    el("div", { class: "table-wrap" }, el("table", { class: "data runs", id: "runs-table" }, el("thead", {}, view.head), view.tbody)),
    el("section", { class: "card" }, el("h2", {}, "Collections"), view.collections),
  );
  drawHead(view);
  await ctx.poll(
    async () => {
      view.data = await api("/api/runs");
      draw(view);
    },
    () => (view.data?.runs.some((r) => r.status === "running") ? 3000 : 15000),
  );
}

function toolbar(view) {
  const filter = el("input", {
    type: "search",
    id: "runs-filter",
    placeholder: "Filter by name, task, method, model…",
    value: state.filter,
    oninput: (event) => {
      state.filter = event.target.value;
      draw(view);
    },
  });
  const status = el(
    "select",
    {
      id: "runs-status",
      onchange: (event) => {
        state.status = event.target.value;
        draw(view);
      },
    },
    el("option", { value: "" }, "any status"),
    STATUSES.map((s) => el("option", { value: s, selected: state.status === s }, s)),
  );
  return el("div", { class: "toolbar" }, filter, status, view.count, el("span", { class: "spacer" }), view.compareButton);
}

function drawHead(view) {
  const all = el("input", {
    type: "checkbox",
    title: "Select all shown",
    onchange: (event) => {
      for (const row of visibleRows(view)) {
        if (event.target.checked) state.selected.add(row.path);
        else state.selected.delete(row.path);
      }
      draw(view);
    },
  });
  replace(
    view.head,
    el("th", { class: "select" }, all),
    COLUMNS.map((column) => {
      const sorted = state.sortKey === column.key;
      const arrow = sorted ? (state.sortDesc ? " ▾" : " ▴") : "";
      return el(
        "th",
        {
          class: `sortable ${column.num ? "num" : ""} ${sorted ? (state.sortDesc ? "sorted-desc" : "sorted-asc") : ""}`,
          dataset: { key: column.key },
          onclick: () => {
            if (state.sortKey === column.key) state.sortDesc = !state.sortDesc;
            else Object.assign(state, { sortKey: column.key, sortDesc: column.num || column.key === "updated" });
            drawHead(view);
            draw(view);
          },
        },
        column.label + arrow,
      );
    }),
  );
}

function visibleRows(view) {
  const runs = view.data?.runs || [];
  const needle = state.filter.trim().toLowerCase();
  const shown = runs.filter((r) => {
    if (state.status && r.status !== state.status) return false;
    if (!needle) return true;
    return [r.name, r.path, r.task, r.method, r.model].some((v) => String(v ?? "").toLowerCase().includes(needle));
  });
  const column = COLUMNS.find((c) => c.key === state.sortKey) || COLUMNS[0];
  const sign = state.sortDesc ? -1 : 1;
  return shown.sort((a, b) => sign * compareValues(column.value(a), column.value(b)));
}

function compareValues(a, b) {
  const aMissing = a === null || a === undefined;
  const bMissing = b === null || b === undefined;
  if (aMissing || bMissing) return aMissing === bMissing ? 0 : aMissing ? 1 : -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

function draw(view) {
  if (!view.data) return;
  view.root.textContent = `Runs root: ${view.data.root}`;
  const rows = visibleRows(view);
  const known = new Set(view.data.runs.map((r) => r.path));
  for (const path of [...state.selected]) if (!known.has(path)) state.selected.delete(path);
  view.count.textContent = `${rows.length} of ${view.data.runs.length} runs`;
  view.compareButton.disabled = state.selected.size < 2;
  view.compareButton.textContent = `Compare selected (${state.selected.size})`;
  if (!view.data.runs.length) {
    replace(view.tbody, el("tr", {}, el("td", { colspan: COLUMNS.length + 1, class: "empty" }, "No runs yet. ", el("a", { href: link("launch") }, "Launch one"), ".")));
  } else {
    replace(view.tbody, rows.map((row) => runRow(row, view)));
  }
  drawCollections(view);
}

function runRow(row, view) {
  const box = el("input", {
    type: "checkbox",
    class: "run-select",
    value: row.path,
    checked: state.selected.has(row.path),
    onchange: (event) => {
      if (event.target.checked) state.selected.add(row.path);
      else state.selected.delete(row.path);
      view.compareButton.disabled = state.selected.size < 2;
      view.compareButton.textContent = `Compare selected (${state.selected.size})`;
    },
  });
  return el(
    "tr",
    { dataset: { path: row.path }, class: `status-${row.status}` },
    el("td", { class: "select" }, box),
    COLUMNS.map((column) => {
      const content = column.cell ? column.cell(row) : (column.format || ((v) => v ?? "–"))(column.value(row));
      return el("td", { class: column.num ? "num" : null }, content);
    }),
  );
}

function nameCell(row) {
  return [el("a", { href: link("run", { path: row.path }), class: "run-link" }, row.name), row.name !== row.path ? el("div", { class: "muted small" }, row.path) : null];
}

function statusCell(row) {
  return [badge(row.status), row.status === "running" ? progressBar(row.progress) : null];
}

function modelCell(row) {
  const model = String(row.model ?? "–");
  return el("span", { title: model }, shortModel(model));
}

function metricCell(row) {
  if (!row.metric) return "–";
  const { name, split, value } = row.metric;
  return [el("strong", {}, fmtNumber(value)), el("span", { class: "muted small" }, ` ${name}${split ? ` (${split})` : ""}`)];
}

function drawCollections(view) {
  const collections = view.data.collections || [];
  if (!collections.length) {
    replace(view.collections, el("p", { class: "muted" }, "No compare or sweep directories yet (`lmtune compare`, `lmtune sweep`)."));
    return;
  }
  replace(
    view.collections,
    el(
      "ul",
      { class: "collections" },
      collections.map((c) =>
        el(
          "li",
          {},
          el("span", { class: `badge badge-kind` }, c.kind),
          " ",
          el("a", { href: link("compare", { collection: c.path }) }, c.name || c.path),
          el("span", { class: "muted small" }, `  ${c.path} · ${fmtDate(c.updated)}`),
        ),
      ),
    ),
  );
}

function compareSelected() {
  if (state.selected.size < 2) return;
  window.location.hash = `#/compare?runs=${[...state.selected].map(encodeURIComponent).join(",")}`;
}
