"""bitsandbytes (the 4-bit backend) imported only where a 4-bit layer is built or loaded.

With bitsandbytes installed, peft imports it twice over: its package `__init__` imports
`peft.helpers`, which starts with `try: import bitsandbytes except ImportError: bnb = None`, and
LoRA/IA3/AdaLoRA's layer dispatch imports `peft.tuners.<method>.bnb` whenever `is_bnb_available()`
(a memoised `find_spec`) says it is installed, 4-bit layer or not (peft 0.21). transformers imports
peft whenever it is installed (`transformers.trainer_utils`), so `set_seed`, `Trainer` or loading a
LoRA adapter all import bitsandbytes, which on an AVX512-BF16 CPU logs "Failed to load CPU
gemm_4bit_forward from kernels-community".
So peft initialises once as if bitsandbytes were absent: its own ImportError fallback runs and its
availability answers are memoised as "no". Until bitsandbytes is imported no bitsandbytes layer can
exist, so no answer of peft changes. When anything imports it (the qlora method, transformers'
4-bit loading, the user), peft is told: `peft.helpers.bnb` gets the module its import would have
given, and the memo is cleared, so peft sees bitsandbytes from then on as if imported eagerly. The
hooks are importlib's documented ones (a meta-path finder wrapping the loader); where a name of
peft is missing in another version, that step is skipped and peft imports bitsandbytes as before.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_PEFT_AVAILABILITY = ("is_bnb_available", "is_bnb_4bit_available")


class _DeferBitsandbytes(importlib.abc.MetaPathFinder):
    """Runs peft's first import with bitsandbytes hidden; tells peft when bitsandbytes is imported."""

    def __init__(self) -> None:
        self.peft_told_absent = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        wanted = "bitsandbytes" if self.peft_told_absent else "peft"
        if fullname != wanted:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _WrappedLoader(spec.loader, self)
        return spec

    def uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


class _WrappedLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, finder: _DeferBitsandbytes) -> None:
        self.loader = loader
        self.finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps its own loader, as after an ordinary import.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        if module.__name__ == "bitsandbytes":
            self.loader.exec_module(module)
            self.finder.uninstall()
            _tell_peft(module)
        elif sys.modules.get("bitsandbytes") is not None:  # imported already: nothing to defer
            self.finder.uninstall()
            self.loader.exec_module(module)
        else:
            hidden = "bitsandbytes" not in sys.modules
            sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # import raises ImportError
            try:
                self.loader.exec_module(module)
                _ask_peft()
                self.finder.peft_told_absent = True
            finally:
                if hidden and sys.modules.get("bitsandbytes", ...) is None:
                    del sys.modules["bitsandbytes"]


def _peft_availability() -> list[Any]:
    import_utils = sys.modules.get("peft.import_utils")
    return [f for f in (getattr(import_utils, name, None) for name in _PEFT_AVAILABILITY) if callable(f)]


def _ask_peft() -> None:
    for available in _peft_availability():
        available()  # memoised while bitsandbytes is hidden: "not installed"


def _tell_peft(bitsandbytes: ModuleType) -> None:
    helpers = sys.modules.get("peft.helpers")
    if helpers is not None and getattr(helpers, "bnb", bitsandbytes) is None:
        helpers.bnb = bitsandbytes
    for available in _peft_availability():
        cache_clear = getattr(available, "cache_clear", None)
        if cache_clear is not None:
            cache_clear()


def defer_bitsandbytes() -> None:
    """Keep bitsandbytes unimported until something imports it itself (e.g. the qlora method).

    Takes effect when called before peft's first import; a no-op after it, or when already on.
    """
    if "peft" in sys.modules or sys.modules.get("bitsandbytes") is not None:
        return
    if not any(isinstance(finder, _DeferBitsandbytes) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferBitsandbytes())
