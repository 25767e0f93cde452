"""Evaluation speed, lmtune against Hugging Face Trainer, on the same MiniLM-L6 LoRA classifier.

Usage: python benchmarks/eval_speed.py --data-dir ../shared/data [--repeats 3]

Trains a LoRA classifier on 64 SST-2 sentences for a few steps (the weights do not change what an
evaluation costs), then evaluates the same model on SST-2's 872 test sentences:

- `trainer, defaults`: `Trainer.evaluate` as a new user writes it (DataCollatorWithPadding,
  per_device_eval_batch_size 8, the dataset's order), with an accuracy `compute_metrics`;
- `trainer, batch 64`: the same at lmtune's inference batch, to separate batch size from ordering;
- `lmtune`: `Run.evaluate` (reads and tokenizes the file, length-sorted batches under
  inference mode, every metric lmtune reports, calibration included);
- `lmtune bf16`: the same for a run trained with `train.precision: bf16` (bf16 autocast),
  where the CPU has native bf16.

Reports samples/s (the median of --repeats timed evaluations after one warm-up) and accuracy, which
must agree between the variants of one precision. The data are not part of the project and are
written to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_comparison import sst2_files

TEST_ROWS = 872  # sst2_files writes SST-2's whole test split


def timed(evaluate: Any, repeats: int) -> tuple[float, dict[str, Any]]:
    """Median seconds of `repeats` calls after one warm-up, and the last call's metrics."""
    metrics = evaluate()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        metrics = evaluate()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), metrics


def lmtune_run(files: dict[str, Path], out: Path, precision: str) -> Any:
    import lmtune

    return lmtune.train(
        {
            "model": "all-MiniLM-L6-v2",
            "task": "classification",
            "method": {"name": "lora"},
            "data": {"train": str(files["train"]), "max_length": 128},
            "train": {
                "max_steps": 4,
                "batch_size": 16,
                "eval_strategy": "no",
                "save_strategy": "no",
                "precision": precision,
                "report_to": ["none"],
            },
            "output_dir": str(out),
        }
    )


def trainer_evaluate(run: Any, test: Path, batch_size: int, work: Path) -> Any:
    """Trainer.evaluate as the course writes it, on the lmtune run's model and tokenizer."""
    import csv

    import numpy as np
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    with open(test, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    label_ids = run.model.config.label2id
    encoded = run.tokenizer([r["text"] for r in rows], truncation=True, max_length=128)
    dataset = Dataset.from_dict(dict(encoded) | {"labels": [label_ids[r["label"]] for r in rows]})

    def accuracy(prediction: Any) -> dict[str, float]:
        return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}

    args = TrainingArguments(
        output_dir=str(work), per_device_eval_batch_size=batch_size, report_to="none", disable_tqdm=True
    )
    trainer = Trainer(
        model=run.model,
        args=args,
        data_collator=DataCollatorWithPadding(run.tokenizer),
        compute_metrics=accuracy,
    )
    return lambda: trainer.evaluate(dataset)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.data_dir / "sst2").is_dir():
        print(f"skipped: {args.data_dir}/sst2 not found (pass --data-dir pointing at the shared data)")
        return 0
    import torch

    from lmtune.tasks.base import cpu_has_native_bf16

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = sst2_files(args.data_dir, work, 64, seed=0)
        test = files["test"]
        run = lmtune_run(files, work / "fp32", "fp32")
        for name, batch in (("trainer, defaults", 8), ("trainer, batch 64", 64)):
            seconds, metrics = timed(trainer_evaluate(run, test, batch, work / "trainer"), args.repeats)
            results.append((name, seconds, metrics["eval_accuracy"]))
        seconds, metrics = timed(lambda: run.evaluate(test), args.repeats)
        results.append(("lmtune", seconds, metrics["accuracy"]))
        if cpu_has_native_bf16() or torch.cuda.is_available():
            bf16 = lmtune_run(files, work / "bf16", "bf16")
            seconds, metrics = timed(lambda: bf16.evaluate(test), args.repeats)
            results.append(("lmtune bf16", seconds, metrics["accuracy"]))
    reference = results[0][1]
    print(f"\nSST-2 test, {TEST_ROWS} sentences, MiniLM-L6 LoRA, median of {args.repeats} evaluations\n")
    print("| variant | seconds | samples/s | accuracy | vs trainer defaults |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, accuracy in results:
        rate = TEST_ROWS / seconds
        print(f"| {name} | {seconds:.2f} | {rate:.0f} | {accuracy:.4f} | {reference / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
