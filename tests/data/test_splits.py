"""The split arithmetic every task shares (data/splits.py), and that every task uses it alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import write_csv
from tests.tasks.test_token_classification import synthetic_ner, write_conll

from lmtune.config import RunConfig
from lmtune.data.splits import Carving, SplitSettings, drop_duplicates, hold_out, split_records
from lmtune.errors import LmtuneError
from lmtune.tasks import get_task_class
from lmtune.tasks.causal_lm import CausalLmTask


def settings(**kwargs: Any) -> SplitSettings:
    base: dict[str, Any] = {
        "files": {"test": None, "validation": None},
        "ratios": {"test": 0.1, "validation": 0.1},
        "seed": 5,
    }
    return SplitSettings(**{**base, **kwargs})


def no_files(path: str, split: str) -> tuple[list[Any], dict[str, Any]]:
    raise AssertionError(f"nothing should be read, asked for {path} ({split})")


def test_both_shares_are_of_the_whole_train_file():
    out = split_records(list(range(100)), no_files, settings(), Carving(), lambda r: r, source="t.csv")
    assert out.rows() == {"test": 10, "validation": 10, "train": 80}
    assert out.carved == ["test", "validation"]
    assert sorted(r for records in out.records.values() for r in records) == list(range(100))
    again = split_records(list(range(100)), no_files, settings(), Carving(), lambda r: r, source="t.csv")
    assert again.records == out.records  # seeded
    other = split_records(list(range(100)), no_files, settings(seed=6), Carving(), lambda r: r, source="t")
    assert other.records["test"] != out.records["test"]


def test_a_given_file_is_read_and_only_the_other_split_is_carved():
    def read(path: str, split: str) -> tuple[list[Any], dict[str, Any]]:
        return [f"{split}-row"], {"read": path}

    files = {"test": "test.csv", "validation": None}
    out = split_records(list(range(50)), read, settings(files=files), Carving(), lambda r: r, source="t")
    assert out.records["test"] == ["test-row"] and out.infos["test"] == {"read": "test.csv"}
    assert out.carved == ["validation"] and out.rows() == {"test": 1, "validation": 5, "train": 45}


def test_duplicates_leave_first_and_max_train_samples_last():
    rows = [{"k": i % 40, "n": i} for i in range(60)]
    unique, dropped = drop_duplicates(rows, lambda r: r["k"])
    assert dropped == 20 and [r["n"] for r in unique] == list(range(40))  # first occurrence, in order
    out = split_records(
        rows, no_files, settings(drop_duplicates=True, max_train_samples=7), Carving(), lambda r: r["k"], "t"
    )
    assert out.dropped_duplicates == 20
    assert out.rows() == {"test": 4, "validation": 4, "train": 7}


def test_stratified_carving_keeps_class_shares():
    rows = [{"label": "a" if i < 60 else "b"} for i in range(100)]
    out = split_records(rows, no_files, settings(), Carving(strata=lambda r: r["label"]), repr, "t")
    for split in ("test", "validation"):
        assert sorted(r["label"] for r in out.records[split]) == ["a"] * 6 + ["b"] * 4


def test_groups_are_held_out_whole_and_too_few_groups_are_named():
    rows = [{"context": f"c{i // 3}", "n": i} for i in range(60)]
    carving = Carving(group=lambda r: r["context"], group_noun="contexts")
    kept, held = hold_out(rows, 0.1, 0, carving, "test", "qa.json")
    assert len({r["context"] for r in held}) == 2 and len(held) == 6
    assert not {r["context"] for r in held} & {r["context"] for r in kept}
    with pytest.raises(
        LmtuneError, match=r"qa.json: only 2 distinct contexts, too few to carve a test split"
    ):
        hold_out(rows[:6], 0.1, 0, carving, "test", "qa.json")


def test_summary_counts_duplicates_and_overlaps():
    out = split_records(["x", "x", *map(str, range(98))], no_files, settings(), Carving(), str, "t")
    summary = out.summary(str, dropped_empty_train=3)
    assert list(summary)[:4] == [
        "rows",
        "carved_from_train",
        "dropped_empty_train",
        "dropped_duplicates_train",
    ]
    assert (
        summary["duplicates_in_train"] + summary["overlap_train_test"] + summary["overlap_train_validation"]
        == 1
    )


# ---- every task splits with the same arithmetic ---------------------------------------------------
def _classification(tmp_path: Path) -> dict[str, Any]:
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(100)]
    return {"train": str(write_csv(tmp_path / "c.csv", rows))}


def _ner(tmp_path: Path) -> dict[str, Any]:
    return {"train": str(write_conll(tmp_path / "n.conll", synthetic_ner(100, 9)))}


def _seq2seq(tmp_path: Path) -> dict[str, Any]:
    rows = [{"source": f"source {i}", "target": f"target {i}"} for i in range(100)]
    return {"train": str(write_csv(tmp_path / "s.csv", rows))}


def _qa(tmp_path: Path) -> dict[str, Any]:
    rows = [{"question": f"Who is {i}?", "context": f"{i} is Ann.", "answer": "Ann"} for i in range(100)]
    return {"train": str(write_csv(tmp_path / "q.csv", rows))}


def _causal_lm(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": f"Say {i}", "output": str(i)} for i in range(100)]))
    return {"train": str(path)}


@pytest.mark.parametrize(
    ("task", "data"),
    [
        ("classification", _classification),
        ("ner", _ner),
        ("seq2seq", _seq2seq),
        ("question-answering", _qa),
        ("causal-lm", _causal_lm),
    ],
)
def test_every_task_splits_a_hundred_rows_80_10_10(task, data, tmp_path, monkeypatch):
    monkeypatch.setattr(CausalLmTask, "_resolve_packing", lambda self: None)  # needs no model here
    cfg = RunConfig.from_dict({"model": "x", "task": task, "data": data(tmp_path)})
    prepared = get_task_class(task)(cfg).prepare_data()
    assert prepared.report["rows"] == {"test": 10, "validation": 10, "train": 80}
    assert prepared.report["carved_from_train"] == ["test", "validation"]
