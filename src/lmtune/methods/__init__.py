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
    },
)


def get_method_class(name: str) -> Any:
    return METHODS.get(name)
