"""POST /explain in-process (TestClient): the records of `Run.explain`, bounded as /predict is."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lmtune.run import load_run
from lmtune.serving.app import ServeSettings, create_app


def test_explain_route_answers_and_refuses_like_predict(serve_runs, monkeypatch):
    settings = ServeSettings(max_request_items=3, max_text_chars=50)
    app = create_app(serve_runs["pos"], {"neg": serve_runs["neg"]}, settings)
    with TestClient(app) as client:
        body = client.post("/explain", json={"texts": ["the film was superb"], "n_steps": 8}).json()
        (record,) = body["explanations"]
        assert body["adapter"] == "default"
        expected = load_run(serve_runs["pos"]).predict(["the film was superb"])[0]
        assert record["prediction"]["label"] == expected["label"]
        (e,) = record["explanations"]
        assert len(e["token_scores"]) == len(record["tokens"])
        assert sum(e["token_scores"]) == pytest.approx(e["value"] - e["baseline_value"], abs=1e-3)
        # The other adapter answers with its own weights (trained on flipped labels).
        other = client.post("/explain", json={"texts": ["the film was superb"], "adapter": "neg"}).json()
        assert other["explanations"][0]["prediction"]["label"] != record["prediction"]["label"]
        r = client.post("/explain", json={"texts": ["x"], "target": "negative", "method": "rollout"})
        assert r.status_code == 200 and r.json()["explanations"][0]["explanations"][0]["target"] == "negative"
        for bad, status, detail in (
            ({"texts": ["a", "b", "c", "d"]}, 413, "at most 3"),
            ({"texts": ["x" * 60]}, 413, "at most 50"),
            ({"texts": []}, 422, None),
            ({"texts": ["x"], "method": "shap"}, 422, None),
            ({"texts": ["x"], "n_steps": 10_000}, 422, None),
            ({"texts": ["x"], "target": "neutral"}, 422, "unknown --target label 'neutral'"),
            ({"texts": [{"pair": "x"}]}, 422, "input 1: expected text"),
            ({"texts": ["x"], "adapter": "nope"}, 404, "unknown adapter"),
        ):
            r = client.post("/explain", json=bad)
            assert r.status_code == status, (bad, r.text)
            assert detail is None or detail in r.json()["detail"]
        assert client.post("/explain", content=b"{not json").status_code == 422
        # A task that declares no token-attributions: 422 that says so, never a 500.
        task_cls = type(app.state.pool.primary.task)
        monkeypatch.setattr(task_cls, "capabilities", task_cls.capabilities - {"token-attributions"})
        r = client.post("/explain", json={"texts": ["x"]})
        assert r.status_code == 422 and "cannot explain" in r.json()["detail"]
