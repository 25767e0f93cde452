"""The tokenization cache: a second run on the same data reuses the tokenized splits."""

from __future__ import annotations

from tests.conftest import fast_config

import lmtune
from lmtune.config import RunConfig
from lmtune.data.cache import clear_cache


def test_second_run_hits_the_cache_and_trains_the_same(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_TOKENIZED_CACHE", str(tmp_path / "cache"))
    first = lmtune.train(
        RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, tmp_path / "a", train={"epochs": 1}))
    )
    assert first.metrics["data"]["tokenization_cache_hits"] == []
    second = lmtune.train(
        RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, tmp_path / "b", train={"epochs": 1}))
    )
    assert sorted(second.metrics["data"]["tokenization_cache_hits"]) == ["test", "train", "validation"]
    assert second.metrics["test"]["accuracy"] == first.metrics["test"]["accuracy"]
    assert second.metrics["train"]["final_train_loss"] == first.metrics["train"]["final_train_loss"]

    longer = fast_config(tiny_bert, sentiment_files, tmp_path / "c", train={"epochs": 1})
    longer["data"]["max_length"] = 16  # a different setting is a different key
    third = lmtune.train(RunConfig.from_dict(longer))
    assert third.metrics["data"]["tokenization_cache_hits"] == []
    assert clear_cache() == 6


def test_cache_can_be_switched_off(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_TOKENIZED_CACHE", str(tmp_path / "cache"))
    cfg = fast_config(tiny_bert, sentiment_files, tmp_path / "a", train={"epochs": 1})
    cfg["data"]["cache_tokenized"] = False
    run = lmtune.train(RunConfig.from_dict(cfg))
    assert "tokenization_cache_hits" not in run.metrics["data"]
    assert not (tmp_path / "cache").exists()
