"""lmtune's trust features measured on SST-2 with planted label noise.

Usage: python benchmarks/trust.py --data-dir ../shared/data [--rows 4000] [--noise 0.1] [--epochs 2]
       [--folds 3] [--sections audit,train,explain] [--work DIR] [--out benchmarks/TRUST.md]

1. Takes a seeded subset of SST-2 train (packaged MiniLM-L6), flips `--noise` of its labels (seeded).
2. Audits the noisy file, fast (logistic regression on frozen features) and thorough (k LoRA
   fine-tunes): precision and recall of the label issues against the flips, and the time each took.
3. Trains LoRA (lmtune's defaults, `task.calibration: temperature`) on the noisy file, on the fast
   audit's cleaned copy, on the thorough audit's cleaned copy and on the clean original; reports
   test accuracy (the official SST-2 dev set, 872 rows) and ECE before and after temperature scaling.
4. Measures the faithfulness of integrated-gradient explanations on the clean run: comprehensiveness
   and sufficiency against deleting as many random tokens.
The data is not part of the project: the subsets go to a temporary directory or --work DIR, which a
second call reuses (finished runs are kept). Writes the markdown table to --out and the raw numbers
beside it as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
MODEL = "all-MiniLM-L6-v2"


def sst2_files(
    data: Path, work: Path, rows: int, noise: float, seed: int
) -> tuple[dict[str, Path], set[int]]:
    """clean/noisy train CSVs, validation and test; and the CSV lines whose label was flipped."""
    rng = random.Random(seed)

    def read(name: str) -> list[dict[str, str]]:
        with open(data / "sst2" / name, encoding="utf-8") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))

    train = read("train.tsv")
    rng.shuffle(train)
    train = train[:rows]
    flipped = set(rng.sample(range(rows), int(noise * rows)))
    validation = read("dev.tsv")
    rng.shuffle(validation)

    def label(value: str, flip: bool) -> str:
        positive = (value == "1") != flip
        return "positive" if positive else "negative"

    def write(name: str, records: list[dict[str, str]], flips: set[int]) -> Path:
        path = work / name
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows([r["sentence"], label(r["label"], i in flips)] for i, r in enumerate(records))
        return path

    files = {
        "clean": write("train-clean.csv", train, set()),
        "noisy": write("train-noisy.csv", train, flipped),
        "validation": write("validation.csv", validation[:500], set()),
        "test": write("test.csv", read("test.tsv"), set()),
    }
    return files, {i + 2 for i in flipped}  # CSV line numbers: the header is line 1


def audit(files: dict[str, Path], flips: set[int], work: Path, mode: str, folds: int, epochs: float) -> dict:
    from lmtune.config import RunConfig
    from lmtune.data.audit import AuditSettings
    from lmtune.data.audit_report import run_audit

    raw = {
        "model": MODEL,
        "task": "classification",
        "data": {"train": str(files["noisy"]), "max_length": 128},
        "train": {"epochs": epochs, "report_to": ["none"]},
    }
    cleaned = work / f"train-cleaned-{mode}.csv"
    started = time.perf_counter()
    settings = AuditSettings(mode=mode, folds=folds if mode == "thorough" else 5)
    result = run_audit(RunConfig.from_dict(raw), settings, work / f"audit-{mode}", cleaned)
    seconds = time.perf_counter() - started
    found = {f.line for f in result.findings if f.issue == "label"}
    hits = len(found & flips)
    return {
        "mode": mode,
        "flagged": len(found),
        "precision": round(hits / max(len(found), 1), 3),
        "recall": round(hits / len(flips), 3),
        "seconds": round(seconds, 1),
        "cleaned_rows": sum(1 for _ in open(cleaned, encoding="utf-8")) - 1,
        "cleaned": str(cleaned),
    }


def train(name: str, train_file: Path, files: dict[str, Path], work: Path, epochs: float) -> dict:
    from lmtune.config import RunConfig
    from lmtune.run import train as run_train

    raw = {
        "model": MODEL,
        "task": {"type": "classification", "calibration": "temperature"},
        "data": {
            "train": str(train_file),
            "validation": str(files["validation"]),
            "test": str(files["test"]),
            "max_length": 128,
        },
        "train": {"epochs": epochs, "report_to": ["none"]},
        "output_dir": str(work / f"run-{name}"),
    }
    # A finished run in --work is reused: its figures come from its metrics.json.
    run = run_train(RunConfig.from_dict(raw))
    test, calibration = run.metrics["test"], run.metrics.get("calibration", {})
    return {
        "train": name,
        "rows": run.metrics["data"]["rows"]["train"],
        "test_accuracy": round(test["accuracy"], 4),
        "test_ece": round(test.get("ece", float("nan")), 4),
        "test_ece_uncalibrated": round(test.get("ece_uncalibrated", float("nan")), 4),
        "calibration": calibration,
        "seconds": round(run.metrics["train"]["runtime_s"], 1),
        "run": str(run.directory),
    }


def explain(run_dir: str, test: Path, samples: int) -> dict:
    from lmtune.evaluation.explain import ExplainSettings
    from lmtune.evaluation.explain_faithfulness import faithfulness
    from lmtune.run import load_run

    run = load_run(run_dir)
    items = run.task.read_inputs(str(test))
    results = {}
    for method in ("ig", "rollout"):
        started = time.perf_counter()
        settings = ExplainSettings(method=method)
        scores = faithfulness(run.task, run.model, run.tokenizer, items, settings, limit=samples)
        results[method] = {**scores, "seconds": round(time.perf_counter() - started, 1)}
    return results


def markdown(results: dict) -> str:
    lines = [
        "# Trust features on SST-2 with planted label noise",
        "",
        f"Packaged MiniLM-L6, LoRA with lmtune's defaults; {results['rows']} training rows of SST-2 "
        f"with {results['noise']:.0%} of their labels flipped (seeded); test: the 872 rows of the "
        f"official SST-2 dev set; {results['epochs']} epochs; 2 CPU cores. `python benchmarks/trust.py`.",
        "",
    ]
    if results.get("audit"):
        lines += ["## Label-issue audit against the planted flips", ""]
        lines += [
            "| mode | flagged | precision | recall | cleaned rows | seconds |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for a in results["audit"]:
            lines.append(
                f"| {a['mode']} | {a['flagged']} | {a['precision']} | {a['recall']} | "
                f"{a['cleaned_rows']} | {a['seconds']} |"
            )
        lines.append("")
    if results.get("train"):
        lines += ["## Training on noisy, cleaned and clean data", ""]
        lines += [
            "| train data | rows | test accuracy | temperature | validation ECE before -> after | "
            "test ECE before -> after | training seconds |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for t in results["train"]:
            c = t["calibration"]
            lines.append(
                f"| {t['train']} | {t['rows']} | {t['test_accuracy']} | {c.get('temperature', 0):.3f} | "
                f"{c.get('validation_ece_before', 0):.4f} -> {c.get('validation_ece_after', 0):.4f} | "
                f"{t['test_ece_uncalibrated']:.4f} -> {t['test_ece']:.4f} | {t['seconds']} |"
            )
        lines.append("")
    if results.get("explain"):
        e = results["explain"]
        ig = e["ig"]
        lines += [
            f"## Faithfulness of the explanations ({ig['rows']} test rows of the clean run)",
            "",
            f"Deleting the top-k% tokens (k = {', '.join(map(str, ig['k']))}, averaged) that each method "
            "ranks first, against deleting k% random tokens. Comprehensiveness: probability drop when "
            "they are deleted (higher is better); sufficiency: drop when only they are kept "
            "(lower is better).",
            "",
            "| tokens deleted | comprehensiveness | sufficiency | seconds |",
            "|---|---:|---:|---:|",
            f"| integrated gradients ({ig['n_steps']} steps) | {ig['comprehensiveness']:.3f} | "
            f"{ig['sufficiency']:.3f} | {ig['seconds']} |",
            f"| attention rollout | {e['rollout']['comprehensiveness']:.3f} | "
            f"{e['rollout']['sufficiency']:.3f} | {e['rollout']['seconds']} |",
            f"| random | {ig['random']['comprehensiveness']:.3f} | {ig['random']['sufficiency']:.3f} | - |",
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--explain-samples", type=int, default=100)
    parser.add_argument("--sections", default="audit,train,explain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/TRUST.md"))
    args = parser.parse_args()
    if not (args.data_dir / "sst2").is_dir():
        sys.exit(f"no SST-2 under {args.data_dir} (see ../shared/data/MANIFEST.md)")
    work = args.work or Path(tempfile.mkdtemp(prefix="lmtune-trust-"))
    work.mkdir(parents=True, exist_ok=True)
    files, flips = sst2_files(args.data_dir, work, args.rows, args.noise, args.seed)
    sections = set(args.sections.split(","))
    raw_path = args.out.with_suffix(".json")
    results = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    results.update(rows=args.rows, noise=args.noise, epochs=args.epochs)
    if "audit" in sections:
        modes = ("fast", "thorough")
        results["audit"] = [audit(files, flips, work, m, args.folds, args.epochs) for m in modes]
        print(json.dumps(results["audit"], indent=1), flush=True)
    if "train" in sections:
        cleaned = {a["mode"]: Path(a["cleaned"]) for a in results.get("audit", [])}
        plan = [("noisy", files["noisy"])]
        plan += [(f"cleaned ({mode} audit)", path) for mode, path in cleaned.items() if path.exists()]
        plan.append(("clean original", files["clean"]))
        results["train"] = [train(name, path, files, work, args.epochs) for name, path in plan]
        print(json.dumps(results["train"], indent=1), flush=True)
    if "explain" in sections:
        clean_run = next(t["run"] for t in results["train"] if t["train"] == "clean original")
        results["explain"] = explain(clean_run, files["test"], args.explain_samples)
        print(json.dumps(results["explain"], indent=1), flush=True)
    raw_path.write_text(json.dumps(results, indent=1) + "\n")
    args.out.write_text(markdown(results))
    print(f"wrote {args.out} and {raw_path}")


if __name__ == "__main__":
    main()
