"""From a training file to train / validation / test: the split arithmetic every task shares.

A task reads its files into records (`Task.read_records`); what follows is the same for every
task and lives only here. Exact duplicates leave train first (`data.drop_duplicates`, the first
occurrence kept). Each held-out split without a file of its own is then carved out of train,
test before validation, each with its own seed (`train.seed` + 0 and + 1). Both shares are of
the training rows as they were before carving, so `test_split: 0.1, validation_split: 0.1` turn
100 rows into 80 / 10 / 10 (the second share is rescaled to the rows the first one left).
Last, train is cut to a seeded sample of `data.max_train_samples`.

What a task decides is only what to stratify by and what must stay together (`Carving`):
classification stratifies by label, NER by each sentence's first entity type, and QA holds out
whole contexts, so that no test question is about a paragraph seen in training.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmtune.data import checks
from lmtune.errors import LmtuneError

if TYPE_CHECKING:
    from lmtune.config import RunConfig

# Carving order; a split's position is its seed offset.
HELD_OUT = ("test", "validation")

Reader = Callable[[str, str], tuple[list[Any], dict[str, Any]]]


@dataclass(frozen=True)
class Carving:
    """How rows are held out of train when a split has no file: stratified, or by whole groups."""

    # Stratify by this key of a row (None: one stratum, a seeded random split).
    strata: Callable[[Any], Hashable] | None = None
    # Hold out whole groups (rows sharing this key) instead of rows; `group_noun` names them
    # in the error when there are fewer than `min_groups` to carve from.
    group: Callable[[Any], Hashable] | None = None
    group_noun: str = "groups"
    min_groups: int = 3


@dataclass(frozen=True)
class SplitSettings:
    """The data settings the split arithmetic reads."""

    files: dict[str, str | None]  # held-out split -> its file (None: carve it from train)
    ratios: dict[str, float]  # held-out split -> its share of train
    seed: int
    drop_duplicates: bool = False
    max_train_samples: int | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> SplitSettings:
        d = cfg.data
        return cls(
            files={"test": d.test, "validation": d.validation},
            ratios={"test": d.test_split, "validation": d.validation_split},
            seed=cfg.train.seed,
            drop_duplicates=d.drop_duplicates,
            max_train_samples=d.max_train_samples,
        )


@dataclass
class SplitRecords:
    """The records of each split (test, validation, train in this order) and how they came about."""

    records: dict[str, list[Any]]
    carved: list[str] = field(default_factory=list)
    # What reading each file found (counts for the data report), by split.
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped_duplicates: int = 0

    def rows(self) -> dict[str, int]:
        return {name: len(records) for name, records in self.records.items()}

    def leakage(self, key: Callable[[Any], str]) -> dict[str, int]:
        """Repeated texts inside train, and held-out texts that also occur in train."""
        keys = {name: [key(r) for r in records] for name, records in self.records.items()}
        return {
            "duplicates_in_train": checks.count_duplicates(keys["train"]),
            "overlap_train_test": checks.count_overlap(keys["train"], keys["test"]),
            "overlap_train_validation": checks.count_overlap(keys["train"], keys["validation"]),
        }

    def summary(self, key: Callable[[Any], str], **found: Any) -> dict[str, Any]:
        """The report entries every task shows: rows, what was carved, what reading `found`
        (e.g. rows dropped for an empty text), duplicates and train/held-out overlaps."""
        return {
            "rows": self.rows(),
            "carved_from_train": self.carved,
            **found,
            "dropped_duplicates_train": self.dropped_duplicates,
            **self.leakage(key),
        }


def drop_duplicates(records: list[Any], key: Callable[[Any], Hashable]) -> tuple[list[Any], int]:
    """The records without repeats of `key` (first occurrence kept, order kept), and how many went."""
    unique: dict[Hashable, Any] = {}
    for record in records:
        unique.setdefault(key(record), record)
    return list(unique.values()), len(records) - len(unique)


def split_records(
    train: list[Any],
    read: Reader,
    settings: SplitSettings,
    carving: Carving,
    dedup_key: Callable[[Any], Hashable],
    source: str,
    train_info: dict[str, Any] | None = None,
) -> SplitRecords:
    """Train and the held-out splits: read from their files (`read(path, split)`) or carved.

    `train` holds the records of the file `source`; `train_info` is what reading it found.
    """
    dropped = 0
    if settings.drop_duplicates:
        train, dropped = drop_duplicates(train, dedup_key)
    out = SplitRecords(records={}, infos={"train": train_info or {}}, dropped_duplicates=dropped)
    total = len(train)
    for offset, split in enumerate(HELD_OUT):
        path = settings.files.get(split)
        if path:
            out.records[split], out.infos[split] = read(path, split)
            continue
        share = settings.ratios[split] * total / len(train)
        train, out.records[split] = hold_out(train, share, settings.seed + offset, carving, split, source)
        out.carved.append(split)
    limit = settings.max_train_samples
    if limit is not None and limit < len(train):
        train = checks.sample(train, limit, settings.seed)
    out.records["train"] = train
    return out


def hold_out(
    rows: list[Any], share: float, seed: int, carving: Carving, split: str, source: str
) -> tuple[list[Any], list[Any]]:
    """(kept, held out): `share` of the rows, or of the groups, held out with a seeded split."""
    if carving.group is None:
        strata = [carving.strata(r) if carving.strata is not None else None for r in rows]
        keep, held = checks.stratified_split(strata, share, seed)
        return [rows[i] for i in keep], [rows[i] for i in held]
    group = carving.group
    groups = list(dict.fromkeys(group(r) for r in rows))
    if len(groups) < carving.min_groups:
        raise LmtuneError(
            f"{source}: only {len(groups)} distinct {carving.group_noun}, too few to carve a {split} split",
            hint=f"give data.{split} or add {carving.group_noun}",
        )
    _, held = checks.stratified_split([None] * len(groups), share, seed)
    held_groups = {groups[i] for i in held}
    return [r for r in rows if group(r) not in held_groups], [r for r in rows if group(r) in held_groups]
