"""The board on a real sweep's output folder, a compare folder, and a decoder run's streamed
generations (tuned, and base with the adapter off)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from lmtune.board.app import BoardSettings, create_board_app
from tests.conftest import fast_config, train_sft_run


def test_a_sweep_folder_shows_trials_history_and_importances(board_roots: dict, tmp_path: Path) -> None:
    from lmtune.search.sweep import sweep

    data = board_roots["data"]
    files = {k: data / f"{k}.csv" for k in ("train", "validation", "test")}
    raw = fast_config(str(board_roots["tiny_bert"]), files, tmp_path / "unused", train={"epochs": 1})
    raw["sweep"] = {
        "pruner": "none",
        "sampler": "grid",
        "space": {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 3e-3, "step": 1e-3}},
    }
    runs = tmp_path / "runs"
    summary = sweep(raw, runs / "lr-sweep")
    with TestClient(create_board_app(BoardSettings(runs))) as client:
        listed = client.get("/api/runs").json()
        assert {"path": "lr-sweep", "kind": "sweep"}.items() <= listed["collections"][0].items()
        body = client.get("/api/collection", params={"path": "lr-sweep"}).json()
    assert [t["number"] for t in body["trials"]] == [0, 1, 2]
    assert all(t["path"] and t["path"].startswith("lr-sweep/") for t in body["trials"])
    values = [t["value"] for t in sorted(summary["trials"], key=lambda t: t["trial"])]
    assert body["history"]["y"] == values
    assert body["history"]["best"][-1] == max(values)  # the sweep maximises f1_macro
    assert set(body["importances"]) <= {"train.learning_rate"}
    assert len(body["comparison"]["runs"]) == len(body["runs"]) >= 3
    assert "<table>" in body["markdown_html"]


def test_a_compare_folder_compares_its_member_runs(board_roots: dict, tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "methods"
    for method in ("lora", "bitfit"):
        shutil.copytree(board_roots["runs"] / "sst" / method, folder / method)
    (folder / "comparison.json").write_text(json.dumps({"metric": "f1_macro", "rows": []}))
    (folder / "comparison.md").write_text("# Method comparison\n\n| method |\n|---|\n| lora |\n")
    with TestClient(create_board_app(BoardSettings(tmp_path / "runs"))) as client:
        body = client.get("/api/collection", params={"path": "methods"}).json()
    assert body["kind"] == "compare" and sorted(body["runs"]) == ["methods/bitfit", "methods/lora"]
    assert {c["key"] for c in body["comparison"]["columns"]} >= {"test.f1_macro", "trainable_params"}


@pytest.mark.slow
def test_generations_stream_from_the_tuned_and_the_base_model(tiny_llama: str, tmp_path: Path) -> None:
    import torch

    from lmtune.run import Run

    records = [{"instruction": f"Say {w}.", "output": f"{w}!"} for w in ("yes", "no", "maybe", "hello")]
    (tmp_path / "runs").mkdir()
    out = train_sft_run(tiny_llama, records, tmp_path / "runs" / "sft", learning_rate=0.05)
    with TestClient(create_board_app(BoardSettings(tmp_path / "runs"))) as client:
        view = client.get("/api/run", params={"path": "sft"}).json()["view"]
        assert view == {"render": "generation", "inputs": ["text"], "base_available": True}
        streamed = {}
        for which in ("tuned", "base"):
            params = {"path": "sft", "prompt": "Say yes.", "model": which, "max_new_tokens": 8}
            with client.stream("GET", "/api/generate", params=params) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
            assert events[-1] == {"done": True}
            streamed[which] = "".join(e.get("text", "") for e in events)
    run = Run.load(out)
    item = {"messages": [{"role": "user", "content": "Say yes."}]}
    options = {"max_new_tokens": 8}
    assert streamed["tuned"].strip() == run.predict([item], options=options)[0]["generation"]
    with torch.no_grad(), run.model.disable_adapter():
        assert streamed["base"].strip() == run.predict([item], options=options)[0]["generation"]
