"""Preference tuning of decoders: DPO (with its IPO and robust losses), ORPO, SimPO and KTO, on TRL.

Data is `lmtune.data.preference`'s: pairwise records `{"prompt", "chosen", "rejected"}` (message
lists) for dpo, ipo, orpo and simpo; unpaired `{"prompt", "completion", "label"}` for kto. The
model, the chat template (the tokenizer's, ChatML when it has none) and `predict` (generation)
are the SFT task's (`CausalLmTask`). `tokenize` keeps the conversational records, which TRL's
trainers tokenize themselves, and adds `length` (for length-grouped batches) and `truncated`;
a prompt that leaves no answer token within `data.max_length` is an error naming its record.

Algorithms (`task.algorithm`) and the TRL 1.16 trainer each one runs:

- dpo: `DPOTrainer`, `loss_type` = `task.dpo_loss` (sigmoid, ipo, robust; robust reads
  `label_smoothing`, the assumed share of flipped labels);
- ipo: `DPOTrainer` with the ipo loss (the same as dpo with dpo_loss ipo);
- orpo: `trl.experimental.orpo.ORPOTrainer` (`beta` is ORPO's lambda);
- simpo: `trl.experimental.cpo.CPOTrainer` with `loss_type="simpo"` and no behaviour-cloning
  term (`cpo_alpha=0`), `simpo_gamma` the target margin;
- kto: `KTOTrainer`, `desirable_weight` / `undesirable_weight`.

ORPO and CPO (experimental in TRL 1.16) tokenize the rendered text in their own way (they add a
BOS and an EOS where missing); the evaluation scores every algorithm on DPO's tokens, so that
the numbers of different algorithms compare.

The reference model (dpo, ipo, kto). With a peft method it is the base model with the adapter
switched off: lmtune's adapters start as the identity, so that is the starting policy and no
second copy is held. TRL would copy the adapter into a frozen "ref" adapter; the trainer below
drops that copy unless the run continues a trained adapter (`model.from_run: continue`), whose
starting policy is base plus that adapter. With any other method (full, freeze, ...) TRL loads
a frozen copy of the base model from its directory, or, with `precompute_ref_log_probs`, runs
the model once over the data before training and keeps only the log-probs.

Evaluation (validation, test, the training-time evaluations and `baseline`) is written here, not
taken from TRL: TRL's figures are per-batch means of a trainer's own loss pass, while a finished
run is evaluated without a trainer (`lmtune eval`), exactly over the split, the same way for
every algorithm, before training too, and selects checkpoints by it. Every completion is
scored by its summed log-probability under the policy, batch by batch (only the completion
positions are projected onto the vocabulary, never a whole split's logits). Rewards follow the
algorithm, as TRL logs them: `beta * (log p - log p_ref)` for dpo, ipo and kto (0 before
training, by definition), `beta * mean token log p` for the reference-free orpo and simpo.
Pairwise metrics: reward accuracy (chosen reward > rejected), mean chosen / rejected rewards and
margin, and the policy's mean log-prob of chosen and rejected (`logp_accuracy`: chosen more
likely). KTO: the mean reward of desirable and undesirable completions and `reward_accuracy`,
the share whose reward has the label's sign. The reference log-probs are those `baseline`
measured on the untuned model (cached per token sequence); where it did not run (`lmtune eval`
on a finished run) they come from the adapter switched off, or from the base model, loaded once.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, model_validator

from lmtune.data.preference import (
    check_prompt_lengths,
    pairwise_report,
    read_preference_file,
    unpaired_report,
)
from lmtune.data.readers import read_table
from lmtune.data.splits import Carving, SplitRecords
from lmtune.errors import LmtuneError
from lmtune.evaluation.report import written_baseline
from lmtune.tasks.base import (
    EvalResult,
    PreparedData,
    Task,
    batches_of,
    inference_batches,
    model_device,
    records_dataset,
)
from lmtune.tasks.causal_lm import (
    LOGITS_BUDGET_BYTES,
    CausalLmTask,
    GenerationEvalOptions,
    ensure_chat_template,
)
from lmtune.tasks.reward_model import pad_id

logger = logging.getLogger(__name__)

ALGORITHMS = ("dpo", "ipo", "orpo", "simpo", "kto")
# Rewards without a reference model: beta times the policy's mean token log-prob.
REFERENCE_FREE = ("orpo", "simpo")
# TRL's defaults, except SimPO's: the SimPO paper's beta 2 and gamma 1 (TRL's CPO defaults, 0.1 and
# 0.5, are CPO's).
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1}
# Options only some algorithms read, and their defaults where they apply.
OWN_OPTIONS: dict[str, tuple[tuple[str, ...], Any]] = {
    "dpo_loss": (("dpo",), "sigmoid"),
    "label_smoothing": (("dpo",), 0.1),
    "simpo_gamma": (("simpo",), 1.0),
    "desirable_weight": (("kto",), 1.0),
    "undesirable_weight": (("kto",), 1.0),
    "precompute_ref_log_probs": (("dpo", "ipo", "kto"), False),
}
Message = dict[str, str]
# The columns of report.md's preference table.
PAIR_COLUMNS = (
    "reward_accuracy",
    "reward_margin",
    "reward_chosen",
    "reward_rejected",
    "logp_chosen",
    "logp_rejected",
)
UNPAIRED_COLUMNS = (
    "reward_accuracy",
    "reward_margin",
    "reward_desirable",
    "reward_undesirable",
    "logp_desirable",
    "logp_undesirable",
)


class PreferenceOptions(GenerationEvalOptions):
    model_config = ConfigDict(extra="forbid")
    algorithm: Literal["dpo", "ipo", "orpo", "simpo", "kto"] = Field(
        default="dpo", description="dpo, ipo, orpo, simpo (pairwise data) or kto (unpaired data)."
    )
    beta: float | None = Field(
        default=None,
        gt=0,
        description="Strength of the preference term (dpo/ipo/kto: pull towards the reference; orpo: "
        "lambda; simpo: reward scale). Default 0.1, simpo 2.0.",
    )
    dpo_loss: Literal["sigmoid", "ipo", "robust"] | None = Field(
        default=None, description="dpo only: the loss (default sigmoid)."
    )
    label_smoothing: float | None = Field(
        default=None,
        ge=0,
        lt=0.5,
        description="dpo_loss robust only: assumed share of flipped preference labels (default 0.1).",
    )
    simpo_gamma: float | None = Field(
        default=None, ge=0, description="simpo only: target reward margin (default 1.0)."
    )
    desirable_weight: float | None = Field(
        default=None, gt=0, description="kto only: weight of desirable examples' loss (default 1)."
    )
    undesirable_weight: float | None = Field(
        default=None, gt=0, description="kto only: weight of undesirable examples' loss (default 1)."
    )
    # Measured on the shared 2-core CPU: SmolLM2-135M LoRA, 2 epochs, 14 steps: the steps 33% faster,
    # the whole run with the precompute pass 5-22% (22.1-24.6 s against 25.8-28.5 s); tiny Llama,
    # LoRA and full, 3 epochs: the steps 25-45% faster, the whole run faster in 9 of 12 interleaved
    # pairs. One epoch gains nothing (the same reference passes, done up front): off by default.
    precompute_ref_log_probs: bool | None = Field(
        default=None,
        description="dpo/ipo/kto: compute the reference log-probs once before training instead of "
        "at every step (no frozen copy in memory with full fine-tuning; default false).",
    )

    @model_validator(mode="after")
    def _own_options_apply(self) -> PreferenceOptions:
        for name, (algorithms, _) in OWN_OPTIONS.items():
            if getattr(self, name) is not None and self.algorithm not in algorithms:
                raise ValueError(
                    f"option '{name}' does not apply to algorithm '{self.algorithm}' "
                    f"(only to {', '.join(algorithms)})"
                )
        if self.label_smoothing is not None and self.dpo_loss != "robust":
            # TRL 1.16's sigmoid loss has no label smoothing (conservative DPO became `robust`).
            raise ValueError(
                "option 'label_smoothing' applies to dpo_loss 'robust' only; set dpo_loss: robust"
            )
        return self

    def settings(self) -> dict[str, Any]:
        """beta and the options of the chosen algorithm, defaults filled in (what config.yaml records)."""
        out: dict[str, Any] = {"beta": self.beta if self.beta is not None else DEFAULT_BETA[self.algorithm]}
        for name, (algorithms, default) in OWN_OPTIONS.items():
            if self.algorithm in algorithms:
                out[name] = getattr(self, name) if getattr(self, name) is not None else default
        if out.get("dpo_loss") != "robust":
            out.pop("label_smoothing", None)
        return out


# ---- tokens -------------------------------------------------------------------------------------
def chat_ids(tokenizer: Any, messages: list[Message], generation_prompt: bool) -> list[int]:
    """Token ids of the rendered conversation, as TRL's preference trainers tokenize it."""
    encoded = tokenizer.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
    )
    return list(encoded["input_ids"])


def encode_answers(
    tokenizer: Any, prompt: list[Message], answers: list[list[Message]]
) -> tuple[list[int], list[list[int]]]:
    """The prompt's ids and each answer's, split where the rendered prompt and prompt + answer stop
    agreeing (TRL's `common_prefix_length`, as `DPOTrainer` and `KTOTrainer` split them)."""
    from trl.data_utils import common_prefix_length

    prompt_ids = chat_ids(tokenizer, prompt, True)
    full = [chat_ids(tokenizer, [*prompt, *answer], False) for answer in answers]
    n = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return prompt_ids[:n], [ids[n:] for ids in full]


def sequence_key(ids: list[int]) -> bytes:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).digest()


class CompletionCollator:
    """Sequences padded on the left, so that every completion ends at the last column: the model
    then projects only the last columns onto the vocabulary (`logits_to_keep`). Position ids count
    from each sequence's first real token."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        keep = max(f["completion"] for f in features)
        ids, mask, positions, completion = [], [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append([self.pad_token_id] * pad + list(f["input_ids"]))
            mask.append([0] * pad + [1] * len(f["input_ids"]))
            positions.append([0] * pad + list(range(len(f["input_ids"]))))
            completion.append([0] * (keep - f["completion"]) + [1] * f["completion"])
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor(mask),
            "position_ids": torch.tensor(positions),
            "completion_mask": torch.tensor(completion),
        }


def _keeps_logits(model: Any) -> bool:
    from lmtune.training.attention import pretrained_model

    inner = pretrained_model(model)
    return inner is not None and "logits_to_keep" in inspect.signature(inner.forward).parameters


def sequence_logps(
    task: Task, model: Any, features: list[dict[str, Any]], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's summed completion log-prob under `model` and its completion length.

    `features` hold `input_ids` (prompt + completion) and `completion` (how many of the last ids
    are the completion). Only the completion positions are projected onto the vocabulary, and the
    batch's rows are capped so that their logits stay within `LOGITS_BUDGET_BYTES`.
    """
    vocab = model.get_output_embeddings().weight.shape[0]

    def rows(width: int) -> int:
        return max(1, min(batch_size, LOGITS_BUDGET_BYTES // (width * vocab * 4)))

    sums = np.zeros(len(features))
    counts = np.array([f["completion"] for f in features])
    keep_logits = _keeps_logits(model)
    pad = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    for index, batch in inference_batches(task, model, features, CompletionCollator(pad), rows, drop=()):
        completion = batch.pop("completion_mask")
        k = completion.shape[1]
        extra = {"logits_to_keep": k + 1} if keep_logits else {}
        logits = model(**batch, use_cache=False, **extra).logits[:, -(k + 1) : -1].float()
        targets = batch["input_ids"][:, -k:]
        token_logps = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        sums[index] = (token_logps * completion).sum(dim=1).double().cpu().numpy()
    return sums, counts


# ---- metrics ------------------------------------------------------------------------------------
def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 6) if values.size else None


def pair_metrics(rewards: np.ndarray, logps: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    """Metrics of (pairs, 2) arrays whose columns are (chosen, rejected)."""
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    token = logps / np.maximum(counts, 1)
    return {
        "pairs": len(rewards),
        "reward_accuracy": _mean((chosen > rejected).astype(float)),
        "reward_chosen": _mean(chosen),
        "reward_rejected": _mean(rejected),
        "reward_margin": _mean(chosen - rejected),
        "logp_chosen": _mean(logps[:, 0]),
        "logp_rejected": _mean(logps[:, 1]),
        "logp_margin": _mean(logps[:, 0] - logps[:, 1]),
        "logp_accuracy": _mean((logps[:, 0] > logps[:, 1]).astype(float)),
        "token_logp_chosen": _mean(token[:, 0]),
        "token_logp_rejected": _mean(token[:, 1]),
    }


def unpaired_metrics(rewards: np.ndarray, logps: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """KTO's metrics: rewards of desirable vs undesirable completions and the share of rewards whose
    sign is the label's (positive for desirable, negative for undesirable; 0 counts as wrong)."""
    desirable, undesirable = rewards[labels], rewards[~labels]
    right = np.where(labels, rewards > 0, rewards < 0)
    des_mean, und_mean = _mean(desirable), _mean(undesirable)
    margin = round(des_mean - und_mean, 6) if des_mean is not None and und_mean is not None else None
    return {
        "examples": len(rewards),
        "desirable": int(labels.sum()),
        "undesirable": int((~labels).sum()),
        "reward_accuracy": _mean(right.astype(float)),
        "reward_desirable": des_mean,
        "reward_undesirable": und_mean,
        "reward_margin": margin,
        "logp_desirable": _mean(logps[labels]),
        "logp_undesirable": _mean(logps[~labels]),
    }


# ---- TRL trainers -------------------------------------------------------------------------------
@functools.cache
def preference_trainer_class(algorithm: str) -> type:
    """`LmtuneTrainer` mixed into the TRL trainer of `algorithm` (built on first use: importing TRL
    takes seconds, and validating a config imports this module)."""
    from lmtune.deferred_bitsandbytes import defer_bitsandbytes

    defer_bitsandbytes()  # TRL imports peft, which would import bitsandbytes
    from trl import DPOTrainer, KTOTrainer
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    base = _preference_trainer_base()

    class LmtuneDPOTrainer(base, DPOTrainer):
        """DPO and IPO."""

    class LmtuneKTOTrainer(base, KTOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            args_ = kwargs["args"]
            # KTO's KL term pairs each completion with a neighbour's within fixed batches, which
            # TRL builds once in dataset order and reads back only in that order. The order is
            # shuffled once (seeded) so that batches mix desirable and undesirable examples.
            args_.train_sampling_strategy = "sequential"
            kwargs["train_dataset"] = kwargs["train_dataset"].shuffle(seed=args_.seed)
            super().__init__(*args, **kwargs)

    class _PairColumnsTrainer(base):
        """ORPO and CPO batches hold chosen_* and rejected_* columns instead of input_ids."""

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            for side in ("chosen", "rejected"):
                ids, mask = inputs.get(f"{side}_input_ids"), inputs.get(f"{side}_attention_mask")
                if isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor):
                    self.real_tokens += int(mask.sum())
                    self.padded_tokens += ids.numel()
            return super().training_step(model, inputs, *args, **kwargs)

    class LmtuneORPOTrainer(_PairColumnsTrainer, ORPOTrainer):
        pass

    class LmtuneCPOTrainer(_PairColumnsTrainer, CPOTrainer):
        """SimPO (CPO's simpo loss)."""

    classes = {"dpo": LmtuneDPOTrainer, "ipo": LmtuneDPOTrainer, "kto": LmtuneKTOTrainer}
    classes |= {"orpo": LmtuneORPOTrainer, "simpo": LmtuneCPOTrainer}
    return classes[algorithm]


def drop_reference_copy(model: Any) -> None:
    """Delete the frozen "ref" adapter that TRL adds beside a peft model's adapter, if there is one."""
    config = getattr(model, "peft_config", None)
    if config and "ref" in config:
        model.delete_adapter("ref")


@functools.cache
def _preference_trainer_base() -> type:
    from lmtune.training.trainer import LmtuneTrainer

    class PreferenceTrainer(LmtuneTrainer):
        """What every preference trainer adds to TRL's: the adapter-off reference, the task's
        metrics in each evaluation (what checkpoints and early stopping are judged by), no model
        card and no telemetry of TRL's."""

        def __init__(self, *args: Any, task: Any = None, method: Any = None, **kwargs: Any) -> None:
            # TRL renders the records with the template (a tokenization-cache hit skips tokenize).
            ensure_chat_template(kwargs["processing_class"])
            # The eval records as lmtune tokenized them (ORPO and CPO turn theirs into text).
            self.raw_eval_dataset = kwargs.get("eval_dataset")
            super().__init__(*args, task=task, method=method, **kwargs)
            self.preference_task = task
            # TRL copies a peft model's adapter into a frozen "ref" adapter. A fresh lmtune adapter
            # is the identity, so the base with the adapter off is that reference, without a copy
            # in memory or in every checkpoint; a continued adapter keeps its copy while it trains.
            if not task.continues_adapter():
                drop_reference_copy(self.model)

        def train(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().train(*args, **kwargs)
            finally:
                drop_reference_copy(self.model)  # not part of the trained model

        def evaluation_loop(
            self,
            dataloader: Any,
            description: str,
            prediction_loss_only: bool | None = None,
            ignore_keys: list[str] | None = None,
            metric_key_prefix: str = "eval",
        ) -> Any:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            if self.raw_eval_dataset is not None:
                batch_size = self.args.per_device_eval_batch_size
                reference = getattr(self, "ref_model", None)
                metrics = self.preference_task.preference_metrics(
                    self.model, self.processing_class, self.raw_eval_dataset, batch_size, reference
                )
                output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in metrics.items()})
            return output

    return PreferenceTrainer


def config_class(algorithm: str) -> type:
    from lmtune.deferred_bitsandbytes import defer_bitsandbytes

    defer_bitsandbytes()
    if algorithm in ("dpo", "ipo"):
        from trl import DPOConfig

        return DPOConfig
    if algorithm == "kto":
        from trl import KTOConfig

        return KTOConfig
    if algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig
    from trl.experimental.cpo import CPOConfig

    return CPOConfig


# ---- the task -----------------------------------------------------------------------------------
class PreferenceTask(CausalLmTask):
    name: ClassVar[str] = "preference"
    description: ClassVar[str] = (
        "Preference tuning of decoders on TRL: dpo (sigmoid, ipo, robust), ipo, orpo, simpo, kto."
    )
    Options = PreferenceOptions
    # The reward margin, not the accuracy: the accuracy soon reaches 1 on easy data, and between
    # checkpoints that tie on it the best-model choice keeps the earliest.
    default_metric: ClassVar[str] = "reward_margin"
    greater_is_better: ClassVar[bool] = True
    # TRL computes its own losses over its own batches: neither lmtune's item-count normalisation
    # nor labelled-logits projection applies. Prompt learning is refused: the evaluation scores
    # left-padded rows by their position ids, which peft's virtual tokens do not keep.
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"bf16-on-cpu", "chat-generation", "mixed-adapter-batches"}
    )

    def __init__(self, cfg: Any) -> None:
        # Task's, not CausalLmTask's: preference pairs are never packed (TRL's collators pad them).
        Task.__init__(self, cfg)
        self.labels = None
        self.packing = False
        # Reference log-prob of each scored token sequence (see `reference_logps`).
        self._reference: dict[bytes, float] = {}
        self._base_model: Any = None
        if self.options.algorithm == "kto" and cfg.train.batch_size < 2:
            raise LmtuneError(
                "algorithm kto needs train.batch_size of at least 2: its KL estimate pairs each "
                "completion with another prompt of the same batch",
                hint="set train.batch_size to 2 or more",
            )

    @property
    def pairwise(self) -> bool:
        return self.options.algorithm != "kto"

    @property
    def answer_fields(self) -> tuple[str, ...]:
        return ("chosen", "rejected") if self.pairwise else ("completion",)

    def resolved_options(self) -> dict[str, Any]:
        return self.options.settings()

    # ---- data: the hooks of Task.prepare_data ------------------------------------------------
    def prepare_data(self) -> PreparedData:
        return Task.prepare_data(self)  # no packing to resolve

    def read_records(self, path: str, split: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        kind = "pairwise" if self.pairwise else "unpaired"
        return read_preference_file(path, kind, split, fmt=self.cfg.data.format)

    def overlap_key(self, record: dict[str, Any]) -> str:
        fields = ("prompt", *self.answer_fields)
        return json.dumps([record[f] for f in fields], ensure_ascii=False, sort_keys=True)

    def carving(self) -> Carving:
        if self.pairwise:
            # Pairs of one prompt stay together: a held-out prompt is never one trained on.
            return Carving(
                group=lambda r: json.dumps(r["prompt"], ensure_ascii=False, sort_keys=True),
                group_noun="prompts",
            )
        return Carving(strata=lambda r: r["label"])

    def data_report(self, prepared: SplitRecords) -> dict[str, Any]:
        describe = pairwise_report if self.pairwise else unpaired_report
        return {
            "formats": {split: info.get("formats") for split, info in prepared.infos.items()},
            **prepared.summary(self.overlap_key),
            "preference": {split: describe(records) for split, records in prepared.records.items()},
        }

    def to_dataset(self, records: list[dict[str, Any]]) -> Any:
        columns = {"prompt": "messages", **dict.fromkeys(self.answer_fields, "messages")}
        return records_dataset(
            records, {**columns, **({} if self.pairwise else {"label": "bool"}), "where": "text"}
        )

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        """Prompts for `lmtune predict`: preference records (their prompts), `prompt` records, or
        what SFT reads (a .txt file of lines, alpaca/messages/sharegpt records)."""
        if Path(path).suffix.lower() in (".txt", ".text"):
            return super().read_inputs(path)
        table = read_table(path, self.cfg.data.format)
        columns = {c.lower() for c in table.columns}
        if {"chosen", "rejected"} & columns or "label" in columns:
            kind = "pairwise" if "chosen" in columns else "unpaired"
            records, _ = read_preference_file(path, kind, None, fmt=self.cfg.data.format)
            return [{"messages": r["prompt"]} for r in records]
        if "prompt" in columns:
            prompts = [row.get("prompt") for row in table.rows]
            items = [{"text": p} if isinstance(p, str) else {"messages": p} for p in prompts]
            for i, item in enumerate(items):
                self.check_input(i, item)
            return items
        return super().read_inputs(path)

    # ---- tokens -------------------------------------------------------------------------------
    def encode_records(self, dataset: Any, tokenizer: Any) -> list[tuple[list[int], list[list[int]]]]:
        """Each record's prompt ids and answer ids (before truncation); a prompt that leaves no
        answer token within data.max_length is an error naming the record."""
        ensure_chat_template(tokenizer)
        rows = [dict(row) for row in dataset]
        encoded = [encode_answers(tokenizer, r["prompt"], [r[f] for f in self.answer_fields]) for r in rows]
        check_prompt_lengths(rows, [len(prompt) for prompt, _ in encoded], self.cfg.data.max_length)
        return encoded

    def tokenize(self, dataset: Any, tokenizer: Any) -> Any:
        """The records as TRL's trainers take them (they tokenize them again, the same way), plus
        `length` (prompt and longest answer, truncated) and `truncated` (an answer was cut)."""
        max_length = self.cfg.data.max_length
        full = [
            len(p) + max(len(a) for a in answers) for p, answers in self.encode_records(dataset, tokenizer)
        ]
        truncated = [n > max_length for n in full]
        if any(truncated):
            logger.warning(
                "%d of %d records are longer than data.max_length=%d: their answers are cut",
                sum(truncated),
                len(full),
                max_length,
            )
        return dataset.add_column("length", [min(n, max_length) for n in full]).add_column(
            "truncated", truncated
        )

    def collator(self, tokenizer: Any) -> Any:
        return None  # TRL's preference collators

    def forward_batches(self, tokenizer: Any, dataset: Any, batch_size: int, count: int) -> list[dict]:
        """Prompt + answer sequences, left-padded as the evaluation scores them."""
        features, _ = self._features(dataset, tokenizer)
        batches = batches_of(features, CompletionCollator(pad_id(tokenizer)), batch_size, count)
        return [{k: v for k, v in b.items() if k != "completion_mask"} for b in batches]

    def trainer_spec(self) -> Any:
        from lmtune.training.trainer import TrainerSpec

        algorithm, s = self.options.algorithm, self.options.settings()
        arguments: dict[str, Any] = {
            "beta": s["beta"],
            "max_length": self.cfg.data.max_length,
            # A policy with dropout scores its completions with noise the reference does not have:
            # TRL turns every dropout off (LoRA's too) unless the run asks for a rate.
            "disable_dropout": self.cfg.train.dropout is None,
        }
        if algorithm in ("dpo", "ipo"):
            arguments["loss_type"] = [s["dpo_loss"] if algorithm == "dpo" else "ipo"]
            arguments["label_smoothing"] = s.get("label_smoothing", 0.0)
        if algorithm == "kto":
            arguments |= {
                "desirable_weight": s["desirable_weight"],
                "undesirable_weight": s["undesirable_weight"],
            }
        if "precompute_ref_log_probs" in s:
            arguments["precompute_ref_log_probs"] = s["precompute_ref_log_probs"]
        if algorithm == "simpo":
            arguments |= {"loss_type": "simpo", "simpo_gamma": s["simpo_gamma"], "cpo_alpha": 0.0}
        return TrainerSpec(
            trainer_class=preference_trainer_class(algorithm),
            arguments_class=config_class(algorithm),
            arguments=arguments,
        )

    # ---- evaluation ---------------------------------------------------------------------------
    def _features(self, dataset: Any, tokenizer: Any) -> tuple[list[dict[str, Any]], int]:
        """Scored sequences (record by record, answer by answer, truncated to data.max_length)
        and how many records had an answer cut."""
        max_length = self.cfg.data.max_length
        features, truncated = [], 0
        for prompt, answers in self.encode_records(dataset, tokenizer):
            truncated += any(len(prompt) + len(a) > max_length for a in answers)
            for answer in answers:
                ids = (prompt + answer)[:max_length]
                features.append({"input_ids": ids, "completion": len(ids) - len(prompt)})
        return features, truncated

    def reference_logps(
        self, model: Any, features: list[dict[str, Any]], batch_size: int, reference_model: Any = None
    ) -> np.ndarray:
        """The reference's log-prob of each sequence: cached (what `baseline` measured), else the
        model with its adapter off, else `reference_model`, else the base model, loaded once."""
        keys = [sequence_key(f["input_ids"]) for f in features]
        missing = [i for i, key in enumerate(keys) if key not in self._reference]
        if missing:
            todo = [features[i] for i in missing]
            if _is_peft(model):
                with model.disable_adapter():
                    values = sequence_logps(self, model, todo, batch_size)[0]
            else:
                values = sequence_logps(self, reference_model or self._load_base(model), todo, batch_size)[0]
            self._reference.update({keys[i]: float(v) for i, v in zip(missing, values, strict=True)})
        return np.array([self._reference[key] for key in keys])

    def _load_base(self, like: Any) -> Any:
        from lmtune.models import MODEL_CONSTRUCTION_LOCK, resolve_model

        if self._base_model is None:
            m = self.cfg.model
            path = resolve_model(m.name, m.revision, m.trust_remote_code, m.from_run).path
            with MODEL_CONSTRUCTION_LOCK:
                base = self.build_model(path, fresh_head=False)
            self._base_model = base.to(model_device(like)).eval()
        return self._base_model

    def preference_metrics(
        self,
        model: Any,
        tokenizer: Any,
        dataset: Any,
        batch_size: int,
        reference_model: Any = None,
        is_reference: bool = False,
    ) -> dict[str, Any]:
        """The split's reward and log-prob metrics (module docstring). `is_reference`: `model` is the
        reference itself (the untuned model of `baseline`); its log-probs are kept for later."""
        features, truncated = self._features(dataset, tokenizer)
        logps, counts = sequence_logps(self, model, features, batch_size)
        beta = self.options.settings()["beta"]
        if self.options.algorithm in REFERENCE_FREE:
            rewards = beta * logps / np.maximum(counts, 1)
        else:
            if is_reference:
                self._reference.update(
                    {sequence_key(f["input_ids"]): float(v) for f, v in zip(features, logps, strict=True)}
                )
            rewards = beta * (logps - self.reference_logps(model, features, batch_size, reference_model))
        if self.pairwise:
            metrics = pair_metrics(rewards.reshape(-1, 2), logps.reshape(-1, 2), counts.reshape(-1, 2))
        else:
            metrics = unpaired_metrics(rewards, logps, np.array(dataset["label"], dtype=bool))
        return {**metrics, "truncated": truncated}

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        metrics = self.preference_metrics(model, tokenizer, dataset, batch_size)
        scores, records = self.generation_eval(model, tokenizer, dataset, batch_size)
        details = {"samples": self.report_samples(records)}
        return EvalResult(metrics={**metrics, **scores}, details=details, records=records)

    def baseline(self, model: Any, tokenizer: Any, splits: dict[str, Any], batch_size: int) -> dict[str, Any]:
        """The untuned model on test (rewards 0 where they are relative to it). It is the reference,
        so its log-probs on validation and test are kept for every later evaluation."""
        if "validation" in splits and self.options.algorithm not in REFERENCE_FREE:
            self.preference_metrics(model, tokenizer, splits["validation"], batch_size, is_reference=True)
        metrics = self.preference_metrics(model, tokenizer, splits["test"], batch_size, is_reference=True)
        scores, records = self.generation_eval(model, tokenizer, splits["test"], batch_size)
        return {**metrics, **scores, "samples": self.report_samples(records)}

    def reference_prompts(self, dataset: Any, limit: int) -> list[tuple[int, dict[str, Any], str]]:
        """(row, prompt, the chosen or a desirable answer) of the first `limit` records."""
        answer = self.answer_fields[0]
        pairs: list[tuple[int, dict[str, Any], str]] = []
        for row, record in enumerate(dataset):
            if len(pairs) >= limit:
                break
            if self.pairwise or record["label"]:
                pairs.append((row, {"messages": record["prompt"]}, record[answer][-1]["content"]))
        return pairs

    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        """A table of the reward and log-prob metrics, before training (test) and after."""
        rows = [(f"{split}", result.metrics) for split, result in results.items()]
        before = written_baseline(run_dir)
        if before:
            rows.insert(0, ("test, before training", before))
        keys = PAIR_COLUMNS if self.pairwise else UNPAIRED_COLUMNS
        lines = [f"### Preference metrics ({self.options.algorithm})", ""]
        lines += ["| split | " + " | ".join(k.replace("_", " ") for k in keys) + " |"]
        lines += ["|---" + "|---:" * len(keys) + "|"]
        lines += [f"| {name} | " + " | ".join(_cell(m.get(k)) for k in keys) + " |" for name, m in rows]
        return [*lines, "", *super().report_sections(results, run_dir)]


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
