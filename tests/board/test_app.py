"""The board's JSON API on real (tiny) runs: every route, the security cases, bad input."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from lmtune.board.app import BoardSettings, create_board_app


@pytest.fixture
def client(board_roots: dict[str, Path]) -> TestClient:
    app = create_board_app(BoardSettings(board_roots["runs"], [board_roots["data"]]))
    with TestClient(app) as test_client:
        yield test_client


def test_runs_lists_every_run_with_status_and_main_metric(client: TestClient) -> None:
    body = client.get("/api/runs").json()
    rows = {r["path"]: r for r in body["runs"]}
    assert set(rows) == {"sst/lora", "sst/bitfit", "broken/interrupted"}
    lora = rows["sst/lora"]
    assert (lora["status"], lora["task"], lora["method"]) == ("complete", "classification", "lora")
    assert lora["metric"]["name"] == "f1_macro" and lora["metric"]["split"] == "test"
    assert 0 <= lora["metric"]["value"] <= 1 and lora["trainable_percent"] > 0 and lora["train_time_s"] > 0
    # run.json says running, but its process is gone: the board says interrupted.
    assert rows["broken/interrupted"]["status"] == "interrupted"


def test_run_detail_has_curves_confusion_tables_and_rendered_report(client: TestClient) -> None:
    detail = client.get("/api/run", params={"path": "sst/lora"}).json()
    assert {"loss", "learning_rate", "eval_f1_macro"} <= set(detail["curves"]["series"])
    confusion = detail["confusion"]["test"]
    assert confusion["labels"] == ["negative", "positive"] and sum(map(sum, confusion["matrix"])) == 16
    assert any(t["title"].startswith("per class") for t in detail["tables"])
    assert "<table>" in detail["report_html"] and "<script" not in detail["report_html"]
    assert "/api/file?path=sst/lora/confusion_matrix_test.png" in detail["report_html"]
    assert detail["config"]["method"]["name"] == "lora" and "epochs" in detail["config_yaml"]
    assert detail["predictions"] == {"validation": 16, "test": 16}
    assert detail["view"] == {"render": "labels", "inputs": ["text"], "base_available": False}
    assert any(a["name"] == "metrics.json" for a in detail["artefacts"])


def test_confusion_cell_lists_its_examples(client: TestClient, board_roots: dict[str, Path]) -> None:
    detail = client.get("/api/run", params={"path": "sst/lora"}).json()
    matrix = detail["confusion"]["test"]["matrix"]
    body = client.get(
        "/api/run/examples",
        params={"path": "sst/lora", "split": "test", "gold": "positive", "predicted": "positive"},
    ).json()
    assert body["total"] == matrix[1][1]
    assert all(e["gold"] == "positive" and e["predicted"] == "positive" for e in body["examples"])
    with open(board_roots["data"] / "test.csv", encoding="utf-8") as fh:
        texts = {row["text"] for row in csv.DictReader(fh)}
    assert all(e["text"] in texts for e in body["examples"])


def test_compare_marks_the_best_run_per_column_and_diffs_configs(client: TestClient) -> None:
    body = client.get("/api/compare", params={"runs": ["sst/lora", "sst/bitfit"]}).json()
    columns = {c["key"]: c for c in body["columns"]}
    values = {r["path"]: r["values"] for r in body["runs"]}
    f1 = columns["test.f1_macro"]
    assert f1["greater_is_better"] is True
    assert values[f1["best"]]["test.f1_macro"] == max(v["test.f1_macro"] for v in values.values())
    params = columns["trainable_params"]
    assert params["greater_is_better"] is False
    assert values[params["best"]]["trainable_params"] == min(v["trainable_params"] for v in values.values())
    keys = {d["key"] for d in body["config_diff"]}
    assert "method.name" in keys and "output_dir" not in keys and "train.epochs" not in keys
    assert {p["path"] for p in body["pareto"]} == {"sst/lora", "sst/bitfit"}
    assert set(body["curves"]) == {"sst/lora", "sst/bitfit"}


def test_schema_carries_every_task_and_method_with_options(client: TestClient) -> None:
    body = client.get("/api/schema").json()
    assert {"model", "task", "method", "data", "train"} <= set(body["config"]["properties"])
    assert "r" in body["methods"]["lora"]["options"]["properties"]
    assert "multi_label" in body["tasks"]["classification"]["options"]["properties"]


def test_validate_gives_the_clis_message_next_to_the_field(client: TestClient, board_roots: dict) -> None:
    train = str(board_roots["data"] / "train.csv")
    config = {
        "model": "all-MiniLM-L6-v2",
        "data": {"train": train},
        "train": {"epochs": -1},
        "output_dir": "x",
    }
    response = client.post("/api/validate", json={"config": config})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "train.epochs"
    assert error["message"].startswith("form: invalid value for 'train.epochs'")
    typo = {**config, "train": {"epochz": 1}}
    error = client.post("/api/validate", json={"config": typo}).json()["errors"][0]
    assert error["field"] == "train.epochz" and "did you mean 'train.epochs'" in error["hint"]
    good = client.post("/api/validate", json={"config": {**config, "train": {"epochs": 1}}})
    assert good.status_code == 200 and "epochs: 1" in good.json()["yaml"]


def test_form_refuses_data_outside_the_data_roots_and_runs_outside_the_runs_root(
    client: TestClient, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("text,label\na,b\n")
    config = {"model": "all-MiniLM-L6-v2", "data": {"train": str(outside)}, "output_dir": "../escape"}
    errors = {
        e["field"]: e["message"] for e in client.post("/api/launch", json={"config": config}).json()["errors"]
    }
    assert "outside the data roots" in errors["data.train"]
    assert "without '..'" in errors["output_dir"]
    absolute = {**config, "data": {}, "output_dir": "/tmp/elsewhere"}
    assert client.post("/api/validate", json={"config": absolute}).status_code == 422


@pytest.mark.parametrize(
    "path",
    ["../secret.txt", "/etc/passwd", "sst/../../secret.txt", "sst/lora/../../../secret.txt", "a\\..\\b"],
)
def test_files_outside_the_runs_root_are_refused(client: TestClient, path: str) -> None:
    response = client.get("/api/file", params={"path": path})
    assert response.status_code in (400, 403)
    assert "detail" in response.json()


def test_a_symlink_out_of_the_runs_root_is_refused(
    client: TestClient, board_roots: dict, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    link = board_roots["runs"] / "sst" / "lora" / "leak.txt"
    os.symlink(secret, link)
    try:
        response = client.get("/api/file", params={"path": "sst/lora/leak.txt"})
        assert response.status_code == 403 and "do not serve" not in response.text
        assert client.get("/api/file", params={"path": "sst/lora/metrics.json"}).status_code == 200
    finally:
        link.unlink()


def test_unknown_run_and_bad_queries_are_4xx(client: TestClient) -> None:
    assert client.get("/api/run", params={"path": "nope"}).status_code == 404
    assert client.get("/api/run", params={"path": "sst"}).status_code == 404  # a folder, not a run
    assert client.get("/api/run").status_code == 422
    assert client.get("/api/collection", params={"path": "sst"}).status_code == 404
    assert client.get("/api/jobs/none/log").status_code == 404
    assert client.post("/api/jobs/none/cancel").status_code == 404
    assert client.post("/api/launch", json={"config": "yaml text"}).status_code == 422
    assert (
        client.post(
            "/api/launch", data=b"x" * (3 * 2**20), headers={"content-type": "application/json"}
        ).status_code
        == 413
    )


def test_predict_answers_what_the_run_predicts(client: TestClient) -> None:
    from lmtune.run import Run

    body = client.post("/api/predict", json={"path": "sst/lora", "inputs": ["the film was great"]}).json()
    assert body["view"]["render"] == "labels"
    (prediction,) = body["predictions"]
    direct = Run.load(client.app.state.board.root / "sst" / "lora").predict(["the film was great"])[0]
    assert prediction["label"] == direct["label"]
    assert client.post("/api/predict", json={"path": "sst/lora", "inputs": []}).status_code == 400
    assert client.post("/api/predict", json={"path": "sst/lora", "inputs": [{"txt": "x"}]}).status_code == 400
    interrupted = client.post("/api/predict", json={"path": "broken/interrupted", "inputs": ["x"]})
    assert interrupted.status_code == 400 and "not complete" in interrupted.json()["detail"]


def test_generate_refuses_a_run_that_does_not_generate(client: TestClient) -> None:
    response = client.get("/api/generate", params={"path": "sst/lora", "prompt": "hi"})
    assert response.status_code == 400 and "chat-generation" in response.json()["detail"]


def test_data_lists_and_upload_stores_bounded_files(board_roots: dict[str, Path]) -> None:
    app = create_board_app(BoardSettings(board_roots["runs"], [board_roots["data"]], max_upload_mb=0.001))
    with TestClient(app) as client:
        names = {f["name"] for f in client.get("/api/data").json()["files"]}
        assert {"train.csv", "validation.csv", "test.csv"} <= names
        ok = client.post("/api/upload", files={"file": ("my data!.csv", b"text,label\nhi,a\n")})
        assert ok.status_code == 200 and ok.json()["path"].endswith("uploads/my_data_.csv")
        assert client.post("/api/upload", files={"file": ("big.csv", b"x" * 5000)}).status_code == 413
        assert client.post("/api/upload", files={"file": ("run.sh", b"echo")}).status_code == 400
        escaped = client.post("/api/upload", files={"file": ("../../evil.csv", b"a,b\n")})
        assert escaped.json()["path"] == str(board_roots["data"].resolve() / "uploads" / "evil.csv")
    for name in ("my_data_.csv", "evil.csv"):
        (board_roots["data"] / "uploads" / name).unlink(missing_ok=True)


def test_a_token_is_checked_on_every_request(board_roots: dict[str, Path]) -> None:
    app = create_board_app(BoardSettings(board_roots["runs"], [board_roots["data"]], token="s3cret"))
    with TestClient(app) as client:
        assert client.get("/api/runs").status_code == 401
        assert client.get("/").status_code == 401
        assert client.get("/static/board.js").status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/api/runs", params={"token": "s3cret"}).status_code == 401  # only / takes ?token=
        page = client.get("/", params={"token": "s3cret"})
        assert page.status_code == 200 and "lmtune_board_token" in page.headers["set-cookie"]
        assert client.get("/api/runs").status_code == 200  # the cookie the page set


def test_page_and_plotly_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "/static/plotly.min.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert client.get("/static/plotly.min.js").status_code == 200
    assert client.get("/static/..%2Fapp.py").status_code in (403, 404)
