"""Reward models: rendering, the pair collator, metrics, TRL's trainer end to end, predict, errors."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.tasks import get_task_class
from lmtune.tasks.causal_lm import DEFAULT_CHAT_TEMPLATE
from lmtune.tasks.reward_model import PairCollator, RewardModelTask, pair_metrics, reward_trainer_class

TOPICS = [
    "my homework",
    "a cover letter",
    "the garden",
    "my taxes",
    "a birthday party",
    "the recipe",
    "my bike",
    "the spreadsheet",
    "a trip to Rome",
    "the printer",
    "my essay",
    "the wedding speech",
    "a job interview",
    "the car engine",
    "my thesis",
    "the kitchen sink",
]
PROMPTS = ["Can you help me with {t}?", "I need some help with {t}.", "Could you assist me with {t}, please?"]
HELPFUL = [
    "Of course, I would be glad to help you with {t}.",
    "Happy to help with {t}: let us start together.",
    "Sure! Here is how we can sort out {t}, step by step.",
    "Certainly, {t} is something I can help you with.",
]
RUDE = [
    "No. Do {t} yourself.",
    "I do not care about {t}, go away.",
    "Figure out {t} on your own, not my problem.",
    "Stop bothering me with {t}.",
]


def pairs(n: int, seed: int, topics: list[str]) -> list[dict]:
    """Pairs whose chosen answer is the helpful one and whose rejected answer is rude."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(topics)
        out.append(
            {
                "prompt": rng.choice(PROMPTS).format(t=t),
                "chosen": rng.choice(HELPFUL).format(t=t),
                "rejected": rng.choice(RUDE).format(t=t),
            }
        )
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def rm_files(tmp_path: Path, n_train: int = 48, n_held_out: int = 16) -> dict[str, Path]:
    """Train on half the topics; validation and test ask about the other half."""
    seen, unseen = TOPICS[::2], TOPICS[1::2]
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", pairs(n_train, 1, seen)),
        "validation": write_jsonl(tmp_path / "dev.jsonl", pairs(n_held_out, 2, unseen)),
        "test": write_jsonl(tmp_path / "test.jsonl", pairs(n_held_out, 3, unseen)),
    }


def rm_config(model: str, files: dict[str, Path], out: Path, **sections: dict) -> dict:
    cfg: dict = {
        "model": model,
        "task": {"type": "reward-model"},
        "method": "lora",
        "data": {name: str(path) for name, path in files.items()} | {"max_length": 48},
        "train": {"epochs": 2, "batch_size": 8, "report_to": ["none"], "logging_steps": 2},
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg[key], dict) else value
    return cfg


def task_for(model: str, tmp_path: Path, max_length: int = 48, **task_options) -> RewardModelTask:
    cfg = rm_config(model, rm_files(tmp_path), tmp_path / "run", task=task_options)
    cfg["data"]["max_length"] = max_length
    return RewardModelTask(RunConfig.from_dict(cfg))


def record(prompt: str, chosen: str, rejected: str, where: str = "t.jsonl, line 1") -> dict:
    """A pairwise record in the normalised form of `lmtune.data.preference`."""
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "where": where,
    }


def tokenizer_of(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ---- registry, options, metrics ---------------------------------------------------------------------
def test_registered_with_no_capabilities_it_lacks():
    assert get_task_class("reward-model") is RewardModelTask
    # Only what it does: score {prompt, completion} inputs (so a run of it can be a GRPO reward).
    assert RewardModelTask.capabilities == frozenset({"reward-scores"})
    assert RewardModelTask.peft_task_type == "SEQ_CLS"
    assert set(RewardModelTask.peft_head_names) == {"score", "classifier"}
    with pytest.raises(LmtuneError, match="render"):
        RunConfig.from_dict({"model": "x", "task": {"type": "reward-model", "render": "html"}})


def test_pair_metrics_match_a_hand_computation():
    chosen = np.array([2.0, 0.5, 1.0, -1.0])
    rejected = np.array([1.0, 1.5, 1.0, -3.0])  # margins 1, -1, 0 (a tie counts as wrong), 2
    m = pair_metrics(chosen, rejected)
    assert m["accuracy"] == 0.5 and m["pairs"] == 4
    assert np.isclose(m["margin"], 0.5)
    assert np.isclose(m["chosen_reward"], 0.625) and np.isclose(m["rejected_reward"], 0.125)
    expected = np.mean([np.log1p(np.exp(-x)) for x in (1.0, -1.0, 0.0, 2.0)])
    assert np.isclose(m["eval_loss"], expected)
    with pytest.raises(LmtuneError, match="no preference pairs"):
        pair_metrics(np.array([]), np.array([]))


def test_trainer_metrics_read_one_row_per_pair(tiny_bert, tmp_path):
    compute = task_for(tiny_bert, tmp_path).trainer_metrics()

    class Prediction:
        predictions = np.array([[2.0, 1.0], [0.5, 1.5]])

    metrics = compute(Prediction())
    assert metrics == {"accuracy": 0.5, "margin": 0.0, "chosen_reward": 1.25, "rejected_reward": 1.25}


# ---- rendering and tokenization ----------------------------------------------------------------------
def test_auto_render_follows_the_architecture(tiny_bert, tiny_llama, tmp_path):
    assert task_for(tiny_bert, tmp_path).resolved_options() == {"render": "text"}
    assert task_for(tiny_llama, tmp_path).resolved_options() == {"render": "chat"}
    assert task_for(tiny_bert, tmp_path, render="chat").resolved_options() == {"render": "chat"}


def test_encoders_see_prompt_and_answer_as_a_text_pair(tiny_bert, tmp_path):
    task = task_for(tiny_bert, tmp_path)
    tokenizer = tokenizer_of(tiny_bert)
    dataset = task.to_dataset([record("How was it?", "It was great.", "It was bad.")])
    (feature,) = task.encode(dataset, tokenizer)
    expected = tokenizer("User: How was it?", "It was great.")
    assert feature["chosen_ids"] == expected["input_ids"]
    assert feature["chosen_token_type_ids"] == expected["token_type_ids"]
    assert feature["rejected_ids"] == tokenizer("User: How was it?", "It was bad.")["input_ids"]
    assert feature["length"] == max(len(feature["chosen_ids"]), len(feature["rejected_ids"]))
    assert feature["truncated"] is False
    long = task.to_dataset([record("How was it?", "great " * 80, "bad")])
    (cut,) = task.encode(long, tokenizer)
    assert cut["truncated"] is True and len(cut["chosen_ids"]) == 48 and len(cut["rejected_ids"]) < 48


def test_decoders_render_the_chat_template_and_keep_the_end(tiny_llama, tmp_path):
    task = task_for(tiny_llama, tmp_path)
    tokenizer = tokenizer_of(tiny_llama)
    messages = record("How was it?", "It was great.", "It was bad.")
    (feature,) = task.encode(task.to_dataset([messages]), tokenizer)
    text = tokenizer.apply_chat_template(messages["prompt"] + messages["chosen"], tokenize=False)
    assert feature["chosen_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "chosen_token_type_ids" not in feature
    # A long conversation loses its beginning: the answer and its end-of-turn stay.
    long = record("word " * 30, "It was great.", "It was bad.")
    roomy = task_for(tiny_llama, tmp_path, max_length=200)
    full = roomy.encode_one(tokenizer, long["prompt"], long["chosen"])[0]["input_ids"]
    short = task_for(tiny_llama, tmp_path, max_length=len(full) - 5)
    (cut,) = short.encode(short.to_dataset([long]), tokenizer)
    assert cut["truncated"] is True and cut["chosen_ids"] == full[5:]


def test_decoders_without_a_chat_template_get_chatml(tiny_llama, tmp_path):
    task = task_for(tiny_llama, tmp_path)
    tokenizer = tokenizer_of(tiny_llama)
    tokenizer.chat_template = None
    (feature,) = task.encode(task.to_dataset([record("Hi", "Hello", "Go away")]), tokenizer)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tokenizer.decode(feature["chosen_ids"]).startswith("<|im_start|>user\nHi<|im_end|>")


def test_a_long_prompt_is_cut_and_the_answer_kept(tiny_bert, tmp_path):
    task = task_for(tiny_bert, tmp_path)
    tokenizer = tokenizer_of(tiny_bert)
    (feature,) = task.encode(
        task.to_dataset([record("word " * 60, "It was great.", "It was bad.")]), tokenizer
    )
    answer = tokenizer("It was great.")["input_ids"][1:]  # without [CLS], with the final [SEP]
    assert feature["truncated"] is True and len(feature["chosen_ids"]) == 48
    assert feature["chosen_ids"][-len(answer) :] == answer
    assert feature["chosen_token_type_ids"][-len(answer) :] == [1] * len(answer)


def test_chat_render_needs_an_eos_token(tiny_bert, tmp_path):
    task = task_for(tiny_bert, tmp_path, render="chat")
    with pytest.raises(LmtuneError, match="no EOS token"):
        task.encode(task.to_dataset([record("Hi", "Hello", "Go away")]), tokenizer_of(tiny_bert))


def test_pair_collator_puts_chosen_first_as_trl_does():
    batch = PairCollator(pad_token_id=9)(
        [
            {"chosen_ids": [1, 2, 3], "rejected_ids": [4], "chosen_token_type_ids": [0, 0, 1],
             "rejected_token_type_ids": [0], "length": 3, "truncated": False},
            {"chosen_ids": [5], "rejected_ids": [6, 7], "chosen_token_type_ids": [0],
             "rejected_token_type_ids": [0, 1], "length": 2, "truncated": False},
        ]
    )  # fmt: skip
    assert batch["input_ids"].tolist() == [[1, 2, 3], [5, 9, 9], [4, 9, 9], [6, 7, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 1, 0]]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}


def test_a_decoder_reward_does_not_depend_on_padding(tiny_llama, tmp_path):
    task = task_for(tiny_llama, tmp_path)
    tokenizer = tokenizer_of(tiny_llama)
    model = task.build_model(tiny_llama, fresh_head=True)
    assert model.config.num_labels == 1
    short = {"input_ids": tokenizer("a short answer")["input_ids"]}
    long = {"input_ids": tokenizer("a much longer answer that pads the short one in its batch")["input_ids"]}
    alone = task.rewards(model, tokenizer, [short], batch_size=1)
    batched = task.rewards(model, tokenizer, [short, long], batch_size=2)
    assert np.isclose(alone[0], batched[0], atol=1e-5)


# ---- training end to end ----------------------------------------------------------------------------
def test_tiny_bert_lora_end_to_end(tiny_bert, tmp_path):
    files = rm_files(tmp_path)
    cfg = rm_config(tiny_bert, files, tmp_path / "run", train={"learning_rate": 3e-3})
    run = lmtune.train(RunConfig.from_dict(cfg))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("baseline", "validation", "test"):
        assert {"accuracy", "margin", "chosen_reward", "rejected_reward", "eval_loss"} <= set(metrics[split])
        assert np.isclose(
            metrics[split]["margin"], metrics[split]["chosen_reward"] - metrics[split]["rejected_reward"]
        )
    assert metrics["test"]["pairs"] == 16 and metrics["data"]["pairs"]["train"]["pairs"] == 48
    assert metrics["data"]["truncated_train"] == 0
    config = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert config.task.model_extra["render"] == "text" and config.train.metric_for_best_model == "accuracy"
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    evals = [row for row in log if "eval_accuracy" in row]
    assert evals and {"eval_margin", "eval_chosen_reward", "eval_rejected_reward"} <= set(evals[-1])
    assert any("accuracy" in row and "margin" in row for row in log)  # TRL's train-time logs
    assert "Pairs with the lowest margin (test)" in (tmp_path / "run" / "report.md").read_text()
    assert "tags: [lmtune, reward-model" in (tmp_path / "run" / "README.md").read_text()  # not TRL's card
    adapter = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert "classifier" in adapter["modules_to_save"] and adapter["task_type"] == "SEQ_CLS"

    loaded = lmtune.load_run(tmp_path / "run")
    inputs = [
        "Of course, I would be glad to help.",
        {"prompt": "Help me with my essay?", "completion": "No. Do it yourself."},
        {"messages": [{"role": "user", "content": "Help?"}, {"role": "assistant", "content": "Sure!"}]},
        {"prompt": "Help me with my essay?", "chosen": "Happy to help.", "rejected": "Go away."},
    ]
    out = run.predict(inputs)
    assert loaded.predict(inputs) == out
    assert set(out[0]) == {"text", "score"} and set(out[1]) == {"prompt", "completion", "score"}
    assert out[3]["preferred"] in ("chosen", "rejected")
    assert np.isclose(out[3]["margin"], out[3]["chosen_score"] - out[3]["rejected_score"], atol=1e-5)
    evaluated = loaded.evaluate(files["test"])
    assert np.isclose(evaluated["accuracy"], metrics["test"]["accuracy"])
    assert np.isclose(evaluated["margin"], metrics["test"]["margin"])
    from_file = loaded.predict_file(files["test"])
    assert len(from_file) == 16 and {"chosen_score", "rejected_score", "preferred"} <= set(from_file[0])
    assert np.mean([r["preferred"] == "chosen" for r in from_file]) == evaluated["accuracy"]
    from typer.testing import CliRunner

    from lmtune import cli

    scored = tmp_path / "scored.jsonl"
    args = ["predict", str(tmp_path / "run"), "--input", str(files["test"]), "--output", str(scored)]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in scored.read_text().splitlines()] == from_file


def test_the_trainer_is_trl_reward_trainer_with_lmtune_mixed_in():
    from trl import RewardTrainer

    from lmtune.training.trainer import LmtuneTrainer

    cls = reward_trainer_class()
    assert issubclass(cls, LmtuneTrainer) and issubclass(cls, RewardTrainer)
    assert cls.__mro__.index(LmtuneTrainer) < cls.__mro__.index(RewardTrainer)


def test_tiny_llama_lora_trains_the_score_head_and_reloads(tiny_llama, tmp_path):
    files = rm_files(tmp_path, n_train=16, n_held_out=8)
    cfg = rm_config(tiny_llama, files, tmp_path / "run", train={"max_steps": 4, "eval_strategy": "no"})
    run = lmtune.train(RunConfig.from_dict(cfg))
    assert run.config.task.model_extra["render"] == "chat"
    adapter = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert "score" in adapter["modules_to_save"]
    assert np.isfinite(run.metrics["test"]["margin"]) and run.metrics["train"]["steps"] == 4
    # Every token of both answers was trained on; none is padding counted as real.
    assert 0 < run.metrics["train"]["tokens_per_second"] <= run.metrics["train"]["padded_tokens_per_second"]
    inputs = [{"prompt": "Help me with my bike?", "chosen": "Sure, glad to help.", "rejected": "No."}]
    assert lmtune.load_run(tmp_path / "run").predict(inputs) == run.predict(inputs)


def test_full_fine_tuning_saves_the_whole_reward_model(tiny_bert, tmp_path):
    files = rm_files(tmp_path, n_train=16, n_held_out=8)
    cfg = rm_config(tiny_bert, files, tmp_path / "run", method="full", train={"max_steps": 3})
    run = lmtune.train(RunConfig.from_dict(cfg))
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "reward"} and config["problem_type"] == "regression"
    texts = ["Certainly, I can help.", "Stop bothering me."]
    assert lmtune.load_run(tmp_path / "run").predict(texts) == run.predict(texts)


def test_resuming_from_a_checkpoint_ends_bit_identical(tiny_bert, tmp_path):
    from safetensors.torch import load_file

    from lmtune.training.checkpoints import MARKER

    out = tmp_path / "run"
    train = {"epochs": 2, "save_strategy": "steps", "save_steps": 2, "eval_strategy": "no"}
    train |= {"keep_checkpoints": True, "save_total_limit": 10, "learning_rate": 3e-3}
    cfg = RunConfig.from_dict(rm_config(tiny_bert, rm_files(tmp_path), out, train=train))
    lmtune.train(cfg)
    uninterrupted = load_file(out / "model" / "adapter_model.safetensors")
    # As if killed while sealing checkpoint 6: the run resumes from checkpoint 4.
    state = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(state | {"status": "running"}))
    (out / "checkpoint-6" / MARKER).unlink()
    for later in out.glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > 6:
            shutil.rmtree(later)
    resumed = lmtune.train(cfg)
    assert resumed.metrics["train"]["resumed_from"] == "checkpoint-4"
    weights = load_file(out / "model" / "adapter_model.safetensors")
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights)


# ---- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"text": "  "}, "expected a non-empty text"),
        ({"prompt": "Hi", "chosen": "Hello"}, "needs both 'chosen' and 'rejected'"),
        ({"prompt": "Hi", "chosen": "", "rejected": "No"}, "field 'chosen': the text is empty"),
        ({"chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "expected the assistant's"),
        ({"completion": [{"role": "robot", "content": "a"}]}, "unknown role 'robot'"),
        ({"completion": [{"role": "assistant"}]}, r"\{role, content\} object"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "starts with the assistant"),
        ({"messages": [{"role": "user", "content": "a"}]}, "does not end with an assistant turn"),
        ({"prompt": [], "completion": "a"}, "non-empty list"),
    ],
)
def test_bad_predict_inputs_are_named(tiny_bert, tmp_path, item, message):
    task = task_for(tiny_bert, tmp_path)
    with pytest.raises(LmtuneError, match=message):
        task.check_input(2, item)


def test_read_inputs_checks_pairs_and_texts_with_their_line(tiny_bert, tmp_path):
    task = task_for(tiny_bert, tmp_path)
    good = write_jsonl(tmp_path / "texts.jsonl", [{"text": "hello"}, {"prompt": "Hi", "completion": "Hey"}])
    assert task.read_inputs(str(good)) == [{"text": "hello"}, {"prompt": "Hi", "completion": "Hey"}]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello"}, {"text": ""}])
    with pytest.raises(LmtuneError, match=r"bad\.jsonl, line 2: expected a non-empty text"):
        task.read_inputs(str(bad))
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "Hi", "chosen": "Hey", "rejected": "Hey"}])
    with pytest.raises(LmtuneError, match=r"same\.jsonl, line 1.*the same answer"):
        task.read_inputs(str(same))


def test_prompt_learning_is_refused(tiny_bert, tmp_path):
    cfg = rm_config(tiny_bert, rm_files(tmp_path), tmp_path / "run", method="prompt-tuning")
    with pytest.raises(LmtuneError, match="accepts-virtual-tokens"):
        lmtune.train(RunConfig.from_dict(cfg))


# ---- real models --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_lora_reward_model_learns_the_rule(minilm_path, tmp_path):
    files = rm_files(tmp_path, n_train=64, n_held_out=32)
    cfg = rm_config(
        "all-MiniLM-L6-v2",
        files,
        tmp_path / "run",
        train={"epochs": 3, "eval_strategy": "no", "save_strategy": "no"},
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    metrics = run.metrics
    print(
        "MiniLM reward model:", metrics["baseline"], "->", metrics["test"], metrics["train"]["runtime_s"], "s"
    )
    assert metrics["test"]["accuracy"] >= 0.9
    assert metrics["test"]["margin"] > metrics["baseline"]["margin"]
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.predict_file(files["test"]) == run.predict_file(files["test"])


@pytest.mark.slow
def test_smollm2_lora_reward_model_runs(smollm_path, tmp_path):
    files = rm_files(tmp_path, n_train=32, n_held_out=16)
    cfg = rm_config(
        "SmolLM2-135M-Instruct",
        files,
        tmp_path / "run",
        method={"name": "lora", "r": 8},
        data={"max_length": 96},
        train={"max_steps": 8, "batch_size": 4, "eval_strategy": "no", "save_strategy": "no"},
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    metrics = run.metrics
    print(
        "SmolLM2 reward model:",
        metrics["baseline"],
        "->",
        metrics["test"],
        metrics["train"]["runtime_s"],
        "s",
    )
    assert run.config.task.model_extra["render"] == "chat"
    assert metrics["test"]["accuracy"] >= metrics["baseline"]["accuracy"]
    assert metrics["test"]["margin"] > metrics["baseline"]["margin"]
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.predict_file(files["test"]) == run.predict_file(files["test"])
