"""A finished run as the starting point of another: SFT -> DPO -> export.

`--model runs/sft` names a run directory. Its trained model becomes the new run's base: the
method's result merged into plain transformers weights (`Method.merged`, the same merge that
`export --merge` does), written once into lmtune's cache and reused while the run is unchanged.
Every later consumer (`Run.load`, `serve`, `export`) resolves the same name to the same
directory, so the new run needs nothing but its config. Where the run came from is recorded:
`lineage()` gives the chain of runs back to the pretrained model, for run.json and the card.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError
from lmtune.io import atomic_dir, write_json

STATE_FILE = "run.json"
SOURCE_FILE = "lmtune_source.json"  # beside the merged weights: which run they came from


def is_run_dir(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / "config.yaml").is_file()


def _state(run_dir: Path) -> dict[str, Any]:
    from lmtune.run import read_state

    return read_state(run_dir) or {}


def _finished_state(run_dir: Path) -> dict[str, Any]:
    state = _state(run_dir)
    if state.get("status") != "complete":
        raise LmtuneError(
            f"run {run_dir} did not finish (status: {state.get('status', 'unknown')}), so it cannot "
            "be the starting point of another run",
            hint="finish it first: re-run its `lmtune train` command",
        )
    return state


def _key(run_dir: Path, state: dict[str, Any]) -> str:
    """Changes whenever the run is trained again (its fingerprint or finish time changes)."""
    ident = f"{run_dir.resolve()}|{state.get('fingerprint')}|{state.get('finished')}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def merged_model_dir(run_dir: Path) -> Path:
    """The run's model as a plain transformers directory (merged once, then from the cache)."""
    from lmtune.models import cache_dir

    state = _finished_state(run_dir)
    target = cache_dir() / "runs" / _key(run_dir, state)
    if not (target / SOURCE_FILE).is_file():
        _merge_into(run_dir, target, state)
    return target


def _merge_into(run_dir: Path, target: Path, state: dict[str, Any]) -> None:
    from lmtune.methods import get_method_class
    from lmtune.run import Run

    run = Run.load(run_dir, device="cpu")
    method_cls = get_method_class(run.config.method.name)
    method_cls.require(
        "mergeable",
        f"starting a new run from {run_dir}",
        hint="train the first run with a mergeable method (lora, dora, ia3, full, ...)",
    )
    merged = method_cls.merged(run.model)
    with atomic_dir(target) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
        write_json(
            tmp / SOURCE_FILE,
            {
                "run": str(run_dir.resolve()),
                "fingerprint": state.get("fingerprint"),
                "lineage": lineage(run_dir),
            },
        )


def continued_adapter(run_dir: Path) -> tuple[Any, str]:
    """(the run's own base model, its adapter directory), for `model.from_run: continue`."""
    from lmtune.config import RunConfig
    from lmtune.methods import get_method_class
    from lmtune.models import resolve_model

    _finished_state(run_dir)
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    get_method_class(cfg.method.name).require(
        "peft-adapter",
        f"continuing the adapter of {run_dir}",
        hint="set model.from_run to merge (start from its merged model instead)",
    )
    base = resolve_model(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code, cfg.model.from_run)
    return base, str(run_dir / "model")


def continues_adapter(model_cfg: Any) -> bool:
    """Whether a run with this `model:` section trains on from a finished run's adapter."""
    return model_cfg.from_run == "continue" and is_run_dir(Path(model_cfg.name).expanduser())


def source_method(run_dir: Path) -> str:
    from lmtune.config import RunConfig

    return RunConfig.from_yaml(run_dir / "config.yaml").method.name


def lineage(run_dir: Path) -> list[dict[str, Any]]:
    """The runs this one starts from, nearest first, ending with the pretrained model's name."""
    from lmtune.config import RunConfig

    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    entry = {
        "run": str(run_dir.resolve()),
        "fingerprint": _state(run_dir).get("fingerprint"),
        "task": cfg.task.type,
        "method": cfg.method.name,
        "model": cfg.model.name,
    }
    parent = Path(cfg.model.name).expanduser()
    return [entry, *(lineage(parent) if is_run_dir(parent) else [])]


def lineage_of(model_name: str) -> list[dict[str, Any]]:
    """The lineage of a run started from `model_name` (empty unless it names a run directory)."""
    path = Path(model_name).expanduser()
    return lineage(path) if is_run_dir(path) else []
