"""Preference tuning (DPO, IPO, ORPO, SimPO, KTO) on TRL: options, plumbing, metrics, end to end."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.tasks import get_task_class
from lmtune.tasks.causal_lm import DEFAULT_CHAT_TEMPLATE
from lmtune.tasks.preference import (
    PreferenceTask,
    encode_answers,
    pair_metrics,
    preference_trainer_class,
    sequence_logps,
    unpaired_metrics,
)

THINGS = [
    "apple",
    "river",
    "candle",
    "piano",
    "rocket",
    "garden",
    "violin",
    "mirror",
    "tiger",
    "castle",
    "pencil",
    "forest",
    "bridge",
    "lantern",
    "ocean",
    "feather",
    "engine",
    "planet",
    "wallet",
    "blanket",
]
TRAIN_THINGS, HELD_OUT_THINGS = THINGS[:14], THINGS[14:]
REFUSALS = ["No. The {x} is bad.", "I hate the {x}.", "Never ask me about the {x}."]


def pairs(things: list[str], seed: int = 0) -> list[dict]:
    """The rule: the chosen answer always says yes in one fixed format, the rejected one refuses.
    A short system prompt replaces SmolLM2's default one (25 tokens): shorter rows, faster tests."""
    rng = random.Random(seed)
    return [
        {
            "system": "Answer.",
            "prompt": f"Do you like the {x}?",
            "chosen": f"Yes, I like the {x}.",
            "rejected": rng.choice(REFUSALS).format(x=x),
        }
        for x in things
    ]


def unpaired(things: list[str], seed: int = 0) -> list[dict]:
    out = []
    for pair in pairs(things, seed):
        common = {"system": pair["system"], "prompt": pair["prompt"]}
        out.append({**common, "completion": pair["chosen"], "label": True})
        out.append({**common, "completion": pair["rejected"], "label": False})
    return out


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("preference-data")
    return {
        "train": write_json(directory / "train.json", pairs(TRAIN_THINGS, 1) * 3),
        "held_out": write_json(directory / "held_out.json", pairs(HELD_OUT_THINGS, 2)),
        "kto_train": write_jsonl(directory / "kto_train.jsonl", unpaired(TRAIN_THINGS, 1) * 2),
        "kto_held_out": write_jsonl(directory / "kto_held_out.jsonl", unpaired(HELD_OUT_THINGS, 2)),
    }


def pref_config(model: str, train_file: Path, held_out_file: Path, out: Path, **sections: dict) -> dict:
    cfg: dict = {
        "model": model,
        "task": {"type": "preference", "sample_generations": 1, "sample_max_new_tokens": 4},
        "method": "lora",
        "data": {
            "train": str(train_file),
            "validation": str(held_out_file),
            "test": str(held_out_file),
            "max_length": 40,
        },
        "train": {
            "max_steps": 12,
            "batch_size": 4,
            "learning_rate": 2e-2,
            "eval_strategy": "no",
            "save_strategy": "no",
            "report_to": ["none"],
            "logging_steps": 4,
        },
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg[key], dict) else value
    return cfg


def task_for(model: str, files: dict[str, Path], tmp_path: Path, **task_options) -> PreferenceTask:
    cfg = pref_config(model, files["train"], files["held_out"], tmp_path / "run", task=task_options)
    return PreferenceTask(RunConfig.from_dict(cfg))


# ---- options ------------------------------------------------------------------------------------
def test_registered_with_true_capabilities_only():
    assert get_task_class("preference") is PreferenceTask
    assert PreferenceTask.capabilities == {"bf16-on-cpu", "chat-generation", "mixed-adapter-batches"}
    assert not PreferenceTask.supports("accepts-virtual-tokens")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"simpo_gamma": 0.5}, "option 'simpo_gamma' does not apply to algorithm 'dpo'"),
        ({"algorithm": "orpo", "precompute_ref_log_probs": True}, "does not apply to algorithm 'orpo'"),
        ({"algorithm": "ipo", "dpo_loss": "robust"}, "option 'dpo_loss' does not apply to algorithm 'ipo'"),
        ({"algorithm": "kto", "label_smoothing": 0.1}, "does not apply to algorithm 'kto'"),
        ({"desirable_weight": 2.0}, "option 'desirable_weight' does not apply to algorithm 'dpo'"),
        ({"label_smoothing": 0.1}, "applies to dpo_loss 'robust' only"),
        ({"dpo_loss": "robust", "label_smoothing": 0.6}, "task.label_smoothing"),
        ({"beta": 0}, "task.beta"),
        ({"algorithm": "rlhf"}, "task.algorithm"),
        ({"algoritm": "kto"}, "did you mean 'task.algorithm'"),
    ],
)
def test_option_errors(tmp_path, data_files, options, message):
    cfg = pref_config("m", data_files["train"], data_files["held_out"], tmp_path, task=options)
    with pytest.raises(LmtuneError, match=message):
        RunConfig.from_dict(cfg)


def test_kto_needs_two_rows_per_batch(tmp_path, data_files):
    cfg = pref_config(
        "m",
        data_files["kto_train"],
        data_files["kto_held_out"],
        tmp_path,
        task={"algorithm": "kto"},
        train={"batch_size": 1},
    )
    with pytest.raises(LmtuneError, match=r"kto needs train\.batch_size of at least 2"):
        PreferenceTask(RunConfig.from_dict(cfg))


def test_prompt_learning_is_refused(tmp_path, data_files, tiny_llama):
    cfg = pref_config(
        tiny_llama, data_files["train"], data_files["held_out"], tmp_path, method="prompt-tuning"
    )
    with pytest.raises(LmtuneError, match="task 'preference' cannot be used for method 'prompt-tuning'"):
        lmtune.train(RunConfig.from_dict(cfg))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {},
            {
                "loss_type": ["sigmoid"],
                "beta": 0.1,
                "label_smoothing": 0.0,
                "precompute_ref_log_probs": False,
            },
        ),
        ({"algorithm": "ipo", "beta": 0.5}, {"loss_type": ["ipo"], "beta": 0.5}),
        ({"dpo_loss": "robust"}, {"loss_type": ["robust"], "label_smoothing": 0.1}),
        (
            {"dpo_loss": "robust", "label_smoothing": 0.2, "precompute_ref_log_probs": True},
            {"label_smoothing": 0.2, "precompute_ref_log_probs": True},
        ),
        ({"algorithm": "orpo"}, {"beta": 0.1}),
        (
            {"algorithm": "simpo", "simpo_gamma": 0.3},
            {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.3, "cpo_alpha": 0.0},
        ),
        (
            {"algorithm": "kto", "undesirable_weight": 1.5},
            {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.5},
        ),
    ],
)
def test_options_map_onto_trls_configs(tmp_path, data_files, options, expected):
    from lmtune.training.trainer import training_arguments

    task = task_for("m", data_files, tmp_path, **options)
    spec = task.trainer_spec()
    args = training_arguments(task.cfg, tmp_path / "out", "reward_margin", True, spec=spec)
    assert type(args) is spec.arguments_class
    for key, value in expected.items():
        assert getattr(args, key) == value, key
    assert args.max_length == 40 and args.disable_dropout is True
    # TRL turns gradient checkpointing on by default; lmtune's train.gradient_checkpointing decides.
    assert args.gradient_checkpointing is False
    # What config.yaml records (beta and the algorithm's own options, defaults filled in) validates.
    RunConfig.from_dict(
        {**task.cfg.to_dict(), "task": {**task.cfg.to_dict()["task"], **task.resolved_options()}}
    )


@pytest.mark.parametrize("algorithm", ["dpo", "orpo", "simpo", "kto"])
def test_lmtune_trainer_overrides_come_before_trls(algorithm):
    from lmtune.training.trainer import LmtuneTrainer

    cls = preference_trainer_class(algorithm)
    mro = cls.__mro__
    trl_base = next(k for k in mro if k.__module__.startswith("trl."))
    assert mro.index(LmtuneTrainer) < mro.index(trl_base)
    for name in ("_get_train_sampler", "compute_loss", "training_step", "_get_grad_norm"):
        owner = next(k for k in mro if name in vars(k))
        assert owner.__module__.startswith("lmtune."), (name, owner)


# ---- tokens and scores --------------------------------------------------------------------------
def test_tokenize_keeps_the_records_and_adds_length_and_truncation(tmp_path, data_files, smol_tokenizer):
    task = task_for("m", data_files, tmp_path)
    records, info = task.read_records(str(data_files["held_out"]), "test")
    assert info["records"] == len(HELD_OUT_THINGS) and records[0]["where"].endswith("record 1")
    dataset = task.to_dataset(records)
    tokenized = task.tokenize(dataset, smol_tokenizer)
    assert {"prompt", "chosen", "rejected", "length", "truncated"} <= set(tokenized.column_names)
    prompt, (chosen, rejected) = encode_answers(
        smol_tokenizer, records[0]["prompt"], [records[0]["chosen"], records[0]["rejected"]]
    )
    rendered = smol_tokenizer.decode(prompt + chosen)
    assert rendered.endswith("Yes, I like the ocean.<|im_end|>\n") and "assistant\n" in rendered
    assert tokenized[0]["length"] == len(prompt) + max(len(chosen), len(rejected)) and not any(
        tokenized["truncated"]
    )
    # A tokenizer without a chat template gets SFT's ChatML default, the same tokens here.
    bare = copy.deepcopy(smol_tokenizer)
    bare.chat_template = None
    assert task.tokenize(dataset, bare)["length"] == tokenized["length"]
    assert bare.chat_template == DEFAULT_CHAT_TEMPLATE
    task.cfg.data.max_length = len(prompt) + 3
    cut = task.tokenize(dataset, smol_tokenizer)
    assert all(cut["truncated"]) and set(cut["length"]) == {len(prompt) + 3}


def test_a_prompt_that_fills_max_length_is_an_error_naming_the_record(tmp_path, data_files, tiny_llama):
    long = {"prompt": "Tell me " + "very " * 40 + "much.", "chosen": "Yes.", "rejected": "No."}
    train = write_jsonl(tmp_path / "train.jsonl", [*pairs(TRAIN_THINGS[:4]), long])
    cfg = pref_config(tiny_llama, train, data_files["held_out"], tmp_path / "run", data={"max_length": 32})
    with pytest.raises(LmtuneError, match=r"train\.jsonl, line 5: the prompt is \d+ tokens"):
        lmtune.train(RunConfig.from_dict(cfg))


def test_sequence_scores_match_unpadded_full_logits(tmp_path, data_files, tiny_llama, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    task = task_for(tiny_llama, data_files, tmp_path)
    task.cfg.train.precision = "fp32"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    features = [
        {"input_ids": [5, 9, 11, 40, 41], "completion": 2},
        {"input_ids": [7, 8, 12, 13, 14, 15, 16, 17], "completion": 5},
        {"input_ids": [3, 30, 31], "completion": 1},
    ]
    sums, counts = sequence_logps(task, model, features, batch_size=3)
    assert counts.tolist() == [2, 5, 1]
    for f, got in zip(features, sums, strict=True):
        ids = torch.tensor([f["input_ids"]])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        expected = logps[torch.arange(len(targets)), targets][-f["completion"] :].sum()
        assert np.isclose(got, float(expected), atol=1e-4)


def test_metrics_of_pairs_and_of_unpaired_examples():
    rewards = np.array([[0.5, -0.5], [0.1, 0.2], [0.0, 0.0]])
    logps = np.array([[-2.0, -4.0], [-3.0, -1.0], [-1.0, -2.0]])
    m = pair_metrics(rewards, logps, np.array([[2, 4], [3, 1], [1, 2]]))
    assert m["reward_accuracy"] == pytest.approx(1 / 3) and m["reward_margin"] == pytest.approx(0.3)
    assert m["logp_accuracy"] == pytest.approx(2 / 3) and m["token_logp_chosen"] == pytest.approx(-1.0)
    u = unpaired_metrics(np.array([0.2, -0.1, 0.0, -0.3]), np.zeros(4), np.array([True, True, False, False]))
    # A zero reward has neither sign: wrong for both labels.
    assert u["reward_accuracy"] == pytest.approx(0.5) and u["reward_margin"] == pytest.approx(0.2)
    assert unpaired_metrics(np.array([0.1]), np.zeros(1), np.array([True]))["reward_margin"] is None


def test_predict_reads_prompts_from_preference_files(tmp_path, data_files):
    task = task_for("m", data_files, tmp_path)
    inputs = task.read_inputs(str(data_files["held_out"]))
    ocean = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Do you like the ocean?"}]
    assert inputs[0] == {"messages": ocean}
    assert task.read_inputs(str(data_files["kto_held_out"]))[1] == {"messages": ocean}
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": "Hi"}, {"prompt": [{"role": "user", "content": "Yo"}]}]
    )
    assert task.read_inputs(str(prompts)) == [
        {"text": "Hi"},
        {"messages": [{"role": "user", "content": "Yo"}]},
    ]


# ---- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dpo_run(tmp_path_factory, tiny_llama, data_files):
    """DPO with LoRA, one epoch with an evaluation and a checkpoint (the best one is loaded)."""
    out = tmp_path_factory.mktemp("dpo") / "run"
    cfg = pref_config(
        tiny_llama,
        data_files["train"],
        data_files["held_out"],
        out,
        train={"max_steps": None, "epochs": 1, "eval_strategy": "epoch", "save_strategy": "epoch"},
    )
    return lmtune.train(RunConfig.from_dict(cfg))


def test_dpo_raises_held_out_reward_accuracy_and_margin(dpo_run):
    metrics = json.loads((dpo_run.directory / "metrics.json").read_text())
    before, after = metrics["baseline"], metrics["test"]
    print("DPO (tiny Llama, LoRA):", before, "->", after)
    # The untuned model is the reference: every reward is 0 before training.
    assert before["reward_accuracy"] == 0 and before["reward_margin"] == 0 and before["reward_chosen"] == 0
    assert after["reward_accuracy"] >= 0.8 and after["reward_margin"] > 0.05
    assert after["logp_margin"] > before["logp_margin"]
    assert dpo_run.config.train.metric_for_best_model == "reward_margin"
    # The evaluation during training scored the same pairs as TRL's own loss did.
    log = [json.loads(line) for line in (dpo_run.directory / "train_log.jsonl").read_text().splitlines()]
    evaluation = next(r for r in log if "eval_reward_margin" in r)
    assert evaluation["eval_reward_margin"] == pytest.approx(
        evaluation["eval_rewards/margins"], rel=2e-2, abs=1e-3
    )
    assert evaluation["eval_logp_chosen"] == pytest.approx(evaluation["eval_logps/chosen"], rel=1e-3)
    assert metrics["train"]["tokens_per_second"] > 0


def test_dpo_run_saves_one_adapter_and_lmtunes_card(dpo_run):
    model_dir = dpo_run.directory / "model"
    assert (model_dir / "adapter_model.safetensors").exists() and not (model_dir / "ref").exists()
    assert not list(dpo_run.directory.glob("checkpoint-*"))
    report = (dpo_run.directory / "report.md").read_text()
    assert (
        "### Preference metrics (dpo)" in report and "| test, before training | 0.0000 | 0.0000 |" in report
    )
    # Greedy answers to the test prompts scored against the chosen ones, before and after.
    metrics = json.loads((dpo_run.directory / "metrics.json").read_text())
    assert metrics["test"]["gen_samples"] == metrics["baseline"]["gen_samples"] > 0
    assert "| before training |" in report and "gen_rougeL" in report
    card = (dpo_run.directory / "README.md").read_text()
    assert "tags: [lmtune, preference, lora]" in card and not re.search(r"\btrl\b", card, re.IGNORECASE)


def test_reload_gives_identical_generations_and_scores(dpo_run, data_files):
    ocean = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Do you like the ocean?"}]
    prompts = [{"messages": ocean}, "Do you like the planet?"]
    out = dpo_run.predict(prompts, options={"max_new_tokens": 5})
    loaded = lmtune.load_run(dpo_run.directory)
    assert loaded.predict(prompts, options={"max_new_tokens": 5}) == out
    assert loaded.predict_file(data_files["held_out"], options={"max_new_tokens": 5})[0] == out[0]
    # A loaded run has no baseline: the reference is the adapter switched off, the same scores.
    scores = loaded.evaluate(data_files["held_out"])
    test = dpo_run.metrics["test"]
    for key in ("reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected"):
        assert scores[key] == pytest.approx(test[key], abs=2e-3), key


@pytest.mark.parametrize(
    ("options", "steps"),
    # ORPO's odds-ratio term is weighted by beta (lambda, 0.1 by default) beside the chosen answers'
    # NLL: a larger one shows the preference within a few steps of a tiny model.
    [
        ({"algorithm": "orpo", "beta": 1.0}, {"max_steps": 10, "learning_rate": 3e-2}),
        ({"algorithm": "simpo"}, {"max_steps": 8}),
    ],
)
def test_reference_free_algorithms_raise_the_log_prob_margin(
    tiny_llama, data_files, tmp_path, options, steps
):
    cfg = pref_config(
        tiny_llama, data_files["train"], data_files["held_out"], tmp_path / "run", task=options, train=steps
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    before, after = run.metrics["baseline"], run.metrics["test"]
    print(f"{options['algorithm']} (tiny Llama, LoRA):", before, "->", after)

    def token_margin(m: dict) -> float:
        return m["token_logp_chosen"] - m["token_logp_rejected"]

    # Their rewards are beta times the mean token log-prob: no reference, not 0 before training.
    assert after["reward_margin"] == pytest.approx(
        run.config.task.options.beta * token_margin(after), abs=1e-5
    )
    assert token_margin(after) > token_margin(before) + 0.02
    assert after["reward_accuracy"] >= 0.8 > before["reward_accuracy"]
    assert run.metrics["train"]["tokens_per_second"] > 0


def test_kto_raises_the_share_of_rewards_with_the_labels_sign(tiny_llama, data_files, tmp_path):
    cfg = pref_config(
        tiny_llama,
        data_files["kto_train"],
        data_files["kto_held_out"],
        tmp_path / "run",
        task={"algorithm": "kto"},
        train={"max_steps": 14},
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    before, after = run.metrics["baseline"], run.metrics["test"]
    print("KTO (tiny Llama, LoRA):", before, "->", after)
    assert before["reward_accuracy"] == 0 and before["reward_desirable"] == 0
    assert after["reward_accuracy"] >= 0.75 and after["reward_desirable"] > after["reward_undesirable"]
    assert run.metrics["data"]["preference"]["train"]["desirable"] == 2 * len(TRAIN_THINGS)


def test_full_fine_tuning_with_precomputed_reference(tiny_llama, data_files, tmp_path):
    cfg = pref_config(
        tiny_llama,
        data_files["train"],
        data_files["held_out"],
        tmp_path / "run",
        method="full",
        task={"algorithm": "ipo", "precompute_ref_log_probs": True},
        train={"max_steps": 6, "learning_rate": 1e-3},
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    before, after = run.metrics["baseline"], run.metrics["test"]
    print("IPO (tiny Llama, full, precomputed reference):", before, "->", after)
    assert before["reward_margin"] == 0 and after["reward_margin"] > 0 and after["reward_accuracy"] >= 0.8
    # Without a baseline a full run's reference is the base model, loaded once.
    scores = lmtune.load_run(tmp_path / "run").evaluate(data_files["held_out"])
    assert scores["reward_margin"] == pytest.approx(after["reward_margin"], abs=2e-3)


# ---- the real model -----------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_lora_dpo_learns_the_preferred_format(tmp_path, data_files):
    cfg = pref_config(
        "SmolLM2-135M-Instruct",
        data_files["train"],
        data_files["held_out"],
        tmp_path / "run",
        method={"name": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
        task={"beta": 0.1},
        train={"max_steps": 10, "batch_size": 4, "learning_rate": 1e-3},
    )
    run = lmtune.train(RunConfig.from_dict(cfg))
    before, after = run.metrics["baseline"], run.metrics["test"]
    print("SmolLM2 DPO LoRA:", before, "->", after, run.metrics["train"])
    assert before["reward_accuracy"] == 0 and after["reward_accuracy"] >= 0.8
    assert after["reward_margin"] > 0.1 and after["logp_margin"] > before["logp_margin"]
    assert after["gen_samples"] == before["gen_samples"] > 0 and 0 <= after["gen_rougeL"] <= 100
    loaded = lmtune.load_run(tmp_path / "run")
    prompts = ["Do you like the ocean?"]
    assert loaded.predict(prompts, options={"max_new_tokens": 8}) == run.predict(
        prompts, options={"max_new_tokens": 8}
    )


@pytest.mark.parametrize("from_run", ["merge", "continue"])
def test_sft_then_dpo_chain(from_run, tmp_path, tiny_llama, data_files, monkeypatch):
    """SFT -> DPO: the DPO run starts from the SFT run (merged, or its adapter continued),
    records it in run.json, and raises the held-out reward margin from there."""
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    records = json.loads(data_files["train"].read_text())
    sft_rows = [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["chosen"]},
            ]
        }
        for r in records
    ]
    sft_file = write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    sft = {
        "model": tiny_llama,
        "task": "sft",
        "data": {"train": str(sft_file), "max_length": 40},
        "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-2, "report_to": ["none"]},
        "output_dir": str(tmp_path / "sft"),
    }
    sft["train"] |= {"eval_strategy": "no", "save_strategy": "no"}
    lmtune.train(RunConfig.from_dict(sft))

    cfg = pref_config(str(tmp_path / "sft"), data_files["train"], data_files["held_out"], tmp_path / "dpo")
    cfg["model"] = {"name": str(tmp_path / "sft"), "from_run": from_run}
    run = lmtune.train(RunConfig.from_dict(cfg))
    state = json.loads((tmp_path / "dpo" / "run.json").read_text())
    assert state["lineage"][0]["task"] == "sft" and state["lineage"][0]["model"] == tiny_llama
    # The reference is the SFT model (merged, or base + its adapter): rewards start at 0 there.
    assert run.metrics["baseline"]["reward_margin"] == 0
    assert run.metrics["test"]["reward_margin"] > 0
    reloaded = lmtune.load_run(tmp_path / "dpo", device="cpu")
    prompt = [{"role": "user", "content": "Tell me about cats"}]
    options = {"max_new_tokens": 4}
    assert reloaded.predict([{"messages": prompt}], options=options) == run.predict(
        [{"messages": prompt}], options=options
    )
