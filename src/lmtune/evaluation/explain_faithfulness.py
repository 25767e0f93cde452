"""Are the explanations faithful? Delete the tokens they rank highest and watch the output.

ERASER's two scores (DeYoung et al., 2020), for each target that reads no token position
(`AttributionTarget.erasable`: a class probability):

- comprehensiveness: value(input) - value(input without the top-k% tokens). High is good: the
  tokens the explanation names were the ones the output needed.
- sufficiency: value(input) - value(only the top-k% tokens, plus the special tokens). Low is good:
  those tokens alone keep the output.

Each is averaged over k in {10, 20, 50}% of the explained (non-special) tokens, at least one
token each, and measured the same way for k% tokens drawn at random (seeded): an explanation
is only worth reading where its comprehensiveness clearly beats random's.
Tokens are deleted, not masked, as ERASER does; both put the model off its training
distribution a little, deletion without inventing a token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from lmtune.errors import LmtuneError
from lmtune.evaluation.explain import (
    AttributionTarget,
    ExplainRow,
    ExplainSettings,
    attribute_row,
    require_explainable,
)

if TYPE_CHECKING:
    from torch import nn

    from lmtune.tasks.base import Task

FAITHFULNESS_KS = (0.1, 0.2, 0.5)
DEFAULT_ROWS = 100
METRICS = ("comprehensiveness", "sufficiency")


def faithfulness(
    task: Task,
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[dict[str, Any]],
    settings: ExplainSettings | None = None,
    *,
    ks: Sequence[float] = FAITHFULNESS_KS,
    seed: int = 0,
    limit: int = DEFAULT_ROWS,
) -> dict[str, Any]:
    """Comprehensiveness and sufficiency of the explanations on up to `limit` inputs (a seeded
    sample of them), beside the same for random tokens; what metrics.json's `explanations` holds."""
    settings = settings or ExplainSettings()
    require_explainable(task)
    if not items:
        raise LmtuneError("no rows to measure faithfulness on", hint="give a file with at least one row")
    rng = random.Random(seed)
    sample = list(items) if len(items) <= limit else rng.sample(list(items), limit)
    drops: dict[tuple[str, str, float], list[float]] = {}
    targets = 0
    for item in sample:
        row = task.attribution_row(model, tokenizer, item, settings.target, None)
        row.targets = [t for t in row.targets if t.erasable]
        if not row.targets:
            raise LmtuneError(
                f"the outputs task '{task.name}' explains read token positions, so tokens cannot be deleted "
                "to measure faithfulness",
                hint="faithfulness is measured for classification runs",
            )
        for attribution in attribute_row(model, tokenizer, row, settings):
            found = _row_drops(model, tokenizer, row, attribution.target, attribution.scores, ks, rng)
            for key, value in found.items():
                drops.setdefault(key, []).append(attribution.value - value)
            targets += bool(found)
    return _summary(drops, ks, settings, len(sample), targets, seed)


def _row_drops(
    model: nn.Module,
    tokenizer: Any,
    row: ExplainRow,
    target: AttributionTarget,
    scores: list[float],
    ks: Sequence[float],
    rng: random.Random,
) -> dict[tuple[str, str, float], float]:
    """The target's value with the top (and random) k% tokens deleted or kept alone, per k."""
    explained = [p for p, fixed in enumerate(row.fixed) if not fixed]
    if not explained:
        return {}
    ranked = sorted(explained, key=lambda p: scores[p], reverse=True)
    variants: list[tuple[tuple[str, str, float], list[int]]] = []
    for k in ks:
        n = max(1, round(k * len(explained)))
        for name, chosen in (("explanation", set(ranked[:n])), ("random", set(rng.sample(explained, n)))):
            deleted = [p for p in range(len(row.fixed)) if p not in chosen]
            alone = [p for p in range(len(row.fixed)) if p in chosen or row.fixed[p]]
            variants.append(((name, "comprehensiveness", k), deleted))
            variants.append(((name, "sufficiency", k), alone))
    values = _values(model, tokenizer, row, target, [positions for _, positions in variants])
    return {key: value for (key, _), value in zip(variants, values, strict=True)}


def _values(
    model: nn.Module, tokenizer: Any, row: ExplainRow, target: AttributionTarget, keep: list[list[int]]
) -> list[float]:
    """The target's value on copies of the row that keep only the given positions: one forward."""
    from lmtune.tasks.base import model_device

    features = {**row.features}
    features.setdefault("attention_mask", [1] * len(row.features["input_ids"]))
    width = max(len(positions) for positions in keep)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch: dict[str, list[list[int]]] = {key: [] for key in features}
    for positions in keep:
        for key, values in features.items():
            padding = pad_id if key == "input_ids" else 0
            batch[key].append([values[p] for p in positions] + [padding] * (width - len(positions)))
    device = model_device(model)
    with torch.no_grad():
        out = model(
            **{key: torch.tensor(rows, device=device) for key, rows in batch.items()}, **row.forward_kwargs
        )
    return [float(v) for v in target.value(out).tolist()]


def _summary(
    drops: dict[tuple[str, str, float], list[float]],
    ks: Sequence[float],
    settings: ExplainSettings,
    rows: int,
    targets: int,
    seed: int,
) -> dict[str, Any]:
    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 6) if values else 0.0

    def scores(name: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            metric: mean([v for k in ks for v in drops.get((name, metric, k), [])]) for metric in METRICS
        }
        out["per_k"] = {
            f"{round(100 * k)}%": {metric: mean(drops.get((name, metric, k), [])) for metric in METRICS}
            for k in ks
        }
        return out

    return {
        "method": settings.method,
        "n_steps": settings.n_steps if settings.method == "ig" else None,
        "rows": rows,
        "targets": targets,
        "k": [round(100 * k) for k in ks],
        "seed": seed,
        **scores("explanation"),
        "random": scores("random"),
    }
