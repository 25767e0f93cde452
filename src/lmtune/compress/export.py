"""`lmtune export`: compressed and portable variants of a run, measured side by side.

Reads a finished run directory and writes variants under `--to`:

    adapter/         the run's adapter as trained (peft format), with --keep-adapter
    merged/          adapters merged in; plain transformers `from_pretrained(dir)`
    int8/            dynamic int8 (CPU), safetensors + loader `lmtune.compress.load_int8`
    pruned-50/       magnitude-pruned to 50 % sparsity (+ recovery fine-tune)
    heads-pruned-4/  4 attention heads removed; loader `lmtune.compress.load_head_pruned`
    onnx/            model.onnx (dynamic batch and sequence), checked against PyTorch
    export.md, export.json   the table below

For every variant the table gives size on disk, parameters, CPU latency (p50/p95 at batch
1 and 32, a bounded number of repetitions over real test texts) and the task metrics on the
run's test split, computed by the task's own `evaluate`. When the run carved its test split
from train, `task.prepare_data()` re-creates it from the saved, fully resolved config (the
split is seeded); the row counts and the unmodified model's metrics are checked against
metrics.json so a changed data file cannot go unnoticed.
"""

from __future__ import annotations

import copy
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmtune.compress import merge as merge_mod
from lmtune.compress import prune as prune_mod
from lmtune.compress import quantize
from lmtune.errors import LmtuneError
from lmtune.io import write_json, write_text

TABLE_MD = "export.md"
TABLE_JSON = "export.json"
COLUMNS = (
    "variant",
    "path",
    "size_mb",
    "params",
    "nonzero_params",
    "latency_b1_p50_ms",
    "latency_b1_p95_ms",
    "latency_b32_p50_ms",
    "latency_b32_p95_ms",
    "metric",
    "onnx_max_abs_diff",
    "notes",
)


@dataclass
class ExportOptions:
    merge: bool = True
    keep_adapter: bool = False
    int8: bool = False
    prune: float | None = None
    prune_heads: int | None = None
    recover_steps: int = 0
    onnx: bool = False
    benchmark: bool = True
    repetitions_b1: int = 30
    repetitions_b32: int = 5
    onnx_tolerance: float = 1e-3


@dataclass
class Variant:
    name: str
    path: str | None
    model: Any
    params: int
    nonzero_params: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# ---- measurements ----------------------------------------------------------------------------
def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tensor_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters); int8 weights are counted like the floats they replace."""
    seen: set[int] = set()
    total = nonzero = 0
    tensors = [p for _, p in model.named_parameters()]
    dynamic_linear = quantize._dynamic_linear_class()
    for module in model.modules():
        if isinstance(module, dynamic_linear):
            tensors.append(module.weight().int_repr())
            if module.bias() is not None:
                tensors.append(module.bias())
    for tensor in tensors:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return total, nonzero


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def latency(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], repetitions: int
) -> tuple[float, float]:
    """p50 and p95 wall time (ms) of one forward pass, cycling through real batches."""
    times = []
    with torch.inference_mode():
        model(**batches[0])  # warm-up: first call allocates and picks kernels
        for i in range(repetitions):
            batch = batches[i % len(batches)]
            start = time.perf_counter()
            model(**batch)
            times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2), round(_percentile(times, 95), 2)


def make_batches(task: Any, tokenizer: Any, dataset: Any, batch_size: int, count: int) -> list[dict]:
    """`count` collated batches of real test rows (wrapping around a small test set)."""
    features = [dict(row) for row in task.tokenize(dataset, tokenizer)]
    if not features:
        raise LmtuneError("the run's test split is empty", hint="nothing to measure on")
    collate = task.collator(tokenizer)
    batches = []
    for b in range(count):
        rows = [features[(b * batch_size + i) % len(features)] for i in range(batch_size)]
        batches.append({k: v for k, v in collate(rows).items() if k != "labels"})
    return batches


# ---- data ------------------------------------------------------------------------------------
def run_splits(run: Any) -> dict[str, Any]:
    """The run's train/validation/test splits, re-created from its resolved config and checked."""
    data = run.task.prepare_data()
    expected = (run.metrics.get("data") or {}).get("rows") or {}
    got = {name: len(ds) for name, ds in data.splits.items()}
    for split in ("train", "test"):
        if split in expected and expected[split] != got.get(split):
            raise LmtuneError(
                f"re-created {split} split of {run.directory} has {got.get(split)} rows, "
                f"the run had {expected[split]}",
                hint="the data files changed since training; restore them or retrain",
            )
    return data.splits


# ---- recovery fine-tune ----------------------------------------------------------------------
def recover(model: nn.Module, run: Any, train_dataset: Any, steps: int) -> dict[str, Any]:
    """A short full fine-tune of a pruned model on the run's training data (normal Trainer path)."""
    from lmtune.config import RunConfig
    from lmtune.methods.full import FullMethod
    from lmtune.training.trainer import build_trainer

    raw = run.config.to_dict()
    raw["train"].update(
        max_steps=steps,
        # The run's learning rate belongs to its method (LoRA: 1e-3); every weight trains here.
        learning_rate=FullMethod.default_learning_rate,
        eval_strategy="no",
        save_strategy="no",
        early_stopping_patience=None,
        report_to=["none"],
        logging_steps=max(1, steps),
    )
    cfg = RunConfig.from_dict(raw)
    for param in model.parameters():
        param.requires_grad_(True)
    model.train()
    tokenized = run.task.tokenize(train_dataset, run.tokenizer)
    with tempfile.TemporaryDirectory(prefix="lmtune-recover-") as tmp:
        trainer = build_trainer(cfg, Path(tmp), model, run.tokenizer, run.task, tokenized, None, [])
        trainer.args.disable_tqdm = True
        result = trainer.train()
    model.eval()
    return {"recover_steps": steps, "recover_loss": round(result.training_loss, 4)}


# ---- orchestration ---------------------------------------------------------------------------
def _primary(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    return round(float(value), 4) if isinstance(value, int | float) else None


def export_run(run_dir: str | Path, to: str | Path, options: ExportOptions | None = None) -> dict[str, Any]:
    """Write the requested variants of `run_dir` under `to`; returns the table (also on disk)."""
    from lmtune.run import Run

    opts = options or ExportOptions()
    out = Path(to)
    if out.exists() and any(out.iterdir()) and not (out / TABLE_JSON).exists():
        raise LmtuneError(
            f"{out} is not empty and is not an lmtune export",
            hint="choose an empty or new --to directory",
        )
    run = Run.load(run_dir, device="cpu")
    method = run.config.method.name
    peft_run = merge_mod.is_peft(run.model)
    needs_plain = opts.int8 or opts.prune is not None or opts.prune_heads is not None or opts.onnx
    if peft_run and not opts.merge and needs_plain:
        raise LmtuneError(
            "int8, pruning and ONNX work on a standalone model, but --no-merge keeps the adapter separate",
            hint="drop --no-merge (the adapter is still written with --keep-adapter)",
        )
    if opts.merge:
        merge_mod.check_mergeable(run.model, method)
    if opts.recover_steps and opts.prune is None and opts.prune_heads is None:
        raise LmtuneError("--recover-steps needs --prune or --prune-heads")

    splits = run_splits(run)
    test = splits["test"]
    metric_name = run.config.train.metric_for_best_model or run.task.default_metric
    b1 = make_batches(run.task, run.tokenizer, test, 1, min(len(test), 32))
    b32 = make_batches(run.task, run.tokenizer, test, 32, 4)
    evaluate_batch = run.batch_size
    out.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []

    def measure(variant: Variant) -> None:
        result = run.task.evaluate(variant.model, run.tokenizer, test, evaluate_batch)
        row: dict[str, Any] = {
            "variant": variant.name,
            "path": variant.path,
            "size_mb": round(variant.size_bytes / 2**20, 2),
            "params": variant.params,
            "nonzero_params": variant.nonzero_params,
            "metric": _primary(result.metrics, metric_name),
            "onnx_max_abs_diff": variant.extra.get("onnx_max_abs_diff"),
            "notes": "; ".join(variant.notes),
            "metrics": result.metrics,
            **{k: v for k, v in variant.extra.items() if k != "onnx_max_abs_diff"},
        }
        if opts.benchmark:
            row["latency_b1_p50_ms"], row["latency_b1_p95_ms"] = latency(
                variant.model, b1, opts.repetitions_b1
            )
            row["latency_b32_p50_ms"], row["latency_b32_p95_ms"] = latency(
                variant.model, b32, opts.repetitions_b32
            )
        rows.append(row)

    # The run's model as trained (measured before merging: peft merges in place).
    params, nonzero = tensor_counts(run.model)
    original = Variant(
        "original",
        None,
        run.model,
        params,
        nonzero,
        dir_size(run.directory / "model"),
        notes=[
            f"{method} run as trained"
            + ("; size is the adapter, the base model loads too" if peft_run else "")
        ],
    )
    measure(original)
    run_test = (run.metrics.get("test") or {}).get(metric_name)
    if isinstance(run_test, int | float) and abs(rows[0]["metrics"][metric_name] - run_test) > 1e-6:
        rows[0]["notes"] += f"; differs from metrics.json ({run_test:.4f}): data or library changed"

    if opts.keep_adapter:
        merge_mod.copy_adapter(run.directory / "model", out / "adapter")
    if not opts.merge:
        return _write_table(out, run, metric_name, rows, opts)

    merged = merge_mod.merge(run.model, method)
    merged_dir = out / "merged"
    _replace_dir(merged_dir)
    merge_mod.save_model(merged, run.tokenizer, merged_dir)
    params, nonzero = tensor_counts(merged)
    note = "adapters merged; AutoModel.from_pretrained(dir)" if peft_run else "standalone model"
    measure(Variant("merged", "merged", merged, params, nonzero, dir_size(merged_dir), [note]))

    if opts.int8:
        q = quantize.quantize_int8(merged)
        q_dir = out / "int8"
        _replace_dir(q_dir)
        quantize.save_int8(q, run.tokenizer, q_dir)
        params, nonzero = tensor_counts(q)
        notes = ["dynamic int8 nn.Linear (CPU); lmtune.compress.load_int8(dir)"]
        measure(Variant("int8", "int8", q, params, nonzero, dir_size(q_dir), notes))

    head_names = run.task.head_names
    if opts.prune is not None:
        pruned = copy.deepcopy(merged)
        info = prune_mod.prune_unstructured(pruned, opts.prune, head_names, permanent=False)
        notes = [f"magnitude pruning, body sparsity {opts.prune:.0%}"]
        if opts.recover_steps:
            info.update(recover(pruned, run, splits["train"], opts.recover_steps))
            notes.append(f"{opts.recover_steps} recovery steps")
        prune_mod.make_permanent(pruned)
        info["sparsity"] = round(prune_mod.measured_sparsity(pruned, head_names), 6)
        name = f"pruned-{round(opts.prune * 100)}"
        p_dir = out / name
        _replace_dir(p_dir)
        merge_mod.save_model(pruned, run.tokenizer, p_dir)
        params, nonzero = tensor_counts(pruned)
        notes.append("dense storage: zeros take space")
        measure(Variant(name, name, pruned, params, nonzero, dir_size(p_dir), notes, {"pruning": info}))

    if opts.prune_heads is not None:
        pruned = copy.deepcopy(merged)
        heads = prune_mod.prune_heads(pruned, opts.prune_heads)
        info: dict[str, Any] = {"pruned_heads": heads}
        notes = [f"{opts.prune_heads} attention heads removed (weight-norm importance)"]
        if opts.recover_steps:
            info.update(recover(pruned, run, splits["train"], opts.recover_steps))
            notes.append(f"{opts.recover_steps} recovery steps")
        name = f"heads-pruned-{opts.prune_heads}"
        h_dir = out / name
        _replace_dir(h_dir)
        prune_mod.save_head_pruned(pruned, run.tokenizer, heads, h_dir)
        params, nonzero = tensor_counts(pruned)
        notes.append("lmtune.compress.load_head_pruned(dir)")
        measure(Variant(name, name, pruned, params, nonzero, dir_size(h_dir), notes, {"pruning": info}))

    if opts.onnx:
        from lmtune.compress.onnx_export import MODEL_NAME, OnnxModel, export_onnx

        o_dir = out / "onnx"
        _replace_dir(o_dir)
        samples = [b1[0], *b32[:1], *make_batches(run.task, run.tokenizer, test, 7, 1)]
        check = export_onnx(merged, run.tokenizer, o_dir, samples, tolerance=opts.onnx_tolerance)
        onnx_model = OnnxModel(o_dir / MODEL_NAME, getattr(merged, "config", None))
        params, nonzero = tensor_counts(merged)
        notes = ["onnxruntime CPU; dynamic batch and sequence axes"]
        extra = {"onnx_max_abs_diff": float(f"{check['max_abs_diff']:.3g}")}
        measure(Variant("onnx", "onnx", onnx_model, params, nonzero, dir_size(o_dir), notes, extra))

    return _write_table(out, run, metric_name, rows, opts)


def _replace_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e4 else f"{value:.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "/")


def _write_table(
    out: Path, run: Any, metric_name: str, rows: list[dict[str, Any]], opts: ExportOptions
) -> dict[str, Any]:
    for row in rows:
        for column in COLUMNS:
            row.setdefault(column, None)
    table = {
        "run": str(run.directory),
        "metric": metric_name,
        "test_rows": rows[0]["metrics"].get("n"),
        "benchmark": {
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "repetitions_b1": opts.repetitions_b1 if opts.benchmark else 0,
            "repetitions_b32": opts.repetitions_b32 if opts.benchmark else 0,
        },
        "columns": list(COLUMNS),
        "variants": rows,
    }
    write_json(out / TABLE_JSON, table)
    header = [c if c != "metric" else f"test {metric_name}" for c in COLUMNS]
    lines = [
        f"# Export of {run.directory}",
        "",
        f"Test split: {table['test_rows']} rows. Latency: CPU, {torch.get_num_threads()} threads, "
        f"{opts.repetitions_b1} (batch 1) / {opts.repetitions_b32} (batch 32) timed forward passes."
        if opts.benchmark
        else f"Test split: {table['test_rows']} rows. Latency not measured (--no-benchmark).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if c in ("variant", "path", "notes") else "---:" for c in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
    write_text(out / TABLE_MD, "\n".join(lines) + "\n")
    return table
