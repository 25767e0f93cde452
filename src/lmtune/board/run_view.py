"""One run as the board's Run page shows it: metrics, curves, confusion matrices, per-class
tables, generations, the rendered report and model card, and the files to download.

Everything comes from the run directory `lmtune train` wrote (metrics.json's `details`,
train_log.jsonl, report.md, README.md, predictions/); nothing is recomputed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from markdown_it import MarkdownIt

from lmtune.board.index import IndexedRun
from lmtune.evaluation.predictions import prediction_files

# Log keys that are bookkeeping, not curves.
_NOT_CURVES = {"step", "epoch", "time_s", "total_flos"}
_NOT_CURVE_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")
_MAX_ARTEFACTS = 300


def run_detail(run: IndexedRun, root: Path) -> dict[str, Any]:
    """RunDetail (docs/board.md) of an indexed run."""
    directory, metrics = run.directory, run.metrics
    details = metrics.get("details") or {}
    path = run.row["path"]
    return {
        **run.row,
        "config": run.state.get("config") or {},
        "config_yaml": _text(directory / "config.yaml"),
        "metrics": {s: metrics[s] for s in ("validation", "test") if isinstance(metrics.get(s), dict)},
        "train": metrics.get("train") or {},
        "curves": read_curves(directory),
        "confusion": _confusions(details, _labels(metrics, directory)),
        "tables": _tables(details),
        "data_report": metrics.get("data") or {},
        "generations": _generations(details, metrics.get("baseline") or {}),
        "report_html": render_markdown(_text(directory / "report.md"), path),
        "model_card_html": render_markdown(_strip_front_matter(_text(directory / "README.md")), path),
        "artefacts": _artefacts(directory, path),
        "predictions": {split: _count_lines(p) for split, p in prediction_files(directory).items()},
        "view": playground_view(run),
    }


def read_curves(directory: Path) -> dict[str, Any]:
    """Curves: {"series": {name: {"x": [step], "y": [value]}}} from train_log.jsonl."""
    series: dict[str, dict[str, list]] = {}
    log = directory / "train_log.jsonl"
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written
        step = record.get("step")
        for key, value in record.items():
            if key in _NOT_CURVES or key.endswith(_NOT_CURVE_SUFFIXES) or key.startswith("train_"):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool) and step is not None:
                points = series.setdefault(key, {"x": [], "y": []})
                points["x"].append(step)
                points["y"].append(value)
    return {"series": series}


def _labels(metrics: dict[str, Any], directory: Path) -> list[str]:
    labels = (metrics.get("data") or {}).get("labels")
    if labels:
        return list(labels)
    info = directory / "model" / "lmtune.json"
    try:
        return list(json.loads(info.read_text(encoding="utf-8")).get("labels") or [])
    except (OSError, json.JSONDecodeError):
        return []


def _confusions(details: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    out = {}
    for split, detail in details.items():
        matrix = detail.get("confusion_matrix") if isinstance(detail, dict) else None
        if matrix and len(matrix) == len(labels):
            out[split] = {"labels": labels, "matrix": matrix}
    return out


def _tables(details: dict[str, Any]) -> list[dict[str, Any]]:
    """Every `{name: {column: scalar}}` entry of a split's details (per class, per entity type)."""
    tables = []
    for split, detail in details.items():
        if not isinstance(detail, dict):
            continue
        for key, value in detail.items():
            if not (isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values())):
                continue
            columns = list(next(iter(value.values())))
            cells = [v for row in value.values() for v in row.values()]
            if not all(isinstance(v, int | float | str | None) for v in cells):
                continue
            rows = [[name, *(row.get(c) for c in columns)] for name, row in value.items()]
            title = f"{key.replace('_', ' ')} ({split})"
            tables.append({"title": title, "columns": [key.removeprefix("per_"), *columns], "rows": rows})
    return tables


def _generations(details: dict[str, Any], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Test generations (validation when the run has no test split), with the untuned model's
    generation of the same prompt when the baseline has one."""
    samples = (details.get("test") or details.get("validation") or {}).get("samples") or []
    base_samples = [s for s in baseline.get("samples") or [] if isinstance(s, dict)]
    base = {s.get("prompt"): s.get("generation") for s in base_samples}
    rows = []
    for sample in samples:
        if isinstance(sample, dict) and "generation" in sample:
            prompt = sample.get("prompt")
            rows.append(
                {
                    "prompt": prompt,
                    "reference": sample.get("reference"),
                    "tuned": sample["generation"],
                    "base": base.get(prompt),
                }
            )
    return rows


def render_markdown(text: str, run_path: str) -> str:
    """Markdown as HTML with raw HTML disabled (a report cannot inject script), relative image
    and link targets pointed at the run's files."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def rewriting(rule_name: str, attr: str) -> Any:
        default = md.renderer.rules.get(rule_name)

        def rule(tokens: list, idx: int, options: Any, env: Any) -> str:
            target = str(tokens[idx].attrGet(attr) or "")
            if target and "://" not in target and not target.startswith(("#", "/", "mailto:")):
                tokens[idx].attrSet(attr, file_url(f"{run_path}/{target}"))
            if default is not None:
                return default(tokens, idx, options, env)
            return md.renderer.renderToken(tokens, idx, options, env)

        return rule

    md.renderer.rules["image"] = rewriting("image", "src")
    md.renderer.rules["link_open"] = rewriting("link_open", "href")
    return md.render(text) if text else ""


def file_url(path: str) -> str:
    return "/api/file?path=" + quote(path, safe="/")


def _strip_front_matter(text: str) -> str:
    """The model card without its YAML header (shown as a code block instead)."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end > 0:
            return "```yaml\n" + text[4:end] + "\n```\n" + text[end + 4 :]
    return text


def _artefacts(directory: Path, run_path: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.rglob("*")):
        if len(out) >= _MAX_ARTEFACTS:
            break
        if path.is_file() and not path.is_symlink():
            name = path.relative_to(directory).as_posix()
            out.append({"name": name, "size": path.stat().st_size, "url": file_url(f"{run_path}/{name}")})
    return out


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


def playground_view(run: IndexedRun) -> dict[str, Any]:
    """PlaygroundView: how the task's predictions are drawn and which inputs it asks for (the
    task class says; the board never tests a task's name)."""
    if run.config is None:
        return {"render": "record", "inputs": ["text"], "base_available": False}
    from lmtune.methods import get_method_class
    from lmtune.tasks import get_task_class

    task = get_task_class(run.config.task.type)
    streams = task.supports("chat-generation")
    base = streams and get_method_class(run.config.method.name).supports("peft-adapter")
    return {"render": task.prediction_view, "inputs": list(task.input_fields), "base_available": base}
