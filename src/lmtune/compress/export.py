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

Each variant is one `VariantSpec` in `VARIANTS` (when it applies, how it is built from an
earlier variant, its notes); `export_run` walks that list with one loop, so a new variant is
one builder function and one entry.
"""

from __future__ import annotations

import copy
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field, fields
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
    gguf: str | None = None  # f16 | q8_0: a GGUF file of the merged decoder (llama.cpp, Ollama)
    ollama: bool = False  # with gguf: an Ollama Modelfile in to/ollama/
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
    """`count` batches of real test rows as the model's forward pass takes them."""
    if len(dataset) == 0:
        raise LmtuneError("the run's test split is empty", hint="nothing to measure on")
    return task.forward_batches(tokenizer, dataset, batch_size, count)


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


# ---- the variants ----------------------------------------------------------------------------
@dataclass
class Export:
    """One export under way: the run, the options, and what every variant is measured on."""

    run: Any
    opts: ExportOptions
    out: Path
    peft: bool  # the run's method saves a peft adapter: its model/ holds the adapter only
    splits: dict[str, Any]
    metric_name: str
    b1: list[dict]
    b32: list[dict]

    @property
    def method(self) -> str:
        return self.run.config.method.name

    @property
    def test(self) -> Any:
        return self.splits["test"]


@dataclass
class Built:
    """What a variant's `build` returns: its model, what was done to it, extra table columns."""

    model: Any
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    counted: nn.Module | None = None  # whose parameters the row counts; None: `model`'s


_OPTION_NAMES = {f.name for f in fields(ExportOptions)}


@dataclass(frozen=True)
class VariantSpec:
    """One row of the export table, as data.

    The variant is written when its `option` (an `ExportOptions` field; None: always) is set and
    the variant named `source` was built. `build` makes it from that variant's model and, when
    `saved`, writes it into a fresh directory `to/<name>`; the row's notes are the builder's
    (what was done) followed by `notes` (how to load it).
    """

    name: str | Callable[[ExportOptions], str]
    option: str | None
    build: Callable[[Export, Any, Path | None], Built]
    notes: tuple[str, ...] = ()
    source: str | None = "merged"
    saved: bool = True

    def __post_init__(self) -> None:
        if self.option is not None and self.option not in _OPTION_NAMES:
            raise TypeError(f"variant option {self.option!r} is not a field of ExportOptions")

    def name_for(self, opts: ExportOptions) -> str:
        return self.name if isinstance(self.name, str) else self.name(opts)

    def applies(self, opts: ExportOptions, built: Container[str]) -> bool:
        if self.option is not None:
            value = getattr(opts, self.option)
            if value is None or value is False:  # identity: --prune 0 is asked for (and refused)
                return False
        return self.source is None or self.source in built


def _build_original(ex: Export, source: Any, directory: Path | None) -> Built:
    adapter = "; size is the adapter, the base model loads too" if ex.peft else ""
    return Built(ex.run.model, [f"{ex.method} run as trained{adapter}"])


def _build_merged(ex: Export, source: Any, directory: Path | None) -> Built:
    merged = merge_mod.merge(source, ex.method)
    merge_mod.save_model(merged, ex.run.tokenizer, directory)
    return Built(
        merged, ["adapters merged; AutoModel.from_pretrained(dir)" if ex.peft else "standalone model"]
    )


def _build_int8(ex: Export, source: Any, directory: Path | None) -> Built:
    q = quantize.quantize_int8(source)
    quantize.save_int8(q, ex.run.tokenizer, directory)
    return Built(q)


def _recovered(ex: Export, pruned: nn.Module, info: dict[str, Any], notes: list[str]) -> None:
    """The recovery fine-tune of a pruned model, when --recover-steps asks for one."""
    if ex.opts.recover_steps:
        info.update(recover(pruned, ex.run, ex.splits["train"], ex.opts.recover_steps))
        notes.append(f"{ex.opts.recover_steps} recovery steps")


def _build_pruned(ex: Export, source: Any, directory: Path | None) -> Built:
    head_names = ex.run.task.head_names
    pruned = copy.deepcopy(source)
    info = prune_mod.prune_unstructured(pruned, ex.opts.prune, head_names, permanent=False)
    notes = [f"magnitude pruning, body sparsity {ex.opts.prune:.0%}"]
    _recovered(ex, pruned, info, notes)  # the masks stay on meanwhile: pruned weights stay zero
    prune_mod.make_permanent(pruned)
    info["sparsity"] = round(prune_mod.measured_sparsity(pruned, head_names), 6)
    merge_mod.save_model(pruned, ex.run.tokenizer, directory)
    return Built(pruned, notes, {"pruning": info})


def _build_heads_pruned(ex: Export, source: Any, directory: Path | None) -> Built:
    pruned = copy.deepcopy(source)
    heads = prune_mod.prune_heads(pruned, ex.opts.prune_heads)
    info: dict[str, Any] = {"pruned_heads": heads}
    notes = [f"{ex.opts.prune_heads} attention heads removed (weight-norm importance)"]
    _recovered(ex, pruned, info, notes)
    prune_mod.save_head_pruned(pruned, ex.run.tokenizer, heads, directory)
    return Built(pruned, notes, {"pruning": info})


def _build_onnx(ex: Export, source: Any, directory: Path | None) -> Built:
    from lmtune.compress.onnx_export import MODEL_NAME, OnnxModel, export_onnx

    samples = [ex.b1[0], *ex.b32[:1], *make_batches(ex.run.task, ex.run.tokenizer, ex.test, 7, 1)]
    check = export_onnx(source, ex.run.tokenizer, directory, samples, tolerance=ex.opts.onnx_tolerance)
    onnx_model = OnnxModel(directory / MODEL_NAME, getattr(source, "config", None))
    extra = {"onnx_max_abs_diff": float(f"{check['max_abs_diff']:.3g}")}
    return Built(onnx_model, extra=extra, counted=source)  # the graph holds the merged weights


def _build_gguf(ex: Export, source: Any, directory: Path | None) -> Built:
    """The merged decoder as a GGUF file, read back by transformers' GGUF loader: that reader's
    model is what the row scores, and its logits are compared with the merged model's."""
    from lmtune.compress import gguf_export

    path = gguf_export.write_gguf(
        source, ex.run.tokenizer, directory / f"model-{ex.opts.gguf}.gguf", ex.opts.gguf
    )
    reread = gguf_export.load_gguf(path)
    parity = gguf_export.logit_parity(source, reread, [ex.b1[0], *ex.b32[:1]])
    notes = [
        f"{ex.opts.gguf}; llama.cpp/Ollama; read back by transformers: logits vs merged max abs diff "
        f"{parity['max_abs_logit_diff']:.3g}, top-1 agreement {parity['top1_agreement']:.3f}"
    ]
    if ex.opts.ollama:
        modelfile = gguf_export.ollama_modelfile(ex.run.tokenizer, path.name, ex.out / "ollama")
        notes.append(f"ollama create NAME -f {modelfile.relative_to(ex.out)}")
    extra = {f"gguf_{k}": round(v, 6) for k, v in parity.items()} | {"untimed": True}
    return Built(reread, notes, extra, counted=source)


def _pruned_name(opts: ExportOptions) -> str:
    return f"pruned-{round(opts.prune * 100)}"


def _heads_name(opts: ExportOptions) -> str:
    return f"heads-pruned-{opts.prune_heads}"


# In table order. `original` comes first: peft merges in place, so it is measured before merging.
VARIANTS: tuple[VariantSpec, ...] = (
    VariantSpec("original", None, _build_original, source=None, saved=False),
    VariantSpec("merged", "merge", _build_merged, source="original"),
    VariantSpec(
        "int8", "int8", _build_int8, ("dynamic int8 nn.Linear (CPU); lmtune.compress.load_int8(dir)",)
    ),
    VariantSpec(_pruned_name, "prune", _build_pruned, ("dense storage: zeros take space",)),
    VariantSpec(_heads_name, "prune_heads", _build_heads_pruned, ("lmtune.compress.load_head_pruned(dir)",)),
    VariantSpec("onnx", "onnx", _build_onnx, ("onnxruntime CPU; dynamic batch and sequence axes",)),
    VariantSpec("gguf", "gguf", _build_gguf, ("latency not timed: llama.cpp runs it, not torch",)),
)


# ---- orchestration ---------------------------------------------------------------------------
def export_run(run_dir: str | Path, to: str | Path, options: ExportOptions | None = None) -> dict[str, Any]:
    """Write the requested variants of `run_dir` under `to`; returns the table (also on disk)."""
    from lmtune.methods import get_method_class
    from lmtune.run import Run

    opts = options or ExportOptions()
    out = Path(to)
    if out.exists() and any(out.iterdir()) and not (out / TABLE_JSON).exists():
        raise LmtuneError(
            f"{out} is not empty and is not an lmtune export",
            hint="choose an empty or new --to directory",
        )
    run = Run.load(run_dir, device="cpu")
    peft = get_method_class(run.config.method.name).supports("peft-adapter")
    _check_options(opts, run.config.method.name, peft)
    if opts.gguf is not None:
        from lmtune.compress.gguf_export import check_file_type, check_supported

        check_file_type(opts.gguf)
        check_supported(getattr(run.model, "config", None))
    ex = _prepare(run, opts, out, peft)
    if opts.keep_adapter:
        merge_mod.copy_adapter(run.directory / "model", out / "adapter")
    models: dict[str, Any] = {}  # the variants built so far, by name: the sources of later ones
    rows: list[dict[str, Any]] = []
    for spec in VARIANTS:
        if spec.applies(opts, models):
            variant = _make_variant(ex, spec, models.get(spec.source) if spec.source else None)
            models[variant.name] = variant.model
            rows.append(measure(ex, variant))
    _flag_drift(ex, rows[0])
    return _write_table(out, run, ex.metric_name, rows, opts)


def _check_options(opts: ExportOptions, method: str, peft: bool) -> None:
    """Refuse combinations that cannot work, before any data is read."""
    needs_plain = opts.int8 or opts.prune is not None or opts.prune_heads is not None or opts.onnx
    if peft and not opts.merge and needs_plain:
        raise LmtuneError(
            "int8, pruning and ONNX work on a standalone model, but --no-merge keeps the adapter separate",
            hint="drop --no-merge (the adapter is still written with --keep-adapter)",
        )
    if opts.gguf is not None and not opts.merge:
        raise LmtuneError(
            "--gguf writes the merged model, and --no-merge skips merging", hint="drop --no-merge"
        )
    if opts.ollama and opts.gguf is None:
        raise LmtuneError("--ollama needs --gguf (the Modelfile names the GGUF file)", hint="add --gguf q8_0")
    if opts.merge:
        merge_mod.check_mergeable(method)
    if opts.recover_steps and opts.prune is None and opts.prune_heads is None:
        raise LmtuneError("--recover-steps needs --prune or --prune-heads")


def _prepare(run: Any, opts: ExportOptions, out: Path, peft: bool) -> Export:
    """The run's splits and the batches latency is timed on; creates `out`."""
    splits = run_splits(run)
    test = splits["test"]
    metric_name = run.config.train.metric_for_best_model or run.task.default_metric
    b1 = make_batches(run.task, run.tokenizer, test, 1, min(len(test), 32))
    b32 = make_batches(run.task, run.tokenizer, test, 32, 4)
    out.mkdir(parents=True, exist_ok=True)
    return Export(run, opts, out, peft, splits, metric_name, b1, b32)


def _make_variant(ex: Export, spec: VariantSpec, source: Any) -> Variant:
    """Build one variant (into a fresh `to/<name>` when it is saved) and count what it holds."""
    name = spec.name_for(ex.opts)
    directory = ex.out / name if spec.saved else None
    if directory is not None:
        _replace_dir(directory)
    built = spec.build(ex, source, directory)
    params, nonzero = tensor_counts(built.counted if built.counted is not None else built.model)
    size = dir_size(directory if directory is not None else ex.run.directory / "model")
    notes = [*built.notes, *spec.notes]
    return Variant(name, name if spec.saved else None, built.model, params, nonzero, size, notes, built.extra)


def measure(ex: Export, variant: Variant) -> dict[str, Any]:
    """The variant's table row: sizes, the task's metrics on the test split, CPU latency."""
    run, opts = ex.run, ex.opts
    result = run.task.evaluate(variant.model, run.tokenizer, ex.test, run.batch_size)
    row: dict[str, Any] = {
        "variant": variant.name,
        "path": variant.path,
        "size_mb": round(variant.size_bytes / 2**20, 2),
        "params": variant.params,
        "nonzero_params": variant.nonzero_params,
        "metric": _primary(result.metrics, ex.metric_name),
        "onnx_max_abs_diff": variant.extra.get("onnx_max_abs_diff"),
        "notes": "; ".join(variant.notes),
        "metrics": result.metrics,
        **{k: v for k, v in variant.extra.items() if k not in ("onnx_max_abs_diff", "untimed")},
    }
    if opts.benchmark and not variant.extra.get("untimed"):
        row["latency_b1_p50_ms"], row["latency_b1_p95_ms"] = latency(
            variant.model, ex.b1, opts.repetitions_b1
        )
        row["latency_b32_p50_ms"], row["latency_b32_p95_ms"] = latency(
            variant.model, ex.b32, opts.repetitions_b32
        )
    return row


def _flag_drift(ex: Export, original: dict[str, Any]) -> None:
    """Note on the original's row when it no longer scores what metrics.json recorded."""
    run_test = (ex.run.metrics.get("test") or {}).get(ex.metric_name)
    if isinstance(run_test, int | float) and abs(original["metrics"][ex.metric_name] - run_test) > 1e-6:
        original["notes"] += f"; differs from metrics.json ({run_test:.4f}): data or library changed"


def _primary(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    return round(float(value), 4) if isinstance(value, int | float) else None


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
