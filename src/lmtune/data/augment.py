"""Text augmentation for classification training data: EDA-style word edits.

Four edits from "EDA: Easy Data Augmentation" (Wei & Zou, 2019): random deletion, random
swap, random insertion of a synonym, and synonym replacement. They are a few lines each and
work on whitespace tokens; nlpaug/textattack would add a heavy dependency and still need a
synonym source, so they are written here. Synonyms come from a user word list (one group of
comma-separated synonyms per line) or WordNet when nltk and its corpus are installed.

Only the training split is augmented, never validation or test; augmented copies are added
beside the originals (`ratio` copies per row), each from a seeded generator so a run is
reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtune.config import AugmentConfig
from lmtune.errors import LmtuneError

OPS = ("delete", "swap", "insert", "synonym")
Synonyms = Callable[[str], list[str]]


def load_word_list(path: str | Path) -> dict[str, list[str]]:
    """Word -> its synonyms, from lines of comma-separated synonym groups ('#' starts a comment)."""
    path = Path(path)
    if not path.is_file():
        raise LmtuneError(f"data.augment.synonyms: file not found: {path}", hint="check the path")
    table: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = list(dict.fromkeys(w.strip().lower() for w in line.split(",") if w.strip()))
        if len(words) < 2:
            raise LmtuneError(
                f"{path}, line {number}: a synonym group needs at least two words",
                hint="write one group of comma-separated synonyms per line, e.g. good, fine, nice",
            )
        for word in words:
            table.setdefault(word, [])
            table[word].extend(w for w in words if w != word and w not in table[word])
    if not table:
        raise LmtuneError(f"{path}: no synonym groups", hint="one group of comma-separated synonyms per line")
    return table


def _wordnet() -> Synonyms | None:
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("good")
    except (ImportError, LookupError, OSError):
        return None

    def lookup(word: str) -> list[str]:
        names = {
            lemma.name().replace("_", " ").lower() for syn in wordnet.synsets(word) for lemma in syn.lemmas()
        }
        names.discard(word)
        return sorted(names)

    return lookup


def synonym_source(cfg: AugmentConfig) -> Synonyms | None:
    """The configured synonym lookup: the word list, else WordNet, else None."""
    if cfg.synonyms:
        table = load_word_list(cfg.synonyms)
        return lambda word: table.get(word.lower(), [])
    return _wordnet()


class Augmenter:
    """Applies the configured edits to texts; every call takes the generator it should use."""

    def __init__(self, cfg: AugmentConfig, synonyms: Synonyms | None = None) -> None:
        self.cfg = cfg
        self.synonyms = synonyms if synonyms is not None else synonym_source(cfg)
        ops = (
            list(cfg.ops)
            if cfg.ops
            else ["delete", "swap"] + (["insert", "synonym"] if self.synonyms else [])
        )
        needy = [op for op in ops if op in ("insert", "synonym")]
        if needy and self.synonyms is None:
            raise LmtuneError(
                f"data.augment.ops {needy} need synonyms: no word list is set and WordNet is not installed",
                hint="set data.augment.synonyms to a word list (one line of comma-separated synonyms "
                "per group), or use only delete and swap",
            )
        self.ops = ops

    def _count(self, words: list[str]) -> int:
        return max(1, round(self.cfg.p * len(words)))

    def delete(self, words: list[str], rng: random.Random) -> list[str]:
        """Drop each word with probability p; one word always survives."""
        if len(words) <= 1:
            return list(words)
        kept = [w for w in words if rng.random() >= self.cfg.p]
        return kept or [rng.choice(words)]

    def swap(self, words: list[str], rng: random.Random) -> list[str]:
        """Swap two random positions, p * len(words) times (at least once)."""
        out = list(words)
        if len(out) < 2:
            return out
        for _ in range(self._count(out)):
            i, j = rng.sample(range(len(out)), 2)
            out[i], out[j] = out[j], out[i]
        return out

    def _with_synonyms(self, words: list[str]) -> list[int]:
        assert self.synonyms is not None
        return [i for i, w in enumerate(words) if self.synonyms(w)]

    def insert(self, words: list[str], rng: random.Random) -> list[str]:
        """Insert a synonym of a random word at a random position, p * len(words) times."""
        out = list(words)
        for _ in range(self._count(words)):
            candidates = self._with_synonyms(out)
            if not candidates:
                break
            word = out[rng.choice(candidates)]
            out.insert(rng.randint(0, len(out)), rng.choice(self.synonyms(word)))  # type: ignore[misc]
        return out

    def synonym(self, words: list[str], rng: random.Random) -> list[str]:
        """Replace up to p * len(words) distinct words that have synonyms with one of them."""
        out = list(words)
        candidates = self._with_synonyms(out)
        for i in rng.sample(candidates, min(self._count(words), len(candidates))):
            out[i] = rng.choice(self.synonyms(out[i]))  # type: ignore[misc]
        return out

    def apply(self, op: str, text: str, rng: random.Random) -> str:
        return " ".join(getattr(self, op)(text.split(), rng))

    def augment(self, text: str, rng: random.Random) -> tuple[str, str]:
        """One edit, drawn from the configured ops; returns (op, new text)."""
        op = rng.choice(self.ops)
        return op, self.apply(op, text, rng)


def augment_train(
    records: list[dict[str, Any]], cfg: AugmentConfig | None, seed: int, text_key: str = "text"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Training records plus round(ratio * n) augmented copies; also what was done, for the report.

    Copies are drawn evenly over the rows (each row once before any row twice) and only their
    `text_key` field is edited, so the labels and any paired text stay as they were.
    """
    if cfg is None or cfg.ratio == 0 or not records:
        return records, {}
    augmenter = Augmenter(cfg)
    rng = random.Random(cfg.seed if cfg.seed is not None else seed)
    wanted = round(cfg.ratio * len(records))
    sources: list[int] = []
    while len(sources) < wanted:
        order = list(range(len(records)))
        rng.shuffle(order)
        sources.extend(order[: wanted - len(sources)])
    added: list[dict[str, Any]] = []
    ops: dict[str, int] = {}
    for index in sources:
        op, text = augmenter.augment(records[index][text_key], rng)
        ops[op] = ops.get(op, 0) + 1
        copy = dict(records[index])
        copy[text_key] = text
        if "_where" in copy:
            copy["_where"] = f"{copy['_where']} (augmented: {op})"
        added.append(copy)
    return records + added, {"added": len(added), "ops": ops}
