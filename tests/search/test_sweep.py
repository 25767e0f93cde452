"""Sweeps: resume after interruption (also a killed RUNNING trial), grid coverage, conditional spaces."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
import yaml
from PIL import Image
from tests.conftest import fast_config

from lmtune.config import RunConfig, SweepParam
from lmtune.errors import LmtuneError
from lmtune.search.sweep import STUDY_NAME, grid_values, suggest, sweep


def _sweep_raw(tiny_bert: str, files: dict, out: Path, **sweep_section) -> dict:
    raw = fast_config(tiny_bert, files, out / "unused", train={"epochs": 1, "batch_size": 16})
    raw["data"]["max_length"] = 16
    raw["sweep"] = {"pruner": "none", **sweep_section}
    return raw


def _valid_png(path: Path) -> None:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"


def test_grid_values_cover_the_steps() -> None:
    assert grid_values(SweepParam(type="int", low=2, high=8, step=2)) == [2, 4, 6, 8]
    assert grid_values(SweepParam(type="float", low=0.1, high=0.3, step=0.1)) == [0.1, 0.2, 0.3]
    assert grid_values(SweepParam(type="categorical", choices=["a", "b"])) == ["a", "b"]
    with pytest.raises(LmtuneError, match="step"):
        grid_values(SweepParam(type="float", low=0.1, high=0.3))


def test_conditional_space_skips_options_the_method_lacks() -> None:
    space = {
        "method.r": SweepParam(type="categorical", choices=[2, 4]),
        "method.name": SweepParam(type="categorical", choices=["lora", "bitfit"]),
    }
    base = {"method": {"name": "lora"}, "task": {"type": "classification"}}
    params, skipped = suggest(optuna.trial.FixedTrial({"method.name": "bitfit", "method.r": 4}), space, base)
    assert params == {"method.name": "bitfit"} and skipped == ["method.r"]
    params, skipped = suggest(optuna.trial.FixedTrial({"method.name": "lora", "method.r": 4}), space, base)
    assert params == {"method.name": "lora", "method.r": 4} and skipped == []


def test_train_refuses_a_sweep_config(tiny_bert: str, sentiment_files: dict, tmp_path: Path) -> None:
    from lmtune.run import train

    raw = _sweep_raw(
        tiny_bert,
        sentiment_files,
        tmp_path,
        space={"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}},
    )
    with pytest.raises(LmtuneError, match="lmtune sweep"):
        train(RunConfig.from_dict(raw))


def test_sweep_resumes_and_recovers_a_killed_trial(
    tiny_bert: str, sentiment_files: dict, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    space = {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    first = sweep(
        _sweep_raw(tiny_bert, sentiment_files, tmp_path, sampler="random", n_trials=2, space=space), out
    )
    assert [t["state"] for t in first["trials"]] == ["complete", "complete"]

    # A process killed mid-trial leaves a RUNNING trial behind in the study.
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    zombie = study.ask()
    zombie.suggest_float("train.learning_rate", 1e-4, 1e-2, log=True)
    zombie.set_user_attr("run_dir", str(out / f"trial-{zombie.number:03d}"))

    second = sweep(
        _sweep_raw(tiny_bert, sentiment_files, tmp_path, sampler="random", n_trials=3, space=space), out
    )
    states = {t["trial"]: t["state"] for t in second["trials"]}
    assert second["recovered_killed_trials"] == [zombie.number]
    assert states[zombie.number] == "fail"
    assert sum(s == "complete" for s in states.values()) == 3
    rerun = [t for t in second["trials"] if "re-run of trial" in t["note"]]
    assert len(rerun) == 1 and rerun[0]["params"] == {
        "train.learning_rate": zombie.params["train.learning_rate"]
    }
    assert rerun[0]["run_dir"] == str(out / f"trial-{zombie.number:03d}")

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "sweep" not in best and best["output_dir"] == str(out / "best")
    assert best["train"]["learning_rate"] == pytest.approx(second["best"]["params"]["train.learning_rate"])
    assert second["best"]["test"]["n"] == 16  # the test split is reported for the best trial only
    assert all("test" not in t for t in second["trials"])
    csv_lines = (out / "summary.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(second["trials"])
    assert "Best:" in (out / "summary.md").read_text()
    _valid_png(out / "optimization_history.png")
    for name, where in second["plots"].items():
        # Importance is skipped with a reason when all trials score the same (tiny model, 1 epoch).
        assert where.startswith("skipped: ") or _valid_png(Path(where)) is None, name
    # Nothing left to do: the same command again trains nothing.
    third = sweep(
        _sweep_raw(tiny_bert, sentiment_files, tmp_path, sampler="random", n_trials=3, space=space), out
    )
    assert len(third["trials"]) == len(second["trials"])


def test_grid_sweep_covers_the_grid_exactly(tiny_bert: str, sentiment_files: dict, tmp_path: Path) -> None:
    space = {
        "train.learning_rate": {"type": "float", "low": 1e-3, "high": 2e-3, "step": 1e-3},
        "train.batch_size": {"type": "categorical", "choices": [8, 16]},
    }
    summary = sweep(
        _sweep_raw(tiny_bert, sentiment_files, tmp_path, sampler="grid", space=space), tmp_path / "grid"
    )
    seen = sorted(
        (t["params"]["train.learning_rate"], t["params"]["train.batch_size"]) for t in summary["trials"]
    )
    assert seen == sorted(itertools.product([1e-3, 2e-3], [8, 16]))
    assert all(t["state"] == "complete" for t in summary["trials"])


def test_sweep_refuses_a_changed_space(tiny_bert: str, sentiment_files: dict, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    space = {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 2e-3}}
    sweep(_sweep_raw(tiny_bert, sentiment_files, tmp_path, sampler="random", n_trials=1, space=space), out)
    other = {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 2e-3}}
    with pytest.raises(LmtuneError, match="different config or search space"):
        sweep(
            _sweep_raw(tiny_bert, sentiment_files, tmp_path, sampler="random", n_trials=1, space=other), out
        )


def test_parallel_trials_log_into_the_sweeps_store_handed_to_them(
    tiny_bert: str, sentiment_files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two trials in threads (n_jobs=2): both log into the sweep's MLflow store, which their
    trackers get as an argument, not through the process environment."""
    mlflow = pytest.importorskip("mlflow")
    import os

    from lmtune.training import tracking

    monkeypatch.delenv(tracking.TRACKING_DIR_ENV, raising=False)
    monkeypatch.delenv(tracking.EXPERIMENT_ENV, raising=False)
    seen_env: list[str | None] = []
    original = tracking.scoped_env

    def spying_scoped_env(values):
        seen_env.append(os.environ.get(tracking.TRACKING_DIR_ENV))
        return original(values)

    monkeypatch.setattr(tracking, "scoped_env", spying_scoped_env)
    out = tmp_path / "sweep"
    space = {"train.learning_rate": {"type": "categorical", "choices": [1e-3, 2e-3]}}
    raw = _sweep_raw(tiny_bert, sentiment_files, tmp_path, sampler="grid", space=space)
    raw["train"]["report_to"] = ["mlflow"]
    summary = sweep(raw, out, n_jobs=2)

    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    assert seen_env == [None, None]  # both trackers set up, neither through LMTUNE_TRACKING_DIR
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"sweep-{out.name}")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert not list(out.glob("trial-*/mlflow.db"))  # nothing in the trials' own directories
    assert tracking.TRACKING_DIR_ENV not in os.environ


@pytest.mark.slow
def test_sweep_cli_on_minilm(minilm_path: str, sentiment_files: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmtune.cli import app

    raw = _sweep_raw(
        "all-MiniLM-L6-v2",
        sentiment_files,
        tmp_path,
        sampler="tpe",
        n_trials=2,
        space={"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
    )
    raw["train"].update(max_steps=3, eval_strategy="no", save_strategy="no")
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["sweep", str(config), "--output-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "Best:" in result.output and (tmp_path / "s" / "best.yaml").exists()
    assert len(list((tmp_path / "s").glob("trial-*/metrics.json"))) == 2
