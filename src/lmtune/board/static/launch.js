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
const DATA_FILES = ["train", "validation", "test"];
const MODELS = ["all-MiniLM-L6-v2", "SmolLM2-135M-Instruct", "gemma-3-270m"];

export async function render(params, ctx) {
  const [schema, data] = await Promise.all([api("/api/schema"), api("/api/data")]);
  const from = params.get("from");
  const prefill = from ? await prefillFrom(from) : structuredClone(schema.defaults);
  const form = { schema, data, values: new Map(), root: el("form", { id: "launch-form", class: "launch", novalidate: true }) };
  flatten(prefill, [], form.values);
  const preview = el("pre", { class: "yaml", id: "yaml-preview", hidden: true });
  const jobs = el("div", { id: "jobs" });
  ctx.root.append(
    el("div", { class: "page-head" }, el("h1", {}, "Launch"), from ? el("p", { class: "muted" }, "Prefilled from ", el("a", { href: link("run", { path: from }) }, from)) : null),
    section("Configuration", el("div", { id: "form-errors", class: "form-errors", hidden: true }), form.root, buttons(form, preview), preview),
    section("Jobs", jobs),
  );
  drawForm(form);
  const openLog = { id: params.get("job"), offset: 0, text: "" };
  await ctx.poll(() => drawJobs(jobs, openLog), 2000);
}

async function prefillFrom(path) {
  const detail = await api(`/api/run?${query({ path })}`);
  const config = structuredClone(detail.config || {});
  // The old folder holds the old run: the new one gets a name beside it.
  config.output_dir = `${path.replace(/-\d+$/, "")}-${Date.now().toString(36).slice(-4)}`;
  return config;
}

/** {a: {b: 1}} -> values "a.b" -> 1 (task/method options stay flat under their section). */
function flatten(object, prefix, out) {
  for (const [key, value] of Object.entries(object || {})) {
    const path = [...prefix, key];
    const isSection = prefix.length === 0 && value && typeof value === "object" && !Array.isArray(value);
    if (isSection) flatten(value, path, out);
    else out.set(path.join("."), value);
  }
  if (typeof object?.model === "string") out.set("model.name", object.model);
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
  const taskType = form.values.get("task.type") || "classification";
  const methodName = form.values.get("method.name") || "lora";
  const task = schema.tasks[taskType] || {};
  const method = schema.methods[methodName] || {};
  const groups = [];
  for (const name of SECTIONS) {
    const sectionSchema = resolve(defs, resolve(defs, defs.properties[name]).anyOf?.[0] || defs.properties[name]);
    let fields = Object.entries(sectionSchema.properties || {}).filter(([key]) => !(SKIPPED[name] || []).includes(key));
    let own = [];
    if (name === "task") own = Object.entries(task.options?.properties || {}).map(([k, p]) => [k, p, task.options]);
    if (name === "method") own = Object.entries(method.options?.properties || {}).map(([k, p]) => [k, p, method.options]);
    if (name === "data") own = Object.entries(task.data_options?.properties || {}).map(([k, p]) => [k, p, task.data_options]);
    fields = fields.map(([k, p]) => [k, p, defs]);
    const rows = [...fields, ...own].map(([key, prop, root]) => fieldRow(form, name, key, prop, root));
    const help = name === "task" ? task.description : name === "method" ? method.description : null;
    groups.push(el("fieldset", { class: `group group-${name}` }, el("legend", {}, name), help ? el("p", { class: "muted small" }, help) : null, rows));
  }
  groups.push(el("fieldset", { class: "group" }, el("legend", {}, "output"), fieldRow(form, null, "output_dir", defs.properties.output_dir, defs)));
  replace(form.root, groups, dataList(form));
}

function fieldRow(form, sectionName, key, prop, root) {
  const path = sectionName ? `${sectionName}.${key}` : key;
  const node = resolve(root, prop);
  const field = shape(root, prop);
  const input = widget(form, path, key, field, node, sectionName);
  const description = node.description || prop.description || "";
  return el(
    "div",
    { class: "field", dataset: { field: path } },
    el("label", { for: `f-${path}` }, key),
    input,
    description ? el("div", { class: "help muted small" }, description) : null,
    el("div", { class: "field-error", hidden: true }),
  );
}

function widget(form, path, key, field, node, sectionName) {
  const attrs = { id: `f-${path}`, name: path, dataset: { path, kind: field.kind } };
  const current = form.values.get(path);
  const placeholder = node.default === undefined || node.default === null ? "" : JSON.stringify(node.default);
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
    input = el("input", { ...attrs, type: "text", list: "data-files", placeholder: "pick a data file or upload one", value: current ?? "" });
  } else if (field.kind === "text") {
    const list = path === "model.name" ? "model-names" : null;
    input = el("input", { ...attrs, type: "text", list, placeholder, value: current ?? "" });
  } else {
    input = el("input", { ...attrs, type: "text", placeholder: placeholder || "JSON, or comma-separated", value: current === undefined ? "" : JSON.stringify(current) });
  }
  input.addEventListener("change", () => form.values.set(path, readInput(input)));
  return input;
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

function dataList(form) {
  return [
    el("datalist", { id: "data-files" }, form.data.files.map((f) => el("option", { value: f.path }, f.name))),
    el("datalist", { id: "model-names" }, MODELS.map((m) => el("option", { value: m }))),
  ];
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
function buttons(form, preview) {
  const upload = el("input", { type: "file", id: "upload-file", accept: ".csv,.tsv,.json,.jsonl,.parquet,.txt,.conll" });
  upload.addEventListener("change", () => uploadFile(form, upload));
  return el(
    "div",
    { class: "actions" },
    el("button", { type: "button", id: "validate", onclick: () => submit(form, preview, false) }, "Validate"),
    el("button", { type: "button", class: "primary", id: "launch", onclick: () => submit(form, preview, true) }, "Launch"),
    el("label", { class: "inline upload" }, "Upload a data file: ", upload),
  );
}

async function submit(form, preview, launch) {
  showFieldErrors(form, []);
  try {
    const answer = await api(launch ? "/api/launch" : "/api/validate", { method: "POST", body: { config: collect(form) } });
    if (launch) {
      preview.hidden = true;
      document.getElementById("jobs")?.scrollIntoView({ behavior: "smooth" });
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

async function uploadFile(form, input) {
  const file = input.files?.[0];
  if (!file) return;
  const body = new FormData();
  body.append("file", file);
  try {
    const answer = await api("/api/upload", { method: "POST", form: body });
    form.data = await api("/api/data");
    drawForm(form);
    showError(new Error(`uploaded to ${answer.path}: pick it as a data file`));
  } catch (exc) {
    showError(exc);
  }
}

// ---- the job queue -----------------------------------------------------------------------------
async function drawJobs(container, openLog) {
  const { jobs } = await api("/api/jobs");
  if (!jobs.length) {
    replace(container, el("p", { class: "muted" }, "No jobs yet: launch one above."));
    return;
  }
  const rows = jobs.map((job) => jobRow(job, openLog));
  const log = openLog.id ? await logPanel(openLog) : null;
  replace(container, el("table", { class: "data jobs", id: "jobs-table" }, el("thead", {}, el("tr", {}, ["job", "status", "run", "progress", "created", ""].map((h) => el("th", {}, h)))), el("tbody", {}, rows)), log);
}

function jobRow(job, openLog) {
  const cancel = ["queued", "running"].includes(job.status)
    ? el("button", { type: "button", class: "small", dataset: { job: job.id }, onclick: () => cancelJob(job.id) }, "Cancel")
    : null;
  const show = el("button", { type: "button", class: "small", onclick: () => Object.assign(openLog, { id: job.id, offset: 0, text: "" }) }, "Log");
  return el(
    "tr",
    { dataset: { job: job.id, status: job.status } },
    el("td", {}, job.id),
    el("td", {}, badge(job.status)),
    el("td", {}, job.run_path ? el("a", { href: link("run", { path: job.run_path }) }, job.run_path) : "–"),
    el("td", {}, progressBar(job.progress)),
    el("td", {}, fmtDate(job.created)),
    el("td", {}, show, " ", cancel),
  );
}

async function cancelJob(id) {
  try {
    await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
  } catch (exc) {
    showError(exc);
  }
}

async function logPanel(openLog) {
  const answer = await api(`/api/jobs/${encodeURIComponent(openLog.id)}/log?${query({ offset: openLog.offset })}`);
  openLog.text += answer.text;
  openLog.offset = answer.offset;
  const pre = el("pre", { class: "log", id: "job-log" }, openLog.text.slice(-20000) || "(no output yet)");
  requestAnimationFrame(() => (pre.scrollTop = pre.scrollHeight));
  return el("div", {}, el("h3", {}, `Log of ${openLog.id}`), pre);
}
