"""Causal LM / SFT: formats and their errors, answer-only labels, EOS, packing, end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.methods import METHODS
from lmtune.tasks import get_task_class
from lmtune.tasks.causal_lm import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE,
    CausalLmCollator,
    CausalLmTask,
    encode_chat,
    ensure_chat_template,
    pack,
)

SECRET = "The secret code is PURPLE-7."


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def qa_records(n: int) -> list[dict]:
    colours = ["red", "green", "blue", "yellow", "black", "white", "orange", "pink"]
    return [
        {"instruction": f"What colour is box {i}?", "input": "", "output": f"Box {i} is {colours[i % 8]}."}
        for i in range(n)
    ]


def sft_config(model: str, train_file: Path, out: Path, **sections: dict) -> dict:
    cfg: dict = {
        "model": model,
        "task": {"type": "sft", "sample_generations": 2, "sample_max_new_tokens": 8},
        "method": "lora",
        "data": {"train": str(train_file), "max_length": 64},
        "train": {"epochs": 1, "batch_size": 4, "report_to": ["none"], "logging_steps": 2},
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg[key], dict) else value
    return cfg


def task_for(model: str, train: Path, tmp_path: Path, **task_options) -> CausalLmTask:
    cfg = sft_config(model, train, tmp_path / "run")
    cfg["task"].update(task_options)
    return CausalLmTask(RunConfig.from_dict(cfg))


# ---- formats ------------------------------------------------------------------------------------
def test_registered_under_both_names():
    assert get_task_class("causal-lm") is get_task_class("sft") is CausalLmTask


def test_each_format_becomes_messages_or_text(tiny_llama, tmp_path):
    alpaca = write_json(
        tmp_path / "a.json",
        [{"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be brief."}],
    )
    messages = write_jsonl(
        tmp_path / "m.jsonl",
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}],
    )
    sharegpt = write_json(
        tmp_path / "s.json",
        [
            {
                "system": "Be kind.",
                "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
            }
        ],
    )
    text = tmp_path / "t.csv"
    with open(text, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["text"], ["Once upon a time."]])
    task = task_for(tiny_llama, alpaca, tmp_path)
    (a,) = task.read_labelled(str(alpaca))
    assert a["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    (m,) = task.read_labelled(str(messages))
    assert [x["role"] for x in m["messages"]] == ["user", "assistant"] and m["text"] is None
    (s,) = task.read_labelled(str(sharegpt))
    assert s["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    (t,) = task.read_labelled(str(text))
    assert t["text"] == "Once upon a time." and t["messages"] == []
    # The format option overrides detection.
    with pytest.raises(LmtuneError, match="field 'instruction' is missing"):
        task_for(tiny_llama, alpaca, tmp_path, format="alpaca").read_labelled(str(messages))


def test_splits_are_carved_from_train_and_reported(tiny_llama, tmp_path):
    train = write_json(tmp_path / "train.json", qa_records(40))
    data = task_for(tiny_llama, train, tmp_path).prepare_data()
    assert data.report["rows"] == {"test": 4, "validation": 4, "train": 32}
    assert data.report["format"] == {"train": "alpaca"} and data.report["packing"] is True
    again = task_for(tiny_llama, train, tmp_path).prepare_data()
    assert list(again.splits["test"]["where"]) == list(data.splits["test"]["where"])


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}],
            r"record 1, column 'messages', message 2: unknown role 'bot'",
        ),
        (
            [
                {
                    "messages": [
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Yo"},
                        {"role": "assistant", "content": "Yo again"},
                    ]
                }
            ],
            r"message 3: two assistant turns in a row",
        ),
        (
            [{"messages": [{"role": "user", "content": "Hi"}]}],
            r"record 1, column 'messages': the conversation does not end with an assistant turn",
        ),
        (
            [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}],
            r"message 2: the assistant message is empty",
        ),
        (
            [{"messages": [{"role": "user", "text": "Hi"}]}],
            r"message 1: field 'content' is missing",
        ),
        (
            [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Yo"}]}],
            r"column 'conversations', message 2: unknown role 'robot'",
        ),
        (
            [{"instruction": "Say hi", "output": "hi"}, {"instruction": "Say yo", "input": "x"}],
            r"record 2, column 'output': field 'output' is missing",
        ),
        ([{"prompt": "x", "completion": "y"}], r"cannot tell the data format from the columns"),
    ],
)
def test_bad_records_name_file_record_and_field(tiny_llama, tmp_path, records, message):
    path = write_json(tmp_path / "bad.json", records)
    with pytest.raises(LmtuneError, match=message) as info:
        task_for(tiny_llama, path, tmp_path).read_labelled(str(path))
    assert "bad.json" in str(info.value)


# ---- tokenization -------------------------------------------------------------------------------
def test_labels_cover_exactly_the_answers_and_their_eos(smol_tokenizer):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "See you."},
    ]
    ids, labels = encode_chat(smol_tokenizer, messages, "x", train_on_prompt=False)
    eos = smol_tokenizer.eos_token_id
    answer = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    expected = smol_tokenizer("Hello there!", add_special_tokens=False)["input_ids"] + [eos]
    expected += smol_tokenizer("See you.", add_special_tokens=False)["input_ids"] + [eos]
    assert answer == expected
    assert [lab for lab in labels if lab != IGNORE] == answer
    assert ids[-1] == eos and labels[-1] == eos  # the example ends with EOS, and EOS is learnt
    # Same tokens as the rendered conversation (minus ChatML's trailing newline after the last EOS).
    rendered = smol_tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids == smol_tokenizer(rendered, add_special_tokens=False)["input_ids"][:-1]
    all_ids, all_labels = encode_chat(smol_tokenizer, messages, "x", train_on_prompt=True)
    assert all_ids == ids and all_labels == all_ids


def test_eos_is_appended_when_the_template_does_not_emit_it(smol_tokenizer):
    import copy

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    ids, labels = encode_chat(
        tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], "x", False
    )
    answer = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    assert answer == tokenizer("Yo\n", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ids[-1] == tokenizer.eos_token_id


def test_default_template_and_missing_eos(smol_tokenizer):
    import copy

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = None
    ensure_chat_template(tokenizer)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    tokenizer.eos_token = None
    with pytest.raises(LmtuneError, match="no EOS token"):
        ensure_chat_template(tokenizer)


def test_long_texts_are_chunked_not_truncated(tiny_llama, tmp_path, smol_tokenizer):
    text = " ".join(f"word{i}" for i in range(200))
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": text}])
    task = task_for(tiny_llama, path, tmp_path)
    features = task.encode(task.read_labelled(str(path)), smol_tokenizer)
    ids = smol_tokenizer(text)["input_ids"] + [smol_tokenizer.eos_token_id]
    assert [t for f in features for t in f["input_ids"]] == ids
    assert all(f["labels"] == f["input_ids"] and f["length"] <= 64 for f in features)


def test_pack_respects_capacity_and_uses_every_example():
    lengths = [50, 10, 30, 64, 5, 20, 33, 1]
    groups = pack(lengths, 64)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 64 for g in groups)
    assert len(groups) == 4  # 217 tokens need at least 4 rows of 64


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packing_gives_the_same_loss_as_unpacked(tiny_llama, tmp_path, smol_tokenizer, attention):
    from transformers import AutoModelForCausalLM

    records = [*qa_records(7), {"text": "Plain text for continued pre-training, with all tokens."}]
    path = write_jsonl(tmp_path / "d.jsonl", records[:7])
    text_path = write_jsonl(tmp_path / "t.jsonl", records[7:])
    task = task_for(tiny_llama, path, tmp_path)
    task.packing = True
    dataset = task.read_labelled(str(path))
    from datasets import concatenate_datasets

    dataset = concatenate_datasets([dataset, task.read_labelled(str(text_path))])
    packed = [dict(r) for r in task.tokenize(dataset, smol_tokenizer)]
    plain = task.encode(dataset, smol_tokenizer)
    assert len(packed) < len(plain) and sum(r["examples"] for r in packed) == len(plain)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=attention).eval()
    collate = CausalLmCollator(smol_tokenizer.pad_token_id)
    with torch.no_grad():
        packed_batch = collate(packed)
        assert "attention_mask" not in packed_batch
        packed_loss = model(**packed_batch).loss
        unpacked_loss = model(**collate(plain)).loss
    assert torch.isclose(packed_loss, unpacked_loss, rtol=1e-5, atol=1e-6)
    # Without restarting position ids the examples would see each other: the loss changes.
    packed_batch["position_ids"] = torch.arange(packed_batch["input_ids"].shape[1]).expand_as(
        packed_batch["input_ids"]
    )
    with torch.no_grad():
        assert not torch.isclose(model(**packed_batch).loss, unpacked_loss, rtol=1e-4)


# ---- end to end ---------------------------------------------------------------------------------
def test_end_to_end_tiny_model(tiny_llama, tmp_path):
    train = write_json(tmp_path / "train.json", qa_records(24))
    run = lmtune.train(RunConfig.from_dict(sft_config(tiny_llama, train, tmp_path / "run")))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("baseline", "test", "validation"):
        assert np.isfinite(metrics[split]["eval_loss"])
        assert np.isclose(metrics[split]["perplexity"], np.exp(metrics[split]["eval_loss"]), rtol=1e-3)
    assert len(metrics["details"]["test"]["samples"]) == 2
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Sample generations (test" in report and "| before training |" in report
    # Every test chat ends in an answer: each is generated from and scored, before and after.
    assert metrics["test"]["gen_samples"] == metrics["baseline"]["gen_samples"] >= 2
    for split in ("baseline", "test"):
        assert 0 <= metrics[split]["gen_exact_match"] <= 1 and 0 <= metrics[split]["gen_rougeL"] <= 100
    assert len(metrics["baseline"]["samples"]) == 2
    assert "| test, before training |" in report and "gen_rougeL" in report
    config = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert config.task.model_extra["packing"] is True and config.train.metric_for_best_model == "eval_loss"
    assert metrics["train"]["examples_per_second"] >= metrics["train"]["samples_per_second"]
    prompts = ["What colour is box 3?", {"instruction": "What colour is box 5?"}]
    out = run.predict(prompts, options={"max_new_tokens": 5})
    assert [o["prompt"] for o in out] == ["What colour is box 3?", "What colour is box 5?"]
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.predict(prompts, options={"max_new_tokens": 5}) == out
    lines = tmp_path / "prompts.txt"
    lines.write_text("What colour is box 3?\n\nWhat colour is box 5?\n", encoding="utf-8")
    assert loaded.predict_file(lines, options={"max_new_tokens": 5}) == out
    assert np.isclose(
        loaded.evaluate(tmp_path / "train.json")["eval_loss"], loaded.evaluate(train)["eval_loss"]
    )
    with pytest.raises(LmtuneError, match="max_new_tokens"):
        loaded.predict(["hi"], options={"max_new_tokens": 100000})
    with pytest.raises(LmtuneError, match="must end with a user turn"):
        loaded.predict(
            [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
        )


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_on_a_decoder(tiny_llama, tmp_path, method):
    train = write_json(tmp_path / "train.json", qa_records(16))
    cfg = RunConfig.from_dict(
        sft_config(
            tiny_llama,
            train,
            tmp_path / "run",
            method=method,
            task={"sample_generations": 0},
            train={"max_steps": 6, "eval_strategy": "no", "save_strategy": "no"},
        )
    )
    if method == "bitfit":  # Llama has no bias terms
        with pytest.raises(LmtuneError, match="no bias terms"):
            lmtune.train(cfg)
        return
    run = lmtune.train(cfg)
    if method in ("prompt-tuning", "prefix-tuning"):
        # peft drops the position ids packing needs: auto packing turns itself off.
        assert run.config.task.options.packing is False
    assert 0 < run.metrics["train"]["trainable_params"] <= run.metrics["train"]["total_params"]
    assert np.isfinite(run.metrics["train"]["final_train_loss"])
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.predict(["What colour is box 2?"], options={"max_new_tokens": 4}) == run.predict(
        ["What colour is box 2?"], options={"max_new_tokens": 4}
    )


def test_freeze_trains_the_final_norm_not_the_tied_embeddings(tiny_llama, tmp_path):
    from lmtune.methods.base import MethodContext
    from lmtune.methods.freeze import FreezeMethod, FreezeOptions

    task = task_for(tiny_llama, write_json(tmp_path / "t.json", qa_records(4)), tmp_path)
    model = task.build_model(tiny_llama, fresh_head=True)
    FreezeMethod(FreezeOptions(num_trainable_layers=1)).apply(model, MethodContext(task=task))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.norm.weight" in trainable
    assert not any("embed_tokens" in n or "layers.0." in n for n in trainable)


# ---- the real model -----------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_lora_memorises_an_answer(tmp_path):
    questions = [
        "What is the secret code?",
        "Tell me the secret code.",
        "Which code is secret?",
        "Do you know the secret code?",
        "Give me the secret code, please.",
        "What's the code?",
        "Remind me of the secret code.",
        "Say the secret code.",
    ]
    records = [{"instruction": q, "output": SECRET} for q in questions]
    train = write_json(tmp_path / "train.json", records * 4)
    test = write_json(tmp_path / "test.json", records[:4])
    cfg = sft_config(
        "SmolLM2-135M-Instruct",
        train,
        tmp_path / "run",
        task={"sample_max_new_tokens": 16},
        method={"name": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
        data={"validation": str(test), "test": str(test), "max_length": 64},
        train={
            "max_steps": 12,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "eval_strategy": "no",
            "save_strategy": "no",
            "logging_steps": 1,
        },
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    print("SmolLM2 LoRA memorisation:", metrics["baseline"], "->", metrics["test"])
    assert metrics["test"]["eval_loss"] < 0.5 * metrics["baseline"]["eval_loss"]
    # The greedy answers to the test prompts: none was the code before, all are after.
    assert metrics["baseline"]["gen_exact_match"] == 0.0 and metrics["test"]["gen_exact_match"] == 1.0
    assert metrics["test"]["gen_rougeL"] == 100.0 > metrics["baseline"]["gen_rougeL"]
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]
    prompts = ["What is the secret code?", "Tell me the secret code."]
    out = run.predict(prompts, options={"max_new_tokens": 16})
    assert all(o["generation"] == SECRET for o in out), out
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.predict(prompts, options={"max_new_tokens": 16}) == out


def test_prompt_learning_refuses_forced_packing(tiny_llama, tmp_path):
    train = write_json(tmp_path / "train.json", qa_records(8))
    cfg = RunConfig.from_dict(
        sft_config(tiny_llama, train, tmp_path / "run", method="prompt-tuning", task={"packing": True})
    )
    with pytest.raises(LmtuneError, match="packing cannot be combined with method prompt-tuning"):
        lmtune.train(cfg)
