"""How many optimizer steps a method needs to converge, by data size: the measurement behind
`lmtune compare`'s default budget (`--budget auto`, `lmtune.search.compare.auto_steps`).

Usage: python benchmarks/convergence.py --data-dir ../shared/data [--suite cls|ner]
       [--rows 600,2400] [--methods lora,ia3,vera] [--max-steps 600] [--eval-every 50] [--work DIR]

Trains each method at its own default learning rate on seeded SST-2 (or CoNLL-2003) subsets of
each size for --max-steps, evaluating every --eval-every steps, and reports the step at which
the validation metric first came within half a point of the best it reached (the same tolerance
as the `converged` column of `lmtune compare`). Prints a markdown table; the data sets are not
part of the project and are written to a temporary directory (or --work, outside the project).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_comparison import conll_files, sst2_files

TOLERANCE = 0.005  # half a point, as compare's `converged` column
SUITES = {
    "cls": ("all-MiniLM-L6-v2", "classification", 64, "eval_f1_macro"),
    "ner": ("all-MiniLM-L6-v2", "token-classification", 128, "eval_f1"),
}


def curve(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, validation metric) at each evaluation of a finished run."""
    lines = (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [(int(r["step"]), float(r[key])) for r in map(json.loads, lines) if key in r and "step" in r]


def steps_to_plateau(points: list[tuple[int, float]]) -> int:
    best = max(value for _, value in points)
    return next(step for step, value in points if value >= best - TOLERANCE)


def train_one(suite: str, method: str, files: dict[str, Path], args: argparse.Namespace, out: Path) -> dict:
    import lmtune
    from lmtune.config import RunConfig

    model, task, max_length, key = SUITES[suite]
    cfg = RunConfig.from_dict(
        {
            "model": model,
            "task": task,
            "method": {"name": method},
            "data": {k: str(v) for k, v in files.items()} | {"max_length": max_length},
            "train": {
                "batch_size": 16,
                "max_steps": args.max_steps,
                "eval_strategy": "steps",
                "eval_steps": args.eval_every,
                "save_strategy": "no",
                "report_to": ["none"],
            },
            "output_dir": str(out),
        }
    )
    started = time.perf_counter()
    lmtune.train(cfg)
    points = curve(out, key)
    return {
        "best": max(v for _, v in points),
        "final": points[-1][1],
        "plateau": steps_to_plateau(points),
        "curve": points,
        "seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--suite", choices=sorted(SUITES), default="cls")
    parser.add_argument("--rows", default="600,2400", help="training-set sizes, comma-separated")
    parser.add_argument("--methods", default="lora,ia3,vera")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if not (args.data_dir / "sst2").is_dir():
        print(f"skipped: {args.data_dir}/sst2 not found (pass --data-dir pointing at the shared data)")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="lmtune-convergence-"))
    rows = []
    for n in (int(r) for r in args.rows.split(",")):
        data = work / f"{args.suite}-{n}"
        data.mkdir(parents=True, exist_ok=True)
        make = sst2_files if args.suite == "cls" else conll_files
        files = make(args.data_dir, data, n, 0)
        for method in args.methods.split(","):
            result = train_one(args.suite, method, files, args, work / f"run-{args.suite}-{n}-{method}")
            rows.append((n, method, result))
            print(f"{n} rows, {method}: plateau at step {result['plateau']}", file=sys.stderr)
    print(f"\n{args.suite}: batch 16, {args.max_steps} steps, evaluated every {args.eval_every}\n")
    header = "| train rows | method | steps per epoch | best | final | plateau step | epochs | curve |"
    print(header)
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for n, method, r in rows:
        per_epoch = -(-n // 16)
        curve_text = " ".join(f"{v:.3f}" for _, v in r["curve"])
        print(
            f"| {n} | {method} | {per_epoch} | {r['best']:.4f} | {r['final']:.4f} | {r['plateau']} | "
            f"{r['plateau'] / per_epoch:.1f} | {curve_text} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
