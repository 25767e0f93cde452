// api.js: the board's JSON API client (docs/board.md) and its visible error banner (#error).
//
// Every call goes to the same origin with the session cookie (the board's token, when set).
// A failed call throws an ApiError that carries the server's one-line `detail` and, for the
// 422 form errors, the list of `{field, message, hint}`.

export class ApiError extends Error {
  constructor(status, detail, errors = null) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.errors = errors;
  }
}

/** Call the API: api("/api/runs"), api("/api/launch", {method: "POST", body: {...}}). */
export async function api(url, { method = "GET", body = undefined, form = undefined } = {}) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (form !== undefined) {
    options.body = form;
  } else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, options);
  } catch (exc) {
    throw new ApiError(0, `the board server cannot be reached (${exc.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, errorLine(response, data, text), data?.errors || null);
  }
  return data;
}

function errorLine(response, data, text) {
  if (data && typeof data.detail === "string") return data.detail;
  if (data && Array.isArray(data.detail)) {
    // FastAPI's own request validation errors.
    return data.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  if (data && Array.isArray(data.errors)) {
    return data.errors.map((e) => (e.field ? `${e.field}: ${e.message}` : e.message)).join("; ");
  }
  return `${response.status} ${response.statusText}${text && text.length < 200 ? `: ${text}` : ""}`;
}

/** A query string from an object; array values repeat the key (runs=a&runs=b). */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined) continue;
    for (const item of Array.isArray(value) ? value : [value]) search.append(key, item);
  }
  return search.toString();
}

/** Show an error in the banner at the top of the page. */
export function showError(error) {
  const banner = document.getElementById("error");
  if (!banner) return;
  const message = error instanceof ApiError ? error.detail : error?.message || String(error);
  banner.querySelector(".error-text").textContent = message;
  banner.hidden = false;
  if (!(error instanceof ApiError)) console.error(error);
}

export function clearError() {
  const banner = document.getElementById("error");
  if (banner) banner.hidden = true;
}
