"""Experiment trackers beyond TensorBoard: MLflow and Weights & Biases, local and offline.

`train.report_to: [tensorboard, mlflow, wandb]`. transformers ships the integrations
(`MLflowCallback`, `WandbCallback`); what they lack is a default that keeps everything inside
the run and needs no network: they read process-wide environment variables and MLflow's
tracking URI is global to the process, so a second run in the same process (a sweep) would log
into the first run's store. The subclasses here are bound to one store and experiment, given
as arguments, and set the variables those integrations read only for the moment of their
setup (one setup at a time), restoring them right after.

Where the stores go: the `store` argument (a sweep passes its own directory so all its trials
land in one store), else `$LMTUNE_TRACKING_DIR` when the user set it (a comparison sets it for
the `lmtune train` processes it starts), else the run directory:
    mlflow:  sqlite:///DIR/mlflow.db, artefacts under DIR/mlruns
    wandb:   offline run files under DIR/wandb (`wandb sync` uploads them later)
`MLFLOW_TRACKING_URI` set by the user wins over the local default.

MLflow's tracking URI itself stays global to the process (its fluent API logs through it), so
runs logging at the same time in one process must share a store, as a sweep's trials do.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

TRACKERS = ("mlflow", "wandb")
TRACKING_DIR_ENV = "LMTUNE_TRACKING_DIR"
EXPERIMENT_ENV = "LMTUNE_TRACKING_EXPERIMENT"
# The environment is the process's: trackers set up in parallel threads (sweep trials) take turns.
_SETUP_LOCK = threading.Lock()


@contextlib.contextmanager
def scoped_env(values: dict[str, str | None]) -> Iterator[None]:
    """Set environment variables for a block, then restore exactly what was there."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def default_store(run_dir: Path) -> Path:
    """Where a run's trackers write when no store is given: `$LMTUNE_TRACKING_DIR` or the run."""
    return Path(os.environ.get(TRACKING_DIR_ENV) or run_dir).resolve()


def mlflow_uri(store: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(store).resolve() / 'mlflow.db'}"


def _missing(name: str) -> LmtuneError:
    return LmtuneError(
        f"train.report_to names '{name}', which is not installed",
        hint=f"pip install 'lmtune[track]' (or {name}), or drop it from train.report_to",
    )


def tracking_callbacks(
    report_to: list[str], run_dir: Path, store: Path | None = None, experiment: str | None = None
) -> list[Any]:
    """Trainer callbacks for the MLflow / W&B entries of `report_to` (others are ignored here),
    writing into `store` (see the module docstring for the default) under `experiment` (default
    `$LMTUNE_TRACKING_EXPERIMENT` or "lmtune"). Each callback's `tracker` names its entry."""
    callbacks: list[Any] = []
    run_dir = Path(run_dir)
    directory = Path(store).resolve() if store is not None else default_store(run_dir)
    experiment = experiment or os.environ.get(EXPERIMENT_ENV) or "lmtune"
    if "mlflow" in report_to:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise _missing("mlflow") from None
        callbacks.append(_local_mlflow_callback(mlflow_uri(directory), directory, experiment))
    if "wandb" in report_to:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise _missing("wandb") from None
        callbacks.append(_offline_wandb_callback(directory, experiment, run_dir.name))
    return callbacks


def _local_mlflow_callback(uri: str, directory: Path, experiment: str) -> Any:
    from transformers.integrations import MLflowCallback

    class LocalMLflowCallback(MLflowCallback):
        """MLflowCallback bound to one store and experiment (artefacts kept beside the store)."""

        tracker = "mlflow"

        def setup(self, args: Any, state: Any, model: Any) -> None:
            directory.mkdir(parents=True, exist_ok=True)
            # mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into the environment, where
            # the next run in this process would take it for the user's choice: it is set inside
            # the scope, which puts the user's value (or none) back.
            env = {"MLFLOW_EXPERIMENT_NAME": experiment, "MLFLOW_TRACKING_URI": uri}
            with _SETUP_LOCK, scoped_env(env):
                self._ml_flow.set_tracking_uri(uri)
                if state.is_world_process_zero and self._ml_flow.get_experiment_by_name(experiment) is None:
                    # A sqlite store would otherwise put artefacts in ./mlruns of the working directory.
                    location = (directory / "mlruns").as_uri()
                    self._ml_flow.create_experiment(experiment, artifact_location=location)
                super().setup(args, state, model)

    return LocalMLflowCallback()


def _offline_wandb_callback(directory: Path, project: str, name: str) -> Any:
    from transformers.integrations import WandbCallback

    class OfflineWandbCallback(WandbCallback):
        """WandbCallback in offline mode, writing under the tracking directory."""

        tracker = "wandb"

        def setup(self, args: Any, state: Any, model: Any, **kwargs: Any) -> None:
            directory.mkdir(parents=True, exist_ok=True)
            env = {
                "WANDB_MODE": "offline",
                "WANDB_DIR": str(directory),
                "WANDB_PROJECT": project,
                "WANDB_NAME": name,
                "WANDB_SILENT": "true",
            }
            with _SETUP_LOCK, scoped_env(env):
                super().setup(args, state, model, **kwargs)

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            super().on_train_end(args, state, control, model=model, **kwargs)
            if state.is_world_process_zero and self._wandb is not None and self._wandb.run is not None:
                self._wandb.finish()  # one offline run per lmtune run, closed with it

    return OfflineWandbCallback()
