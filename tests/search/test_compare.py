"""Method comparison: table, plots and a recommendation computed from the numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from tests.conftest import fast_config

from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.search.compare import EARLY_STOPPING_MAX_EPOCHS, compare, parse_budget, recommend


def test_recommendation_from_numbers() -> None:
    rows = [
        {"method": "full", "status": "ok", "metric": 0.90, "trainable_params": 1_000_000, "runtime_s": 50.0},
        {"method": "lora", "status": "ok", "metric": 0.895, "trainable_params": 10_000, "runtime_s": 20.0},
        {"method": "bitfit", "status": "ok", "metric": 0.85, "trainable_params": 1_000, "runtime_s": 10.0},
        {"method": "prefix", "status": "skipped", "reason": "does not apply"},
    ]
    advice = recommend(rows, greater=True)
    assert advice["best_quality"] == "full"
    assert advice["best_quality_per_trainable_parameter"] == "bitfit"
    assert advice["fastest_within_one_point"] == "lora"
    assert recommend(rows, greater=False)["best_quality"] == "bitfit"


def test_recommendation_for_a_loss() -> None:
    """Lower is better: per parameter means less loss with fewer parameters; one point is 1 %."""
    rows = [
        {
            "method": "full",
            "status": "ok",
            "metric": 1.428,
            "trainable_params": 134_000_000,
            "runtime_s": 334.0,
        },
        {"method": "lora", "status": "ok", "metric": 1.44, "trainable_params": 460_000, "runtime_s": 248.0},
        {"method": "ia3", "status": "ok", "metric": 1.9, "trainable_params": 50_000, "runtime_s": 200.0},
    ]
    advice = recommend(rows, greater=False)
    assert advice["best_quality"] == "full" and advice["one_point"] == pytest.approx(0.01428)
    assert advice["best_quality_per_trainable_parameter"] == "ia3"
    assert advice["fastest_within_one_point"] == "lora"  # 1.44 is within 1 % of 1.428; 1.9 is not


def test_compare_three_methods(tiny_bert: str, sentiment_files: dict, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    raw = fast_config(tiny_bert, sentiment_files, tmp_path / "unused", train={"epochs": 1})
    raw["data"]["max_length"] = 16
    result = compare(raw, ["lora", "bitfit", "adapter-pfeiffer"], out)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"lora", "bitfit", "adapter-pfeiffer"}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert row["trainable_params"] > 0 and row["size_on_disk_mb"] > 0 and row["peak_rss_mb"] > 0
        assert row["learning_rate"] > 0 and Path(row["run_dir"]).name == name
        assert row["latency_ms"] > 0 and row["epochs"] == 1
    # LoRA's adapter merges into the base; BitFit and the adapters change no separate weights.
    assert rows["lora"]["merged_latency_ms"] > 0
    assert rows["bitfit"]["merged_latency_ms"] is None
    assert len({r["trainable_params"] for r in rows.values()}) == 3  # each method trains its own share
    with open(out / "comparison.csv", encoding="utf-8") as fh:
        assert [r["method"] for r in csv.DictReader(fh)] == ["lora", "bitfit", "adapter-pfeiffer"]
    assert json.loads((out / "comparison.json").read_text())["recommendation"] == result["recommendation"]
    assert "Recommendation" in (out / "comparison.md").read_text()
    for name in ("pareto.png", "methods.png"):
        assert (out / name).stat().st_size > 0
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG"


def test_compare_lists_methods_that_do_not_apply(
    tiny_bert: str, sentiment_files: dict, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    raw = fast_config(tiny_bert, sentiment_files, tmp_path / "unused", train={"epochs": 1})
    raw["method"] = {"name": "lora", "r": 4}
    raw["data"]["max_length"] = 16
    # A LoRA option that names no module of the model makes LoRA fail before training.
    raw["method"]["target_modules"] = ["no_such_module"]
    result = compare(raw, ["lora"], out)
    assert result["rows"][0]["status"] == "skipped" and result["rows"][0]["reason"]
    assert "Not compared" in (out / "comparison.md").read_text()


def test_seeds_and_equal_steps(tiny_bert: str, sentiment_files: dict, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    raw = fast_config(tiny_bert, sentiment_files, tmp_path / "unused", train={"epochs": 3, "seed": 7})
    raw["data"]["max_length"] = 16
    result = compare(raw, ["lora", "bitfit"], out, seeds=2, steps=6)
    assert result["seeds"] == 2 and result["steps"] == 6
    for row in result["rows"]:
        assert row["status"] == "ok", row
        assert [Path(d).name for d in row["run_dirs"]] == [f"{row['method']}-seed7", f"{row['method']}-seed8"]
        per_seed = [json.loads((Path(d) / "metrics.json").read_text()) for d in row["run_dirs"]]
        assert all(m["train"]["steps"] == 6 for m in per_seed)  # every method, the same steps
        values = [m["validation"][result["metric"]] for m in per_seed]
        assert row["seeds"] == values and row["metric"] == pytest.approx(sum(values) / 2)
        assert row["metric_std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    table = (out / "comparison.md").read_text()
    assert " ± " in table and "| converged |" in table


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ("steps:300", {"kind": "steps", "value": 300}),
        ("time:90", {"kind": "time", "value": 90.0}),
        ("early-stopping", {"kind": "early-stopping", "value": EARLY_STOPPING_MAX_EPOCHS}),
        ("early-stopping:8", {"kind": "early-stopping", "value": 8}),
        ("auto", {"kind": "auto", "value": None}),
        ("epochs", None),
        (None, None),
    ],
)
def test_budgets_parse(budget, expected) -> None:
    assert parse_budget(budget) == expected


@pytest.mark.parametrize("budget", ["steps:0", "steps:x", "time:-1", "epochs:3", "early-stopping:0"])
def test_bad_budgets_are_refused_with_the_forms_that_work(budget) -> None:
    with pytest.raises(
        LmtuneError, match=r"expected steps:N, time:SECONDS, early-stopping.*, auto or epochs"
    ):
        parse_budget(budget)


def test_time_and_early_stopping_budgets(tiny_bert: str, sentiment_files: dict, tmp_path: Path) -> None:
    raw = fast_config(tiny_bert, sentiment_files, tmp_path / "unused", train={"epochs": 1})
    raw["data"]["max_length"] = 16
    timed = compare(raw, ["lora"], tmp_path / "timed", budget="time:0.000001", latency=False)
    row = timed["rows"][0]
    assert row["status"] == "ok" and "latency_ms" not in row
    assert json.loads((Path(row["run_dir"]) / "metrics.json").read_text())["train"]["steps"] == 1
    assert timed["budget"] == {"kind": "time", "value": 1e-6}
    patient = compare(raw, ["bitfit"], tmp_path / "patient", budget="early-stopping:4", latency=False)
    row = patient["rows"][0]
    assert RunConfig.from_yaml(Path(row["run_dir"]) / "config.yaml").train.epochs == 4
    assert 1 <= row["epochs"] <= 4  # patience 2 may end it sooner
    with pytest.raises(LmtuneError, match="--budget or --steps"):
        compare(raw, ["lora"], tmp_path / "both", steps=3, budget="steps:3")


@pytest.mark.parametrize(
    ("metric", "values", "expected"),
    [
        ("accuracy", [0.5, 0.6], False),  # still rising by 10 points
        ("accuracy", [0.6, 0.603], True),  # within half a point
        ("accuracy", [0.7, 0.6], True),  # falling: more steps would not help
        ("accuracy", [0.7], None),  # one evaluation: cannot tell
        ("eval_loss", [1.0, 0.8], False),  # a loss still falling by 20 %
        ("eval_loss", [1.0, 0.999], True),
    ],
)
def test_a_metric_still_improving_at_the_end_is_not_converged(metric, values, expected, tmp_path):
    from lmtune.search.compare import _converged

    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    records = [{"loss": 1.0}] + [{key: v, "epoch": i + 1} for i, v in enumerate(values)]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _converged(tmp_path, metric, "classification") is expected


def test_auto_budget_scales_with_the_training_set_within_its_bounds() -> None:
    from lmtune.search.compare import AUTO_EPOCHS, AUTO_MAX_STEPS, AUTO_MIN_STEPS, auto_steps

    assert auto_steps(64, 8) == AUTO_MIN_STEPS  # a tiny set: the floor
    rows = 16 * 200  # 200 batches of 16 per epoch
    assert auto_steps(rows, 16) == max(AUTO_MIN_STEPS, round(AUTO_EPOCHS * 200))
    assert auto_steps(rows, 8, accumulation=2) == auto_steps(rows, 16)  # optimizer steps, not batches
    assert auto_steps(10_000_000, 16) == AUTO_MAX_STEPS


def test_without_a_budget_compare_spends_auto_unless_epochs_are_set(tiny_bert, sentiment_files, tmp_path):
    """No --budget, no epochs in the config: `auto`, resolved to steps from the training rows
    before anything trains; a config that sets train.epochs (or max_steps) keeps them."""
    from lmtune.search.compare import auto_steps, budget_text, default_budget, resolve_auto_budget

    raw = fast_config(tiny_bert, sentiment_files, tmp_path / "unused")
    assert default_budget(raw) == "epochs"
    del raw["train"]["epochs"]
    assert default_budget(raw) == "auto"
    assert default_budget({**raw, "train": {**raw["train"], "max_steps": 5}}) == "epochs"
    train_rows = len(sentiment_files["train"].read_text().strip().splitlines()) - 1  # minus the header
    resolved = resolve_auto_budget(raw, "lora", tmp_path / "cmp")
    assert resolved == {
        "kind": "steps",
        "value": auto_steps(train_rows, raw["train"]["batch_size"]),
        "auto": True,
        "train_rows": train_rows,
    }
    assert f"`auto` for {train_rows} training rows" in budget_text(resolved)
    assert budget_text(None) == "the config's epochs"
