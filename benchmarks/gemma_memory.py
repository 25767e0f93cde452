"""Peak memory of LoRA SFT on Gemma 3 270M (262k vocabulary): lmtune vs Trainer+peft, side by side.

Usage: python benchmarks/gemma_memory.py --data-dir ../shared/data [--steps 2] [--batch 8] [--length 512]
       [--out benchmarks/GEMMA_MEMORY.md]

Both variants train LoRA (r 8, q/v projections) for the same steps on batches of `--batch` rows of
`--length` tokens cut from the alpaca_zh demo set (Chinese instructions, chat template, loss on the
answers), each in its own process so peak RSS is its own. Trainer+peft is the usual recipe: the
model's own loss, which projects every position onto the 262,144-token vocabulary. lmtune projects
only labelled positions, a chunk at a time (training/chunked_ce.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def rows(data: Path, length: int, count: int) -> list[dict]:
    """Alpaca_zh records concatenated into `count` examples of at least `length` tokens' worth of text."""
    records = json.loads((data / "instructions" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    out, i = [], 0
    while len(out) < count:
        parts = []
        while sum(len(p["output"]) + len(p["instruction"]) for p in parts) < 2 * length:
            parts.append(records[i % len(records)])
            i += 1
        out.append(
            {
                "instruction": "\n".join(p["instruction"] + p.get("input", "") for p in parts),
                "output": "\n".join(p["output"] for p in parts),
            }
        )
    return out


def run_lmtune(args: argparse.Namespace, data: Path, work: Path) -> dict:
    import lmtune

    run = lmtune.train(
        {
            "model": "gemma-3-270m",
            "task": {"type": "sft", "generation_eval_samples": 0, "sample_generations": 0, "packing": False},
            "method": "lora",
            "data": {
                "train": str(data),
                "validation": str(data),
                "test": str(data),
                "max_length": args.length,
            },
            "train": {
                "max_steps": args.steps,
                "batch_size": args.batch,
                "report_to": ["none"],
                "eval_strategy": "no",
                "save_strategy": "no",
                "precision": "fp32",
            },
            "output_dir": str(work / "lmtune-run"),
        }
    )
    return {"runtime_s": run.metrics["train"]["runtime_s"], "loss": run.metrics["train"]["final_train_loss"]}


def run_trainer(args: argparse.Namespace, data: Path, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from lmtune.models import resolve_model

    path = resolve_model("gemma-3-270m").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    records = json.loads(data.read_text(encoding="utf-8"))

    def encode(record: dict) -> dict:
        prompt = tokenizer(record["instruction"] + "\n")["input_ids"]
        answer = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + answer)[: args.length]
        labels = ([-100] * len(prompt) + answer)[: args.length]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    dataset = Dataset.from_list([encode(r) for r in records])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )

    def collate(batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        pad = tokenizer.pad_token_id

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([b[key] + [value] * (width - len(b[key])) for b in batch])

        return {
            "input_ids": padded("input_ids", pad),
            "attention_mask": padded("attention_mask", 0),
            "labels": padded("labels", -100),
        }

    targs = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=2e-4, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        dataloader_pin_memory=False,
    )  # fmt: skip
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collate)
    started = time.perf_counter()
    result = trainer.train()
    return {"runtime_s": time.perf_counter() - started, "loss": result.training_loss}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/GEMMA_MEMORY.md"))
    parser.add_argument("--worker", choices=("lmtune", "trainer"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = Path(tempfile.mkdtemp(prefix="lmtune-gemma-mem-"))
        result = (run_lmtune if args.worker == "lmtune" else run_trainer)(args, args.data, work)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result), flush=True)
        return
    data = Path(tempfile.mkdtemp(prefix="lmtune-gemma-mem-")) / "zh.json"
    data.write_text(json.dumps(rows(args.data_dir, args.length, args.batch * args.steps)), encoding="utf-8")
    results = {}
    for variant in ("trainer", "lmtune"):
        cmd = [sys.executable, __file__, "--worker", variant, "--data", str(data), "--steps", str(args.steps),
               "--batch", str(args.batch), "--length", str(args.length)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(line.removeprefix("RESULT "))
        print(variant, results[variant], flush=True)
    t, m = results["trainer"], results["lmtune"]
    lines = [
        "# Gemma 3 270M LoRA SFT memory: lmtune vs Trainer+peft",
        "",
        f"{args.steps} steps, batches of {args.batch} rows of up to {args.length} tokens (alpaca_zh), "
        "LoRA r 8 on q/v, fp32, 2 CPU cores, each variant in its own process. "
        "`python benchmarks/gemma_memory.py`.",
        "",
        "| variant | peak RSS MB | seconds | train loss |",
        "|---|---:|---:|---:|",
        f"| Trainer+peft (model's own loss: every position onto the vocabulary) | {t['peak_rss_mb']:.0f} | "
        f"{t['runtime_s']:.0f} | {t['loss']:.3f} |",
        f"| lmtune (labelled positions, chunked cross-entropy) | {m['peak_rss_mb']:.0f} | "
        f"{m['runtime_s']:.0f} | {m['loss']:.3f} |",
        "",
        f"lmtune's peak is {m['peak_rss_mb'] / t['peak_rss_mb']:.2f}x Trainer+peft's.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
