"""lmtune: fine-tune, evaluate, compress and serve language models, fast and frugal.

Public API:

    from lmtune import RunConfig, train, load_run
    run = train(RunConfig(model={"name": "all-MiniLM-L6-v2"}, data={"train": "train.csv"}))
    load_run("runs/run").predict(["what a wonderful film"])
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtune._version import __version__
from lmtune.config import RunConfig
from lmtune.deferred_bitsandbytes import defer_bitsandbytes
from lmtune.errors import LmtuneError

# peft (which transformers imports whenever it is installed) would import bitsandbytes at once,
# and it logs a kernel warning on CPUs: keep it out until a 4-bit layer needs it.
defer_bitsandbytes()

if TYPE_CHECKING:
    from lmtune.run import Run


def train(config: RunConfig | dict[str, Any], *, overwrite: bool = False) -> Run:
    """Fine-tune as the config says and return the finished `Run`."""
    from lmtune.run import train as _train

    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    return _train(cfg, overwrite=overwrite)


def load_run(directory: str | Path, device: str | None = None) -> Run:
    """Load a finished run directory for prediction and evaluation."""
    from lmtune.run import load_run as _load_run

    return _load_run(directory, device)


def evaluate(directory: str | Path, data_path: str | Path) -> dict[str, Any]:
    """Metrics of a finished run on a labelled file."""
    return load_run(directory).evaluate(data_path)


def predict(directory: str | Path, texts: str | list[str]) -> list[dict[str, Any]]:
    """Predictions of a finished run for a list of texts."""
    return load_run(directory).predict(texts)


__all__ = ["LmtuneError", "RunConfig", "__version__", "evaluate", "load_run", "predict", "train"]
