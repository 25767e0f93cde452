"""Cached frozen activations (freeze): replay equals recomputation, skips the frozen layers, trains."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import fast_config

from lmtune.config import RunConfig
from lmtune.methods.base import MethodContext
from lmtune.methods.freeze import FreezeMethod, FreezeOptions
from lmtune.tasks import get_task_class


def _frozen_minilm(minilm_path: str, sentiment_files, tmp_path, **options):
    cfg = RunConfig.from_dict(fast_config(minilm_path, sentiment_files, tmp_path / "run", method="freeze"))
    task = get_task_class("classification")(cfg)
    task.labels = ["negative", "positive"]
    model = task.build_model(minilm_path, fresh_head=True)
    method = FreezeMethod(FreezeOptions(**options))
    model = method.apply(model, MethodContext(task=task))
    return model, method


def _batch(tokenizer, texts):
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def test_replay_gives_the_recomputed_outputs_and_skips_the_frozen_layers(
    minilm_path, sentiment_files, tmp_path
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model, method = _frozen_minilm(minilm_path, sentiment_files, tmp_path, num_trainable_layers=2)
    cache = method.activation_cache
    layers = model.bert.encoder.layer
    calls = {"attention": 0}
    layers[0].attention.register_forward_hook(
        lambda *_: calls.__setitem__("attention", calls["attention"] + 1)
    )

    model.eval()  # no dropout in the trainable top either, so outputs are comparable
    texts = ["the film was great", "a long and rather dull evening at the theatre"]
    with torch.no_grad():
        first = model(**_batch(tokenizer, texts)).logits
        assert calls["attention"] == 1 and not cache.replay and len(cache.store) == 2
        second = model(**_batch(tokenizer, texts)).logits
        assert cache.replay and calls["attention"] == 1  # the frozen layers did not run
        torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-5)
        # The same example padded differently (beside a longer one) replays to the same output.
        alone = model(**_batch(tokenizer, texts[:1])).logits
        torch.testing.assert_close(alone[0], first[0], rtol=1e-4, atol=1e-4)


def test_frozen_prefix_is_deterministic_in_training_and_gradients_reach_the_top(
    minilm_path, sentiment_files, tmp_path
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model, method = _frozen_minilm(minilm_path, sentiment_files, tmp_path, num_trainable_layers=1)
    model.train()
    assert not model.bert.embeddings.training and not model.bert.encoder.layer[0].training
    assert model.bert.encoder.layer[-1].training  # the trainable layer keeps its dropout
    batch = _batch(tokenizer, ["the film was great", "the service was awful"])
    labels = torch.tensor([1, 0])
    model(**batch, labels=labels)  # records
    loss = model(**batch, labels=labels).loss  # replays
    assert method.activation_cache.replay
    loss.backward()
    top = model.bert.encoder.layer[-1].output.dense.weight
    assert top.grad is not None and top.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.bert.encoder.layer[0].parameters())


def test_cache_respects_its_budget_and_can_be_turned_off(minilm_path, sentiment_files, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model, method = _frozen_minilm(minilm_path, sentiment_files, tmp_path, cache_max_mb=0.001)
    with torch.no_grad():
        model(**_batch(tokenizer, ["the film was great"]))
    assert method.activation_cache.store == {}  # 1 KB holds no example's states
    _, uncached = _frozen_minilm(minilm_path, sentiment_files, tmp_path, cache_activations=False)
    assert not hasattr(uncached, "activation_cache")


@pytest.mark.slow
def test_freeze_run_with_the_cache_learns_and_saves_a_plain_model(minilm_path, sentiment_files, tmp_path):
    import lmtune

    raw = fast_config(
        "all-MiniLM-L6-v2",
        sentiment_files,
        tmp_path / "run",
        method={"name": "freeze", "num_trainable_layers": 1},
        train={"epochs": 4, "learning_rate": 1e-3},
    )
    run = lmtune.train(RunConfig.from_dict(raw))
    assert run.metrics["test"]["accuracy"] >= 0.9
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.predict(["the hotel was superb"]) == run.predict(["the hotel was superb"])
