"""Causal language modelling: instruction/chat SFT and continued pre-training of GPT-style decoders.

Data (detected per file from its columns, or forced with `task.format`):

- alpaca: `instruction`, optional `input`, `output`, optional `system`
- messages: `{"messages": [{"role": "system|user|assistant", "content": ...}, ...]}`
- sharegpt: `{"conversations": [{"from": "human|gpt|system", "value": ...}, ...]}` (+ optional `system`)
- text: a `text` column; continued pre-training, loss on every token, long texts split into
  `data.max_length` chunks rather than truncated

Chat data is rendered with the tokenizer's own chat template. A tokenizer without one gets
`DEFAULT_CHAT_TEMPLATE` (ChatML layout, each turn closed by the tokenizer's EOS token so that
generation stops at EOS without new vocabulary); it is set on the tokenizer and so saved with
the run. Assistant tokens are found by rendering the conversation up to each assistant turn
(with the generation prompt) and up to the end of that turn: the text between the two is the
answer. Each segment is tokenized on its own, which is exactly what the model sees when it
generates after a rendered prompt. Only answer tokens carry labels (`train_on_prompt` labels
everything); each answer ends with EOS (appended when the template does not emit it), and
whatever the template writes after the EOS (ChatML's newline) is context, not a target.

Packing puts several examples into one row of at most `data.max_length` tokens (best-fit
decreasing). Rows carry `position_ids` that restart at every example and no attention mask:
transformers 5 (`masking_utils.find_packed_sequence_indices`, used by `create_causal_mask`)
then derives a block-diagonal causal mask from the position ids, so examples never attend
to each other, for eager, sdpa, flex and flash attention alike, provided no KV cache exists
(packed batches therefore pass `use_cache=False`). The first label of every example is -100,
so no example predicts the next one's first token.

Evaluation is the token-weighted mean cross-entropy over answer tokens (`eval_loss`) and its
exponential (`perplexity`), reduced per batch; logits are never accumulated. Chats that end in
an answer are also generated from greedily, for the first `task.generation_eval_samples` of a
split, and scored against that answer (`gen_exact_match`, `gen_rouge1/2/L`, `gen_bleu`, `gen_chrf`); the
untuned model is scored the same way on test, and report.md shows its samples beside the
tuned model's.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmtune.data import checks
from lmtune.data.preference import ROLES, SHAREGPT_ROLES, check_turn_fields, check_turn_order
from lmtune.data.readers import Table, read_table
from lmtune.data.splits import SplitRecords
from lmtune.errors import LmtuneError
from lmtune.evaluation.generation import generation_metrics
from lmtune.evaluation.report import samples_table, section, written_baseline
from lmtune.tasks.base import (
    EvalResult,
    PreparedData,
    Rows,
    Task,
    VersionedOptions,
    inference_batches,
    inference_context,
    model_device,
    records_dataset,
)
from lmtune.tasks.classification import apply_dropout

logger = logging.getLogger(__name__)

# ChatML layout (<|im_start|>role\n...), but every turn ends with the tokenizer's own EOS token
# instead of a literal "<|im_end|>": that string is not in most vocabularies, and adding it would
# need new, untrained embeddings. For tokenizers whose EOS is <|im_end|> (SmolLM2, Qwen) this is
# exactly ChatML.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

FORMATS = ("alpaca", "messages", "sharegpt", "text")
IGNORE = -100
# Upper bound on the logits of one forward pass in evaluation (rows x length x vocab x 4 bytes).
LOGITS_BUDGET_BYTES = 256 * 1024 * 1024


class GenerationEvalOptions(VersionedOptions):
    """How a decoder run with reference answers scores its generations (SFT, preference)."""

    omitted_at_default: ClassVar[tuple[str, ...]] = ("answer_format",)
    generation_eval_samples: int = Field(
        default=32,
        ge=0,
        le=10_000,
        description="Prompts with a reference answer (the first of each evaluated split) whose greedy "
        "generations are scored: exact match, ROUGE-L, BLEU; 0 turns the scoring off.",
    )
    sample_generations: int = Field(
        default=3, ge=0, le=20, description="Test prompts whose generations the report shows."
    )
    sample_max_new_tokens: int = Field(
        default=64, ge=1, le=2048, description="Length limit of the scored and the shown generations."
    )
    answer_format: Literal["text", "label", "entities"] = Field(
        default="text",
        description="What the reference answers are: free text; a class label (generative "
        "classification: gen_accuracy, gen_f1_macro); or entities as JSON {type: [entity, ...]} "
        "(generative NER: gen_entity_precision/recall/f1).",
    )


class CausalLmOptions(GenerationEvalOptions):
    format: Literal["auto", "alpaca", "messages", "sharegpt", "text"] = Field(
        default="auto", description="Data format; auto detects it per file from the columns."
    )
    train_on_prompt: bool = Field(
        default=False, description="Loss on every token, not only on the assistant's answers."
    )
    packing: Literal["auto"] | bool = Field(
        default="auto",
        description="Pack several examples into each max_length row (position ids restart per "
        "example, no attention across examples); auto: on where the architecture supports it.",
    )


class GenerationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(default=128, ge=1, le=2048, description="Most tokens to generate.")
    greedy: bool = Field(default=True, description="Greedy decoding; false samples.")
    temperature: float = Field(default=1.0, gt=0, le=5, description="Sampling temperature (greedy: false).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass (greedy: false).")
    system: str | None = Field(default=None, description="System prompt put before each prompt.")
    raw: bool = Field(
        default=False, description="Continue the text as is, without the chat template (pre-training runs)."
    )
    stop: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="Strings that end a generation (not included in it); at most 4.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        description="Seed of the sampling (greedy: false); the same request alone samples the same text.",
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: list[str]) -> list[str]:
        if any(not stop for stop in value):
            raise ValueError("a stop string must not be empty")
        return value


# ---- reading ------------------------------------------------------------------------------------
def detect_format(table: Table) -> str:
    """The data format of a file, from its columns."""
    columns = {c.lower() for c in table.columns}
    if "messages" in columns:
        return "messages"
    if "conversations" in columns:
        return "sharegpt"
    if "instruction" in columns and "output" in columns:
        return "alpaca"
    if "text" in columns:
        return "text"
    raise LmtuneError(
        f"{table.path}: cannot tell the data format from the columns ({', '.join(table.columns)})",
        hint="use alpaca (instruction/input/output), messages, sharegpt (conversations) or text columns, "
        "or set task.format",
    )


def _field(table: Table, index: int, name: str, *, required: bool) -> str | None:
    row = table.rows[index]
    key = next((k for k in row if k.lower() == name), name)
    value = row.get(key)
    if checks.is_missing(value) or (isinstance(value, str) and not value.strip()):
        if required:
            what = "missing" if key not in row else "empty"
            raise LmtuneError(
                f"{table.where(index, name)}: field '{name}' is {what}",
                hint=f"give every record a non-empty '{name}' or remove the record",
            )
        return None
    if not isinstance(value, str):
        raise LmtuneError(
            f"{table.where(index, name)}: expected text, got {type(value).__name__} {str(value)[:60]!r}"
        )
    return value


def _turns(table: Table, index: int, column: str) -> list[Any]:
    row = table.rows[index]
    key = next((k for k in row if k.lower() == column), column)
    value = row.get(key)
    if isinstance(value, str) and value.strip().startswith("["):
        try:  # CSV cells hold the list as JSON text
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise LmtuneError(f"{table.where(index, column)}: invalid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not value:
        raise LmtuneError(
            f"{table.where(index, column)}: expected a non-empty list of turns, got "
            f"{'nothing' if value is None else type(value).__name__}",
            hint=f"'{column}' must be a list of {{role, content}} objects",
        )
    return value


def check_conversation(messages: list[dict[str, str]], where: str, *, need_answer: bool = True) -> None:
    """Roles known, system first only, user/assistant alternating, ending with the assistant."""
    for j, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise LmtuneError(
                f"{where}, message {j + 1}: unknown role '{message['role']}'",
                hint=f"roles must be one of {', '.join(ROLES)}",
            )
    last = check_turn_order(messages, lambda j: f"{where}, message {j + 1}", "conversation")
    if need_answer and last != "assistant":
        raise LmtuneError(
            f"{where}: the conversation does not end with an assistant turn",
            hint="the last turn is what the model learns to answer",
        )


def _message(table: Table, index: int, column: str, j: int, turn: Any, role_key: str, text_key: str) -> dict:
    at = f"{table.where(index, column)}, message {j + 1}"
    if not isinstance(turn, dict):
        raise LmtuneError(f"{at}: expected an object with '{role_key}' and '{text_key}'")
    check_turn_fields(turn, role_key, text_key, at)
    return {"role": turn[role_key].strip().lower(), "content": turn[text_key]}


def parse_record(table: Table, index: int, fmt: str, *, need_answer: bool = True) -> dict[str, Any]:
    """One record as {"messages": [...]} (chat formats) or {"text": ...}, checked."""
    where = table.where(index)
    if fmt == "text":
        return {"messages": [], "text": _field(table, index, "text", required=True), "where": where}
    if fmt == "alpaca":
        instruction = _field(table, index, "instruction", required=True)
        extra = _field(table, index, "input", required=False)
        system = _field(table, index, "system", required=False)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction})
        output = _field(table, index, "output", required=need_answer)
        if output is not None:
            messages.append({"role": "assistant", "content": output})
        return {"messages": messages, "text": None, "where": where}
    if fmt == "messages":
        turns = _turns(table, index, "messages")
        messages = [_message(table, index, "messages", j, t, "role", "content") for j, t in enumerate(turns)]
        column = "messages"
    else:
        turns = _turns(table, index, "conversations")
        messages = []
        for j, turn in enumerate(turns):
            message = _message(table, index, "conversations", j, turn, "from", "value")
            if message["role"] not in SHAREGPT_ROLES:
                at = f"{table.where(index, 'conversations')}, message {j + 1}"
                raise LmtuneError(
                    f"{at}: unknown role '{message['role']}'",
                    hint=f"'from' must be one of {', '.join(SHAREGPT_ROLES)}",
                )
            message["role"] = SHAREGPT_ROLES[message["role"]]
            messages.append(message)
        system = _field(table, index, "system", required=False)
        if system and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": system})
        column = "conversations"
    check_conversation(messages, table.where(index, column), need_answer=need_answer)
    return {"messages": messages, "text": None, "where": where}


def prompt_and_reference(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str | None]:
    """The conversation before its last assistant turn, and that turn (None if it ends on the user)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


# ---- tokenization -------------------------------------------------------------------------------
def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template the default one; require an EOS token."""
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise LmtuneError(
            f"tokenizer {tokenizer.name_or_path} has no EOS token, so generation could never stop",
            hint="use a model whose tokenizer defines eos_token",
        )
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("tokenizer has no chat template: using lmtune's default (ChatML layout)")
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The rendered template already holds its special tokens (BOS etc.): add none.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_chat(
    tokenizer: Any, messages: list[dict[str, str]], where: str, train_on_prompt: bool
) -> tuple[list[int], list[int]]:
    """input_ids and labels of a conversation (labels -100 outside the answers)."""
    eos_id = tokenizer.eos_token_id
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for turn in answers:
        prompt = _render(tokenizer, messages[:turn], True)
        through = _render(tokenizer, messages[: turn + 1], False)
        if not prompt.startswith(done) or not through.startswith(prompt):
            raise LmtuneError(
                f"{where}: the chat template renders turn {turn + 1} differently once later turns follow "
                "(it is not prefix-consistent), so the answer tokens cannot be located",
                hint="train on single-turn data or use a model whose template keeps earlier turns unchanged",
            )
        prompt_ids = _ids(tokenizer, prompt[len(done) :])
        answer_ids = _ids(tokenizer, through[len(prompt) :])
        if eos_id in answer_ids:
            end = len(answer_ids) - answer_ids[::-1].index(eos_id)
            target, trailing = answer_ids[:end], answer_ids[end:]
        else:  # the template does not close the answer with EOS: generation could not stop
            target, trailing = [*answer_ids, eos_id], []
        ids += prompt_ids + target
        labels += (prompt_ids if train_on_prompt else [IGNORE] * len(prompt_ids)) + target
        # What follows the EOS (e.g. ChatML's newline) is context for the next turn, not a target.
        if turn != answers[-1]:
            ids += trailing
            labels += trailing if train_on_prompt else [IGNORE] * len(trailing)
        done = through
    return ids, labels


def encode_text(tokenizer: Any, text: str, max_length: int) -> list[list[int]]:
    """A document as chunks of at most max_length tokens, the last one ending with EOS."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    chunks = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    return [c for c in chunks if len(c) >= 2]


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: groups of example indices whose lengths sum to at most `capacity`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), sorted: bisect finds the tightest fit
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - lengths[i], len(bins) - 1))
        else:
            room, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (room - lengths[i], b))
    return bins


def packing_supported(model_path: str, trust_remote_code: bool = False) -> bool:
    """Whether the architecture derives packed-sequence masks from position ids.

    Every transformers 5 decoder built on `masking_utils.create_causal_mask` does; remote code
    and older architectures may not, and would silently let examples attend to each other.
    """
    import importlib

    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    if trust_remote_code:
        return False
    try:
        config = AutoConfig.from_pretrained(model_path)
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (KeyError, OSError, ValueError):
        return False
    module = importlib.import_module(model_class.__module__)
    return hasattr(module, "create_causal_mask")


class CausalLmCollator:
    """Pads rows on the right: an attention mask for plain rows, position ids for packed rows.

    Written here rather than `DataCollatorWithFlattening` because that one flattens the whole
    batch into a single row; without varlen flash kernels (CPU, sdpa/eager) attention then
    costs (batch x length)^2 instead of batch x length^2. Packed rows keep the batch dimension;
    their padding is one more "example" (its own position ids, labels -100), and the mask is
    left to transformers, which reads the example boundaries from the position ids (that needs
    `use_cache=False`, see below).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)
        packed = "position_ids" in features[0]
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        batch["position_ids" if packed else "attention_mask"] = []
        for f in features:
            n = len(f["input_ids"])
            pad = width - n
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE] * pad)
            if packed:
                batch["position_ids"].append(list(f["position_ids"]) + list(range(pad)))
            else:
                batch["attention_mask"].append([1] * n + [0] * pad)
        out: dict[str, Any] = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        if packed:
            # transformers looks for packed sequences only when there is no KV cache, and decoders
            # create an empty one whenever use_cache is on (config default, in training too):
            # the examples would then silently attend to each other.
            out["use_cache"] = False
        return out


class LeftPadCollator:
    """Prompts padded on the left, so that every prompt ends where generation starts."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = [[self.pad_token_id] * (width - len(f["input_ids"])) + f["input_ids"] for f in features]
        mask = [[0] * (width - len(f["input_ids"])) + [1] * len(f["input_ids"]) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


# ---- the task -----------------------------------------------------------------------------------
class CausalLmTask(Task):
    name: ClassVar[str] = "causal-lm"
    description: ClassVar[str] = (
        "Instruction/chat SFT and continued pre-training of decoders (alpaca, messages, sharegpt, text)."
    )
    Options = CausalLmOptions
    PredictOptions = GenerationOptions
    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    # A decoder's head is the pretrained LM head, usually tied to the input embeddings: it needs
    # no training, and training it would move the embeddings too (tens of millions of weights).
    # What freeze/bitfit/adapters train as "head" is the final norm in front of it.
    head_names: ClassVar[tuple[str, ...]] = ("norm", "ln_f", "final_layernorm", "norm_f")
    peft_head_names: ClassVar[tuple[str, ...]] = ()
    default_metric: ClassVar[str] = "eval_loss"
    prediction_view: ClassVar[str] = "generation"
    # SmolLM2-135M LoRA SFT: 1.5x the tokens/s in bf16 autocast on an AMX CPU, same eval loss.
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {
            "accepts-virtual-tokens",
            "loss-counts-items",
            "labelled-logits",
            "bf16-on-cpu",
            "chat-generation",
            "mixed-adapter-batches",
            "token-attributions",
        }
    )
    greater_is_better: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.labels = None
        packing = self.options.packing
        self.packing: bool | None = packing if isinstance(packing, bool) else None

    def resolved_options(self) -> dict[str, Any]:
        return {"packing": bool(self.packing)}

    # ---- data ---------------------------------------------------------------------------------
    def _read(self, path: str, *, need_answer: bool = True) -> tuple[list[dict[str, Any]], str]:
        table = read_table(path, self.cfg.data.format)
        fmt = self.options.format if self.options.format != "auto" else detect_format(table)
        return [parse_record(table, i, fmt, need_answer=need_answer) for i in range(len(table))], fmt

    def prepare_data(self) -> PreparedData:
        prepared = super().prepare_data()
        self._resolve_packing()
        prepared.report["packing"] = self.packing
        return prepared

    # ---- the hooks of Task.prepare_data -------------------------------------------------------------
    def read_records(self, path: str, split: str | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
        records, fmt = self._read(path)
        return records, {"format": fmt}

    def overlap_key(self, record: dict[str, Any]) -> str:
        if record["text"] is not None:
            return record["text"]
        return json.dumps(record["messages"], ensure_ascii=False, sort_keys=True)

    def data_report(self, prepared: SplitRecords) -> dict[str, Any]:
        formats = {split: info["format"] for split, info in prepared.infos.items()}
        return {"format": formats, **prepared.summary(self.overlap_key)}

    def continues_adapter(self) -> bool:
        """Whether training goes on from a finished run's adapter (`model.from_run: continue`):
        then that adapter, not the bare base, is the starting policy a reference keeps."""
        from lmtune.chaining import continues_adapter

        return continues_adapter(self.cfg.model)

    def to_dataset(self, records: list[dict[str, Any]]) -> Any:
        return records_dataset(records, {"messages": "messages", "text": "text", "where": "text"})

    def _resolve_packing(self) -> None:
        from lmtune.methods import get_method_class
        from lmtune.models import resolve_model

        m = self.cfg.model
        path = resolve_model(m.name, m.revision, m.trust_remote_code).path
        supported = packing_supported(path, m.trust_remote_code)
        if get_method_class(self.cfg.method.name).supports("virtual-tokens"):
            # peft's prompt learning drops position_ids, which keep packed examples apart.
            if self.options.packing is True:
                raise LmtuneError(
                    f"packing cannot be combined with method {self.cfg.method.name}: peft ignores the "
                    "position ids that keep packed examples apart",
                    hint="set task.packing to false (or auto)",
                )
            supported = False
        if self.options.packing is True and not supported:
            raise LmtuneError(
                f"packing is not supported for {m.name}: its attention does not separate packed "
                "examples by position ids",
                hint="set task.packing to false (or auto)",
            )
        self.packing = supported if self.options.packing == "auto" else bool(self.options.packing)

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        """Prompts: a .txt file (one per line) or alpaca/messages/sharegpt/text records."""
        file = Path(path)
        if file.suffix.lower() in (".txt", ".text") and self.cfg.data.format == "auto":
            if not file.is_file():
                read_table(path)  # raises the file-not-found error
            lines = [ln.strip() for ln in file.read_text(encoding="utf-8-sig").splitlines()]
            prompts = [{"text": ln} for ln in lines if ln]
            if not prompts:
                raise LmtuneError(f"{path}: the file is empty", hint="one prompt per line")
            return prompts
        records, _ = self._read(path, need_answer=False)
        out: list[dict[str, Any]] = []
        for r in records:
            if r["text"] is not None:
                out.append({"text": r["text"]})
            else:
                out.append({"messages": prompt_and_reference(r["messages"])[0]})
        return out

    def check_input(self, index: int, item: dict[str, Any]) -> None:
        at = f"input {index + 1}"
        if "messages" in item:
            messages = item["messages"]
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise LmtuneError(f"{at}: 'messages' must be a list of {{role, content}} objects")
            check_conversation(messages, at, need_answer=False)
            if not messages or messages[-1]["role"] != "user":
                raise LmtuneError(f"{at}: the conversation must end with a user turn to be answered")
        elif "instruction" in item:
            if not isinstance(item["instruction"], str) or not item["instruction"].strip():
                raise LmtuneError(f"{at}: 'instruction' must be non-empty text")
        elif not isinstance(item.get("text"), str) or not item["text"].strip():
            raise LmtuneError(f"{at}: expected a non-empty text (or 'messages' / 'instruction')")

    # ---- model --------------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> Any:
        from transformers import AutoConfig, AutoModelForCausalLM

        trust = self.cfg.model.trust_remote_code
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        apply_dropout(config, self.cfg.train.dropout)
        if getattr(config, "pad_token_id", None) is None:
            eos = getattr(config, "eos_token_id", None)
            config.pad_token_id = eos[0] if isinstance(eos, list) else eos
        return AutoModelForCausalLM.from_pretrained(path, config=config, trust_remote_code=trust)

    def encode(self, dataset: Any, tokenizer: Any) -> list[dict[str, Any]]:
        """Unpacked features: input_ids, labels, length, truncated (examples without targets dropped)."""
        ensure_chat_template(tokenizer)
        max_length = self.cfg.data.max_length
        features: list[dict[str, Any]] = []
        dropped = 0
        for row in dataset:
            if row["text"] is not None:
                for chunk in encode_text(tokenizer, row["text"], max_length):
                    features.append({"input_ids": chunk, "labels": list(chunk), "truncated": False})
                continue
            ids, labels = encode_chat(tokenizer, row["messages"], row["where"], self.options.train_on_prompt)
            truncated = len(ids) > max_length
            ids, labels = ids[:max_length], labels[:max_length]
            # Position 0 is never predicted, so an example needs a target after its first token.
            if all(label == IGNORE for label in labels[1:]):
                dropped += 1
                continue
            features.append({"input_ids": ids, "labels": labels, "truncated": truncated})
        if dropped:
            logger.warning(
                "%d examples dropped: their prompt fills data.max_length=%d, leaving no answer tokens",
                dropped,
                max_length,
            )
        if not features:
            raise LmtuneError(
                f"no example has answer tokens within data.max_length={max_length}",
                hint="raise data.max_length or shorten the prompts",
            )
        for f in features:
            f["length"] = len(f["input_ids"])
        return features

    def tokenize(self, dataset: Any, tokenizer: Any) -> Any:
        from datasets import Dataset

        features = self.encode(dataset, tokenizer)
        if self.packing:
            features = self._pack(features)
        columns = {key: [f[key] for f in features] for key in features[0]}
        return Dataset.from_dict(columns)

    def _pack(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for group in pack([f["length"] for f in features], self.cfg.data.max_length):
            ids: list[int] = []
            labels: list[int] = []
            positions: list[int] = []
            for i in sorted(group):
                f = features[i]
                ids += f["input_ids"]
                # No example learns to predict the first token of the one packed before it.
                labels += [IGNORE, *f["labels"][1:]]
                positions += list(range(f["length"]))
            rows.append(
                {
                    "input_ids": ids,
                    "labels": labels,
                    "position_ids": positions,
                    "truncated": any(features[i]["truncated"] for i in group),
                    "length": len(ids),
                    "examples": len(group),
                }
            )
        return rows

    def collator(self, tokenizer: Any) -> Any:
        return CausalLmCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    # ---- evaluation ---------------------------------------------------------------------------
    def loss(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> dict[str, float]:
        """Token-weighted mean cross-entropy over target tokens, and its perplexity."""
        features = self.encode(dataset, tokenizer)
        vocab = model.get_output_embeddings().weight.shape[0]

        def rows(width: int) -> int:
            return max(1, min(batch_size, LOGITS_BUDGET_BYTES // (width * vocab * 4)))

        total, count = 0.0, 0
        for _, batch in inference_batches(self, model, features, self.collator(tokenizer), rows, drop=()):
            labels = batch.pop("labels")
            # Prompt tuning prepends virtual positions: the input's logits are the last ones.
            seq_len = batch["input_ids"].shape[1]
            logits = model(**batch, use_cache=False).logits[:, -seq_len:-1].float()
            targets = labels[:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            ).item()
            count += int((targets != IGNORE).sum())
        mean = total / max(count, 1)
        return {
            "eval_loss": round(mean, 6),
            "perplexity": round(math.exp(min(mean, 50.0)), 4),
            "eval_tokens": count,
        }

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        metrics = self.loss(model, tokenizer, dataset, batch_size)
        scores, records = self.generation_eval(model, tokenizer, dataset, batch_size)
        details = {"samples": self.report_samples(records)}
        return EvalResult(metrics={**metrics, **scores}, details=details, records=records)

    def baseline(self, model: Any, tokenizer: Any, splits: dict[str, Any], batch_size: int) -> dict[str, Any]:
        metrics = self.loss(model, tokenizer, splits["test"], batch_size)
        scores, records = self.generation_eval(model, tokenizer, splits["test"], batch_size)
        loss = {"eval_loss": metrics["eval_loss"], "perplexity": metrics["perplexity"]}
        return {**loss, **scores, "samples": self.report_samples(records)}

    def reference_prompts(self, dataset: Any, limit: int) -> list[tuple[int, dict[str, Any], str]]:
        """(row, prompt, reference answer) of the first `limit` chats that end in an answer."""
        pairs: list[tuple[int, dict[str, Any], str]] = []
        for row, record in enumerate(dataset):
            if len(pairs) >= limit:
                break
            if record["text"] is None:
                prompt, reference = prompt_and_reference(record["messages"])
                if reference:
                    pairs.append((row, {"messages": prompt}, reference))
        return pairs

    def generation_eval(
        self, model: Any, tokenizer: Any, dataset: Any, batch_size: int
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Generation metrics of the first `generation_eval_samples` prompts with a reference, and
        a record {row, prompt, reference, generation} of each prompt generated from (the first
        `sample_generations` are the report's samples): one greedy pass serves both."""
        opts = self.options
        pairs = self.reference_prompts(dataset, max(opts.generation_eval_samples, opts.sample_generations))
        if not pairs:
            return {}, []
        generation = GenerationOptions(max_new_tokens=opts.sample_max_new_tokens)
        outputs = self.predict(model, tokenizer, [prompt for _, prompt, _ in pairs], batch_size, generation)
        hypotheses = [out["generation"] for out in outputs]
        references = [reference for _, _, reference in pairs]
        n = opts.generation_eval_samples
        scores = generation_metrics(hypotheses[:n], references[:n], opts.answer_format) if n else {}
        records = [
            {"row": row, "prompt": out["prompt"], "reference": reference, "generation": out["generation"]}
            for (row, _, reference), out in zip(pairs, outputs, strict=True)
        ]
        return scores, records

    def report_samples(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The report's (and metrics.json's) sample generations: the first `sample_generations`
        generation records, without their row."""
        shown = records[: self.options.sample_generations]
        return [{k: v for k, v in r.items() if k != "row"} for r in shown]

    # ---- generation ---------------------------------------------------------------------------
    def _prompt(
        self, item: dict[str, Any], opts: GenerationOptions
    ) -> tuple[list[dict[str, str]] | str, str]:
        """(messages or raw text, the prompt shown in the output) for one input."""
        if opts.raw and "text" in item:
            return item["text"], item["text"]
        if "messages" in item:
            messages = [dict(m) for m in item["messages"]]
        elif "instruction" in item:
            extra = item.get("input")
            content = f"{item['instruction']}\n\n{extra}" if extra else item["instruction"]
            messages = [{"role": "system", "content": item["system"]}] if item.get("system") else []
            messages.append({"role": "user", "content": content})
        else:
            messages = [{"role": "user", "content": item["text"]}]
        if opts.system and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": opts.system})
        return messages, messages[-1]["content"]

    def prompt_ids(
        self, tokenizer: Any, item: dict[str, Any], opts: GenerationOptions
    ) -> tuple[list[int], str]:
        """The token ids generation starts from (chat template applied unless raw), and the prompt
        as the output shows it."""
        ensure_chat_template(tokenizer)
        source, shown = self._prompt(item, opts)
        if isinstance(source, str):
            return list(tokenizer(source, add_special_tokens=True)["input_ids"]), shown
        return _ids(tokenizer, _render(tokenizer, source, True)), shown

    def generate_arguments(self, model: Any, tokenizer: Any, opts: GenerationOptions) -> dict[str, Any]:
        """What `model.generate` takes for these options (besides the inputs)."""
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        arguments: dict[str, Any] = {
            "max_new_tokens": opts.max_new_tokens,
            "do_sample": not opts.greedy,
            "eos_token_id": _eos_ids(model, tokenizer),
            "pad_token_id": pad_id,
        }
        if not opts.greedy:
            arguments |= {"temperature": opts.temperature, "top_p": opts.top_p}
        if opts.stop:
            arguments |= {"stop_strings": list(opts.stop), "tokenizer": tokenizer}
        return arguments

    def finished(
        self, tokenizer: Any, ids: list[int], eos_ids: list[int], opts: GenerationOptions
    ) -> dict[str, Any]:
        """One generated row as text: cut at EOS or the first stop string (which is left out), with
        its token count and why it ended ("stop" or "length"), as OpenAI's API reports them."""
        kept = _until_eos(ids, eos_ids)
        reason = "stop" if len(kept) < len(ids) and ids[len(kept)] in eos_ids else "length"
        text = tokenizer.decode(kept, skip_special_tokens=True)
        cuts = [text.find(stop) for stop in opts.stop if stop in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        return {"generation": text.strip(), "completion_tokens": len(kept), "finish_reason": reason}

    def generation_options(self, options: GenerationOptions) -> GenerationOptions:
        """The options a generation runs with (a task may add its own defaults)."""
        return options

    def generate_streaming(
        self, model: Any, tokenizer: Any, item: dict[str, Any], options: GenerationOptions, streamer: Any
    ) -> dict[str, Any]:
        """One generation whose text pieces go to `streamer` (transformers' TextIteratorStreamer)
        as they are decoded; returns what `predict` gives for the item. The streamer is always
        ended, so a reader never waits on a generation that failed."""
        options = self.generation_options(options)
        try:
            ids, shown = self.prompt_ids(tokenizer, item, options)
            arguments = self.generate_arguments(model, tokenizer, options)
            if options.seed is not None:
                torch.manual_seed(options.seed)
            inputs = torch.tensor([ids], device=model_device(model))
            with inference_context(self, model):
                out = model.generate(
                    input_ids=inputs, attention_mask=torch.ones_like(inputs), streamer=streamer, **arguments
                )
        finally:
            streamer.end()
        finished = self.finished(tokenizer, out[0, len(ids) :].tolist(), arguments["eos_token_id"], options)
        return {"prompt": shown, **finished, "prompt_tokens": len(ids)}

    def predict(self, model: Any, tokenizer: Any, inputs: Rows, batch_size: int, options: Any = None) -> Rows:
        opts = self.generation_options(
            options if isinstance(options, GenerationOptions) else GenerationOptions()
        )
        encoded = [self.prompt_ids(tokenizer, item, opts) for item in inputs]
        prompts = [{"input_ids": ids} for ids, _ in encoded]
        arguments = self.generate_arguments(model, tokenizer, opts)
        outputs: list[dict[str, Any]] = [{} for _ in prompts]
        collate = LeftPadCollator(arguments["pad_token_id"])
        for index, batch in inference_batches(self, model, prompts, collate, batch_size):
            if opts.seed is not None:
                torch.manual_seed(opts.seed)
            out = model.generate(**batch, **arguments)
            width = batch["input_ids"].shape[1]
            for row, i in zip(out[:, width:].tolist(), index, strict=True):
                outputs[i] = self.finished(tokenizer, row, arguments["eos_token_id"], opts)
        return [
            {"prompt": shown, **out, "prompt_tokens": len(ids)}
            for (ids, shown), out in zip(encoded, outputs, strict=True)
        ]

    # ---- explanations -------------------------------------------------------------------------
    def attribution_row(
        self, model: Any, tokenizer: Any, item: dict[str, Any], target: str | None, options: Any
    ) -> Any:
        """The prompt and its greedy answer (generated as `predict` generates) as one row; the
        target: the answer's summed token log-probability, explained on the prompt's tokens."""
        from lmtune.evaluation.explain import AttributionTarget, ExplainRow, Word, words_of_encoding

        if target is not None:
            raise LmtuneError(
                f"--target does not apply to task '{self.name}'", hint="the generated answer is explained"
            )
        self.check_input(0, item)
        given = options if isinstance(options, GenerationOptions) else GenerationOptions()
        opts = self.generation_options(given).model_copy(update={"greedy": True})
        ensure_chat_template(tokenizer)
        # What `prompt_ids` encodes, with offsets for the words.
        source, shown = self._prompt(item, opts)
        text = source if isinstance(source, str) else _render(tokenizer, source, True)
        enc = tokenizer([text], add_special_tokens=isinstance(source, str), return_offsets_mapping=True)
        prompt = list(enc["input_ids"][0])
        arguments = self.generate_arguments(model, tokenizer, opts)
        model.eval()
        with torch.no_grad():
            inputs = torch.tensor([prompt], device=model_device(model))
            out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), **arguments)
        generated = out[0, len(prompt) :].tolist()
        finished = self.finished(tokenizer, generated, arguments["eos_token_id"], opts)
        # An empty answer (EOS at once): explain the stop itself.
        answer = _until_eos(generated, arguments["eos_token_id"]) or generated[:1]
        ids = prompt + answer
        words = words_of_encoding(enc, 0, [("prompt", text)])
        words += [
            Word(tokenizer.decode([t]), "answer", -1, -1, [len(prompt) + i]) for i, t in enumerate(answer)
        ]
        special = set(tokenizer.all_special_ids)
        vocabulary = max(1, int(getattr(model.config, "vocab_size", 0) or len(tokenizer)))
        return ExplainRow(
            item=item,
            prediction={"prompt": shown, **finished, "prompt_tokens": len(prompt)},
            features={"input_ids": ids, "attention_mask": [1] * len(ids)},
            tokens=tokenizer.convert_ids_to_tokens(ids),
            words=words,
            # The answer stays as generated in the baseline: only the prompt is explained.
            fixed=[t in special for t in prompt] + [True] * len(answer),
            targets=[
                AttributionTarget(
                    "answer",
                    "log-probability",
                    _answer_log_prob(answer),
                    list(range(len(prompt) - 1, len(ids) - 1)),
                )
            ],
            # Only the positions that predict the answer are projected onto the vocabulary.
            forward_kwargs={"logits_to_keep": len(answer) + 1, "use_cache": False},
            batch_limit=max(1, 2**26 // (vocabulary * (len(answer) + 1))),
        )

    # ---- report -------------------------------------------------------------------------------
    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        """Sample generations of each split; on test beside the untuned model's."""
        before = written_baseline(run_dir)
        lines: list[str] = []
        for split, result in results.items():
            samples = result.details.get("samples") or []
            if samples:
                earlier = (before.get("samples") or []) if split == "test" else []
                lines += section(f"Sample generations ({split}, greedy)", samples_table(samples, earlier))
        return lines


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus any end-of-turn ids the model's generation config names."""
    ids = [tokenizer.eos_token_id]
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in config_eos if isinstance(config_eos, list) else [config_eos]:
        if value is not None and value not in ids:
            ids.append(int(value))
    return ids


def _answer_log_prob(answer: list[int]) -> Any:
    """The explained value of a generated answer: the sum of its tokens' log-probabilities, read
    from the last len(answer) + 1 positions' logits (`logits_to_keep`), the last one unused."""

    def value(output: Any) -> torch.Tensor:
        logits = output.logits[:, -len(answer) - 1 : -1].float()
        wanted = torch.tensor(answer, device=logits.device).expand(logits.shape[0], -1)
        return torch.log_softmax(logits, dim=-1).gather(-1, wanted[..., None])[..., 0].sum(-1)

    return value


def _until_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    for k, token in enumerate(ids):
        if token in eos_ids:
            return ids[:k]
    return ids
