"""Explanations in a run's report.md and metrics.json.

After training (`evaluation.explain_errors`, `evaluation.faithfulness_samples`, called from
`run.train`) or later (`lmtune explain RUN --input test.csv --report / --update-metrics`):

- the k test rows the model got wrong most confidently, each with the tokens that pushed it to
  its wrong answer: where a classifier learnt a shortcut (a name, a template word), it shows here;
- the faithfulness of the explanations (`explain_faithfulness`), under metrics.json's `explanations`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtune.errors import LmtuneError
from lmtune.evaluation.explain import CAPABILITY, ExplainSettings, explain
from lmtune.evaluation.explain_render import top_tokens
from lmtune.io import write_text

if TYPE_CHECKING:
    from torch import nn

    from lmtune.tasks.base import Task

log = logging.getLogger(__name__)

REPORT_BEGIN = "<!-- lmtune explain: begin -->"
REPORT_END = "<!-- lmtune explain: end -->"


def labelled_inputs(dataset: Any) -> list[dict[str, Any]]:
    """The inputs of a labelled classification split (`text`, optional `text_pair`)."""
    items = [{"text": t} for t in dataset["text"]]
    if "text_pair" in dataset.column_names:
        items = [{**i, "text_pair": p} for i, p in zip(items, dataset["text_pair"], strict=True)]
    return items


def error_section(
    task: Task,
    model: nn.Module,
    tokenizer: Any,
    dataset: Any,
    k: int,
    settings: ExplainSettings | None = None,
) -> list[str]:
    """Markdown lines: the k rows of `dataset` (a labelled split as the task reads it: `text`,
    optional `text_pair`, `label_ids`) the model got wrong most confidently, each with its top
    tokens for the predicted label. The task needs class probabilities."""
    from lmtune.evaluation.report import markdown_table, section

    task.require("class-probabilities", "explaining the most confident errors")
    labels = task.labels or []
    items = labelled_inputs(dataset)
    gold = [_gold_names(g, labels) for g in dataset["label_ids"]]
    errors = []
    for item, row, truth in zip(items, task.predict(model, tokenizer, items, 32), gold, strict=True):
        said = row["labels"] if "labels" in row else [row["label"]]
        if sorted(said) != sorted(truth):
            confidence = max((row["scores"][name] for name in said), default=0.0)
            errors.append((confidence, item, truth))
    errors.sort(key=lambda e: e[0], reverse=True)
    title = f"Explained errors ({len(items)} rows, the {k} most confident errors)"
    if not errors:
        return section(title, ["No errors to explain."])
    chosen = errors[:k]
    records = explain(task, model, tokenizer, [item for _, item, _ in chosen], settings or ExplainSettings())
    rows = []
    for (confidence, item, truth), record in zip(chosen, records, strict=True):
        for explanation in record["explanations"]:
            tokens = ", ".join(f"{t} ({s:+.2g})" for t, s in top_tokens(record, explanation, 5))
            rows.append([item["text"], " / ".join(truth), explanation["target"], f"{confidence:.3f}", tokens])
    header = ["text", "gold", "predicted", "confidence", "top tokens for the prediction"]
    return section(title, markdown_table(header, rows, left=3, width=150))


def _gold_names(label_ids: Any, labels: list[str]) -> list[str]:
    if isinstance(label_ids, list):  # multi-label: a 0/1 vector
        return [labels[i] for i, v in enumerate(label_ids) if v]
    return [labels[int(label_ids)]]


def faithfulness_lines(scores: dict[str, Any]) -> list[str]:
    """report.md's table of metrics.json's `explanations` (faithfulness) beside random tokens."""
    from lmtune.evaluation.report import markdown_table, section

    random = scores["random"]
    rows = [
        ["comprehensiveness (higher is better)", scores["comprehensiveness"], random["comprehensiveness"]],
        ["sufficiency (lower is better)", scores["sufficiency"], random["sufficiency"]],
    ]
    shown = [[name, f"{ours:.4f}", f"{theirs:.4f}"] for name, ours, theirs in rows]
    title = (
        f"Explanation faithfulness ({scores['method']}, {scores['rows']} rows, "
        f"top k = {', '.join(f'{k}%' for k in scores['k'])} of the tokens)"
    )
    return section(title, markdown_table(["score", scores["method"], "random tokens"], shown))


def replace_report_section(report: str | Path, lines: Sequence[str]) -> None:
    """Put `lines` into report.md between lmtune's explain markers (replacing what was there, or
    appended at the end); atomic."""
    path = Path(report)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = "\n".join([REPORT_BEGIN, *lines, REPORT_END])
    start, end = text.find(REPORT_BEGIN), text.find(REPORT_END)
    if start != -1 and end > start:
        text = text[:start] + block + text[end + len(REPORT_END) :]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    write_text(path, text)


def explain_after_training(prepared: Any, model: nn.Module) -> tuple[dict[str, Any], list[str]]:
    """metrics.json entries and report.md lines for `evaluation.explain_errors` and
    `evaluation.faithfulness_samples` on the test split (`run.PreparedRun`); ({}, []) when off.
    `run.plan_run` refuses these keys before training for a task that cannot explain its errors;
    the note below covers runs driven through these phases some other way."""
    evaluation = prepared.resolved.evaluation
    errors = evaluation.explain_errors if evaluation is not None else 0
    samples = evaluation.faithfulness_samples if evaluation is not None else 0
    test = prepared.data.splits.get("test")
    if not (errors or samples) or test is None or len(test) == 0:
        return {}, []
    task, tokenizer = prepared.task, prepared.tokenizer
    if not (task.supports(CAPABILITY) and task.supports("class-probabilities")):
        note = f"Explanations were asked for, but task '{task.name}' does not explain its errors."
        return {}, ["### Explanations\n", note, ""]
    metrics: dict[str, Any] = {}
    lines: list[str] = []
    try:
        if samples:
            from lmtune.evaluation.explain_faithfulness import faithfulness

            items = labelled_inputs(test)
            seed = prepared.resolved.train.seed
            metrics["explanations"] = faithfulness(task, model, tokenizer, items, seed=seed, limit=samples)
            lines += faithfulness_lines(metrics["explanations"])
        if errors:
            lines += error_section(task, model, tokenizer, test, errors)
    except LmtuneError as exc:
        log.warning("explanations skipped: %s", exc)
        lines += ["### Explanations\n", f"Skipped: {exc}", ""]
    # Between the markers: `lmtune explain --report` replaces this section later.
    return metrics, [REPORT_BEGIN, *lines, REPORT_END, ""]
