"""Decoder post-training on real preference data: DPO, ORPO, SimPO, KTO, reward models, GRPO.

    python benchmarks/preference.py --data-dir ../shared/data [--out benchmarks/PREFERENCE.md]

Every run is `lmtune train` in its own process (so peak RSS is that run's), LoRA on
SmolLM2-135M-Instruct, on a seeded 80/10/10 split of `preference/dpo_en_demo.json` (KTO:
`kto_en_demo.json`) carved by lmtune itself (`data.validation_split`, `data.test_split`,
`train.seed`). The demo files hold long conversations (median pair 650 tokens, a quarter of the
prompts over 700); to run in well under an hour on two CPU cores the script keeps the records
whose prompt (chat template included) is under 192 tokens (151 of 300 pairs, 164 of 300 KTO
examples) and sets `data.max_length` 512 (longer answers are cut; the table says how many test
records were). The budget: 10 steps of 4 records, no evaluation during training, generation
metrics on the test prompts with at most 48 new tokens. Everything else is lmtune's default
(learning rate, beta, LoRA rank). GRPO has no shared data set: it runs on arithmetic prompts
built here.

The table reports, for the test split, each metric of the untuned model (before) and of the
trained one (after), training tokens/s (real tokens), peak RSS and the wall time of the whole
process (loading, training, evaluation before and after, saving).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

SEED = 0
SMOLLM = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"
PAIRWISE = ("dpo", "orpo", "simpo")
PROMPT_TOKENS = 192  # records with longer prompts are left out (module docstring)


def _base(model: str, train_file: Path, out: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": model,
        "method": "lora",
        "data": {"train": str(train_file), "validation_split": 0.1, "test_split": 0.1, "max_length": 512},
        "train": {
            "max_steps": 10,
            "batch_size": 4,
            "eval_strategy": "no",
            "save_strategy": "no",
            "report_to": ["none"],
            "seed": SEED,
        },
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def short_prompts(source: Path, work: Path) -> Path:
    """A copy of `source` (in the work directory) without the records whose prompt, rendered with
    SmolLM2's chat template, has PROMPT_TOKENS or more tokens."""
    from transformers import AutoTokenizer

    from lmtune.data.preference import read_preference_file
    from lmtune.models import resolve_model
    from lmtune.tasks.preference import chat_ids

    target = work / f"short-{source.name}"
    if target.exists():
        return target
    kind = "unpaired" if source.name.startswith("kto") else "pairwise"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM).path)
    records, _ = read_preference_file(str(source), kind, "train")
    raw = json.loads(source.read_text(encoding="utf-8"))
    lengths = [len(chat_ids(tokenizer, r["prompt"], True)) for r in records]
    kept = [row for row, n in zip(raw, lengths, strict=True) if n < PROMPT_TOKENS]
    target.write_text(json.dumps(kept, ensure_ascii=False), encoding="utf-8")
    print(f"{source.name}: {len(kept)} of {len(raw)} prompts under {PROMPT_TOKENS} tokens", file=sys.stderr)
    return target


def preference_config(algorithm: str, data_dir: Path, work: Path, out: Path) -> dict[str, Any]:
    name = "kto_en_demo.json" if algorithm == "kto" else "dpo_en_demo.json"
    task = {
        "type": "preference",
        "algorithm": algorithm,
        "generation_eval_samples": 16,
        "sample_max_new_tokens": 48,
    }
    return _base(SMOLLM, short_prompts(data_dir / "preference" / name, work), out, task=task)


def reward_model_config(model: str, data_dir: Path, work: Path, out: Path) -> dict[str, Any]:
    train = short_prompts(data_dir / "preference" / "dpo_en_demo.json", work)
    if model == MINILM:  # 512 positions; a cheap encoder ranks a whole epoch in minutes
        return _base(
            model,
            train,
            out,
            task={"type": "reward-model"},
            data={"max_length": 512},
            train={"max_steps": None, "epochs": 1, "batch_size": 8},
        )
    return _base(model, train, out, task={"type": "reward-model"}, train={"max_steps": 30})


def arithmetic(pairs: list[tuple[int, int]]) -> list[dict[str, str]]:
    question = "What is {}+{}? Answer with the number only."
    return [{"prompt": question.format(a, b), "answer": str(a + b)} for a, b in pairs]


def grpo_config(work: Path, out: Path) -> dict[str, Any]:
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    random.Random(SEED).shuffle(pairs)
    files = {}
    for split, chunk in (("test", pairs[:16]), ("validation", pairs[16:20]), ("train", pairs[20:])):
        files[split] = work / f"grpo_{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in arithmetic(chunk)), encoding="utf-8")
    return {
        "model": SMOLLM,
        "task": {"type": "grpo", "reward": "exact_match", "num_generations": 4, "max_new_tokens": 8},
        "method": {"name": "lora", "r": 8},
        "data": {k: str(v) for k, v in files.items()} | {"max_length": 128},
        "train": {
            "max_steps": 12,
            "batch_size": 16,
            "eval_strategy": "no",
            "save_strategy": "no",
            "report_to": ["none"],
            "seed": SEED,
        },
        "output_dir": str(out),
    }


def train(name: str, cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """`lmtune train` in a fresh process; its metrics.json plus the process's wall time."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lmtune", "train", str(path), "--overwrite"],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        print(f"{name}: failed\n" + "\n".join(tail), file=sys.stderr)
        return {"name": name, "failed": " ".join(tail)[-300:], "wall_s": wall}
    metrics = json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text(encoding="utf-8"))
    print(f"{name}: {wall:.0f} s", file=sys.stderr)
    return {"name": name, "metrics": metrics, "wall_s": wall}


def _n(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _before_after(metrics: dict[str, Any], key: str, digits: int = 3) -> str:
    before, after = metrics.get("baseline") or {}, metrics.get("test") or {}
    return f"{_n(before.get(key), digits)} → {_n(after.get(key), digits)}"


def _speed(result: dict[str, Any]) -> list[str]:
    t = result["metrics"]["train"]
    return [_n(t.get("tokens_per_second"), 0), _n(t.get("peak_rss_mb"), 0), f"{result['wall_s']:.0f}"]


def preference_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| algorithm | test pairs (truncated) | reward accuracy | reward margin | log-prob accuracy "
        "| gen ROUGE-L | train tok/s | peak RSS MB | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "failed" in r:
            lines.append(f"| {r['name']} | failed: {r['failed']} |" + " |" * 7)
            continue
        m, test = r["metrics"], r["metrics"]["test"]
        count = test.get("pairs", test.get("examples"))
        cells = [
            f"{count} ({test.get('truncated', 0)})",
            _before_after(m, "reward_accuracy"),
            _before_after(m, "reward_margin"),
            _before_after(m, "logp_accuracy"),
            _before_after(m, "gen_rougeL", 1),
            *_speed(r),
        ]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def other_table(results: list[dict[str, Any]], key: str, title: str) -> list[str]:
    lines = [f"| run | {title} | train tok/s | peak RSS MB | wall s |", "|---|---:|---:|---:|---:|"]
    for r in results:
        if "failed" in r:
            lines.append(f"| {r['name']} | failed: {r['failed']} | | | |")
            continue
        lines.append(f"| {r['name']} | {_before_after(r['metrics'], key)} | " + " | ".join(_speed(r)) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "PREFERENCE.md")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    args = parser.parse_args()
    if not (args.data_dir / "preference" / "dpo_en_demo.json").is_file():
        print(f"no preference/dpo_en_demo.json under {args.data_dir}: nothing to measure", file=sys.stderr)
        return 0
    only = {name for name in args.only.split(",") if name}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmtune-preference-bench-") as tmp:
        work = Path(tmp)
        runs: dict[str, dict[str, Any]] = {
            **{a: preference_config(a, args.data_dir, work, work / a) for a in (*PAIRWISE, "kto")},
            "reward-model MiniLM": reward_model_config(MINILM, args.data_dir, work, work / "rm-minilm"),
            "reward-model SmolLM2": reward_model_config(SMOLLM, args.data_dir, work, work / "rm-smollm"),
            "grpo": grpo_config(work, work / "grpo"),
        }
        results = {name: train(name, cfg, work) for name, cfg in runs.items() if not only or name in only}
    minutes = (time.perf_counter() - started) / 60
    preference = [results[a] for a in (*PAIRWISE, "kto") if a in results]
    rewards = [r for name, r in results.items() if name.startswith("reward-model")]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"<!-- Written by benchmarks/preference.py, {stamp}; {platform.machine()}, "
        f"{platform.python_version()}; wall time {minutes:.0f} min. -->",
        "",
        "# Preference tuning, reward models and GRPO on SmolLM2-135M-Instruct (LoRA)",
        "",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
        "## DPO, ORPO, SimPO (dpo_en_demo.json), KTO (kto_en_demo.json): test split, before → after",
        "",
        *preference_table(preference),
        "",
        "Rewards are each algorithm's own (DPO/KTO: beta x log-ratio to the untuned model, 0 before "
        "training; ORPO/SimPO: beta x mean token log-prob), so compare algorithms by log-prob "
        "accuracy and ROUGE-L, not by margins.",
        "",
        "## Reward models (dpo_en_demo.json): test pairwise accuracy, before → after",
        "",
        *other_table(rewards, "accuracy", "pairwise accuracy"),
        "",
    ]
    if "grpo" in results:
        lines += [
            "## GRPO (exact-match reward, arithmetic prompts): mean test reward, before → after",
            "",
            *other_table([results["grpo"]], "reward", "mean reward (greedy)"),
            "",
        ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
