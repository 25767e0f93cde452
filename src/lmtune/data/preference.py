"""Preference data: pairwise records (DPO, ORPO, SimPO, reward models) and unpaired ones (KTO).

Every accepted form is normalised to TRL's conversational form, so the tasks hand TRL one shape:

- pairwise: `{"prompt": [messages], "chosen": [messages], "rejected": [messages], "where": str}`
- unpaired: `{"prompt": [messages], "completion": [messages], "label": bool, "where": str}`

A message is `{"role": "system" | "user" | "assistant", "content": str}`; a prompt ends with a
user turn and an answer (chosen, rejected, completion) is one assistant turn. `where` is the
record's place in its file ("train.jsonl, line 3"), for the tasks' token-level errors; TRL drops
the extra column. Accepted input forms:

- pairwise `{"prompt", "chosen", "rejected"}` with strings (a user message, an assistant message)
  or message lists;
- conversational: no prompt, `chosen`/`rejected` whole conversations sharing a prefix, split at
  the end of that prefix (TRL's "implicit prompt");
- sharegpt (LLaMA-Factory): `conversations` of `{"from", "value"}` turns and `chosen`/`rejected`
  single `{"from": "gpt", "value"}` turns;
- unpaired `{"prompt", "completion", "label"}`, or `messages` (or sharegpt `conversations`) whose
  last turn is the assistant's completion, plus `label`: JSON true (desirable) or false.

An optional top-level `system` text becomes the prompt's first message. Token-level checks need
the tokenizer and belong to the tasks; `length_report` and `check_prompt_lengths` serve them.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lmtune.data.readers import Table, read_table
from lmtune.errors import LmtuneError

Kind = Literal["pairwise", "unpaired"]
Message = dict[str, str]

ROLES = ("system", "user", "assistant")
# Speaker names of sharegpt data and the roles they mean (SFT's reader uses the same table).
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}
_ROLE_NAMES = {role: role for role in ROLES}
_ANSWER_HINT = "an answer is a string or one assistant turn"


@dataclass(frozen=True)
class _Row:
    """One record of a table, and how to name places inside it in error messages."""

    table: Table
    index: int

    @property
    def data(self) -> dict[str, Any]:
        return self.table.rows[self.index]

    def at(self, field: str | None = None, message: int | None = None) -> str:
        loc = self.table.where(self.index)
        if field is not None:
            loc += f", field '{field}'"
        if message is not None:
            loc += f", message {message}"
        return loc


# ---- public API -------------------------------------------------------------------------------
def read_preference_file(
    path: str, kind: Kind, split: str | None = None, *, fmt: str = "auto"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The checked, normalised records of a preference file, and what reading found.

    `kind` is "pairwise" (chosen/rejected) or "unpaired" (completion + label). `split` is the
    `Task.read_records` argument: every split is read and checked the same way. `fmt` is the file
    format (`data.format`; auto: from the extension). The info dict counts the records and the
    input forms found, e.g. `{"records": 300, "formats": {"sharegpt": 300}}`. Every problem is an
    `LmtuneError` naming the file, the line (JSONL) or record (JSON list, 1-based) and the field.
    """
    if kind not in ("pairwise", "unpaired"):
        raise ValueError(f"kind must be 'pairwise' or 'unpaired', not {kind!r}")
    table = read_table(path, fmt)
    parse = _pairwise_record if kind == "pairwise" else _unpaired_record
    records: list[dict[str, Any]] = []
    forms: Counter[str] = Counter()
    for index in range(len(table)):
        record, form = parse(_Row(table, index))
        records.append(record)
        forms[form] += 1
    return records, {"records": len(records), "formats": dict(forms)}


def messages_text(messages: Sequence[Message]) -> str:
    """Messages as plain text for models without a chat template (encoders): `Role: content` turns
    separated by blank lines, e.g. "User: Hi\\n\\nAssistant: Hello"."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def pairwise_report(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pairs, prompt/chosen/rejected lengths in characters (min/median/max), shared prompts."""
    records = list(records)
    return {
        "pairs": len(records),
        "prompt_chars": _stats([_chars(r["prompt"]) for r in records]),
        "chosen_chars": _stats([_chars(r["chosen"]) for r in records]),
        "rejected_chars": _stats([_chars(r["rejected"]) for r in records]),
        **_shared_prompts(records),
    }


def unpaired_report(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Examples, desirable/undesirable counts, prompt/completion lengths in characters, shared prompts."""
    records = list(records)
    desirable = sum(1 for r in records if r["label"])
    return {
        "examples": len(records),
        "desirable": desirable,
        "undesirable": len(records) - desirable,
        "prompt_chars": _stats([_chars(r["prompt"]) for r in records]),
        "completion_chars": _stats([_chars(r["completion"]) for r in records]),
        **_shared_prompts(records),
    }


def length_report(token_lengths: dict[str, list[int]], max_length: int) -> dict[str, Any]:
    """Token length stats per part (e.g. "prompt", "chosen": whatever the task measured) and how
    many of each exceed `max_length` (those the task truncates)."""
    report: dict[str, Any] = {"max_length": max_length}
    for name, lengths in token_lengths.items():
        report[name] = {**_stats(lengths), "over_max_length": sum(1 for n in lengths if n > max_length)}
    return report


def check_prompt_lengths(
    records: Sequence[dict[str, Any]], prompt_lengths: Sequence[int], max_length: int
) -> None:
    """Raise `LmtuneError` naming the first record whose prompt leaves no room for an answer within
    `max_length` tokens (`prompt_lengths[i]` is record i's prompt in tokens, chat template included)."""
    if len(records) != len(prompt_lengths):
        raise ValueError(f"{len(records)} records but {len(prompt_lengths)} prompt lengths")
    too_long = [i for i, n in enumerate(prompt_lengths) if n >= max_length]
    if too_long:
        first = too_long[0]
        raise LmtuneError(
            f"{records[first]['where']}: the prompt is {prompt_lengths[first]} tokens, no room for an "
            f"answer within max_length {max_length} ({len(too_long)} of {len(records)} prompts are "
            "this long)",
            hint="raise data.max_length, or shorten or drop the long prompts",
        )


# ---- pairwise ---------------------------------------------------------------------------------
def _pairwise_record(row: _Row) -> tuple[dict[str, Any], str]:
    data = row.data
    if "conversations" in data:
        form = "sharegpt"
        prompt = _prompt(row, "conversations", _get(row, "conversations"))
    elif "prompt" in data:
        form = "prompt"
        prompt = _prompt(row, "prompt", _get(row, "prompt"))
    else:
        chosen, rejected = _get(row, "chosen"), _get(row, "rejected")
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise LmtuneError(
                f"{row.at()}: field 'prompt' is missing",
                hint="give a 'prompt', or 'chosen' and 'rejected' as whole conversations sharing the "
                "prompt turns, or sharegpt 'conversations'",
            )
        prompt, chosen, rejected = _split_shared(row)
        _check_distinct(row, chosen, rejected)
        return _pair(row, prompt, chosen, rejected), "conversational"
    chosen = _answer(row, "chosen", _get(row, "chosen"))
    rejected = _answer(row, "rejected", _get(row, "rejected"))
    _check_distinct(row, chosen, rejected)
    return _pair(row, prompt, chosen, rejected), form


def _pair(row: _Row, prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "where": row.at()}


def _split_shared(row: _Row) -> tuple[list[Message], list[Message], list[Message]]:
    """Whole chosen/rejected conversations -> (shared prompt, chosen answer, rejected answer)."""
    chosen = _messages(row, "chosen", row.data["chosen"])
    rejected = _messages(row, "rejected", row.data["rejected"])
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise LmtuneError(
            f"{row.at('chosen', 1)}: 'chosen' and 'rejected' differ from their first message, so they "
            "share no prompt",
            hint="give a 'prompt' field, or start both conversations with the same prompt turns",
        )
    if n == len(chosen) == len(rejected):
        _check_distinct(row, chosen, rejected)
    if chosen[n - 1]["role"] != "user":
        raise LmtuneError(
            f"{row.at('chosen', n + 1)}: 'chosen' and 'rejected' part here, after message {n}, "
            f"{_a(chosen[n - 1]['role'])} turn; the shared prompt must end with a user turn",
            hint="the two conversations must differ only in the assistant's last answer",
        )
    _check_prompt(row, "chosen", chosen[:n])
    prompt = _with_system(row, chosen[:n])
    _check_answer(row, "chosen", chosen[n:], first=n + 1)
    _check_answer(row, "rejected", rejected[n:], first=n + 1)
    return prompt, chosen[n:], rejected[n:]


def _check_distinct(row: _Row, chosen: list[Message], rejected: list[Message]) -> None:
    if [m["content"].strip() for m in chosen] == [m["content"].strip() for m in rejected]:
        raise LmtuneError(
            f"{row.at('rejected')}: the same answer as 'chosen'",
            hint="a pair must prefer one answer over a different one: fix or drop the record",
        )


# ---- unpaired ---------------------------------------------------------------------------------
def _unpaired_record(row: _Row) -> tuple[dict[str, Any], str]:
    data = row.data
    if "prompt" in data or "completion" in data:
        form = "prompt"
        prompt = _prompt(row, "prompt", _get(row, "prompt"))
        completion = _answer(row, "completion", _get(row, "completion"))
    elif "messages" in data or "conversations" in data:
        field = "messages" if "messages" in data else "conversations"
        form = "messages" if field == "messages" else "sharegpt"
        messages = _messages(row, field, _get(row, field))
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            problem = (
                f"the last turn is {_a(messages[-1]['role'])} turn"
                if messages[-1]["role"] != "assistant"
                else "there is no prompt before the assistant turn"
            )
            raise LmtuneError(
                f"{row.at(field)}: {problem}; expected the prompt, then the assistant's completion",
                hint="end each conversation with the assistant answer that the label judges",
            )
        _check_prompt(row, field, messages[:-1])
        prompt = _with_system(row, messages[:-1])
        completion = messages[-1:]
        _check_answer(row, field, completion, first=len(messages))
    else:
        raise LmtuneError(
            f"{row.at()}: field 'prompt' is missing",
            hint="give 'prompt' and 'completion', or 'messages' ending with the assistant's completion",
        )
    label = _get(row, "label")
    if not isinstance(label, bool):
        raise LmtuneError(
            f"{row.at('label')}: expected true or false, got {type(label).__name__} {label!r}",
            hint="labels are JSON booleans: true (desirable) or false (undesirable)",
        )
    return {"prompt": prompt, "completion": completion, "label": label, "where": row.at()}, form


# ---- fields and turns -------------------------------------------------------------------------
def _get(row: _Row, field: str) -> Any:
    value = row.data.get(field)
    if value is None:
        raise LmtuneError(f"{row.at()}: field '{field}' is missing", hint=f"give every record a '{field}'")
    return value


def _turn(row: _Row, field: str, number: int, turn: Any) -> Message:
    """One {"role", "content"} or sharegpt {"from", "value"} turn as a message."""
    at = row.at(field, number)
    if not isinstance(turn, dict):
        raise LmtuneError(
            f"{at}: expected an object with 'role' and 'content' (or 'from' and 'value'), "
            f"got {type(turn).__name__}"
        )
    role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
    check_turn_fields(turn, role_key, text_key, at)
    names = SHAREGPT_ROLES if role_key == "from" else _ROLE_NAMES
    name = turn[role_key].strip().lower()
    if name not in names:
        raise LmtuneError(
            f"{at}: unknown role '{turn[role_key]}'", hint=f"'{role_key}' must be one of {', '.join(names)}"
        )
    return {"role": names[name], "content": turn[text_key]}


def _messages(row: _Row, field: str, value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        what = "an empty list" if isinstance(value, list) else type(value).__name__
        raise LmtuneError(
            f"{row.at(field)}: expected a non-empty list of messages, got {what}",
            hint=f"'{field}' must be a list of {{role, content}} objects",
        )
    return [_turn(row, field, j + 1, turn) for j, turn in enumerate(value)]


def _with_system(row: _Row, messages: list[Message]) -> list[Message]:
    system = row.data.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return messages
    if not isinstance(system, str):
        raise LmtuneError(f"{row.at('system')}: expected text, got {type(system).__name__}")
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system}, *messages]


def _prompt(row: _Row, field: str, value: Any) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise LmtuneError(f"{row.at(field)}: the prompt is empty", hint="give every record a prompt")
        messages = [{"role": "user", "content": value}]
    else:
        messages = _messages(row, field, value)
    _check_prompt(row, field, messages)
    return _with_system(row, messages)


def _check_prompt(row: _Row, field: str, messages: list[Message]) -> None:
    """The turn order of a prompt, which must end with a user turn (the answers reply to it)."""
    previous = check_turn_order(messages, lambda j: row.at(field, j + 1), "prompt")
    if previous != "user":
        raise LmtuneError(
            f"{row.at(field)}: the prompt ends with {_a(previous)} turn, expected a user turn",
            hint="the answers reply to the prompt's last user turn",
        )


def check_turn_fields(turn: dict[str, Any], role_key: str, text_key: str, at: str) -> None:
    """A turn object has its role and text fields, both text (SFT's and preference readers)."""
    for key in (role_key, text_key):
        if key not in turn:
            raise LmtuneError(
                f"{at}: field '{key}' is missing", hint=f"every turn needs '{role_key}' and '{text_key}'"
            )
        if not isinstance(turn[key], str):
            raise LmtuneError(f"{at}: field '{key}' must be text, got {type(turn[key]).__name__}")


def check_turn_order(messages: Sequence[Message], at: Callable[[int], str], what: str) -> str | None:
    """Non-empty turns, system first only, user and assistant alternating from a user turn (SFT's
    conversations and preference prompts alike); `at(j)` names message j. Returns the last role."""
    previous = None
    for j, message in enumerate(messages):
        role = message["role"]
        if not message["content"].strip():
            raise LmtuneError(f"{at(j)}: the {role} message is empty", hint="give every turn some content")
        if role == "system" and j != 0:
            raise LmtuneError(f"{at(j)}: a system message must come first")
        if role != "system" and role == previous:
            raise LmtuneError(
                f"{at(j)}: two {role} turns in a row", hint="user and assistant turns must alternate"
            )
        if role == "assistant" and previous in (None, "system"):
            raise LmtuneError(f"{at(j)}: the {what} starts with the assistant", hint="start with a user turn")
        previous = role
    return previous


def _answer(row: _Row, field: str, value: Any) -> list[Message]:
    """A chosen/rejected/completion answer: a string, one turn object or a list of turns."""
    if isinstance(value, str):
        messages = [{"role": "assistant", "content": value}]
    elif isinstance(value, dict):
        messages = [_turn(row, field, 1, value)]
    elif isinstance(value, list):
        messages = [_turn(row, field, j + 1, turn) for j, turn in enumerate(value)]
    else:
        raise LmtuneError(
            f"{row.at(field)}: expected text or an assistant turn, got {type(value).__name__}",
            hint=_ANSWER_HINT,
        )
    _check_answer(row, field, messages, first=1)
    return messages


def _check_answer(row: _Row, field: str, messages: list[Message], *, first: int) -> None:
    """Exactly one non-empty assistant turn; `first` numbers its message in the field's list."""
    if not messages or not "".join(m["content"] for m in messages).strip():
        raise LmtuneError(f"{row.at(field)}: '{field}' is empty", hint="give every record a non-empty answer")
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            raise LmtuneError(
                f"{row.at(field, first + j)}: {_a(message['role'])} turn, expected the assistant's answer",
                hint=_ANSWER_HINT,
            )
    if len(messages) > 1:
        raise LmtuneError(
            f"{row.at(field)}: {len(messages)} assistant turns, expected one answer", hint=_ANSWER_HINT
        )


def _a(role: str | None) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"


# ---- report helpers ---------------------------------------------------------------------------
def _chars(messages: Sequence[Message]) -> int:
    return sum(len(m["content"]) for m in messages)


def _stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _shared_prompts(records: list[dict[str, Any]]) -> dict[str, int]:
    """Distinct prompts, and how many records have a prompt that another record has too."""
    counts = Counter(json.dumps(r["prompt"], ensure_ascii=False, sort_keys=True) for r in records)
    return {
        "distinct_prompts": len(counts),
        "records_with_shared_prompt": sum(c for c in counts.values() if c > 1),
    }
