"""Several processes, one run: launching through Accelerate and mapping `train.distributed`.

lmtune does not implement data parallelism: processes are started by `accelerate launch`
(which `lmtune train --num-processes N` wraps) and the Trainer runs DDP, FSDP or DeepSpeed
through Accelerate. This module holds the little that lmtune itself must do:

- start the processes (`launch_command`);
- know which process it is, so only the main one writes the run directory, and share the
  main process's decisions (resume or start afresh) with the others (`broadcast`);
- translate `train.distributed` into TrainingArguments (`trainer_arguments`).

Every process builds its data identically (same seed, same files, same tokenizer), and the
length-grouped sampler is seeded per epoch, so all processes agree on the batch order;
Accelerate then hands each process its share of every global batch.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from lmtune.errors import LmtuneError

if TYPE_CHECKING:
    from lmtune.config import DistributedConfig, RunConfig


def world_size() -> int:
    """Processes in this run (1 unless started by accelerate launch / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def process_state(dist: DistributedConfig | None = None) -> Any:
    """Accelerate's process state, creating the process group on first use (with `dist`'s settings).

    On a machine without CUDA the processes talk over gloo; Accelerate only picks its
    multi-CPU mode when told the run is on CPU, so say so here. The Trainer later rebuilds its
    state on the process group created here, so its backend and timeout are set here too.
    """
    from datetime import timedelta

    from accelerate import PartialState

    kwargs: dict[str, Any] = {"cpu": not torch.cuda.is_available()}
    if dist is not None:
        if dist.backend != "auto":
            kwargs["backend"] = dist.backend
        kwargs["timeout"] = timedelta(seconds=dist.timeout_s)
    return PartialState(**kwargs)


def is_main_process() -> bool:
    return not is_distributed() or process_state().is_main_process


def launched_as_main() -> bool:
    """Whether the launcher made this the first process (read from the environment, no process group)."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if is_distributed():
        process_state().wait_for_everyone()


def broadcast(value: Any) -> Any:
    """The main process's `value`, on every process (picklable values)."""
    if not is_distributed():
        return value
    from accelerate.utils import broadcast_object_list

    holder = [value if is_main_process() else None]
    broadcast_object_list(holder, from_process=0)
    return holder[0]


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the main process first (e.g. filling a cache the others then read)."""
    if not is_distributed():
        yield
        return
    with process_state().main_process_first():
        yield


def check_supported(cfg: RunConfig) -> None:
    """Refuse combinations that would silently train something else in several processes."""
    if not is_distributed():
        return
    from lmtune.methods import get_method_class

    # DDP and FSDP register the trainable parameters once, when they wrap the model, so parameters
    # a method unfreezes later would never be synchronised.
    get_method_class(cfg.method.name).require(
        "fixed-trainable-set",
        f"training in {world_size()} processes",
        hint="use method freeze (fixed layers) or full, or run in one process",
    )
    dist = cfg.train.distributed
    if dist is not None and dist.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise LmtuneError(
                "train.distributed.strategy is deepspeed, but DeepSpeed is not installed",
                hint="pip install deepspeed (needs a CUDA toolchain), or use strategy ddp or fsdp",
            ) from None


def trainer_arguments(dist: DistributedConfig | None) -> dict[str, Any]:
    """TrainingArguments keywords for `train.distributed` (empty in a single process)."""
    # Several processes on a machine without CUDA: CPU processes over gloo (see `process_state`).
    # Not set in one process, where the Trainer's own choice (e.g. Apple's MPS) stands.
    kwargs: dict[str, Any] = {"use_cpu": True} if is_distributed() and not torch.cuda.is_available() else {}
    if dist is None:
        return kwargs
    if dist.backend != "auto":
        kwargs["ddp_backend"] = dist.backend
    if dist.find_unused_parameters is not None:
        kwargs["ddp_find_unused_parameters"] = dist.find_unused_parameters
    kwargs["ddp_timeout"] = dist.timeout_s
    if dist.strategy == "fsdp":
        fsdp_config: dict[str, Any] = {
            "version": 2,
            # FSDP2: resharding after forward frees the gathered weights (ZeRO-3 memory); keeping
            # them saves an all-gather in backward (ZeRO-2 memory).
            "reshard_after_forward": dist.fsdp_sharding == "full_shard",
            "cpu_offload": dist.fsdp_cpu_offload,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            # One full state dict, gathered on the main process, so the saved model is an ordinary one.
            "state_dict_type": "FULL_STATE_DICT",
        }
        if dist.fsdp_wrap:
            # Otherwise transformers wraps the model's `_no_split_modules` (its decoder/encoder layer).
            fsdp_config["transformer_layer_cls_to_wrap"] = list(dist.fsdp_wrap)
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = fsdp_config
    elif dist.strategy == "deepspeed":
        kwargs["deepspeed"] = dist.deepspeed_config or deepspeed_config(dist)
    return kwargs


def deepspeed_config(dist: DistributedConfig) -> dict[str, Any]:
    """A DeepSpeed config for the ZeRO stage asked for; "auto" lets the Trainer fill in its values."""
    zero: dict[str, Any] = {"stage": dist.deepspeed_stage, "overlap_comm": True, "contiguous_gradients": True}
    if dist.deepspeed_offload and dist.deepspeed_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if dist.deepspeed_offload and dist.deepspeed_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if dist.deepspeed_stage == 3:
        # Save one consolidated 16-bit state dict, not only ZeRO shards.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def consolidated_state_dict(trainer: Any) -> dict[str, torch.Tensor] | None:
    """The full trained weights when FSDP or DeepSpeed sharded them (a collective: call on every process).

    DDP keeps a full copy of the model in every process, so there is nothing to gather (None).
    """
    if not (getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)):
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(num_processes: int, lmtune_args: list[str], *, port: int | None = None) -> list[str]:
    """`accelerate launch` of `python -m lmtune ARGS` in `num_processes` processes on this machine.

    Accelerate's multi-process launcher is torchrun; on a machine without CUDA each process
    then joins a gloo process group (see `process_state`). Multi-node runs are launched with
    `accelerate launch` directly (README: Distributed training).
    """
    if num_processes < 2:
        raise LmtuneError("--num-processes needs at least 2 (one process needs no launcher)")
    threads = max(1, (os.cpu_count() or 1) // num_processes) if not torch.cuda.is_available() else 1
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # the multi-process launcher; with no GPU the processes run on CPU (gloo)
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(port or free_port()),
        "--mixed_precision",
        "no",  # precision is lmtune's train.precision, applied by the Trainer
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        str(threads),
        "-m",
        "lmtune",
        *lmtune_args,
    ]


def on_main(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `fn` on the main process only and give every process its result, or its LmtuneError."""
    if not is_distributed():
        return fn(*args, **kwargs)
    outcome: tuple[str, Any] | None = None
    if is_main_process():
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except LmtuneError as exc:
            outcome = ("error", (exc.message, exc.hint))
    kind, value = broadcast(outcome)
    if kind == "error":
        raise LmtuneError(value[0], hint=value[1])
    return value


def sum_over_processes(values: list[float]) -> list[float]:
    """Element-wise sums of per-process counters (a collective: call on every process)."""
    if not is_distributed():
        return values
    from accelerate.utils import reduce

    state = process_state()
    total = reduce(torch.tensor(values, dtype=torch.float64, device=state.device), reduction="sum")
    return [float(v) for v in total.tolist()]
