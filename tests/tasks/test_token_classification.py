"""Token classification (NER): windows and alignment, metrics by hand, offsets, end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.methods import METHODS
from lmtune.tasks import get_task_class
from lmtune.tasks.token_classification import TokenClassificationTask, split_words

FIRST = ["Alice", "Bob", "Carla", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas"]
LAST = ["Smith", "Meyer", "Rossi", "Tanaka", "Novak", "Dubois"]
COMPANIES = ["Google", "Acme Corp", "Siemens", "Nordic Bank", "Tata Motors", "Blue Fin Labs"]
CITIES = ["Paris", "Berlin", "New York", "Tokyo", "Lagos", "Sao Paulo", "Oslo"]
TEMPLATES = [
    "{PER} works at {ORG} in {LOC} .",
    "{PER} moved to {LOC} last year .",
    "Yesterday {PER} visited the {ORG} office in {LOC} .",
    "The {ORG} team hired {PER} .",
    "{PER} and {PER} met in {LOC} .",
]


def synthetic_ner(n: int, seed: int) -> list[dict[str, list[str]]]:
    """'PERSON works at COMPANY in CITY' sentences with BIO tags."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens: list[str] = []
        tags: list[str] = []
        for part in rng.choice(TEMPLATES).split():
            if part in ("{PER}", "{ORG}", "{LOC}"):
                kind = part[1:4]
                if kind == "PER":
                    value = rng.choice(FIRST) + (" " + rng.choice(LAST) if rng.random() < 0.5 else "")
                else:
                    value = rng.choice(COMPANIES if kind == "ORG" else CITIES)
                words = value.split()
                tokens += words
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            else:
                tokens.append(part)
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


LONG_TOKENS = [
    "The",
    "Acme",
    "Corp",
    "team",
    "hired",
    "Grace",
    "Rossi",
    "and",
    "many",
    "other",
    "people",
    ".",
]


def write_conll(path: Path, rows: list[dict[str, list[str]]]) -> Path:
    blocks = ["\n".join(f"{t}\t{g}" for t, g in zip(r["tokens"], r["tags"], strict=True)) for r in rows]
    path.write_text("-DOCSTART-\tO\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def ner_config(model: str, files: dict[str, Path], out: Path, **sections: dict) -> dict:
    cfg: dict = {
        "model": model,
        "task": {"type": "token-classification"},
        "method": "lora",
        "data": {k: str(v) for k, v in files.items()} | {"max_length": 32},
        "train": {"epochs": 1, "batch_size": 8, "report_to": ["none"], "logging_steps": 5},
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = (
            {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
        )
    return cfg


def make_task(labels: list[str] | None = None, **data: object) -> TokenClassificationTask:
    cfg = RunConfig.from_dict(
        {"model": "x", "task": {"type": "ner"}, "data": {"labels": labels, **data}, "train": {"seed": 1}}
    )
    return TokenClassificationTask(cfg)


# ---- registry, data -------------------------------------------------------------------------------
def test_registered_under_both_names():
    assert get_task_class("ner") is get_task_class("token-classification") is TokenClassificationTask


def test_prepare_data_carves_splits_and_reports_entities(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in synthetic_ner(50, 0)))
    task = make_task(train=str(train))
    data = task.prepare_data()
    assert task.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    # Both shares are of the whole file, as for every task (it was 5 / 4 / 41: the raw ratio).
    assert data.report["rows"] == {"test": 5, "validation": 5, "train": 40}
    assert set(data.report["carved_from_train"]) == {"test", "validation"}
    assert set(data.report["class_balance"]["train"]) == {"LOC", "ORG", "PER"}
    assert sum(data.report["class_balance"]["train"].values()) > 40
    assert (task.text_column, task.label_column, task.scheme) == ("tokens", "tags", "bio")
    again = make_task(train=str(train)).prepare_data()  # seeded
    assert again.splits["test"]["tokens"] == data.splits["test"]["tokens"]


def test_a_hundred_sentences_split_80_10_10_and_duplicates_go_first(tmp_path):
    """Regression: NER passed the raw validation ratio to a train already short of its test split."""
    sentences = synthetic_ner(100, 3)
    train = write_conll(tmp_path / "train.conll", sentences)
    data = make_task(train=str(train)).prepare_data()
    assert data.report["rows"] == {"test": 10, "validation": 10, "train": 80}
    carved = sorted(tuple(t) for split in data.splits.values() for t in split["tokens"])
    assert carved == sorted(tuple(s["tokens"]) for s in sentences)  # every sentence in one split
    repeated = write_conll(tmp_path / "repeated.conll", sentences + sentences[:10])
    data = make_task(train=str(repeated), drop_duplicates=True).prepare_data()
    unique = len({tuple(s["tokens"]) for s in sentences})
    assert data.report["dropped_duplicates_train"] == 110 - unique
    assert sum(data.report["rows"].values()) == unique


def test_bioes_data_is_trained_as_bio(tmp_path):
    train = tmp_path / "train.bio"
    train.write_text("".join(f"Ann S-PER\nsaw O\nNew B-LOC\nYork E-LOC\nx{i} O\n\n" for i in range(10)))
    task = make_task(train=str(train))
    data = task.prepare_data()
    assert task.scheme == "bioes"
    assert task.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    ids = data.splits["train"]["tag_ids"][0]
    assert [task.labels[i] for i in ids] == ["B-PER", "O", "B-LOC", "I-LOC", "O"]


def test_unknown_tag_in_validation_names_the_line(tmp_path):
    train = write_conll(tmp_path / "train.conll", synthetic_ner(20, 0))
    dev = tmp_path / "dev.conll"
    dev.write_text("Ann B-PER\nin O\nRome B-CITY\n")
    task = make_task(train=str(train), validation=str(dev))
    with pytest.raises(LmtuneError, match=r"dev.conll, line 3: tag 'B-CITY' does not occur"):
        task.prepare_data()


def test_all_o_training_data_is_an_error(tmp_path):
    train = tmp_path / "train.conll"
    train.write_text("a O\nb O\n\nc O\n")
    with pytest.raises(LmtuneError, match="no entity tags"):
        make_task(train=str(train)).prepare_data()


# ---- windows and alignment -------------------------------------------------------------------------
def test_long_sentence_windows_cover_every_word_once(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    labels = ["O", "B-PER", "I-PER"]
    task = make_task(labels, max_length=12)
    words = [f"w{i}ord" if i % 3 else "Alexandrovich" for i in range(40)]
    tags = [1 if i % 3 == 0 else 0 for i in range(40)]
    features, maps = task._windows(tokenizer, [words], [tags])
    assert len(features) > 3
    assert all(len(f["input_ids"]) <= 12 for f in features)
    covered = {w for _, firsts in maps for _, w, _ in firsts}
    assert covered == set(range(40))
    for feature, (_, firsts) in zip(features, maps, strict=True):
        labelled = [p for p, label in enumerate(feature["labels"]) if label != -100]
        assert labelled == [p for p, _, _ in firsts]
        assert [feature["labels"][p] for p, _, _ in firsts] == [tags[w] for _, w, _ in firsts]

    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(tiny_bert, num_labels=3)
    task.labels = labels
    predicted = task._predict_words(model, tokenizer, [words, ["short"]], batch_size=3)
    assert [len(p) for p in predicted] == [40, 1]
    assert all(0 <= label < 3 for sentence in predicted for label, _ in sentence)


# ---- metrics ---------------------------------------------------------------------------------------
def test_metrics_match_a_hand_computation():
    task = make_task(["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-PER"], ["B-LOC", "I-LOC", "B-PER"]]
    # gold: PER(0-2) LOC(3) | LOC(0) PER(2); pred: PER(0-2) PER(3) | LOC(0-2) PER(2)
    # correct: PER(0-2), PER(2) -> tp 2, pred 4, gold 4
    result = task.scores(gold, pred)
    m = result.metrics
    assert np.isclose(m["precision"], 2 / 4) and np.isclose(m["recall"], 2 / 4) and np.isclose(m["f1"], 0.5)
    # PER: tp 2, pred 3, gold 2 -> P 2/3 R 1 F 0.8; LOC: tp 0 -> F 0
    assert np.isclose(result.details["per_type"]["PER"]["f1"], 0.8)
    assert result.details["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert np.isclose(m["f1_macro"], 0.4)
    assert np.isclose(m["accuracy"], 5 / 7)
    assert sorted(map(tuple, result.details["confusions"])) == [("LOC", "PER", 1), ("O", "LOC", 1)]


# ---- predict: words, offsets, schemes --------------------------------------------------------------
def test_split_words_latin_punctuation_and_cjk():
    text = "Dr. Müller-Lüdenscheidt lives in 北京市, ok?"
    words = split_words(text)
    assert [w for w, _, _ in words] == [
        "Dr", ".", "Müller", "-", "Lüdenscheidt", "lives", "in", "北", "京", "市", ",", "ok", "?",
    ]  # fmt: skip
    assert all(text[a:b] == w for w, a, b in words)


def test_predict_gives_character_offsets_and_input_scheme(monkeypatch):
    task = make_task(["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    task.scheme = "bioes"

    def fake(model, tokenizer, sentences, batch_size):
        out = []
        for words in sentences:
            tags = []
            for w in words:
                tags.append(
                    3 if w in ("Anna", "李") else 4 if w in ("Marie", "雷") else 1 if w == "Köln" else 0
                )
            out.append([(t, 0.9) for t in tags])
        return out

    monkeypatch.setattr(task, "_predict_words", fake)
    text = "  Anna  Marie lebt in Köln."
    result = task.predict(
        None, None, [{"text": text}, {"text": "李雷在北京"}, {"tokens": ["Anna", "Marie"]}], 2
    )
    entities = result[0]["entities"]
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in entities] == [
        ("PER", "Anna  Marie", 2, 13),
        ("LOC", "Köln", 22, 26),
    ]
    assert entities[0]["score"] == 0.9
    assert result[1]["entities"][0] | {"score": 0} == {
        "type": "PER",
        "text": "李雷",
        "start": 0,
        "end": 2,
        "score": 0,
    }
    assert result[2] == {"tokens": ["Anna", "Marie"], "tags": ["B-PER", "E-PER"]}
    with pytest.raises(LmtuneError, match="input 1: expected 'text'"):
        task.predict(None, None, [{"words": []}], 2)


def test_read_inputs_accepts_texts_conll_and_jsonl(tmp_path):
    task = make_task(["O", "B-PER", "I-PER"])
    (tmp_path / "t.txt").write_text("Anna lives here\n\nBo too\n")
    assert task.read_inputs(str(tmp_path / "t.txt")) == [{"text": "Anna lives here"}, {"text": "Bo too"}]
    (tmp_path / "t.conll").write_text("Anna\nlives\n\nBo B-PER\n")
    assert task.read_inputs(str(tmp_path / "t.conll")) == [{"tokens": ["Anna", "lives"]}, {"tokens": ["Bo"]}]
    (tmp_path / "t.jsonl").write_text(json.dumps({"tokens": ["x", "y"]}))
    assert task.read_inputs(str(tmp_path / "t.jsonl")) == [{"tokens": ["x", "y"]}]
    (tmp_path / "t.csv").write_text("text\nhello world\n")
    assert task.read_inputs(str(tmp_path / "t.csv")) == [{"text": "hello world"}]


# ---- end to end ------------------------------------------------------------------------------------
@pytest.fixture
def ner_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_conll(tmp_path / "train.conll", synthetic_ner(48, 1)),
        "validation": write_conll(tmp_path / "dev.conll", synthetic_ner(12, 2)),
        "test": write_conll(tmp_path / "test.conll", synthetic_ner(12, 3)),
    }


def test_end_to_end_tiny_model(tiny_bert, ner_files, tmp_path):
    cfg = RunConfig.from_dict(
        ner_config(tiny_bert, ner_files, tmp_path / "run", data={"max_length": 10}, task={"stride": 2})
    )
    run = lmtune.train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("f1", "precision", "recall", "accuracy", "f1_macro"):
        assert 0.0 <= metrics["test"][key] <= 1.0
    assert set(metrics["details"]["test"]["per_type"]) == {"LOC", "ORG", "PER"}
    assert metrics["data"]["rows"]["train"] == 48
    assert metrics["data"]["class_balance"]["test"]
    resolved = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert resolved.data.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert resolved.task.options.tag_scheme == "bio"
    assert resolved.train.metric_for_best_model == "f1"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Per-type results (test)" in report

    loaded = lmtune.load_run(tmp_path / "run")
    texts = ["Alice Smith works at Google in Paris .", "Emma moved to Oslo last year ."]
    assert loaded.predict(texts) == run.predict(texts)
    tokens = [{"tokens": LONG_TOKENS}]
    out = loaded.predict(tokens)
    assert len(out[0]["tags"]) == len(tokens[0]["tokens"])
    from_file = loaded.predict_file(ner_files["test"])
    assert len(from_file) == 12 and all(len(r["tags"]) == len(r["tokens"]) for r in from_file)
    evaluated = loaded.evaluate(ner_files["test"])
    assert np.isclose(evaluated["f1"], metrics["test"]["f1"])


def test_predictions_jsonl_round_trips_gold_entities(tiny_bert, ner_files, tmp_path):
    from lmtune.data.conll import bio_spans
    from lmtune.evaluation.predictions import read_predictions

    lmtune.train(RunConfig.from_dict(ner_config(tiny_bert, ner_files, tmp_path / "run")))
    records, total = read_predictions(tmp_path / "run" / "predictions" / "test.jsonl")
    rows = synthetic_ner(12, 3)  # what ner_files wrote to test.conll
    assert total == len(records) == 12

    def entities(tokens: list[str], tags: list[str]) -> list[dict]:
        return [
            {"type": kind, "start": a, "end": b, "text": " ".join(tokens[a:b])}
            for kind, a, b in bio_spans(tags)
        ]

    predicted = lmtune.load_run(tmp_path / "run").predict([{"tokens": r["tokens"]} for r in rows])
    for i, (record, row, prediction) in enumerate(zip(records, rows, predicted, strict=True)):
        assert record["row"] == i and record["tokens"] == row["tokens"]
        assert record["text"] == " ".join(row["tokens"])
        assert record["gold"] == entities(row["tokens"], row["tags"]) and record["gold"]
        assert record["predicted"] == entities(row["tokens"], prediction["tags"])
        assert record["correct"] == (record["gold"] == record["predicted"])
    assert len(read_predictions(tmp_path / "run" / "predictions" / "validation.jsonl")[0]) == 12


def test_chinese_character_level_end_to_end(tiny_bert, tmp_path):
    rows = []
    for i in range(24):
        name, city = ["张三", "李四", "王五"][i % 3], ["北京", "上海"][i % 2]
        chars = list(f"{name}住在{city}")
        rows.append({"tokens": chars, "tags": ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]})
    train = write_conll(tmp_path / "zh.txt", rows)
    cfg = RunConfig.from_dict(
        ner_config(tiny_bert, {"train": train}, tmp_path / "run", method="full", train={"epochs": 1})
    )
    run = lmtune.train(cfg)
    assert run.metrics["data"]["rows"] == {"test": 2, "validation": 2, "train": 20}
    out = run.predict(["张三住在北京"])[0]
    assert out["text"] == "张三住在北京"
    assert all(out["text"][e["start"] : e["end"]] == e["text"] for e in out["entities"])


def test_cluener_span_files_train_evaluate_and_predict(tiny_bert, tmp_path):
    """CLUENER's JSON spans are read directly: training, and eval on a file of the same format."""
    records = []
    for i in range(24):
        name, city = ["张三", "李四", "王五"][i % 3], ["北京", "上海"][i % 2]
        text = f"{name}住在{city}"
        records.append({"text": text, "label": {"name": {name: [[0, 1]]}, "address": {city: [[4, 5]]}}})
    train = tmp_path / "train.json"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    cfg = RunConfig.from_dict(
        ner_config(tiny_bert, {"train": train}, tmp_path / "run", method="full", train={"epochs": 1})
    )
    run = lmtune.train(cfg)
    assert run.config.data.labels == ["O", "B-address", "I-address", "B-name", "I-name"]
    evaluated = lmtune.load_run(tmp_path / "run").evaluate(train)
    assert 0.0 <= evaluated["f1"] <= 1.0
    assert set(evaluated["details"]["per_type"]) == {"address", "name"}


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_token_classification(tiny_bert, ner_files, tmp_path, method):
    cfg = RunConfig.from_dict(
        ner_config(
            tiny_bert,
            ner_files,
            tmp_path / "run",
            method=method,
            train={"max_steps": 10, "eval_strategy": "no", "save_strategy": "no"},
        )
    )
    if method in ("prompt-tuning", "prefix-tuning"):  # virtual tokens have no per-token outputs
        with pytest.raises(
            LmtuneError, match=r"task 'token-classification' cannot be used for method.*virtual tokens"
        ):
            lmtune.train(cfg)
        assert not (tmp_path / "run").exists(), "a setup error leaves no run directory behind"
        return
    run = lmtune.train(cfg)
    assert 0 < run.metrics["train"]["trainable_params"] <= run.metrics["train"]["total_params"]
    assert np.isfinite(run.metrics["train"]["final_train_loss"])
    loaded = lmtune.load_run(tmp_path / "run")
    text = ["Bob works at Siemens in Tokyo ."]
    assert loaded.predict(text) == run.predict(text)


@pytest.mark.slow
def test_minilm_lora_learns_synthetic_ner(minilm_path, tmp_path):
    files = {
        "train": write_conll(tmp_path / "train.conll", synthetic_ner(112, 11)),
        "validation": write_conll(tmp_path / "dev.conll", synthetic_ner(24, 12)),
        "test": write_conll(tmp_path / "test.conll", synthetic_ner(32, 13)),
    }
    cfg = ner_config(
        "all-MiniLM-L6-v2",
        files,
        tmp_path / "run",
        method={"name": "lora", "r": 8},
        data={"max_length": 24},
        train={"epochs": 4, "batch_size": 16, "learning_rate": 3e-3, "early_stopping_patience": None},
    )
    baseline_cfg = RunConfig.from_dict(cfg)
    task = TokenClassificationTask(baseline_cfg)
    task.prepare_data()
    from transformers import AutoTokenizer

    untrained = task.build_model(minilm_path, fresh_head=True)
    dataset = task.read_labelled(str(files["test"]))
    baseline = task.evaluate(untrained, AutoTokenizer.from_pretrained(minilm_path), dataset, 32).metrics["f1"]

    run = lmtune.train(RunConfig.from_dict(cfg))
    f1 = run.metrics["test"]["f1"]
    print(f"MiniLM LoRA synthetic NER: test F1 {f1:.4f} (untrained baseline {baseline:.4f})")
    assert f1 > 0.8 and f1 > baseline + 0.5
    texts = ["Grace Tanaka works at Nordic Bank in Berlin .", "The Google team hired Hiro ."]
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.predict(texts) == run.predict(texts)
    assert np.isclose(loaded.evaluate(files["test"])["f1"], f1)
    entities = loaded.predict(["Grace Tanaka works at Nordic Bank in Berlin ."])[0]["entities"]
    assert ("PER", "Grace Tanaka") in [(e["type"], e["text"]) for e in entities]
