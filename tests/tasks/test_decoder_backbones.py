"""Encoder tasks on decoder backbones: the packaged multilingual Gemma 3 as a Chinese classifier."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tests.conftest import save_tiny_gemma, write_csv

from lmtune.config import RunConfig
from lmtune.run import Run, train

GOOD = ["服务非常好", "房间很干净", "早餐很丰富", "位置很方便"]
BAD = ["服务太差了", "房间很脏", "早餐很难吃", "位置很偏僻"]
PLACES = ["这家酒店", "这个宾馆", "我们的房间", "前台"]


def chinese_reviews(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = GOOD if positive else BAD
        text = f"{rng.choice(PLACES)}{rng.choice(words)}。"
        rows.append({"review": text, "label": "1" if positive else "0"})
    return rows


@pytest.mark.slow
def test_gemma_lora_classifier_trains_and_reloads_identically(gemma_path: str, tmp_path: Path) -> None:
    files = {
        split: write_csv(tmp_path / f"{split}.csv", chinese_reviews(n, seed))
        for split, n, seed in (("train", 24, 0), ("validation", 8, 1), ("test", 8, 2))
    }
    raw = {
        "model": "gemma-3-270m",
        "task": "classification",
        "method": "lora",
        "data": {**{k: str(v) for k, v in files.items()}, "max_length": 32},
        "train": {"max_steps": 3, "batch_size": 8, "report_to": ["none"], "eval_strategy": "no"},
        "output_dir": str(tmp_path / "run"),
    }
    run = train(RunConfig.from_dict(raw))
    assert type(run.model.base_model.model).__name__ == "Gemma3TextForSequenceClassification"
    t = run.metrics["train"]
    # LoRA (r 8) on every linear layer of 18 blocks, r x (in + out) each, plus the 640 x 2 score
    # head, which is trained in full and not adapted.
    attention = [(640, 4 * 256), (640, 256), (640, 256), (4 * 256, 640)]  # q, k, v, o
    mlp = [(640, 2048), (640, 2048), (2048, 640)]  # gate, up, down
    assert t["trainable_params"] == 18 * 8 * sum(i + o for i, o in attention + mlp) + 640 * 2
    texts = [r["review"] for r in chinese_reviews(6, 3)]
    reloaded = Run.load(run.directory).predict(texts)
    for ours, theirs in zip(run.predict(texts), reloaded, strict=True):
        assert ours["label"] == theirs["label"]
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-5)


def cluener_file(path: Path, n: int, seed: int) -> Path:
    """CLUENER-format records: a name and a city per sentence, as character spans."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, city = rng.choice(["张三", "李四", "王五"]), rng.choice(["北京", "上海", "广州"])
        text = f"{name}住在{city}"
        rows.append({"text": text, "label": {"name": {name: [[0, 1]]}, "address": {city: [[4, 5]]}}})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def quick(model: str, task: str, files: dict[str, Path], out: Path, method: str = "lora") -> dict:
    return {
        "model": model,
        "task": task,
        "method": method,
        "data": {**{k: str(v) for k, v in files.items()}, "max_length": 48},
        "train": {"max_steps": 3, "batch_size": 8, "report_to": ["none"], "eval_strategy": "no"},
        "output_dir": str(out),
    }


@pytest.mark.slow
def test_gemma_ner_head_is_composed_trains_and_reloads_identically(gemma_path: str, tmp_path: Path) -> None:
    files = {
        "train": cluener_file(tmp_path / "train.json", 24, 0),
        "test": cluener_file(tmp_path / "t.json", 6, 1),
    }
    run = train(RunConfig.from_dict(quick("gemma-3-270m", "ner", files, tmp_path / "run")))
    # transformers has no Gemma 3 token-classification class: the generic head over the backbone.
    assert type(run.model.base_model.model).__name__ == "Gemma3TextForTokenClassification"
    texts = [{"tokens": list("李四住在广州")}, {"tokens": list("王五住在北京")}]
    assert Run.load(run.directory).predict(texts) == run.predict(texts)


@pytest.mark.slow
def test_gemma_qa_head_is_composed_trains_and_reloads_identically(gemma_path: str, tmp_path: Path) -> None:
    from tests.tasks.test_question_answering import squad_set, write_json

    files = {"train": write_json(tmp_path / "train.json", squad_set(8, 0))}
    run = train(RunConfig.from_dict(quick("gemma-3-270m", "qa", files, tmp_path / "run")))
    assert type(run.model.base_model.model).__name__ == "Gemma3TextForQuestionAnswering"
    question = {"question": "Where was Ada born?", "context": "Ada was born in Velmora in 1931."}
    assert Run.load(run.directory).predict([question]) == run.predict([question])


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory, gemma_path: str) -> str:
    """A 2-layer Gemma 3 with the real tokenizer: the composed heads' save/load paths, in seconds."""
    return save_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"), 262144, gemma_path, layer_types=None)


def test_composed_head_saves_and_reloads_as_a_whole_model(tiny_gemma: str, tmp_path: Path) -> None:
    files = {"train": cluener_file(tmp_path / "train.json", 16, 2)}
    run = train(RunConfig.from_dict(quick(tiny_gemma, "ner", files, tmp_path / "run", method="full")))
    saved = json.loads((run.directory / "model" / "config.json").read_text())
    assert saved["architectures"] == ["Gemma3TextForTokenClassification"]
    texts = [{"tokens": list("张三住在上海")}]
    assert Run.load(run.directory).predict(texts) == run.predict(texts)


def test_a_left_padding_tokenizer_tags_each_word_as_it_would_alone(tiny_gemma: str, tmp_path: Path) -> None:
    # Gemma 3's tokenizer pads on the left; word positions index the unpadded window, so batches
    # must pad on the right or every shorter row is read at the wrong positions.
    files = {"train": cluener_file(tmp_path / "train.json", 16, 3)}
    run = train(RunConfig.from_dict(quick(tiny_gemma, "ner", files, tmp_path / "run", method="full")))
    assert run.tokenizer.padding_side == "left"
    sentences = [list("张三住在上海"), list("李四住在北京，王五住在广州，张三也住在上海"), list("王五")]
    batched = run.task._predict_words(run.model, run.tokenizer, sentences, 8)
    alone = [run.task._predict_words(run.model, run.tokenizer, [s], 1)[0] for s in sentences]
    assert [[label for label, _ in words] for words in batched] == [[label for label, _ in w] for w in alone]
    for words, single in zip(batched, alone, strict=True):
        assert [p for _, p in words] == pytest.approx([p for _, p in single], abs=1e-4)
    assert run.tokenizer.padding_side == "left"  # the caller's tokenizer is left as it was


def test_a_left_padding_tokenizer_finds_the_same_answer_in_a_batch(tiny_gemma: str, tmp_path: Path) -> None:
    from tests.tasks.test_question_answering import squad_set, write_json

    files = {"train": write_json(tmp_path / "train.json", squad_set(8, 0))}
    run = train(RunConfig.from_dict(quick(tiny_gemma, "qa", files, tmp_path / "run", method="full")))
    questions = ["Where was Ada born?", "When?", "Who was born in Velmora in the year 1931, and where?"]
    contexts = ["Ada was born in Velmora in 1931.", "In 1931.", "Ada was born in Velmora in 1931, they say."]
    batched = run.task._answers_for(run.model, run.tokenizer, questions, contexts, 8)
    alone = [
        run.task._answers_for(run.model, run.tokenizer, [q], [c], 1)[0]
        for q, c in zip(questions, contexts, strict=True)
    ]
    assert [(a["start"], a["end"]) for a in batched] == [(a["start"], a["end"]) for a in alone]
