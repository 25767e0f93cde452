"""A finished run as the starting point of another (`--model runs/first`): merged once into
the cache, recorded in run.json and the model card, and resolved again by every later reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmtune
from lmtune.chaining import SOURCE_FILE
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.models import resolve_model
from tests.conftest import fast_config

TEXTS = ["the film was superb", "our meal was dreadful"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _logits(model, tokenizer):
    with torch.inference_mode():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


def test_a_run_started_from_a_run_records_where_it_came_from(tiny_bert, sentiment_files, tmp_path, cache):
    from transformers import AutoModelForSequenceClassification

    first = tmp_path / "first"
    lmtune.train(RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, first, train={"epochs": 1})))
    ref = resolve_model(str(first))
    assert ref.source == "run" and (cache / "runs") in Path(ref.path).parents
    source = json.loads((Path(ref.path) / SOURCE_FILE).read_text())
    assert source["run"] == str(first.resolve())
    # The merged starting point computes what the first run's model computes.
    trained = lmtune.load_run(first, device="cpu")
    merged = AutoModelForSequenceClassification.from_pretrained(ref.path).eval()
    assert torch.allclose(
        _logits(merged, trained.tokenizer), _logits(trained.model, trained.tokenizer), atol=1e-5
    )

    second = tmp_path / "second"
    cfg = fast_config(str(first), sentiment_files, second, train={"epochs": 1})
    run = lmtune.train(RunConfig.from_dict(cfg))
    assert run.config.model.name == str(first)  # config.yaml reproduces the chain
    state = json.loads((second / "run.json").read_text())
    assert [step["run"] for step in state["lineage"]] == [str(first.resolve())]
    assert state["lineage"][0]["model"] == tiny_bert and state["lineage"][0]["method"] == "lora"
    assert "Started from the run `first` (classification, lora)" in (second / "README.md").read_text()
    # The cache is reused, and the second run reloads from the same starting point.
    assert resolve_model(str(first)).path == ref.path
    reloaded = lmtune.load_run(second, device="cpu")
    assert reloaded.predict(TEXTS) == run.predict(TEXTS)


def test_only_finished_runs_of_mergeable_methods_start_a_run(tiny_bert, sentiment_files, tmp_path, cache):
    adapters = tmp_path / "adapters"
    cfg = fast_config(tiny_bert, sentiment_files, adapters, method="adapter-houlsby", train={"epochs": 1})
    lmtune.train(RunConfig.from_dict(cfg))
    with pytest.raises(LmtuneError, match=r"method 'adapter-houlsby' cannot be used for starting a new run"):
        resolve_model(str(adapters))
    state_file = adapters / "run.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "status": "running"}))
    with pytest.raises(LmtuneError, match="did not finish"):
        resolve_model(str(adapters))


def test_continuing_a_runs_adapter_starts_from_its_trained_weights(
    tiny_bert, sentiment_files, tmp_path, cache
):
    first = tmp_path / "first"
    lmtune.train(RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, first, train={"epochs": 1})))
    ref = resolve_model(str(first), from_run="continue")
    assert ref.path == tiny_bert and ref.adapter == str(first / "model")

    second = tmp_path / "second"
    model = {"name": str(first), "from_run": "continue"}
    # One step at a learning rate too small to move anything: the adapter is the first run's.
    train = {"max_steps": 1, "learning_rate": 1e-12, "warmup_ratio": 0, "eval_strategy": "no"}
    cfg = fast_config(tiny_bert, sentiment_files, second, train={**train, "save_strategy": "no"})
    run = lmtune.train(RunConfig.from_dict({**cfg, "model": model}))
    before = lmtune.load_run(first, device="cpu").predict(TEXTS)
    for got, want in zip(run.predict(TEXTS), before, strict=True):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    assert lmtune.load_run(second, device="cpu").predict(TEXTS) == run.predict(TEXTS)

    other = fast_config(tiny_bert, sentiment_files, tmp_path / "third", method="ia3")
    with pytest.raises(LmtuneError, match=r"trained method 'lora' and this run uses 'ia3'"):
        lmtune.train(RunConfig.from_dict({**other, "model": model}))
