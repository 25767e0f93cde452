"""Multi-task training: several tasks, one shared encoder, one head per task.

```yaml
task:
  type: multi-task
  mixing: temperature          # proportional | temperature | round-robin
  temperature: 2.0
  tasks:
    sentiment: {type: classification, train: reviews.csv, test: reviews_test.csv}
    entities: {type: token-classification, train: ner.conll, validation: ner_dev.conll}
```

Every sub-task is an instance of its ordinary task class (classification, token
classification) built from a sub-config: the run's model, method and train sections, the
run's shared data settings (max_length, splits, ...) and the sub-task's own data keys and
options. Reading, checks, tokenization, collation, evaluation and prediction are the
sub-task's own code; this file only combines them:

- data: every split is one `datasets.Dataset` with a `task_index` column and each sub-task's
  row serialised as JSON (their columns differ), so the run's caching and length statistics
  work unchanged;
- model: each sub-task builds its usual model, then all of them get the same encoder module
  (`model.base_model_prefix`); `MultiTaskModel.forward(task_index=...)` routes a batch to
  its task's model. The state dict lists the shared encoder once (checkpoints, safetensors);
- training: `TaskBatchSampler` makes every batch hold one task, the mix of tasks set by
  `mixing`; per-epoch validation reports each sub-task's metrics and `combined`, the mean
  of the sub-tasks' default metrics (which picks the best checkpoint);
- metrics.json: `validation`/`test` hold one metric dict per sub-task plus `combined`;
- predict: `options={"task": NAME}` gives that sub-task's usual rows; without it each input
  gets `{name: row}` for every sub-task.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn
from torch.utils.data import Sampler

from lmtune.errors import LmtuneError
from lmtune.tasks.base import EvalResult, PreparedData, Rows, Task

# Data keys a sub-task takes from the run's `data:` section unless it sets its own.
INHERITED_DATA_KEYS = ("max_length", "validation_split", "test_split", "drop_duplicates", "max_train_samples")
# Data keys that describe one file set; at the run level they would be ambiguous.
PER_TASK_DATA_KEYS = (
    "train",
    "validation",
    "test",
    "text_column",
    "text_pair_column",
    "label_column",
    "labels",
)
COMBINED = "combined"
WEIGHTS_FILE = "model.safetensors"
LAYOUT_FILE = "multi_task.json"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def _data_fields(task_cls: type[Task]) -> set[str]:
    """Data keys a spec of a `task_cls` sub-task may set (streaming and caching are run-wide)."""
    from lmtune.config import DataConfig

    return (set(DataConfig.model_fields) | set(task_cls.DataOptions.model_fields)) - {
        "streaming",
        "cache_tokenized",
    }


def _member_class(where: str, kind: Any) -> type[Task]:
    """The task class of a sub-task type, refused unless it declares "multi-task-member" (a head
    over an encoder; generative tasks and extractive QA have their own heads, losses and loops)."""
    from lmtune.tasks import TASKS

    task_cls = TASKS.get(kind) if kind in TASKS.names() else None
    if task_cls is not None and task_cls.supports("multi-task-member"):
        return task_cls
    supported = ", ".join(Task.with_capability("multi-task-member", TASKS.classes()))
    if kind is None:
        raise ValueError(f"{where}: missing 'type' (supported: {supported})")
    if task_cls is MultiTask:
        raise ValueError(f"{where}: a multi-task cannot contain another multi-task (supported: {supported})")
    known = "is not supported inside multi-task" if task_cls is not None else "is not a task type"
    raise ValueError(f"{where}: type '{kind}' {known} (supported: {supported})")


def _check_spec(name: str, spec: Any) -> dict[str, Any]:
    """Validate one sub-task spec; returns it normalised (task options with their defaults)."""
    from lmtune.config import DataConfig

    where = f"sub-task '{name}'"
    if not isinstance(name, str) or not _NAME.match(name) or name == COMBINED:
        raise ValueError(
            f"sub-task name {name!r}: use letters, digits, '_' or '-' (starting with a letter); "
            f"'{COMBINED}' is reserved"
        )
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping such as {{type: classification, train: FILE}}")
    kind = spec.get("type")
    task_cls = _member_class(where, kind)
    data_keys = _data_fields(task_cls)
    data = {k: v for k, v in spec.items() if k in data_keys}
    options = {k: v for k, v in spec.items() if k not in data_keys and k != "type"}
    try:
        DataConfig(**{k: v for k, v in data.items() if k in DataConfig.model_fields})
        task_cls.DataOptions(**{k: v for k, v in data.items() if k not in DataConfig.model_fields})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"{where}: invalid '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None
    try:
        options = task_cls.Options(**options).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(map(str, err["loc"]))
        if err["type"] == "extra_forbidden":
            valid = sorted(set(task_cls.Options.model_fields) | data_keys)
            raise ValueError(f"{where}: unknown key '{key}' (valid: type, {', '.join(valid)})") from None
        raise ValueError(f"{where}: invalid '{key}': {err['msg']}") from None
    if options.get("calibration", "none") != "none":
        # The multi-task model runs no sub-task's post-training fit, so the option would be ignored.
        raise ValueError(f"{where}: calibration is not fitted inside multi-task; train the task on its own")
    return {"type": kind, **data, **options}


class MultiTaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: dict[str, dict[str, Any]] = Field(
        default={},
        validate_default=True,  # a missing `tasks:` gets the same message as an empty one
        description="Sub-task name -> {type, data keys (train, validation, test, format, columns, ...), "
        "task options}.",
    )
    mixing: Literal["proportional", "temperature", "round-robin"] = Field(
        default="proportional",
        description="Which task each batch comes from: proportional to the task's rows, "
        "temperature (p ∝ rows^(1/T)), or round-robin (equal turns).",
    )
    temperature: float = Field(default=2.0, ge=1.0, le=100.0, description="T of mixing=temperature.")

    @field_validator("tasks")
    @classmethod
    def _check_tasks(cls, tasks: dict[str, Any]) -> dict[str, dict[str, Any]]:
        if not tasks:
            raise ValueError(
                "give at least one sub-task, e.g. tasks: {sentiment: {type: classification, ...}}"
            )
        return {name: _check_spec(name, spec) for name, spec in tasks.items()}


class MultiTaskPredictOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str | None = Field(
        default=None, description="Sub-task to predict; default: every sub-task ({name: prediction})."
    )


# ---- batches of one task -----------------------------------------------------------------------
def batches_per_task(sizes: Sequence[int], batch_size: int, mixing: str, temperature: float) -> list[int]:
    """How many batches each task contributes to one epoch.

    An epoch has as many batches as the tasks' rows fill (sum of ceil(n_i / batch_size)), so
    the step count does not depend on the mixing. proportional: each task once through;
    temperature: shares ∝ n_i^(1/T), apportioned by largest remainder (every task at least
    one batch); round-robin: equal shares.
    """
    natural = [math.ceil(n / batch_size) for n in sizes]
    if mixing == "proportional":
        return natural
    total = sum(natural)
    if mixing == "round-robin":
        return [math.ceil(total / len(sizes))] * len(sizes)
    weights = [n ** (1.0 / temperature) for n in sizes]
    shares = [total * w / sum(weights) for w in weights]
    counts = [max(1, math.floor(s)) for s in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda i: shares[i] - math.floor(shares[i]), reverse=True)
    for i in by_remainder[: max(0, total - sum(counts))]:
        counts[i] += 1
    return counts


class TaskBatchSampler(Sampler[int]):
    """Row indices whose every consecutive `batch_size` chunk comes from one task.

    Each task draws its rows from reshuffled passes over its own rows (so a task asked for more
    batches than it fills repeats rows, and its last batch is filled from its own rows, never
    another task's). Within a task, rows are sorted by length inside windows of 50 batches
    (less padding), then the batches are shuffled across tasks, or interleaved in task order
    for round-robin. The order depends only on (seed, epoch): identical on every process
    (each takes its share of whole batches) and after a resume.
    """

    def __init__(
        self,
        task_of_row: Sequence[int],
        batch_size: int,
        *,
        mixing: str = "proportional",
        temperature: float = 2.0,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.mixing = mixing
        self.seed = seed
        self.epoch = 0
        self.lengths = [int(n) for n in lengths] if lengths is not None else None
        # datasets returns a lazy column; one pass into a list is far cheaper than indexing it.
        task_of_row = [int(t) for t in task_of_row]
        self.tasks = sorted(set(task_of_row))
        self.rows = [[i for i, t in enumerate(task_of_row) if t == task] for task in self.tasks]
        self.counts = batches_per_task([len(r) for r in self.rows], batch_size, mixing, temperature)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.counts) * self.batch_size

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in order."""
        generator = torch.Generator()
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        per_task: list[list[list[int]]] = []
        for rows, count in zip(self.rows, self.counts, strict=True):
            need = count * self.batch_size
            order: list[int] = []
            while len(order) < need:
                order.extend(rows[i] for i in torch.randperm(len(rows), generator=generator).tolist())
            order = order[:need]
            if self.lengths is not None:
                window = 50 * self.batch_size
                lengths = self.lengths
                order = [
                    i
                    for start in range(0, need, window)
                    for i in sorted(order[start : start + window], key=lambda r: -lengths[r])
                ]
            per_task.append([order[k : k + self.batch_size] for k in range(0, need, self.batch_size)])
        if self.mixing == "round-robin":
            return [b[k] for k in range(max(self.counts)) for b in per_task if k < len(b)]
        flat = [batch for batches in per_task for batch in batches]
        return [flat[i] for i in torch.randperm(len(flat), generator=generator).tolist()]

    def __iter__(self) -> Iterator[int]:
        return iter([i for batch in self.batches() for i in batch])


# ---- the model -----------------------------------------------------------------------------------
class MultiTaskOutput(dict):
    """Trainer reads `loss` and treats every other entry as predictions."""


class MultiTaskModel(nn.Module):
    """One model per sub-task, all sharing one encoder module; `forward` routes by task.

    `forward` takes a collated batch (`MultiTaskCollator`): either one task's inputs at the
    top level, or `segments` (one sub-batch per task) for mixed batches (Trainer's evaluation
    sampler knows nothing of tasks). Besides the loss it returns `logits`, a fixed-shape
    summary per row (task index, then the class logits, or the per-token argmax for
    sequence labelling) so Trainer's evaluation loop can concatenate rows of different tasks.
    """

    # The loss is a per-batch mean; Trainer must divide it by gradient-accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, models: dict[str, nn.Module], encoder_attr: str) -> None:
        super().__init__()
        self.models = nn.ModuleDict(models)
        self.task_names = list(models)
        self.encoder_attr = encoder_attr
        self._register_load_state_dict_pre_hook(self._add_aliases)

    @property
    def encoder(self) -> nn.Module:
        return getattr(self.models[self.task_names[0]], self.encoder_attr)

    @property
    def config(self) -> Any:
        """The shared encoder's config (hidden size, model type) for methods that read it."""
        return self.encoder.config

    def get_input_embeddings(self) -> nn.Module:
        return self.models[self.task_names[0]].get_input_embeddings()

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        for model in self.models.values():
            model.gradient_checkpointing_enable(**kwargs)

    def _alias_prefixes(self, prefix: str = "") -> list[tuple[str, str]]:
        """(alias, owner) key prefixes: the shared encoder under every sub-model but the first."""
        owner = f"{prefix}models.{self.task_names[0]}.{self.encoder_attr}."
        return [(f"{prefix}models.{name}.{self.encoder_attr}.", owner) for name in self.task_names[1:]]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The shared encoder is listed once (under the first sub-model): safetensors refuses
        # tensors that share memory, and a checkpoint should not store the encoder N times.
        state = super().state_dict(*args, **kwargs)
        aliases = tuple(alias for alias, _ in self._alias_prefixes(kwargs.get("prefix", "")))
        for key in [k for k in state if k.startswith(aliases)]:
            del state[key]
        return state

    def _add_aliases(self, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        # Re-add the keys `state_dict` dropped, so loading (strict, or a parent's such as
        # peft's) finds the shared encoder under every sub-model. A load pre-hook rather than a
        # `load_state_dict` override: a parent module's load never calls ours.
        for alias, owner in self._alias_prefixes(prefix):
            for key in [k for k in state_dict if k.startswith(owner)]:
                state_dict.setdefault(alias + key[len(owner) :], state_dict[key])

    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        """model.safetensors (shared encoder once), the layout, and each sub-model's config."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, str(directory / WEIGHTS_FILE), metadata={"format": "pt"}, force_contiguous=True)
        layout = {"tasks": self.task_names, "encoder_attr": self.encoder_attr}
        (directory / LAYOUT_FILE).write_text(json.dumps(layout, indent=2) + "\n", encoding="utf-8")
        for name, model in self.models.items():
            model.config.save_pretrained(directory / "tasks" / name)

    def forward(
        self,
        task_index: torch.Tensor,
        labels: torch.Tensor | None = None,
        segments: list[dict[str, Any]] | None = None,
        task_targets: torch.Tensor | None = None,
        **inputs: Any,
    ) -> MultiTaskOutput:
        # `labels` is the collator's uniform copy for Trainer's evaluation loop; the
        # sub-models get their own (`task_targets`, or `labels` inside each segment).
        if segments is None:
            segments = [{**inputs, "labels": task_targets} if task_targets is not None else inputs]
        tasks = torch.unique_consecutive(task_index).tolist()
        losses, rows, summaries = [], [], []
        for task, batch in zip(tasks, segments, strict=True):
            out = self.models[self.task_names[task]](**batch)
            n = int(batch["input_ids"].shape[0])
            if out.loss is not None:
                losses.append(out.loss * n)
                rows.append(n)
            logits = out.logits.detach()
            body = logits.argmax(dim=-1).float() if logits.dim() == 3 else logits.float()
            summaries.append(torch.cat([torch.full_like(body[:, :1], float(task)), body], dim=1))
        width = max(s.shape[1] for s in summaries)
        summary = torch.cat(
            [nn.functional.pad(s, (0, width - s.shape[1]), value=-100.0) for s in summaries], dim=0
        )
        if not losses:
            return MultiTaskOutput(logits=summary)
        return MultiTaskOutput(loss=torch.stack(losses).sum() / sum(rows), logits=summary)


class MultiTaskCollator:
    """Groups a batch's rows by task, pads each group with its sub-task's collator."""

    def __init__(self, task: MultiTask, tokenizer: Any) -> None:
        self.task = task
        self.collators = [sub.collator(tokenizer) for sub in task.subtasks.values()]

    def train_sampler(self, dataset: Any, batch_size: int, seed: int) -> TaskBatchSampler:
        """One task per batch (LmtuneTrainer asks the collator for a sampler)."""
        opts: MultiTaskOptions = self.task.options  # type: ignore[assignment]
        return TaskBatchSampler(
            dataset["task_index"],
            batch_size,
            mixing=opts.mixing,
            temperature=opts.temperature,
            seed=seed,
            lengths=dataset["length"] if self.task.cfg.train.group_by_length else None,
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        groups: dict[int, list[dict[str, Any]]] = {}
        for feature in features:
            groups.setdefault(int(feature["task_index"]), []).append(json.loads(feature["features"]))
        segments, task_index, uniform = [], [], []
        for task, rows in groups.items():
            batch = dict(self.collators[task](rows))
            segments.append(batch)
            task_index += [task] * len(rows)
            if "labels" in batch:
                gold = batch["labels"]
                uniform.append((gold.unsqueeze(1) if gold.dim() == 1 else gold).float())
        out: dict[str, Any] = {"task_index": torch.tensor(task_index)}
        if len(segments) == 1:
            out.update(segments[0])  # flat: Trainer counts real/padded tokens from input_ids
            if "labels" in out:
                out["task_targets"] = out.pop("labels")
        else:
            out["segments"] = segments
        if uniform and len(uniform) == len(segments):
            width = max(u.shape[1] for u in uniform)
            out["labels"] = torch.cat(
                [nn.functional.pad(u, (0, width - u.shape[1]), value=-100.0) for u in uniform]
            )
        return out


# ---- the task ------------------------------------------------------------------------------------
class MultiTask(Task):
    name: ClassVar[str] = "multi-task"
    Options = MultiTaskOptions
    PredictOptions = MultiTaskPredictOptions
    description: ClassVar[str] = (
        "Several classification / token-classification tasks over one shared encoder, a head each."
    )
    default_metric: ClassVar[str] = COMBINED
    greater_is_better: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        from lmtune.config import RunConfig
        from lmtune.tasks import get_task_class

        raw = cfg.to_dict()
        misplaced = [k for k in PER_TASK_DATA_KEYS if raw["data"].get(k) is not None]
        if misplaced:
            raise LmtuneError(
                f"data.{misplaced[0]} is set, but a multi-task run reads each sub-task's own files",
                hint=f"move it into task.tasks.NAME.{misplaced[0]}",
            )
        shared = {k: raw["data"][k] for k in INHERITED_DATA_KEYS}
        self.subtasks: dict[str, Task] = {}
        for name, spec in self.options.tasks.items():
            data_keys = _data_fields(get_task_class(spec["type"]))
            sub_raw = {
                "model": raw["model"],
                "method": raw["method"],
                "train": raw["train"],
                "output_dir": raw["output_dir"],
                "data": {
                    **shared,
                    "cache_tokenized": raw["data"]["cache_tokenized"],
                    **{k: v for k, v in spec.items() if k in data_keys},
                },
                "task": {k: v for k, v in spec.items() if k not in data_keys},
            }
            sub_cfg = RunConfig.from_dict(sub_raw, source=f"task.tasks.{name}")
            self.subtasks[name] = get_task_class(spec["type"])(sub_cfg)
        # Methods keep every sub-task's head trainable (freeze, bitfit, adapters).
        self.head_names = tuple(dict.fromkeys(h for s in self.subtasks.values() for h in s.head_names))
        self.peft_head_names = tuple(
            dict.fromkeys(h for s in self.subtasks.values() for h in s.peft_head_names)
        )

    def _check_method(self) -> None:
        """Refuse a method whose class does not declare "multi-task": it must adapt the one shared
        encoder once (prompt learning, for one, assumes one peft task type and a single head)."""
        from lmtune.methods import METHODS, get_method_class
        from lmtune.methods.base import Method

        method = self.cfg.method.name
        if not get_method_class(method).supports("multi-task"):
            supported = ", ".join(Method.with_capability("multi-task", METHODS.classes()))
            raise LmtuneError(
                f"method '{method}' is not supported for multi-task runs",
                hint=f"use one of: {supported} (e.g. method: {{name: full}})",
            )

    # ---- data -------------------------------------------------------------------------------
    def prepare_data(self) -> PreparedData:
        self._check_method()
        parts: dict[str, list[tuple[int, Any]]] = {"train": [], "validation": [], "test": []}
        report: dict[str, Any] = {"tasks": {}, "mixing": self.options.mixing}
        for index, (name, sub) in enumerate(self.subtasks.items()):
            data = sub.cfg.data
            if not data.train:
                raise LmtuneError(
                    f"sub-task '{name}': no training data", hint=f"set task.tasks.{name}.train to a file"
                )
            for key in ("train", "validation", "test"):
                path = getattr(data, key)
                if path and not Path(path).exists():
                    raise LmtuneError(
                        f"sub-task '{name}': {key} file not found: {path}",
                        hint=f"check task.tasks.{name}.{key} (relative to the current directory)",
                    )
            try:
                prepared = sub.prepare_data()
            except LmtuneError as exc:
                raise LmtuneError(f"sub-task '{name}': {exc.message}", hint=exc.hint) from None
            for split, dataset in prepared.splits.items():
                parts[split].append((index, dataset))
            report["tasks"][name] = prepared.report
        splits = {split: _combine(items) for split, items in parts.items()}
        report["rows"] = {split: len(ds) for split, ds in splits.items()}
        return PreparedData(splits=splits, labels=None, report=report)

    def resolved_options(self) -> dict[str, Any]:
        """Each sub-task's spec plus what its data decided (labels, columns, options)."""
        tasks = {}
        for name, sub in self.subtasks.items():
            spec = dict(self.options.tasks[name])
            spec["labels"] = sub.labels
            for key, attr in (
                ("text_column", "text_column"),
                ("text_pair_column", "pair_column"),
                ("label_column", "label_column"),
            ):
                if getattr(sub, attr, None) is not None:
                    spec[key] = getattr(sub, attr)
            spec.update(sub.resolved_options())
            tasks[name] = spec
        return {"tasks": tasks}

    def _part(self, dataset: Any, index: int) -> Any:
        """The rows of sub-task `index` as that task's own dataset (None: it has none here)."""
        from datasets import Dataset

        rows = [
            json.loads(r) for t, r in zip(dataset["task_index"], dataset["row"], strict=True) if t == index
        ]
        return Dataset.from_list(rows) if rows else None

    def _named_parts(self, dataset: Any) -> Iterator[tuple[int, str, Task, Any]]:
        for index, (name, sub) in enumerate(self.subtasks.items()):
            part = self._part(dataset, index)
            if part is not None:
                yield index, name, sub, part

    def _by_name(self, spec: str) -> tuple[str, str] | None:
        """Split `NAME=PATH` into (NAME, PATH) when NAME is a sub-task."""
        name, sep, path = spec.partition("=")
        return (name, path) if sep and name in self.subtasks else None

    def read_labelled(self, path: str) -> Any:
        named = self._by_name(path)
        if named is None:
            raise LmtuneError(
                f"{path}: a multi-task run evaluates one sub-task's file at a time",
                hint=f"prefix the file with the sub-task: {next(iter(self.subtasks))}={path} "
                f"(sub-tasks: {', '.join(self.subtasks)})",
            )
        name, file = named
        index = list(self.subtasks).index(name)
        return _combine([(index, self.subtasks[name].read_labelled(file))])

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        # NAME=PATH reads with that sub-task's reader; a plain path with the first sub-task's.
        name, file = self._by_name(path) or (next(iter(self.subtasks)), path)
        return self.subtasks[name].read_inputs(file)

    def check_input(self, index: int, item: dict[str, Any]) -> None:
        """Accept what at least one sub-task takes; `predict` checks against the chosen ones."""
        errors = []
        for sub in self.subtasks.values():
            try:
                sub.check_input(index, item)
                return
            except LmtuneError as exc:
                errors.append(exc)
        raise errors[0]

    # ---- model ------------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> MultiTaskModel:
        from safetensors.torch import load_model

        self._check_method()
        saved = Path(path) / LAYOUT_FILE
        base = path
        if saved.is_file():
            # A trained multi-task model: rebuild the architecture from the base model, then
            # load the trained weights (heads and the one shared encoder) over it.
            from lmtune.models import resolve_model

            m = self.cfg.model
            base = resolve_model(m.name, m.revision, m.trust_remote_code).path
        models = {name: sub.build_model(base, fresh_head=fresh_head) for name, sub in self.subtasks.items()}
        model = share_encoder(models)
        if saved.is_file():
            layout = json.loads(saved.read_text(encoding="utf-8"))
            if layout.get("tasks") != model.task_names:
                raise LmtuneError(
                    f"{path}: the saved model holds sub-tasks {layout.get('tasks')}, "
                    f"the config {model.task_names}",
                    hint="load it with the config.yaml it was trained with",
                )
            load_model(model, str(Path(path) / WEIGHTS_FILE))
        return model

    def tokenize(self, dataset: Any, tokenizer: Any) -> Any:
        from datasets import Dataset

        columns: dict[str, list[Any]] = {"task_index": [], "length": [], "truncated": [], "features": []}
        for index, _, sub, part in self._named_parts(dataset):
            tokenized = sub.tokenize(part, tokenizer)
            # Token-level tasks split long sentences into windows: nothing is truncated.
            windows = sub.supports("token-level")
            for row in tokenized.to_list():
                length = int(row.pop("length"))
                columns["task_index"].append(index)
                columns["length"].append(length)
                columns["truncated"].append(not windows and length >= sub.cfg.data.max_length)
                columns["features"].append(json.dumps(row))
        return Dataset.from_dict(columns)

    def collator(self, tokenizer: Any) -> MultiTaskCollator:
        return MultiTaskCollator(self, tokenizer)

    # ---- metrics and predictions --------------------------------------------------------------
    def trainer_metrics(self) -> Any:
        from transformers import EvalPrediction

        def compute(eval_pred: Any) -> dict[str, float]:
            summary = np_array(eval_pred.predictions)
            gold_all = np_array(eval_pred.label_ids)
            out: dict[str, float] = {}
            defaults = []
            for index, (name, sub) in enumerate(self.subtasks.items()):
                rows = summary[:, 0] == index
                if not rows.any():
                    continue
                body, gold = summary[rows, 1:], gold_all[rows]
                n_labels = len(sub.labels or [])
                if sub.supports("token-level"):
                    # The model summarised token logits as argmax ids; one-hot rebuilds "logits".
                    width = min(body.shape[1], gold.shape[1])
                    ids = body[:, :width].astype(int).clip(min=0)
                    preds, gold = _one_hot(ids, n_labels), gold[:, :width].astype(int)
                elif getattr(sub, "multi_label", False):
                    preds, gold = body[:, :n_labels], gold[:, :n_labels]
                else:
                    preds, gold = body[:, :n_labels], gold[:, 0].astype(int)
                metrics = sub.trainer_metrics()(EvalPrediction(predictions=preds, label_ids=gold))
                out.update({f"{name}_{key}": float(value) for key, value in metrics.items()})
                defaults.append(metrics[sub.default_metric])
            if defaults:
                out[COMBINED] = float(sum(defaults) / len(defaults))
            return out

        return compute

    def evaluate(self, model: Any, tokenizer: Any, dataset: Any, batch_size: int) -> EvalResult:
        metrics: dict[str, Any] = {}
        details: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        for _, name, sub, part in self._named_parts(dataset):
            result = sub.evaluate(model.models[name], tokenizer, part, batch_size)
            metrics[name], details[name] = result.metrics, result.details
            # Each sub-task's records, its rows counted within its own part of the split.
            records += [{"task": name, **record} for record in result.records]
        scores = [metrics[name][self.subtasks[name].default_metric] for name in metrics]
        if scores:
            metrics[COMBINED] = float(sum(scores) / len(scores))
        return EvalResult(metrics=metrics, details=details, records=records)

    def predict_options(self, raw: dict[str, Any] | None) -> BaseModel:
        options = super().predict_options(raw)
        chosen = options.task  # type: ignore[attr-defined]
        if chosen is not None and chosen not in self.subtasks:
            raise LmtuneError(
                f"predict option 'task': unknown sub-task '{chosen}'",
                hint=f"sub-tasks: {', '.join(self.subtasks)}",
            )
        return options

    def predict(self, model: Any, tokenizer: Any, inputs: Rows, batch_size: int, options: Any = None) -> Rows:
        chosen = getattr(options, "task", None)
        names = [chosen] if chosen else list(self.subtasks)
        rows: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            sub = self.subtasks[name]
            for i, item in enumerate(inputs):
                try:
                    sub.check_input(i, item)
                except LmtuneError as exc:
                    raise LmtuneError(f"sub-task '{name}': {exc.message}", hint=exc.hint) from None
            rows[name] = sub.predict(model.models[name], tokenizer, inputs, batch_size)
        if chosen:
            return rows[chosen]
        return [{name: rows[name][i] for name in names} for i in range(len(inputs))]

    # ---- report -------------------------------------------------------------------------------
    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        from lmtune.evaluation.report import HEADLINE, markdown_table

        splits = list(results)
        overview = (
            [name, sub.name, sub.default_metric]
            + [_number(results[s].metrics.get(name, {}).get(sub.default_metric)) for s in splits]
            for name, sub in self.subtasks.items()
        )
        lines = [
            "## Sub-tasks",
            "",
            *markdown_table(["sub-task", "type", "metric", *splits], overview, left=3),
            "",
        ]
        for name, sub in self.subtasks.items():
            per_split = {s: r.metrics[name] for s, r in results.items() if name in r.metrics}
            keys = [k for k in HEADLINE if any(k in m for m in per_split.values())]
            rows = ([key, *(_number(m.get(key)) for m in per_split.values())] for key in keys)
            lines += [f"### {name} ({sub.name})", "", *markdown_table(["metric", *per_split], rows), ""]
            # Split keys carry the sub-task name so its plots do not overwrite another's.
            sub_results = {
                f"{name}-{s}": EvalResult(metrics=r.metrics[name], details=r.details[name])
                for s, r in results.items()
                if name in r.metrics
            }
            lines += sub.report_sections(sub_results, run_dir)
        return lines


# ---- helpers -------------------------------------------------------------------------------------
def share_encoder(models: dict[str, nn.Module]) -> MultiTaskModel:
    """Give every sub-model one encoder module: the one with the most parameters (e.g. with a pooler)."""
    first = next(iter(models.values()))
    attr = getattr(first, "base_model_prefix", "")
    encoders = {name: getattr(m, attr, None) if attr else None for name, m in models.items()}
    if any(not isinstance(e, nn.Module) for e in encoders.values()):
        raise LmtuneError(
            f"cannot find the encoder ('{attr}') of every sub-task model ({type(first).__name__})",
            hint="multi-task needs a transformers model with a standard base model (BERT, RoBERTa, ...)",
        )
    shared = max(encoders.values(), key=lambda e: len(e.state_dict()))
    keys = set(shared.state_dict())
    for name, model in models.items():
        own = encoders[name]
        if type(own) is not type(shared) or not set(own.state_dict()) <= keys:
            raise LmtuneError(f"sub-task '{name}': its encoder ({type(own).__name__}) cannot be shared")
        setattr(model, attr, shared)
    return MultiTaskModel(models, attr)


def _combine(items: list[tuple[int, Any]]) -> Any:
    """One dataset of (task_index, row as JSON) from sub-task datasets whose columns differ."""
    from datasets import Dataset

    task_index, rows = [], []
    for index, dataset in items:
        for row in dataset.to_list():
            task_index.append(index)
            rows.append(json.dumps(row))
    return Dataset.from_dict({"task_index": task_index, "row": rows})


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ""


def np_array(value: Any) -> Any:
    import numpy as np

    return np.asarray(value[0] if isinstance(value, tuple) else value)


def _one_hot(ids: Any, size: int) -> Any:
    import numpy as np

    return np.eye(max(size, 1), dtype=np.float32)[np.minimum(ids, max(size, 1) - 1)]
