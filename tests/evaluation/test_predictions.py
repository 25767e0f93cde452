"""Saved per-example predictions: written by training and `eval --save-predictions`, read back
(filtered by gold and predicted label) by `lmtune.evaluation.predictions`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import fast_config, run_cli, separable_splits

from lmtune.errors import LmtuneError
from lmtune.evaluation.predictions import prediction_files, read_predictions, write_predictions


@pytest.fixture(scope="module")
def trained(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """A finished tiny-BERT LoRA sentiment run (16 validation rows, 12 test rows) and its files."""
    import lmtune
    from lmtune.config import RunConfig

    root = tmp_path_factory.mktemp("predictions")
    files = separable_splits(root, 48, 16, 12)
    train = {"epochs": 3, "learning_rate": 1e-2, "eval_strategy": "no", "save_strategy": "no"}
    lmtune.train(RunConfig.from_dict(fast_config(tiny_bert, files, root / "run", train=train)))
    return root / "run", files


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def keys_of(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(keys_of(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys_of(v) for v in value))
    return set()


def test_training_writes_one_record_per_row_matching_predict(trained):
    import lmtune

    run_dir, files = trained
    assert prediction_files(run_dir) == {
        "validation": run_dir / "predictions" / "validation.jsonl",
        "test": run_dir / "predictions" / "test.jsonl",
    }
    rows = csv_rows(files["test"])
    lines = (run_dir / "predictions" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(rows) == 12
    assert len(read_predictions(run_dir / "predictions" / "validation.jsonl")[0]) == 16
    assert [r["row"] for r in records] == list(range(12))
    assert [r["text"] for r in records] == [row["text"] for row in rows]
    assert [r["gold"] for r in records] == [row["label"] for row in rows]
    predicted = lmtune.load_run(run_dir).predict([row["text"] for row in rows])
    assert [r["predicted"] for r in records] == [p["label"] for p in predicted]
    for record, prediction in zip(records, predicted, strict=True):
        assert record["confidence"] == pytest.approx(prediction["scores"][prediction["label"]], abs=1e-5)
        assert record["correct"] == (record["gold"] == record["predicted"])
        assert set(record) == {"row", "text", "gold", "predicted", "confidence", "correct"}
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert "records" not in keys_of(metrics)
    assert not list((run_dir / "predictions").glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


def test_filters_count_the_confusion_matrix_cells(trained):
    run_dir, _ = trained
    path = prediction_files(run_dir)["test"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    matrix = metrics["details"]["test"]["confusion_matrix"]
    labels = ["negative", "positive"]
    for i, gold in enumerate(labels):
        for j, predicted in enumerate(labels):
            found, total = read_predictions(path, gold=gold, predicted=predicted)
            assert total == len(found) == matrix[i][j]
            assert all(r["gold"] == gold and r["predicted"] == predicted for r in found)
        assert read_predictions(path, gold=gold, limit=0) == ([], sum(matrix[i]))
    everything, total = read_predictions(path)
    limited, same_total = read_predictions(path, limit=3)
    assert total == same_total == 12 and limited == everything[:3]
    assert read_predictions(path, gold="no such label") == ([], 0)


def test_filters_on_lists_match_the_joined_list_or_a_member(tmp_path):
    records = [
        {"row": 0, "gold": ["money", "sports"], "predicted": ["sports"]},
        {"row": 1, "gold": [], "predicted": ["money"]},
        {"row": 2, "gold": [{"type": "PER", "start": 0, "end": 1, "text": "Ana"}], "predicted": []},
        {"row": 3, "prompt": "hi", "generation": "hello"},  # generative: no gold/predicted fields
    ]
    path = write_predictions(tmp_path, "other", records)
    assert path == tmp_path / "predictions" / "other.jsonl"

    def rows(**filters: str) -> list[int]:
        return [r["row"] for r in read_predictions(path, **filters)[0]]

    assert rows(gold="money, sports") == [0]
    assert rows(gold="sports") == [0]
    assert rows(gold="sports, money") == []  # the joined form keeps the record's order
    assert rows(gold="") == [1]  # an empty list
    assert rows(gold="PER") == [2]  # entities by their type
    assert rows(predicted="money") == [1]
    assert rows(gold="money", predicted="sports") == [0]
    assert rows() == [0, 1, 2, 3]
    assert prediction_files(tmp_path) == {"other": path}


def test_reader_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(LmtuneError, match="no such prediction file"):
        read_predictions(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"row": 0}\n{oops\n', encoding="utf-8")
    with pytest.raises(LmtuneError, match="line 2"):
        read_predictions(bad)
    assert prediction_files(tmp_path / "nothing") == {}


def test_eval_save_predictions_writes_the_data_file_stem(trained, tmp_path, capsys, monkeypatch):
    source, files = trained
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    other = shutil.copy(files["test"], tmp_path / "other.csv")
    code, out, err = run_cli(
        ["eval", str(run_dir), "--data", str(other), "--save-predictions"], capsys, monkeypatch
    )
    assert code == 0, err
    assert "12 predictions written" in out
    saved = read_predictions(run_dir / "predictions" / "other.jsonl")
    # The same model on the same rows: what training saved for test.
    assert saved == read_predictions(run_dir / "predictions" / "test.jsonl")
    assert set(prediction_files(run_dir)) == {"validation", "test", "other"}


def test_eval_refuses_to_overwrite_trainings_predictions(trained, tmp_path, capsys, monkeypatch):
    source, files = trained
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    before = (run_dir / "predictions" / "test.jsonl").read_bytes()
    test_csv = shutil.copy(files["test"], tmp_path / "test.csv")
    code, _, err = run_cli(
        ["eval", str(run_dir), "--data", str(test_csv), "--save-predictions"], capsys, monkeypatch
    )
    assert code == 2
    assert "predictions/test.jsonl" in err and "rename" in err
    assert (run_dir / "predictions" / "test.jsonl").read_bytes() == before
    code, _, err = run_cli(
        ["eval", str(run_dir), "--data", str(test_csv), "--save-predictions", "--group-column", "label"],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "--group-column" in err
