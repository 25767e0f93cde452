"""Tests for the shared data checks: columns, text cells, splitting and counting."""

from __future__ import annotations

from collections import Counter

import pytest

from lmtune.data.checks import (
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    count_duplicates,
    count_overlap,
    find_column,
    is_missing,
    sample,
    stratified_split,
    text_value,
)
from lmtune.data.readers import Table
from lmtune.errors import LmtuneError


def make_table(rows: list[dict], columns: list[str] | None = None, path: str = "train.jsonl") -> Table:
    columns = columns or list(rows[0])
    return Table(path, columns, rows, [i + 2 for i in range(len(rows))], "line")


# ---- find_column -----------------------------------------------------------------------------
def test_find_column_explicit() -> None:
    table = make_table([{"body": "x", "text": "y"}])
    assert find_column(table, "body", TEXT_COLUMNS, "text", "data.text_column") == "body"


def test_find_column_by_common_name() -> None:
    table = make_table([{"id": 1, "review": "x", "sentiment": "pos"}])
    assert find_column(table, None, TEXT_COLUMNS, "text", "data.text_column") == "review"
    assert find_column(table, None, LABEL_COLUMNS, "label", "data.label_column") == "sentiment"


def test_find_column_common_name_is_case_insensitive() -> None:
    table = make_table([{"Text": "x", "Label": "y"}])
    assert find_column(table, None, TEXT_COLUMNS, "text", "data.text_column") == "Text"
    assert find_column(table, None, LABEL_COLUMNS, "label", "data.label_column") == "Label"


def test_find_column_prefers_earlier_candidate() -> None:
    table = make_table([{"title": "t", "text": "x"}])
    assert find_column(table, None, TEXT_COLUMNS, "text", "data.text_column") == "text"


def test_find_column_explicit_missing_suggests_close_match() -> None:
    table = make_table([{"review_text": "x", "label": "y"}])
    with pytest.raises(LmtuneError) as info:
        find_column(table, "review_txt", TEXT_COLUMNS, "text", "data.text_column")
    msg = str(info.value)
    assert "train.jsonl" in msg
    assert "no text column 'review_txt'" in msg
    assert "did you mean 'review_text'" in msg
    assert "data.text_column" in msg


def test_find_column_explicit_missing_without_close_match() -> None:
    table = make_table([{"a": "x", "b": "y"}])
    with pytest.raises(LmtuneError) as info:
        find_column(table, "zzzzzz", TEXT_COLUMNS, "text", "data.text_column")
    msg = str(info.value)
    assert "did you mean" not in msg
    assert "columns: a, b" in msg


def test_find_column_not_found_by_name() -> None:
    table = make_table([{"foo": "x", "bar": "y"}])
    with pytest.raises(LmtuneError) as info:
        find_column(table, None, LABEL_COLUMNS, "label", "data.label_column")
    msg = str(info.value)
    assert "cannot find the label column" in msg
    assert "columns: foo, bar" in msg
    assert "--set data.label_column=foo" in msg


# ---- text_value ------------------------------------------------------------------------------
def test_text_value_strips_whitespace() -> None:
    table = make_table([{"text": "  hello world \n"}])
    assert text_value(table, 0, "text") == "hello world"


@pytest.mark.parametrize("value", ["", "   ", "\t\n", None, float("nan")])
def test_text_value_empty_is_none(value: object) -> None:
    table = make_table([{"text": value}])
    assert text_value(table, 0, "text") is None


def test_text_value_missing_key_is_none() -> None:
    table = make_table([{"other": "x"}], columns=["other", "text"])
    assert text_value(table, 0, "text") is None


@pytest.mark.parametrize(
    ("value", "type_name"), [(5, "int"), (1.5, "float"), (True, "bool"), (["a"], "list")]
)
def test_text_value_rejects_non_strings(value: object, type_name: str) -> None:
    table = make_table([{"text": "fine"}, {"text": value}])
    with pytest.raises(LmtuneError) as info:
        text_value(table, 1, "text")
    msg = str(info.value)
    assert "train.jsonl, line 3, column 'text'" in msg
    assert f"expected text, got {type_name}" in msg


def test_is_missing() -> None:
    assert is_missing(None)
    assert is_missing(float("nan"))
    assert not is_missing("")
    assert not is_missing(0)


# ---- stratified_split ------------------------------------------------------------------------
def test_stratified_split_keeps_proportions_and_size() -> None:
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert len(held) == 20
    assert len(keep) == 80
    assert sorted(keep + held) == list(range(100))
    assert not set(keep) & set(held)
    assert Counter(labels[i] for i in held) == {"a": 12, "b": 6, "c": 2}
    assert keep == sorted(keep)
    assert held == sorted(held)


def test_stratified_split_exact_size_with_rounding() -> None:
    labels = ["x"] * 7 + ["y"] * 6 + ["z"] * 4  # 17 rows, 10% -> 2 held out
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert len(held) == round(17 * 0.1)
    assert len(keep) + len(held) == 17


def test_stratified_split_exact_size_with_small_classes() -> None:
    # 41 rows, 10% -> round(4.1) = 4 held out. Giving each of the three classes at least one held-out
    # member must not push the held-out set past the requested size.
    labels = ["a"] * 37 + ["b"] * 2 + ["c"] * 2
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert len(held) == 4
    assert len(keep) == 37
    assert not set(keep) & set(held)


def test_stratified_split_never_empties_a_class() -> None:
    labels = ["a"] * 20 + ["b"] * 2
    keep, _held = stratified_split(labels, 0.4, seed=1)
    assert {labels[i] for i in keep} == {"a", "b"}


def test_stratified_split_is_seeded() -> None:
    labels = ["a"] * 50 + ["b"] * 50
    first = stratified_split(labels, 0.2, seed=7)
    assert stratified_split(labels, 0.2, seed=7) == first
    assert stratified_split(labels, 0.2, seed=8) != first


def test_stratified_split_falls_back_to_random_with_singleton_class() -> None:
    labels = ["a"] * 10 + ["b"] * 9 + ["c"]
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert len(held) == 4
    assert sorted(keep + held) == list(range(20))
    # Random but still seeded.
    assert stratified_split(labels, 0.2, seed=0) == (keep, held)
    assert stratified_split(labels, 0.2, seed=1) != (keep, held)


def test_stratified_split_falls_back_when_more_classes_than_held_rows() -> None:
    labels = [str(i % 5) for i in range(20)]  # 5 classes, 4 members each; 10% -> 2 held
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert len(held) == 2
    assert len(keep) == 18


def test_stratified_split_holds_out_at_least_one() -> None:
    keep, held = stratified_split(["a", "b", "a", "b"], 0.01, seed=0)
    assert len(held) == 1
    assert len(keep) == 3


def test_stratified_split_too_few_rows() -> None:
    with pytest.raises(LmtuneError, match=r"too few examples \(1\)"):
        stratified_split(["a"], 0.1, seed=0)


# ---- counting ----------------------------------------------------------------------------------
def test_count_duplicates() -> None:
    assert count_duplicates([]) == 0
    assert count_duplicates(["a", "b", "c"]) == 0
    assert count_duplicates(["a", "b", "a", "a", "b", "c"]) == 3


def test_count_overlap() -> None:
    assert count_overlap(["a", "b", "c"], ["b", "x", "c", "c"]) == 3
    assert count_overlap(["a"], ["b"]) == 0
    assert count_overlap([], ["a"]) == 0


def test_sample_is_seeded_and_ordered() -> None:
    items = list(range(100))
    first = sample(items, 10, seed=0)
    assert len(first) == 10
    assert first == sorted(first)
    assert len(set(first)) == 10
    assert sample(items, 10, seed=0) == first
    assert sample(items, 10, seed=1) != first
    assert sample(items, 100, seed=0) == items
