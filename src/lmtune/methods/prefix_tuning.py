"""Prefix tuning (Li & Liang, 2021) through peft: trained keys/values prepended in every layer.

Each attention layer attends to `num_virtual_tokens` trained key/value pairs besides the real
tokens (peft passes them as `past_key_values` and extends the attention mask); the model
stays frozen and the task head trains (`modules_to_save`). Checked with BERT-family models
(MiniLM) in this peft/transformers version. Same task restriction as prompt tuning, and the
same tiny forward pass at apply time to refuse an architecture that ignores or rejects
`past_key_values`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from lmtune.methods.prompt_tuning import PromptLearningMethod


class PrefixTuningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_virtual_tokens: int = Field(
        default=20, ge=1, le=512, description="Prefix length in tokens per layer."
    )
    prefix_projection: bool = Field(
        default=False, description="Reparametrise the prefix through a two-layer MLP (more parameters)."
    )
    encoder_hidden_size: int = Field(
        default=512, ge=1, description="Hidden size of that MLP (only with prefix_projection)."
    )


class PrefixTuningMethod(PromptLearningMethod):
    name: ClassVar[str] = "prefix-tuning"
    description: ClassVar[str] = "Prefix tuning via peft: trained key/value prefixes in every layer."
    Options = PrefixTuningOptions
    default_learning_rate: ClassVar[float] = 1e-2

    def prompt_config(self, task_type: str, modules_to_save: list[str] | None) -> Any:
        from peft import PrefixTuningConfig

        opts: PrefixTuningOptions = self.options  # type: ignore[assignment]
        return PrefixTuningConfig(
            task_type=task_type,
            num_virtual_tokens=opts.num_virtual_tokens,
            prefix_projection=opts.prefix_projection,
            encoder_hidden_size=opts.encoder_hidden_size,
            modules_to_save=modules_to_save,
        )
