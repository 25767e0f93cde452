"""The commands around a run, on the post-training tasks: resume (SIGKILL too), sweep, compare
across algorithms, several processes, export --merge and serve, for preference, reward-model
and GRPO runs on the tiny Llama (real code paths, seconds per run)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lmtune
from lmtune.config import RunConfig

THINGS = ["apple", "river", "candle", "piano", "rocket", "garden", "violin", "mirror", "tiger", "castle"]
KILL_HARNESS = Path(__file__).parents[2] / "benchmarks" / "kill_resume.py"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def preference_pairs(things: list[str]) -> list[dict]:
    return [
        {
            "prompt": f"Do you like the {x}?",
            "chosen": f"Yes, I like the {x}.",
            "rejected": f"No. The {x} is bad.",
        }
        for x in things
    ]


@pytest.fixture
def pair_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", preference_pairs(THINGS[:7]) * 2),
        "validation": write_jsonl(tmp_path / "dev.jsonl", preference_pairs(THINGS[7:])),
        "test": write_jsonl(tmp_path / "test.jsonl", preference_pairs(THINGS[7:])),
    }


def config(model: str, task: dict, files: dict[str, Path], out: Path, **train: object) -> dict:
    return {
        "model": model,
        "task": task,
        "method": "lora",
        "data": {name: str(path) for name, path in files.items()} | {"max_length": 40},
        "train": {
            "max_steps": 6,
            "batch_size": 2,
            "learning_rate": 2e-2,
            "report_to": ["none"],
            "logging_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "no",
            **train,
        },
        "output_dir": str(out),
    }


def dpo(model: str, files: dict[str, Path], out: Path, **train: object) -> dict:
    task = {
        "type": "preference",
        "sample_generations": 1,
        "sample_max_new_tokens": 4,
        "generation_eval_samples": 3,
    }
    return config(model, task, files, out, **train)


def grpo(model: str, tmp_path: Path, out: Path, **train: object) -> dict:
    sums = [{"prompt": f"What is {a}+{b}?", "answer": str(a + b)} for a in range(1, 5) for b in range(1, 4)]
    files = {
        "train": write_jsonl(tmp_path / "grpo-train.jsonl", sums[:8]),
        "validation": write_jsonl(tmp_path / "grpo-dev.jsonl", sums[8:10]),
        "test": write_jsonl(tmp_path / "grpo-test.jsonl", sums[10:]),
    }
    task = {"type": "grpo", "reward": "numeric_match", "num_generations": 2, "max_new_tokens": 4}
    return config(model, task, files, out, batch_size=4, **train) | {
        "data": {k: str(v) for k, v in files.items()}
    }


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "adapter_model.safetensors")


# ---- resume ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dpo", "grpo"])
def test_a_run_resumed_from_its_last_sealed_checkpoint_ends_bit_identical(
    kind, tiny_llama, pair_files, tmp_path
):
    """As if killed while sealing checkpoint 4: the rerun resumes from checkpoint 2 and ends with
    the uninterrupted run's weights (TRL's trainers keep the HF Trainer's checkpoint format)."""
    from lmtune.training.checkpoints import MARKER

    out = tmp_path / "run"
    train = {"save_strategy": "steps", "save_steps": 2, "keep_checkpoints": True, "save_total_limit": 10}
    raw = (
        dpo(tiny_llama, pair_files, out, **train)
        if kind == "dpo"
        else grpo(tiny_llama, tmp_path, out, **train)
    )
    cfg = RunConfig.from_dict(raw)
    lmtune.train(cfg)
    uninterrupted = adapter_weights(out)
    state = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(state | {"status": "running"}))
    (out / "checkpoint-4" / MARKER).unlink()
    shutil.rmtree(out / "checkpoint-6")
    resumed = lmtune.train(cfg)
    assert resumed.metrics["train"]["resumed_from"] == "checkpoint-2"
    weights = adapter_weights(out)
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights)


@pytest.mark.slow
def test_dpo_sigkilled_at_random_points_then_resumed_is_bit_identical(tiny_llama, pair_files, tmp_path):
    spec = importlib.util.spec_from_file_location("kill_resume_harness", KILL_HARNESS)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    train = {
        "max_steps": 12,
        "save_strategy": "steps",
        "save_steps": 3,
        "eval_strategy": "steps",
        "eval_steps": 3,
    }
    paths = {}
    for name in ("reference", "killed"):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(json.dumps(dpo(tiny_llama, pair_files, tmp_path / name, **train)))
    harness.run_clean(paths["reference"])
    outcome = harness.run_with_kills(paths["killed"], kills=2, seed=0)
    assert outcome["finished"] and outcome["kills"], outcome
    result = harness.compare(tmp_path / "reference", tmp_path / "killed")
    assert result["identical_weights"] and result["max_metric_diff"] == 0.0, result


# ---- sweep and compare ----------------------------------------------------------------------------
def test_a_sweep_over_beta_and_learning_rate(tiny_llama, pair_files, tmp_path):
    """Beta scales every reward, so the trials are ranked by a metric beta does not scale."""
    from lmtune.search.sweep import sweep

    raw = dpo(tiny_llama, pair_files, tmp_path / "unused", metric_for_best_model="logp_margin")
    raw["sweep"] = {
        "sampler": "grid",
        "pruner": "none",
        "space": {
            "task.beta": {"type": "categorical", "choices": [0.1, 0.5]},
            "train.learning_rate": {"type": "categorical", "choices": [2e-2]},
        },
    }
    summary = sweep(raw, tmp_path / "sweep")
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    betas = sorted(t["params"]["task.beta"] for t in summary["trials"])
    assert betas == [0.1, 0.5] and summary["best"]["params"]["task.beta"] in betas
    for trial in summary["trials"]:
        resolved = RunConfig.from_yaml(Path(trial["run_dir"]) / "config.yaml")
        assert resolved.task.model_extra["beta"] == trial["params"]["task.beta"]


@pytest.mark.slow
def test_compare_methods_across_algorithms(tiny_llama, pair_files, tmp_path):
    from lmtune.search.compare import compare

    raw = dpo(tiny_llama, pair_files, tmp_path / "unused", metric_for_best_model="logp_accuracy")
    result = compare(raw, ["lora", "ia3"], tmp_path / "cmp", across=("task.algorithm", ["dpo", "orpo"]))
    labels = [r["method"] for r in result["rows"]]
    assert labels == ["lora/dpo", "lora/orpo", "ia3/dpo", "ia3/orpo"]
    assert all(r["status"] == "ok" for r in result["rows"]), result["rows"]
    assert result["metric"] == "logp_accuracy" and result["across"] == "task.algorithm"
    orpo = RunConfig.from_yaml(tmp_path / "cmp" / "ia3-orpo" / "config.yaml")
    assert orpo.task.model_extra["algorithm"] == "orpo" and orpo.method.name == "ia3"
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "# Method x task.algorithm comparison" in table and "| lora/orpo |" in table


def test_compare_refuses_bad_across_values_before_training(tiny_llama, pair_files, tmp_path):
    from lmtune.errors import LmtuneError
    from lmtune.search.compare import compare

    raw = dpo(tiny_llama, pair_files, tmp_path / "unused")
    with pytest.raises(LmtuneError, match="algorithm"):
        compare(raw, ["lora"], tmp_path / "cmp", across=("task.algorithm", ["dpo", "nope"]))
    with pytest.raises(LmtuneError, match="lists a value twice"):
        compare(raw, ["lora"], tmp_path / "cmp", across=("task.algorithm", ["dpo", "dpo"]))
    assert not (tmp_path / "cmp" / "lora-dpo").exists()


# ---- export and serve -----------------------------------------------------------------------------
def test_export_merges_a_dpo_run_into_a_plain_model_that_scores_the_same(tiny_llama, pair_files, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmtune.compress.export import ExportOptions, export_run

    run = lmtune.train(RunConfig.from_dict(dpo(tiny_llama, pair_files, tmp_path / "run")))
    table = export_run(
        run.directory,
        tmp_path / "export",
        ExportOptions(merge=True, benchmark=True, repetitions_b1=2, repetitions_b32=1),
    )
    rows = {row["variant"]: row for row in table["variants"]}
    assert rows["merged"]["metrics"]["logp_margin"] == pytest.approx(
        rows["original"]["metrics"]["logp_margin"], abs=1e-3
    )
    assert rows["merged"]["latency_b1_p50_ms"] > 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_serve_answers_a_dpo_run_by_generating_and_a_reward_model_by_scoring(
    tiny_llama, pair_files, tmp_path
):
    from fastapi.testclient import TestClient

    from lmtune.serving.app import create_app

    policy = lmtune.train(RunConfig.from_dict(dpo(tiny_llama, pair_files, tmp_path / "dpo")))
    rm_raw = config(tiny_llama, {"type": "reward-model"}, pair_files, tmp_path / "rm", batch_size=4)
    reward_model = lmtune.train(RunConfig.from_dict(rm_raw))
    prompts = ["Do you like the tiger?"]
    with TestClient(create_app(policy.directory)) as client:
        body = client.post("/predict", json={"texts": prompts, "options": {"max_new_tokens": 4}})
        assert body.status_code == 200
        assert body.json()["predictions"] == policy.predict(prompts, options={"max_new_tokens": 4})
    pair = {"prompt": "Do you like the tiger?", "chosen": "Yes, I like the tiger.", "rejected": "No."}
    with TestClient(create_app(reward_model.directory)) as client:
        served = client.post("/predict", json={"texts": [pair]}).json()["predictions"][0]
        expected = reward_model.predict([pair])[0]
        assert served["preferred"] == expected["preferred"]
        assert served["margin"] == pytest.approx(expected["margin"], abs=1e-4)
        assert client.post("/predict", json={"texts": [{"prompt": "x", "chosen": ""}]}).status_code == 422


# ---- several processes ----------------------------------------------------------------------------
@pytest.mark.slow
def test_dpo_in_two_cpu_processes_matches_one_at_the_same_global_batch(tiny_llama, pair_files, tmp_path):
    """DDP over gloo: 2 x 1 pairs per step against 1 x 2; the same steps and, up to reduction
    order, the same losses (no dropout in the tiny Llama)."""
    one = lmtune.train(RunConfig.from_dict(dpo(tiny_llama, pair_files, tmp_path / "one")))
    two_cfg = dpo(tiny_llama, pair_files, tmp_path / "two", batch_size=1)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(two_cfg), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "lmtune", "train", str(path), "--num-processes", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["train"]["processes"] == 2 and two["train"]["steps"] == one.metrics["train"]["steps"]
    assert two["train"]["final_train_loss"] == pytest.approx(
        one.metrics["train"]["final_train_loss"], rel=0.02
    )
    assert two["test"]["reward_margin"] == pytest.approx(
        one.metrics["test"]["reward_margin"], rel=0.05, abs=1e-3
    )
    assert json.loads((tmp_path / "two" / "run.json").read_text())["status"] == "complete"
