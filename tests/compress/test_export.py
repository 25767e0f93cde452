"""`lmtune export`: every variant written, the table complete, bad combinations refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lmtune.cli import app
from lmtune.compress.export import COLUMNS, VARIANTS, ExportOptions, VariantSpec, export_run
from lmtune.errors import LmtuneError


def planned(options: ExportOptions) -> list[str]:
    """The variants `export_run` writes for these options, in table order (no run needed)."""
    built: list[str] = []
    for spec in VARIANTS:
        if spec.applies(options, built):
            built.append(spec.name_for(options))
    return built


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (ExportOptions(), ["original", "merged"]),
        (ExportOptions(merge=False, keep_adapter=True), ["original"]),
        # Every compressed variant is built from the merged model: without it there are none.
        (ExportOptions(merge=False, int8=True, prune=0.5, onnx=True), ["original"]),
        (ExportOptions(int8=True, onnx=True), ["original", "merged", "int8", "onnx"]),
        (ExportOptions(prune=0.3, prune_heads=1), ["original", "merged", "pruned-30", "heads-pruned-1"]),
        (ExportOptions(prune=0.0), ["original", "merged", "pruned-0"]),  # refused by pruning, not skipped
    ],
)
def test_variant_specs_follow_the_options(options, names):
    assert planned(options) == names


def test_each_variant_is_built_from_an_earlier_one():
    everything = ExportOptions(int8=True, prune=0.5, prune_heads=2, onnx=True)
    seen: list[str] = []
    for spec in VARIANTS:
        assert spec.source is None or spec.source in seen, spec
        seen.append(spec.name_for(everything))
    assert len(set(seen)) == len(seen)
    with pytest.raises(TypeError, match="not a field of ExportOptions"):
        VariantSpec("x", "int9", VARIANTS[0].build)


def test_export_all_variants(tiny_full_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "export"
    options = ExportOptions(
        int8=True,
        prune=0.5,
        prune_heads=2,
        recover_steps=2,
        onnx=True,
        keep_adapter=True,
        repetitions_b1=3,
        repetitions_b32=2,
    )
    table = export_run(tiny_full_run, out, options)
    names = [row["variant"] for row in table["variants"]]
    assert names == ["original", "merged", "int8", "pruned-50", "heads-pruned-2", "onnx"]
    saved = json.loads((out / "export.json").read_text())
    assert saved["columns"] == list(COLUMNS)
    for row in saved["variants"]:
        assert set(COLUMNS) <= set(row)
        assert row["metric"] is not None and row["latency_b1_p50_ms"] > 0 and row["latency_b32_p95_ms"] > 0
        assert row["metric"] >= 0.6, row
        if row["path"]:
            assert (out / row["path"]).is_dir() and row["size_mb"] > 0
    rows = {row["variant"]: row for row in saved["variants"]}
    original_f1 = json.loads((tiny_full_run / "metrics.json").read_text())["test"]["f1_macro"]
    assert rows["original"]["metric"] == pytest.approx(original_f1, abs=1e-4)
    assert rows["pruned-50"]["pruning"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert rows["pruned-50"]["pruning"]["recover_steps"] == 2
    assert rows["pruned-50"]["nonzero_params"] < rows["merged"]["nonzero_params"]
    assert rows["heads-pruned-2"]["params"] < rows["merged"]["params"]
    assert rows["onnx"]["onnx_max_abs_diff"] <= 1e-3
    assert rows["int8"]["size_mb"] < rows["merged"]["size_mb"]
    assert (out / "adapter" / "lmtune.json").exists()
    markdown = (out / "export.md").read_text()
    assert markdown.count("\n| ") == 1 + len(names)  # header + one line per variant
    AutoModelForSequenceClassification.from_pretrained(out / "merged")


def test_no_merge_refuses_compression_of_adapters(tiny_lora_run, tmp_path):
    with pytest.raises(LmtuneError, match="--no-merge"):
        export_run(tiny_lora_run, tmp_path / "x", ExportOptions(merge=False, int8=True))
    with pytest.raises(LmtuneError, match="--recover-steps needs"):
        export_run(tiny_lora_run, tmp_path / "x", ExportOptions(recover_steps=3))


def test_cli_export_keeps_adapter_unmerged(tiny_lora_run, tmp_path):
    out = tmp_path / "export"
    result = CliRunner().invoke(
        app,
        ["export", str(tiny_lora_run), "--to", str(out), "--no-merge", "--keep-adapter", "--no-benchmark"],
    )
    assert result.exit_code == 0, result.output
    assert (out / "adapter" / "adapter_config.json").exists()
    assert not (out / "merged").exists()
    row = json.loads((out / "export.json").read_text())["variants"][0]
    assert row["variant"] == "original" and row["latency_b1_p50_ms"] is None


def test_cli_export_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--to", str(tmp_path)])
    assert isinstance(result.exception, LmtuneError)  # `lmtune` prints it and exits with 2
    assert "not an lmtune export" in str(result.exception)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
