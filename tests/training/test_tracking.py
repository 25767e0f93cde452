"""Tracking: TensorBoard event files and a local MLflow run (params and metrics) inside the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.conftest import fast_config

from lmtune.config import RunConfig
from lmtune.run import train
from lmtune.training.tracking import scoped_env


def test_scoped_env_restores() -> None:
    os.environ["LMTUNE_X_TEST"] = "before"
    with scoped_env({"LMTUNE_X_TEST": "during", "LMTUNE_Y_TEST": "new"}):
        assert os.environ["LMTUNE_X_TEST"] == "during" and os.environ["LMTUNE_Y_TEST"] == "new"
    assert os.environ.pop("LMTUNE_X_TEST") == "before" and "LMTUNE_Y_TEST" not in os.environ


def test_tensorboard_and_mlflow_logs_stay_in_the_run(
    tiny_bert: str, sentiment_files: dict, tmp_path: Path
) -> None:
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "run"
    raw = fast_config(
        tiny_bert, sentiment_files, out, train={"epochs": 1, "report_to": ["tensorboard", "mlflow"]}
    )
    raw["data"]["max_length"] = 16
    train(RunConfig.from_dict(raw))

    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "mlflow.db").exists()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lmtune")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert float(run.data.params["learning_rate"]) > 0
    assert "eval_f1_macro" in run.data.metrics and "loss" in run.data.metrics
    assert run.info.status == "FINISHED"
    assert experiment.artifact_location.startswith((out / "mlruns").as_uri())


def test_a_second_run_in_the_process_logs_into_its_own_store(
    tiny_bert: str, sentiment_files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into the environment; the next run must
    not take that for the user's choice and log into the first run's store."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("first", "second"):
        raw = fast_config(
            tiny_bert, sentiment_files, tmp_path / name, train={"epochs": 1, "report_to": ["mlflow"]}
        )
        raw["data"]["max_length"] = 16
        train(RunConfig.from_dict(raw))
        assert "MLFLOW_TRACKING_URI" not in os.environ
    for name in ("first", "second"):
        client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("lmtune")
        assert len(client.search_runs([experiment.experiment_id])) == 1, name
