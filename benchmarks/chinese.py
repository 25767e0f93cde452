"""Chinese end to end on the packaged Gemma 3 270M, measured on `../shared/data`, one suite at a time.

Usage: python benchmarks/chinese.py --data-dir ../shared/data [--suites sentiment,ner,lcsts,...]
       [--rows N] [--work DIR] [--out benchmarks/CHINESE.md]

Suites (each model and formulation fine-tuned with LoRA at lmtune's defaults, 1 epoch, in its own
`lmtune train` process so that peak RSS is its own; a finished run in --work is reused):
- sentiment: ChnSentiCorp, Gemma 3 against MiniLM (whose uncased English vocabulary holds about 240
  CJK characters: what a Chinese user got before a multilingual model was packaged); test accuracy.
- ner: CLUENER, a token-classification head on Gemma 3 against Gemma 3 writing the entities as JSON
  through SFT (`answer_format: entities`); entity F1 on the same dev sentences, both by seqeval-style
  exact (type, text) matches.
- lcsts: LCSTS summaries by SFT; character-level ROUGE-L of greedy generations, untuned vs tuned.
- translation: en->zh by SFT on Tatoeba pairs; character-level BLEU, untuned vs tuned.
- alpaca: alpaca_zh SFT; eval loss on held-out examples, untuned vs tuned.
Results of every suite measured so far are kept in CHINESE.json, and CHINESE.md is rewritten
from all of them, so suites can be run (and rerun) separately.
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
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GEMMA = "gemma-3-270m"
MINILM = "all-MiniLM-L6-v2"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from lcsts_to_jsonl import INSTRUCTION as LCSTS_INSTRUCTION  # noqa: E402
from to_generative_sft import ner_rows  # noqa: E402

TRANSLATE = "把下面的英文句子翻译成中文。"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


def seeded_split(rows: list, sizes: dict[str, int | None], seed: int) -> dict[str, list]:
    """Disjoint slices of one seeded shuffle, in the order given (None: the rest)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    out, start = {}, 0
    for split, n in sizes.items():
        end = len(rows) if n is None else start + n
        out[split], start = rows[start:end], end
    return out


def count_rows(path: Path) -> int:
    with open(path, encoding="utf-8") as fh:
        lines = sum(1 for line in fh if line.strip())
    return lines - 1 if path.suffix == ".csv" else lines  # a csv has a header


def train(name: str, out: Path, files: dict[str, Path], task: str, model: str, sets: list[str]) -> dict:
    """One `lmtune train` run (LoRA, 1 epoch) and the row of what it measured."""
    cmd = [sys.executable, "-m", "lmtune", "train", "--model", model, "--task", task, "--method", "lora",
           "--epochs", "1", "-o", str(out), "--overwrite", "--set", "train.report_to=[none]"]  # fmt: skip
    for split, path in files.items():
        cmd += [f"--{split}", str(path)]
    for item in sets:
        cmd += ["--set", item]
    wall = None  # a finished run in --work is reused: its wall time is not known here
    if not (out / "metrics.json").exists():
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        wall = round(time.perf_counter() - started, 1)  # loading, baseline, training, evaluation
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    t = metrics["train"]
    return {
        "name": name,
        "model": model,
        "test": metrics.get("test", {}),
        "baseline": metrics.get("baseline", {}),
        "trainable_params": t["trainable_params"],
        "train_rows": count_rows(files["train"]),
        "samples_per_s": t.get("examples_per_second") or t["samples_per_second"],  # packed: examples
        "tokens_per_s": t.get("tokens_per_second"),
        "peak_rss_mb": t["peak_rss_mb"],
        "train_s": t["runtime_s"],
        "wall_s": wall,
    }


def summarise(row: dict, metric: str, label: str) -> dict:
    """The row reduced to one metric, untuned (when the run measured it) and tuned."""
    before = row["baseline"].get(metric) if isinstance(row["baseline"], dict) else None
    keep = {k: v for k, v in row.items() if k not in ("test", "baseline")}
    return {**keep, "metric": label, "before": before, "after": row["test"].get(metric)}


# ---- suites -------------------------------------------------------------------------------------
def sentiment(data: Path, work: Path, rows: int, seed: int) -> list[dict]:
    files = {}
    for split, name, n in (
        ("train", "train.csv", rows),
        ("validation", "dev.csv", 200),
        ("test", "test.csv", None),
    ):
        with open(data / "chnsenticorp" / name, encoding="utf-8", newline="") as fh:
            records = [r for r in csv.DictReader(fh) if r["review"].strip()]
        files[split] = work / f"chnsenticorp-{split}.csv"
        with open(files[split], "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, ["review", "label"])
            writer.writeheader()
            picked = seeded_split(records, {split: n}, seed)[split]
            writer.writerows({"review": r["review"], "label": r["label"]} for r in picked)
    with open(files["test"], encoding="utf-8", newline="") as fh:
        labels = [r["label"] for r in csv.DictReader(fh)]
    majority = round(max(labels.count(v) for v in set(labels)) / len(labels), 4)
    sets = ["data.max_length=128"]
    return [
        {**summarise(train(f"sentiment {m}", work / f"run-{m}", files, "classification", m, sets),
                     "accuracy", "test accuracy"), "majority_class_accuracy": majority}
        for m in (GEMMA, MINILM)
    ]  # fmt: skip


def ner(data: Path, work: Path, rows: int, seed: int) -> list[dict]:
    def lines(name: str) -> list[str]:
        return [
            line
            for line in (data / "cluener" / name).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]

    parts = seeded_split(lines("train.json"), {"train": rows, "validation": 50}, seed)
    parts["test"] = seeded_split(lines("dev.json"), {"test": 200}, seed)["test"]
    spans = {}
    for split, chosen in parts.items():
        spans[split] = work / f"cluener-{split}.json"
        spans[split].write_text("\n".join(chosen) + "\n", encoding="utf-8")
    generative = {split: write_jsonl(work / f"cluener-{split}-sft.jsonl", ner_rows(str(path)))
                  for split, path in spans.items()}  # fmt: skip
    head = train("ner head", work / "run-ner-head", spans, "ner", GEMMA, ["data.max_length=128"])
    sets = ["task.answer_format=entities", "task.generation_eval_samples=200",
            "task.sample_max_new_tokens=64", "data.max_length=192"]  # fmt: skip
    gen = train("ner generative", work / "run-ner-generative", generative, "sft", GEMMA, sets)
    return [summarise(head, "f1", "dev entity F1 (head)"),
            summarise(gen, "gen_entity_f1", "dev entity F1 (generative)")]  # fmt: skip


def sft_suite(
    name: str, work: Path, rows: list[dict], sizes: dict, seed: int, metric: tuple, sets: list
) -> list[dict]:
    files = {split: write_jsonl(work / f"{name}-{split}.jsonl", chosen)
             for split, chosen in seeded_split(rows, sizes, seed).items()}  # fmt: skip
    return [summarise(train(name, work / f"run-{name}", files, "sft", GEMMA, sets), *metric)]


def lcsts(data: Path, work: Path, rows: int, seed: int) -> list[dict]:
    from lcsts_to_jsonl import convert

    source = work / "lcsts-all.jsonl"
    convert(str(data / "lcsts" / "PART_III.txt"), str(source), 3)
    pairs = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    assert pairs and pairs[0]["instruction"] == LCSTS_INSTRUCTION
    sizes = {"test": 100, "validation": 25, "train": min(rows, len(pairs) - 125)}
    sets = ["task.generation_eval_samples=100", "task.sample_max_new_tokens=48", "data.max_length=256"]
    return sft_suite("lcsts", work, pairs, sizes, seed, ("gen_rougeL", "test ROUGE-L (chars)"), sets)


def translation(data: Path, work: Path, rows: int, seed: int) -> list[dict]:
    def pairs(name: str) -> list[dict]:
        with open(data / "translation_en_zh" / name, encoding="utf-8", newline="") as fh:
            return [{"instruction": TRANSLATE, "input": r["en"], "output": r["zh"]}
                    for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]  # fmt: skip

    files = {
        "train": write_jsonl(
            work / "en-zh-train.jsonl", seeded_split(pairs("train.tsv"), {"t": rows}, seed)["t"]
        ),
        "validation": write_jsonl(work / "en-zh-validation.jsonl", pairs("dev.tsv")[:25]),
        "test": write_jsonl(work / "en-zh-test.jsonl", pairs("test.tsv")[:200]),
    }
    sets = ["task.generation_eval_samples=200", "task.sample_max_new_tokens=48", "data.max_length=128"]
    row = train("translation", work / "run-translation", files, "sft", GEMMA, sets)
    return [summarise(row, "gen_bleu", "test BLEU (chars)"), summarise(row, "gen_chrf", "test chrF")]


def alpaca(data: Path, work: Path, rows: int, seed: int) -> list[dict]:
    examples = json.loads((data / "instructions" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    sizes = {"test": 100, "validation": 25, "train": min(rows, len(examples) - 125)}
    sets = ["task.generation_eval_samples=0", "data.max_length=256"]
    return sft_suite("alpaca_zh", work, examples, sizes, seed, ("eval_loss", "test eval loss"), sets)


SUITES: dict[str, tuple[Callable, str, int]] = {
    "sentiment": (sentiment, "ChnSentiCorp sentiment (classification); test: the 777-row test split", 800),
    "ner": (
        ner,
        "CLUENER NER, head vs generative; test: 200 seeded sentences of dev (the official test)",
        600,
    ),
    "lcsts": (lcsts, "LCSTS PART_III summaries (score >= 3) by SFT; test: 100 seeded pairs", 600),
    "translation": (translation, "Tatoeba en->zh by SFT; test: the first 200 test pairs", 1000),
    "alpaca": (alpaca, "alpaca_zh demo SFT; test: 100 seeded examples", 600),
}


# ---- report ---------------------------------------------------------------------------------------
def fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render(results: dict[str, list[dict]]) -> str:
    lines = [
        "# Chinese end to end: Gemma 3 270M (and MiniLM for contrast), LoRA",
        "",
        "Each row: one `lmtune train` run at lmtune's LoRA defaults, 1 epoch on a seeded subset of "
        '`../shared/data`, 2 CPU cores; "before" is the untuned model scored the same way on the same '
        "test rows (for a new head: its random initialisation). `python benchmarks/chinese.py`.",
        "",
        "| suite | model | metric | before | after | train rows | trainable params | train samples/s | "
        "tokens/s | peak RSS MB | training s | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for suite, rows in results.items():
        for r in rows:
            lines.append(
                f"| {suite} | {r['model']} | {r['metric']} | {fmt(r['before'])} | {fmt(r['after'])} | "
                f"{r.get('train_rows', '-')} | {r['trainable_params']:,} | {r['samples_per_s']:.2f} | "
                f"{fmt(r.get('tokens_per_s'))} | {r['peak_rss_mb']:.0f} | {r['train_s']:.0f} | "
                f"{fmt(r.get('wall_s'))} |"
            )
    lines += ["", "Suites:"] + [f"- {s}: {SUITES[s][1]}" for s in results if s in SUITES]
    majority = {
        r["majority_class_accuracy"] for r in results.get("sentiment", []) if "majority_class_accuracy" in r
    }
    if majority:
        lines.append(
            f"- Always answering ChnSentiCorp's majority class scores test accuracy {majority.pop():.3f}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--suites", default=",".join(SUITES))
    parser.add_argument("--rows", type=int, default=None, help="Training rows (default: per suite).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/CHINESE.md"))
    args = parser.parse_args()
    if not (args.data_dir / "chnsenticorp").is_dir():
        sys.exit(f"no Chinese data under {args.data_dir} (see ../shared/data/MANIFEST.md)")
    unknown = set(args.suites.split(",")) - set(SUITES)
    if unknown:
        sys.exit(f"unknown suites {sorted(unknown)}; choose from {', '.join(SUITES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="lmtune-chinese-"))
    work.mkdir(parents=True, exist_ok=True)
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text(encoding="utf-8")) if store.exists() else {}
    for suite in args.suites.split(","):
        run, _, default_rows = SUITES[suite]
        results[suite] = run(args.data_dir, work, args.rows or default_rows, args.seed)
        store.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        args.out.write_text(render(results), encoding="utf-8")
        print(render({suite: results[suite]}), flush=True)


if __name__ == "__main__":
    main()
