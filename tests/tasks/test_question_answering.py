"""Extractive QA: SQuAD/flat readers, answer_start checks, doc-stride windows, SQuAD metrics, end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.tasks import get_task_class
from lmtune.tasks.question_answering import (
    QuestionAnsweringTask,
    f1_score,
    normalize_answer,
    squad_scores,
)

NAMES = ["Orla Venn", "Tomas Brike", "Ilsa Marrow", "Dario Quell", "Nena Holt", "Pavel Strand", "Kira Lune"]
CITIES = ["Velmora", "Castrel", "Dunhaven", "Oskara", "Tiberon", "Wrenfield", "Lasquet"]
JOBS = ["baker", "pilot", "sculptor", "chemist", "gardener", "violinist", "surveyor"]


def squad_set(n: int, seed: int) -> dict:
    """Made-up biographies with three questions each (birthplace, year, job), SQuAD format."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        name, city, job = rng.choice(NAMES), rng.choice(CITIES), rng.choice(JOBS)
        year = str(rng.randint(1900, 1999))
        context = (
            f"{name} was born in {city} in {year}. Later {name.split()[0]} worked as a {job} for many years."
        )
        qas = [
            (f"Where was {name} born?", city),
            (f"In which year was {name} born?", year),
            (f"What did {name} work as?", job),
        ]
        paragraphs.append(
            {
                "context": context,
                "qas": [
                    {
                        "id": f"{seed}-{i}-{k}",
                        "question": q,
                        "answers": [{"text": a, "answer_start": context.index(a)}],
                    }
                    for k, (q, a) in enumerate(qas)
                ],
            }
        )
    return {"version": "1.1", "data": [{"title": "made-up", "paragraphs": paragraphs}]}


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def make_task(**sections: dict) -> QuestionAnsweringTask:
    raw: dict = {"model": "x", "task": {"type": "qa"}, "train": {"seed": 1}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return QuestionAnsweringTask(RunConfig.from_dict(raw))


def qa_config(model: str, files: dict[str, Path], out: Path, **sections: dict) -> dict:
    cfg: dict = {
        "model": model,
        "task": {"type": "question-answering"},
        "method": "full",
        "data": {k: str(v) for k, v in files.items()} | {"max_length": 64},
        "train": {"epochs": 1, "batch_size": 8, "report_to": ["none"], "logging_steps": 5},
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) else value
    return cfg


# ---- metrics --------------------------------------------------------------------------------------
def test_registered_under_both_names():
    assert get_task_class("qa") is get_task_class("question-answering") is QuestionAnsweringTask


def test_squad_metrics_match_hand_computation():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    # "in paris france" vs "paris": P 1/3, R 1 -> F1 0.5
    assert f1_score("in Paris, France", "Paris") == pytest.approx(0.5)
    scores = squad_scores(
        ["Paris", "in Paris, France", "Rome", ""],
        [["paris", "the city of Paris"], ["Paris"], ["Berlin"], []],
    )
    # EM: 1, 0, 0, 1 (empty vs unanswerable); F1: 1, 0.5, 0, 1
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 62.5})
    assert squad_scores(["x"], [[]]) == {"exact_match": 0.0, "f1": 0.0}


# ---- readers --------------------------------------------------------------------------------------
def test_squad_and_flat_files_give_the_same_records(tmp_path):
    squad = squad_set(3, 0)
    flat = []
    for p in squad["data"][0]["paragraphs"]:
        for qa in p["qas"]:
            a = qa["answers"][0]
            flat.append(
                {
                    "question": qa["question"],
                    "context": p["context"],
                    "answers": {"text": [a["text"]], "answer_start": [a["answer_start"]]},
                }
            )
    jsonl = tmp_path / "flat.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in flat))
    csv_rows = ["question,context,answer,answer_start"] + [
        ",".join(json.dumps(v) for v in (r["question"], r["context"], r["answers"]["text"][0]))
        + f",{r['answers']['answer_start'][0]}"
        for r in flat
    ]
    (tmp_path / "flat.csv").write_text("\n".join(csv_rows) + "\n")
    task = make_task()
    a = task.read_labelled(str(write_json(tmp_path / "squad.json", squad)))
    b = task.read_labelled(str(jsonl))
    c = task.read_labelled(str(tmp_path / "flat.csv"))
    for other in (b, c):
        assert other["question"] == a["question"] and other["answer_start"] == a["answer_start"]
    assert len(a) == 9 and a["answer_text"][0] == [flat[0]["answers"]["text"][0]]


def test_wrong_answer_start_is_repaired_when_unique_and_an_error_otherwise(tmp_path):
    ctx = "Ada lives in Oslo. Ada likes tea."
    good = {"question": "Where?", "context": ctx, "answers": {"text": ["Oslo"], "answer_start": [3]}}
    task = make_task()
    records, info = task._read(str(_jsonl(tmp_path / "a.jsonl", [good])), need_answers=True)
    assert records[0]["answers"] == [("Oslo", 13)] and info["repaired_answer_starts"] == 1
    twice = {"question": "Who?", "context": ctx, "answers": {"text": ["Ada"], "answer_start": [5]}}
    with pytest.raises(LmtuneError, match=r"b.jsonl, line 1: answer 'Ada' occurs 2 times.*answer_start 5"):
        task._read(str(_jsonl(tmp_path / "b.jsonl", [twice])), need_answers=True)
    squad = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": ctx,
                        "qas": [
                            {"id": "q7", "question": "?", "answers": [{"text": "Rome", "answer_start": 0}]}
                        ],
                    }
                ]
            }
        ]
    }
    with pytest.raises(
        LmtuneError, match=r"data\[0\].paragraphs\[0\].qas\[0\] \(id q7\): answer 'Rome' does not occur"
    ):
        task._read(str(write_json(tmp_path / "s.json", squad)), need_answers=True)
    with pytest.raises(LmtuneError, match="no answers column"):
        task._read(str(_jsonl(tmp_path / "c.jsonl", [{"question": "q", "context": ctx}])), need_answers=True)
    bad = {"question": "q", "context": ctx, "answers": {"text": ["Oslo"], "answer_start": [1, 2]}}
    with pytest.raises(LmtuneError, match="1 answer texts but 2 answer_start"):
        task._read(str(_jsonl(tmp_path / "d.jsonl", [bad])), need_answers=True)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_unanswerable_questions_dropped_unless_allowed_and_splits_hold_out_contexts(tmp_path):
    squad = squad_set(20, 0)
    squad["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "x", "question": "Why?", "answers": [], "is_impossible": True}
    )
    path = write_json(tmp_path / "train.json", squad)
    data = make_task(data={"train": str(path)}).prepare_data()
    assert data.report["dropped_unanswerable_train"] == 1
    train_ctx = set(data.splits["train"]["context"])
    assert not train_ctx & set(data.splits["test"]["context"]) and data.report["contexts"]["test"] >= 1
    data = make_task(data={"train": str(path)}, task={"allow_unanswerable": True}).prepare_data()
    assert data.report["dropped_unanswerable_train"] == 0
    assert sum(data.report["unanswerable"].values()) == 1


def test_drop_duplicates_removes_repeated_questions_from_train(tmp_path):
    """Regression: QA ignored data.drop_duplicates."""
    squad = squad_set(30, 4)
    paragraph = squad["data"][0]["paragraphs"][0]
    paragraph["qas"] += [dict(qa, id=f"again-{qa['id']}") for qa in paragraph["qas"][:2]]
    path = write_json(tmp_path / "train.json", squad)
    kept = make_task(data={"train": str(path)}).prepare_data()
    assert kept.report["dropped_duplicates_train"] == 0 and sum(kept.report["rows"].values()) == 92
    data = make_task(data={"train": str(path), "drop_duplicates": True}).prepare_data()
    assert data.report["dropped_duplicates_train"] == 2 and sum(data.report["rows"].values()) == 90
    rows = [
        (q, c)
        for split in data.splits.values()
        for q, c in zip(split["question"], split["context"], strict=True)
    ]
    assert len(rows) == len(set(rows))
    # The same question with another answer is no duplicate: it is another reference.
    paragraph["qas"][-1]["answers"] = [{"text": "was", "answer_start": paragraph["context"].index("was")}]
    path = write_json(tmp_path / "other.json", squad)
    data = make_task(data={"train": str(path), "drop_duplicates": True}).prepare_data()
    assert data.report["dropped_duplicates_train"] == 1


# ---- windows and post-processing ------------------------------------------------------------------
class SpotModel(torch.nn.Module):
    """Start/end logits peak on two token ids: lets post-processing be checked without training."""

    def __init__(self, start_id: int, end_id: int) -> None:
        super().__init__()
        self.start_id, self.end_id = start_id, end_id
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        start = (input_ids == self.start_id).float() * 10 + self.weight
        end = (input_ids == self.end_id).float() * 10 + self.weight
        return SimpleNamespace(start_logits=start, end_logits=end)


def test_doc_stride_windows_find_an_answer_beyond_max_length(minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    filler = " ".join(["the river runs past the old mill"] * 30)  # ~210 tokens
    context = f"{filler} and the keeper is Zebulon while {filler}."
    task = make_task(data={"max_length": 64}, task={"doc_stride": 16})
    question = "Who is the keeper?"
    answers = [[("Zebulon", context.index("Zebulon"))]]
    features, _ = task._features(tokenizer, [question], [context], answers)
    assert len(features) > 5 and all(len(f["input_ids"]) <= 64 for f in features)
    labelled = [f for f in features if f["start_positions"] > 0]
    for f in labelled:  # every window holding the answer labels exactly its tokens
        tokens = tokenizer.decode(f["input_ids"][f["start_positions"] : f["end_positions"] + 1])
        assert tokens == "zebulon"
    assert labelled and labelled[0] is not features[0]
    pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("Zebulon"))
    [found] = task.predict(
        SpotModel(pieces[0], pieces[-1]), tokenizer, [{"question": question, "context": context}], 4
    )
    assert found["answer"] == context[found["start"] : found["end"]]
    assert found["answer"] == "Zebulon" and found["start"] == context.index("Zebulon")


# ---- tiny model end to end ------------------------------------------------------------------------
def test_tiny_bert_run_reload_gives_identical_answers(tiny_bert, tmp_path):
    files = {
        "train": write_json(tmp_path / "train.json", squad_set(12, 1)),
        "validation": write_json(tmp_path / "dev.json", squad_set(2, 2)),
        "test": write_json(tmp_path / "test.json", squad_set(2, 3)),
    }
    run = lmtune.train(
        RunConfig.from_dict(qa_config(tiny_bert, files, tmp_path / "run", method={"name": "lora", "r": 4}))
    )
    assert set(run.metrics["test"]) >= {"exact_match", "f1", "n"} and run.metrics["test"]["n"] == 6
    ctx = "Nena Holt was born in Oskara in 1950. Later Nena worked as a pilot for many years."
    inputs = [{"question": "Where was Nena Holt born?", "context": ctx}]
    [first] = run.predict(inputs)
    assert set(first) == {"question", "answer", "score", "start", "end"}
    assert first["answer"] == ctx[first["start"] : first["end"]] and 0 <= first["score"] <= 1
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.predict(inputs) == [first]
    assert loaded.evaluate(files["test"])["f1"] == pytest.approx(run.metrics["test"]["f1"])
    # predictions/test.jsonl: one record per question, whose scores average to the metrics.
    lines = (tmp_path / "run" / "predictions" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 6 and [r["row"] for r in records] == list(range(6))
    assert {"question", "context", "gold", "predicted", "exact", "f1", "correct"} <= set(records[0])
    assert sum(r["f1"] for r in records) / 6 == pytest.approx(run.metrics["test"]["f1"], abs=1e-3)
    exact = sum(r["exact"] for r in records) / 6
    assert 100 * exact == pytest.approx(run.metrics["test"]["exact_match"])


@pytest.mark.slow
def test_minilm_finds_answer_spans(minilm_path, tmp_path):
    files = {
        "train": write_json(tmp_path / "train.json", squad_set(32, 11)),
        "validation": write_json(tmp_path / "dev.json", squad_set(3, 12)),
        "test": write_json(tmp_path / "test.json", squad_set(8, 13)),
    }
    cfg = qa_config(
        "all-MiniLM-L6-v2",
        files,
        tmp_path / "run",
        train={
            "epochs": 8,
            "batch_size": 16,
            "learning_rate": 3e-4,
            "warmup_ratio": 0.1,
            "eval_strategy": "no",
            "save_strategy": "no",
        },
    )
    task = QuestionAnsweringTask(RunConfig.from_dict(cfg))
    from transformers import AutoTokenizer

    untrained = task.build_model(minilm_path, fresh_head=True)
    dataset = task.read_labelled(str(files["test"]))
    base = task.evaluate(untrained, AutoTokenizer.from_pretrained(minilm_path), dataset, 32).metrics["f1"]
    run = lmtune.train(RunConfig.from_dict(cfg))
    f1 = run.metrics["test"]["f1"]
    print(
        f"MiniLM QA (made-up biographies): test F1 {f1:.1f}, "
        f"EM {run.metrics['test']['exact_match']:.1f} (untrained F1 {base:.1f})"
    )
    assert f1 > 60 and f1 > base + 40
