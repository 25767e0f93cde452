// dom.js: small DOM and formatting helpers shared by the board's pages.
//
// Every piece of data reaches the page through `el()` children or `textContent`, so it is
// always escaped; only the server-sanitised HTML fields (report_html, model_card_html,
// markdown_html) are set as innerHTML, by `html()`.

/** Create an element: el("a", {href: "#", class: "x", onclick: fn}, "text", child, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      node.className = value;
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key === "value" || key === "checked" || key === "disabled" || key === "selected") {
      node[key] = value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

/** Append children (strings become text nodes; arrays are flattened; null is skipped). */
export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A container holding server-sanitised HTML (the only place innerHTML takes data). */
export function html(tag, attrs, trustedHtml) {
  const node = el(tag, attrs);
  node.innerHTML = trustedHtml || "";
  return node;
}

/** Replace all children of `node`. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** A <table> from column headers and rows of cells (cells: strings, numbers or nodes). */
export function table(columns, rows, attrs = {}) {
  return el(
    "table",
    { class: "data", ...attrs },
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) => cellNode(cell))))),
  );
}

function cellNode(cell) {
  if (cell instanceof Node && cell.nodeName === "TD") return cell;
  const numeric = typeof cell === "number";
  return el("td", { class: numeric ? "num" : null }, numeric ? fmtNumber(cell) : display(cell));
}

/** A two-column key/value table; nested values are shown as compact JSON. */
export function kvTable(object, attrs = {}) {
  const rows = Object.entries(object || {}).map(([key, value]) => [
    key,
    typeof value === "number" ? value : display(value),
  ]);
  return table(["", ""], rows, { class: "data kv", ...attrs });
}

/** How a value reads in a cell: text as is, structures as JSON, null as a dash. */
export function display(value) {
  if (value instanceof Node) return value;
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value === "number") return fmtNumber(value);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return String(Number(value.toFixed(digits)));
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

export function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

export function fmtMb(mb) {
  return mb === null || mb === undefined ? "–" : mb >= 1024 ? `${(mb / 1024).toFixed(2)} GB` : `${Math.round(mb)} MB`;
}

export function fmtPercent(value) {
  return value === null || value === undefined ? "–" : `${Number(value.toPrecision(3))} %`;
}

export function fmtDate(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** A local model path by its folder's name (its parent's when the folder is just `model`). */
export function shortModel(model) {
  if (!model.startsWith("/")) return model;
  const parts = model.split("/").filter(Boolean);
  const last = parts.pop() || model;
  return ["model", "models", "snapshot"].includes(last) && parts.length ? `${parts.pop()}/${last}` : last;
}

/** A status badge: running / complete / failed / interrupted (and the job states). */
export function badge(status) {
  return el("span", { class: `badge badge-${status || "unknown"}` }, status || "unknown");
}

/** A thin progress bar for a 0..1 fraction (nothing when unknown). */
export function progressBar(fraction) {
  if (fraction === null || fraction === undefined) return null;
  const pct = Math.max(0, Math.min(1, fraction)) * 100;
  return el(
    "span",
    { class: "progress", title: `${pct.toFixed(0)} %` },
    el("span", { class: "progress-fill", style: `width: ${pct.toFixed(1)}%` }),
  );
}

/** A titled page section. */
export function section(title, ...children) {
  return el("section", { class: "card" }, title ? el("h2", {}, title) : null, ...children);
}

/** The `#/route?key=value` link for a page. */
export function link(route, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) query.set(key, value);
  }
  const text = query.toString();
  return `#/${route}${text ? `?${text}` : ""}`;
}
