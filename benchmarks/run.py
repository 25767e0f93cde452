"""Side-by-side training speed, memory and quality: lmtune vs the stacks users would otherwise run.

For each suite the same model, data, hyperparameters and number of steps go through:
  tutorial  the classic loop: tokenize with padding="max_length", shuffled batches, plain AdamW
  trainer   Hugging Face Trainer (+ peft for LoRA) with its defaults and DataCollatorWithPadding
  lmtune    lmtune.train() with its defaults
Variants run interleaved (A, B, C, A, B, C ...), each in a fresh subprocess so that peak RSS
is its own. Reported: samples/s, real and padded tokens/s, peak RSS, MFU against a GEMM
peak measured in the same run, and test accuracy after the run; median/min/max over repeats.

    python benchmarks/run.py --data-dir ../shared/data [--suites cls-lora,cls-full] [--repeats 3]

Writes runs/bench/results.json and runs/bench/results.md (and prints the table).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SUITES: dict[str, dict[str, Any]] = {
    "cls-lora": {
        "kind": "cls",
        "method": "lora",
        "learning_rate": 1e-3,
        "steps": 100,
        # lmtune-bf16: precision bf16 (opt-in for encoders on CPU: +6-8% here, not a default).
        "variants": ("tutorial", "trainer", "lmtune", "lmtune-bf16"),
    },
    # Full fine-tuning: the target is against Trainer (the tutorial loop is in cls-lora).
    "cls-full": {
        "kind": "cls",
        "method": "full",
        "learning_rate": 5e-5,
        "steps": 50,
        "variants": ("trainer", "lmtune", "lmtune-bf16"),
    },
    # A low-padding set: AG News title + description, whose lengths are alike, so padding that
    # lmtune skips is a small share of the gain and compute efficiency is most of it.
    "cls-agnews": {
        "kind": "cls",
        "data": "agnews",
        "labels": 4,
        "method": "lora",
        "learning_rate": 1e-3,
        "steps": 100,
    },
    # MiniLM LoRA on CoNLL-2003 (entity F1 on 500 test sentences).
    "ner-lora": {
        "kind": "ner",
        "method": "lora",
        "learning_rate": 1e-3,
        "steps": 120,  # 50 steps left every variant at entity F1 0
        "metric": "entity F1",
        "repeats": 1,
    },
    # SmolLM2-135M LoRA SFT on alpaca_en_demo, variable-length chat data (eval loss, lower is better).
    "sft-lora": {
        "kind": "sft",
        "method": "lora",
        "learning_rate": 2e-4,
        "steps": 8,
        "metric": "eval loss",
        # lmtune-ckpt: activation checkpointing (train.gradient_checkpointing), for peak memory.
        "variants": ("trainer", "lmtune", "lmtune-fp32", "lmtune-ckpt"),
        "repeats": 1,
    },
    # freeze (top layer + head), 3 epochs: the activation cache on vs off.
    "freeze-epochs": {
        "kind": "freeze",
        "method": "freeze",
        "learning_rate": 1e-3,
        "trainable_layers": 1,
        "rows": 800,
        "steps": 150,
        "variants": ("lmtune-nocache", "lmtune"),
        "repeats": 1,
    },
    # Head only (every encoder layer frozen): later epochs replay the whole encoder.
    "freeze-head-epochs": {
        "kind": "freeze",
        "method": "freeze",
        "learning_rate": 1e-3,
        "trainable_layers": 0,
        "rows": 800,
        "steps": 150,
        "variants": ("lmtune-nocache", "lmtune"),
        "repeats": 1,
    },
}
VARIANTS = (
    "tutorial",
    "trainer",
    "lmtune",
    "lmtune-nocache",
    "lmtune-bf16",
    "lmtune-fp32",
    "lmtune-nopack",
    "lmtune-ckpt",
)
BATCH, MAX_LENGTH = 16, 128
# Data subsets are drawn with DATA_SEED; repeat k trains with seed k (set per worker by --seed),
# so the accuracy column's spread is run-to-run variation, not just timing noise.
DATA_SEED = SEED = 0
LORA = {"r": 8, "alpha": 16, "dropout": 0.1, "targets": ["query", "value"]}


# ---- data --------------------------------------------------------------------------------------
def read_sst2(path: Path) -> list[tuple[str, int]]:
    with open(path, encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [(row[0], int(row[1])) for row in reader if len(row) == 2]


def prepare_data(data_dir: Path, work: Path, n_train: int) -> dict[str, Path]:
    """A seeded SST-2 training subset and the 872-row test set, as CSV files every variant reads."""
    train = read_sst2(data_dir / "sst2" / "train.tsv")
    random.Random(DATA_SEED).shuffle(train)
    test = read_sst2(data_dir / "sst2" / "test.tsv")
    files = {}
    for name, rows in (("train", train[:n_train]), ("test", test)):
        files[name] = work / f"{name}.csv"
        with open(files[name], "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return files


def read_agnews(path: Path) -> list[tuple[str, int]]:
    """AG News rows `class,title,description` as (title + description, class - 1). The source's
    escapes are undone, as a user would before training: ` #39;` is a character code whose `&` became
    a space, and a backslash stands for a line break."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.reader(fh) if len(r) == 3]
    out = []
    for label, title, description in rows:
        text = re.sub(r" ?&?#(\d+);", lambda m: chr(int(m.group(1))), f"{title} {description}")
        out.append((" ".join(text.replace("\\", " ").split()), int(label) - 1))
    return out


def prepare_agnews(data_dir: Path, work: Path, n_train: int, n_test: int = 1000) -> dict[str, Path]:
    """AG News ships one 7,600-row split: a seeded shuffle gives disjoint train and test CSVs."""
    rows = read_agnews(data_dir / "agnews" / "test.csv")
    random.Random(DATA_SEED).shuffle(rows)
    if n_train + n_test > len(rows):
        raise SystemExit(f"agnews: {n_train} train + {n_test} test rows asked, {len(rows)} available")
    files = {}
    for name, part in (("train", rows[:n_train]), ("test", rows[n_train : n_train + n_test])):
        files[name] = work / f"agnews-{name}.csv"
        with open(files[name], "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    return files


def read_csv(path: Path) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


# ---- shared pieces for the baselines ------------------------------------------------------------
def minilm() -> str:
    from lmtune.models import resolve_model

    return resolve_model("all-MiniLM-L6-v2").path


def baseline_model(method: str, num_labels: int = 2) -> Any:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=num_labels)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            task_type="SEQ_CLS",
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=LORA["targets"],
        )
        model = get_peft_model(model, config)
    return model


def accuracy(model: Any, tokenizer: Any, texts: list[str], labels: list[int]) -> float:
    """The same evaluation for every variant: sorted by length, dynamic padding, batch 64."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    correct = 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            enc = tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=MAX_LENGTH,
                padding=True,
                return_tensors="pt",
            )
            pred = model(**enc).logits.argmax(-1)
            correct += int((pred == torch.tensor([labels[i] for i in idx])).sum())
    return correct / len(texts)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the three variants (each runs in its own subprocess) ------------------------------------------
def run_tutorial(suite: dict, files: dict[str, Path]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(minilm())
    texts, labels = read_csv(files["train"])
    enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding="max_length", return_tensors="pt")
    dataset = torch.utils.data.TensorDataset(
        enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], torch.tensor(labels)
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(SEED)
    )
    model = baseline_model(suite["method"], suite.get("labels", 2))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=suite["learning_rate"], weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * suite["steps"]), suite["steps"])
    model.train()
    real = padded = steps = 0
    started = time.perf_counter()
    while steps < suite["steps"]:
        for ids, mask, types, y in loader:
            loss = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            real += int(mask.sum())
            padded += ids.numel()
            steps += 1
            if steps == suite["steps"]:
                break
    runtime = time.perf_counter() - started
    test_texts, test_labels = read_csv(files["test"])
    return {
        "runtime_s": runtime,
        "samples": steps * BATCH,
        "real_tokens": real,
        "padded_tokens": padded,
        "accuracy": accuracy(model, tokenizer, test_texts, test_labels),
        "peak_rss_mb": peak_rss_mb(),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in params),
    }


def run_trainer(suite: dict, files: dict[str, Path]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(minilm())
    texts, labels = read_csv(files["train"])
    dataset = Dataset.from_dict({"text": texts, "label": labels}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=MAX_LENGTH),
        batched=True,
        remove_columns=["text"],
    )
    counts = {"real": 0, "padded": 0}
    pad = DataCollatorWithPadding(tokenizer)

    def collate(features: list[dict]) -> dict:
        batch = pad(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["input_ids"].numel()
        return batch

    model = baseline_model(suite["method"], suite.get("labels", 2))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            max_steps=suite["steps"],
            learning_rate=suite["learning_rate"],
            weight_decay=0.01,
            warmup_steps=0.06,
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            seed=SEED,
            disable_tqdm=True,
            dataloader_pin_memory=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
        started = time.perf_counter()
        trainer.train()
        runtime = time.perf_counter() - started
    test_texts, test_labels = read_csv(files["test"])
    return {
        "runtime_s": runtime,
        "samples": suite["steps"] * BATCH,
        "real_tokens": counts["real"],
        "padded_tokens": counts["padded"],
        "accuracy": accuracy(model, tokenizer, test_texts, test_labels),
        "peak_rss_mb": peak_rss_mb(),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def run_lmtune(suite: dict, files: dict[str, Path], precision: str = "auto") -> dict[str, Any]:
    import lmtune

    with tempfile.TemporaryDirectory() as out:
        run = lmtune.train(
            {
                "model": "all-MiniLM-L6-v2",
                "method": {"name": suite["method"]}
                # The baseline's layers (lmtune's own default adapts every linear layer).
                | (
                    {"r": LORA["r"], "alpha": LORA["alpha"], "target_modules": LORA["targets"]}
                    if suite["method"] == "lora"
                    else {}
                ),
                "data": {
                    "train": str(files["train"]),
                    "validation": str(files["test"]),
                    "test": str(files["test"]),
                    "max_length": MAX_LENGTH,
                },
                "train": {
                    "max_steps": suite["steps"],
                    "batch_size": BATCH,
                    "learning_rate": suite["learning_rate"],
                    "seed": SEED,
                    "report_to": ["none"],
                    "precision": precision,
                    # The baselines neither evaluate nor checkpoint while they train; every variant
                    # is evaluated the same way afterwards.
                    "eval_strategy": "no",
                    "save_strategy": "no",
                },
                "output_dir": str(Path(out) / "run"),
            }
        )
        t = run.metrics["train"]
        test_texts, test_labels = read_csv(files["test"])
        acc = accuracy(run.model, run.tokenizer, test_texts, test_labels)
    return {
        "runtime_s": t["runtime_s"],
        "samples": suite["steps"] * BATCH,
        "real_tokens": t["tokens_per_second"] * t["runtime_s"],
        "padded_tokens": t["padded_tokens_per_second"] * t["runtime_s"],
        "accuracy": acc,
        "peak_rss_mb": peak_rss_mb(),
        "params": t["total_params"],
        "trainable": t["trainable_params"],
    }


RUNNERS = {
    "tutorial": run_tutorial,
    "trainer": run_trainer,
    "lmtune": run_lmtune,
    # bf16 autocast (fp32 master weights) on a CPU with native bf16 (avx512_bf16 / AMX).
    "lmtune-bf16": lambda suite, files: run_lmtune(suite, files, precision="bf16"),
    "lmtune-fp32": lambda suite, files: run_lmtune(suite, files, precision="fp32"),
}


# ---- measurement ---------------------------------------------------------------------------------
def gemm_peak_gflops(dtype_name: str = "float32", seconds: float = 2.0) -> float:
    """Sustained matmul throughput on this machine (the denominator of MFU)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(1024, 1024, dtype=dtype)
    b = torch.randn(1024, 1024, dtype=dtype)
    for _ in range(3):
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * 1024**3 * count / (time.perf_counter() - started) / 1e9


def variant_work(
    suite: dict, variant: str, result: dict[str, Any], shapes: dict[str, Any], label_share: float
) -> Any:
    """What the variant must compute per real token (`flops.Work`): the numerator of its MFU."""
    from flops import Work

    kind, method = suite["kind"], suite["method"]
    shape = shapes["sft" if kind == "sft" else "minilm"]
    layers = shape.layers
    tokens = result["real_tokens"] / max(result["samples"], 1)
    head = {"lm_head_share": label_share} if kind == "sft" else {}
    if kind == "ner":
        head["token_head_outputs"] = 9  # CoNLL-2003's BIO tags
    if method == "full":
        return Work(shape, tokens, backward_blocks=layers, weight_grad_blocks=layers, **head)
    if method == "lora":
        kv = shape.hidden * shape.kv_heads // shape.heads
        # LoRA on the query and value projections of every block (r x (in + out) each).
        adapters = layers * LORA["r"] * ((shape.hidden + shape.hidden) + (shape.hidden + kv))
        return Work(
            shape, tokens, backward_blocks=layers, weight_grad_blocks=0, adapter_params=adapters, **head
        )
    trainable = suite["trainable_layers"]
    cached = variant == "lmtune"  # lmtune-nocache runs every frozen block forward every epoch
    forward = (
        trainable + (layers - trainable) / 3 if cached else None
    )  # 3 epochs: one forward of the frozen blocks
    return Work(
        shape, tokens, backward_blocks=trainable, weight_grad_blocks=trainable, forward_blocks=forward, **head
    )


def variant_precision(suite: dict, variant: str) -> str:
    """The dtype the variant's matrix products run in (its MFU's peak): lmtune's `precision: auto`
    is bf16 autocast for decoders on CPUs with native bf16, fp32 otherwise."""
    from lmtune.tasks.base import cpu_has_native_bf16

    if variant == "lmtune-bf16" or (variant == "lmtune" and suite["kind"] == "sft" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def summarise(
    results: list[dict[str, Any]], works: list[Any], precision: str, peaks: dict[str, float]
) -> dict[str, Any]:
    from flops import mfu

    def stats(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "samples_per_s": stats([r["samples"] / r["runtime_s"] for r in results]),
        "real_tokens_per_s": stats([r["real_tokens"] / r["runtime_s"] for r in results]),
        "padded_tokens_per_s": stats([r["padded_tokens"] / r["runtime_s"] for r in results]),
        "peak_rss_mb": stats([r["peak_rss_mb"] for r in results]),
        "mfu": stats(
            [
                mfu(w, r["real_tokens"] / r["runtime_s"], precision, peaks)
                for r, w in zip(results, works, strict=True)
            ]
        ),
        "precision": precision,
        "flops_per_token": works[0].flops_per_token(),
        "accuracy": stats([r["accuracy"] for r in results]),
        "trainable": results[0]["trainable"],
    }


def summarise_all(
    raw: dict[str, dict[str, list[dict[str, Any]]]],
    variants: dict[str, list[str]],
    peaks: dict[str, float],
    sft_train: Path,
) -> dict[str, dict[str, Any]]:
    import suites as task_suites
    from flops import Shape

    shapes = {"minilm": Shape.of_model(minilm()), "sft": Shape.of_model(task_suites._smollm())}
    label_share = task_suites.sft_label_share(sft_train) if "sft-lora" in raw else 0.0
    summary: dict[str, dict[str, Any]] = {}
    for name, by_variant in raw.items():
        suite = SUITES[name]
        summary[name] = {
            v: summarise(
                by_variant[v],
                [variant_work(suite, v, r, shapes, label_share) for r in by_variant[v]],
                variant_precision(suite, v),
                peaks,
            )
            for v in variants[name]
        }
    return summary


def worker(args: argparse.Namespace) -> int:
    import suites as task_suites

    global SEED
    SEED = task_suites.SEED = args.seed
    suite = SUITES[args.suite]
    files = {"train": Path(args.train_file), "test": Path(args.test_file)}
    kind = suite.get("kind", "cls")
    if kind == "cls":
        result = RUNNERS[args.worker](suite, files)
    else:
        runner = {"ner": task_suites.run_ner, "sft": task_suites.run_sft, "freeze": task_suites.run_freeze}[
            kind
        ]
        result = runner(args.worker, suite, files)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="lmtune training benchmarks")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--suites", default=",".join(SUITES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=2, help="per suite, unless the suite sets fewer")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/bench"))
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--suite", help=argparse.SUPPRESS)
    parser.add_argument("--train-file", help=argparse.SUPPRESS)
    parser.add_argument("--test-file", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not (args.data_dir / "sst2" / "train.tsv").exists():
        print(f"skipped: {args.data_dir}/sst2 not found (pass --data-dir pointing at the shared data)")
        return 0

    import suites as task_suites

    peak32, peak16 = gemm_peak_gflops("float32"), gemm_peak_gflops("bfloat16")
    suites = args.suites.split(",")
    wanted = args.variants.split(",")
    suite_variants = {
        s: [v for v in SUITES[s].get("variants", ("tutorial", "trainer", "lmtune")) if v in wanted]
        for s in suites
    }
    work = Path(tempfile.mkdtemp(prefix="lmtune-bench-"))
    cls_steps = max([SUITES[s]["steps"] for s in suites if SUITES[s]["kind"] == "cls"] + [100])
    agnews_steps = max([SUITES[s]["steps"] for s in suites if SUITES[s].get("data") == "agnews"] + [0])
    data = {
        "cls": prepare_data(args.data_dir, work, cls_steps * BATCH),
        "ner": task_suites.prepare_ner(args.data_dir, work, max(SUITES["ner-lora"]["steps"] * 16, 1000)),
        "sft": task_suites.prepare_sft(args.data_dir, work, 200),
    }
    data["freeze"] = data["cls"]
    if agnews_steps:
        data["agnews"] = prepare_agnews(args.data_dir, work, agnews_steps * BATCH)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {s: {v: [] for v in suite_variants[s]} for s in suites}
    for suite in suites:
        files = data[SUITES[suite].get("data", SUITES[suite]["kind"])]
        for repeat in range(min(args.repeats, SUITES[suite].get("repeats", args.repeats))):
            for variant in suite_variants[
                suite
            ]:  # interleaved: drift in machine load hits every variant alike
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    variant,
                    "--suite",
                    suite,
                    "--train-file",
                    str(files["train"]),
                    "--test-file",
                    str(files["test"]),
                    "--seed",
                    str(SEED + repeat),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{suite}/{variant} failed (exit {proc.returncode})")
                raw[suite][variant].append(json.loads(line.removeprefix("RESULT ")))
                r = raw[suite][variant][-1]
                print(
                    f"{suite} {variant} #{repeat + 1}: {r['samples'] / r['runtime_s']:.1f} samples/s, "
                    f"acc {r['accuracy']:.3f}, rss {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )

    summary = summarise_all(raw, suite_variants, {"fp32": peak32, "bf16": peak16}, data["sft"]["train"])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    lines = [
        f"# lmtune benchmark ({datetime.now(timezone.utc):%Y-%m-%d}, {machine})",
        "",
        f"GEMM peak measured in this run: {peak32:.0f} GFLOP/s fp32, {peak16:.0f} GFLOP/s bf16. "
        f"Up to {args.repeats} repeats per suite (median [min-max]); MFU: the FLOPs each variant must do "
        "per real (non-pad) token (benchmarks/flops.py: block matmuls and attention, no weight gradients "
        "for frozen weights, no forward for cached blocks) times real tokens/s, over the GEMM peak of the "
        "dtype it computes in (bf16 for lmtune-bf16 and lmtune's SFT). "
        "cls: MiniLM-L6 on SST-2, batch 16, max_length 128, test accuracy. "
        "cls-agnews: MiniLM-L6 LoRA on AG News title + description (4 classes, lengths alike: little "
        "padding to skip), 1,000 held-out test rows. "
        "ner: MiniLM-L6 LoRA on CoNLL-2003, batch 16, entity F1 on 500 test sentences. "
        "sft: SmolLM2-135M-Instruct LoRA on alpaca_en_demo, batch 4, max_length 512, eval loss on 40 "
        "held-out examples (lmtune packs, so its steps hold more examples). freeze-epochs: lmtune freeze "
        "(top layer + head), 3 epochs, with and without the frozen-activation cache.",
        "",
    ]
    for suite in suites:
        base = summary[suite]
        metric = SUITES[suite].get("metric", "test acc")
        lines += [
            f"## {suite} ({SUITES[suite]['steps']} steps)",
            "",
            f"| variant | samples/s | real tok/s | padded tok/s | MFU | peak RSS MB | {metric} | vs tutorial "
            "| vs trainer |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for v in suite_variants[suite]:
            s = base[v]
            sps = s["samples_per_s"]
            ratio = {
                b: sps["median"] / base[b]["samples_per_s"]["median"]
                for b in ("tutorial", "trainer")
                if b in base
            }
            lines.append(
                f"| {v} | {sps['median']:.1f} [{sps['min']:.1f}-{sps['max']:.1f}] "
                f"| {s['real_tokens_per_s']['median']:.0f} | {s['padded_tokens_per_s']['median']:.0f} "
                f"| {s['mfu']['median']:.2f} | {s['peak_rss_mb']['median']:.0f} "
                f"| {s['accuracy']['median']:.3f} "
                f"| {ratio.get('tutorial', float('nan')):.2f}x | {ratio.get('trainer', float('nan')):.2f}x |"
            )
        lines.append("")
        if SUITES[suite]["kind"] == "freeze":
            lines += [
                "| variant | epoch 1 s | epoch 2 s | epoch 3 s | later epochs vs first |",
                "|---|---:|---:|---:|---:|",
            ]
            for v in suite_variants[suite]:
                times = raw[suite][v][0]["epoch_times_s"]
                later = statistics.mean(times[1:]) if len(times) > 1 else float("nan")
                cells = " | ".join(f"{t:.1f}" for t in times)
                lines.append(f"| {v} | {cells} | {times[0] / later:.2f}x faster |")
            lines.append("")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "gemm_gflops": {"fp32": peak32, "bf16": peak16},
                "summary": summary,
                "raw": raw,
            },
            indent=2,
        )
    )
    (args.output_dir / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
