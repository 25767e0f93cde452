"""Compiled training on CPU with shape buckets, against eager, on the same MiniLM LoRA classifier.

Usage: python benchmarks/compile_buckets.py --data-dir ../shared/data [--steps 80] [--rows 1280]

Each variant trains lmtune's defaults (LoRA on every linear layer) on the same seeded SST-2 subset,
batch 16, max_length 64, in its own process:
- `eager`: no bucketing (lmtune's default);
- `eager-buckets16`: batch lengths rounded up to multiples of 16 (`train.pad_to_multiple_of`),
  what the padding alone costs;
- `compiled-buckets16`: `train.torch_compile` with `train.pad_to_multiple_of: 16`;
- `compiled-nobuckets`: every new length may recompile.
Per step, wall time is recorded; the steady-state step is the median of the second half of the
steps (every bucket seen by then), warm-up the rest: total minus steps x steady step (for the
compiled variants, mostly compilation).
Reports steady-state and end-to-end samples/s, warm-up seconds, graphs compiled and test accuracy.
The data are not part of the project: the subset is written to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_comparison import sst2_files

VARIANTS = {
    "eager": {},
    "eager-buckets16": {"pad_to_multiple_of": 16},
    "compiled-buckets16": {"torch_compile": True, "pad_to_multiple_of": 16},
    "compiled-nobuckets": {"torch_compile": True},
}
BATCH = 16


def worker(variant: str, files: dict[str, Path], steps: int) -> dict[str, Any]:
    """Train one variant; per-step times, compiled graphs and test accuracy."""
    import torch
    from transformers import TrainerCallback

    import lmtune
    from lmtune.run import train as run_train

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = lmtune.RunConfig.from_dict(
            {
                "model": "all-MiniLM-L6-v2",
                "method": "lora",
                "data": {"train": str(files["train"]), "max_length": 64},
                "train": {
                    "max_steps": steps,
                    "batch_size": BATCH,
                    "seed": 0,
                    "report_to": ["none"],
                    "eval_strategy": "no",
                    "save_strategy": "no",
                    **VARIANTS[variant],
                },
                "output_dir": str(Path(out) / "run"),
            }
        )
        started = time.perf_counter()
        run = run_train(cfg, callbacks=[timer])
        total = time.perf_counter() - started
        accuracy = run.evaluate(files["test"])["accuracy"]
    from torch._dynamo.utils import counters

    steady = statistics.median(timer.seconds[len(timer.seconds) // 2 :])
    return {
        "variant": variant,
        "train_s": sum(timer.seconds),
        "total_s": total,
        "steady_step_s": steady,
        "warmup_s": max(0.0, sum(timer.seconds) - steady * len(timer.seconds)),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "accuracy": accuracy,
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rows", type=int, default=1280)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        files = {"train": args.work / "sst2-train.csv", "test": args.work / "sst2-test.csv"}
        print(json.dumps(worker(args.worker, files, args.steps)))
        return 0
    if not (args.data_dir / "sst2").is_dir():
        print(f"skipped: {args.data_dir}/sst2 not found (pass --data-dir pointing at the shared data)")
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sst2_files(args.data_dir, Path(tmp), args.rows, seed=0)
        for variant in args.variants.split(","):
            command = [
                sys.executable,
                __file__,
                "--worker",
                variant,
                "--work",
                tmp,
                "--steps",
                str(args.steps),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{variant}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{variant}: {results[-1]}", file=sys.stderr)
    print(
        f"\nSST-2, {args.rows} rows, MiniLM-L6 LoRA (all linear layers), batch {BATCH}, {args.steps} steps\n"
    )
    print("| variant | steady samples/s | end-to-end samples/s | warm-up s | graphs | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        steady, end_to_end = BATCH / r["steady_step_s"], BATCH * args.steps / r["train_s"]
        print(
            f"| {r['variant']} | {steady:.1f} | {end_to_end:.1f} | {r['warmup_s']:.0f} | {r['graphs']} "
            f"| {r['accuracy']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
