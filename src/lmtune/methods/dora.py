"""DoRA (Liu et al., 2024) through peft: LoRA with a learned per-column magnitude.

The weight is split into magnitude and direction; LoRA updates the direction and a
magnitude vector (one value per output feature of each adapted layer) trains alongside.
Same options as LoRA; slower per step than LoRA, often closer to full fine-tuning.
"""

from __future__ import annotations

from typing import ClassVar

from lmtune.methods.lora import LoraMethod, LoraOptions


class DoraOptions(LoraOptions):
    """The LoRA options; DoRA adds no option of its own."""


class DoraMethod(LoraMethod):
    name: ClassVar[str] = "dora"
    description: ClassVar[str] = "Weight-decomposed LoRA via peft: LoRA plus a trained magnitude vector."
    Options = DoraOptions
    default_learning_rate: ClassVar[float] = 1e-3
    use_dora: ClassVar[bool] = True
