"""On-disk cache of tokenized datasets, so a second run on the same data skips tokenization.

The key covers everything that changes the token ids: the rows (hashed through their Arrow
IPC bytes), the tokenizer (its full serialised state), the task and its resolved options,
the label list and data.max_length, and lmtune's version. Cached splits are saved with
`datasets.save_to_disk` and re-opened memory-mapped, so they cost no resident memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lmtune._version import __version__
from lmtune.io import atomic_dir
from lmtune.models import cache_dir


def tokenized_cache_dir() -> Path:
    """$LMTUNE_TOKENIZED_CACHE, else $LMTUNE_CACHE/tokenized (default ~/.cache/lmtune/tokenized)."""
    override = os.environ.get("LMTUNE_TOKENIZED_CACHE")
    return Path(override) if override else cache_dir() / "tokenized"


def _table_digest(dataset: Any) -> str:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps(
        {
            "class": type(tokenizer).__name__,
            "padding_side": tokenizer.padding_side,
            "special": tokenizer.special_tokens_map,
            "template": getattr(tokenizer, "chat_template", None),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((state + extra).encode()).hexdigest()


def cache_key(dataset: Any, tokenizer_id: str, settings: dict[str, Any]) -> str:
    payload = json.dumps(
        {
            "rows": _table_digest(dataset),
            "tokenizer": tokenizer_id,
            "settings": settings,
            "lmtune": __version__,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cached_tokenize(task: Any, dataset: Any, tokenizer: Any, tokenizer_id: str) -> tuple[Any, bool]:
    """`task.tokenize(dataset, tokenizer)`, from the cache when possible; returns (dataset, hit)."""
    from datasets import load_from_disk

    cfg = task.cfg
    settings = {
        "task": cfg.task.type,
        "options": task.resolved_options() | dict(cfg.task.model_extra or {}),
        "labels": task.labels,
        "max_length": cfg.data.max_length,
    }
    target = tokenized_cache_dir() / cache_key(dataset, tokenizer_id, settings)
    if (target / "dataset_info.json").exists():
        try:
            return load_from_disk(str(target)), True
        except (OSError, ValueError, FileNotFoundError):
            shutil.rmtree(target, ignore_errors=True)  # a damaged entry is rebuilt, never trusted
    tokenized = task.tokenize(dataset, tokenizer)
    with atomic_dir(target) as tmp:
        tokenized.save_to_disk(str(tmp))
    return load_from_disk(str(target)), False


def clear_cache() -> int:
    """Delete every cached tokenization; returns how many entries were removed."""
    root = tokenized_cache_dir()
    if not root.exists():
        return 0
    entries = [p for p in root.iterdir() if p.is_dir()]
    for path in entries:
        shutil.rmtree(path, ignore_errors=True)
    return len(entries)
