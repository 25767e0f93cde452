"""Reward models: pairwise Bradley-Terry training of a one-output sequence-classification head.

Any model with a sequence-classification head can be a reward model, decoders and encoders:
the head has one output, the reward, and training minimises -log sigmoid(r_chosen - r_rejected)
over preference pairs (`lmtune.data.preference`, pairwise records). How a (prompt, answer)
becomes the model's input is `task.render`:

- chat (decoders): the whole conversation through the tokenizer's chat template (lmtune's ChatML
  default when it has none, as SFT); the head reads the last non-pad token, so the pad id is
  set on the model config. A conversation longer than `data.max_length` loses its beginning,
  not its end: the reward is read at the last token, and the answers are what a pair compares.
- text (encoders such as MiniLM): the prompt as plain text ("User: ...") and the answer as a
  text pair; a long pair loses the end of its prompt, or, when the answer alone is too long,
  tokens of both (longest first).
- auto: chat for decoder architectures, text for the others.

A prompt longer than `data.max_length` is therefore cut, not refused (as DPO must, which needs
answer tokens after the prompt): the answers are what a pair compares, and both lose the same
prompt tokens. Cut pairs are counted (`truncated_train` in the data report).

Training runs through TRL's `RewardTrainer` (its loss, its per-batch accuracy and margin logs),
with `LmtuneTrainer` mixed in. TRL takes the pairs pre-tokenized (`chosen_ids`/`rejected_ids`),
so tokenization is this task's and goes through lmtune's cache; the collator puts the chosen
sequences in the first half of a batch and the rejected ones in the second, as TRL's does, and
also pads BERT's token type ids, which TRL's collator drops. Evaluation and prediction score
every sequence on its own on the shared length-sorted inference loop: only the rewards are kept.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from lmtune.data.preference import ROLES, messages_text, pairwise_report, read_preference_file
from lmtune.data.readers import read_table
from lmtune.data.splits import SplitRecords
from lmtune.errors import LmtuneError
from lmtune.tasks.base import EvalResult, Rows, Task, inference_batches, records_dataset
from lmtune.tasks.causal_lm import check_conversation, ensure_chat_template
from lmtune.tasks.classification import labelled_head_config

Message = dict[str, str]
# What the Trainer's per-evaluation metrics report (TRL logs its own train-time accuracy and margin).
TRAINER_METRICS = ("accuracy", "margin", "chosen_reward", "rejected_reward")
# How much of a pair's texts metrics.json and the report show.
SHOWN_CHARS = 300


class RewardModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    render: Literal["auto", "chat", "text"] = Field(
        default="auto",
        description="How a conversation becomes the model's input: chat (the chat template, reward "
        "at the last token; decoders), text (prompt and answer as a text pair; encoders), or auto "
        "(chat for decoder architectures, text for the others).",
    )
    center_rewards_coefficient: float | None = Field(
        default=None,
        ge=0,
        description="Weight of a (r_chosen + r_rejected)^2 penalty that keeps rewards near zero "
        "(TRL's option; 0.01 is the recommended value).",
    )
    disable_dropout: bool = Field(
        default=True,
        description="Turn every dropout off while training (TRL's default: with dropout, the chosen "
        "and rejected answers of a pair see different noise, which blurs the margin the loss reads).",
    )
    report_pairs: int = Field(
        default=5, ge=0, le=50, description="Pairs with the lowest margin shown in the report, per split."
    )


# ---- metrics ------------------------------------------------------------------------------------
def pair_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
    """Pairwise accuracy (a tie counts as wrong, as in TRL), mean margin and rewards, and the
    Bradley-Terry loss -log sigmoid(margin), from each pair's two rewards."""
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    margin = chosen - rejected
    if not len(margin):
        raise LmtuneError("no preference pairs to evaluate", hint="give the split at least one pair")
    return {
        "accuracy": float(np.mean(margin > 0)),
        "margin": float(np.mean(margin)),
        "chosen_reward": float(np.mean(chosen)),
        "rejected_reward": float(np.mean(rejected)),
        "eval_loss": float(np.mean(np.logaddexp(0.0, -margin))),
        "pairs": len(margin),
    }


def is_decoder_architecture(path: str, trust_remote_code: bool = False) -> bool:
    """Whether the model at `path` is a decoder: transformers has a causal LM for its architecture
    and no masked LM (BERT-like encoders have both; T5-like encoder-decoders have neither)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    model_type = getattr(config, "model_type", None)
    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


# ---- batches ------------------------------------------------------------------------------------
class SequenceCollator:
    """Pads sequences on the right: input ids (with the pad id the model pools by), attention
    mask, and token type ids where the tokenizer gave them."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
        types = "token_type_ids" in features[0]
        if types:
            batch["token_type_ids"] = []
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
            if types:
                batch["token_type_ids"].append(list(f["token_type_ids"]) + [0] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def side(feature: dict[str, Any], answer: str) -> dict[str, Any]:
    """The chosen or rejected sequence of a tokenized pair."""
    sequence = {"input_ids": feature[f"{answer}_ids"]}
    if f"{answer}_token_type_ids" in feature:
        sequence["token_type_ids"] = feature[f"{answer}_token_type_ids"]
    return sequence


class PairCollator:
    """TRL's batch layout: the chosen sequences, then the rejected ones, padded together."""

    def __init__(self, pad_token_id: int) -> None:
        self.sequences = SequenceCollator(pad_token_id)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.sequences([side(f, "chosen") for f in features] + [side(f, "rejected") for f in features])


@functools.cache
def reward_trainer_class() -> type:
    """`LmtuneTrainer` mixed into TRL's `RewardTrainer` (built on first use: importing TRL takes
    seconds, and listing tasks imports this module)."""
    from trl import RewardTrainer

    from lmtune.training.trainer import LmtuneTrainer

    class LmtuneRewardTrainer(LmtuneTrainer, RewardTrainer):
        """TRL's Bradley-Terry loss and logs; lmtune's sampler, token counts, dropout keys."""

        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            result = super().compute_loss(model, inputs, *args, **kwargs)
            if not isinstance(result, tuple):  # training: the loss alone
                return result
            loss, outputs = result
            chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
            # One (chosen, rejected) row per pair: the evaluation loop concatenates batches (and
            # processes) row by row, so the task's metrics receive whole pairs.
            return loss, {"logits": torch.stack([chosen, rejected], dim=-1)}

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "eval_accuracy" in logs:
                # TRL would overwrite the task's exact accuracy and margin over the split with its
                # means of per-batch means.
                for key in ("accuracy", "margin"):
                    self._metrics["eval"].pop(key, None)
            super().log(logs, start_time)

    return LmtuneRewardTrainer


# ---- the task -----------------------------------------------------------------------------------
class RewardModelTask(Task, capabilities={"reward-scores"}):
    name: ClassVar[str] = "reward-model"
    description: ClassVar[str] = "Bradley-Terry reward model on preference pairs: decoders and encoders."
    Options = RewardModelOptions
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    head_names: ClassVar[tuple[str, ...]] = ("classifier", "score", "pooler", "pre_classifier")
    peft_head_names: ClassVar[tuple[str, ...]] = ("classifier", "score")
    default_metric: ClassVar[str] = "accuracy"
    prediction_view: ClassVar[str] = "score"
    input_fields: ClassVar[tuple[str, ...]] = ("prompt", "completion")
    greater_is_better: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.labels = None
        self.render: str | None = None if self.options.render == "auto" else self.options.render

    def resolved_render(self) -> str:
        """chat or text: the option, or for auto what the model's architecture says (once)."""
        if self.render is None:
            from lmtune.models import resolve_model

            m = self.cfg.model
            path = resolve_model(m.name, m.revision, m.trust_remote_code).path
            self.render = "chat" if is_decoder_architecture(path, m.trust_remote_code) else "text"
        return self.render

    def resolved_options(self) -> dict[str, Any]:
        return {"render": self.resolved_render()}

    # ---- the hooks of Task.prepare_data -------------------------------------------------------
    def read_records(self, path: str, split: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return read_preference_file(path, "pairwise", split, fmt=self.cfg.data.format)

    def overlap_key(self, record: dict[str, Any]) -> str:
        pair = [record["prompt"], record["chosen"], record["rejected"]]
        return json.dumps(pair, ensure_ascii=False, sort_keys=True)

    def data_report(self, prepared: SplitRecords) -> dict[str, Any]:
        return {
            **prepared.summary(self.overlap_key),
            "formats": {split: info.get("formats") for split, info in prepared.infos.items()},
            "pairs": {split: pairwise_report(records) for split, records in prepared.records.items()},
        }

    def to_dataset(self, records: list[dict[str, Any]]) -> Any:
        records = [{**r, "where": r.get("where", "")} for r in records]
        return records_dataset(
            records, {"prompt": "messages", "chosen": "messages", "rejected": "messages", "where": "text"}
        )

    # ---- tokenization -------------------------------------------------------------------------
    def _chat_ids(self, tokenizer: Any, messages: list[Message]) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        # The rendered template holds its special tokens already.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _text_encoding(
        self, tokenizer: Any, prompt: list[Message], answer: list[Message], truncate: bool
    ) -> dict[str, list[int]]:
        reply = "\n\n".join(m["content"] for m in answer)
        texts = (messages_text(prompt), reply) if prompt else (reply,)
        limits: dict[str, Any] = {}
        if truncate:
            max_length = self.cfg.data.max_length
            # Cut the prompt alone while the answer (with [CLS] and two [SEP]) leaves it a token.
            fits = prompt and len(tokenizer(reply)["input_ids"]) + 2 <= max_length
            limits = {"truncation": "only_first" if fits else "longest_first", "max_length": max_length}
        enc = tokenizer(*texts, **limits)
        return {key: list(enc[key]) for key in ("input_ids", "token_type_ids") if key in enc}

    def encode_one(
        self, tokenizer: Any, prompt: list[Message], answer: list[Message]
    ) -> tuple[dict[str, list[int]], bool]:
        """One (prompt, answer) as model inputs, and whether it was cut to data.max_length."""
        max_length = self.cfg.data.max_length
        if self.resolved_render() == "chat":
            ids = self._chat_ids(tokenizer, prompt + answer)
            return {"input_ids": ids[-max_length:]}, len(ids) > max_length
        enc = self._text_encoding(tokenizer, prompt, answer, truncate=False)
        if len(enc["input_ids"]) <= max_length:
            return enc, False
        return self._text_encoding(tokenizer, prompt, answer, truncate=True), True

    def prepare_tokenizer(self, tokenizer: Any) -> None:
        if self.resolved_render() == "chat":
            ensure_chat_template(tokenizer)

    def encode(self, dataset: Any, tokenizer: Any) -> list[dict[str, Any]]:
        """Tokenized pairs: chosen_ids/rejected_ids (TRL's names), token types, length, truncated."""
        self.prepare_tokenizer(tokenizer)
        features = []
        for record in dataset:
            feature: dict[str, Any] = {}
            truncated = False
            for answer in ("chosen", "rejected"):
                enc, cut = self.encode_one(tokenizer, record["prompt"], record[answer])
                feature[f"{answer}_ids"] = enc["input_ids"]
                if "token_type_ids" in enc:
                    feature[f"{answer}_token_type_ids"] = enc["token_type_ids"]
                truncated = truncated or cut
            # The sampler groups pairs by the longer side, which decides the padded width.
            feature["length"] = max(len(feature["chosen_ids"]), len(feature["rejected_ids"]))
            feature["truncated"] = truncated
            features.append(feature)
        return features

    def tokenize(self, dataset: Any, tokenizer: Any) -> Any:
        from datasets import Dataset

        features = self.encode(dataset, tokenizer)
        if not features:
            raise LmtuneError("no preference pairs to train on", hint="check the data files")
        return Dataset.from_dict({key: [f[key] for f in features] for key in features[0]})

    def collator(self, tokenizer: Any) -> Any:
        return PairCollator(pad_id(tokenizer))

    def trainer_spec(self) -> Any:
        from trl import RewardConfig

        from lmtune.training.trainer import TrainerSpec

        return TrainerSpec(
            trainer_class=reward_trainer_class(),
            arguments_class=RewardConfig,
            arguments={
                # Pairs are truncated (and counted) in `tokenize`; TRL would drop longer ones.
                "max_length": None,
                "disable_dropout": self.options.disable_dropout,
                "center_rewards_coefficient": self.options.center_rewards_coefficient,
            },
        )

    # ---- model --------------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> Any:
        from transformers import AutoModelForSequenceClassification

        config = labelled_head_config(path, ["reward"], self.cfg)
        config.problem_type = "regression"
        return AutoModelForSequenceClassification.from_pretrained(
            path, config=config, trust_remote_code=self.cfg.model.trust_remote_code
        )

    # ---- rewards and metrics ------------------------------------------------------------------
    def rewards(
        self, model: Any, tokenizer: Any, sequences: Sequence[dict[str, Any]], batch_size: int
    ) -> np.ndarray:
        """The reward of each tokenized sequence, in their order."""
        pad = pad_id(tokenizer)
        # The head pools the last token that is not the config's pad id: pad with that id, as
        # TRL's trainer makes it while training.
        model.config.get_text_config().pad_token_id = pad
        out = np.zeros(len(sequences), dtype=np.float64)
        for index, batch in inference_batches(self, model, sequences, SequenceCollator(pad), batch_size):
            out[index] = model(**batch, use_cache=False).logits.float().squeeze(-1).cpu().numpy()
        return out

    def pair_rewards(
        self, model: Any, tokenizer: Any, features: list[dict[str, Any]], batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        sequences = [side(f, "chosen") for f in features] + [side(f, "rejected") for f in features]
        scores = self.rewards(model, tokenizer, sequences, batch_size)
        return scores[: len(features)], scores[len(features) :]

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        chosen, rejected = self.pair_rewards(model, tokenizer, self.encode(dataset, tokenizer), batch_size)
        metrics = pair_metrics(chosen, rejected)
        records = [
            {
                "row": i,
                "prompt": messages_text(record["prompt"]),
                "chosen": record["chosen"][-1]["content"],
                "rejected": record["rejected"][-1]["content"],
                "chosen_reward": round(float(chosen[i]), 4),
                "rejected_reward": round(float(rejected[i]), 4),
                "margin": round(float(chosen[i] - rejected[i]), 4),
                "correct": bool(chosen[i] > rejected[i]),
            }
            for i, record in enumerate(dataset)
        ]
        hardest = np.argsort(chosen - rejected, kind="stable")[: self.options.report_pairs]
        pairs = [_shown(records[int(i)]) for i in hardest]
        return EvalResult(metrics=metrics, details={"lowest_margin_pairs": pairs}, records=records)

    def baseline(
        self, model: Any, tokenizer: Any, splits: dict[str, Any], batch_size: int
    ) -> dict[str, Any] | None:
        if "test" not in splits:
            return None
        metrics = self.evaluate(model, tokenizer, splits["test"], batch_size).metrics
        return {key: metrics[key] for key in (*TRAINER_METRICS, "eval_loss")}

    def trainer_metrics(self) -> Any:
        def compute(eval_pred: Any) -> dict[str, float]:
            # Rows of (chosen, rejected) rewards: see the trainer's compute_loss.
            pairs = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, 2)
            metrics = pair_metrics(pairs[:, 0], pairs[:, 1])
            return {key: metrics[key] for key in TRAINER_METRICS}

        return compute

    # ---- prediction ---------------------------------------------------------------------------
    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        """Pairs (any pairwise form of `lmtune.data.preference`, all checked) or single texts:
        records with `text`, `prompt` + `completion`, or `messages` ending with the answer."""
        table = read_table(path, self.cfg.data.format)
        if {"chosen", "rejected"} & set(table.columns):
            records, _ = read_preference_file(path, "pairwise", None, fmt=self.cfg.data.format)
            return [{key: r[key] for key in ("prompt", "chosen", "rejected")} for r in records]
        inputs = []
        for i, row in enumerate(table.rows):
            item = {key: row[key] for key in ("text", "prompt", "completion", "messages") if key in row}
            _check_item(item, table.where(i))
            inputs.append(item)
        if not inputs:
            raise LmtuneError(f"{path}: the file is empty", hint="one text or pair per record")
        return inputs

    def check_input(self, index: int, item: dict[str, Any]) -> None:
        _check_item(item, f"input {index + 1}")

    def predict(self, model: Any, tokenizer: Any, inputs: Rows, batch_size: int, options: Any = None) -> Rows:
        """A reward per text or completion; for a pair both rewards, the margin and the preferred one."""
        if not inputs:
            return []
        self.prepare_tokenizer(tokenizer)
        sequences: list[dict[str, list[int]]] = []
        for item in inputs:
            prompt, answers = _prompt_and_answers(item)
            sequences += [self.encode_one(tokenizer, prompt, answer)[0] for answer in answers]
        scores = iter(self.rewards(model, tokenizer, sequences, batch_size).tolist())
        rows = []
        for item in inputs:
            row = {key: value for key, value in item.items() if key != "where"}
            if "chosen" in item:
                chosen, rejected = next(scores), next(scores)
                preferred = "chosen" if chosen > rejected else "rejected" if rejected > chosen else "tie"
                row |= {
                    "chosen_score": round(chosen, 6),
                    "rejected_score": round(rejected, 6),
                    "margin": round(chosen - rejected, 6),
                    "preferred": preferred,
                }
            else:
                row["score"] = round(next(scores), 6)
            rows.append(row)
        return rows

    # ---- report -------------------------------------------------------------------------------
    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        from lmtune.evaluation.report import markdown_table, section

        lines: list[str] = []
        for split, result in results.items():
            pairs = result.details.get("lowest_margin_pairs") or []
            if not pairs:
                continue
            m = result.metrics
            summary = (
                f"Accuracy {m['accuracy']:.3f} over {m['pairs']} pairs; mean reward chosen "
                f"{m['chosen_reward']:.3f}, rejected {m['rejected_reward']:.3f}, margin {m['margin']:.3f}."
            )
            rows = [[p["prompt"], p["chosen"], p["rejected"], f"{p['margin']:.3f}"] for p in pairs]
            table = markdown_table(["prompt", "chosen", "rejected", "margin"], rows, left=3, width=80)
            lines += section(f"Pairs with the lowest margin ({split})", [summary, "", *table])
        return lines


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    """A prediction record as the report's lowest-margin table shows it: texts cut, no row."""
    texts = ("prompt", "chosen", "rejected")
    return {
        k: (v[:SHOWN_CHARS] if k in texts else v) for k, v in record.items() if k not in ("row", "correct")
    }


def _as_messages(value: Any, role: str) -> list[Message]:
    """A predict field as messages: a string is one turn of `role`; a turn or turns as given."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [dict(value)] if isinstance(value, dict) else [dict(m) for m in value]


def _prompt_and_answers(item: dict[str, Any]) -> tuple[list[Message], list[list[Message]]]:
    """A checked predict input as its prompt and the answers to score (one, or chosen and rejected)."""
    if "chosen" in item:
        answers = [_as_messages(item["chosen"], "assistant"), _as_messages(item["rejected"], "assistant")]
        return _as_messages(item.get("prompt"), "user"), answers
    if "messages" in item:
        messages = _as_messages(item["messages"], "user")
        return messages[:-1], [messages[-1:]]
    if "completion" in item:
        return _as_messages(item.get("prompt"), "user"), [_as_messages(item["completion"], "assistant")]
    return [], [[{"role": "assistant", "content": item["text"]}]]


def _check_item(item: dict[str, Any], at: str) -> None:
    """Raise `LmtuneError` unless `item` is a text, a prompt + completion, messages, or a pair."""
    if "chosen" in item or "rejected" in item:
        for answer in ("chosen", "rejected"):
            if answer not in item:
                raise LmtuneError(f"{at}: a pair needs both 'chosen' and 'rejected'")
            _check_turns(item[answer], f"{at}, field '{answer}'", "assistant")
        if item.get("prompt") is not None:
            _check_turns(item["prompt"], f"{at}, field 'prompt'", "user")
    elif "messages" in item:
        _check_turns(item["messages"], f"{at}, field 'messages'", None)
        check_conversation(item["messages"], at)
    elif "completion" in item:
        _check_turns(item["completion"], f"{at}, field 'completion'", "assistant")
        if item.get("prompt") is not None:
            _check_turns(item["prompt"], f"{at}, field 'prompt'", "user")
    elif not isinstance(item.get("text"), str) or not item["text"].strip():
        raise LmtuneError(
            f"{at}: expected a non-empty text, a 'prompt' and 'completion', 'messages', "
            "or a pair ('prompt', 'chosen', 'rejected')"
        )


def _check_turns(value: Any, at: str, role: str | None) -> None:
    """Non-empty text, or {role, content} turns with known roles (the last one `role`, if given)."""
    if isinstance(value, str):
        if not value.strip():
            raise LmtuneError(f"{at}: the text is empty")
        return
    turns = [value] if isinstance(value, dict) else value
    if not isinstance(turns, list) or not turns:
        raise LmtuneError(f"{at}: expected text or a non-empty list of {{role, content}} turns")
    for turn in turns:
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("role"), str)
            and isinstance(turn.get("content"), str)
        ):
            raise LmtuneError(f"{at}: every turn must be a {{role, content}} object with text values")
        if turn["role"] not in ROLES:
            raise LmtuneError(f"{at}: unknown role '{turn['role']}'", hint=f"roles are {', '.join(ROLES)}")
        if not turn["content"].strip():
            raise LmtuneError(f"{at}: a {turn['role']} turn is empty")
    if role is not None and turns[-1]["role"] != role:
        raise LmtuneError(f"{at}: the last turn is the {turns[-1]['role']}'s, expected the {role}'s")
