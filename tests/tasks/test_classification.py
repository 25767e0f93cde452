"""Classification end to end on a tiny model: multi-label, sentence pairs, metrics by hand."""

from __future__ import annotations

import json

import numpy as np
from tests.conftest import fast_config

import lmtune
from lmtune.config import RunConfig
from lmtune.tasks.classification import ClassificationTask


def test_metrics_match_a_hand_computation():
    cfg = RunConfig.from_dict({"model": "x", "data": {"labels": ["a", "b", "c"]}})
    task = ClassificationTask(cfg)
    gold = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]  # two mistakes: a->b, c->a
    result = task.scores(gold, probs)
    assert result.metrics["accuracy"] == 4 / 6
    # per class: a P=1/2 R=1/2, b P=2/3 R=1, c P=1 R=1/2
    f1 = [0.5, 0.8, 2 / 3]
    assert np.isclose(result.metrics["f1_macro"], np.mean(f1))
    assert np.isclose(result.metrics["precision_macro"], np.mean([0.5, 2 / 3, 1]))
    assert np.isclose(result.metrics["recall_macro"], np.mean([0.5, 1, 0.5]))
    assert np.isclose(result.metrics["f1_micro"], 4 / 6)
    assert result.details["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_multi_label_metrics_use_the_threshold():
    cfg = RunConfig.from_dict(
        {
            "model": "x",
            "task": {"type": "classification", "multi_label": True, "threshold": 0.7},
            "data": {"labels": ["x", "y"]},
        }
    )
    task = ClassificationTask(cfg)
    gold = np.array([[1, 0], [1, 1], [0, 1]])
    probs = np.array([[0.8, 0.6], [0.9, 0.75], [0.2, 0.65]])  # 0.6 and 0.65 fall below 0.7
    result = task.scores(gold, probs)
    assert np.isclose(result.metrics["accuracy"], 2 / 3)  # exact-match rows: 1 and 2
    assert np.isclose(result.metrics["f1_micro"], 2 * 3 / (2 * 3 + 0 + 1))  # tp 3, fp 0, fn 1


def test_prediction_records_name_labels_single_and_multi_label():
    single = ClassificationTask(RunConfig.from_dict({"model": "x", "data": {"labels": ["a", "b"]}}))
    single.pair_column = "text_pair"
    dataset = single.to_dataset(
        [{"text": "t0", "text_pair": "p0", "label": "a"}, {"text": "t1", "text_pair": "p1", "label": "b"}]
    )
    records = single.records(dataset, np.array([0, 1]), np.array([[0.9, 0.1], [0.7, 0.3]]))
    assert records == [
        {"row": 0, "text": "t0", "text_pair": "p0", "gold": "a", "predicted": "a", "confidence": 0.9}
        | {"correct": True},
        {"row": 1, "text": "t1", "text_pair": "p1", "gold": "b", "predicted": "a", "confidence": 0.7}
        | {"correct": False},
    ]
    cfg = {"model": "x", "task": {"multi_label": True, "threshold": 0.7}, "data": {"labels": ["x", "y"]}}
    multi = ClassificationTask(RunConfig.from_dict(cfg))
    dataset = multi.to_dataset([{"text": "u", "label": ["x", "y"]}, {"text": "v", "label": ["y"]}])
    gold = np.array(dataset["label_ids"])
    records = multi.records(dataset, gold, np.array([[0.8, 0.6], [0.1, 0.75]]))
    assert records == [
        {"row": 0, "text": "u", "gold": ["x", "y"], "predicted": ["x"], "correct": False},
        {"row": 1, "text": "v", "gold": ["y"], "predicted": ["y"], "correct": True},
    ]


def test_multi_label_end_to_end(tiny_bert, tmp_path):
    rows = []
    for i in range(48):
        tags = [t for t, on in (("sports", i % 2 == 0), ("money", i % 3 == 0)) if on] or ["other"]
        words = {"sports": "football match", "money": "bank loan", "other": "garden flowers"}
        rows.append({"text": " and ".join(words[t] for t in tags) + f" item {i}", "label": tags})
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = RunConfig.from_dict(
        {
            "model": tiny_bert,
            "data": {"train": str(train), "max_length": 16},
            "train": {"epochs": 1, "report_to": ["none"], "learning_rate": 1e-3},
            "output_dir": str(tmp_path / "run"),
        }
    )
    run = lmtune.train(cfg)
    assert run.config.task.model_extra["multi_label"] is True
    assert run.config.data.labels == ["money", "other", "sports"]
    assert {"f1_micro", "f1_macro", "hamming_loss"} <= set(run.metrics["test"])
    prediction = lmtune.load_run(run.directory).predict(["football match"])[0]
    assert set(prediction) == {"text", "labels", "scores"}
    assert all(label in ("money", "other", "sports") for label in prediction["labels"])


def test_sentence_pairs_are_detected_and_used(tiny_bert, tmp_path):
    lines = ["sentence1,sentence2,label"]
    for i in range(40):
        same = i % 2 == 0
        lines.append(f"a cat sat {i},{'a cat sat' if same else 'stocks fell'} {i},{'yes' if same else 'no'}")
    (tmp_path / "pairs.csv").write_text("\n".join(lines))
    files = {
        "train": tmp_path / "pairs.csv",
        "validation": tmp_path / "pairs.csv",
        "test": tmp_path / "pairs.csv",
    }
    run = lmtune.train(
        RunConfig.from_dict(fast_config(tiny_bert, files, tmp_path / "run", train={"epochs": 1}))
    )
    assert run.config.data.text_column == "sentence1" and run.config.data.text_pair_column == "sentence2"
    out = run.predict([{"text": "a cat sat 1", "text_pair": "a cat sat 1"}])[0]
    assert out["text_pair"] == "a cat sat 1" and out["label"] in ("yes", "no")
