"""NER defaults, 3 seeds: lmtune's LoRA defaults against Trainer+peft written as a new user writes it.

Usage: python benchmarks/ner_defaults.py --data-dir ../shared/data [--seeds 0,1,2]
       [--train-sentences 1700] [--epochs 3] [--learning-rate 1e-3] [--variants ...]

The setting of issue 20 part 6 on CoNLL-2003 (packaged MiniLM-L6): a seeded subset of training
sentences, 3 epochs, LoRA at learning rate 1e-3 for both tools. Trainer+peft is the Hugging Face
course recipe with peft's LoRA (query/value, r 8, alpha 16, the classifier trained in full),
first sub-token labels, Trainer's defaults otherwise, the final model. lmtune gets the same data,
epochs and learning rate, the CoNLL dev sentences as its validation split (which picks its
checkpoint) and its defaults for everything else (LoRA on every linear layer). `trainer+peft
all-linear` and `lmtune query/value` swap the two tools' layer choices, and the `lmtune query/value`
rows below them change one more setting each, to separate the layer choice from everything else.
Every variant is scored by the same seqeval entity F1 on the same test sentences. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import suites
from suites import NER_BATCH, NER_MAX_LENGTH, read_conll, write_conll


def ner_files(data_dir: Path, work: Path, n_train: int) -> dict[str, Path]:
    train = read_conll(data_dir / "conll2003" / "train.txt")
    random.Random(0).shuffle(train)
    return {
        "train": write_conll(work / "train.conll", train[:n_train]),
        "validation": write_conll(work / "dev.conll", read_conll(data_dir / "conll2003" / "dev.txt")[:300]),
        "test": write_conll(work / "test.conll", read_conll(data_dir / "conll2003" / "test.txt")[:500]),
    }


def run_trainer(
    files: dict[str, Path], seed: int, args: argparse.Namespace, targets: Any = ("query", "value")
) -> tuple[float, float]:
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, Trainer, TrainingArguments
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(suites._minilm())
    model = suites._ner_model("lora", targets)
    dataset = Dataset.from_dict(suites._align(tokenizer, read_conll(files["train"]), False))
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=NER_BATCH,
            num_train_epochs=args.epochs,
            learning_rate=args.learning_rate,
            weight_decay=0.01,
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            seed=seed,
            disable_tqdm=True,
            dataloader_pin_memory=False,
        )
        collate = DataCollatorForTokenClassification(tokenizer)
        trainer = Trainer(model=model, args=training, train_dataset=dataset, data_collator=collate)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    return suites.ner_f1(model, tokenizer, files["test"]), seconds


def run_lmtune(
    files: dict[str, Path],
    seed: int,
    args: argparse.Namespace,
    method: dict[str, Any],
    train: dict[str, Any] | None = None,
) -> tuple[float, float]:
    import lmtune

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run = lmtune.train(
            {
                "model": "all-MiniLM-L6-v2",
                "task": "ner",
                "method": {"name": "lora", **method},
                "data": {k: str(v) for k, v in files.items()} | {"max_length": NER_MAX_LENGTH},
                "train": {
                    "epochs": args.epochs,
                    "batch_size": NER_BATCH,
                    "learning_rate": args.learning_rate,
                    "seed": seed,
                    "report_to": ["none"],
                }
                | (train or {}),
                "output_dir": str(Path(out) / "run"),
            }
        )
        seconds = time.perf_counter() - started
        return suites.ner_f1(run.model, run.tokenizer, files["test"]), seconds


QUERY_VALUE = {"target_modules": ["query", "value"]}  # peft's choice for BERT, lmtune's until 2026-12-03
VARIANTS = {
    "trainer+peft": lambda files, seed, args: run_trainer(files, seed, args),
    "trainer+peft all-linear": lambda files, seed, args: run_trainer(files, seed, args, "all-linear"),
    "lmtune": lambda files, seed, args: run_lmtune(files, seed, args, {}),
    "lmtune query/value": lambda files, seed, args: run_lmtune(files, seed, args, QUERY_VALUE),
    # One difference each from the row above, to find what else separates lmtune from Trainer.
    "lmtune query/value random batches": lambda files, seed, args: run_lmtune(
        files, seed, args, QUERY_VALUE, {"group_by_length": False}
    ),
    "lmtune query/value final model": lambda files, seed, args: run_lmtune(
        files, seed, args, QUERY_VALUE, {"eval_strategy": "no", "save_strategy": "no"}
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-sentences", type=int, default=1700)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=", ".join(VARIANTS))
    args = parser.parse_args()
    if not (args.data_dir / "conll2003").is_dir():
        print(f"skipped: {args.data_dir}/conll2003 not found (pass --data-dir pointing at the shared data)")
        return 0
    files = ner_files(
        args.data_dir, Path(tempfile.mkdtemp(prefix="lmtune-ner-defaults-")), args.train_sentences
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",")
    scores: dict[str, list[float]] = {name: [] for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for seed in seeds:
        for name in names:  # interleaved: drift in machine load hits every variant alike
            f1, took = VARIANTS[name](files, seed, args)
            scores[name].append(f1)
            seconds[name].append(took)
            print(f"seed {seed}, {name}: F1 {f1:.4f} in {took:.0f} s", file=sys.stderr)
    print(
        f"\nCoNLL-2003, {args.train_sentences} training sentences, {args.epochs:g} epochs, LoRA lr "
        f"{args.learning_rate:g}, test entity F1 on 500 sentences\n"
    )
    print("| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | mean s |")
    print("|---|" + "---:|" * (len(seeds) + 3))
    for name in names:
        values = scores[name]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " | ".join(f"{v:.4f}" for v in values)
        mean_s = statistics.fmean(seconds[name])
        print(f"| {name} | {cells} | {statistics.fmean(values):.4f} | {std:.4f} | {mean_s:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
