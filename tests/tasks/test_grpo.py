"""GRPO: reading prompts and answers, options, TRL's trainer end to end, reward wiring, SmolLM2."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.tasks import get_task_class
from lmtune.tasks.grpo import GrpoTask, grpo_trainer_class


def arithmetic(pairs: list[tuple[int, int]]) -> list[dict]:
    return [{"prompt": f"What is {a}+{b}?", "answer": str(a + b)} for a, b in pairs]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def grpo_config(model: str, train_file: Path, out: Path, **sections: dict) -> dict:
    cfg: dict = {
        "model": model,
        "task": {"type": "grpo", "num_generations": 2, "max_new_tokens": 6},
        "method": "lora",
        "data": {"train": str(train_file), "max_length": 64},
        "train": {
            "max_steps": 2,
            "batch_size": 4,
            "report_to": ["none"],
            "logging_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "no",
        },
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg[key], dict) else value
    return cfg


def task_for(model: str, train: Path, tmp_path: Path, data: dict | None = None, **options) -> GrpoTask:
    cfg = grpo_config(model, train, tmp_path / "run", task=options, data=data or {})
    return GrpoTask(RunConfig.from_dict(cfg))


# ---- registry and options -------------------------------------------------------------------------
def test_registered_and_decoder_only_capabilities():
    assert get_task_class("grpo") is GrpoTask
    assert GrpoTask.supports("bf16-on-cpu") and not GrpoTask.supports("accepts-virtual-tokens")
    assert GrpoTask.default_metric == "reward" and GrpoTask.greater_is_better


def test_the_trainer_is_trl_grpo_trainer_with_lmtune_mixed_in():
    from trl import GRPOTrainer

    from lmtune.training.trainer import LmtuneTrainer

    cls = grpo_trainer_class()
    assert cls.__mro__[1:3] == (LmtuneTrainer, GRPOTrainer)
    assert cls.compute_loss is LmtuneTrainer.compute_loss  # which hands GRPO's loss through (no labels)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"reward": "mod:score"}, r"runs Python code.*--allow-code"),
        ({"reward": "exact_mach"}, "did you mean 'exact_match'"),
        ({"reward": "regex"}, "need task.reward_pattern"),
        ({"reward": ["exact_match", "numeric_match"], "reward_weights": [1.0]}, "1 weights for 2 rewards"),
        ({"num_generations": 1}, "task.num_generations"),
        ({"temperature": 0}, "task.temperature"),
        ({"packing": True}, "unknown key 'task.packing'"),
    ],
)
def test_bad_options_are_refused_when_the_config_is_built(tiny_llama, tmp_path, options, message):
    train = write_jsonl(tmp_path / "t.jsonl", arithmetic([(1, 2)]))
    with pytest.raises(LmtuneError, match=message):
        RunConfig.from_dict(grpo_config(tiny_llama, train, tmp_path / "run", task=options))


def test_user_code_is_accepted_with_allow_code(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", arithmetic([(1, 2)]))
    cfg = RunConfig.from_dict(
        grpo_config(tiny_llama, train, tmp_path / "run", task={"reward": "mod:score", "allow_code": True})
    )
    assert cfg.task.options.reward == ["mod:score"]


# ---- reading ---------------------------------------------------------------------------------------
def test_prompts_are_texts_or_conversations_and_answers_become_text(tiny_llama, tmp_path):
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    train = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"prompt": "What is 1+2?", "answer": 3},
            {"prompt": conversation, "answer": "4"},
            {"prompt": "Hi", "answer": 2.5},
        ],
    )
    records, _ = task_for(tiny_llama, train, tmp_path).read_records(str(train), "train")
    assert records[0]["prompt"] == [{"role": "user", "content": "What is 1+2?"}]
    assert records[1]["prompt"] == conversation
    assert [r["answer"] for r in records] == ["3", "4", "2.5"]
    assert records[2]["where"].endswith("t.jsonl, line 3")


def test_question_and_solution_columns_csv_conversations_and_a_system_prompt(tiny_llama, tmp_path):
    path = tmp_path / "t.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "solution"])
        writer.writerow(["What is 1+2?", "1 + 2 = 3\n#### 3"])
        writer.writerow([json.dumps([{"role": "user", "content": "What is 2+2?"}]), "4"])
        writer.writerow(["[not json] 5+5?", "10"])
    task = task_for(tiny_llama, path, tmp_path, system="Answer with a number.")
    records, _ = task.read_records(str(path), "train")
    assert (task.prompt_column, task.answer_column) == ("question", "solution")
    system = {"role": "system", "content": "Answer with a number."}
    assert records[1]["prompt"] == [system, {"role": "user", "content": "What is 2+2?"}]
    assert records[2]["prompt"] == [system, {"role": "user", "content": "[not json] 5+5?"}]
    assert records[0]["answer"] == "1 + 2 = 3\n#### 3"


def test_explicit_columns_and_an_optional_answer(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"q": "Say hi", "gold": "hi"}, {"q": "Say yo"}])
    task = task_for(
        tiny_llama,
        train,
        tmp_path,
        {"text_column": "q", "label_column": "gold"},
        reward="regex",
        reward_pattern="h",
    )
    records, _ = task.read_records(str(train), "train")
    assert [r["answer"] for r in records] == ["hi", None]
    with pytest.raises(LmtuneError, match="no prompt column 'question'"):
        task_for(tiny_llama, train, tmp_path, {"text_column": "question"}).read_records(str(train), "train")


@pytest.mark.parametrize(
    "record, message",
    [
        ({"answer": "3"}, "cannot find the prompt column"),
        ({"prompt": "  ", "answer": "3"}, "line 2, column 'prompt': the prompt is empty"),
        (
            {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "must end with a user turn",
        ),
        ({"prompt": [{"role": "user"}], "answer": "3"}, "message 1: expected an object with text fields"),
        ({"prompt": [{"role": "robot", "content": "a"}], "answer": "3"}, "unknown role 'robot'"),
        ({"prompt": "What?"}, "line 2: no reference answer .* which reward exact_match compares with"),
        ({"prompt": "What?", "answer": True}, "expected the reference answer as text or a number, got bool"),
    ],
)
def test_bad_records_name_file_line_and_field(tiny_llama, tmp_path, record, message):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "What is 1+1?", "answer": "2"}, record])
    if "prompt" not in record:
        train = write_jsonl(tmp_path / "t.jsonl", [record])
    with pytest.raises(LmtuneError, match=message):
        task_for(tiny_llama, train, tmp_path).read_records(str(train), "train")


def test_numeric_match_needs_a_number_in_every_answer(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Capital of France?", "answer": "Paris"}])
    with pytest.raises(LmtuneError, match="line 1: the answer 'Paris' holds no number"):
        task_for(tiny_llama, train, tmp_path, reward="numeric_match").read_records(str(train), "train")


def test_predict_inputs_are_lines_or_prompt_records(tiny_llama, tmp_path):
    task = task_for(tiny_llama, write_jsonl(tmp_path / "t.jsonl", arithmetic([(1, 2)])), tmp_path)
    lines = tmp_path / "prompts.txt"
    lines.write_text("What is 1+1?\n\nWhat is 2+2?\n", encoding="utf-8")
    assert task.read_inputs(str(lines)) == [{"text": "What is 1+1?"}, {"text": "What is 2+2?"}]
    records = write_jsonl(tmp_path / "p.jsonl", [{"question": "What is 3+3?"}])
    assert task.read_inputs(str(records)) == [{"messages": [{"role": "user", "content": "What is 3+3?"}]}]


def test_tokenize_keeps_the_records_for_trl_and_refuses_a_long_prompt(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    train = write_jsonl(
        tmp_path / "t.jsonl", [*arithmetic([(1, 2), (3, 4)]), {"prompt": "word " * 80, "answer": "1"}]
    )
    task = task_for(tiny_llama, train, tmp_path)
    records, _ = task.read_records(str(train), "train")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenized = task.tokenize(task.to_dataset(records[:2]), tokenizer)
    assert tokenized.column_names == ["prompt", "answer", "length"]
    assert (
        tokenized[0]["prompt"] == [{"role": "user", "content": "What is 1+2?"}]
        and tokenized[0]["answer"] == "3"
    )
    rendered = tokenizer.apply_chat_template(
        tokenized[0]["prompt"], tokenize=False, add_generation_prompt=True
    )
    assert tokenized[0]["length"] == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    with pytest.raises(LmtuneError, match=r"line 3: the prompt has \d+ tokens, more than data.max_length=64"):
        task.tokenize(task.to_dataset(records), tokenizer)


def test_batches_must_hold_whole_groups(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", arithmetic([(a, b) for a in range(4) for b in range(4)]))
    cfg = grpo_config(
        tiny_llama, train, tmp_path / "run", task={"num_generations": 4}, train={"batch_size": 6}
    )
    with pytest.raises(
        LmtuneError, match=r"train.batch_size gives 6 completions per batch.*num_generations=4"
    ):
        lmtune.train(RunConfig.from_dict(cfg))
    cfg["train"] |= {"batch_size": 4, "eval_strategy": "epoch", "eval_batch_size": 2}
    with pytest.raises(LmtuneError, match=r"train\.eval_batch_size gives 2 completions"):
        lmtune.train(RunConfig.from_dict(cfg))
    assert not (tmp_path / "run").exists()


# ---- end to end ------------------------------------------------------------------------------------
RECORDING_REWARD = """
import json

def distinct_characters(prompts, completions, answer, length, **kwargs):
    with open({log!r}, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({{"n": len(completions), "answer": answer, "length": length,
                             "kwargs": sorted(kwargs), "completion": completions[0]}}) + "\\n")
    return [len(set(c[-1]["content"])) / 10 for c in completions]
"""


def test_tiny_llama_grpo_end_to_end(tiny_llama, tmp_path):
    log = tmp_path / "calls.jsonl"
    code = tmp_path / "my_reward.py"
    code.write_text(RECORDING_REWARD.format(log=str(log)), encoding="utf-8")
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic([(a, b) for a in range(4) for b in range(4)]))
    task = {"reward": ["exact_match", f"{code}:distinct_characters"], "allow_code": True, "beta": 0.04}
    cfg = grpo_config(tiny_llama, train, tmp_path / "run", task=task, train={"max_steps": 3})
    run = lmtune.train(RunConfig.from_dict(cfg))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("baseline", "validation", "test"):
        assert {"reward", "reward_exact_match", "reward_distinct_characters"} <= set(metrics[split])
        assert metrics[split]["examples"] == 2 and metrics[split]["mean_completion_tokens"] > 0
        assert metrics[split]["generation_tokens_per_second"] > 0
    assert len(metrics["baseline"]["samples"]) == 2 and metrics["train"]["tokens_per_second"] > 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    trained = [c for c in calls if c["n"] == 4]  # batches of 4 completions, 2 per prompt
    assert len(trained) == 3
    assert {"completion_ids", "trainer_state", "log_extra", "log_metric"} <= set(trained[0]["kwargs"])
    assert trained[0]["answer"][0] == trained[0]["answer"][1] and all(n > 0 for n in trained[0]["length"])
    assert trained[0]["completion"][0]["role"] == "assistant"
    steps = [
        r
        for r in map(json.loads, (tmp_path / "run" / "train_log.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert len(steps) == 3 and all(r["generation_tokens_per_second"] > 0 for r in steps)
    assert {"rewards/distinct_characters/mean", "rewards/exact_match/mean", "kl", "reward"} <= set(steps[0])
    assert any(r["grad_norm"] > 0 for r in steps)  # the varying reward gives advantages, hence gradients
    _check_saved_adapter(tmp_path / "run")
    config = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert (config.data.text_column, config.data.label_column) == ("prompt", "answer")
    assert config.train.metric_for_best_model == "reward"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Reward before and after training (test, greedy)" in report and "| before |" in report
    loaded = lmtune.load_run(tmp_path / "run")
    prompts = ["What is 2+2?", {"messages": [{"role": "user", "content": "What is 1+3?"}]}]
    assert loaded.predict(prompts, options={"max_new_tokens": 4}) == run.predict(
        prompts, options={"max_new_tokens": 4}
    )
    evaluated = loaded.evaluate(train)
    assert evaluated["examples"] == 16 and "reward_exact_match" in evaluated


def _check_saved_adapter(run_dir: Path) -> None:
    """One adapter (TRL's "ref" copy dropped), trained: LoRA's B matrices moved from zero."""
    from safetensors.torch import load_file

    model_dir = run_dir / "model"
    assert not (model_dir / "ref").exists()
    weights = load_file(model_dir / "adapter_model.safetensors")
    assert not any(".ref." in name for name in weights)
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in weights.items())


def test_an_epoch_counts_every_completion_of_every_group(tiny_llama, tmp_path, monkeypatch):
    """12 prompts x 2 completions in batches of 4 completions: 6 steps an epoch, as TRL's sampler
    makes them; the methods (AdaLoRA's budget, gradual unfreezing) get the same count."""
    from lmtune.methods.lora import LoraMethod

    seen: list[int] = []
    apply = LoraMethod.apply

    def spy(self, model, ctx):
        seen.append(ctx.total_steps)
        return apply(self, model, ctx)

    monkeypatch.setattr(LoraMethod, "apply", spy)
    pairs = [(a, b) for a in range(4) for b in range(4)]
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic(pairs[:12]))
    held_out = str(write_jsonl(tmp_path / "held_out.jsonl", arithmetic(pairs[12:])))
    cfg = grpo_config(
        tiny_llama,
        train,
        tmp_path / "run",
        data={"validation": held_out, "test": held_out},
        train={"max_steps": None, "epochs": 1},
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    assert run.metrics["train"]["steps"] == 6 and seen == [6]


def test_prompt_tuning_is_refused(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", arithmetic([(a, b) for a in range(3) for b in range(3)]))
    with pytest.raises(LmtuneError, match="accepts-virtual-tokens"):
        lmtune.train(
            RunConfig.from_dict(grpo_config(tiny_llama, train, tmp_path / "run", method="prompt-tuning"))
        )


def test_a_reward_model_run_is_a_reward(tiny_bert, tiny_llama, tmp_path):
    """A reward-model run scores the completions (its task declares reward-scores)."""
    pairs = [{"prompt": f"What is {i}+1?", "chosen": str(i + 1), "rejected": "no idea"} for i in range(12)]
    rm_train = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    rm_cfg = {
        "model": tiny_bert,
        "task": {"type": "reward-model"},
        "data": {"train": str(rm_train), "max_length": 32},
        "train": {
            "max_steps": 1,
            "batch_size": 4,
            "report_to": ["none"],
            "eval_strategy": "no",
            "save_strategy": "no",
        },
        "output_dir": str(tmp_path / "rm"),
    }
    lmtune.train(RunConfig.from_dict(rm_cfg))
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic([(a, b) for a in range(3) for b in range(3)]))
    cfg = grpo_config(tiny_llama, train, tmp_path / "run", task={"reward": str(tmp_path / "rm")})
    run = lmtune.train(RunConfig.from_dict(cfg))
    steps = [
        r
        for r in map(json.loads, (tmp_path / "run" / "train_log.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert steps and all("rewards/reward_model/mean" in r for r in steps)
    assert isinstance(run.metrics["test"]["reward_reward_model"], float)
    assert run.config.task.options.reward == [str((tmp_path / "rm").resolve())]


# ---- the real model ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_lora_grpo_raises_the_exact_match_reward(tmp_path):
    """SmolLM2 answers "What is 3+7?" with "3 + 7 = 20" often enough; GRPO's groups of 4 sampled
    answers, scored by exact_match, make the right ones likelier within 12 steps.

    Measured (this setup, seeds 42 and 1): greedy test exact match 0.375 -> 0.81 and 0.75; the
    sampled training reward rises from ~0.1 to ~0.5. Generation on two CPU cores: 70-80 tokens/s
    (16 sequences) when the cores are free, far less when they are shared.
    """
    import random

    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    random.Random(0).shuffle(pairs)
    test = write_jsonl(tmp_path / "test.jsonl", arithmetic(pairs[:16]))
    cfg = grpo_config(
        "SmolLM2-135M-Instruct",
        write_jsonl(tmp_path / "train.jsonl", arithmetic(pairs[20:])),
        tmp_path / "run",
        task={"reward": "exact_match", "num_generations": 4, "max_new_tokens": 8, "sample_generations": 16},
        method={"name": "lora", "r": 8},
        data={
            "validation": str(write_jsonl(tmp_path / "dev.jsonl", arithmetic(pairs[16:20]))),
            "test": str(test),
        },
        train={"max_steps": 12, "batch_size": 16, "learning_rate": 1e-3, "warmup_ratio": 0.0},
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    before, after = run.metrics["baseline"], run.metrics["test"]
    print("SmolLM2 GRPO exact match (test, greedy):", before["reward"], "->", after["reward"])
    print("generation tokens/s (test, greedy, batch 16):", after["generation_tokens_per_second"])
    assert after["reward"] >= before["reward"] + 0.25
    steps = [
        r
        for r in map(json.loads, (tmp_path / "run" / "train_log.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    rewards_ = [r["reward"] for r in steps]
    assert sum(rewards_[-4:]) > sum(rewards_[:4])
    assert all(math.isfinite(r["loss"]) and r["generation_tokens_per_second"] > 0 for r in steps)
    _check_saved_adapter(tmp_path / "run")
    loaded = lmtune.load_run(tmp_path / "run")
    assert loaded.evaluate(test)["reward"] == after["reward"]  # greedy: reloading reproduces it
