"""report.md and the model card (README.md) of a run directory."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lmtune.config import RunConfig
from lmtune.evaluation.plots import training_curves_png
from lmtune.io import write_text
from lmtune.models import find_packaged

HEADLINE = (
    "accuracy",
    "f1_macro",
    "f1_micro",
    "f1",
    "precision_macro",
    "recall_macro",
    "exact_match",
    "eval_loss",
    "perplexity",
    "bleu",
    "rougeL",
    "gen_exact_match",
    "gen_rougeL",
    "gen_bleu",
    "reward_accuracy",
    "reward_margin",
    "reward",
)
BEFORE_COLUMN = "test, before training"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_cell(value: Any) -> str:
    """A compact table cell: '-' for missing, four significant digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], *, left: int = 1, width: int | None = None
) -> list[str]:
    """The lines of a markdown table: every table of report.md (and of the tasks' sections).

    The first `left` columns are left-aligned (names, texts), the others right-aligned (numbers).
    Cells are written as text with '|' escaped and line breaks flattened, so a cell never breaks
    the table; `width` cuts long cells (sample texts) to that many characters.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * left + "---:|" * (len(header) - left)]
    lines += ["| " + " | ".join(_cell(value, width) for value in row) + " |" for row in rows]
    return lines


def _cell(value: Any, width: int | None) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text[:width] if width is not None else text


def section(title: str, body: list[str]) -> list[str]:
    """A `###` section of report.md: the title, its lines (a table), and a blank line."""
    return [f"### {title}\n", *body, ""]


def per_label_table(column: str, scores: dict[str, dict[str, Any]]) -> list[str]:
    """Precision, recall, F1 and support per class or entity type (`column` names what a row is)."""
    rows = (
        [name, *(f"{row[k]:.3f}" for k in ("precision", "recall", "f1")), row["support"]]
        for name, row in scores.items()
    )
    return markdown_table([column, "precision", "recall", "F1", "support"], rows)


def metrics_table(metrics: dict[str, Any]) -> list[str]:
    """Headline metrics per split; beside them the untuned model's on test where it was measured."""
    splits = [s for s in ("validation", "test") if isinstance(metrics.get(s), dict)]
    if not splits:
        return []
    columns = {s: metrics[s] for s in splits}
    baseline = metrics.get("baseline")
    if isinstance(baseline, dict) and any(isinstance(v, float) for v in baseline.values()):
        columns = {BEFORE_COLUMN: baseline, **columns}
    keys = [k for k in HEADLINE if any(k in metrics[s] for s in splits)]
    keys += sorted({k for s in splits for k, v in metrics[s].items() if isinstance(v, float)} - set(keys))
    return markdown_table(
        ["metric", *columns],
        ([key, *(_fmt(column.get(key, "")) for column in columns.values())] for key in keys),
    )


def written_baseline(run_dir: Path) -> dict[str, Any]:
    """The untuned model's measurements as metrics.json holds them ({} before it is written)."""
    path = run_dir / "metrics.json"
    written = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    baseline = written.get("baseline")
    return baseline if isinstance(baseline, dict) else {}


def samples_table(
    samples: list[dict[str, Any]], earlier: list[dict[str, Any]] | None = None, *, score: str | None = None
) -> list[str]:
    """Sample generations beside their reference and, where given, the untuned model's for the
    same prompts (`earlier`, in the same order); `score` names a per-sample number to show."""
    earlier = earlier or []
    header = ["prompt", "reference", *(["before training"] if earlier else []), "generation"]
    rows = []
    for i, sample in enumerate(samples):
        then = [earlier[i]["generation"] if i < len(earlier) else ""] if earlier else []
        row = [sample["prompt"], sample.get("reference") or "", *then, sample["generation"]]
        if score is not None:
            row.append(format_cell(sample.get(score)))
        rows.append(row)
    if score is not None:
        header.append(score)
    return markdown_table(header, rows, left=len(header) - (score is not None), width=200)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return rows


def write_report(
    run_dir: Path,
    cfg: RunConfig,
    metrics: dict[str, Any],
    data_report: dict[str, Any],
    task_sections: list[str],
) -> str:
    train = metrics.get("train", {})
    lines = [f"# lmtune run: {run_dir.name}", ""]
    lines += [
        f"- model: `{cfg.model.name}`",
        f"- task: `{cfg.task.type}`",
        f"- method: `{cfg.method.name}` {_options(cfg.method.model_extra)}",
        f"- trainable parameters: {train.get('trainable_params', 0):,} of {train.get('total_params', 0):,} "
        f"({train.get('trainable_percent', 0):.3f}%)",
        f"- training: {train.get('epochs_completed', 0):.2f} epochs, {train.get('steps', 0)} steps, "
        f"{train.get('runtime_s', 0):.1f} s, {train.get('samples_per_second', 0):.1f} samples/s, "
        f"peak RSS {train.get('peak_rss_mb', 0):.0f} MB",
        f"- learning rate {cfg.train.learning_rate}, batch {cfg.train.batch_size}, "
        f"optimizer {cfg.train.optimizer}, scheduler {cfg.train.scheduler}",
        "",
        "## Metrics",
        "",
        *metrics_table(metrics),
        "",
    ]
    if training_curves_png(read_log(run_dir / "train_log.jsonl"), run_dir / "training_curves.png"):
        lines += ["![training curves](training_curves.png)", ""]
    lines += task_sections
    lines += ["## Data", "", *_data_lines(data_report), ""]
    text = "\n".join(lines)
    write_text(run_dir / "report.md", text)
    return text


def _options(options: dict[str, Any] | None) -> str:
    if not options:
        return ""
    return "(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"


def _data_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    rows = report.get("rows", {})
    if rows:
        lines.append("- rows: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
    if report.get("carved_from_train"):
        lines.append("- carved from train (stratified, seeded): " + ", ".join(report["carved_from_train"]))
    for key in (
        "dropped_empty_train",
        "dropped_duplicates_train",
        "duplicates_in_train",
        "overlap_train_test",
        "overlap_train_validation",
        "truncated_train",
    ):
        if report.get(key):
            lines.append(f"- {key.replace('_', ' ')}: {report[key]}")
    balance = report.get("class_balance")
    if balance:
        labels = list(next(iter(balance.values())).keys())
        rows = ([label, *(balance[s].get(label, 0) for s in balance)] for label in labels)
        lines += ["", *markdown_table(["label", *balance], rows)]
    return lines


# peft's auto class for each peft task type whose head carries labels.
_PEFT_AUTO_CLASSES = {
    "SEQ_CLS": "AutoPeftModelForSequenceClassification",
    "TOKEN_CLS": "AutoPeftModelForTokenClassification",
}


def _plain_peft_usage(cfg: RunConfig, run_dir: Path) -> str:
    """How a plain peft client gets the run's labels (from `model/head_config.json`)."""
    from lmtune.tasks import get_task_class

    auto_class = _PEFT_AUTO_CLASSES.get(get_task_class(cfg.task.type).peft_task_type or "")
    if auto_class is None or not cfg.data.labels:
        return ""
    return f"""
`model/head_config.json` holds the head's labels for plain peft clients:

```python
from peft import {auto_class}
from transformers import AutoConfig
head = AutoConfig.from_pretrained("{run_dir}/model/head_config.json")
model = {auto_class}.from_pretrained(
    "{run_dir}/model", id2label=head.id2label, label2id=head.label2id
)
```"""


def _lineage_lines(cfg: RunConfig) -> str:
    """ "Started from" lines for a run whose base is another lmtune run (chaining.py)."""
    from lmtune.chaining import lineage_of

    chain = lineage_of(cfg.model.name)
    if not chain:
        return ""
    steps = [f"`{Path(e['run']).name}` ({e['task']}, {e['method']})" for e in chain]
    return f"\n\nStarted from the run {' <- '.join(steps)} <- `{chain[-1]['model']}` (merged at each step)."


def write_model_card(
    run_dir: Path, cfg: RunConfig, metrics: dict[str, Any], method_saves_adapter: bool
) -> None:
    test = metrics.get("test", {})
    headline = ", ".join(f"{k} {test[k]:.4f}" for k in HEADLINE if isinstance(test.get(k), float))
    labels = cfg.data.labels or []
    packaged = find_packaged(cfg.model.name)
    base_id = packaged.hub_id if packaged is not None else cfg.model.name
    if method_saves_adapter:
        plain_peft = _plain_peft_usage(cfg, run_dir)
        usage = f"""```python
import lmtune
run = lmtune.load_run("{run_dir}")
print(run.predict(["an example text"]))
```

The adapter in `model/` is in peft's format (`PeftModel.from_pretrained(base_model, "model")`), with
the task head saved beside it; the base model is `{base_id}` with {len(labels)} labels.{plain_peft}"""
    else:
        usage = f"""```python
import lmtune
run = lmtune.load_run("{run_dir}")
print(run.predict(["an example text"]))

# or with plain transformers:
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("{run_dir}/model")
tokenizer = AutoTokenizer.from_pretrained("{run_dir}/model")
```"""
    text = f"""---
library_name: {"peft" if method_saves_adapter else "transformers"}
base_model: {base_id}
tags: [lmtune, {cfg.task.type}, {cfg.method.name}]
---

# {run_dir.name}

Fine-tuned from `{cfg.model.name}` for **{cfg.task.type}** with **{cfg.method.name}**
by [lmtune](https://pypi.org/project/lmtune/).{_lineage_lines(cfg)}

- labels: {", ".join(labels) if labels else "n/a"}
- test results: {headline or "n/a"}
- training data: `{cfg.data.train}`; see `report.md` for the data checks and per-class results,
  `config.yaml` for the exact configuration (rerun it with `lmtune train config.yaml`).

## Use

{usage}

## Limitations

Evaluated only on the data above; quality on other domains is unknown. Check `report.md`
for class balance and train/test overlap before trusting the numbers.
"""
    write_text(run_dir / "README.md", text)
