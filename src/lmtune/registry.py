"""Name -> class registries for tasks and methods, imported lazily.

Adding a task or a method is one new file and one line in its package's registry table.
Entries are "module:Class" strings so that listing names never imports torch or peft. Code
outside the package (a plugin, a test) registers a class directly with `register`.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from lmtune.errors import LmtuneError


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]) -> None:
        self.kind = kind
        self._entries = dict(entries)
        self._loaded: dict[str, Any] = {}

    def names(self) -> list[str]:
        return list(self._entries)

    def register(self, name: str, target: str | type) -> None:
        """Add `name`: a "module:Class" string (imported on first use) or the class itself."""
        if name in self._entries:
            raise LmtuneError(f"{self.kind} '{name}' is already registered")
        if isinstance(target, str):
            self._entries[name] = target
        else:
            self._entries[name] = f"{target.__module__}:{target.__qualname__}"
            self._loaded[name] = target

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._loaded.pop(name, None)

    def classes(self) -> dict[str, Any]:
        """Every registered name with its class (imports them all)."""
        return {name: self.get(name) for name in self._entries}

    def get(self, name: str) -> Any:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise LmtuneError(
                f"unknown {self.kind} '{name}'", hint=f"{hint}available: {', '.join(self._entries)}"
            )
        if name not in self._loaded:
            module_name, _, attr = self._entries[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module_name), attr)
        return self._loaded[name]
