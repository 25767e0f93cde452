// launch.js: the Launch page (#/launch[?from=P][&job=ID]): a form generated from the config
// schema (GET /api/schema), checked by the server (POST /api/validate: the CLI's one-line
// messages, each shown beside its field), launched as a queued `lmtune train` subprocess
// (POST /api/launch); below, the job queue with progress, cancel and a live log.
//
// The form sends the same nested dict a YAML file holds: task options flat beside task.type,
// method options flat beside method.name. Only fields the user set (or a prefilled run's
// values) are sent, so everything else keeps the schema's defaults.

import { api, ApiError, query, showError } from "./api.js";
import { badge, el, fmtDate, link, progressBar, replace, section } from "./dom.js";

const SECTIONS = ["model", "task", "method", "data", "train", "evaluation"];
const SKIPPED = { train: ["distributed"], data: [] };
// The fields every launch looks at; a section's other fields are folded under "more options".
const BASIC = {
  model: ["name"],
  task: ["type"],
  method: ["name"],
  data: ["train", "validation", "test", "max_length"],
  train: ["epochs", "batch_size", "learning_rate"],
  evaluation: ["explain_errors", "faithfulness_samples"],
};
const DATA_FILES = ["train", "validation", "test"];
const UPLOADABLE = ".csv,.tsv,.json,.jsonl,.parquet,.txt,.conll";
const MODELS = ["all-MiniLM-L6-v2", "SmolLM2-135M-Instruct", "gemma-3-270m"];

export async function render(params, ctx) {
  const [schema, data] = await Promise.all([api("/api/schema"), api("/api/data")]);
  const from = params.get("from");
  const prefill = normalised(from ? await prefillFrom(from) : structuredClone(schema.defaults));
  const form = { schema, data, values: new Map(), open: new Set(), root: el("form", { id: "launch-form", class: "launch", novalidate: true }) };
  flatten(prefill, [], form.values);
  const preview = el("pre", { class: "yaml", id: "yaml-preview", hidden: true });
  const jobs = { container: el("div", { id: "jobs" }), table: el("div"), log: el("div", { id: "job-log-panel" }), open: null };
  jobs.container.append(jobs.table, jobs.log);
  ctx.root.append(
    el("div", { class: "page-head" }, el("h1", {}, "Launch"), from ? el("p", { class: "muted" }, "Prefilled from ", el("a", { href: link("run", { path: from }) }, from)) : null),
    section("Configuration", el("div", { id: "form-errors", class: "form-errors", hidden: true }), form.root, buttons(form, preview, jobs), preview),
    section("Jobs", jobs.container),
  );
  drawForm(form);
  if (params.get("job")) openLog(jobs, params.get("job"));
  await ctx.poll(() => refreshJobs(jobs), 2000);
}

/** A run's config, under a new output_dir beside it (the old folder holds the old run). */
async function prefillFrom(path) {
  const [detail, listing] = await Promise.all([api(`/api/run?${query({ path })}`), api("/api/runs")]);
  const config = structuredClone(detail.config || {});
  config.output_dir = freeName(path, new Set(listing.runs.map((r) => r.path)));
  return config;
}

/** `sst/lora` -> `sst/lora-2` (or -3, ... while taken). */
export function freeName(path, taken) {
  const stem = path.replace(/-\d+$/, "");
  let n = 2;
  while (taken.has(`${stem}-${n}`)) n += 1;
  return `${stem}-${n}`;
}

/** The short forms a YAML file may use (`model: name`, `task: type`, `method: name`) as sections. */
function normalised(config) {
  const out = { ...config };
  for (const [name, key] of [["model", "name"], ["task", "type"], ["method", "name"]]) {
    if (typeof out[name] === "string") out[name] = { [key]: out[name] };
  }
  return out;
}

/** {a: {b: 1}} -> values "a.b" -> 1 (task/method options stay flat under their section). */
function flatten(object, prefix, out) {
  for (const [key, value] of Object.entries(object || {})) {
    const path = [...prefix, key];
    const isSection = prefix.length === 0 && value && typeof value === "object" && !Array.isArray(value);
    if (isSection) flatten(value, path, out);
    else out.set(path.join("."), value);
  }
}

// ---- schema helpers ----------------------------------------------------------------------------
function resolve(schema, node) {
  let current = node || {};
  while (current.$ref) current = lookup(schema, current.$ref);
  return current;
}

function lookup(root, ref) {
  const name = ref.split("/").pop();
  return root.$defs?.[name] || root.config?.$defs?.[name] || {};
}

/** The field's shape: {kind: select|bool|number|integer|text|json, choices, nullable}. */
function shape(defs, prop) {
  const node = resolve(defs, prop);
  const options = (node.anyOf || [node]).map((n) => resolve(defs, n));
  const nullable = options.some((o) => o.type === "null");
  const real = options.filter((o) => o.type !== "null");
  const choices = real.flatMap((o) => o.enum || (o.const !== undefined ? [o.const] : []));
  if (real.length === 1 && real[0].enum) return { kind: "select", choices: real[0].enum, nullable };
  if (real.length === 1 && real[0].type === "boolean") return { kind: "bool", nullable };
  if (real.length === 1 && (real[0].type === "integer" || real[0].type === "number")) return { kind: real[0].type, nullable };
  if (real.length === 1 && real[0].type === "string") return { kind: "text", nullable };
  if (choices.length && choices.length === real.length) return { kind: "select", choices, nullable };
  return { kind: "json", nullable };
}

// ---- the form --------------------------------------------------------------------------------
function drawForm(form) {
  const { schema } = form;
  const defs = schema.config;
  const task = schema.tasks[form.values.get("task.type") || "classification"] || {};
  const method = schema.methods[form.values.get("method.name") || "lora"] || {};
  const own = { task: task.options, method: method.options, data: task.data_options };
  const groups = SECTIONS.map((name) => {
    const common = sectionProperties(defs, name).map(([key, prop]) => fieldRow(form, name, key, prop, defs));
    const extra = Object.entries(own[name]?.properties || {}).map(([key, prop]) => fieldRow(form, name, key, prop, own[name]));
    const basic = BASIC[name] || [];
    const shown = common.filter((row) => basic.includes(row.dataset.key));
    const more = common.filter((row) => !basic.includes(row.dataset.key));
    const help = { task: task.description, method: method.description }[name];
    return el(
      "fieldset",
      { class: `group group-${name}` },
      el("legend", {}, name),
      help ? el("p", { class: "muted small" }, help) : null,
      shown,
      // The chosen task's / method's own options: shown (that is what picking one is about).
      name === "data" ? null : extra,
      moreFields(form, name, name === "data" ? [...more, ...extra] : more),
    );
  });
  groups.push(el("fieldset", { class: "group group-output" }, el("legend", {}, "output"), fieldRow(form, null, "output_dir", defs.properties.output_dir, defs)));
  replace(form.root, groups, dataList());
}

/** The [key, schema] pairs of a config section (`evaluation` is optional: its object's). */
function sectionProperties(defs, name) {
  const node = resolve(defs, defs.properties[name]);
  const object = resolve(defs, (node.anyOf || [node]).find((n) => n.type !== "null"));
  return Object.entries(object.properties || {}).filter(([key]) => !(SKIPPED[name] || []).includes(key));
}

/** The rest of a section's fields, folded (the fold stays open across redraws). */
function moreFields(form, name, rows) {
  if (!rows.length) return null;
  const details = el("details", { class: "more", open: form.open.has(name) }, el("summary", {}, `${rows.length} more ${name} options`), rows);
  details.addEventListener("toggle", () => (details.open ? form.open.add(name) : form.open.delete(name)));
  return details;
}

function fieldRow(form, sectionName, key, prop, root) {
  const path = sectionName ? `${sectionName}.${key}` : key;
  const node = resolve(root, prop);
  const field = shape(root, prop);
  const input = widget(form, path, key, field, node, sectionName);
  const description = node.description || prop.description || "";
  return el(
    "div",
    { class: "field", dataset: { field: path, key } },
    el("label", { for: `f-${path}` }, key),
    input,
    description ? el("div", { class: "help muted small" }, description) : null,
    el("div", { class: "field-error", hidden: true }),
  );
}

function widget(form, path, key, field, node, sectionName) {
  const attrs = { id: `f-${path}`, name: path, dataset: { path, kind: field.kind } };
  const current = form.values.get(path);
  const placeholder = defaultText(node.default);
  let input;
  if ((sectionName === "task" && key === "type") || (sectionName === "method" && key === "name")) {
    const names = Object.keys(sectionName === "task" ? form.schema.tasks : form.schema.methods);
    input = el("select", attrs, names.map((n) => el("option", { value: n, selected: n === (current ?? node.default) }, n)));
    input.addEventListener("change", () => {
      dropOwnOptions(form, sectionName);
      form.values.set(path, input.value);
      drawForm(form); // the chosen task's / method's own options appear
    });
    return input;
  }
  if (field.kind === "select") {
    const choices = [field.nullable || node.default !== undefined ? "" : null, ...field.choices].filter((c) => c !== null);
    input = el("select", attrs, choices.map((c) => el("option", { value: c === "" ? "" : JSON.stringify(c), selected: current !== undefined && JSON.stringify(current) === JSON.stringify(c) }, c === "" ? `default (${placeholder || "none"})` : String(c))));
  } else if (field.kind === "bool") {
    input = el("input", { ...attrs, type: "checkbox", checked: current ?? node.default ?? false });
  } else if (field.kind === "integer" || field.kind === "number") {
    input = el("input", { ...attrs, type: "number", step: field.kind === "integer" ? "1" : "any", placeholder, value: current ?? "" });
  } else if (sectionName === "data" && DATA_FILES.includes(key)) {
    return dataFilePicker(form, key, attrs, current);
  } else if (field.kind === "text") {
    const list = path === "model.name" ? "model-names" : null;
    input = el("input", { ...attrs, type: "text", list, placeholder, value: current ?? "" });
  } else {
    input = el("input", { ...attrs, type: "text", placeholder: placeholder || "JSON, or comma-separated", value: current === undefined ? "" : JSON.stringify(current) });
  }
  for (const type of ["input", "change"]) input.addEventListener(type, () => form.values.set(path, readInput(input)));
  return input;
}

/** data.train / validation / test: a select of the data roots' files, and an upload button. */
function dataFilePicker(form, key, attrs, current) {
  const files = form.data.files;
  const listed = files.some((f) => f.path === current);
  const select = el(
    "select",
    attrs,
    el("option", { value: "" }, key === "train" ? "pick a data file" : "none (carved from train)"),
    current && !listed ? el("option", { value: current, selected: true }, current) : null,
    files.map((f) => el("option", { value: f.path, selected: f.path === current, title: f.path }, f.name)),
  );
  select.addEventListener("change", () => form.values.set(`data.${key}`, select.value || undefined));
  const upload = el("input", { type: "file", id: `upload-${key}`, accept: UPLOADABLE });
  upload.addEventListener("change", () => uploadFile(form, key, upload));
  const button = el("label", { class: "button small upload-button", title: "upload a file into the first data root" }, "Upload…", upload);
  return el("div", { class: "file-pick" }, select, button);
}

function defaultText(value) {
  if (value === undefined || value === null) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Forget the options of the task or method being replaced (the new one may not have them). */
function dropOwnOptions(form, sectionName) {
  const previous = sectionName === "task"
    ? form.schema.tasks[form.values.get("task.type") || "classification"]
    : form.schema.methods[form.values.get("method.name") || "lora"];
  for (const key of Object.keys(previous?.options?.properties || {})) form.values.delete(`${sectionName}.${key}`);
  if (sectionName === "task") {
    for (const key of Object.keys(previous?.data_options?.properties || {})) form.values.delete(`data.${key}`);
  }
}

function dataList() {
  return el("datalist", { id: "model-names" }, MODELS.map((m) => el("option", { value: m })));
}

/** An input's value as the config takes it (undefined: unset, keep the default). */
function readInput(input) {
  const kind = input.dataset.kind;
  if (input.type === "checkbox") return input.checked;
  const text = input.value.trim();
  if (text === "") return undefined;
  if (input.tagName === "SELECT") return kind === "select" ? JSON.parse(text) : text;
  if (kind === "integer" || kind === "number") return Number(text);
  if (kind === "json") {
    try {
      return JSON.parse(text);
    } catch {
      return text.includes(",") ? text.split(",").map((s) => s.trim()).filter(Boolean) : text;
    }
  }
  return text;
}

/** The nested config dict of every set field. */
function collect(form) {
  const config = {};
  for (const [path, value] of form.values) {
    if (value === undefined) continue;
    const parts = path.split(".");
    let node = config;
    for (const part of parts.slice(0, -1)) node = node[part] ??= {};
    node[parts.at(-1)] = value;
  }
  return config;
}

// ---- validate, launch, upload ------------------------------------------------------------------
function buttons(form, preview, jobs) {
  return el(
    "div",
    { class: "actions" },
    el("button", { type: "button", id: "validate", onclick: () => submit(form, preview, jobs, false) }, "Validate"),
    el("button", { type: "button", class: "primary", id: "launch", onclick: () => submit(form, preview, jobs, true) }, "Launch"),
    el("span", { class: "muted small" }, "Validate checks the config as `lmtune train` would and shows its YAML; Launch queues the training."),
  );
}

async function submit(form, preview, jobs, launch) {
  showFieldErrors(form, []);
  try {
    const answer = await api(launch ? "/api/launch" : "/api/validate", { method: "POST", body: { config: collect(form) } });
    if (launch) {
      preview.hidden = true;
      openLog(jobs, answer.job.id);
      await refreshJobs(jobs);
      jobs.container.scrollIntoView({ behavior: "smooth" });
    } else {
      replace(preview, answer.yaml);
      preview.hidden = false;
    }
  } catch (exc) {
    if (exc instanceof ApiError && exc.errors) showFieldErrors(form, exc.errors);
    else showError(exc);
  }
}

function showFieldErrors(form, errors) {
  for (const node of form.root.querySelectorAll(".field-error")) {
    node.hidden = true;
    node.textContent = "";
  }
  const top = document.getElementById("form-errors");
  const unplaced = [];
  for (const error of errors) {
    const text = error.hint ? `${error.message} (${error.hint})` : error.message;
    const target = error.field ? fieldFor(form, error.field) : null;
    if (!target) {
      unplaced.push(text);
      continue;
    }
    target.closest("details")?.setAttribute("open", "");
    const slot = target.querySelector(".field-error");
    slot.textContent = slot.textContent ? `${slot.textContent}; ${text}` : text;
    slot.hidden = false;
  }
  replace(top, unplaced.map((t) => el("div", {}, t)));
  top.hidden = unplaced.length === 0;
  form.root.querySelector(".field-error:not([hidden])")?.scrollIntoView({ block: "center" });
}

/** The field an error names, or the nearest enclosing one (method options -> method.name). */
function fieldFor(form, field) {
  const parts = field.split(".");
  while (parts.length) {
    const found = form.root.querySelector(`.field[data-field="${CSS.escape(parts.join("."))}"]`);
    if (found) return found;
    parts.pop();
  }
  const section = field.split(".")[0];
  return form.root.querySelector(`.field[data-field="${CSS.escape(section === "method" ? "method.name" : `${section}.type`)}"]`);
}

/** Upload a file into the first data root and pick it for data.<key>. */
async function uploadFile(form, key, input) {
  const file = input.files?.[0];
  if (!file) return;
  const body = new FormData();
  body.append("file", file);
  try {
    const answer = await api("/api/upload", { method: "POST", form: body });
    form.data = await api("/api/data");
    form.values.set(`data.${key}`, answer.path);
    drawForm(form);
  } catch (exc) {
    showError(exc);
  }
}

// ---- the job queue -----------------------------------------------------------------------------
/** Redraw the job table; append what the open log gained since the last look. */
async function refreshJobs(jobs) {
  const { jobs: list } = await api("/api/jobs");
  if (!list.length) {
    replace(jobs.table, el("p", { class: "muted" }, "No jobs yet: launch one above."));
  } else {
    const head = el("tr", {}, ["job", "status", "run", "progress", "created", ""].map((h) => el("th", {}, h)));
    const rows = list.map((job) => jobRow(job, jobs));
    replace(jobs.table, el("table", { class: "data jobs", id: "jobs-table" }, el("thead", {}, head), el("tbody", {}, rows)));
  }
  if (jobs.open) {
    await readLog(jobs.open).catch((exc) => {
      if (exc instanceof ApiError && exc.status === 404) jobs.open = null; // said once, not every 2 s
      throw exc;
    });
  }
}

function jobRow(job, jobs) {
  const cancel = ["queued", "running"].includes(job.status)
    ? el("button", { type: "button", class: "small", dataset: { job: job.id }, onclick: () => cancelJob(jobs, job.id) }, "Cancel")
    : null;
  const show = el("button", { type: "button", class: "small", onclick: () => openLog(jobs, job.id) }, "Log");
  return el(
    "tr",
    { dataset: { job: job.id, status: job.status }, class: jobs.open?.id === job.id ? "open" : null },
    el("td", {}, job.id),
    el("td", {}, badge(job.status)),
    el("td", {}, job.run_path ? el("a", { href: link("run", { path: job.run_path }) }, job.run_path) : "–"),
    el("td", {}, progressBar(job.progress)),
    el("td", {}, fmtDate(job.created)),
    el("td", {}, show, " ", cancel),
  );
}

async function cancelJob(jobs, id) {
  try {
    await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    await refreshJobs(jobs);
  } catch (exc) {
    showError(exc);
  }
}

/** Show job `id`'s log below the table (read from the start, then followed). */
function openLog(jobs, id) {
  const pre = el("pre", { class: "log", id: "job-log" }, "(no output yet)");
  jobs.open = { id, offset: 0, pre, busy: false };
  replace(jobs.log, el("h3", {}, `Log of job ${id}`), pre);
  readLog(jobs.open).catch(showError);
}

/** Append the log's new bytes (one read at a time: a poll and a click may overlap). */
async function readLog(open) {
  if (open.busy) return;
  open.busy = true;
  try {
    const answer = await api(`/api/jobs/${encodeURIComponent(open.id)}/log?${query({ offset: open.offset })}`);
    if (!answer.text) return;
    const { pre } = open;
    const following = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    if (!open.offset) pre.textContent = "";
    open.offset = answer.offset;
    pre.append(answer.text);
    if (pre.textContent.length > 200_000) pre.textContent = pre.textContent.slice(-100_000);
    if (following) pre.scrollTop = pre.scrollHeight;
  } finally {
    open.busy = false;
  }
}
