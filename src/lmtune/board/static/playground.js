// playground.js: the Playground page (#/playground?path=P): type inputs to a finished run and
// see its predictions drawn for its task (the run's `view` says how): label probabilities as
// bars, entities marked in the text, the QA answer marked in its context, generations streamed
// token by token (base and tuned side by side for adapter runs), anything else as JSON.

import { api, query, showError } from "./api.js";
import { el, fmtNumber, link, replace, section, shortModel } from "./dom.js";

export async function render(params, ctx) {
  const path = params.get("path");
  const { runs } = await api("/api/runs");
  const complete = runs.filter((r) => r.status === "complete");
  const select = el(
    "select",
    { id: "playground-run" },
    el("option", { value: "" }, "pick a finished run"),
    complete.map((r) => el("option", { value: r.path, selected: r.path === path }, `${r.name} (${r.task}, ${r.method})`)),
  );
  select.addEventListener("change", () => (window.location.hash = link("playground", { path: select.value })));
  ctx.root.append(el("div", { class: "page-head" }, el("h1", {}, "Playground"), el("label", { class: "inline" }, "Run: ", select)));
  if (!path) return;
  const detail = await api(`/api/run?${query({ path })}`);
  const output = el("div", { id: "playground-output" });
  const inputs = detail.view.inputs.map((name) =>
    el("div", { class: "field" }, el("label", { for: `in-${name}` }, name), el("textarea", { id: `in-${name}`, rows: name === "context" ? 6 : 3, placeholder: hint(detail.view, name) })),
  );
  const run = el("button", { type: "button", class: "primary", id: "predict" }, detail.view.render === "generation" ? "Generate" : "Predict");
  run.addEventListener("click", () => predict(detail, ctx, output));
  ctx.root.append(section(`${detail.task} · ${detail.method} · ${shortModel(String(detail.model ?? "–"))}`, inputs, el("div", { class: "actions" }, run)), section("Prediction", output));
}

function hint(view, name) {
  if (view.render === "generation") return "a prompt (sent as one user turn)";
  if (view.inputs.length === 1) return "one input per line";
  return name;
}

function readInputs(detail, root) {
  const fields = detail.view.inputs;
  const values = Object.fromEntries(fields.map((f) => [f, root.querySelector(`#in-${CSS.escape(f)}`).value]));
  if (fields.length === 1) return values[fields[0]].split("\n").map((t) => t.trim()).filter(Boolean);
  return [values];
}

async function predict(detail, ctx, output) {
  if (detail.view.render === "generation") {
    const prompt = ctx.root.querySelector(`#in-${CSS.escape(detail.view.inputs[0])}`).value;
    if (prompt.trim()) generate(detail, ctx, output, prompt);
    return;
  }
  const inputs = readInputs(detail, ctx.root);
  if (!inputs.length) return;
  replace(output, el("p", { class: "muted" }, "Predicting…"));
  try {
    const answer = await api("/api/predict", { method: "POST", body: { path: detail.path, inputs, options: {} } });
    replace(output, answer.predictions.map((p, i) => drawPrediction(detail.view.render, p, inputs[i])));
  } catch (exc) {
    replace(output);
    showError(exc);
  }
}

function drawPrediction(render, prediction, input) {
  if (render === "labels") return labelBars(prediction);
  if (render === "entities") return markedEntities(prediction);
  if (render === "span") return markedAnswer(prediction, input);
  if (render === "text") return el("div", { class: "prediction" }, el("p", { class: "generated" }, prediction.generation ?? prediction.text ?? ""));
  return el("pre", { class: "json prediction" }, JSON.stringify(prediction, null, 2));
}

function labelBars(prediction) {
  const scores = Object.entries(prediction.scores || {}).sort((a, b) => b[1] - a[1]);
  const chosen = new Set(prediction.labels || [prediction.label]);
  return el(
    "div",
    { class: "prediction labels" },
    el("p", {}, el("q", {}, prediction.text), " → ", el("strong", {}, [...chosen].join(", "))),
    scores.map(([label, p]) =>
      el(
        "div",
        { class: `bar-row ${chosen.has(label) ? "chosen" : ""}`.trim() },
        el("span", { class: "bar-label" }, label),
        el("span", { class: "bar" }, el("span", { class: "bar-fill", style: `width: ${(100 * p).toFixed(1)}%` })),
        el("span", { class: "bar-value num" }, fmtNumber(p, 3)),
      ),
    ),
  );
}

function markedEntities(prediction) {
  if (!prediction.text) return el("pre", { class: "json prediction" }, JSON.stringify(prediction, null, 2));
  const parts = [];
  let at = 0;
  for (const entity of [...(prediction.entities || [])].sort((a, b) => a.start - b.start)) {
    if (entity.start < at) continue;
    parts.push(prediction.text.slice(at, entity.start));
    parts.push(el("mark", { class: "entity", title: `${entity.type} ${fmtNumber(entity.score, 3)}` }, prediction.text.slice(entity.start, entity.end), el("sup", {}, entity.type)));
    at = entity.end;
  }
  parts.push(prediction.text.slice(at));
  return el("p", { class: "prediction entities" }, parts);
}

function markedAnswer(prediction, input) {
  const context = input?.context || "";
  const { start, end, answer, score } = prediction;
  const body = start >= 0 && end > start && context
    ? [context.slice(0, start), el("mark", { class: "answer" }, context.slice(start, end)), context.slice(end)]
    : [context, el("p", { class: "muted" }, "(no answer in this context)")];
  return el("div", { class: "prediction span" }, el("p", {}, el("strong", {}, "answer: "), answer || "–", el("span", { class: "muted small" }, ` score ${fmtNumber(score, 3)}`)), el("p", { class: "context" }, body));
}

const streams = []; // the EventSources of the generation on show

/** Stream the prompt's generation from the tuned model (and the base model beside it). */
function generate(detail, ctx, output, prompt) {
  const columns = detail.view.base_available ? ["tuned", "base"] : ["tuned"];
  const panes = Object.fromEntries(columns.map((c) => [c, el("div", { class: "generated", id: `gen-${c}` })]));
  replace(output, el("div", { class: `gen-columns cols-${columns.length}` }, columns.map((c) => el("div", {}, el("h3", {}, c === "tuned" ? "tuned" : "base model"), panes[c]))));
  for (const stale of streams.splice(0)) stale.close(); // a new prompt ends the last one's streams
  for (const which of columns) {
    const source = new EventSource(`/api/generate?${query({ path: detail.path, prompt, model: which, max_new_tokens: 128 })}`);
    streams.push(source);
    ctx.onDispose(() => source.close());
    source.onmessage = (event) => {
      const data = JSON.parse(event.data);
      if (data.text) panes[which].append(data.text);
      if (data.error) showError(new Error(data.error));
      if (data.done || data.error) {
        panes[which].classList.add("done");
        source.close();
      }
    };
    source.onerror = () => {
      source.close();
      if (!panes[which].classList.contains("done")) showError(new Error(`the ${which} generation stopped`));
    };
  }
}
