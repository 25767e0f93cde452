"""Method registry: one file per fine-tuning method, one line here per method."""

from __future__ import annotations

from typing import Any

from lmtune.registry import Registry

METHODS = Registry(
    "method",
    {
        "full": "lmtune.methods.full:FullMethod",
        "freeze": "lmtune.methods.freeze:FreezeMethod",
        "bitfit": "lmtune.methods.bitfit:BitFitMethod",
        "lora": "lmtune.methods.lora:LoraMethod",
        "dora": "lmtune.methods.dora:DoraMethod",
        "qlora": "lmtune.methods.qlora:QloraMethod",
        "ia3": "lmtune.methods.ia3:Ia3Method",
        "adalora": "lmtune.methods.adalora:AdaLoraMethod",
        "vera": "lmtune.methods.vera:VeraMethod",
        "ln-tuning": "lmtune.methods.ln_tuning:LnTuningMethod",
        "oft": "lmtune.methods.oft:OftMethod",
        "boft": "lmtune.methods.boft:BoftMethod",
        "loha": "lmtune.methods.loha:LohaMethod",
        "lokr": "lmtune.methods.lokr:LokrMethod",
        "prompt-tuning": "lmtune.methods.prompt_tuning:PromptTuningMethod",
        "prefix-tuning": "lmtune.methods.prefix_tuning:PrefixTuningMethod",
        "gradual-unfreeze": "lmtune.methods.gradual_unfreeze:GradualUnfreezeMethod",
        "adapter-houlsby": "lmtune.methods.adapters:HoulsbyAdapterMethod",
        "adapter-pfeiffer": "lmtune.methods.adapters:PfeifferAdapterMethod",
    },
)


def get_method_class(name: str) -> Any:
    return METHODS.get(name)
