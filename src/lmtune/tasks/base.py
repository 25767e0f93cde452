"""The task interface: the data preparation and the inference loop every task shares.

A task knows its data (columns, labels, checks), its model head, how to tokenize and
collate, its metrics, how to turn model outputs into predictions, and what its report
shows. The run orchestration in `lmtune.run` is the same for every task, and so is
`Task.prepare_data`: a task fills in its hooks (how to read a file, what to stratify by,
what a duplicate is, what the report adds) and the split arithmetic is `lmtune.data.splits`.
Evaluation and prediction loops draw their batches from `inference_batches`.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from lmtune.capabilities import TASK_CAPABILITIES, Capable
from lmtune.data.splits import Carving, SplitRecords, SplitSettings, split_records
from lmtune.errors import LmtuneError

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import nn

    from lmtune.config import RunConfig
    from lmtune.evaluation.explain import ExplainRow
    from lmtune.training.trainer import TrainerSpec


# The inputs of `Task.predict` and its predictions: one dict per example.
Rows = list[dict[str, Any]]


class NoTaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VersionedOptions(BaseModel):
    """Options whose keys added after runs existed are left out of the dump at their defaults.

    Task options are dumped whole into config.yaml and the run fingerprint, so a new key with a
    default would change every earlier run's fingerprint (and refuse its resume); a class names
    such keys in `omitted_at_default`.
    """

    model_config = ConfigDict(extra="forbid")
    omitted_at_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_new_keys_at_default(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in self.omitted_at_default:
            if key in data and data[key] == type(self).model_fields[key].default:
                data.pop(key)
        return data


@dataclass
class PreparedData:
    """Validated splits (raw, untokenized), the label list, and what the checks found."""

    splits: dict[str, Dataset]
    labels: list[str] | None
    report: dict[str, Any] = field(default_factory=dict)
    # data.streaming: the train split is not in `splits` but read on the fly. `train_stream(tokenizer,
    # batch_size, seed)` builds the length-grouped stream; `train_rows` is its size, for the schedule.
    train_stream: Any = None
    train_rows: int | None = None
    # data.audit: the fast audit's findings (`lmtune.data.audit.AuditResult`); its summary is in `report`.
    audit: Any = None


@dataclass
class EvalResult:
    """Scalar metrics for metrics.json plus details (per-class tables, matrices) for reports, and
    `records`: one JSON-able dict per evaluated example, in dataset order, each with its `row`
    (what `lmtune.evaluation.predictions` writes to predictions/SPLIT.jsonl, never metrics.json)."""

    metrics: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


# Metric names where lower is better (losses, calibration error, perplexity); the rest: higher.
_LOWER_IS_BETTER = re.compile(r"(^|_)(loss|ece|perplexity|error)$")


class Task(Capable):
    """A task. Declares `capabilities` (see `lmtune.capabilities`) beside the hooks below."""

    kind: ClassVar[str] = "task"
    vocabulary: ClassVar[dict[str, str]] = TASK_CAPABILITIES
    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoTaskOptions
    # Data keys this task reads beyond the common ones of `DataConfig` (written under `data:`).
    DataOptions: ClassVar[type[BaseModel]] = NoTaskOptions
    PredictOptions: ClassVar[type[BaseModel]] = NoTaskOptions
    peft_task_type: ClassVar[str | None] = None
    # Parameter-name parts that make up the task head (kept trainable by freeze/bitfit/...).
    head_names: ClassVar[tuple[str, ...]] = ()
    # Head modules peft must train and save beside the adapter (`modules_to_save`).
    peft_head_names: ClassVar[tuple[str, ...]] = ()
    default_metric: ClassVar[str] = "loss"
    greater_is_better: ClassVar[bool] = True
    # How the board's playground draws a prediction (labels: probability bars, entities: marked
    # spans, span: an answer in its context, generation: streamed text, text, score, record: the
    # raw prediction) and the input fields it asks for.
    prediction_view: ClassVar[str] = "record"
    input_fields: ClassVar[tuple[str, ...]] = ("text",)

    @classmethod
    def metric_direction(cls, metric: str | None) -> tuple[str, bool]:
        """(metric, greater_is_better) for `metric` (None: the task's default): the task's own
        direction for its default metric; lower is better for losses, higher for the rest. The
        best checkpoint, sweeps, comparisons and the board all rank by this one rule."""
        metric = metric or cls.default_metric
        if metric.removeprefix("eval_") == cls.default_metric.removeprefix("eval_"):
            return metric, cls.greater_is_better
        return metric, not _LOWER_IS_BETTER.search(metric)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.options = cfg.task.options
        self.labels: list[str] | None = cfg.data.labels

    # data ---------------------------------------------------------------------------------
    def prepare_data(self) -> PreparedData:
        """Read and check the train file, then split it (`lmtune.data.splits`); the same for
        every task, which fills in the hooks below (read, carving, keys, report, to dataset)."""
        d = self.cfg.data
        if not d.train:
            raise LmtuneError(
                "no training data given", hint="set data.train in the config or pass --train FILE"
            )
        streamed = self.prepare_stream()
        if streamed is not None:
            if d.audit:
                raise LmtuneError(
                    "data.audit reads the whole training file; it cannot audit a streamed one",
                    hint="run `lmtune audit` on the file, or drop data.audit",
                )
            return streamed
        train, info = self.read_records(d.train, "train")
        prepared = split_records(
            train,
            self.read_records,
            SplitSettings.from_config(self.cfg),
            self.carving(),
            self.dedup_key,
            source=d.train,
            train_info=info,
        )
        # Audited as read and carved: augmented copies would only be near duplicates of their source.
        audit = self._audit(prepared.records) if d.audit else None
        prepared.records["train"], added = self.extend_train(prepared.records["train"])
        report = {**self.data_report(prepared), **added}
        if audit is not None:
            report["audit"] = audit.summary
        datasets = {name: self.to_dataset(records) for name, records in prepared.records.items()}
        return PreparedData(splits=datasets, labels=self.labels, report=report, audit=audit)

    def _audit(self, records: dict[str, list[Any]]) -> Any:
        """data.audit: the fast audit of the splits (`lmtune.data.audit`), before any augmentation."""
        from lmtune.data.audit import AuditSettings, audit_records, encoder_for

        return audit_records(self, records, AuditSettings(seed=self.cfg.train.seed), encoder_for(self.cfg))

    def read_records(self, path: str, split: str | None) -> tuple[list[Any], dict[str, Any]]:
        """The checked records of one file, and what reading found (counts for the data report).

        `split` is "train" (whose records decide labels, columns and the like), "validation" or
        "test" (checked against what train decided), or None for a labelled file `lmtune eval` reads.
        """
        raise NotImplementedError

    def to_dataset(self, records: list[Any]) -> Dataset:
        """The untokenized dataset of checked records (what `tokenize` takes)."""
        raise NotImplementedError

    def carving(self) -> Carving:
        """How validation and test are carved out of train when they have no file of their own."""
        return Carving()

    def overlap_key(self, record: Any) -> str:
        """A record's text, for the report's duplicates and train/held-out overlaps."""
        raise NotImplementedError

    def dedup_key(self, record: Any) -> Hashable:
        """What makes two training records duplicates (data.drop_duplicates)."""
        return self.overlap_key(record)

    def extend_train(self, train: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """Records added to train once every split is carved (augmentation), and report entries."""
        return train, {}

    def data_report(self, prepared: SplitRecords) -> dict[str, Any]:
        """What report.md's data section and metrics.json show about the splits."""
        return prepared.summary(self.overlap_key)

    def prepare_stream(self) -> PreparedData | None:
        """Data whose train split streams from its file (`PreparedData.train_stream`); None: in memory."""
        return None

    def read_labelled(self, path: str) -> Dataset:
        """A labelled file for `lmtune eval`, checked against the run's labels."""
        records, _ = self.read_records(path, None)
        return self.to_dataset(records)

    def record_where(self, record: Any) -> str:
        """Where a checked record came from ("file, line N"), for the data audit's findings."""
        return record.get("_where", "") if isinstance(record, dict) else ""

    def audit_labels(self, records: list[Any]) -> Any:
        """The records' labels for the audit's label-issue check (`lmtune.data.audit.SequenceLabels`
        or `TokenLabels`), for tasks declaring `label-audit`; None when these records have none."""
        return None

    def read_inputs(self, path: str) -> list[dict[str, Any]]:
        """Inputs for `lmtune predict` (labels not required)."""
        raise NotImplementedError

    def check_input(self, index: int, item: dict[str, Any]) -> None:
        """Raise `LmtuneError` for an input record `predict` cannot take (`index` counts from 0)."""
        if not isinstance(item.get("text"), str):
            raise LmtuneError(f"input {index + 1}: expected text, got {type(item.get('text')).__name__}")

    def resolved_options(self) -> dict[str, Any]:
        """Task options the data decided (e.g. multi-label, tag scheme), written into config.yaml."""
        return {}

    def samples_per_row(self) -> int:
        """Training samples one train row becomes: what the step count of an epoch is made of."""
        return 1

    # Config data key -> attribute holding the column the data decided (found by common names).
    resolved_columns: ClassVar[dict[str, str]] = {}

    def resolved_data(self) -> dict[str, Any]:
        """Data keys the data decided (labels, columns), written into config.yaml's `data:`."""
        return {
            "labels": self.labels,
            **{key: getattr(self, attr) for key, attr in self.resolved_columns.items()},
        }

    def bind(self, cfg: RunConfig) -> None:
        """Adopt the resolved config after `prepare_data` (which already set what the data decided),
        so this task object behaves as the one `Run.load` builds from config.yaml."""
        self.cfg = cfg
        self.options = cfg.task.options
        self.labels = cfg.data.labels

    # model --------------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> nn.Module:
        raise NotImplementedError

    def tokenize(self, dataset: Dataset, tokenizer: Any) -> Dataset:
        raise NotImplementedError

    def collator(self, tokenizer: Any) -> Any:
        raise NotImplementedError

    def forward_batches(self, tokenizer: Any, dataset: Dataset, batch_size: int, count: int) -> list[dict]:
        """`count` batches of `batch_size` real rows of `dataset` (wrapping around a small one) as
        the model's forward pass takes them: what export times and traces. A task whose trainer
        collates for itself (collator None) overrides it."""
        features = [dict(row) for row in self.tokenize(dataset, tokenizer)]
        return batches_of(features, self.collator(tokenizer), batch_size, count)

    def trainer_spec(self) -> TrainerSpec:
        """Which Trainer trains this task (default: `LmtuneTrainer` with TrainingArguments).

        A task trained by another library's Trainer (TRL's DPO, reward or GRPO trainers) names a
        class that mixes `LmtuneTrainer` into it, and that library's arguments class.
        """
        from lmtune.training.trainer import TrainerSpec

        return TrainerSpec()

    # metrics and predictions ---------------------------------------------------------------
    def trainer_metrics(self) -> Any:
        """`compute_metrics` for the Trainer's per-epoch evaluation (scalars only)."""
        return None

    def evaluate(self, model: nn.Module, tokenizer: Any, dataset: Dataset, batch_size: int) -> EvalResult:
        raise NotImplementedError

    def predict(
        self,
        model: nn.Module,
        tokenizer: Any,
        inputs: Rows,
        batch_size: int,
        options: BaseModel | None = None,
    ) -> Rows:
        """Task-shaped predictions; `options` is a validated `PredictOptions` (e.g. generation)."""
        raise NotImplementedError

    def predict_options(self, raw: dict[str, Any] | None) -> BaseModel:
        """Validate per-call prediction options (`lmtune predict --option k=v`, server requests)."""
        from pydantic import ValidationError

        try:
            return self.PredictOptions(**(raw or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            valid = ", ".join(self.PredictOptions.model_fields) or "none"
            msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
            raise LmtuneError(
                f"predict option '{key}': {msg}", hint=f"options of task '{self.name}': {valid}"
            ) from None

    def baseline(
        self, model: nn.Module, tokenizer: Any, splits: dict[str, Dataset], batch_size: int
    ) -> dict[str, Any] | None:
        """Metrics of the untuned model, measured before the method is applied (None: skip)."""
        return None

    def report_sections(self, results: dict[str, EvalResult], run_dir: Path) -> list[str]:
        """Markdown sections (and plots written into run_dir) for report.md."""
        return []

    # after training: state fitted on validation (e.g. a temperature) ------------------------------
    def fit_after_training(
        self, model: nn.Module, tokenizer: Any, validation: Dataset | None, batch_size: int
    ) -> dict[str, Any]:
        """Fit what the task derives from the trained model on the (untokenized) validation split,
        before the model is saved and evaluated; returns entries for metrics.json (default: none).
        What it fits is `fitted_state`, saved in model/lmtune.json and given back by `Run.load`."""
        return {}

    def fitted_state(self) -> dict[str, Any]:
        """JSON-able state `fit_after_training` fitted (model/lmtune.json's `task_state`)."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take back `fitted_state` when a finished run is loaded (`{}` for runs without any)."""

    # eval --group-column: declared by "group-metrics" (`evaluation/fairness.py`) ------------------
    def read_labelled_columns(
        self, path: str, columns: Sequence[str]
    ) -> tuple[Dataset, dict[str, list[str]]]:
        """`read_labelled(path)` plus the values of `columns` of the same file, one per dataset row
        (rows the task drops are dropped from the columns too); the columns never reach the model."""
        raise NotImplementedError

    def evaluate_rows(
        self, model: nn.Module, tokenizer: Any, dataset: Dataset, batch_size: int
    ) -> tuple[EvalResult, list[str], list[str]]:
        """`evaluate`, plus each row's gold and predicted label (in dataset order), from one pass."""
        raise NotImplementedError

    def attribution_row(
        self, model: nn.Module, tokenizer: Any, item: dict[str, Any], target: str | None, options: Any
    ) -> ExplainRow:
        """An input as one model row and the outputs to explain in it (`target`: one the user
        named, else the predicted ones); declared by "token-attributions" (`evaluation/explain.py`)."""
        raise NotImplementedError


# ---- shared inference machinery ----------------------------------------------------------------
def records_dataset(records: list[dict[str, Any]], columns: dict[str, str]) -> Dataset:
    """A `datasets.Dataset` of `records` with typed columns: "text", "bool", or "messages"
    (a list of {role, content}), so empty splits and message lists keep their schema."""
    from datasets import Dataset, Features, Value

    kinds = {"text": Value("string"), "bool": Value("bool")}
    kinds["messages"] = [{"role": Value("string"), "content": Value("string")}]
    features = Features({name: kinds[kind] for name, kind in columns.items()})
    return Dataset.from_dict({name: [r[name] for r in records] for name in columns}, features=features)


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def length_sorted_batches(
    features: Sequence[dict[str, Any]],
    collator: Any,
    batch_size: int | Callable[[int], int],
    key: str = "input_ids",
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Batches of similar length (little padding), longest first; yields original indices with each.

    `batch_size` may be a function of the batch's longest length (rows that fit a memory budget).
    """
    order = sorted(range(len(features)), key=lambda i: len(features[i][key]), reverse=True)
    start = 0
    while start < len(order):
        rows = batch_size(len(features[order[start]][key])) if callable(batch_size) else batch_size
        index = order[start : start + rows]
        start += rows
        yield index, collator([features[i] for i in index])


def batches_of(features: list[dict[str, Any]], collate: Any, batch_size: int, count: int) -> list[dict]:
    """`count` collated batches of `batch_size` features (wrapping around), without labels."""
    if not features:
        raise LmtuneError("the split is empty", hint="nothing to measure on")
    batches = []
    for b in range(count):
        rows = [features[(b * batch_size + i) % len(features)] for i in range(batch_size)]
        batches.append({k: v for k, v in collate(rows).items() if k != "labels"})
    return batches


# The LoRA adapter of each input row while a server runs one mixed-adapter forward.
_ROW_ADAPTERS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "lmtune_row_adapters", default=None
)


@contextlib.contextmanager
def rows_with_adapters(names: Sequence[str]) -> Iterator[None]:
    """Within this block the batches of `inference_batches` carry peft's `adapter_names`: input
    row i runs with LoRA adapter `names[i]` ("__base__": adapters off). Only for tasks that
    declare "mixed-adapter-batches" (one model row per input, so the batch index is the input's).
    """
    token = _ROW_ADAPTERS.set(list(names))
    try:
        yield
    finally:
        _ROW_ADAPTERS.reset(token)


def inference_batches(
    task: Task,
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    collator: Any,
    batch_size: int | Callable[[int], int],
    drop: tuple[str, ...] = ("labels",),
) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """The inference loop of every task: length-sorted batches on the model's device.

    While the caller works on a batch, the model is in eval mode under `torch.inference_mode`
    and the autocast of the task's `train.precision` (resolved for the device). Keys in `drop`
    (gold labels, by default) are left out of the batches.
    """
    row_adapters = _ROW_ADAPTERS.get()
    if row_adapters is not None and len(row_adapters) != len(features):
        raise RuntimeError(
            f"{len(row_adapters)} adapter names for {len(features)} rows: a mixed-adapter batch needs "
            f"a task with one model row per input ({task.name} does not declare mixed-adapter-batches)"
        )
    device = model_device(model)
    with inference_context(task, model):
        for index, batch in length_sorted_batches(features, collator, batch_size):
            moved = {k: _to(v, device) for k, v in batch.items() if k not in drop and v is not None}
            if row_adapters is not None:
                moved["adapter_names"] = [row_adapters[i] for i in index]
            yield index, moved


# A precision that replaces the task's `train.precision` for inference within a block (a server's
# `--precision`); None: the run's own.
_INFERENCE_PRECISION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lmtune_inference_precision", default=None
)


@contextlib.contextmanager
def inference_precision(precision: str | None) -> Iterator[None]:
    """Within this block inference runs in `precision` ("fp32", "bf16", "fp16") instead of the
    run's `train.precision`; None leaves the run's."""
    token = _INFERENCE_PRECISION.set(precision)
    try:
        yield
    finally:
        _INFERENCE_PRECISION.reset(token)


@contextlib.contextmanager
def inference_context(task: Task, model: nn.Module) -> Iterator[None]:
    """Eval mode, `torch.inference_mode` and the autocast of the task's `train.precision` (or of
    `inference_precision`): what every forward outside training runs under (batched inference,
    streamed generation), so a streamed answer is the answer `predict` gives."""
    device = model_device(model)
    precision = _INFERENCE_PRECISION.get() or resolve_precision(
        task.cfg.train.precision, device, task.supports("bf16-on-cpu")
    )
    model.eval()
    with torch.inference_mode(), autocast_for(device, precision):
        yield


def _to(value: Any, device: torch.device) -> Any:
    # Collators may add flags beside the tensors (e.g. use_cache=False for packed rows).
    return value.to(device) if isinstance(value, torch.Tensor) else value


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matrix products run in hardware (oneDNN), not emulated."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # private helpers; absent on non-x86 builds
        return False


def resolve_precision(precision: str, device: torch.device | None = None, cpu_bf16: bool = False) -> str:
    """auto: bf16 on GPUs that support it; bf16 on CPUs with native bf16 when `cpu_bf16` (the
    task's `bf16_on_cpu`: decoders, whose large matrix products ran 1.5x faster in bf16 autocast
    on an AMX CPU, where MiniLM-sized encoders gained only 6-8%); fp32 elsewhere."""
    if precision != "auto":
        return precision
    device = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
