"""The task interface, and the inference loop every task shares.

A task knows its data (columns, labels, checks), its model head, how to tokenize and
collate, its metrics, how to turn model outputs into predictions, and what its report
shows. The run orchestration in `lmtune.run` is the same for every task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from lmtune.errors import LmtuneError

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import nn

    from lmtune.config import RunConfig


class NoTaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


@dataclass
class EvalResult:
    """Scalar metrics for metrics.json plus details (per-class tables, matrices) for reports."""

    metrics: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


class Task:
    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoTaskOptions
    PredictOptions: ClassVar[type[BaseModel]] = NoTaskOptions
    peft_task_type: ClassVar[str | None] = None
    # Parameter-name parts that make up the task head (kept trainable by freeze/bitfit/...).
    head_names: ClassVar[tuple[str, ...]] = ()
    # Head modules peft must train and save beside the adapter (`modules_to_save`).
    peft_head_names: ClassVar[tuple[str, ...]] = ()
    default_metric: ClassVar[str] = "loss"
    greater_is_better: ClassVar[bool] = True
    # Whether prepare_data can stream the train file (data.streaming).
    supports_streaming: ClassVar[bool] = False
    # Whether `precision: auto` means bf16 on a CPU with native bf16 (see resolve_precision).
    bf16_on_cpu: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.options = cfg.task.options
        self.labels: list[str] | None = cfg.data.labels

    # data ---------------------------------------------------------------------------------
    def prepare_data(self) -> PreparedData:
        raise NotImplementedError

    def read_labelled(self, path: str) -> Dataset:
        """A labelled file for `lmtune eval`, checked against the run's labels."""
        raise NotImplementedError

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

    # model --------------------------------------------------------------------------------
    def build_model(self, path: str, *, fresh_head: bool) -> nn.Module:
        raise NotImplementedError

    def tokenize(self, dataset: Dataset, tokenizer: Any) -> Dataset:
        raise NotImplementedError

    def collator(self, tokenizer: Any) -> Any:
        raise NotImplementedError

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
        inputs: list[dict[str, Any]],
        batch_size: int,
        options: BaseModel | None = None,
    ) -> list[dict[str, Any]]:
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


# ---- shared inference machinery ----------------------------------------------------------------
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
    features: Sequence[dict[str, Any]], collator: Any, batch_size: int, key: str = "input_ids"
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Batches of similar length (little padding); yields original indices with each batch."""
    order = sorted(range(len(features)), key=lambda i: len(features[i][key]), reverse=True)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield index, collator([features[i] for i in index])


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
