"""Data checks shared by the tasks: finding columns, cleaning text, splitting, reporting.

Each check either fixes what is safe to fix (strip whitespace, drop empty rows) and says so
in the data report, or raises an `LmtuneError` that names the file, line and column.
"""

from __future__ import annotations

import difflib
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from lmtune.data.readers import Table
from lmtune.errors import LmtuneError

TEXT_COLUMNS = (
    "text",
    "sentence",
    "review",
    "content",
    "document",
    "comment",
    "tweet",
    "utterance",
    "sentence1",
    "text_a",
    "premise",
    "question",
    "query",
    "title",
    "body",
    "input",
)
PAIR_COLUMNS = {
    "sentence1": "sentence2",
    "text_a": "text_b",
    "premise": "hypothesis",
    "question": "context",
    "query": "passage",
    "text": "text_pair",
}
LABEL_COLUMNS = ("label", "labels", "class", "category", "sentiment", "target", "intent", "topic", "y", "tag")


def find_column(
    table: Table, explicit: str | None, candidates: Sequence[str], role: str, setting: str
) -> str:
    """Return the column to use for `role`, given explicitly or found by a common name."""
    if explicit is not None:
        if explicit in table.columns:
            return explicit
        close = difflib.get_close_matches(explicit, table.columns, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise LmtuneError(
            f"{table.path}: no {role} column '{explicit}' (columns: {', '.join(table.columns)})",
            hint=f"{hint}set {setting} to one of the columns",
        )
    lowered = {c.lower(): c for c in table.columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise LmtuneError(
        f"{table.path}: cannot find the {role} column (columns: {', '.join(table.columns)})",
        hint=f"set {setting}, e.g. --set {setting}={table.columns[0]}",
    )


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def text_value(table: Table, index: int, column: str) -> str | None:
    """The stripped text of a cell; None when empty. Non-text values are an error."""
    value = table.rows[index].get(column)
    if is_missing(value):
        return None
    if not isinstance(value, str):
        raise LmtuneError(
            f"{table.where(index, column)}: expected text, got {type(value).__name__} {value!r}",
            hint="quote the value as a string or pick the right text column",
        )
    value = value.strip()
    return value or None


def text_rows(table: Table, columns: Sequence[str | None]) -> Iterator[tuple[int, list[str | None]]]:
    """(row index, stripped texts of `columns`) for each row where every named column has text.

    Rows with an empty text are skipped (their count is `len(table)` minus the rows yielded); a
    None column gives None. Lazy, so errors come in row order with the caller's own checks.
    """
    for i in range(len(table)):
        texts = [text_value(table, i, column) if column else None for column in columns]
        if all(text is not None for text, column in zip(texts, columns, strict=True) if column):
            yield i, texts


def stratified_split(labels: Sequence[Any], ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (keep, held_out), stratified by label where every class can spare a member."""
    n = len(labels)
    n_held = max(1, round(n * ratio))
    if n - n_held < 1:
        raise LmtuneError(f"too few examples ({n}) to hold out {ratio:.0%} for evaluation", hint="add data")
    rng = random.Random(seed)
    by_label: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    if any(len(v) < 2 for v in by_label.values()) or len(by_label) > n_held:
        order = list(range(n))
        rng.shuffle(order)
        return sorted(order[n_held:]), sorted(order[:n_held])
    # Largest-remainder allocation keeps class proportions and the exact held-out size;
    # every class keeps at least one training example and, where possible, gives one.
    quotas = {k: len(v) * n_held / n for k, v in by_label.items()}
    counts = {k: min(len(by_label[k]) - 1, max(1, math.floor(q))) for k, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda k: quotas[k] - math.floor(quotas[k]), reverse=True)
    while sum(counts.values()) < n_held:
        grown = False
        for k in by_remainder:
            if sum(counts.values()) < n_held and counts[k] < len(by_label[k]) - 1:
                counts[k] += 1
                grown = True
        if not grown:
            break
    while sum(counts.values()) > n_held:
        largest = max((k for k in counts if counts[k] > 1), key=lambda k: counts[k] - quotas[k], default=None)
        if largest is None:
            break
        counts[largest] -= 1
    held: list[int] = []
    for key in sorted(by_label, key=str):
        members = by_label[key][:]
        rng.shuffle(members)
        held.extend(members[: counts[key]])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held)


def count_duplicates(texts: Sequence[str]) -> int:
    counts = Counter(texts)
    return sum(c - 1 for c in counts.values() if c > 1)


def count_overlap(a: Sequence[str], b: Sequence[str]) -> int:
    """How many items of b also occur in a (exact text match after stripping)."""
    seen = set(a)
    return sum(1 for t in b if t in seen)


def sample(items: Sequence[Any], k: int, seed: int) -> list[Any]:
    """A seeded random subset of k items, in their original order."""
    chosen = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in chosen]
