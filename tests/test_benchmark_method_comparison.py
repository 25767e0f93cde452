"""The published method comparison is updated suite by suite: a rerun keeps the rest of the document."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from method_comparison import BEGIN, END, INTRO, merge_sections


def block(name: str, body: str) -> str:
    return f"{BEGIN.format(name=name)}\n{body}\n{END.format(name=name)}"


def test_a_new_document_starts_with_the_intro_and_holds_each_suite_once() -> None:
    text = merge_sections("", {"cls": "## cls table", "ner": "## ner table"})
    assert text.startswith(INTRO.splitlines()[0])
    assert text.count(BEGIN.format(name="cls")) == 1 and text.count(END.format(name="ner")) == 1
    assert text.index("## cls table") < text.index("## ner table")


def test_rerunning_one_suite_replaces_only_its_block_and_keeps_the_prose() -> None:
    prose = "## What the numbers say\n\nprose"
    existing = "\n\n".join(["# Title", block("cls", "## cls old"), block("sft", "## sft old"), prose])
    text = merge_sections(existing, {"sft": "## sft new"})
    assert "## sft new" in text and "## sft old" not in text
    assert "## cls old" in text and text.endswith("prose\n")
    assert text.index("## cls old") < text.index("## sft new") < text.index("## What the numbers say")


def test_a_suite_not_yet_in_the_document_goes_after_the_last_block_before_the_prose() -> None:
    existing = "\n\n".join(["# Title", block("cls", "## cls"), "## What the numbers say"])
    text = merge_sections(existing, {"ner": "## ner"})
    assert text.index(END.format(name="cls")) < text.index(BEGIN.format(name="ner"))
    assert text.index(END.format(name="ner")) < text.index("## What the numbers say")
    assert merge_sections(text, {"ner": "## ner"}) == text  # idempotent
