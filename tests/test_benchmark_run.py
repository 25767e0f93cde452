"""The training harness's data preparation (benchmarks/run.py): the low-padding AG News suite."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import run as harness


def _agnews(tmp_path: Path, rows: int) -> Path:
    folder = tmp_path / "data" / "agnews"
    folder.mkdir(parents=True)
    with open(folder / "test.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
        for i in range(rows):
            writer.writerow([str(i % 4 + 1), f"Title {i}", f"It #39;s row {i}\\costs  #36;{i}"])
    return tmp_path / "data"


def test_agnews_rows_are_cleaned_and_labels_start_at_zero(tmp_path: Path) -> None:
    rows = harness.read_agnews(_agnews(tmp_path, 8) / "agnews" / "test.csv")
    assert rows[5] == ("Title 5 It's row 5 costs $5", 1)
    assert sorted({label for _, label in rows}) == [0, 1, 2, 3]


def test_agnews_train_and_test_are_disjoint_seeded_subsets(tmp_path: Path) -> None:
    data = _agnews(tmp_path, 40)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = harness.prepare_agnews(data, tmp_path / "a", n_train=24, n_test=10)
    again = harness.prepare_agnews(data, tmp_path / "b", n_train=24, n_test=10)
    train, test = harness.read_csv(first["train"]), harness.read_csv(first["test"])
    assert len(train[0]) == 24 and len(test[0]) == 10
    assert not set(train[0]) & set(test[0])
    assert harness.read_csv(again["train"]) == train  # the same seed, the same subset


def test_agnews_asking_for_more_rows_than_exist_fails_clearly(tmp_path: Path) -> None:
    data = _agnews(tmp_path, 10)
    with pytest.raises(SystemExit, match="agnews: 8 train \\+ 5 test rows asked, 10 available"):
        harness.prepare_agnews(data, tmp_path, n_train=8, n_test=5)
