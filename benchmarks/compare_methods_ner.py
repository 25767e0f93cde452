"""Every registered method on a fixed subset of CoNLL-2003 (packaged MiniLM): F1, trainable %, time.

Usage: python benchmarks/compare_methods_ner.py --data-dir ../shared/data [--train-sentences 1000]
The data set is not part of the project: this script reads it from --data-dir and writes its
subsets to a temporary directory. Results are printed as a markdown table and saved as JSON.
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


def conll_sentences(path: Path) -> list[str]:
    blocks, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                blocks.append("\n".join(current))
                current = []
        elif not line.startswith("-DOCSTART-"):
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--train-sentences", type=int, default=1000)
    parser.add_argument("--eval-sentences", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--methods", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-ner-methods.json"))
    args = parser.parse_args()
    source = args.data_dir / "conll2003"
    if not source.is_dir():
        print(f"skipped: {source} not found (pass --data-dir)")
        return 0

    import lmtune
    from lmtune.methods import METHODS

    methods = METHODS.names() if args.methods == "all" else args.methods.split(",")
    work = Path(tempfile.mkdtemp(prefix="lmtune-bench-ner-"))
    files = {}
    for split, name, n in (
        ("train", "train.txt", args.train_sentences),
        ("validation", "dev.txt", args.eval_sentences),
        ("test", "test.txt", args.eval_sentences),
    ):
        files[split] = work / f"{split}.conll"
        files[split].write_text("\n\n".join(conll_sentences(source / name)[:n]) + "\n", encoding="utf-8")
    rows = []
    for method in methods:
        cfg = {
            "model": "all-MiniLM-L6-v2",
            "task": "token-classification",
            "method": method,
            "data": {k: str(v) for k, v in files.items()} | {"max_length": 128},
            "train": {
                "epochs": args.epochs,
                "batch_size": 16,
                "report_to": ["none"],
                "early_stopping_patience": None,
            },
            "output_dir": str(work / method),
        }
        started = time.perf_counter()
        try:
            run = lmtune.train(cfg)
        except lmtune.LmtuneError as exc:
            rows.append({"method": method, "error": str(exc)})
            print(f"{method}: {exc}", file=sys.stderr)
            continue
        t = run.metrics["train"]
        rows.append(
            {
                "method": method,
                "f1": run.metrics["test"]["f1"],
                "trainable_percent": t["trainable_percent"],
                "trainable_params": t["trainable_params"],
                "train_runtime_s": t["runtime_s"],
                "samples_per_second": t["samples_per_second"],
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2))
    print(
        f"\nCoNLL-2003 subset: {args.train_sentences} train / {args.eval_sentences} test sentences, "
        f"{args.epochs} epochs, MiniLM-L6\n"
    )
    print("| method | test F1 | trainable % | train time (s) | samples/s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | error: {r['error'][:60]} | | | |")
        else:
            print(
                f"| {r['method']} | {r['f1']:.3f} | {r['trainable_percent']:.3f} "
                f"| {r['train_runtime_s']:.0f} | {r['samples_per_second']:.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
