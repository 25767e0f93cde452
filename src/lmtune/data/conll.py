"""Tagged sentences for token classification: CoNLL files, JSON(L) records and tag schemes.

CoNLL: one token per line, the tag in the last column (tab or space separated), a blank line
between sentences, `-DOCSTART-` lines skipped. Character-level data (Chinese NER: one
character per line) is the same format. JSON/JSONL: `{"tokens": [...], "tags": [...]}`.

Tag schemes (BIO/IOB2, IOB1, BIOES, BILOU, BMES) are normalised to BIO for training and
converted back for output. Every problem is an `LmtuneError` naming the file and line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.data import checks
from lmtune.data.readers import _read_text, existing_file, read_table
from lmtune.errors import LmtuneError

CONLL_EXTENSIONS = (".conll", ".bio", ".iob", ".bioes", ".bmes", ".conllu")
SCHEMES = ("bio", "iob1", "bioes", "bilou", "bmes")
log = logging.getLogger(__name__)
TOKEN_COLUMNS = ("tokens", "words", "token", "chars", "characters")
TAG_COLUMNS = ("tags", "ner_tags", "labels", "label", "ner", "tag")
_TAG = re.compile(r"^([BIESLUM])[-_](.+)$")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str] | None
    where: str  # "file, line N" (CoNLL) or "file, line/record N" (JSON), for error messages
    path: str | None = None  # CoNLL only: the file and the line of the first token
    line: int | None = None


# ---- tags and schemes ------------------------------------------------------------------------------
def split_tag(tag: str) -> tuple[str, str | None]:
    """('B', 'PER') for 'B-PER'; ('O', None) for 'O'. Raises ValueError if not BIO-like."""
    if tag == "O":
        return "O", None
    match = _TAG.match(tag)
    if not match:
        raise ValueError(tag)
    return match.group(1), match.group(2)


def check_tags(sentence: Sentence) -> None:
    for i, tag in enumerate(sentence.tags or []):
        try:
            split_tag(tag)
        except ValueError:
            raise LmtuneError(
                f"{_where_token(sentence, i)}: tag '{tag}' is not in BIO-like form",
                hint="tags must be 'O' or PREFIX-TYPE with PREFIX one of B, I, E, S, L, U, M (e.g. B-PER)",
            ) from None


def _where_token(sentence: Sentence, index: int) -> str:
    """The line of token `index` for CoNLL input; the record plus token number for JSON."""
    if sentence.line is not None:
        return f"{sentence.path}, line {sentence.line + index}"
    return f"{sentence.where}, token {index + 1}"


def detect_scheme(tag_lists: Sequence[Sequence[str]]) -> str:
    """The tag scheme of BIO-like tag sequences (bio, iob1, bioes, bilou or bmes)."""
    prefixes: set[str] = set()
    iob1 = False
    for tags in tag_lists:
        previous = "O"
        for tag in tags:
            prefix, kind = split_tag(tag)
            prefixes.add(prefix)
            if prefix == "I":
                p_prefix, p_kind = split_tag(previous)
                if p_prefix == "O" or p_kind != kind:
                    iob1 = True  # an entity that starts with I-: IOB1
            previous = tag
    if "M" in prefixes:
        return "bmes"
    if prefixes & {"E", "S"}:
        return "bioes"
    if prefixes & {"L", "U"}:
        return "bilou"
    return "iob1" if iob1 else "bio"


_ALLOWED = {
    "bio": {"O", "B", "I"},
    "iob1": {"O", "B", "I"},
    "bioes": {"O", "B", "I", "E", "S"},
    "bilou": {"O", "B", "I", "L", "U"},
    "bmes": {"O", "B", "M", "E", "S"},
}


def check_scheme(sentence: Sentence, scheme: str) -> None:
    for i, tag in enumerate(sentence.tags or []):
        prefix, _ = split_tag(tag)
        if prefix not in _ALLOWED[scheme]:
            raise LmtuneError(
                f"{_where_token(sentence, i)}: tag '{tag}' does not belong to the {scheme.upper()} scheme",
                hint="fix the tag or set task.tag_scheme (auto, bio, iob1, bioes, bilou, bmes)",
            )


def to_bio(tags: Sequence[str], scheme: str) -> list[str]:
    """Normalise tags of `scheme` to BIO (IOB2)."""
    out: list[str] = []
    previous_kind: str | None = None
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == "O":
            out.append("O")
        elif scheme == "iob1":
            begins = prefix == "B" or previous_kind != kind
            out.append(f"{'B' if begins else 'I'}-{kind}")
        elif prefix in ("B", "S", "U"):
            out.append(f"B-{kind}")
        else:  # I, M, E, L continue an entity
            out.append(f"I-{kind}")
        previous_kind = kind
    return out


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities (type, first, last+1) of BIO tags; a stray I- starts an entity (as conlleval)."""
    spans: list[tuple[str, int, int]] = []
    start, kind = -1, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, this = split_tag(tag)
        continues = prefix == "I" and this == kind
        if kind is not None and not continues:
            spans.append((kind, start, i))
            kind = None
        if prefix != "O" and not continues:
            start, kind = i, this
    return spans


def from_bio(tags: Sequence[str], scheme: str) -> list[str]:
    """Convert BIO tags to `scheme`."""
    out = ["O"] * len(tags)
    letters = {"bioes": "BIES", "bilou": "BILU", "bmes": "BMES"}
    previous_end, previous_kind = -1, None
    for kind, start, end in bio_spans(tags):
        if scheme in letters:
            b, i, e, s = letters[scheme]
            if end - start == 1:
                out[start] = f"{s}-{kind}"
            else:
                out[start] = f"{b}-{kind}"
                for k in range(start + 1, end - 1):
                    out[k] = f"{i}-{kind}"
                out[end - 1] = f"{e}-{kind}"
        else:
            for k in range(start, end):
                out[k] = f"I-{kind}"
            if scheme == "bio" or (previous_end == start and previous_kind == kind):
                out[start] = f"B-{kind}"
        previous_end, previous_kind = end, kind
    return out


def bio_labels(types: set[str] | Sequence[str]) -> list[str]:
    """O, B-X, I-X, ... for sorted entity types."""
    labels = ["O"]
    for kind in sorted(set(types)):
        labels += [f"B-{kind}", f"I-{kind}"]
    return labels


# ---- reading ----------------------------------------------------------------------------------------
def looks_like_conll(text: str) -> bool:
    """True when most non-blank lines are `token ... tag` with a BIO-like last column."""
    lines = [line for line in text.splitlines()[:200] if line.strip() and not line.startswith("-DOCSTART-")]
    if not lines:
        return False
    tagged = 0
    for line in lines:
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) >= 2:
            try:
                split_tag(parts[-1].strip())
                tagged += 1
            except ValueError:
                pass
    return tagged >= 0.9 * len(lines)


def is_conll(path: str | Path, declared: str = "auto") -> bool:
    if declared == "conll":
        return True
    if declared != "auto":
        return False
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CONLL_EXTENSIONS:
        return True
    if suffix == ".txt" and path.is_file():
        return looks_like_conll(_read_text(path))
    return False


def read_conll(path: str | Path, need_tags: bool = True) -> list[Sentence]:
    """Sentences of a CoNLL file. Without `need_tags`, one-column lines (tokens only) are allowed."""
    path = existing_file(path)
    text = _read_text(path)
    if not text.strip():
        raise LmtuneError(f"{path}: the file is empty", hint="one 'token tag' line per token")
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0

    def flush() -> None:
        if tokens:
            where = f"{path}, line {first_line}"
            tag_list = list(tags) if tags else None
            sentences.append(Sentence(list(tokens), tag_list, where, str(path), first_line))
        tokens.clear()
        tags.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            flush()
            continue
        if line.startswith("-DOCSTART-"):
            flush()
            continue
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        if not tokens:
            first_line = number
        if len(parts) < 2 or not parts[0] or not parts[-1]:
            if need_tags or len(parts) != 1:
                raise LmtuneError(
                    f"{path}, line {number}: only one column ({line.strip()!r}); expected 'token tag'",
                    hint="separate the token and its tag with a tab or space; a blank line ends a sentence",
                )
            tokens.append(parts[0])
            continue
        tokens.append(parts[0])
        tags.append(parts[-1])
    flush()
    if not sentences:
        raise LmtuneError(f"{path}: no sentences (only -DOCSTART- lines?)", hint="add 'token tag' lines")
    for sentence in sentences:
        if sentence.tags is not None and len(sentence.tags) != len(sentence.tokens):
            if not need_tags:
                sentence.tags = None
                continue
            raise LmtuneError(
                f"{sentence.where}: some tokens of this sentence have no tag",
                hint="give every token a tag",
            )
        if need_tags:
            check_tags(sentence)
    return sentences


def _as_string_tags(value: list[Any], where: str, labels: Sequence[str] | None) -> list[str]:
    out = []
    for tag in value:
        if isinstance(tag, bool) or not isinstance(tag, str | int):
            raise LmtuneError(f"{where}: tags must be strings, got {tag!r}")
        if isinstance(tag, int):
            if not labels:
                raise LmtuneError(
                    f"{where}: integer tags ({tag}) need their names",
                    hint="write tags as strings (B-PER) or set data.labels to the tag names in id order",
                )
            if not 0 <= tag < len(labels):
                raise LmtuneError(f"{where}: tag id {tag} is outside data.labels (0..{len(labels) - 1})")
            tag = labels[tag]
        out.append(tag.strip())
    return out


# ---- character spans (CLUENER) -----------------------------------------------------------------------
def is_span_table(table: Any) -> bool:
    """CLUENER's format: a `text` string and a `label` object {type: {entity: [[start, end], ...]}}."""
    first = next((row for row in table.rows if isinstance(row.get("text"), str)), None)
    return first is not None and isinstance(first.get("label", {}), dict) and "tokens" not in first


def span_sentence(row: dict[str, Any], where: str, need_tags: bool) -> Sentence | None:
    """One CLUENER record as character tokens with BIO tags (whitespace characters dropped).

    Spans are character offsets with the end inclusive; each must cover exactly its entity text
    (an error naming the record otherwise). BIO holds one tag per character, so of nested spans
    (1 record of CLUENER's 10,748) the longest is kept and the others dropped with a warning.
    """
    text = row.get("text")
    if not isinstance(text, str):
        raise LmtuneError(f"{where}, column 'text': expected a string, got {text!r:.60}")
    kept = [i for i, ch in enumerate(text) if not ch.isspace()]
    if not kept:
        return None
    spans = row.get("label") or {}
    if need_tags and not isinstance(spans, dict):
        raise LmtuneError(f"{where}, column 'label': expected {{type: {{entity: [[start, end]]}}}}")
    found = [
        _checked_span(text, str(kind), str(entity), place, where)
        for kind, entities in (spans.items() if need_tags else ())
        for entity, places in _entities(kind, entities, where)
        for place in (
            places if isinstance(places, list) and places and isinstance(places[0], list) else [places]
        )
    ]
    tags = ["O"] * len(text)
    for kind, start, end in sorted(found, key=lambda span: span[1] - span[2]):  # longest first
        if any(tag != "O" for tag in tags[start : end + 1]):
            log.warning(
                "%s: '%s' at [%d, %d] lies inside another entity; dropped",
                where,
                text[start : end + 1],
                start,
                end,
            )
            continue
        tags[start : end + 1] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start)
    return Sentence([text[i] for i in kept], [tags[i] for i in kept] if need_tags else None, where)


def _entities(kind: Any, entities: Any, where: str) -> Any:
    if not isinstance(entities, dict):
        raise LmtuneError(f"{where}, label '{kind}': expected {{entity: [[start, end], ...]}}")
    return entities.items()


def _checked_span(text: str, kind: str, entity: str, place: Any, where: str) -> tuple[str, int, int]:
    if not (isinstance(place, list) and len(place) == 2 and all(isinstance(v, int) for v in place)):
        raise LmtuneError(
            f"{where}, label '{kind}', entity '{entity}': expected [start, end], got {place!r:.40}"
        )
    start, end = place
    if not 0 <= start <= end < len(text) or text[start : end + 1] != entity:
        found = text[start : end + 1] if 0 <= start <= end else ""
        raise LmtuneError(
            f"{where}, label '{kind}': span [{start}, {end}] covers {found!r}, not '{entity}'",
            hint="spans are character offsets into text, the end inclusive (CLUENER's format)",
        )
    return kind, start, end


def span_records(table: Any, need_tags: bool) -> list[Sentence]:
    sentences = []
    for i, row in enumerate(table.rows):
        sentence = span_sentence(row, table.where(i), need_tags)
        if sentence is not None:
            sentences.append(sentence)
    if not sentences:
        raise LmtuneError(f"{table.path}: every record has an empty text")
    return sentences


def read_records(
    path: str | Path,
    fmt: str,
    token_column: str | None,
    tag_column: str | None,
    need_tags: bool = True,
    labels: Sequence[str] | None = None,
) -> tuple[list[Sentence], str, str | None]:
    """Sentences of a JSON/JSONL/CSV table of token lists (or of CLUENER character spans);
    returns them and the columns used."""
    table = read_table(path, fmt)
    # A run trained on span files records the columns it found (text, label): the same files again.
    if token_column in (None, "text") and tag_column in (None, "label") and is_span_table(table):
        return span_records(table, need_tags), "text", "label" if need_tags else None
    tok_col = checks.find_column(table, token_column, TOKEN_COLUMNS, "tokens", "data.text_column")
    tag_col = None
    if need_tags:
        tag_col = checks.find_column(table, tag_column, TAG_COLUMNS, "tags", "data.label_column")
    sentences: list[Sentence] = []
    for i, row in enumerate(table.rows):
        where = table.where(i)
        tokens = row.get(tok_col)
        if checks.is_missing(tokens):
            continue
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise LmtuneError(
                f"{where}, column '{tok_col}': expected a list of token strings, got {tokens!r:.60}"
            )
        tokens = [t.strip() or t for t in tokens]
        tags = None
        if tag_col is not None:
            value = row.get(tag_col)
            if not isinstance(value, list):
                raise LmtuneError(f"{where}, column '{tag_col}': expected a list of tags, got {value!r:.60}")
            tags = _as_string_tags(value, f"{where}, column '{tag_col}'", labels)
            if len(tags) != len(tokens):
                raise LmtuneError(
                    f"{where}: {len(tokens)} tokens but {len(tags)} tags",
                    hint="give every token exactly one tag",
                )
        if not tokens:
            continue
        sentence = Sentence(tokens, tags, where)
        if need_tags:
            check_tags(sentence)
        sentences.append(sentence)
    if not sentences:
        raise LmtuneError(f"{path}: no non-empty sentences in column '{tok_col}'")
    return sentences, tok_col, tag_col


def read_sentences(
    path: str | Path,
    fmt: str = "auto",
    token_column: str | None = None,
    tag_column: str | None = None,
    need_tags: bool = True,
    labels: Sequence[str] | None = None,
) -> tuple[list[Sentence], str | None, str | None]:
    """CoNLL or a JSON/JSONL table of token lists, whichever the path/format says."""
    if is_conll(existing_file(path), fmt):
        return read_conll(path, need_tags), None, None
    return read_records(path, fmt, token_column, tag_column, need_tags, labels)
