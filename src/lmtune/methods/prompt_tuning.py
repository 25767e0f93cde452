"""Prompt tuning (Lester et al., 2021) through peft: trained soft-prompt embeddings.

`num_virtual_tokens` trained vectors are prepended to the input embeddings; the model stays
frozen and the task head trains (peft keeps `classifier`/`score` in `modules_to_save`).
peft's prompt learning changes the sequence the model sees, so lmtune allows it only where
its code reads outputs in a way that survives the extra positions: sequence classification
(one output per sequence) and causal LM SFT (peft masks the virtual positions out of the
loss, lmtune's evaluation keeps only the last `input length` logits, and packing is turned
off because peft drops the restarted position ids packing relies on). Token classification,
QA and seq2seq are refused before training with a one-line error. A tiny forward pass right
after the model is wrapped catches architectures that cannot take the virtual tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods.base import MethodContext
from lmtune.methods.peft_base import PeftMethod


def check_prompt_learning_task(method: str, ctx: MethodContext) -> str:
    """The peft task type, or a clear error when prompt learning cannot serve this task."""
    ctx.task.require(
        "accepts-virtual-tokens",
        f"method '{method}'",
        hint="virtual tokens shift or lack per-token outputs; use lora, ia3 or an adapter method",
    )
    return ctx.task.peft_task_type


def smoke_forward(method: str, model: nn.Module) -> None:
    """Run two tokens through the wrapped model so an unsupported architecture fails now."""
    config = getattr(model, "config", None)
    token = getattr(config, "pad_token_id", None) or 0
    ids = torch.full((1, 2), int(token), dtype=torch.long)
    was_training = model.training
    model.eval()  # no dropout: the check must not consume the random stream of training
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception as exc:  # what fails here is the architecture, whatever the error type
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise LmtuneError(
            f"method '{method}' does not work with {model.get_base_model().__class__.__name__} "
            f"in this peft version: {first[:200]}",
            hint="use lora, ia3 or an adapter method for this model",
        ) from None
    finally:
        model.train(was_training)


class PromptTuningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Soft-prompt length in tokens.")


class PromptLearningMethod(
    PeftMethod, capabilities={"fixed-trainable-set", "peft-adapter", "virtual-tokens"}
):
    """Shared by prompt and prefix tuning: the task check, peft's config, the smoke forward."""

    refusals: ClassVar[dict[str, str]] = {
        "mergeable": "it learns virtual tokens, not weight deltas: there is nothing to merge",
    }

    def prompt_config(self, task_type: str, modules_to_save: list[str] | None) -> Any:
        """peft's config for this method (`task_type` checked, `modules_to_save` the head)."""
        raise NotImplementedError

    def peft_config(self, model: nn.Module, ctx: MethodContext, modules_to_save: list[str]) -> Any:
        return self.prompt_config(check_prompt_learning_task(self.name, ctx), modules_to_save or None)

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        wrapped = super().apply(model, ctx)
        smoke_forward(self.name, wrapped)
        return wrapped


class PromptTuningMethod(PromptLearningMethod):
    name: ClassVar[str] = "prompt-tuning"
    description: ClassVar[str] = "Soft prompt via peft: trained virtual-token embeddings, frozen model."
    Options = PromptTuningOptions
    default_learning_rate: ClassVar[float] = 1e-2

    def prompt_config(self, task_type: str, modules_to_save: list[str] | None) -> Any:
        from peft import PromptTuningConfig

        opts: PromptTuningOptions = self.options  # type: ignore[assignment]
        return PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=opts.num_virtual_tokens, modules_to_save=modules_to_save
        )
