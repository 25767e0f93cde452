"""Method comparison: table, plots and a recommendation computed from the numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image
from tests.conftest import fast_config

from lmtune.search.compare import compare, recommend


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
