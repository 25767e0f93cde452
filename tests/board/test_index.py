"""The runs index: rows re-read only when a run's files change, live status, odd run folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lmtune.board.index import RunIndex


def _copy(board_roots: dict[str, Path], root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(board_roots["runs"] / "sst" / "lora", target, ignore=shutil.ignore_patterns("model"))
    return target


def test_a_row_changes_when_its_files_change_and_goes_with_its_folder(
    board_roots: dict, tmp_path: Path
) -> None:
    run = _copy(board_roots, tmp_path, "a")
    index = RunIndex(tmp_path)
    (row,) = [r.row for r in index.scan()[0]]
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["f1_macro"] = 0.123
    (run / "metrics.json").write_text(json.dumps(metrics) + " ")  # a different size: a new signature
    (fresh,) = [r.row for r in index.scan()[0]]
    assert row["metric"]["value"] != 0.123 and fresh["metric"]["value"] == 0.123
    shutil.rmtree(run)
    assert index.scan() == ([], [])


def test_rows_are_cached_between_scans(board_roots: dict, tmp_path: Path, monkeypatch) -> None:
    _copy(board_roots, tmp_path, "a")
    index = RunIndex(tmp_path)
    index.scan()
    reads = []
    monkeypatch.setattr(index, "_read", lambda d: reads.append(d))
    index.scan()
    assert reads == []


def test_a_run_of_a_task_this_install_lacks_still_lists(board_roots: dict, tmp_path: Path) -> None:
    run = _copy(board_roots, tmp_path, "plugin")
    (run / "config.yaml").write_text("model: x\ntask: {type: not-installed}\n")
    (row,) = [r.row for r in RunIndex(tmp_path).scan()[0]]
    assert (row["task"], row["method"], row["status"]) == ("classification", "lora", "complete")
    assert row["metric"] is None


def test_model_and_checkpoint_folders_are_not_walked(board_roots: dict, tmp_path: Path) -> None:
    run = _copy(board_roots, tmp_path, "a")
    for inner in ("model", "checkpoint-8", ".board"):
        (run / inner).mkdir(exist_ok=True)
        (run / inner / "run.json").write_text("{}")
    assert [r.row["path"] for r in RunIndex(tmp_path).scan()[0]] == ["a"]
