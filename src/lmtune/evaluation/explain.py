"""Token attributions: how much each input token moved one output of a run's model.

What is explained is declared by the task (`Task.attribution_row`, capability
`token-attributions`): the input as one model row, the words its tokens form, the positions
that are not explained (special tokens, a generated answer) and the targets, each a scalar
read from the model's output (a class probability, an entity's summed logits, a span's start
logit, an answer's log-probability). This module only attributes those scalars:

- `ig` (default): integrated gradients (Sundararajan et al., 2017) on the output of the input
  embedding layer (captum's `LayerIntegratedGradients`), from a baseline row in which every
  explained token is the pad token and every other position keeps its token. The scores of a
  target sum to value(input) - value(baseline) up to the reported convergence `delta`
  (completeness), and unexplained positions score exactly 0.
- `rollout`: attention rollout (Abnar & Zuidema, 2020), the product of the head-averaged
  attention maps with the residual added, read at the positions the target looks from. It needs
  no gradients but ignores the values and the head: it is the same for every class and far less
  faithful (compare with `explain_faithfulness`); it is there for a quick look.

Records (`explain`) are plain JSON: the input, the task's own prediction, the tokens, the
words, and per target its value, the baseline value, the delta and one score per token and
per word. `explain_render` writes them as HTML, terminal colour and report sections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmtune.errors import LmtuneError

if TYPE_CHECKING:
    from torch import nn

    from lmtune.tasks.base import Task

EXPLAIN_METHODS = ("ig", "rollout")
REDUCTIONS = ("sum", "l2")
CAPABILITY = "token-attributions"


@dataclass(frozen=True)
class ExplainSettings:
    """How attributions are computed (the flags of `lmtune explain`, the fields of POST /explain)."""

    method: str = "ig"
    # Riemann/Gauss-Legendre steps of the path integral: 32 keeps |delta| small for classifiers of
    # MiniLM size (more steps, smaller delta, proportionally more time).
    n_steps: int = 32
    # Per token, the attribution over the embedding's dimensions: "sum" keeps the sign (and
    # completeness); "l2" is the magnitude only.
    reduce: str = "sum"
    # Tokens per forward of the path integral: the internal batch is this divided by the row's
    # length, so a long input never holds n_steps full rows of activations at once.
    token_budget: int = 8192
    target: str | None = None

    def __post_init__(self) -> None:
        if self.method not in EXPLAIN_METHODS:
            raise LmtuneError(
                f"unknown explanation method '{self.method}'", hint=f"use one of {', '.join(EXPLAIN_METHODS)}"
            )
        if self.reduce not in REDUCTIONS:
            raise LmtuneError(
                f"unknown reduction '{self.reduce}'", hint=f"use one of {', '.join(REDUCTIONS)}"
            )
        if not 1 <= self.n_steps <= 512:
            raise LmtuneError(f"n_steps must be between 1 and 512, got {self.n_steps}")
        if self.token_budget < 1:
            raise LmtuneError(f"token_budget must be >= 1, got {self.token_budget}")


@dataclass
class Word:
    """A word of an input field, and the row positions of its tokens."""

    text: str
    field: str  # the input key it comes from ("text", "context", "prompt", "answer", ...)
    start: int  # character offsets in that field (-1 where unknown)
    end: int
    positions: list[int]


@dataclass
class AttributionTarget:
    """One scalar to explain: `value(model_output)` has one entry per row of the batch."""

    name: str
    output: str  # what the value is: "probability", "logit", "log-probability"
    value: Callable[[Any], torch.Tensor]
    # Positions whose outputs the value reads (attention rollout starts there).
    focus: list[int]
    # The value reads no position, so tokens may be deleted from the row (faithfulness).
    erasable: bool = False


@dataclass
class ExplainRow:
    """One input as one model row (what `Task.attribution_row` returns)."""

    item: dict[str, Any]
    prediction: dict[str, Any]
    features: dict[str, list[int]]  # input_ids, attention_mask, token_type_ids ...
    tokens: list[str]
    words: list[Word]
    # Positions kept as they are in the baseline and never explained: special tokens, an answer.
    fixed: list[bool]
    targets: list[AttributionTarget]
    note: str | None = None
    # Forward arguments besides the tensors (a decoder's logits_to_keep, use_cache=False).
    forward_kwargs: dict[str, Any] = field(default_factory=dict)
    # Most rows per forward the outputs allow (a decoder's vocabulary-wide logits), None: no limit.
    batch_limit: int | None = None


@dataclass
class Attribution:
    """The scores of one target: per token, and the values that check them."""

    target: AttributionTarget
    scores: list[float]
    value: float
    baseline_value: float | None = None
    delta: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---- what the task hooks share ------------------------------------------------------------------
def baseline_token_id(tokenizer: Any) -> int:
    """The token an explained position takes in the baseline: pad ("no information" to a model
    trained with padding), else mask, unk or EOS."""
    for name in ("pad_token_id", "mask_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def special_positions(tokenizer: Any, ids: Sequence[int]) -> list[bool]:
    """True where the id is a special token ([CLS], [SEP], <|im_start|> ...): never explained."""
    special = set(tokenizer.all_special_ids)
    return [i in special for i in ids]


def words_of_encoding(enc: Any, index: int, fields: Sequence[tuple[str, str]]) -> list[Word]:
    """Words of row `index` of a fast tokenizer's encoding: tokens of one word (word_ids) of one
    sequence (sequence_ids) merged, with their characters in the field; `fields[s]` is sequence
    s's (field name, text)."""
    words: list[Word] = []
    seen: dict[tuple[int, int], Word] = {}
    offsets = enc["offset_mapping"][index]
    for p, (word, sequence) in enumerate(zip(enc.word_ids(index), enc.sequence_ids(index), strict=True)):
        if word is None or sequence is None:
            continue
        start, end = offsets[p]
        known = seen.get((sequence, word))
        if known is None:
            known = seen[(sequence, word)] = Word("", fields[sequence][0], start, end, [])
            words.append(known)
        known.positions.append(p)
        known.start, known.end = min(known.start, start), max(known.end, end)
    for w in words:
        text = dict(fields)[w.field]
        w.text = text[w.start : w.end]
    return words


def words_of_split(
    enc: Any,
    index: int,
    words: Sequence[str],
    field_name: str,
    spans: Sequence[tuple[int, int]] | None = None,
) -> list[Word]:
    """Words of a pre-split input (`is_split_into_words`): each word's tokens by word_ids;
    `spans` are the words' character offsets in the field where it was a text."""
    found: dict[int, Word] = {}
    for p, w in enumerate(enc.word_ids(index)):
        if w is not None:
            start, end = spans[w] if spans is not None else (-1, -1)
            found.setdefault(w, Word(words[w], field_name, start, end, [])).positions.append(p)
    return [found[w] for w in sorted(found)]


def row_tensors(row: ExplainRow, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([v], device=device) for k, v in row.features.items()}


# ---- attribution --------------------------------------------------------------------------------
def explain(
    task: Task,
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[dict[str, Any]],
    settings: ExplainSettings | None = None,
    options: Any = None,
) -> list[dict[str, Any]]:
    """One JSON record per input: its prediction, tokens, words and each target's scores.

    `options` are the task's validated prediction options (a decoder's generation settings).
    Raises `LmtuneError` if the task declares no `token-attributions` or there is no input.
    """
    settings = settings or ExplainSettings()
    require_explainable(task)
    if not items:
        raise LmtuneError("nothing to explain", hint="pass --text 'some text' or --input FILE")
    records = []
    for item in items:
        row = task.attribution_row(model, tokenizer, item, settings.target, options)
        records.append(to_record(row, attribute_row(model, tokenizer, row, settings), settings))
    return records


def require_explainable(task: Task) -> None:
    task.require(
        CAPABILITY, "explanations", hint="classification, NER, question answering and SFT runs explain"
    )


def attribute_row(
    model: nn.Module, tokenizer: Any, row: ExplainRow, settings: ExplainSettings
) -> list[Attribution]:
    """The attributions of every target of `row` by the settings' method."""
    model.eval()
    if settings.method == "rollout":
        rollout = attention_rollout(model, row)
        return [rollout_scores(model, row, rollout, target) for target in row.targets]
    return [integrated_gradients(model, tokenizer, row, target, settings) for target in row.targets]


def integrated_gradients(
    model: nn.Module, tokenizer: Any, row: ExplainRow, target: AttributionTarget, settings: ExplainSettings
) -> Attribution:
    """Integrated gradients of `target` on the input embeddings, reduced to one score per token."""
    from captum.attr import LayerIntegratedGradients

    from lmtune.tasks.base import model_device

    tensors = row_tensors(row, model_device(model))
    ids = tensors.pop("input_ids")
    keys = list(tensors)
    base_id = baseline_token_id(tokenizer)
    baseline = torch.tensor(
        [[t if fixed else base_id for t, fixed in zip(row.features["input_ids"], row.fixed, strict=True)]],
        device=ids.device,
    )

    def forward(input_ids: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        arguments = dict(zip(keys, extra, strict=True))
        return target.value(model(input_ids=input_ids, **arguments, **row.forward_kwargs))

    layer = LayerIntegratedGradients(forward, model.get_input_embeddings())
    internal = max(1, min(settings.n_steps, settings.token_budget // max(1, ids.shape[1])))
    internal = min(internal, row.batch_limit or internal)
    # The caller may sit under inference_mode (a server thread, a predict loop): gradients need out.
    with torch.inference_mode(False), torch.enable_grad():
        attributions, delta = layer.attribute(
            ids,
            baselines=baseline,
            additional_forward_args=tuple(tensors.values()),
            n_steps=settings.n_steps,
            internal_batch_size=internal,
            return_convergence_delta=True,
        )
        with torch.no_grad():
            values = forward(torch.cat([ids, baseline]), *(torch.cat([t, t]) for t in tensors.values()))
    per_token = attributions[0].float()
    reduced = per_token.sum(-1) if settings.reduce == "sum" else per_token.norm(dim=-1)
    scores = [0.0 if fixed else float(s) for s, fixed in zip(reduced.tolist(), row.fixed, strict=True)]
    return Attribution(target, scores, float(values[0]), float(values[1]), float(delta.reshape(-1)[0]))


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """The model with eager attention for this block (SDPA and flash kernels return no weights)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(inner, "set_attn_implementation")
    if switch:
        inner.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            inner.set_attn_implementation(before)


def attention_rollout(model: nn.Module, row: ExplainRow) -> torch.Tensor:
    """Rollout (positions x positions): how much each output position draws on each input token,
    through every layer's head-averaged attention plus the residual (Abnar & Zuidema, 2020)."""
    from lmtune.tasks.base import model_device

    tensors = row_tensors(row, model_device(model))
    with eager_attention(model), torch.no_grad():
        out = model(**tensors, **row.forward_kwargs, output_attentions=True)
    attentions = getattr(out, "attentions", None)
    if not attentions:
        raise LmtuneError(
            f"{type(model).__name__} returns no attention weights, so attention rollout cannot run",
            hint="use --method ig",
        )
    length = tensors["input_ids"].shape[1]
    eye = torch.eye(length, device=tensors["input_ids"].device)
    rollout = eye
    for layer in attentions:
        mixed = 0.5 * layer[0].float().mean(0) + 0.5 * eye
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    return rollout


def rollout_scores(
    model: nn.Module, row: ExplainRow, rollout: torch.Tensor, target: AttributionTarget
) -> Attribution:
    """The rollout rows of the target's focus positions, averaged; and the target's value."""
    from lmtune.tasks.base import model_device

    focus = target.focus or [0]
    scores = rollout[focus].mean(0).tolist()
    with torch.no_grad():
        value = float(target.value(model(**row_tensors(row, model_device(model)), **row.forward_kwargs))[0])
    return Attribution(
        target, [0.0 if f else float(s) for s, f in zip(scores, row.fixed, strict=True)], value
    )


# ---- records ------------------------------------------------------------------------------------
def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def to_record(row: ExplainRow, attributions: list[Attribution], settings: ExplainSettings) -> dict[str, Any]:
    """The JSON record of one input (what JSONL, HTML, the terminal and POST /explain show)."""
    explanations = []
    for a in attributions:
        explanations.append(
            {
                "target": a.target.name,
                "output": a.target.output,
                "value": _rounded(a.value),
                "baseline_value": _rounded(a.baseline_value),
                "delta": _rounded(a.delta),
                "token_scores": [round(s, 6) for s in a.scores],
                "word_scores": [round(sum(a.scores[p] for p in w.positions), 6) for w in row.words],
                **a.extra,
            }
        )
    record: dict[str, Any] = {
        "input": row.item,
        "prediction": row.prediction,
        "method": settings.method,
        "tokens": row.tokens,
        "words": [{"word": w.text, "field": w.field, "start": w.start, "end": w.end} for w in row.words],
        "explanations": explanations,
    }
    if row.note:
        record["note"] = row.note
    return record
