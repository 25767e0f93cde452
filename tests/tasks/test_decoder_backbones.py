"""Encoder tasks on decoder backbones: the packaged multilingual Gemma 3 as a Chinese classifier."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tests.conftest import write_csv

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
    # LoRA on q_proj and v_proj of 18 blocks (r 8) plus the 640 x 2 score head.
    q, v = (640, 4 * 256), (640, 1 * 256)
    assert t["trainable_params"] == 18 * 8 * (sum(q) + sum(v)) + 640 * 2
    texts = [r["review"] for r in chinese_reviews(6, 3)]
    reloaded = Run.load(run.directory).predict(texts)
    for ours, theirs in zip(run.predict(texts), reloaded, strict=True):
        assert ours["label"] == theirs["label"]
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-5)
