"""Chinese end to end: ChnSentiCorp sentiment with LoRA on Gemma 3 270M against MiniLM, measured.

Usage: python benchmarks/chinese.py --data-dir ../shared/data [--rows 800] [--epochs 1]
       [--models gemma-3-270m,all-MiniLM-L6-v2] [--work DIR] [--out benchmarks/CHINESE.md]

Each model is fine-tuned (LoRA, lmtune's defaults) on the same seeded subset of ChnSentiCorp train,
validated on 200 dev rows and tested on the full test split (777 rows), in its own process so that
peak RSS is its own (a finished run in --work is reused). Reports test accuracy and macro F1,
training samples/s, peak RSS and time. MiniLM's uncased English vocabulary holds about 240 CJK
characters, so it is the contrast: what a Chinese user got before a multilingual model was packaged.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def subsets(data: Path, work: Path, rows: int, seed: int) -> dict[str, Path]:
    rng = random.Random(seed)
    files = {}
    for split, name, n in (
        ("train", "train.csv", rows),
        ("validation", "dev.csv", 200),
        ("test", "test.csv", None),
    ):
        with open(data / "chnsenticorp" / name, encoding="utf-8", newline="") as fh:
            records = [r for r in csv.DictReader(fh) if r["review"].strip()]
        rng.shuffle(records)
        files[split] = work / f"chnsenticorp-{split}.csv"
        with open(files[split], "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, ["review", "label"])
            writer.writeheader()
            writer.writerows({"review": r["review"], "label": r["label"]} for r in records[:n])
    return files


def train_one(model: str, files: dict[str, Path], out: Path, epochs: float) -> dict:
    cmd = [
        sys.executable, "-m", "lmtune", "train", "--model", model, "--task", "classification",
        "--method", "lora", "--train", str(files["train"]), "--validation", str(files["validation"]),
        "--test", str(files["test"]), "--epochs", str(epochs), "-o", str(out), "--overwrite",
        "--set", "data.max_length=128", "--set", "train.report_to=[none]",
    ]  # fmt: skip
    started = time.perf_counter()
    if not (out / "metrics.json").exists():  # a finished run in --work is reused
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{model} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    t, test = metrics["train"], metrics["test"]
    return {
        "model": model,
        "test_accuracy": round(test["accuracy"], 4),
        "test_f1_macro": round(test["f1_macro"], 4),
        "samples_per_s": t["samples_per_second"],
        "peak_rss_mb": t["peak_rss_mb"],
        "train_s": t["runtime_s"],
        "wall_s": round(time.perf_counter() - started, 1),
        "trainable_params": t["trainable_params"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--models", default="gemma-3-270m,all-MiniLM-L6-v2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/CHINESE.md"))
    args = parser.parse_args()
    if not (args.data_dir / "chnsenticorp").is_dir():
        sys.exit(f"no chnsenticorp under {args.data_dir} (see ../shared/data/MANIFEST.md)")
    work = args.work or Path(tempfile.mkdtemp(prefix="lmtune-chinese-"))
    work.mkdir(parents=True, exist_ok=True)
    files = subsets(args.data_dir, work, args.rows, args.seed)
    rows = [train_one(m, files, work / f"run-{m}", args.epochs) for m in args.models.split(",")]
    lines = [
        "# Chinese sentiment (ChnSentiCorp): Gemma 3 270M vs MiniLM, LoRA",
        "",
        f"{args.rows} seeded training rows, {args.epochs:g} epoch(s), max_length 128, "
        "lmtune's LoRA defaults; "
        "validation 200 dev rows; test: the 777-row test split; 2 CPU cores. "
        "`python benchmarks/chinese.py`.",
        "",
        "| model | test accuracy | test macro F1 | trainable params | train samples/s | peak RSS MB | "
        "training s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['test_accuracy']} | {r['test_f1_macro']} | "
            f"{r['trainable_params']:,} | {r['samples_per_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['train_s']:.0f} |"
        )
    with open(files["test"], encoding="utf-8", newline="") as fh:
        labels = [r["label"] for r in csv.DictReader(fh)]
    majority = max(labels.count(v) for v in set(labels)) / len(labels)
    lines += ["", f"Always answering the majority class scores test accuracy {majority:.3f}."]
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
