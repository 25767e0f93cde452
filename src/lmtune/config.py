"""The run configuration: one schema, the single source of truth.

A YAML file, CLI flags (`--model`, `--set train.epochs=3`, ...) and the Python API all build
the same `RunConfig`. Unknown keys are errors that name the key and suggest the closest
valid one. Method and task options live flat under `method:` / `task:` and are validated
by the options model of the registered method or task, so adding a method never touches
this file.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmtune.errors import LmtuneError
from lmtune.training.optimizers import OPTIMIZERS, check_available, check_settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Which pretrained model to start from."""

    name: str = Field(description="Packaged model name, local directory or Hugging Face Hub id.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(
        default=False, description="Run model code shipped with a hub repo. Off unless you trust it."
    )
    from_run: Literal["merge", "continue"] = Field(
        default="merge",
        description="When `name` is a finished lmtune run: start from its model with the adapter merged "
        "in (merge), or keep its base and go on training its peft adapter (continue: the same method).",
    )


class _Registered(BaseModel):
    """A registry-backed section: a name plus flat options validated by the registered class."""

    model_config = ConfigDict(extra="allow", validate_assignment=False)

    @property
    def options(self) -> BaseModel:
        return self._options_model()(**(self.model_extra or {}))

    def _options_model(self) -> type[BaseModel]:  # pragma: no cover - overridden
        raise NotImplementedError


class TaskConfig(_Registered):
    """The task; its options (e.g. `multi_label`) are flat keys beside `type`."""

    type: str = Field(default="classification", description="Registered task name.")

    @model_validator(mode="after")
    def _validate_options(self) -> TaskConfig:
        from lmtune.tasks import get_task_class

        self.__pydantic_extra__ = _validated_options(
            get_task_class(self.type).Options, self.model_extra, "task"
        )
        return self

    def _options_model(self) -> type[BaseModel]:
        from lmtune.tasks import get_task_class

        return get_task_class(self.type).Options


class MethodConfig(_Registered):
    """The fine-tuning method; its options (e.g. `r`, `alpha`) are flat keys beside `name`."""

    name: str = Field(default="lora", description="Registered method name.")

    @model_validator(mode="after")
    def _validate_options(self) -> MethodConfig:
        from lmtune.methods import get_method_class

        self.__pydantic_extra__ = _validated_options(
            get_method_class(self.name).Options, self.model_extra, "method"
        )
        return self

    def _options_model(self) -> type[BaseModel]:
        from lmtune.methods import get_method_class

        return get_method_class(self.name).Options


class OptionsError(ValueError):
    """Raised inside validation for a bad method/task option; carries the finished message."""

    def __init__(self, error: LmtuneError) -> None:
        self.error = error
        super().__init__(str(error))


def _validated_options(options_model: type[BaseModel], extra: dict[str, Any] | None, section: str) -> dict:
    try:
        return options_model(**(extra or {})).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join([section, *(str(p) for p in err["loc"])])
        if err["type"] == "extra_forbidden":
            valid = list(options_model.model_fields)
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.5)
            hint = (
                f"did you mean '{section}.{close[0]}'?"
                if close
                else ("valid options: " + ", ".join(valid) if valid else "this choice takes no options")
            )
            raise OptionsError(LmtuneError(f"unknown key '{key}'", hint=hint)) from None
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        raise OptionsError(LmtuneError(f"invalid value for '{key}': {msg}{got}")) from None


class AugmentConfig(_Strict):
    """Text augmentation of the training split (classification): EDA-style word edits."""

    ops: list[Literal["delete", "swap", "insert", "synonym"]] | None = Field(
        default=None,
        min_length=1,
        description="Edits to draw from; default: delete and swap, plus insert and synonym "
        "when a synonym source (word list or WordNet) is available.",
    )
    ratio: float = Field(
        default=0.5, ge=0, le=10, description="Augmented copies added per training row (0.5: +50%)."
    )
    p: float = Field(default=0.1, gt=0, le=0.5, description="Share of a text's words each edit touches.")
    synonyms: str | None = Field(
        default=None,
        description="Word list, one group of comma-separated synonyms per line; null: WordNet if installed.",
    )
    seed: int | None = Field(default=None, description="Augmentation seed; default train.seed.")


class DataConfig(_Strict):
    """Where the data is and how to read it.

    The fields here are read by every task. Keys that only some tasks read (e.g. classification's
    `label_delimiter`, `augment`, `streaming`) are declared by the task itself (`Task.DataOptions`)
    and validated against the chosen task once the whole config is known (`RunConfig`): they are
    written under `data:` like the others, and a key the chosen task does not read is an error
    that names the task.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    train: str | None = Field(default=None, description="Training file (csv, tsv, json, jsonl, parquet).")
    validation: str | None = Field(default=None, description="Validation file; carved from train if absent.")
    test: str | None = Field(default=None, description="Test file; carved from train if absent.")
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "conll"] = Field(
        default="auto",
        description="File format; 'auto' goes by the file extension "
        "(.conll/.bio/.iob, or .txt with 'token tag' lines, are CoNLL).",
    )
    text_column: str | None = Field(default=None, description="Text column; found by common names if unset.")
    text_pair_column: str | None = Field(default=None, description="Second text column for sentence pairs.")
    label_column: str | None = Field(
        default=None, description="Label column; found by common names if unset."
    )
    labels: list[str] | None = Field(
        default=None, description="Label list and order; taken from train if unset."
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, value: Any) -> Any:
        # YAML reads `labels: [0, 1]` as integers; labels are compared as text everywhere.
        if isinstance(value, list):
            value = [str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in value]
            duplicates = sorted({v for v in value if value.count(v) > 1}, key=str)
            if duplicates:
                raise ValueError(f"labels listed twice: {', '.join(map(str, duplicates))}")
        return value

    max_length: int = Field(default=256, ge=8, le=32768, description="Truncate inputs to this many tokens.")
    validation_split: float = Field(default=0.1, gt=0, lt=0.5, description="Share of train held out.")
    test_split: float = Field(default=0.1, gt=0, lt=0.5, description="Share of train held out for test.")
    drop_duplicates: bool = Field(default=False, description="Drop exact duplicate rows from train.")
    cache_tokenized: bool = Field(
        default=True,
        description="Cache tokenized splits on disk ($LMTUNE_CACHE/tokenized); reruns skip tokenizing.",
    )
    max_train_samples: int | None = Field(
        default=None, ge=1, description="Train on a seeded random subset of this size (quick experiments)."
    )
    audit: bool = Field(
        default=False,
        description="Run the fast data audit (label issues, duplicates, leakage, outliers) into report.md.",
    )


def common_data_keys() -> list[str]:
    """The data keys every task reads."""
    return list(DataConfig.model_fields)


def task_data_options(task_type: str) -> type[BaseModel]:
    """The model of the data keys that task `task_type` reads beyond the common ones."""
    from lmtune.tasks import get_task_class

    return get_task_class(task_type).DataOptions


def _validated_data_keys(task_type: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Validate the task-owned data keys; the values stay typed (e.g. `AugmentConfig`)."""
    options_model = task_data_options(task_type)
    try:
        options = options_model(**(extra or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(["data", *(str(p) for p in err["loc"])])
        if err["type"] != "extra_forbidden":
            msg = err.get("msg", "invalid value").removeprefix("Value error, ")
            got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
            raise OptionsError(LmtuneError(f"invalid value for '{key}': {msg}{got}")) from None
        valid = common_data_keys() + list(options_model.model_fields)
        close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.5)
        owners = [t for t in _tasks_reading(str(err["loc"][0])) if t != task_type]
        reason = f"task '{task_type}' does not read it" + (
            f" (read by: {', '.join(owners)})" if owners else ""
        )
        hint = f"did you mean 'data.{close[0]}'?" if close else "valid keys: " + ", ".join(valid)
        raise OptionsError(LmtuneError(f"unknown key '{key}': {reason}", hint=hint)) from None
    return {name: getattr(options, name) for name in options_model.model_fields}


def _tasks_reading(key: str) -> list[str]:
    from lmtune.tasks import TASKS

    return [name for name, cls in TASKS.classes().items() if key in cls.DataOptions.model_fields]


class DistributedConfig(_Strict):
    """How the processes of `accelerate launch` / `lmtune train --num-processes N` share the work."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        default="ddp", description="ddp: a full copy per process; fsdp / deepspeed: sharded (GPU)."
    )
    backend: Literal["auto", "nccl", "gloo", "mpi"] = Field(
        default="auto", description="Process-group backend; auto: nccl on GPU, gloo on CPU."
    )
    find_unused_parameters: bool | None = Field(
        default=None, description="DDP's find_unused_parameters; default: the Trainer's choice."
    )
    timeout_s: int = Field(default=1800, ge=60, description="Collective-operation timeout.")
    fsdp_sharding: Literal["full_shard", "shard_grad_op"] = Field(
        default="full_shard",
        description="full_shard: parameters, gradients and optimizer state sharded; shard_grad_op: "
        "parameters kept gathered between forward and backward.",
    )
    fsdp_wrap: list[str] | None = Field(
        default=None, description="Layer classes FSDP wraps; default: the model's own (_no_split_modules)."
    )
    fsdp_cpu_offload: bool = Field(default=False, description="Offload FSDP parameters to CPU memory.")
    deepspeed_stage: Literal[0, 1, 2, 3] = Field(default=2, description="DeepSpeed ZeRO stage.")
    deepspeed_offload: bool = Field(
        default=False, description="Offload optimizer state (and at stage 3 parameters) to CPU."
    )
    deepspeed_config: str | None = Field(
        default=None, description="A DeepSpeed JSON config file, used as it is (overrides the stage)."
    )


class TrainConfig(_Strict):
    """Optimisation and schedule. `None` means: the method's or task's sound default."""

    epochs: float = Field(default=3, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        default=None, gt=0, description="Stop after this many steps (overrides epochs)."
    )
    max_time_s: float | None = Field(
        default=None,
        gt=0,
        description="Stop after this much training time in seconds (evaluating and saving then); the "
        "schedule still spans epochs/max_steps, so the learning rate has not decayed to zero.",
    )
    batch_size: int = Field(default=16, ge=1, description="Per-device training batch size.")
    eval_batch_size: int | None = Field(default=None, ge=1, description="Evaluation batch size (default 2x).")
    learning_rate: float | None = Field(
        default=None, gt=0, description="Peak learning rate; per-method default."
    )
    optimizer: Literal[tuple(OPTIMIZERS)] = Field(  # type: ignore[valid-type]
        default="adamw",
        description="; ".join(f"{name}: {o.description}" for name, o in OPTIMIZERS.items()),
    )
    optimizer_target_modules: list[str] | str = Field(
        default="all-linear",
        description="galore_adamw/apollo_adamw: the linear layers whose optimizer states are projected "
        "(module names, a regex, or all-linear).",
    )
    optimizer_args: dict[str, float | int | str] = Field(
        default_factory=dict,
        description="Extra optimizer arguments, e.g. {rank: 64, update_proj_gap: 100} for GaLore.",
    )
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(default=0.01, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="Gradient clipping; null disables.")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    dropout: float | None = Field(default=None, ge=0, lt=1, description="Override the model's dropout rates.")
    seed: int = 42
    early_stopping_patience: int | None = Field(
        default=2, ge=1, description="Evaluations without improvement before stopping; null disables."
    )
    metric_for_best_model: str | None = Field(
        default=None, description="Metric that picks the best checkpoint."
    )
    eval_strategy: Literal["epoch", "steps", "no"] = "epoch"
    eval_steps: int | None = Field(default=None, gt=0)
    save_strategy: Literal["epoch", "steps", "no"] = "epoch"
    save_steps: int | None = Field(default=None, gt=0)
    save_total_limit: int = Field(
        default=2, ge=1, description="Checkpoints kept (best and newest never dropped)."
    )
    keep_checkpoints: bool = Field(default=False, description="Keep checkpoint-*/ after a successful run.")
    on_nan: Literal["stop", "skip"] = Field(
        default="stop",
        description="On a NaN/inf gradient: stop (keeping the last good checkpoint) or skip that step.",
    )
    logging_steps: int = Field(default=10, ge=1)
    num_workers: int = Field(default=0, ge=0, description="Data-loader worker processes.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="auto: bf16 on GPUs that have it and, for decoders, on CPUs with native bf16 "
        "(AMX or AVX512-BF16); fp32 otherwise.",
    )
    group_by_length: bool = Field(default=True, description="Batch similar lengths together (less padding).")
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    pad_to_multiple_of: int | None = Field(
        default=None,
        ge=1,
        description="Round each training batch's length up to a multiple of this (bounded shapes for "
        "a compiled step, aligned lengths for tensor cores). Default: no rounding.",
    )
    fast_dropout: bool = Field(
        default=True,
        description="On CPU, draw dropout masks from a hash-based generator: the same distribution, "
        "about 5-10x cheaper than torch's (training/fast_dropout.py); the masks differ from torch's.",
    )
    report_to: list[str] = Field(
        default_factory=lambda: ["tensorboard"], description="tensorboard, mlflow, wandb."
    )
    distributed: DistributedConfig | None = Field(
        default=None, description="Multi-process strategy (DDP, FSDP, DeepSpeed); unset: DDP defaults."
    )

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _no_is_a_word(cls, value: Any) -> Any:
        # `eval_strategy: no` in a YAML file arrives as False.
        return "no" if value is False else value

    @field_validator("optimizer")
    @classmethod
    def _optimizer_installed(cls, value: str) -> str:
        check_available(value)
        return value

    @model_validator(mode="after")
    def _optimizer_settings(self) -> TrainConfig:
        check_settings(self.optimizer, self.optimizer_args, self.distributed and self.distributed.strategy)
        return self

    @model_validator(mode="after")
    def _check_strategies(self) -> TrainConfig:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy 'steps' needs eval_steps")
        if self.save_strategy == "steps" and self.save_steps is None:
            raise ValueError("save_strategy 'steps' needs save_steps")
        return self


class SweepParam(_Strict):
    """One dimension of a sweep's search space."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SweepParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.step is not None:
            raise ValueError("'log' and 'step' cannot be combined")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale parameter needs low > 0")
        if self.type == "int" and any(
            v is not None and not float(v).is_integer() for v in (self.low, self.high, self.step)
        ):
            raise ValueError("an int parameter needs whole-number low, high and step")
        return self


class SweepConfig(_Strict):
    """Hyperparameter search (`lmtune sweep`): what to vary, how to sample, when to stop."""

    sampler: Literal["grid", "random", "tpe"] = "tpe"
    n_trials: int | None = Field(
        default=None, ge=1, description="Trials in total (resumes count); default 10, grid: the whole grid."
    )
    timeout_s: float | None = Field(default=None, gt=0, description="Stop starting trials after this long.")
    pruner: Literal["none", "median", "halving"] = Field(
        default="median", description="Stop weak trials early from their per-epoch validation metric."
    )
    space: dict[str, SweepParam] = Field(min_length=1, description="Dotted config key -> parameter.")
    direction: Literal["auto", "maximize", "minimize"] = Field(
        default="auto", description="auto: from the metric (the task's greater_is_better)."
    )
    seed: int = 42

    @field_validator("space")
    @classmethod
    def _dotted_keys(cls, space: dict[str, SweepParam]) -> dict[str, SweepParam]:
        for key in space:
            parts = key.split(".")
            sections = ("task", "method", "data", "train")
            if len(parts) < 2 or any(not p for p in parts) or parts[0] not in sections:
                raise ValueError(f"space key '{key}' must be a dotted key in task/method/data/train")
        return space


class EvaluationConfig(_Strict):
    """What a run computes about its trained model beyond the task's metrics."""

    explain_errors: int = Field(
        default=0, ge=0, le=100, description="Explain this many confident test errors in report.md."
    )
    faithfulness_samples: int = Field(
        default=0,
        ge=0,
        le=2000,
        description="Test rows on which the explanations' faithfulness is measured (0: not measured).",
    )


class RunConfig(_Strict):
    """Everything one fine-tuning run needs."""

    model: ModelConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = Field(default="runs/run", description="Run directory.")
    sweep: SweepConfig | None = Field(default=None, description="Search space for `lmtune sweep`.")
    evaluation: EvaluationConfig | None = Field(
        default=None, description="Explanations and their faithfulness, computed after training."
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthands(cls, raw: Any) -> Any:
        return normalise(raw) if isinstance(raw, dict) else raw

    @model_validator(mode="after")
    def _task_owned_data_keys(self) -> RunConfig:
        self.data.__pydantic_extra__ = _validated_data_keys(self.task.type, self.data.model_extra)
        return self

    @model_validator(mode="after")
    def _optimizer_fits_method(self) -> RunConfig:
        from lmtune.methods import get_method_class

        if OPTIMIZERS[self.train.optimizer].low_rank and get_method_class(self.method.name).supports(
            "peft-adapter"
        ):
            raise ValueError(
                f"train.optimizer {self.train.optimizer} projects the optimizer states of the model's own "
                f"linear weights, which method {self.method.name} freezes (it trains a peft adapter); "
                "use method full or freeze, or another optimizer"
            )
        return self

    @field_validator("output_dir")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("output_dir must not be empty")
        return value

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build and validate; any problem becomes one `LmtuneError` line."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise config_error(exc, source) from None
        except LmtuneError as exc:  # raised by a registry lookup (unknown method/task) in a validator
            raise LmtuneError(f"{source}: {exc.message}", hint=exc.hint) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        return cls.from_dict(apply_overrides(load_yaml(path), overrides or []), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        raw = self.model_dump(mode="json")
        # Optional sections that are unset stay out, so configs (and run fingerprints) of runs
        # that do not use them are unchanged.
        for section in ("sweep", "evaluation"):
            if raw.get(section) is None:
                raw.pop(section, None)
        if raw["data"].get("audit") is False:
            raw["data"].pop("audit")
        if raw["data"].get("augment", "unset") is None:
            raw["data"].pop("augment")
        if raw["model"].get("from_run") == "merge":
            raw["model"].pop("from_run")
        return raw

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ---- helpers ---------------------------------------------------------------------------
_SHORTHANDS = {"model": "name", "task": "type", "method": "name"}
_YAML11_BOOLEAN_WORDS = {"no", "yes", "on", "off", "y", "n"}
_SECTION_DEFAULTS = {"task": "classification", "method": "lora"}


def normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Expand `model: NAME`, `task: TYPE`, `method: NAME` into their mapping form."""
    out = dict(raw)
    for section, key in _SHORTHANDS.items():
        if isinstance(out.get(section), str):
            out[section] = {key: out[section]}
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LmtuneError(f"config file not found: {path}", hint="check the path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, always
        raise LmtuneError(f"{path}{at}: not valid YAML ({problem})") from None
    except UnicodeDecodeError:
        raise LmtuneError(f"{path}: not UTF-8 text", hint="save the config as UTF-8") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LmtuneError(f"{path}: the config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `dotted.key=value`; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in item:
        raise LmtuneError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, _, value = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise LmtuneError(
            f"--set {item!r}: empty key", hint="use dotted keys such as train.learning_rate=5e-4"
        )
    if value.strip().lower() in _YAML11_BOOLEAN_WORDS:
        # YAML 1.1 reads `no`/`off` as False; `--set train.eval_strategy=no` means the word.
        # Boolean fields still accept these words (pydantic parses them), so nothing is lost.
        return key.split("."), value.strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides to a raw config mapping (returns a new mapping)."""
    out = normalise(copy.deepcopy(raw))
    for item in overrides:
        parts, value = parse_override(item)
        set_dotted(out, parts, value)
    return out


def set_dotted(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set `raw[a][b][c] = value`; changing a method/task name drops the old one's options."""
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part in _SHORTHANDS:
            child = {_SHORTHANDS[part]: child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    last = parts[-1]
    # Options belong to the method/task they were written for (the default one if unnamed).
    renamed = (
        len(parts) == 2
        and parts[0] in _SECTION_DEFAULTS
        and last == _SHORTHANDS[parts[0]]
        and node.get(last, _SECTION_DEFAULTS[parts[0]]) != value
    )
    if renamed:
        node.clear()
    node[last] = value


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """Valid field names at a location of the schema (for 'did you mean')."""
    model: Any = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def config_error(exc: ValidationError, source: str) -> LmtuneError:
    """Turn a pydantic error into one line naming the key, the problem and a fix."""
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return describe_error(exc.errors()[0], source, more)


def describe_error(err: Any, source: str, more: str = "") -> LmtuneError:
    """One of a ValidationError's `errors()` as the one-line LmtuneError the CLI prints (the
    board shows each beside its field)."""
    loc = tuple(err.get("loc", ()))
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        candidates = _valid_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), candidates, n=1, cutoff=0.5)
        hint = f"did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else None
        if not hint and candidates:
            hint = "valid keys: " + ", ".join(candidates)
        return LmtuneError(f"{source}: unknown key '{dotted}'{more}", hint=hint)
    if err["type"] == "missing":
        return LmtuneError(f"{source}: missing required key '{dotted}'{more}")
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, OptionsError):
        return LmtuneError(f"{source}: {ctx_err.error.message}{more}", hint=ctx_err.error.hint)
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) and "input" in err else ""
    return LmtuneError(f"{source}: invalid value for '{dotted}': {msg}{shown}{more}")
