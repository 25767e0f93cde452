"""GRPO: a decoder learns from rewards on its own sampled answers (TRL's GRPOTrainer).

For each prompt the model samples a group of `task.num_generations` completions of at most
`task.max_new_tokens` tokens; each completion's reward, compared with its group's mean (and
divided by the group's spread), is its advantage, and the policy gradient raises the
log-probability of the better completions. `task.beta` adds a KL penalty towards the starting
model (0, TRL's default, skips that reference pass: cheaper, and the clipped objective keeps
steps small anyway).

Data (jsonl, json or csv): one prompt per record, with an optional reference answer,

    {"prompt": "What is 2+3?", "answer": "5"}
    {"prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}], "answer": "..."}

The prompt column is `data.text_column` or the first of prompt, question, problem, query,
instruction, messages; the answer column `data.label_column` or the first of answer,
solution, reference (numbers are read as text). A prompt is a text (one user turn) or a
conversation ending with a user turn; `task.system` puts a system turn before prompts that
have none. Rewards that compare with the reference (`exact_match`, `numeric_match`) need an
answer on every record, and `numeric_match` a number in it.

Rewards (`task.reward`, one or a list, summed with `task.reward_weights`): see `lmtune.rewards`.
A Python function (`module:function`, `path/to/file.py:function`) runs the user's own code and is
refused unless `task.allow_code` is true, which `lmtune train --allow-code` sets; a reward-model
run directory scores with that run's model. Reward functions receive `prompts`, `completions`,
`completion_ids`, the dataset columns `answer` and `length` (prompt tokens), and TRL's
`trainer_state`, `log_extra` and `log_metric`.

Batches count completions: `train.batch_size` (x processes x gradient accumulation) must be a
multiple of `task.num_generations`, and holds `batch_size / num_generations` prompts per step.

Evaluation generates one greedy completion per prompt (deterministic) and reports the mean
reward (`reward`, and `reward_<name>` per reward function), before training (`baseline`, on
test) and after, with the generation speed (`generation_tokens_per_second`: generated tokens up
to each end-of-sequence, over the wall time of generation, prompt processing included). During
training TRL logs the sampled groups' rewards and lmtune adds each generation's tokens/s to
train_log.jsonl.

The chat template is the tokenizer's (ChatML by default, as SFT); model building and `predict`
are the SFT task's.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmtune import rewards
from lmtune.data import checks
from lmtune.data.readers import Table, read_table
from lmtune.data.splits import SplitRecords
from lmtune.errors import LmtuneError
from lmtune.tasks.base import EvalResult, PreparedData, Task, batches_of, records_dataset
from lmtune.tasks.causal_lm import (
    CausalLmTask,
    GenerationOptions,
    LeftPadCollator,
    check_conversation,
    ensure_chat_template,
)
from lmtune.tasks.preference import chat_ids
from lmtune.tasks.reward_model import pad_id

PROMPT_COLUMNS = ("prompt", "question", "problem", "query", "instruction", "messages")
ANSWER_COLUMNS = ("answer", "solution", "reference")
# What the trainer adds to TRL's logs (train_log.jsonl) for each generation.
GENERATION_METRIC = "generation_tokens_per_second"


class GrpoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reward: list[str] = Field(
        default=["exact_match"],
        description="Reward(s): exact_match, numeric_match, regex, format, module:function "
        "(with allow_code) or a reward-model run directory.",
    )
    reward_weights: list[float] | None = Field(default=None, description="Weight of each reward in the sum.")
    reward_pattern: str | None = Field(
        default=None, description="Regular expression of the regex/format rewards."
    )
    reward_tolerance: float = Field(
        default=1e-6, ge=0, description="numeric_match: largest absolute difference."
    )
    allow_code: bool = Field(
        default=False,
        description="Allow module:function rewards (user code); set by `lmtune train --allow-code`.",
    )
    num_generations: int = Field(
        default=4, ge=2, le=64, description="Completions sampled per prompt (group size)."
    )
    max_new_tokens: int = Field(default=32, ge=1, le=2048, description="Length limit of each completion.")
    beta: float = Field(default=0.0, ge=0, description="KL penalty towards the starting model (0: none).")
    temperature: float = Field(
        default=1.0, gt=0, le=5, description="Sampling temperature of training completions."
    )
    system: str | None = Field(default=None, description="System prompt put before prompts that have none.")
    sample_generations: int = Field(
        default=3, ge=0, le=20, description="Test prompts whose generations the report shows."
    )

    @field_validator("reward", mode="before")
    @classmethod
    def _one_or_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_rewards(self) -> GrpoOptions:
        rewards.check_reward_specs(self.reward, allow_code=self.allow_code, pattern=self.reward_pattern)
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward):
            raise LmtuneError(
                f"task.reward_weights has {len(self.reward_weights)} weights for {len(self.reward)} rewards",
                hint="give one weight per reward of task.reward, in its order",
            )
        return self


# ---- reading ------------------------------------------------------------------------------------
def read_prompt(table: Table, index: int, column: str) -> list[dict[str, str]]:
    """One record's prompt as messages ending with a user turn (a text becomes one user turn)."""
    row = table.rows[index]
    value = row.get(column)
    where = table.where(index, column)
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:  # CSV cells hold a conversation as JSON text; a text that only starts with "[" stays text
            parsed = json.loads(value)
            value = parsed if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict) else value
        except json.JSONDecodeError:
            pass
    if checks.is_missing(value) or (isinstance(value, str) and not value.strip()):
        raise LmtuneError(
            f"{where}: the prompt is {'missing' if column not in row else 'empty'}",
            hint="give every record a prompt, or remove the record",
        )
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise LmtuneError(f"{where}: expected a text or a list of messages, got {type(value).__name__}")
    messages = []
    for j, turn in enumerate(value):
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("role"), str)
            and isinstance(turn.get("content"), str)
        ):
            raise LmtuneError(
                f"{where}, message {j + 1}: expected an object with text fields 'role' and 'content'"
            )
        messages.append({"role": turn["role"].strip().lower(), "content": turn["content"]})
    check_conversation(messages, where, need_answer=False)
    if messages[-1]["role"] != "user":
        raise LmtuneError(
            f"{where}: the prompt must end with a user turn",
            hint="the model answers the last user message; put the reference answer in 'answer'",
        )
    return messages


def read_answer(table: Table, index: int, column: str | None) -> str | None:
    """One record's reference answer as text (None: none given)."""
    value = table.rows[index].get(column) if column else None
    if checks.is_missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise LmtuneError(
            f"{table.where(index, column)}: expected the reference answer as text or a number, "
            f"got {type(value).__name__}"
        )
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON 5.0 is the answer "5"
    return str(value).strip() or None


def prompt_lengths(tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[int]:
    """The tokens of each prompt rendered with the chat template and the generation prompt."""
    ensure_chat_template(tokenizer)
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


class GenerationCounter:
    """A model as `CausalLmTask.predict` uses it, counting the tokens its `generate` calls produce
    (each row up to and including its first end-of-sequence token, as TRL counts completions)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(self, **kwargs: Any) -> Any:
        out = self.model.generate(**kwargs)
        eos = kwargs.get("eos_token_id")
        stops = set(eos if isinstance(eos, list) else [eos])
        for row in out[:, kwargs["input_ids"].shape[1] :].tolist():
            self.tokens += next((k + 1 for k, token in enumerate(row) if token in stops), len(row))
        return out


@functools.cache
def grpo_trainer_class() -> type:
    """`LmtuneTrainer` mixed into TRL's `GRPOTrainer` (built on first use: importing TRL takes seconds).

    Where the two meet: TRL's training batches are prompt rows until `_prepare_inputs` generates,
    so tokens are counted there; it takes reward functions (the task's) and no collator or
    compute_metrics. With `beta > 0` TRL copies a peft adapter into a frozen "ref" adapter, the
    reference. A fresh lmtune adapter is the identity, so the base with the adapter off (TRL's
    reference without "ref") is the same model: the copy is dropped at once, and kept only for a
    continued adapter (`model.from_run: continue`) until training ends.
    """
    from trl import GRPOTrainer

    from lmtune.training.trainer import LmtuneTrainer

    class LmtuneGrpoTrainer(LmtuneTrainer, GRPOTrainer):
        def __init__(
            self, *args: Any, task: Any, data_collator: Any = None, compute_metrics: Any = None, **kwargs: Any
        ) -> None:
            # The collator and compute_metrics are the task's, None: GRPO takes prompt rows as
            # they are and scores with reward functions. TRL renders prompts with the chat
            # template, which tokenize sets but a tokenization cache hit skips.
            ensure_chat_template(kwargs["processing_class"])
            super().__init__(*args, task=task, reward_funcs=list(task.reward_functions()), **kwargs)
            if not task.continues_adapter():
                _drop_reference_adapter(self)

        def _prepare_inputs(self, generation_batch: Any) -> Any:
            inputs = super()._prepare_inputs(generation_batch)
            if self.model.training and isinstance(inputs, dict) and "completion_mask" in inputs:
                masks = (inputs["prompt_mask"], inputs["completion_mask"])
                self.real_tokens += sum(int(mask.sum()) for mask in masks)
                self.padded_tokens += sum(mask.numel() for mask in masks)
            return inputs

        def _generate_single_turn(self, prompt_ids: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            seconds = max(time.perf_counter() - started, 1e-9)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode][GENERATION_METRIC].append(sum(map(len, completion_ids)) / seconds)
            return completion_ids, logprobs

        def train(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().train(*args, **kwargs)
            finally:
                _drop_reference_adapter(self)  # a continued adapter's copy is not the trained model

    return LmtuneGrpoTrainer


def _drop_reference_adapter(trainer: Any) -> None:
    from lmtune.tasks.preference import drop_reference_copy

    drop_reference_copy(trainer.accelerator.unwrap_model(trainer.model))


# ---- the task -----------------------------------------------------------------------------------
class GrpoTask(CausalLmTask):
    name: ClassVar[str] = "grpo"
    description: ClassVar[str] = (
        "GRPO on decoders: prompts + verifiable rewards (exact/numeric match, regex), "
        "a Python function or a reward model."
    )
    Options = GrpoOptions
    # Prompt/prefix tuning is refused (no accepts-virtual-tokens): TRL slices the completion's
    # log-probabilities by position, which virtual tokens shift.
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"bf16-on-cpu", "chat-generation", "mixed-adapter-batches"}
    )
    default_metric: ClassVar[str] = "reward"
    greater_is_better: ClassVar[bool] = True
    resolved_columns: ClassVar[dict[str, str]] = {
        "text_column": "prompt_column",
        "label_column": "answer_column",
    }

    def __init__(self, cfg: Any) -> None:
        # Task's, not CausalLmTask's: GRPO reads none of SFT's options (format, packing).
        Task.__init__(self, cfg)
        self.labels = None
        self.prompt_column: str | None = cfg.data.text_column
        self.answer_column: str | None = cfg.data.label_column
        self._rewards: list[Any] | None = None

    def resolved_options(self) -> dict[str, Any]:
        # A reward-model run is recorded by its absolute path, so config.yaml works from anywhere.
        specs = self.options.reward
        return {
            "reward": [
                rewards.check_run_directory(s) if rewards.reward_kind(s) == "run" else s for s in specs
            ]
        }

    def bind(self, cfg: Any) -> None:
        super().bind(cfg)
        self._rewards = None

    def reward_functions(self) -> list[Any]:
        """The rewards of `task.reward`, built once (a reward-model run loads on first use)."""
        if self._rewards is None:
            o, t = self.options, self.cfg.train
            settings = rewards.RewardSettings(
                pattern=o.reward_pattern,
                tolerance=o.reward_tolerance,
                allow_code=o.allow_code,
                batch_size=t.eval_batch_size or t.batch_size * 2,
            )
            self._rewards = rewards.build_rewards(o.reward, settings)
        return self._rewards

    # ---- the hooks of Task.prepare_data -------------------------------------------------------------
    def prepare_data(self) -> PreparedData:
        self._check_batch_sizes()  # before anything is read or the run directory claimed
        return Task.prepare_data(self)  # not SFT's: nothing here packs

    def _columns(self, table: Table) -> tuple[str, str | None]:
        d = self.cfg.data
        prompt = checks.find_column(table, d.text_column, PROMPT_COLUMNS, "prompt", "data.text_column")
        if d.label_column is not None:
            return prompt, checks.find_column(table, d.label_column, (), "answer", "data.label_column")
        lowered = {c.lower(): c for c in table.columns}
        return prompt, next((lowered[n] for n in ANSWER_COLUMNS if n in lowered), None)

    def read_records(self, path: str, split: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        table = read_table(path, self.cfg.data.format)
        prompt_column, answer_column = self._columns(table)
        if split == "train":
            self.prompt_column, self.answer_column = prompt_column, answer_column
        records = [
            {
                "prompt": self._with_system(read_prompt(table, i, prompt_column)),
                "answer": read_answer(table, i, answer_column),
                "where": table.where(i),
            }
            for i in range(len(table))
        ]
        self._check_answers(records, answer_column)
        return records, {}

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.options.system and messages[0]["role"] != "system":
            return [{"role": "system", "content": self.options.system}, *messages]
        return messages

    def _check_answers(self, records: list[dict[str, Any]], column: str | None) -> None:
        needed = [s for s in self.options.reward if s in rewards.NEEDS_ANSWER]
        if not needed:
            return
        for record in records:
            if record["answer"] is None:
                raise LmtuneError(
                    f"{record['where']}: no reference answer (column '{column or 'answer'}'), which reward "
                    f"{needed[0]} compares with",
                    hint="give every prompt an answer, set data.label_column, or use rewards that need none "
                    "(regex, format, module:function, a reward-model run)",
                )
            if "numeric_match" in needed and rewards.last_number(record["answer"]) is None:
                raise LmtuneError(
                    f"{record['where']}: the answer {record['answer']!r} holds no number for numeric_match",
                    hint="write the answer as a number, or use exact_match",
                )

    def overlap_key(self, record: dict[str, Any]) -> str:
        return json.dumps(record["prompt"], ensure_ascii=False, sort_keys=True)

    def data_report(self, prepared: SplitRecords) -> dict[str, Any]:
        answered = {
            name: sum(r["answer"] is not None for r in rows) for name, rows in prepared.records.items()
        }
        return {
            "columns": {"prompt": self.prompt_column, "answer": self.answer_column},
            **prepared.summary(self.overlap_key, with_answer=answered),
        }

    def to_dataset(self, records: list[dict[str, Any]]) -> Any:
        return records_dataset(records, {"prompt": "messages", "answer": "text", "where": "text"})

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        """Prompts for `lmtune predict`: a .txt file (one per line) or records with a prompt column."""
        if Path(path).suffix.lower() in (".txt", ".text") and self.cfg.data.format == "auto":
            return super().read_inputs(path)
        table = read_table(path, self.cfg.data.format)
        column = checks.find_column(
            table, self.cfg.data.text_column, PROMPT_COLUMNS, "prompt", "data.text_column"
        )
        return [{"messages": read_prompt(table, i, column)} for i in range(len(table))]

    # ---- model and training ---------------------------------------------------------------------
    def tokenize(self, dataset: Any, tokenizer: Any) -> Any:
        """The records as TRL takes them (it applies the chat template itself), with each prompt's
        token count as `length`; a prompt longer than data.max_length is an error (TRL would not cut it)."""
        max_length = self.cfg.data.max_length
        lengths = prompt_lengths(tokenizer, dataset["prompt"])
        for where, length in zip(dataset["where"], lengths, strict=True):
            if length > max_length:
                raise LmtuneError(
                    f"{where}: the prompt has {length} tokens, more than data.max_length={max_length}",
                    hint="shorten the prompt or raise data.max_length",
                )
        return dataset.remove_columns(["where"]).add_column("length", lengths)

    def collator(self, tokenizer: Any) -> Any:
        return None  # GRPOTrainer batches prompt rows as they are

    def samples_per_row(self) -> int:
        """GRPOTrainer's sampler repeats every prompt once per completion of its group, and the
        batch size counts completions."""
        return self.options.num_generations

    def forward_batches(self, tokenizer: Any, dataset: Any, batch_size: int, count: int) -> list[dict]:
        """The prompts, chat template applied and left-padded: where generation starts."""
        ensure_chat_template(tokenizer)
        features = [{"input_ids": chat_ids(tokenizer, list(p), True)} for p in dataset["prompt"]]
        return batches_of(features, LeftPadCollator(pad_id(tokenizer)), batch_size, count)

    def trainer_spec(self) -> Any:
        from trl import GRPOConfig

        from lmtune.training.trainer import TrainerSpec

        o = self.options
        return TrainerSpec(
            trainer_class=grpo_trainer_class(),
            arguments_class=GRPOConfig,
            arguments={
                "num_generations": o.num_generations,
                "max_completion_length": o.max_new_tokens,
                "beta": o.beta,
                "temperature": o.temperature,
                "reward_weights": o.reward_weights,
                "log_completions": False,
            },
        )

    def _check_batch_sizes(self) -> None:
        """TRL scores each prompt's completions as one group, so batches hold whole groups."""
        from lmtune.training import distributed

        t, group = self.cfg.train, self.options.num_generations
        processes = distributed.world_size()
        sizes = {"train.batch_size": t.batch_size * processes * t.gradient_accumulation_steps}
        if t.eval_strategy != "no":
            sizes["train.eval_batch_size"] = (t.eval_batch_size or t.batch_size * 2) * processes
        for key, size in sizes.items():
            if size % group:
                raise LmtuneError(
                    f"{key} gives {size} completions per batch (x processes"
                    f"{' x gradient accumulation' if key == 'train.batch_size' else ''}), not a multiple of "
                    f"task.num_generations={group}",
                    hint=f"batches count completions, {group} per prompt: set {key} to a multiple of {group}",
                )

    # ---- evaluation and prediction -------------------------------------------------------------
    def generation_options(self, options: GenerationOptions) -> GenerationOptions:
        """The run's system prompt (task.system) unless the request brings its own."""
        if options.system is None and self.options.system:
            return options.model_copy(update={"system": self.options.system})
        return options

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        """Mean rewards of one greedy completion per prompt, and the generation speed."""
        prompts = [list(r["prompt"]) for r in dataset]
        answers = [r["answer"] for r in dataset]
        counter = GenerationCounter(model)
        opts = GenerationOptions(max_new_tokens=self.options.max_new_tokens)
        started = time.perf_counter()
        outputs = self.predict(counter, tokenizer, [{"messages": p} for p in prompts], batch_size, opts)
        seconds = max(time.perf_counter() - started, 1e-9)
        texts = [o["generation"] for o in outputs]
        # What TRL passes as completion_ids; here re-encoded from the decoded text.
        ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        completions = [[{"role": "assistant", "content": t}] for t in texts]
        # The columns TRL passes in training: the tokenized dataset's.
        columns = {"answer": answers, "length": prompt_lengths(tokenizer, prompts)}
        weights = self.options.reward_weights
        scores = rewards.score(self.reward_functions(), weights, prompts, completions, columns, ids)
        metrics = {
            **scores.means(),
            "examples": len(prompts),
            "mean_completion_tokens": round(counter.tokens / max(len(prompts), 1), 2),
            GENERATION_METRIC: round(counter.tokens / seconds, 1),
        }
        records = [
            {
                "row": i,
                "prompt": out["prompt"],
                "reference": answer,
                "generation": out["generation"],
                "reward": total,
            }
            for i, (out, answer, total) in enumerate(zip(outputs, answers, scores.total, strict=True))
        ]
        shown = records[: self.options.sample_generations]
        samples = [{k: v for k, v in r.items() if k != "row"} for r in shown]
        return EvalResult(metrics=metrics, details={"samples": samples}, records=records)

    def baseline(self, model: Any, tokenizer: Any, splits: dict[str, Any], batch_size: int) -> dict[str, Any]:
        result = self.evaluate(model, tokenizer, splits["test"], batch_size)
        return {**result.metrics, "samples": result.details["samples"]}

    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        """Rewards before and after, and sample generations (the untuned model's beside them on test)."""
        from lmtune.evaluation.report import markdown_table, samples_table, section, written_baseline

        before = written_baseline(run_dir)
        lines: list[str] = []
        test = results.get("test")
        if test is not None:
            rows = [
                [k, _number(before.get(k)), _number(v)]
                for k, v in test.metrics.items()
                if k.startswith("reward")
            ]
            table = markdown_table(["metric", "before", "after"], rows)
            lines += section("Reward before and after training (test, greedy)", table)
        for split, result in results.items():
            samples = result.details.get("samples") or []
            if samples:
                earlier = (before.get("samples") or []) if split == "test" else []
                table = samples_table(samples, earlier, score="reward")
                lines += section(f"Sample generations ({split}, greedy)", table)
        return lines


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
