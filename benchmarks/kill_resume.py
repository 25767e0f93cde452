"""Fault injection: SIGKILL `lmtune train` at random points, re-run it until it finishes, and
compare the result with an uninterrupted run of the same seed.

Kills land in three places, chosen at random per attempt:
  step        a random moment after training has started
  checkpoint  while Trainer is writing a checkpoint (a checkpoint-N/ that is not sealed yet)
  eval        during an evaluation (the step's loss is logged, its eval record is not yet)

All three are found by watching the run directory from outside, so no production code path
changes for the test. Usage:

    python benchmarks/kill_resume.py --kills 20 [--workdir DIR] [--seed 0]

prints survived/tried and the largest absolute difference of the final weights and metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MARKER = "lmtune_checkpoint.json"
WORDS = {
    "positive": ["great", "excellent", "wonderful", "fantastic", "lovely", "superb", "brilliant"],
    "negative": ["awful", "terrible", "horrible", "dreadful", "bad", "poor", "boring"],
}
SUBJECTS = ["the film", "this phone", "the hotel", "our meal", "the service", "this book", "the app"]


def _rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        extra = " and".join(rng.choice(SUBJECTS) for _ in range(rng.randint(0, 3)))
        rows.append(
            {"text": f"{rng.choice(SUBJECTS)} was {rng.choice(WORDS[label])} {extra}", "label": label}
        )
    return rows


def _write_csv(path: Path, rows: list[dict[str, str]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def tiny_bert(directory: Path) -> str:
    """A 2-layer, 32-wide random BERT with the packaged MiniLM tokenizer (as tests/conftest.py)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lmtune.models import resolve_model

    if not (directory / "config.json").exists():
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        BertModel(config).save_pretrained(directory)
        AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2").path).save_pretrained(directory)
    return str(directory)


def write_config(
    workdir: Path, model: str, name: str, train_rows: int = 96, patience: int | None = 2
) -> Path:
    """A run config that checkpoints and evaluates every 3 steps (eval set big enough to hit)."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = {
        "train": _write_csv(workdir / "train.csv", _rows(train_rows, 1)),
        "validation": _write_csv(workdir / "dev.csv", _rows(160, 2)),
        "test": _write_csv(workdir / "test.csv", _rows(32, 3)),
        "max_length": 32,
    }
    cfg = {
        "model": model,
        "task": "classification",
        "method": "lora",
        "data": data,
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "report_to": ["none"],
            "logging_steps": 3,
            "eval_strategy": "steps",
            "eval_steps": 3,
            "save_strategy": "steps",
            "save_steps": 3,
            "save_total_limit": 2,
            "eval_batch_size": 8,
            "early_stopping_patience": patience,
        },
        "output_dir": str(workdir / name),
    }
    path = workdir / f"{name}.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # The same thread count in every attempt keeps CPU reductions in the same order.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lmtune", "train", str(config)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _log_records(out: Path) -> list[dict[str, Any]]:
    try:
        lines = (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def _in_checkpoint_write(out: Path) -> bool:
    return any(p.is_dir() and not (p / MARKER).exists() for p in out.glob("checkpoint-*"))


def _in_eval(out: Path, eval_steps: int) -> bool:
    records = _log_records(out)
    if not records:
        return False
    last = records[-1]
    return "loss" in last and last["step"] % eval_steps == 0 and last["step"] > 0


def attempt(config: Path, mode: str, rng: random.Random, timeout: float = 600) -> tuple[bool, str]:
    """Run once; kill it in `mode`. Returns (killed, where) or (False, 'finished')."""
    cfg = json.loads(config.read_text(encoding="utf-8"))
    out = Path(cfg["output_dir"])
    eval_steps = cfg["train"]["eval_steps"]
    proc = _start(config)
    started = time.monotonic()
    deadline = started + rng.uniform(0.0, 0.5)  # for "step": a random moment once training runs
    while proc.poll() is None:
        if time.monotonic() - started > timeout:
            proc.kill()
            raise RuntimeError(f"{config} did not finish in {timeout}s")
        training = (out / "train_log.jsonl").exists() or any(out.glob("checkpoint-*"))
        hit = (
            (mode == "checkpoint" and _in_checkpoint_write(out))
            or (mode == "eval" and _in_eval(out, eval_steps))
            or (mode == "step" and training and time.monotonic() > deadline)
        )
        if hit:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, mode
        if mode == "step" and not training:
            deadline = time.monotonic() + rng.uniform(0.0, 0.5)
        time.sleep(0.002)
    if proc.returncode != 0:
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"lmtune train failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    return False, "finished"


def run_with_kills(config: Path, kills: int, seed: int) -> dict[str, Any]:
    """Kill up to `kills` times (cycling the modes), then let it finish. Returns what happened."""
    rng = random.Random(seed)
    modes = ["step", "checkpoint", "eval"]
    tried: list[str] = []
    for i in range(kills):
        killed, where = attempt(config, modes[(i + seed) % 3], rng)
        if not killed:
            break
        tried.append(where)
    runs = 0
    while True:
        runs += 1
        killed, _ = attempt(config, "none", rng)
        if not killed or runs > 3:
            break
    return {"kills": tried, "finished": not killed}


def run_clean(config: Path) -> None:
    killed, _ = attempt(config, "none", random.Random(0))
    assert not killed


def compare(reference: Path, resumed: Path) -> dict[str, Any]:
    """Largest absolute difference of final weights and of validation/test metrics."""
    from safetensors.torch import load_file

    weights_diff = 0.0
    identical = True
    for path in sorted((reference / "model").glob("*.safetensors")):
        a = load_file(path)
        b = load_file(resumed / "model" / path.name)
        assert a.keys() == b.keys(), path.name
        for key in a:
            identical &= bool((a[key] == b[key]).all())
            weights_diff = max(weights_diff, float((a[key].double() - b[key].double()).abs().max()))
    ma = json.loads((reference / "metrics.json").read_text())
    mb = json.loads((resumed / "metrics.json").read_text())
    metric_diff = 0.0
    for split in ("validation", "test"):
        for key, value in ma.get(split, {}).items():
            if isinstance(value, int | float):
                metric_diff = max(metric_diff, abs(value - mb[split][key]))
    steps = (ma["train"]["steps"], mb["train"]["steps"])
    return {
        "identical_weights": identical,
        "max_weight_diff": weights_diff,
        "max_metric_diff": metric_diff,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--train-rows", type=int, default=240)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lmtune-kill-"))
    model = tiny_bert(workdir / "tiny-bert")
    # No early stopping: every kill lands in a run long enough to hold many checkpoints.
    reference = write_config(workdir, model, "reference", args.train_rows, patience=None)
    victim = write_config(workdir, model, "killed", args.train_rows, patience=None)
    started = time.perf_counter()
    run_clean(reference)
    clean_s = time.perf_counter() - started
    survived = tried = 0
    outcome = run_with_kills(victim, args.kills, args.seed)
    tried = len(outcome["kills"])
    result = compare(workdir / "reference", workdir / "killed")
    survived = tried if outcome["finished"] and result["identical_weights"] else 0
    report = {
        "kills_tried": tried,
        "kills_by_place": {m: outcome["kills"].count(m) for m in ("step", "checkpoint", "eval")},
        "survived": survived,
        "finished": outcome["finished"],
        **result,
        "clean_run_s": round(clean_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "workdir": str(workdir),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
