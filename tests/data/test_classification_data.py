"""Tests for the data side of the classification task (no model, no tokenizer, no training)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.tasks.classification import ClassificationTask


def make_task(tmp_path: Path, task: dict[str, Any] | None = None, **data: Any) -> ClassificationTask:
    raw: dict[str, Any] = {"model": {"name": "x"}, "data": data, "output_dir": str(tmp_path / "run")}
    if task is not None:
        raw["task"] = task
    return ClassificationTask(RunConfig(**raw))


def write_csv(path: Path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return str(path)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def labelled_rows(counts: dict[str, int], prefix: str = "") -> list[str]:
    """CSV rows `text,label` with unique texts that encode their label, e.g. `pos 3,pos`."""
    return [f"{prefix}{label} {i},{label}" for label, n in counts.items() for i in range(n)]


def decode(dataset: Any, labels: list[str]) -> list[tuple[str, str]]:
    return [(row["text"], labels[row["label_ids"]]) for row in dataset]


# ---- labels ------------------------------------------------------------------------------------
def test_labels_sorted_naturally_for_numbers(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"10": 5, "2": 5, "1": 5}))
    task = make_task(tmp_path, train=train)
    prepared = task.prepare_data()
    assert prepared.labels == ["1", "2", "10"]
    assert task.labels == ["1", "2", "10"]
    assert prepared.report["labels"] == ["1", "2", "10"]
    # label_ids point at the right label in every split.
    for split in ("train", "validation", "test"):
        for text, label in decode(prepared.splits[split], prepared.labels):
            assert text.split()[0] == label


def test_labels_sorted_alphabetically_for_words(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"pos": 5, "neg": 5, "neutral": 5}))
    prepared = make_task(tmp_path, train=train).prepare_data()
    assert prepared.labels == ["neg", "neutral", "pos"]


def test_integer_labels_from_json_become_strings(tmp_path: Path) -> None:
    records = [{"text": f"t{i}", "label": i % 3} for i in range(30)]
    records[0]["label"] = 0.0  # a float that is an integer counts as that integer
    train = write_jsonl(tmp_path / "train.jsonl", records)
    prepared = make_task(tmp_path, train=train).prepare_data()
    assert prepared.labels == ["0", "1", "2"]
    assert prepared.report["multi_label"] is False


# ---- splits ------------------------------------------------------------------------------------
def test_validation_and_test_carved_from_train(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"pos": 20, "neg": 20}))
    prepared = make_task(tmp_path, train=train).prepare_data()
    report = prepared.report
    assert report["carved_from_train"] == ["test", "validation"]
    assert report["rows"] == {"test": 4, "validation": 4, "train": 32}
    texts = {name: [row["text"] for row in ds] for name, ds in prepared.splits.items()}
    assert len(texts["test"]) == 4 and len(texts["validation"]) == 4 and len(texts["train"]) == 32
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["train"]) & set(texts["validation"])
    assert not set(texts["validation"]) & set(texts["test"])
    assert len(set().union(*texts.values())) == 40
    # Stratified: both classes appear in each held-out split, in proportion.
    assert report["class_balance"]["test"] == {"neg": 2, "pos": 2}
    assert report["class_balance"]["validation"] == {"neg": 2, "pos": 2}
    assert report["overlap_train_test"] == 0
    assert report["overlap_train_validation"] == 0


def test_carved_test_size_follows_the_ratio(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"a": 25, "b": 25}))
    val = write_csv(tmp_path / "val.csv", "text,label", ["v,a"])
    prepared = make_task(tmp_path, train=train, validation=val, test_split=0.3).prepare_data()
    assert prepared.report["carved_from_train"] == ["test"]
    assert prepared.report["rows"] == {"test": 15, "validation": 1, "train": 35}
    assert sorted(prepared.report["class_balance"]["test"].values()) == [7, 8]


def test_carved_validation_size_follows_the_ratio(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"a": 30, "b": 20}))
    test = write_csv(tmp_path / "test.csv", "text,label", ["t,b"])
    prepared = make_task(tmp_path, train=train, test=test, validation_split=0.2).prepare_data()
    assert prepared.report["carved_from_train"] == ["validation"]
    assert prepared.report["rows"] == {"test": 1, "validation": 10, "train": 40}
    assert prepared.report["class_balance"]["validation"] == {"a": 6, "b": 4}


def test_max_train_samples(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"a": 30, "b": 30}))
    prepared = make_task(tmp_path, train=train, max_train_samples=10).prepare_data()
    assert prepared.report["rows"]["train"] == 10
    assert prepared.report["rows"]["test"] == 6
    held = set(prepared.splits["test"]["text"]) | set(prepared.splits["validation"]["text"])
    assert not held & set(prepared.splits["train"]["text"])


def test_carving_is_seeded(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"a": 30, "b": 30}))

    def test_texts(seed: int) -> list[str]:
        task = ClassificationTask(
            RunConfig(
                model={"name": "x"}, data={"train": train}, train={"seed": seed}, output_dir=str(tmp_path)
            )
        )
        return task.prepare_data().splits["test"]["text"]

    assert test_texts(1) == test_texts(1)
    assert test_texts(1) != test_texts(2)


def test_given_validation_and_test_files_are_used(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"pos": 5, "neg": 5}))
    val = write_csv(tmp_path / "val.csv", "text,label", ["v1,pos", "v2,neg", "v3,neg"])
    test = write_csv(tmp_path / "test.csv", "text,label", ["t1,pos", "t2,pos"])
    prepared = make_task(tmp_path, train=train, validation=val, test=test).prepare_data()
    assert prepared.report["carved_from_train"] == []
    assert prepared.report["rows"] == {"train": 10, "validation": 3, "test": 2}
    assert decode(prepared.splits["validation"], prepared.labels) == [
        ("v1", "pos"),
        ("v2", "neg"),
        ("v3", "neg"),
    ]
    assert decode(prepared.splits["test"], prepared.labels) == [("t1", "pos"), ("t2", "pos")]


def test_validation_file_uses_the_train_columns(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "review,sentiment", labelled_rows({"1": 5, "5": 5}))
    val = write_csv(tmp_path / "val.csv", "sentiment,review", ["5,great", "1,awful"])
    test = write_csv(tmp_path / "test.csv", "review,sentiment", ["fine,5"])
    prepared = make_task(tmp_path, train=train, validation=val, test=test).prepare_data()
    assert prepared.report["columns"] == {"text": "review", "text_pair": None, "label": "sentiment"}
    assert decode(prepared.splits["validation"], prepared.labels) == [("great", "5"), ("awful", "1")]


# ---- errors ------------------------------------------------------------------------------------
def test_unseen_label_in_test_file(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"pos": 5, "neg": 5}))
    test = write_csv(tmp_path / "test.csv", "text,label", ["fine,pos", "what,meh"])
    with pytest.raises(LmtuneError) as info:
        make_task(tmp_path, train=train, test=test).prepare_data()
    msg = str(info.value)
    assert f"{test}, line 3, column 'label'" in msg
    assert "label 'meh'" in msg
    assert "does not occur in the training data" in msg
    assert "neg, pos" in msg


def test_unseen_label_in_validation_file(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(10)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 2}])
    with pytest.raises(LmtuneError, match=r"val\.jsonl, line 2, column 'label': label '2'"):
        make_task(tmp_path, train=train, validation=val).prepare_data()


def test_single_class_is_an_error(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"pos": 10}))
    with pytest.raises(LmtuneError) as info:
        make_task(tmp_path, train=train).prepare_data()
    msg = str(info.value)
    assert train in msg
    assert "only one class ('pos')" in msg
    assert "column 'label'" in msg


def test_empty_label_in_train(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", ["a,pos", "b,neg", "c,  ", "d,pos"])
    with pytest.raises(LmtuneError) as info:
        make_task(tmp_path, train=train).prepare_data()
    msg = str(info.value)
    assert f"{train}, line 4, column 'label'" in msg
    assert "the label is empty" in msg


def test_null_label_in_json_train(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": None}])
    with pytest.raises(LmtuneError, match=r"line 2, column 'label': the label is empty"):
        make_task(tmp_path, train=train).prepare_data()


def test_object_label_is_an_error(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": {"name": "x"}}])
    with pytest.raises(LmtuneError, match=r"line 1, column 'label': expected a label, got an object"):
        make_task(tmp_path, train=train).prepare_data()


def test_non_string_text_is_an_error(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": 12, "label": "y"}])
    with pytest.raises(LmtuneError) as info:
        make_task(tmp_path, train=train).prepare_data()
    msg = str(info.value)
    assert "train.jsonl, line 2, column 'text'" in msg
    assert "expected text, got int" in msg


def test_missing_label_column(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,rating", ["a,1", "b,2"])
    with pytest.raises(LmtuneError, match="cannot find the label column"):
        make_task(tmp_path, train=train).prepare_data()


def test_explicit_label_column_typo(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,rating", ["a,1", "b,2"])
    with pytest.raises(LmtuneError, match="did you mean 'rating'"):
        make_task(tmp_path, train=train, label_column="ratng").prepare_data()


def test_no_training_data(tmp_path: Path) -> None:
    with pytest.raises(LmtuneError, match="no training data given"):
        make_task(tmp_path).prepare_data()


def test_every_text_empty(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", [" ,a", ",b"])
    with pytest.raises(LmtuneError, match="every row has an empty text"):
        make_task(tmp_path, train=train).prepare_data()


# ---- report ------------------------------------------------------------------------------------
def test_empty_text_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [*labelled_rows({"pos": 10, "neg": 10}), " ,pos", ",neg", "   ,neg"]
    train = write_csv(tmp_path / "train.csv", "text,label", rows)
    prepared = make_task(tmp_path, train=train).prepare_data()
    assert prepared.report["dropped_empty_train"] == 3
    assert sum(prepared.report["rows"].values()) == 20
    assert all(text.strip() for ds in prepared.splits.values() for text in ds["text"])


def test_texts_are_stripped(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"a": 5, "b": 5}))
    test = write_csv(tmp_path / "test.csv", "text,label", ["  padded text  ,a"])
    prepared = make_task(tmp_path, train=train, test=test).prepare_data()
    assert prepared.splits["test"]["text"] == ["padded text"]


def test_duplicates_and_overlap_are_counted(tmp_path: Path) -> None:
    rows = [*labelled_rows({"pos": 5, "neg": 5}), "pos 0,pos", "pos 0,pos", "neg 1,neg"]
    train = write_csv(tmp_path / "train.csv", "text,label", rows)
    val = write_csv(tmp_path / "val.csv", "text,label", ["pos 2,pos", "new,neg"])
    test = write_csv(tmp_path / "test.csv", "text,label", ["pos 3,pos", "neg 4,neg", "other,neg"])
    prepared = make_task(tmp_path, train=train, validation=val, test=test).prepare_data()
    report = prepared.report
    assert report["duplicates_in_train"] == 3
    assert report["dropped_duplicates_train"] == 0
    assert report["overlap_train_test"] == 2
    assert report["overlap_train_validation"] == 1
    assert report["rows"]["train"] == 13


def test_drop_duplicates(tmp_path: Path) -> None:
    rows = [*labelled_rows({"pos": 5, "neg": 5}), "pos 0,pos", "pos 0,pos", "neg 1,neg"]
    train = write_csv(tmp_path / "train.csv", "text,label", rows)
    val = write_csv(tmp_path / "val.csv", "text,label", ["v,pos"])
    test = write_csv(tmp_path / "test.csv", "text,label", ["t,neg"])
    prepared = make_task(
        tmp_path, train=train, validation=val, test=test, drop_duplicates=True
    ).prepare_data()
    assert prepared.report["dropped_duplicates_train"] == 3
    assert prepared.report["duplicates_in_train"] == 0
    assert prepared.report["rows"]["train"] == 10


def test_class_balance_in_report(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"a": 6, "b": 3}))
    val = write_csv(tmp_path / "val.csv", "text,label", ["x,a"])
    test = write_csv(tmp_path / "test.csv", "text,label", ["y,b", "z,b"])
    report = make_task(tmp_path, train=train, validation=val, test=test).prepare_data().report
    assert report["class_balance"] == {
        "test": {"a": 0, "b": 2},
        "validation": {"a": 1, "b": 0},
        "train": {"a": 6, "b": 3},
    }


# ---- text pairs --------------------------------------------------------------------------------
def test_text_pair_columns_detected(tmp_path: Path) -> None:
    rows = [f"premise {i},hypothesis {i},{'entail' if i % 2 else 'contra'}" for i in range(20)]
    rows.append("lonely,,entail")  # an empty second text drops the row
    train = write_csv(tmp_path / "train.csv", "sentence1,sentence2,label", rows)
    prepared = make_task(tmp_path, train=train).prepare_data()
    assert prepared.report["columns"] == {"text": "sentence1", "text_pair": "sentence2", "label": "label"}
    assert prepared.report["dropped_empty_train"] == 1
    ds = prepared.splits["train"]
    assert "text_pair" in ds.column_names
    for row in ds:
        assert row["text"].replace("premise", "hypothesis") == row["text_pair"]


def test_same_texts_with_different_pairs_are_not_duplicates(tmp_path: Path) -> None:
    rows = [f"q,answer {i},{'yes' if i % 2 else 'no'}" for i in range(10)]
    train = write_csv(tmp_path / "train.csv", "question,context,label", rows)
    val = write_csv(tmp_path / "val.csv", "question,context,label", ["q,answer 1,yes"])
    test = write_csv(tmp_path / "test.csv", "question,context,label", ["q,other,no"])
    report = make_task(tmp_path, train=train, validation=val, test=test).prepare_data().report
    assert report["columns"]["text_pair"] == "context"
    assert report["duplicates_in_train"] == 0
    assert report["overlap_train_validation"] == 1
    assert report["overlap_train_test"] == 0


def test_explicit_pair_column(tmp_path: Path) -> None:
    rows = [f"a{i},b{i},{i % 2}" for i in range(10)]
    train = write_csv(tmp_path / "train.csv", "left,right,label", rows)
    task = make_task(tmp_path, train=train, text_column="left", text_pair_column="right")
    prepared = task.prepare_data()
    assert prepared.report["columns"] == {"text": "left", "text_pair": "right", "label": "label"}
    assert {r["text"][1:] for r in prepared.splits["train"]} == {
        r["text_pair"][1:] for r in prepared.splits["train"]
    }


# ---- multi-label -------------------------------------------------------------------------------
def test_multi_label_from_jsonl_lists(tmp_path: Path) -> None:
    combos = [["sports"], ["politics", "sports"], ["tech"], ["politics"], ["tech", "sports"]]
    records = [{"text": f"t{i}", "labels": combos[i % len(combos)]} for i in range(25)]
    train = write_jsonl(tmp_path / "train.jsonl", records)
    task = make_task(tmp_path, train=train)
    prepared = task.prepare_data()
    assert task.multi_label is True
    assert prepared.report["multi_label"] is True
    assert prepared.labels == ["politics", "sports", "tech"]
    by_text = {r["text"]: set(r["labels"]) for r in records}
    seen = 0
    for ds in prepared.splits.values():
        for row in ds:
            vector = row["label_ids"]
            assert len(vector) == 3
            assert set(vector) <= {0.0, 1.0}
            assert {prepared.labels[i] for i, v in enumerate(vector) if v == 1.0} == by_text[row["text"]]
            seen += 1
    assert seen == 25


def test_multi_label_from_delimited_strings(tmp_path: Path) -> None:
    rows = [f"t{i},{lab}" for i, lab in enumerate(["a|b", "b", " c | a ", "a", "b|c"] * 4)]
    train = write_csv(tmp_path / "train.csv", "text,label", rows)
    val = write_csv(tmp_path / "val.csv", "text,label", ["v,c|b"])
    test = write_csv(tmp_path / "test.csv", "text,label", ["w,a"])
    task = make_task(tmp_path, train=train, validation=val, test=test, label_delimiter="|")
    prepared = task.prepare_data()
    assert task.multi_label is True
    assert prepared.labels == ["a", "b", "c"]
    assert prepared.splits["train"]["label_ids"][:3] == [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    assert prepared.splits["validation"]["label_ids"] == [[0.0, 1.0, 1.0]]
    assert prepared.splits["test"]["label_ids"] == [[1.0, 0.0, 0.0]]
    assert prepared.report["class_balance"]["train"] == {"a": 12, "b": 12, "c": 8}


def test_multi_label_unknown_label_in_test(tmp_path: Path) -> None:
    rows = [f"t{i},{lab}" for i, lab in enumerate(["a|b", "b", "a"] * 4)]
    train = write_csv(tmp_path / "train.csv", "text,label", rows)
    test = write_csv(tmp_path / "test.csv", "text,label", ["w,a|zzz"])
    with pytest.raises(LmtuneError, match=r"test\.csv, line 2, column 'label': label 'zzz'"):
        make_task(tmp_path, train=train, test=test, label_delimiter="|").prepare_data()


def test_forced_multi_label_wraps_single_labels(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"x": 5, "y": 5}))
    task = make_task(tmp_path, task={"multi_label": True}, train=train)
    prepared = task.prepare_data()
    assert task.multi_label is True
    for text, vector in zip(
        prepared.splits["train"]["text"], prepared.splits["train"]["label_ids"], strict=True
    ):
        assert vector == ([1.0, 0.0] if text.startswith("x") else [0.0, 1.0])


# ---- fixed label list --------------------------------------------------------------------------
def test_data_labels_fix_the_order(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"neg": 5, "pos": 5}))
    prepared = make_task(tmp_path, train=train, labels=["pos", "neg", "neutral"]).prepare_data()
    assert prepared.labels == ["pos", "neg", "neutral"]
    for split in ("train", "validation", "test"):
        for text, label in decode(prepared.splits[split], prepared.labels):
            assert text.split()[0] == label
    assert prepared.splits["train"].filter(lambda r: r["text"].startswith("pos"))["label_ids"][0] == 0
    assert prepared.report["class_balance"]["train"]["neutral"] == 0


def test_data_labels_reject_unknown_train_label(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", ["a,pos", "b,neg", "c,maybe"])
    with pytest.raises(LmtuneError) as info:
        make_task(tmp_path, train=train, labels=["pos", "neg"]).prepare_data()
    msg = str(info.value)
    assert f"{train}, line 4, column 'label'" in msg
    assert "label 'maybe'" in msg


# ---- read_labelled / read_inputs ---------------------------------------------------------------
def test_read_labelled(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"pos": 5, "neg": 5}))
    task = make_task(tmp_path, train=train)
    task.prepare_data()
    path = write_csv(tmp_path / "eval.csv", "text,label", ["good,pos", "bad,neg"])
    ds = task.read_labelled(path)
    assert decode(ds, task.labels) == [("good", "pos"), ("bad", "neg")]

    bad = write_csv(tmp_path / "eval_bad.csv", "text,label", ["good,pos", "odd,weird"])
    with pytest.raises(LmtuneError, match=r"eval_bad\.csv, line 3, column 'label': label 'weird'"):
        task.read_labelled(bad)


def test_read_inputs_without_label_column(tmp_path: Path) -> None:
    task = make_task(tmp_path, labels=["neg", "pos"])
    path = write_csv(tmp_path / "inputs.csv", "id,text", ["1,first", "2,  second  ", "3,"])
    assert task.read_inputs(path) == [{"text": "first"}, {"text": "second"}]


def test_read_inputs_ignores_labels(tmp_path: Path) -> None:
    task = make_task(tmp_path, labels=["neg", "pos"])
    path = write_jsonl(
        tmp_path / "inputs.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": None}]
    )
    assert task.read_inputs(path) == [{"text": "a"}, {"text": "b"}]


def test_read_inputs_with_partly_empty_label_column(tmp_path: Path) -> None:
    # Prediction inputs need no labels; an empty label cell in a CSV must not be an error.
    task = make_task(tmp_path, labels=["neg", "pos"])
    path = write_csv(tmp_path / "inputs.csv", "text,label", ["a,pos", "b,"])
    assert task.read_inputs(path) == [{"text": "a"}, {"text": "b"}]


def test_read_inputs_with_pairs(tmp_path: Path) -> None:
    task = make_task(tmp_path, labels=["no", "yes"])
    path = write_csv(tmp_path / "inputs.csv", "premise,hypothesis", ["p1,h1", "p2,h2"])
    assert task.read_inputs(path) == [{"text": "p1", "text_pair": "h1"}, {"text": "p2", "text_pair": "h2"}]


def test_read_inputs_label_distribution_unchanged(tmp_path: Path) -> None:
    # Reading inputs must not touch the label list learnt from training.
    train = write_csv(tmp_path / "train.csv", "text,label", labelled_rows({"a": 5, "b": 5}))
    task = make_task(tmp_path, train=train)
    task.prepare_data()
    path = write_csv(tmp_path / "inputs.csv", "text", ["x", "y", "x"])
    inputs = task.read_inputs(path)
    assert Counter(i["text"] for i in inputs) == {"x": 2, "y": 1}
    assert task.labels == ["a", "b"]


def test_carved_shares_are_of_the_original_train_file(tmp_path):
    rows = [{"text": f"review number {i}", "label": "pos" if i % 2 else "neg"} for i in range(100)]
    from tests.conftest import write_csv

    train = write_csv(tmp_path / "train.csv", rows)
    cfg = RunConfig(model={"name": "x"}, data={"train": str(train)}, output_dir=str(tmp_path / "run"))
    splits = ClassificationTask(cfg).prepare_data().splits
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (80, 10, 10)


def test_numeric_labels_in_config_are_text_and_duplicates_rejected(tmp_path):
    assert RunConfig(model={"name": "x"}, data={"labels": [0, 1]}).data.labels == ["0", "1"]
    with pytest.raises(LmtuneError, match="labels listed twice: a"):
        RunConfig.from_dict({"model": "x", "data": {"labels": ["a", "b", "a"]}})
