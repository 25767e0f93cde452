"""The attribution targets of token classification, question answering and causal-LM runs, on
untrained tiny models: each gives one score per token and its own targets."""

from __future__ import annotations

import pytest
import torch

from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.evaluation.explain import ExplainSettings, explain
from lmtune.evaluation.explain_faithfulness import faithfulness
from lmtune.tasks import get_task_class


def task_of(model: str, task: str, **data: object):
    cfg = RunConfig.from_dict({"model": model, "task": task, "data": {"max_length": 64, **data}})
    return get_task_class(task)(cfg)


def tokenizer_of(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_scores(record: dict) -> None:
    for e in record["explanations"]:
        assert len(e["token_scores"]) == len(record["tokens"])
        assert len(e["word_scores"]) == len(record["words"])
        if e["delta"] is not None:
            assert sum(e["token_scores"]) == pytest.approx(e["value"] - e["baseline_value"], abs=0.05)


def test_each_predicted_entity_is_a_target(tiny_bert):
    task = task_of(tiny_bert, "ner", labels=["O", "B-PER", "I-PER"])
    model = task.build_model(tiny_bert, fresh_head=True).eval()
    with torch.no_grad():  # every word an entity of its own: B-PER wins everywhere
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    tokenizer = tokenizer_of(tiny_bert)
    (record,) = explain(task, model, tokenizer, [{"text": "Ada Lovelace wrote notes"}])
    names = [e["target"] for e in record["explanations"]]
    assert names == ["PER: Ada", "PER: Lovelace", "PER: wrote", "PER: notes"]
    assert [(w["word"], w["start"]) for w in record["words"]][:2] == [("Ada", 0), ("Lovelace", 4)]
    assert record["prediction"]["entities"][0]["text"] == "Ada"
    check_scores(record)
    (record,) = explain(task, model, tokenizer, [{"tokens": ["Ada", "wrote"]}])
    assert [w["word"] for w in record["words"]] == ["Ada", "wrote"] and len(record["explanations"]) == 2
    with pytest.raises(LmtuneError, match="entity type 'LOC'"):
        explain(task, model, tokenizer, [{"text": "x"}], ExplainSettings(target="LOC"))
    with pytest.raises(LmtuneError, match="read token positions"):
        faithfulness(task, model, tokenizer, [{"text": "Ada wrote"}])


def test_start_and_end_of_the_span_are_explained_apart(tiny_bert):
    task = task_of(tiny_bert, "qa")
    model = task.build_model(tiny_bert, fresh_head=True).eval()
    tokenizer = tokenizer_of(tiny_bert)
    item = {"question": "Who wrote the notes?", "context": "Ada Lovelace wrote the notes in 1843."}
    (record,) = explain(task, model, tokenizer, [item])
    assert [e["target"] for e in record["explanations"]] == ["start", "end"]
    assert {w["field"] for w in record["words"]} == {"question", "context"}
    assert record["prediction"]["explained_span"] in item["context"]
    check_scores(record)
    (record,) = explain(task, model, tokenizer, [item], ExplainSettings(target="end", method="rollout"))
    assert [e["target"] for e in record["explanations"]] == ["end"]


def test_prompt_tokens_explain_the_generated_answer(tiny_llama):
    task = task_of(tiny_llama, "sft")
    model = task.build_model(tiny_llama, fresh_head=False).eval()
    tokenizer = tokenizer_of(tiny_llama)
    options = task.predict_options({"max_new_tokens": 4})
    (record,) = explain(
        task, model, tokenizer, [{"text": "Name a colour"}], ExplainSettings(n_steps=8), options
    )
    (e,) = record["explanations"]
    assert e["target"] == "answer" and e["output"] == "log-probability"
    predicted = task.predict(model, tokenizer, [{"text": "Name a colour"}], 1, options)[0]
    assert record["prediction"]["generation"] == predicted["generation"]
    answer = [i for i, w in enumerate(record["words"]) if w["field"] == "answer"]
    assert answer and all(e["word_scores"][i] == 0.0 for i in answer)  # only the prompt is explained
    assert any(s != 0.0 for s in e["token_scores"])
    check_scores(record)
    with pytest.raises(LmtuneError, match="--target does not apply"):
        explain(task, model, tokenizer, [{"text": "x"}], ExplainSettings(target="a"), options)


def test_a_task_without_the_capability_is_refused(tiny_bert):
    task = task_of(tiny_bert, "seq2seq")
    with pytest.raises(LmtuneError, match="token-attributions"):
        explain(task, None, None, [{"text": "x"}])
