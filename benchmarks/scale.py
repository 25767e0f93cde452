"""Scale figures: 1 vs 2 processes, the tokenization cache, and streaming memory on a 2M-row file.

Usage: python benchmarks/scale.py --data-dir ../shared/data [--work-dir /tmp/lmtune-scale]
           [--parts processes,cache,streaming] [--rows 2000000] [--steps 60]

- processes: MiniLM LoRA on an SST-2 subset, one process (all cores) against two processes
  (DDP over gloo, one core each) at the same global batch: samples/s and test metrics.
- cache: SST-2 train (60k rows) tokenized into an empty cache, then again from it.
- streaming: a generated file of --rows short reviews; `lmtune train` for --steps steps with
  data.streaming on and off, each in its own process, resident memory sampled every 0.2 s.
Prints markdown tables (and writes them to WORK_DIR/scale.md).
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
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent


def lmtune_train(args: list[str]) -> float:
    """Run `lmtune train ARGS` in a subprocess; returns wall seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmtune", "train", *args], check=True, capture_output=True)
    return time.perf_counter() - started


def processes_part(data_dir: Path, work: Path, rows: int) -> str:
    sst2 = data_dir / "sst2"
    train = work / "sst2_train_subset.tsv"
    with open(sst2 / "train.tsv", encoding="utf-8") as src, open(train, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i > rows:
                break
            dst.write(line)
    common = [
        "--model", "all-MiniLM-L6-v2", "--task", "classification", "--method", "lora",
        "--train", str(train), "--validation", str(sst2 / "test.tsv"), "--test", str(sst2 / "test.tsv"),
        "--epochs", "1", "--overwrite", "--set", "data.max_length=64", "--set", "train.report_to=[none]",
        "--set", "train.eval_strategy=no", "--set", "train.save_strategy=no",
    ]  # fmt: skip
    lines = [
        "| processes | per-process batch | train runtime s | samples/s | test accuracy | test f1_macro |",
        "|---|---|---|---|---|---|",
    ]
    for procs, batch in ((1, 32), (2, 16)):
        out = work / f"procs-{procs}"
        extra = ["--num-processes", str(procs)] if procs > 1 else []
        lmtune_train([*common, "-o", str(out), "--set", f"train.batch_size={batch}", *extra])
        m = json.loads((out / "metrics.json").read_text())
        lines.append(
            f"| {procs} | {batch} | {m['train']['runtime_s']:.1f} | {m['train']['samples_per_second']:.1f} "
            f"| {m['test']['accuracy']:.4f} | {m['test']['f1_macro']:.4f} |"
        )
    return "\n".join(lines)


def cache_part(data_dir: Path, work: Path) -> str:
    os.environ["LMTUNE_TOKENIZED_CACHE"] = str(work / "tokenized-cache")
    from lmtune.config import RunConfig
    from lmtune.data.cache import cached_tokenize, tokenizer_digest
    from lmtune.models import resolve_model
    from lmtune.run import _load_tokenizer
    from lmtune.tasks import get_task_class

    cfg = RunConfig.from_dict(
        {
            "model": "all-MiniLM-L6-v2",
            "task": "classification",
            "data": {
                "train": str(data_dir / "sst2/train.tsv"),
                "validation": str(data_dir / "sst2/dev.tsv"),
                "test": str(data_dir / "sst2/test.tsv"),
                "max_length": 64,
            },
            "output_dir": str(work / "unused"),
        }
    )
    task = get_task_class("classification")(cfg)
    data = task.prepare_data()
    tokenizer = _load_tokenizer(resolve_model("all-MiniLM-L6-v2").path, cfg)
    digest = tokenizer_digest(tokenizer)
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        result, hit = cached_tokenize(task, data.splits["train"], tokenizer, digest)
        timings.append((time.perf_counter() - started, hit, len(result)))
    (miss, _, n), (hit_s, hit, _) = timings
    assert hit, "the second pass should have been a cache hit"
    return (
        "| rows | tokenize + write to the cache s | same split from the cache s | speed-up |\n"
        "|---|---|---|---|\n"
        f"| {n} | {miss:.2f} | {hit_s:.2f} | {miss / hit_s:.0f}x |"
    )


def generate_reviews(path: Path, rows: int) -> None:
    rng = random.Random(0)
    good = ["great", "excellent", "wonderful", "superb", "lovely", "brilliant"]
    bad = ["awful", "terrible", "dreadful", "boring", "poor", "bad"]
    subjects = ["the film", "this phone", "the hotel", "our meal", "the service", "this book"]
    fillers = ["really", "quite", "honestly", "at times", "overall", "for the price"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(rows):
            positive = i % 2 == 0
            words = [rng.choice(subjects), "was", rng.choice(good if positive else bad)]
            words += rng.sample(fillers, rng.randint(0, 4))
            writer.writerow([" ".join(words), "positive" if positive else "negative"])


def peak_rss_of(command: list[str]) -> tuple[float, list[float], float]:
    """Run `command`; (peak RSS MB, RSS samples MB, wall s), sampling every 0.2 s."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    handle = psutil.Process(proc.pid)
    samples: list[float] = []
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            rss = handle.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            break
        if rss > 0:  # an exiting process reports 0
            samples.append(rss)
        time.sleep(0.2)
    reader.join()
    if proc.returncode != 0:
        raise RuntimeError(b"".join(stderr).decode(errors="replace")[-3000:])
    return max(samples or [0.0]), samples, time.perf_counter() - started


def streaming_part(work: Path, rows: int, steps: int) -> str:
    big = work / f"reviews_{rows}.csv"
    if not big.exists():
        generate_reviews(big, rows)
    small = work / "reviews_eval.csv"
    generate_reviews(small, 200)
    lines = [
        f"File: {rows:,} rows, {big.stat().st_size / 2**20:.0f} MB; MiniLM LoRA, batch 32, {steps} steps.\n",
        "| mode | peak RSS MB | RSS at 25% / 50% / 75% / end of the run MB | wall s |",
        "|---|---|---|---|",
    ]
    for streaming in (True, False):
        out = work / f"stream-{streaming}"
        command = [
            sys.executable, "-m", "lmtune", "train", "--model", "all-MiniLM-L6-v2", "--method", "lora",
            "--train", str(big), "--validation", str(small), "--test", str(small), "-o", str(out),
            "--overwrite", "--set", f"data.streaming={str(streaming).lower()}",
            "--set", f"train.max_steps={steps}", "--set", "train.batch_size=32",
            "--set", "data.max_length=32", "--set", "train.report_to=[none]",
            "--set", "train.eval_strategy=no", "--set", "train.save_strategy=no",
        ]  # fmt: skip
        peak, samples, wall = peak_rss_of(command)
        marks = [samples[min(len(samples) - 1, int(len(samples) * f))] for f in (0.25, 0.5, 0.75)] + [
            samples[-1]
        ]
        lines.append(
            f"| {'streaming' if streaming else 'in memory'} | {peak:.0f} | "
            + " / ".join(f"{m:.0f}" for m in marks)
            + f" | {wall:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--parts", default="processes,cache,streaming")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--process-rows", type=int, default=2000)
    args = parser.parse_args()
    parts = args.parts.split(",")
    if ("processes" in parts or "cache" in parts) and not (args.data_dir / "sst2").is_dir():
        sys.exit(f"no SST-2 under {args.data_dir} (pass --data-dir, or --parts streaming)")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lmtune-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = [f"# lmtune scale figures\n\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs\n"]
    if "processes" in parts:
        sections.append(
            "## 1 vs 2 processes (same global batch 32)\n\n"
            + processes_part(args.data_dir, work, args.process_rows)
        )
    if "cache" in parts:
        sections.append("## Tokenization cache\n\n" + cache_part(args.data_dir, work))
    if "streaming" in parts:
        sections.append("## Streaming memory\n\n" + streaming_part(work, args.rows, args.steps))
    text = "\n\n".join(sections) + "\n"
    (work / "scale.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
