"""Build a Hugging Face Trainer from a RunConfig.

Trainer brings checkpoint/resume, callbacks, trackers and Accelerate (DDP/FSDP/DeepSpeed).
What made the usual Trainer setup slow is random batches padded to their longest member:
we always tokenize without padding, precompute lengths, group batches by length for both
training and evaluation, and pad per batch.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from lmtune.config import RunConfig
from lmtune.tasks.base import resolve_precision
from lmtune.training import attention, chunked_ce, distributed, fast_dropout
from lmtune.training.optimizers import builder as optimizer_builder
from lmtune.training.optimizers import trainer_arguments as optimizer_arguments

# The fused AdamW (one kernel over all parameters, CPU and GPU since torch 2.4) is Trainer's own
# default; plain "adamw_torch" on CPU steps parameter by parameter, which cost full fine-tuning of
# MiniLM 85 ms per step (more than forward and backward together).


@dataclass(frozen=True)
class TrainerSpec:
    """How a task is trained (`Task.trainer_spec`): the Trainer class, its arguments class and
    the task's own arguments (e.g. TRL's DPO `beta`), on top of what `train:` decides."""

    trainer_class: Any = None  # default: LmtuneTrainer
    arguments_class: Any = None  # default: transformers.TrainingArguments
    arguments: dict[str, Any] = field(default_factory=dict)


def training_arguments(
    cfg: RunConfig,
    output_dir: Path,
    metric: str,
    greater_is_better: bool,
    cpu_bf16: bool = False,
    spec: TrainerSpec | None = None,
) -> Any:
    from transformers import TrainingArguments

    spec = spec or TrainerSpec()
    t = cfg.train
    precision = resolve_precision(t.precision, cpu_bf16=cpu_bf16)
    load_best = _can_load_best(t)
    # TensorBoard, MLflow and W&B are attached by `build_trainer` so their logs stay in the run
    # (training/tracking.py); other trackers go through transformers' own `report_to`.
    report_to = [r for r in t.report_to if r not in ("none", "tensorboard", "mlflow", "wandb")] or "none"
    extra = distributed.trainer_arguments(t.distributed)
    if precision == "bf16" and not torch.cuda.is_available():
        # transformers refuses bf16 without a GPU unless told the run is on CPU (bf16 autocast on CPU).
        extra["use_cpu"] = True
    arguments = dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size * 2,
        learning_rate=t.learning_rate,
        **optimizer_arguments(t.optimizer, t.optimizer_target_modules, t.optimizer_args),
        lr_scheduler_type=t.scheduler
        if t.scheduler != "constant" or t.warmup_ratio == 0
        else "constant_with_warmup",
        warmup_steps=t.warmup_ratio,  # transformers 5: a float below 1 is a ratio of total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm if t.max_grad_norm is not None else 0.0,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        seed=t.seed,
        data_seed=t.seed,
        eval_strategy=t.eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        # lmtune rotates checkpoints itself, after each one is sealed (training/checkpoints.py):
        # Trainer's rotation runs before a new checkpoint is complete.
        save_total_limit=None,
        # Early stopping's patience counter survives a resume, as in an uninterrupted run.
        restore_callback_states_from_checkpoint=True,
        load_best_model_at_end=load_best,
        metric_for_best_model=metric if load_best else None,
        greater_is_better=greater_is_better,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        report_to=report_to,
        dataloader_num_workers=t.num_workers,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # Our datasets hold only model inputs plus `length`, which the sampler reads.
        remove_unused_columns=False,
        activation_checkpointing=t.gradient_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        torch_compile=t.torch_compile,
        disable_tqdm=False,
        **extra,
    )
    # The task's own arguments (e.g. TRL's DPO `beta`) win over what `train:` decides.
    arguments.update(spec.arguments)
    return (spec.arguments_class or TrainingArguments)(**arguments)


def _can_load_best(t: Any) -> bool:
    """Picking the best checkpoint needs a checkpoint at every evaluation."""
    return (
        t.eval_strategy != "no"
        and t.save_strategy == t.eval_strategy
        and (t.eval_strategy != "steps" or t.save_steps == t.eval_steps)
    )


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Trainer's length-grouped order, drawn from a generator seeded by (seed, epoch).

    Trainer's LengthGroupedSampler draws from the global torch RNG when its iterator starts. A
    resumed run starts the interrupted epoch's iterator in a different RNG state (Trainer loads
    the checkpoint's RNG only after skipping the batches already trained on), so it would see a
    different order than the uninterrupted run. Seeding per epoch makes the order a function of
    the epoch alone, which also leaves the global RNG (dropout) untouched by the sampler.

    Trainer's order also walks each mega-batch (up to 50 batches) from its longest batch to its
    shortest, so lengths, and whatever correlates with length (SST-2's labels do), drift in a
    saw-tooth through the epoch. After a short run that showed: MiniLM LoRA, 100 steps, test
    accuracy 0.62-0.73 against 0.77 for random batches. Here the batches keep their lengths but
    are visited in a shuffled order (the one holding the longest example still first, so an
    out-of-memory error shows at once; a last, smaller batch stays last).
    """

    def __init__(self, base: LengthGroupedSampler, seed: int, processes: int = 1) -> None:
        # datasets returns a lazy Column; indexing it per element costs ~50 us, a list costs nothing.
        super().__init__(base.batch_size, lengths=[int(n) for n in base.lengths])
        self.seed = seed
        self.epoch = 0
        # Several processes split each run of `processes` consecutive batches between them:
        # grouping and shuffling whole global batches gives every step the rows one process
        # with the global batch size would see.
        self.global_batch = base.batch_size * processes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        return iter(shuffled_length_groups(self.lengths, self.global_batch, generator))


def shuffled_length_groups(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """Indices whose consecutive `batch_size` slices hold similar lengths, the batches in random order."""
    indices = get_length_grouped_indices(lengths, batch_size, generator=generator)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    tail = [batches.pop()] if len(batches) > 1 and len(batches[-1]) < batch_size else []
    first, rest = batches[:1], batches[1:]
    order = torch.randperm(len(rest), generator=generator).tolist()
    return [i for batch in (*first, *(rest[k] for k in order), *tail) for i in batch]


class LmtuneTrainer(Trainer):
    """Trainer that asks the task and the method what it may do, routes attention through
    training/attention.py while it trains, keys the fast-dropout masks by step, and counts the
    real and padded tokens it trains on (for tokens/s figures).

    `task` and `method` (the task object or class and the method, as `build_trainer` passes
    them) answer capability questions, and the method may build the optimizer; without them
    nothing is assumed: the loss is normalised as the model's forward says and logits are
    computed everywhere.
    """

    real_tokens = 0
    padded_tokens = 0

    def __init__(
        self,
        *args: Any,
        task: Any = None,
        method: Any = None,
        train_optimizer: tuple[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.method = method
        # (train.optimizer, train.optimizer_args) where lmtune builds that optimizer itself (Muon).
        chosen = train_optimizer
        self.own_optimizer = chosen if chosen is not None and optimizer_builder(chosen[0]) else None
        self.task_head_names: tuple[str, ...] = tuple(getattr(task, "head_names", ()) or ())
        # Trainer takes any model whose forward accepts **kwargs for one that normalises its loss by
        # `num_items_in_batch`, and multiplies the loss by the number of processes to undo DDP's
        # gradient averaging. Encoder heads (sequence/token classification, QA) return a plain mean,
        # so in N processes their loss and gradients came out N times too large. Only tasks that
        # declare it route `num_items_in_batch` into their loss.
        counts_items = task is not None and task.supports("loss-counts-items")
        if self.model_accepts_loss_kwargs and not counts_items:
            self.model_accepts_loss_kwargs = False
        self.labelled_logits_only = (
            task is not None
            and task.supports("labelled-logits")
            # peft's prompt and prefix tuning prepend virtual tokens: the positions are not the input's.
            and method is not None
            and not method.supports("virtual-tokens")
            and _can_select_logits(self.model)
        )
        if self.args.activation_checkpointing or self.args.torch_compile:
            # Recomputing a checkpointed block draws its masks again, further on in the step's
            # block, so the backward pass would see other masks than the forward did; torch's
            # dropout restores its RNG state for the recompute. Under torch.compile the custom
            # autograd mask does not trace (dynamo refuses its saved mask), and inductor fuses
            # torch's dropout into the kernels around it anyway.
            fast_dropout.uninstall(self.model)
        self.dropout_rng = fast_dropout.rng_of(self.model)
        self._dropout_step = (-1, -1)  # (global step, micro-step) of the last training step
        self.attention_routed = False  # set while `train` runs (attention.routed)

    def _prepare_for_training(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer's start of training (Accelerate's `prepare`), taking its turn with other setups:
        it reads Accelerate's process-wide state, which a parallel sweep trial building its
        TrainingArguments resets (seen in CI: "'AcceleratorState' object has no attribute
        'parallelism_config'")."""
        with _SETUP_LOCK:
            return super()._prepare_for_training(*args, **kwargs)

    def _get_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer's train and eval loaders, also built through Accelerate's `prepare`, which reads
        the same process-wide state: they take their turn too (seen in CI: "'AcceleratorState'
        object has no attribute 'distributed_type'" in a parallel sweep trial)."""
        with _SETUP_LOCK:
            return super()._get_dataloader(*args, **kwargs)

    def create_optimizer(self, model: Any = None) -> Any:
        """The method's optimizer where it brings one (LoRA+), else lmtune's own for `train.optimizer`
        where lmtune builds it (Muon beside the Trainer's AdamW), else the Trainer's."""
        if self.optimizer is None and (self.method is not None or self.own_optimizer is not None):
            target = self.model if model is None else model
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
            if self.method is not None:
                self.optimizer = self.method.optimizer(target, optimizer_cls, kwargs)
            if self.own_optimizer is not None:
                self.optimizer = self._own_optimizer(target, optimizer_cls, kwargs)
        return super().create_optimizer(model) if self.optimizer is None else self.optimizer

    def _own_optimizer(self, model: Any, adamw_cls: type, kwargs: dict[str, Any]) -> Any:
        from lmtune.errors import LmtuneError

        name, arguments = self.own_optimizer  # type: ignore[misc]
        if self.optimizer is not None:  # the method built its own just now
            raise LmtuneError(
                f"method '{self.method.name}' builds its own optimizer with these options (e.g. LoRA+'s "
                f"parameter groups), which train.optimizer {name} cannot be combined with",
                hint="drop the method's optimizer option, or set train.optimizer to adamw",
            )
        return optimizer_builder(name)(
            model,
            adamw_cls,
            kwargs,
            arguments=arguments,
            weight_decay=self.args.weight_decay,
            decay_names=set(self.get_decay_parameter_names(model)),
            head_names=self.task_head_names,
        )

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer.train with the model's attention on lmtune's route for its duration."""
        with attention.routed(self.model) as self.attention_routed:
            try:
                return super().train(*args, **kwargs)
            finally:
                self.attention_routed = False

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Causal LMs in training: project onto the vocabulary only where a label is.

        SFT masks the prompt out of the loss, yet the model's own loss computes logits (hidden x
        vocabulary, in fp32 for the loss) at every position and then ignores most of them. Passing
        `logits_to_keep` as a mask of the positions whose next token is labelled gives exactly the
        same loss and gradients for a fraction of the head's compute and memory.
        """
        if not (self.labelled_logits_only and model.training and not return_outputs and "labels" in inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self._labelled_loss(model, inputs, num_items_in_batch)

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> Any:
        """Evaluation of a causal LM's loss alone (no `compute_metrics` reads logits) projects only
        the labelled positions, as training does.

        Trainer's own step computes the model's loss, i.e. fp32 logits at every position: for Gemma 3
        (262k vocabulary) at an evaluation batch of 16 x 512 tokens that is 8.6 GB, which made the
        per-epoch evaluation, not training, set an SFT run's peak memory (17.9 GB on alpaca_zh).
        A subclass with its own loss (distillation) keeps Trainer's step.
        """
        own_loss = type(self).compute_loss is LmtuneTrainer.compute_loss
        if not (self.labelled_logits_only and prediction_loss_only and own_loss and "labels" in inputs):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        num_items_in_batch = self._get_num_items_in_batch([inputs], self.args.device)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self._labelled_loss(model, inputs, num_items_in_batch)
        return (loss.detach().mean(), None, None)

    def _labelled_loss(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any) -> Any:
        labels = inputs["labels"]
        targets = labels[:, 1:]
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = targets != -100
        features = {key: value for key, value in inputs.items() if key != "labels"}
        labelled = targets[keep[:, :-1]]
        vocabulary = model.get_output_embeddings().weight.shape[0]
        if chunked_ce.needs_chunks(labelled.numel(), vocabulary):
            # Large vocabularies (Gemma 3: 262k): never all labelled positions' logits at once.
            loss = chunked_ce.labelled_loss_sum(model, features, keep, labelled)
        else:
            logits = model(**features, logits_to_keep=keep).logits.float()
            loss = torch.nn.functional.cross_entropy(logits, labelled, reduction="sum")
        # As transformers' ForCausalLMLoss: a sum over the accumulated batch's labelled tokens, or
        # a per-batch mean; and, like Trainer.compute_loss, undo DDP's averaging of the former.
        if num_items_in_batch is None:
            return loss / keep.sum().clamp(min=1)
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # A task that batches in its own way (multi-task: one task per batch) brings its sampler.
        task_sampler = getattr(self.data_collator, "train_sampler", None)
        if task_sampler is not None:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return task_sampler(dataset, self._train_batch_size, self.args.data_seed or self.args.seed)
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            return EpochSeededLengthGroupedSampler(
                sampler, self.args.data_seed or self.args.seed, self.args.world_size
            )
        return sampler

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        # Trainer computes the total gradient norm before every optimizer step anyway; callbacks
        # that need it (the NaN guard) get it here instead of scanning every gradient again.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        for callback in self.callback_handler.callbacks:
            observe = getattr(callback, "observe_grad_norm", None)
            if observe is not None:
                observe(grad_norm)
        return grad_norm

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        sampler = super()._get_eval_sampler(eval_dataset)
        if type(sampler) is LengthGroupedSampler:
            sampler.lengths = [int(n) for n in sampler.lengths]
        return sampler

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """TRL's trainers write README.md into the output directory at every checkpoint; the run's
        card is lmtune's (evaluation/report.py), written when the run completes."""

    def _send_telemetry(self) -> None:
        """TRL's trainers report each start to the Hugging Face Hub; lmtune sends no usage data."""

    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        # TRL's GRPO hands the step a list of prompt rows, which it generates from: nothing to count.
        # (A Mapping, not a dict: the padding collators give a BatchEncoding, a UserDict.)
        if not isinstance(inputs, Mapping):
            self._start_dropout_step()
            return super().training_step(model, inputs, *args, **kwargs)
        ids = inputs.get("input_ids")
        if isinstance(ids, torch.Tensor):
            mask = inputs.get("attention_mask")
            real = int(mask.sum()) if isinstance(mask, torch.Tensor) and mask.dim() == 2 else ids.numel()
            self.real_tokens += real
            self.padded_tokens += ids.numel()
        self._start_dropout_step()
        positions = inputs.get("position_ids")
        if self.attention_routed and positions is not None and "attention_mask" not in inputs:
            with attention.segments(positions):
                return super().training_step(model, inputs, *args, **kwargs)
        return super().training_step(model, inputs, *args, **kwargs)

    def _start_dropout_step(self) -> None:
        """Key this (micro-)step's dropout masks by the step, which a resumed run reproduces.

        Trainer calls training_step once per accumulated micro-batch with the same global step,
        so the micro-step counts those; a resume starts at an optimizer-step boundary.
        """
        if self.dropout_rng is None:
            return
        step, micro = self._dropout_step
        step, micro = (step, micro + 1) if step == self.state.global_step else (self.state.global_step, 0)
        self._dropout_step = (step, micro)
        self.dropout_rng.start_step(self.args.seed, step, micro, self.args.process_index)


def _can_select_logits(model: Any) -> bool:
    """Whether a causal LM's forward takes `logits_to_keep` as a boolean mask (every transformers 5
    decoder that slices with `slice_logits_to_keep`)."""
    import importlib
    import inspect

    inner = attention.pretrained_model(model)
    if inner is None:
        return False
    module = importlib.import_module(type(inner).__module__)
    return "logits_to_keep" in inspect.signature(inner.forward).parameters and hasattr(
        module, "slice_logits_to_keep"
    )


def build_trainer(
    cfg: RunConfig,
    output_dir: Path,
    model: Any,
    tokenizer: Any,
    task: Any,
    train_dataset: Any,
    eval_dataset: Any,
    extra_callbacks: list[Any],
    trainer_class: Any = None,
    method: Any = None,
) -> Any:
    """The task's trainer (`task.trainer_spec()`), or `trainer_class`: a LmtuneTrainer subclass
    (or a partial of one), e.g. with a distillation loss.

    The trainer is handed `task` and `method` (the run's instance of `cfg.method`; built from
    `cfg` if not given), whose capabilities it asks and which may bring its own optimizer
    (`Method.optimizer`).
    """
    from transformers import EarlyStoppingCallback

    from lmtune.methods import get_method_class

    metric, greater = task.metric_direction(cfg.train.metric_for_best_model)
    spec = task.trainer_spec()
    callbacks = list(extra_callbacks)
    if "tensorboard" in cfg.train.report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(output_dir / "tensorboard"))))
    from lmtune.training.tracking import tracking_callbacks

    # A caller that brings its own tracker callback (a sweep's, bound to the sweep's store) keeps it.
    given = {getattr(callback, "tracker", None) for callback in callbacks}
    callbacks.extend(tracking_callbacks([r for r in cfg.train.report_to if r not in given], output_dir))
    # TrainingArguments resets Accelerate's process-wide state and the Trainer builds it again:
    # two trainings set up at once in one process (a sweep's parallel trials) would read it
    # half-built, so setups take turns, and so does the preparation at the start of training
    # (`LmtuneTrainer._prepare_for_training`). (A setup can still overlap the rest of another
    # trial's training; Accelerate's state is the same on one device, and `sweep --n-jobs` says so.)
    with _SETUP_LOCK:
        args = training_arguments(cfg, output_dir, metric, greater, task.supports("bf16-on-cpu"), spec)
        if args.load_best_model_at_end and cfg.train.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
        return (trainer_class or spec.trainer_class or LmtuneTrainer)(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset if args.eval_strategy != "no" else None,
            data_collator=_collator(cfg, task, tokenizer),
            processing_class=tokenizer,
            compute_metrics=task.trainer_metrics(),
            callbacks=callbacks,
            task=task,
            method=method or get_method_class(cfg.method.name)(cfg.method.options),
            train_optimizer=(cfg.train.optimizer, dict(cfg.train.optimizer_args)),
        )


def _collator(cfg: RunConfig, task: Any, tokenizer: Any) -> Any:
    """The task's collator, its batch lengths bucketed where the run asks."""
    from lmtune.training.shape_buckets import BucketedCollator

    collator = task.collator(tokenizer)
    multiple = cfg.train.pad_to_multiple_of
    return BucketedCollator(collator, multiple, tokenizer) if multiple and multiple > 1 else collator


_SETUP_LOCK = threading.RLock()  # reentrant: a setup step may build a loader inside another
