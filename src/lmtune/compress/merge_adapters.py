"""Combine LoRA runs of one base model into one run (`lmtune merge-adapters`).

peft does the maths (`add_weighted_adapter`: linear, cat, svd, TIES, DARE, magnitude pruning);
this file checks that the runs can be combined, averages what peft cannot (a trained head that
each run saved beside its adapter: peft refuses to combine `modules_to_save`, so the heads are
averaged with the same weights, normalised to sum to one), and writes the result as a normal
finished run directory that `eval`, `predict`, `serve` and `export` take. With a labelled file
it evaluates the merged run beside each source run on that file (merge.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

# peft's combination types; those that prune need a density (the fraction of weights kept).
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "magnitude_prune")
_NEEDS_DENSITY = ("ties", "ties_svd", "dare_linear", "dare_ties", "magnitude_prune")
MERGED_ADAPTER = "merged"


@dataclass(frozen=True)
class MergeSpec:
    """What to combine and how: run directories, one weight per run, peft's combination type."""

    runs: tuple[Path, ...]
    weights: tuple[float, ...]
    combination: str = "linear"
    density: float | None = None

    @classmethod
    def of(
        cls,
        runs: list[str | Path],
        weights: list[float] | None = None,
        combination: str = "linear",
        density: float | None = None,
    ) -> MergeSpec:
        """Validated: at least two runs, one weight each (default: equal), a known combination."""
        paths = tuple(Path(r) for r in runs)
        if len(paths) < 2:
            raise LmtuneError(
                "merge-adapters needs at least two runs", hint="e.g. merge-adapters runs/a runs/b"
            )
        if len(set(paths)) != len(paths):
            raise LmtuneError("merge-adapters: a run is given twice", hint="name each run once")
        chosen = tuple(weights) if weights else tuple(1.0 / len(paths) for _ in paths)
        if len(chosen) != len(paths):
            raise LmtuneError(
                f"--weights has {len(chosen)} values for {len(paths)} runs", hint="give one weight per run"
            )
        if any(w <= 0 for w in chosen):
            raise LmtuneError(f"--weights {list(chosen)}: every weight must be positive")
        if combination not in COMBINATIONS:
            raise LmtuneError(f"--method {combination!r} is not a combination peft knows", hint=_choices())
        if combination in _NEEDS_DENSITY:
            density = 0.5 if density is None else density
            if not 0 < density <= 1:
                raise LmtuneError(f"--density {density}: the fraction of weights kept, in (0, 1]")
        elif density is not None:
            raise LmtuneError(f"--density applies to {', '.join(_NEEDS_DENSITY)}, not {combination}")
        return cls(paths, chosen, combination, density)


def _choices() -> str:
    return f"one of {', '.join(COMBINATIONS)}"


def read_sources(spec: MergeSpec) -> list[Any]:
    """The runs' configs, refused unless all are finished LoRA runs of one base, task and labels."""
    from lmtune.run import first_mismatch, read_finished_config

    configs = [read_finished_config(path) for path in spec.runs]
    first = configs[0]
    for path, cfg in zip(spec.runs, configs, strict=True):
        adapter_file = path / "model" / "adapter_config.json"
        peft = json.loads(adapter_file.read_text(encoding="utf-8")) if adapter_file.is_file() else {}
        if peft.get("peft_type") != "LORA" or peft.get("use_dora"):
            raise LmtuneError(
                f"{path}: its method {cfg.method.name} is not a plain LoRA adapter (peft combines "
                "LoRA adapters only: not DoRA, IA3 or other types)",
                hint="merge runs trained with method lora",
            )
        mismatch = first_mismatch(first, cfg, ("base model", "task", "labels", "method"))
        if mismatch is not None:
            what, ours, theirs = mismatch
            raise LmtuneError(
                f"{path}: its {what} is {theirs!r}, {spec.runs[0]}'s is {ours!r}",
                hint="merge runs fine-tuned from the same base model for the same task and labels",
            )
    return configs


def combined_model(spec: MergeSpec) -> tuple[Any, Any]:
    """(the first run, its PeftModel holding only the combined adapter, as the active one)."""
    from peft.utils import ModulesToSaveWrapper

    from lmtune.models import MODEL_CONSTRUCTION_LOCK
    from lmtune.run import Run

    first = Run.load(spec.runs[0])
    model = first.model
    names = ["default"]
    with MODEL_CONSTRUCTION_LOCK:
        for i, path in enumerate(spec.runs[1:], start=1):
            names.append(f"source{i}")
            model.load_adapter(str(path / "model"), adapter_name=names[-1])
    heads = _averaged_heads(model, names, spec.weights, ModulesToSaveWrapper)
    try:
        model.add_weighted_adapter(
            names,
            list(spec.weights),
            MERGED_ADAPTER,
            combination_type=spec.combination,
            density=spec.density,
        )
    except (ValueError, TypeError) as exc:
        raise LmtuneError(f"peft cannot combine these adapters: {str(exc).splitlines()[0][:300]}") from None
    for wrapper, state in heads:
        wrapper.modules_to_save[MERGED_ADAPTER].load_state_dict(state)
    model.set_adapter(MERGED_ADAPTER)
    for name in names:
        model.delete_adapter(name)
    model.eval()
    return first, model


def _averaged_heads(model: Any, names: list[str], weights: tuple[float, ...], wrapper_type: type) -> list:
    """The weighted mean of each trained head the runs saved; afterwards only the first run's
    copy stays in each wrapper, so that peft's check (one run per saved module) passes."""
    total = sum(weights)
    averaged = []
    for wrapper in (m for m in model.modules() if isinstance(m, wrapper_type)):
        held = [(n, w) for n, w in zip(names, weights, strict=True) if n in wrapper.modules_to_save]
        if not held:
            continue
        states = [(wrapper.modules_to_save[n].state_dict(), w / total) for n, w in held]
        mean = {key: sum(state[key] * share for state, share in states) for key in states[0][0]}
        averaged.append((wrapper, mean))
        for name, _ in held[1:]:
            wrapper.delete_adapter(name, new_active_adapters=wrapper.active_adapters)
    return averaged


def merge_adapters(spec: MergeSpec, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the combined adapter as a finished run in `output_dir` (all or nothing); returns it."""
    from lmtune.config import RunConfig

    configs = read_sources(spec)
    out = Path(output_dir)
    _check_output(out, spec, overwrite)
    first, model = combined_model(spec)
    combined = model.peft_config[MERGED_ADAPTER]
    raw = configs[0].to_dict()
    raw["method"] = {**raw["method"], "r": combined.r, "alpha": combined.lora_alpha}
    raw["output_dir"] = str(out)
    cfg = RunConfig.from_dict(raw, source=f"merged config of {spec.runs[0]}")
    record = {
        "sources": [str(p) for p in spec.runs],
        "weights": list(spec.weights),
        "combination": spec.combination,
        "density": spec.density,
        "rank": combined.r,
    }
    _write_run(out, cfg, first, model, record)
    return out


def _check_output(out: Path, spec: MergeSpec, overwrite: bool) -> None:
    from lmtune.run import read_state

    if any(out.resolve() == path.resolve() for path in spec.runs):
        raise LmtuneError(f"-o {out} is one of the source runs", hint="write the merged run elsewhere")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if read_state(out) is None:
            raise LmtuneError(
                f"{out} exists and is not an lmtune run", hint="choose a new -o (lmtune never deletes it)"
            )
        if not overwrite:
            raise LmtuneError(f"{out} already holds a run", hint="pass --overwrite to replace it")


def _write_run(out: Path, cfg: Any, first: Any, model: Any, record: dict[str, Any]) -> None:
    """The run directory, written in a temporary folder that replaces `out` at the end."""
    from lmtune.io import atomic_dir, write_json, write_text
    from lmtune.methods import get_method_class
    from lmtune.run import model_info, write_state

    with atomic_dir(out) as tmp:
        model_dir = tmp / "model"
        get_method_class(cfg.method.name)(cfg.method.options).save(model, model_dir)
        nested = model_dir / MERGED_ADAPTER  # peft saves an adapter not named "default" in a subfolder
        for path in nested.iterdir():
            path.replace(model_dir / path.name)
        nested.rmdir()
        first.tokenizer.save_pretrained(model_dir)
        write_json(model_dir / "lmtune.json", model_info(cfg, first.task.labels))
        write_text(tmp / "config.yaml", cfg.to_yaml())
        write_json(tmp / "metrics.json", {"merge": record})
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_state(tmp, cfg, "complete", finished=finished, merged_from=record["sources"])


def evaluate_merge(spec: MergeSpec, out: Path, data: str | Path) -> dict[str, Any]:
    """The merged run and each source on one labelled file: metrics.json's `test` and merge.md."""
    from lmtune.evaluation.report import markdown_table
    from lmtune.io import write_json, write_text
    from lmtune.run import load_run

    merged = load_run(out)
    scores = {"merged": _scalars(merged.evaluate(data))}
    for path in spec.runs:
        scores[str(path)] = _scalars(load_run(path).evaluate(data))
    metrics = {**merged.metrics, "test": scores["merged"], "merge_evaluation": {"data": str(data), **scores}}
    write_json(out / "metrics.json", metrics)
    keys = [k for k in scores["merged"] if k != "n"]
    rows = [[name, *(_cell(values.get(k)) for k in keys)] for name, values in scores.items()]
    weights = ", ".join(f"{w:g}" for w in spec.weights)
    text = (
        f"# Merged adapters\n\n{spec.combination} of {len(spec.runs)} LoRA runs (weights {weights}"
        + (f", density {spec.density:g}" if spec.density is not None else "")
        + f"), evaluated on `{data}`:\n\n"
        + "\n".join(markdown_table(["run", *keys], rows))
        + "\n"
    )
    write_text(out / "merge.md", text)
    return scores


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)
