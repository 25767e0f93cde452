"""Tests for the preference data reader: every accepted form, every error path, and the reports."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lmtune.data.preference import (
    check_prompt_lengths,
    length_report,
    messages_text,
    pairwise_report,
    read_preference_file,
    unpaired_report,
)
from lmtune.errors import LmtuneError


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def write_json(tmp_path: Path, records: Any, name: str = "prefs.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(tmp_path: Path, records: list[Any], name: str = "prefs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_one(tmp_path: Path, record: dict[str, Any], kind: str = "pairwise") -> dict[str, Any]:
    records, _ = read_preference_file(str(write_json(tmp_path, [record])), kind, "train")
    return records[0]


def without_where(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "where"}


# ---- pairwise forms ---------------------------------------------------------------------------
def test_strings_become_one_user_and_one_assistant_message(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    records, info = read_preference_file(str(path), "pairwise", "train")
    assert records == [
        {
            "prompt": [user("2+2?")],
            "chosen": [assistant("4")],
            "rejected": [assistant("5")],
            "where": f"{path}, line 1",
        }
    ]
    assert info == {"records": 1, "formats": {"prompt": 1}}


def test_message_lists_are_kept(tmp_path: Path) -> None:
    prompt = [system("Be brief."), user("Hi"), assistant("Hello"), user("2+2?")]
    record = read_one(tmp_path, {"prompt": prompt, "chosen": [assistant("4")], "rejected": [assistant("5")]})
    assert without_where(record) == {
        "prompt": prompt,
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }


def test_an_answer_may_be_one_turn_object(tmp_path: Path) -> None:
    record = read_one(tmp_path, {"prompt": "2+2?", "chosen": assistant("4"), "rejected": "5"})
    assert record["chosen"] == [assistant("4")] and record["rejected"] == [assistant("5")]


def test_conversational_form_splits_at_the_end_of_the_shared_prefix(tmp_path: Path) -> None:
    shared = [user("Hi"), assistant("Hello"), user("2+2?")]
    path = write_json(
        tmp_path, [{"chosen": [*shared, assistant("4")], "rejected": [*shared, assistant("5")]}]
    )
    records, info = read_preference_file(str(path), "pairwise", None)
    assert without_where(records[0]) == {
        "prompt": shared,
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }
    assert records[0]["where"] == f"{path}, record 1"
    assert info["formats"] == {"conversational": 1}


def test_sharegpt_form(tmp_path: Path) -> None:
    record = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "human", "value": "2+2?"},
        ],
        "chosen": {"from": "gpt", "value": "4"},
        "rejected": {"from": "gpt", "value": "5"},
    }
    records, info = read_preference_file(str(write_json(tmp_path, [record])), "pairwise", "train")
    assert without_where(records[0]) == {
        "prompt": [system("Be brief."), user("Hi"), assistant("Hello"), user("2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }
    assert info["formats"] == {"sharegpt": 1}


def test_top_level_system_becomes_the_first_message(tmp_path: Path) -> None:
    record = read_one(tmp_path, {"system": "Be brief.", "prompt": "2+2?", "chosen": "4", "rejected": "5"})
    assert record["prompt"] == [system("Be brief."), user("2+2?")]
    # A prompt that has its own system message keeps it.
    own = {"system": "Other.", "prompt": [system("Mine."), user("2+2?")], "chosen": "4", "rejected": "5"}
    assert read_one(tmp_path, own)["prompt"] == [system("Mine."), user("2+2?")]


def test_mixed_forms_are_counted(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        [
            {"prompt": "a?", "chosen": "x", "rejected": "y"},
            {"chosen": [user("b?"), assistant("x")], "rejected": [user("b?"), assistant("y")]},
            {"prompt": "c?", "chosen": "x", "rejected": "y"},
        ],
    )
    _, info = read_preference_file(str(path), "pairwise", "train")
    assert info == {"records": 3, "formats": {"prompt": 2, "conversational": 1}}


# ---- unpaired forms ---------------------------------------------------------------------------
def test_unpaired_prompt_completion_label(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        [
            {"prompt": "2+2?", "completion": "4", "label": True},
            {"prompt": [user("2+2?")], "completion": [assistant("5")], "label": False},
        ],
    )
    records, info = read_preference_file(str(path), "unpaired", "train")
    assert [without_where(r) for r in records] == [
        {"prompt": [user("2+2?")], "completion": [assistant("4")], "label": True},
        {"prompt": [user("2+2?")], "completion": [assistant("5")], "label": False},
    ]
    assert info == {"records": 2, "formats": {"prompt": 2}}


def test_unpaired_messages_form(tmp_path: Path) -> None:
    messages = [user("Hi"), assistant("Hello"), user("2+2?"), assistant("4")]
    path = write_json(tmp_path, [{"messages": messages, "label": True}])
    records, info = read_preference_file(str(path), "unpaired", "train")
    assert without_where(records[0]) == {
        "prompt": messages[:-1],
        "completion": [assistant("4")],
        "label": True,
    }
    assert info["formats"] == {"messages": 1}


def test_unpaired_sharegpt_form(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]
    records, info = read_preference_file(
        str(write_json(tmp_path, [{"conversations": turns, "label": False}])), "unpaired", "train"
    )
    assert without_where(records[0]) == {
        "prompt": [user("2+2?")],
        "completion": [assistant("4")],
        "label": False,
    }
    assert info["formats"] == {"sharegpt": 1}


# ---- errors -----------------------------------------------------------------------------------
def expect_error(tmp_path: Path, record: Any, kind: str, *parts: str) -> str:
    good = {"prompt": "ok?", "chosen": "a", "rejected": "b"}
    if kind == "unpaired":
        good = {"prompt": "ok?", "completion": "a", "label": True}
    path = write_jsonl(tmp_path, [good, record])
    with pytest.raises(LmtuneError) as info:
        read_preference_file(str(path), kind, "train")
    message = str(info.value)
    assert f"{path}, line 2" in message
    for part in parts:
        assert part in message
    return message


PAIRWISE_ERRORS = [
    pytest.param({"prompt": "q?", "rejected": "b"}, ("field 'chosen'", "missing"), id="missing-chosen"),
    pytest.param({"prompt": "q?", "chosen": "a"}, ("field 'rejected'", "missing"), id="missing-rejected"),
    pytest.param({"chosen": "a", "rejected": "b"}, ("field 'prompt'", "missing"), id="missing-prompt"),
    pytest.param(
        {"prompt": "q?", "chosen": "", "rejected": "b"}, ("field 'chosen'", "empty"), id="empty-chosen"
    ),
    pytest.param(
        {"prompt": "q?", "chosen": "a", "rejected": "  "}, ("'rejected' is empty",), id="empty-rejected"
    ),
    pytest.param({"prompt": "q?", "chosen": [], "rejected": "b"}, ("'chosen' is empty",), id="empty-list"),
    pytest.param(
        {"prompt": "q?", "chosen": "a", "rejected": "a "},
        ("field 'rejected'", "the same answer as 'chosen'"),
        id="chosen-equals-rejected",
    ),
    pytest.param(
        {"prompt": "", "chosen": "a", "rejected": "b"}, ("field 'prompt'", "empty"), id="empty-prompt"
    ),
    pytest.param({"prompt": [], "chosen": "a", "rejected": "b"}, ("empty list",), id="empty-prompt-list"),
    pytest.param(
        {"prompt": 3, "chosen": "a", "rejected": "b"}, ("field 'prompt'", "got int"), id="prompt-not-list"
    ),
    pytest.param(
        {"prompt": "q?", "chosen": 3, "rejected": "b"}, ("field 'chosen'", "got int"), id="chosen-int"
    ),
    pytest.param(
        {"prompt": [user("q?"), assistant("a")], "chosen": "a", "rejected": "b"},
        ("field 'prompt'", "ends with an assistant turn"),
        id="prompt-ends-with-assistant",
    ),
    pytest.param(
        {"prompt": [assistant("hi"), user("q?")], "chosen": "a", "rejected": "b"},
        ("message 1", "starts with the assistant"),
        id="prompt-starts-with-assistant",
    ),
    pytest.param(
        {"prompt": [user("q?"), user("q?")], "chosen": "a", "rejected": "b"},
        ("message 2", "two user turns"),
        id="two-user-turns",
    ),
    pytest.param(
        {"prompt": [user("q?"), system("s"), user("q?")], "chosen": "a", "rejected": "b"},
        ("message 2", "system message must come first"),
        id="system-not-first",
    ),
    pytest.param(
        {"prompt": [user("")], "chosen": "a", "rejected": "b"},
        ("field 'prompt', message 1", "user message is empty"),
        id="empty-prompt-turn",
    ),
    pytest.param(
        {"prompt": [{"role": "human", "content": "q?"}], "chosen": "a", "rejected": "b"},
        ("field 'prompt', message 1", "unknown role 'human'"),
        id="sharegpt-name-under-role",
    ),
    pytest.param(
        {"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"},
        ("message 1", "field 'content' is missing"),
        id="turn-without-content",
    ),
    pytest.param(
        {"prompt": [{"role": "user", "content": 3}], "chosen": "a", "rejected": "b"},
        ("message 1", "'content' must be text"),
        id="turn-content-not-text",
    ),
    pytest.param(
        {"prompt": ["q?"], "chosen": "a", "rejected": "b"},
        ("message 1", "expected an object"),
        id="turn-not-object",
    ),
    pytest.param(
        {"prompt": "q?", "chosen": [user("a")], "rejected": "b"},
        ("field 'chosen', message 1", "a user turn, expected the assistant's answer"),
        id="chosen-user-role",
    ),
    pytest.param(
        {"prompt": "q?", "chosen": "a", "rejected": [assistant("b"), assistant("c")]},
        ("field 'rejected'", "2 assistant turns"),
        id="two-answer-turns",
    ),
    pytest.param(
        {"chosen": [user("q?"), assistant("a")], "rejected": [user("r?"), assistant("b")]},
        ("field 'chosen', message 1", "share no prompt"),
        id="conversational-no-shared-prefix",
    ),
    pytest.param(
        {"chosen": [user("q?"), assistant("a")], "rejected": [user("q?"), assistant("a")]},
        ("field 'rejected'", "the same answer as 'chosen'"),
        id="conversational-identical",
    ),
    pytest.param(
        {
            "chosen": [user("q?"), assistant("a"), user("x"), assistant("b")],
            "rejected": [user("q?"), assistant("a"), user("y"), assistant("c")],
        },
        ("field 'chosen', message 3", "after message 2, an assistant turn", "must end with a user turn"),
        id="conversational-prefix-ends-with-assistant",
    ),
    pytest.param(
        {"chosen": [user("q?")], "rejected": [user("q?"), assistant("b")]},
        ("'chosen' is empty",),
        id="conversational-empty-chosen",
    ),
    pytest.param(
        {"chosen": [user("q?"), assistant("a"), user("more")], "rejected": [user("q?"), assistant("b")]},
        ("field 'chosen', message 3", "a user turn"),
        id="conversational-answer-with-user-turn",
    ),
    pytest.param(
        {"conversations": [{"from": "human", "value": "q?"}], "chosen": {"from": "gpt", "value": "a"}},
        ("field 'rejected'", "missing"),
        id="sharegpt-missing-rejected",
    ),
    pytest.param(
        {
            "conversations": [{"from": "robot", "value": "q?"}],
            "chosen": {"from": "gpt", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"},
        },
        ("field 'conversations', message 1", "unknown role 'robot'"),
        id="sharegpt-unknown-role",
    ),
    pytest.param(
        {
            "conversations": [{"from": "human", "value": "q?"}],
            "chosen": {"from": "human", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"},
        },
        ("field 'chosen', message 1", "a user turn"),
        id="sharegpt-chosen-from-human",
    ),
    pytest.param(
        {
            "conversations": [{"from": "human", "value": "q?"}, {"from": "gpt", "value": "a"}],
            "chosen": {"from": "gpt", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"},
        },
        ("field 'conversations'", "ends with an assistant turn"),
        id="sharegpt-prompt-ends-with-gpt",
    ),
    pytest.param(
        {"conversations": [{"from": "human"}], "chosen": "a", "rejected": "b"},
        ("message 1", "field 'value' is missing"),
        id="sharegpt-turn-without-value",
    ),
    pytest.param(
        {"system": 3, "prompt": "q?", "chosen": "a", "rejected": "b"},
        ("field 'system'", "expected text"),
        id="system-not-text",
    ),
]


@pytest.mark.parametrize(("record", "parts"), PAIRWISE_ERRORS)
def test_pairwise_errors_name_file_line_and_field(
    tmp_path: Path, record: dict, parts: tuple[str, ...]
) -> None:
    expect_error(tmp_path, record, "pairwise", *parts)


UNPAIRED_ERRORS = [
    pytest.param({"prompt": "q?", "completion": "a"}, ("field 'label'", "missing"), id="missing-label"),
    pytest.param({"prompt": "q?", "label": True}, ("field 'completion'", "missing"), id="missing-completion"),
    pytest.param({"completion": "a", "label": True}, ("field 'prompt'", "missing"), id="missing-prompt"),
    pytest.param({"label": True}, ("field 'prompt'", "missing"), id="no-prompt-or-messages"),
    pytest.param({"prompt": "q?", "completion": "", "label": True}, ("'completion' is empty",), id="empty"),
    pytest.param(
        {"prompt": "q?", "completion": "a", "label": "yes"},
        ("field 'label'", "expected true or false", "'yes'"),
        id="label-yes",
    ),
    pytest.param(
        {"prompt": "q?", "completion": "a", "label": 1}, ("field 'label'", "got int 1"), id="label-one"
    ),
    pytest.param(
        {"prompt": "q?", "completion": "a", "label": "true"}, ("field 'label'", "got str"), id="label-string"
    ),
    pytest.param(
        {"messages": [user("q?"), assistant("a"), user("more")], "label": True},
        ("field 'messages'", "last turn is a user turn"),
        id="messages-end-with-user",
    ),
    pytest.param(
        {"messages": [assistant("a")], "label": True},
        ("field 'messages'", "no prompt before the assistant turn"),
        id="messages-without-prompt",
    ),
    pytest.param(
        {"messages": [user("q?"), assistant("a"), assistant("b")], "label": True},
        ("field 'messages'", "ends with an assistant turn"),
        id="messages-two-assistant-turns",
    ),
    pytest.param(
        {"messages": [user("q?"), assistant(" ")], "label": False},
        ("field 'messages'", "'messages' is empty"),
        id="messages-empty-completion",
    ),
    pytest.param({"messages": "q?", "label": False}, ("field 'messages'", "got str"), id="messages-not-list"),
    pytest.param(
        {"messages": [{"role": "bot", "content": "q?"}, assistant("a")], "label": True},
        ("field 'messages', message 1", "unknown role 'bot'"),
        id="messages-unknown-role",
    ),
]


@pytest.mark.parametrize(("record", "parts"), UNPAIRED_ERRORS)
def test_unpaired_errors_name_file_line_and_field(
    tmp_path: Path, record: dict, parts: tuple[str, ...]
) -> None:
    expect_error(tmp_path, record, "unpaired", *parts)


def test_json_list_errors_name_the_record(tmp_path: Path) -> None:
    path = write_json(
        tmp_path, [{"prompt": "q?", "chosen": "a", "rejected": "b"}, {"prompt": "q?", "chosen": "a"}]
    )
    with pytest.raises(LmtuneError, match=r"prefs\.json, record 2: field 'rejected' is missing"):
        read_preference_file(str(path), "pairwise", "train")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param('{"prompt": "q?"}', "expected a JSON list of records", id="json-object"),
        pytest.param('"text"', "expected a JSON list of records", id="json-string"),
        pytest.param(
            '[{"prompt": "q?", "chosen": "a", "rejected": "b"}, 3]', "record 2: expected a JSON object"
        ),
    ],
)
def test_file_must_be_a_list_of_objects(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LmtuneError, match=expected):
        read_preference_file(str(path), "pairwise", "train")


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q?", "chosen": "a", "rejected": "b"}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(LmtuneError, match=r"bad\.jsonl, line 3: expected a JSON object"):
        read_preference_file(str(path), "pairwise", "train")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LmtuneError, match="not found"):
        read_preference_file(str(tmp_path / "nope.jsonl"), "unpaired", "train")


def test_unknown_kind_is_a_programming_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"prompt": "q?", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match="kind"):
        read_preference_file(str(path), "ranked", "train")  # type: ignore[arg-type]


# ---- text, reports and length checks ----------------------------------------------------------
def test_messages_text() -> None:
    text = messages_text([system("Be brief."), user("2+2?"), assistant("4")])
    assert text == "System: Be brief.\n\nUser: 2+2?\n\nAssistant: 4"
    assert messages_text([]) == ""


def test_pairwise_report(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        [
            {"prompt": "aa", "chosen": "x", "rejected": "yyyy"},
            {"prompt": "aa", "chosen": "xxx", "rejected": "y"},
            {"prompt": "bbbbbb", "chosen": "xxxxx", "rejected": "yy"},
        ],
    )
    records, _ = read_preference_file(str(path), "pairwise", "train")
    assert pairwise_report(records) == {
        "pairs": 3,
        "prompt_chars": {"min": 2, "median": 2, "max": 6},
        "chosen_chars": {"min": 1, "median": 3, "max": 5},
        "rejected_chars": {"min": 1, "median": 2, "max": 4},
        "distinct_prompts": 2,
        "records_with_shared_prompt": 2,
    }


def test_unpaired_report(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        [
            {"prompt": "q1", "completion": "good", "label": True},
            {"prompt": "q1", "completion": "bad", "label": False},
            {"prompt": "q22", "completion": "ok", "label": True},
            {"messages": [user("q333"), assistant("meh")], "label": False},
        ],
    )
    records, _ = read_preference_file(str(path), "unpaired", "train")
    report = unpaired_report(records)
    assert report == {
        "examples": 4,
        "desirable": 2,
        "undesirable": 2,
        "prompt_chars": {"min": 2, "median": 2.5, "max": 4},
        "completion_chars": {"min": 2, "median": 3, "max": 4},
        "distinct_prompts": 3,
        "records_with_shared_prompt": 2,
    }


def test_reports_of_no_records() -> None:
    assert pairwise_report([])["pairs"] == 0
    assert unpaired_report([])["prompt_chars"] == {"min": 0, "median": 0, "max": 0}


def test_length_report_counts_what_exceeds_max_length() -> None:
    report = length_report({"prompt": [3, 8, 12], "chosen": [20, 2]}, max_length=10)
    assert report == {
        "max_length": 10,
        "prompt": {"min": 3, "median": 8, "max": 12, "over_max_length": 1},
        "chosen": {"min": 2, "median": 11, "max": 20, "over_max_length": 1},
    }


def test_check_prompt_lengths_names_the_first_long_prompt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"prompt": f"q{i}?", "chosen": "a", "rejected": "b"} for i in range(4)])
    records, _ = read_preference_file(str(path), "pairwise", "train")
    check_prompt_lengths(records, [3, 9, 5, 1], max_length=10)
    with pytest.raises(LmtuneError) as info:
        check_prompt_lengths(records, [3, 10, 12, 1], max_length=10)
    message = str(info.value)
    assert f"{path}, line 2" in message and "10 tokens" in message and "2 of 4 prompts" in message
    assert "data.max_length" in message
    with pytest.raises(ValueError, match="prompt lengths"):
        check_prompt_lengths(records, [1], max_length=10)


# ---- the shared demo files ----------------------------------------------------------------------
def shared_preference_dir() -> Path | None:
    candidates = []
    if os.environ.get("LMTUNE_DATA_DIR"):
        candidates.append(Path(os.environ["LMTUNE_DATA_DIR"]))
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    for base in candidates:
        if (base / "preference").is_dir():
            return base / "preference"
    return None


def test_shared_demo_files() -> None:
    folder = shared_preference_dir()
    if folder is None:
        pytest.skip("shared data not found (set LMTUNE_DATA_DIR to the shared data directory)")
    found = False
    for name in ("dpo_en_demo.json", "dpo_zh_demo.json"):
        if not (folder / name).is_file():
            continue
        found = True
        records, info = read_preference_file(str(folder / name), "pairwise", "train")
        assert info["formats"] == {"sharegpt": len(records)}
        assert all(r["prompt"][-1]["role"] == "user" for r in records)
        assert all(r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant" for r in records)
        assert pairwise_report(records)["pairs"] == len(records) > 0
    if (folder / "kto_en_demo.json").is_file():
        found = True
        records, info = read_preference_file(str(folder / "kto_en_demo.json"), "unpaired", "train")
        assert info["formats"] == {"messages": len(records)}
        report = unpaired_report(records)
        assert report["desirable"] > 0 and report["undesirable"] > 0
        assert report["desirable"] + report["undesirable"] == len(records)
    if not found:
        pytest.skip(f"no demo files in {folder}")
