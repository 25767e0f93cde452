"""Trainings launched from the board: real `lmtune train` subprocesses, queued, cancelled
gracefully (the run stays resumable) and resumed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from lmtune.board.app import BoardSettings, create_board_app
from lmtune.training.checkpoints import MARKER

pytestmark = pytest.mark.slow


def _config(roots: dict[str, Path], name: str, **train: Any) -> dict[str, Any]:
    data = roots["data"]
    return {
        "model": str(roots["tiny_bert"]),
        "data": {k: str(data / f"{k}.csv") for k in ("train", "validation", "test")} | {"max_length": 32},
        "train": {"batch_size": 8, "report_to": ["none"], "logging_steps": 1, **train},
        "output_dir": name,
    }


def _ended(job: dict[str, Any]) -> bool:
    return job["status"] not in ("queued", "running")


def _wait(client: TestClient, job_id: str, until: Any = _ended, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = next(j for j in client.get("/api/jobs").json()["jobs"] if j["id"] == job_id)
        if until(job):
            return job
        time.sleep(0.5)
    log = client.get(f"/api/jobs/{job_id}/log").json()["text"]
    raise AssertionError(f"job {job_id} stuck at {job['status']}; log:\n{log[-3000:]}")


def test_launch_queues_one_at_a_time_and_the_run_appears(
    board_roots: dict[str, Path], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    with TestClient(create_board_app(BoardSettings(runs, [board_roots["data"]]))) as client:
        first = client.post("/api/launch", json={"config": _config(board_roots, "first", epochs=1)})
        second = client.post("/api/launch", json={"config": _config(board_roots, "second", epochs=1)})
        assert first.status_code == second.status_code == 202
        busy = client.post("/api/launch", json={"config": _config(board_roots, "second", epochs=1)})
        assert busy.status_code == 400 and "already training" in busy.json()["detail"]
        first_id, second_id = first.json()["job"]["id"], second.json()["job"]["id"]
        running = _wait(client, first_id, lambda j: j["status"] != "queued")
        statuses = {j["id"]: j["status"] for j in client.get("/api/jobs").json()["jobs"]}
        assert running["status"] in ("running", "finished") and statuses[second_id] == "queued"
        assert _wait(client, first_id)["status"] == "finished"
        assert _wait(client, second_id)["status"] == "finished"
        rows = {r["path"]: r for r in client.get("/api/runs").json()["runs"]}
        assert rows["first"]["status"] == rows["second"]["status"] == "complete"
        log = client.get(f"/api/jobs/{first_id}/log").json()
        assert "run directory" in log["text"] and log["offset"] == len(log["text"].encode())


def test_cancel_leaves_an_interrupted_run_that_resumes(board_roots: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = _config(board_roots, "long", epochs=25, save_strategy="epoch", early_stopping_patience=None)
    with TestClient(create_board_app(BoardSettings(runs, [board_roots["data"]]))) as client:
        job = client.post("/api/launch", json={"config": config}).json()["job"]
        # Cancel once a checkpoint was sealed, so there is something to resume from.
        _wait(
            client,
            job["id"],
            lambda j: j["status"] == "running" and any((runs / "long").glob(f"checkpoint-*/{MARKER}")),
        )
        assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
        assert _wait(client, job["id"], lambda j: j["status"] != "running")["status"] == "cancelled"
        state = json.loads((runs / "long" / "run.json").read_text())
        assert state["status"] == "interrupted"
        row = client.get("/api/run", params={"path": "long"}).json()
        assert row["status"] == "interrupted"
        resumed = client.post("/api/run/resume", params={"path": "long"})
        assert resumed.status_code == 202
        new_id = resumed.json()["job"]["id"]
        assert _wait(client, new_id)["status"] == "finished"
        metrics = json.loads((runs / "long" / "metrics.json").read_text())
        assert metrics["train"]["resumed_from"].startswith("checkpoint-")
        assert client.post("/api/run/resume", params={"path": "long"}).status_code == 400  # complete now
