"""lmtune's method comparison on real data: every method, the same optimizer steps, per task.

Usage: python benchmarks/method_comparison.py --data-dir ../shared/data [--tasks cls,ner,sft]
       [--seeds 1] [--methods lora,oft,...] [--cls-steps 150] [--ner-steps 150] [--sft-steps 40]
       [--out runs/method-comparison] [--doc docs/method_comparison.md]

Runs `lmtune compare` (each method in its own process, at its own default learning rate, the same
number of optimizer steps) on seeded subsets of
- SST-2 sentence classification (packaged MiniLM-L6): validation/test macro F1;
- CoNLL-2003 NER (packaged MiniLM-L6): validation/test entity F1;
- Alpaca instruction SFT (packaged SmolLM2-135M-Instruct): validation/test loss (lower is better),
  for the methods that apply to a decoder's causal-LM head in reasonable CPU time.
The data sets are not part of the project: the subsets are written to a temporary directory, or to
--work DIR (outside the project), which a second call with the same --work and --out resumes:
finished runs are reused.
Updates the markdown document in place: each suite run replaces its own block (table, what won, the
Pareto plot copied beside it); the other suites' blocks and the hand-written prose are kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_methods_ner import conll_sentences

# Decoder SFT on 2 CPU cores: the methods worth their minutes (prompt/prefix tuning and the
# bottleneck adapters converge slowly or do not apply to a causal-LM head).
SFT_METHODS = "full,lora,dora,ia3,vera,ln-tuning,adalora"


def sst2_files(data: Path, work: Path, rows: int, seed: int) -> dict[str, Path]:
    rng = random.Random(seed)
    files = {}
    for split, name, n in (
        ("train", "train.tsv", rows),
        ("validation", "dev.tsv", 500),
        ("test", "test.tsv", 872),
    ):
        with open(data / "sst2" / name, encoding="utf-8") as fh:
            records = list(csv.DictReader(fh, delimiter="\t"))
        rng.shuffle(records)
        files[split] = work / f"sst2-{split}.csv"
        with open(files[split], "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(
                [r["sentence"], "positive" if r["label"] == "1" else "negative"] for r in records[:n]
            )
    return files


def conll_files(data: Path, work: Path, sentences: int, seed: int) -> dict[str, Path]:
    rng = random.Random(seed)
    files = {}
    for split, name, n in (
        ("train", "train.txt", sentences),
        ("validation", "dev.txt", 300),
        ("test", "test.txt", 500),
    ):
        blocks = conll_sentences(data / "conll2003" / name)
        rng.shuffle(blocks)
        files[split] = work / f"conll-{split}.txt"
        files[split].write_text("\n\n".join(blocks[:n]) + "\n", encoding="utf-8")
    return files


def alpaca_files(data: Path, work: Path, seed: int) -> dict[str, Path]:
    records = json.loads((data / "instructions" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    random.Random(seed).shuffle(records)
    files = {}
    for split, part in (
        ("train", records[:300]),
        ("validation", records[300:340]),
        ("test", records[340:380]),
    ):
        files[split] = work / f"alpaca-{split}.json"
        files[split].write_text(json.dumps(part), encoding="utf-8")
    return files


def suites(args: argparse.Namespace, work: Path) -> dict[str, dict]:
    """Per task: the base config, the methods and the step budget."""
    from lmtune.methods import METHODS

    every = args.methods or ",".join(METHODS.names())
    data = args.data_dir

    def config(model: str, task_type: str, files: dict[str, Path], **extra) -> dict:
        section = {
            "train": str(files["train"]),
            "validation": str(files["validation"]),
            "test": str(files["test"]),
        }
        train = {"batch_size": 16, "report_to": ["none"], "eval_strategy": "steps", "save_strategy": "no"}
        raw = {"model": model, "task": task_type, "data": section | extra.pop("data", {}), "train": train}
        raw["train"] |= extra.pop("train", {})
        return raw | extra

    return {
        "cls": {
            "title": "SST-2 sentiment (MiniLM-L6), macro F1",
            "methods": every,
            "steps": args.cls_steps,
            "config": config(
                "all-MiniLM-L6-v2",
                "classification",
                sst2_files(data, work, args.cls_rows, 0),
                data={"max_length": 64},
                train={"eval_steps": max(1, args.cls_steps // 3)},
            ),
        },
        "ner": {
            "title": "CoNLL-2003 NER (MiniLM-L6), entity F1",
            "methods": every,
            "steps": args.ner_steps,
            "config": config(
                "all-MiniLM-L6-v2",
                "token-classification",
                conll_files(data, work, args.ner_sentences, 0),
                data={"max_length": 128},
                train={"eval_steps": max(1, args.ner_steps // 3)},
            ),
        },
        "sft": {
            "title": "Alpaca SFT (SmolLM2-135M-Instruct), eval loss (lower is better)",
            "methods": args.sft_methods,
            "steps": args.sft_steps,
            "config": config(
                "SmolLM2-135M-Instruct",
                "sft",
                alpaca_files(data, work, 0),
                data={"max_length": 256},
                task={"type": "sft", "generation_eval_samples": 0, "sample_generations": 0},
                train={"batch_size": 8, "eval_steps": max(1, args.sft_steps // 2)},
            ),
        },
    }


def run_suite(name: str, suite: dict, args: argparse.Namespace) -> dict:
    from lmtune.search.compare import compare

    out = args.out / name
    started = time.perf_counter()
    result = compare(
        suite["config"], suite["methods"].split(","), out, seeds=args.seeds, steps=suite["steps"]
    )
    result["wall_s"] = time.perf_counter() - started
    return result


# The generated part of each suite sits between these markers; the prose around them is hand-written
# (what the numbers say, the step budget) and survives a rerun of one suite.
BEGIN = "<!-- suite:{name} begin: written by benchmarks/method_comparison.py -->"
END = "<!-- suite:{name} end -->"
LAST_END = re.compile(r"<!-- suite:[\w-]+ end -->")
INTRO = """# Method comparison on real data

Each method trains in its own process on the same seeded subset, at its own default learning rate, for the
same number of optimizer steps. Validation picks the checkpoint; test is reported beside it. Peak RSS is the
method's own process. `converged: no` marks a method whose validation metric was still rising at the end: the
shared step budget understates it. Rows are in registry order; see each suite's recommendation.
"""


def suite_section(name: str, result: dict, suite: dict, args: argparse.Namespace, doc_dir: Path) -> str:
    """One suite's heading, table and Pareto plot (copied beside the document)."""
    when = time.strftime("%Y-%m-%d", time.gmtime())
    seeds = f"{args.seeds} seed{'s' if args.seeds > 1 else ''}"
    table = (args.out / name / "comparison.md").read_text(encoding="utf-8").splitlines()
    body = [line for line in table[1:] if not line.startswith("![")]
    minutes = f"{result['wall_s'] / 60:.0f} min"
    heading = f"## {suite['title']}: {suite['steps']} steps, {seeds}, {minutes} ({when})"
    lines = [heading, "", *body]
    pareto = args.out / name / "pareto.png"
    if pareto.exists():
        shutil.copyfile(pareto, doc_dir / f"{name}-pareto.png")
        lines += ["", f"![{name} Pareto]({doc_dir.name}/{name}-pareto.png)"]
    return "\n".join(lines).strip()


def merge_sections(existing: str, sections: dict[str, str]) -> str:
    """`existing` (or a new document) with each suite's block replaced in place, or added after the
    last block; everything outside the blocks is kept as written."""
    text = existing if existing.strip() else INTRO
    for name, body in sections.items():
        begin, end = BEGIN.format(name=name), END.format(name=name)
        block = f"{begin}\n{body}\n{end}"
        if begin in text and end in text.split(begin, 1)[1]:
            head, rest = text.split(begin, 1)
            text = head + block + rest.split(end, 1)[1]
            continue
        ends = list(LAST_END.finditer(text))
        at = ends[-1].end() if ends else len(text.rstrip())
        text = text[:at] + "\n\n" + block + "\n" + text[at:]
    return text.rstrip() + "\n"


def write_document(results: dict[str, dict], suites_: dict[str, dict], args: argparse.Namespace) -> None:
    """Updates the suites run in `args.doc` (temp file, then rename: a cut run leaves the old one)."""
    doc_dir = args.doc.parent / args.doc.stem
    doc_dir.mkdir(parents=True, exist_ok=True)
    sections = {
        name: suite_section(name, result, suites_[name], args, doc_dir) for name, result in results.items()
    }
    existing = args.doc.read_text(encoding="utf-8") if args.doc.exists() else ""
    tmp = args.doc.with_name(f".{args.doc.name}.tmp")
    tmp.write_text(merge_sections(existing, sections), encoding="utf-8")
    os.replace(tmp, args.doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--tasks", default="cls,ner,sft")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cls-steps", type=int, default=150)
    parser.add_argument("--cls-rows", type=int, default=2400)
    parser.add_argument("--ner-steps", type=int, default=150)
    parser.add_argument("--ner-sentences", type=int, default=2400)
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument(
        "--methods", default=None, help="comma-separated, for cls and ner (default: every registered method)"
    )
    parser.add_argument(
        "--sft-methods", default=SFT_METHODS, help="comma-separated (decoder SFT is slow on CPU)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/method-comparison"))
    parser.add_argument("--doc", type=Path, default=Path("docs/method_comparison.md"))
    parser.add_argument(
        "--work", type=Path, help="where the data subsets go (default: a new temporary directory)"
    )
    args = parser.parse_args()
    if not (args.data_dir / "sst2").is_dir():
        print(f"skipped: {args.data_dir}/sst2 not found (pass --data-dir pointing at the shared data)")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="lmtune-method-comparison-"))
    work.mkdir(parents=True, exist_ok=True)
    chosen = suites(args, work)
    results = {}
    for name in args.tasks.split(","):
        results[name] = run_suite(name, chosen[name], args)
        print(f"{name}: {results[name]['wall_s'] / 60:.1f} min", file=sys.stderr)
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        write_document(results, chosen, args)  # after each suite: a cut run keeps the suites done
    print(args.doc.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
