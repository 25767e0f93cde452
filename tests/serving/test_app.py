"""The FastAPI app in-process (TestClient): answers, adapters, limits, errors, batching, admin."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from lmtune.errors import LmtuneError
from lmtune.run import load_run
from lmtune.serving.app import ServeSettings, create_app

TEXTS = ["the film was superb", "our meal was dreadful", "this phone was lovely", "the app was boring"]


def assert_same(served: list[dict], expected: list[dict]) -> None:
    """Same rows as Run.predict; scores within float noise (padding differs between batches)."""
    assert len(served) == len(expected)
    for got, want in zip(served, expected, strict=True):
        assert got["text"] == want["text"] and got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-4)


def batch_histogram(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    found = re.findall(r'^lmtune_batch_size_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    return {le: float(count) for le, count in found}


@pytest.fixture(scope="module")
def expected(serve_runs: dict[str, Path]) -> dict[str, list[dict]]:
    return {name: load_run(path).predict(TEXTS) for name, path in serve_runs.items()}


def test_predictions_equal_run_predict_for_each_adapter(serve_runs, expected):
    app = create_app(serve_runs["pos"], {"neg": serve_runs["neg"], "bitfit": serve_runs["bitfit"]})
    with TestClient(app) as client:
        info = client.get("/info").json()
        assert info["task"] == "classification" and info["labels"] == ["negative", "positive"]
        assert sorted(info["adapters"]) == ["bitfit", "default", "neg"]
        # LoRA runs share one PeftModel; the BitFit run is a separate model.
        assert info["adapters"]["neg"]["shared_base_model"] is True
        assert info["adapters"]["bitfit"]["shared_base_model"] is False
        assert info["limits"]["max_request_items"] == 64
        assert client.get("/health").json() == {"status": "ok"}

        body = client.post("/predict", json={"texts": TEXTS}).json()
        assert body["adapter"] == "default" and body["model"] == info["model"]
        assert_same(body["predictions"], expected["pos"])
        for name, key in (("neg", "neg"), ("bitfit", "bitfit"), ("default", "pos")):
            rows = client.post("/predict", json={"texts": TEXTS, "adapter": name}).json()["predictions"]
            assert_same(rows, expected[key])
        # The two LoRA adapters on one base model really answer differently.
        pos = [r["scores"]["positive"] for r in expected["pos"]]
        neg = [r["scores"]["positive"] for r in expected["neg"]]
        assert all(abs(a - b) > 1e-3 for a, b in zip(pos, neg, strict=True))

        # Requests for different adapters interleaved from many threads: each gets its own.
        def ask(i: int) -> tuple[str, list[dict]]:
            name = ("default", "neg", "bitfit")[i % 3]
            rows = client.post("/predict", json={"texts": TEXTS[i % 4 :], "adapter": name}).json()
            return name, rows["predictions"]

        with ThreadPoolExecutor(8) as pool:
            for name, rows in pool.map(ask, range(24)):
                key = {"default": "pos"}.get(name, name)
                want = [r for r in expected[key] if r["text"] in {row["text"] for row in rows}]
                assert_same(rows, want)

        # Records are passed through to the task (here {"text"}; text pairs and others alike).
        rows = client.post("/predict", json={"texts": [{"text": TEXTS[0]}]}).json()["predictions"]
        assert_same(rows, expected["pos"][:1])


ROUTES = {
    ("/predict", "post"): "predict_predict_post",
    ("/explain", "post"): "explain_explain_post",
    ("/health", "get"): "health_health_get",
    ("/info", "get"): "info_info_get",
    ("/metrics", "get"): "prometheus_metrics_metrics_get",
    ("/admin/adapters", "post"): "add_adapter_admin_adapters_post",
    ("/admin/adapters/{name}", "delete"): "remove_adapter_admin_adapters__name__delete",
}


def test_routes_and_their_openapi_contract(serve_runs):
    """The routes, their operation ids and the documented answers (what clients generate from)."""
    spec = create_app(serve_runs["pos"]).openapi()
    found = {
        (path, verb): op["operationId"] for path, ops in spec["paths"].items() for verb, op in ops.items()
    }
    assert found == ROUTES
    predict = spec["paths"]["/predict"]["post"]
    assert {"200", "404", "413", "422", "503", "504"} <= set(predict["responses"])
    assert predict["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("PredictRequest")
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert spec["paths"]["/admin/adapters"]["post"]["security"] == [{"HTTPBearer": []}]


def test_sharing_the_base_model_is_the_methods_declaration(serve_runs, expected, monkeypatch):
    """The pool asks the method class ("peft-adapter"), not the loaded model, whether a run is
    an adapter on the shared PeftModel: without the declaration a LoRA run is a separate model."""
    from lmtune.methods import get_method_class

    lora = get_method_class("lora")
    monkeypatch.setattr(lora, "capabilities", lora.capabilities - {"peft-adapter"})
    app = create_app(serve_runs["pos"], {"neg": serve_runs["neg"]})
    assert app.state.pool.peft_model is None
    with TestClient(app) as client:
        assert client.get("/info").json()["adapters"]["neg"]["shared_base_model"] is False
        for name, key in (("default", "pos"), ("neg", "neg")):
            rows = client.post("/predict", json={"texts": TEXTS, "adapter": name}).json()["predictions"]
            assert_same(rows, expected[key])


def test_request_errors(serve_runs):
    settings = ServeSettings(max_request_items=3, max_text_chars=50)
    with TestClient(create_app(serve_runs["pos"], {"neg": serve_runs["neg"]}, settings)) as client:
        for body in (
            {},
            {"texts": []},
            {"texts": "not a list"},
            {"texts": ["ok"], "adapter": "../etc/passwd"},
            {"texts": ["ok"], "extra": 1},
        ):
            assert client.post("/predict", json=body).status_code == 422, body
        # Task-level problems (LmtuneError) are 422 with the task's message.
        r = client.post("/predict", json={"texts": [{"question": "no text here"}]})
        assert r.status_code == 422 and "input 1: expected text" in r.json()["detail"]
        r = client.post("/predict", json={"texts": ["ok"], "options": {"beams": 4}})
        assert r.status_code == 422 and "predict option 'beams': unknown option" in r.json()["detail"]

        r = client.post("/predict", json={"texts": ["ok"], "adapter": "nope"})
        assert (
            r.status_code == 404 and r.json()["detail"] == "unknown adapter 'nope'; available: default, neg"
        )

        r = client.post("/predict", json={"texts": ["a", "b", "c", "d"]})
        assert r.status_code == 413 and "at most 3" in r.json()["detail"]
        r = client.post("/predict", json={"texts": ["x" * 30, {"text": "y" * 30}]})
        assert r.status_code == 413 and "60 characters; at most 50" in r.json()["detail"]
        # The raw body is refused on its Content-Length, before any JSON parsing.
        r = client.post(
            "/predict",
            content=b"{" + b" " * settings.max_body_bytes + b"}",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and "request body larger than" in r.json()["detail"]
        # ... and a chunked body (no Content-Length) when it passes the limit.
        chunks = iter([b'{"texts": ["', b"x" * settings.max_body_bytes, b'"]}'])
        r = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413
        chunks = iter([b'{"texts": ', b'["a small one"]}'])
        r = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["predictions"][0]["text"] == "a small one"

        metrics = client.get("/metrics").text
        assert 'lmtune_requests_total{endpoint="/predict",status="413"} 4.0' in metrics
        assert 'lmtune_requests_total{endpoint="/predict",status="404"} 1.0' in metrics
        assert "lmtune_request_latency_seconds_bucket" in metrics and "lmtune_queue_depth 0.0" in metrics


def test_queue_full_is_503_and_slow_requests_are_504(serve_runs, monkeypatch):
    settings = ServeSettings(max_queue=1, timeout_s=0.5, batching=False)
    app = create_app(serve_runs["pos"], settings=settings)
    run = app.state.pool.get("default").run
    gate, entered = threading.Event(), threading.Event()
    predict = run.predict

    def held(*args, **kwargs):
        entered.set()
        gate.wait(10)
        return predict(*args, **kwargs)

    monkeypatch.setattr(run, "predict", held)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/predict", json={"texts": ["one"]})
        assert entered.wait(5), "the worker holds the first request in the model thread"
        second = pool.submit(client.post, "/predict", json={"texts": ["two"]})
        deadline = time.monotonic() + 5
        while app.state.batcher.depth() < 1:  # the second one waits in the queue (size 1)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = client.post("/predict", json={"texts": ["three"]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "lmtune_queue_depth 1.0" in client.get("/metrics").text
        assert (
            first.result().status_code == 504 and "no answer within 0.5 s" in first.result().json()["detail"]
        )
        assert second.result().status_code == 504
        gate.set()
        settings.timeout_s = 60  # read per request; the next one must not race a busy CPU
        while app.state.batcher.depth():  # the timed-out second request is skipped, not computed
            assert time.monotonic() < deadline + 5
            time.sleep(0.01)
        r = client.post("/predict", json={"texts": ["four"]})
        assert r.status_code == 200 and r.json()["predictions"][0]["text"] == "four"


def test_requests_are_batched(serve_runs):
    settings = ServeSettings(max_wait_ms=300, max_batch_size=32)
    app = create_app(serve_runs["pos"], {"neg": serve_runs["neg"]}, settings)
    with TestClient(app) as client, ThreadPoolExecutor(12) as pool:
        replies = list(
            pool.map(
                lambda i: client.post("/predict", json={"texts": [TEXTS[i % 4]]}).json(),
                range(12),
            )
        )
        assert [r["predictions"][0]["text"] for r in replies] == [TEXTS[i % 4] for i in range(12)]
        buckets = batch_histogram(client)
        forwards = buckets["+Inf"]
        assert forwards < 12, "12 concurrent single-text requests should share forwards"
        assert buckets["1.0"] < forwards, "at least one forward held more than one request"
        assert "lmtune_predicted_items_total 12.0" in client.get("/metrics").text

    # --no-batching: every request is its own forward.
    settings = ServeSettings(max_wait_ms=300, batching=False)
    with (
        TestClient(create_app(serve_runs["pos"], settings=settings)) as client,
        ThreadPoolExecutor(6) as pool,
    ):
        list(pool.map(lambda i: client.post("/predict", json={"texts": [TEXTS[i % 4]]}), range(6)))
        buckets = batch_histogram(client)
        assert buckets["1.0"] == buckets["+Inf"] == 6


def test_admin_adapters(serve_runs, expected, tmp_path, monkeypatch):
    with TestClient(create_app(serve_runs["pos"])) as client:
        r = client.post("/admin/adapters", json={"name": "neg", "run_dir": str(serve_runs["neg"])})
        assert r.status_code == 403 and "disabled" in r.json()["detail"]
        assert client.delete("/admin/adapters/default").status_code == 403

    app = create_app(serve_runs["pos"], settings=ServeSettings(admin_token="s3cret"))
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as client:
        body = {"name": "neg", "run_dir": str(serve_runs["neg"])}
        assert client.post("/admin/adapters", json=body).status_code == 401
        bad = {"Authorization": "Bearer wrong"}
        assert client.post("/admin/adapters", json=body, headers=bad).status_code == 401
        r = client.post("/admin/adapters", json=body, headers=auth)
        assert r.status_code == 201 and r.json()["shared_base_model"] is True
        rows = client.post("/predict", json={"texts": TEXTS, "adapter": "neg"}).json()["predictions"]
        assert_same(rows, expected["neg"])
        assert client.post("/admin/adapters", json=body, headers=auth).status_code == 409

        for run_dir, message in (
            (tmp_path / "missing", "is not an lmtune run"),
            (serve_runs["pos"] / "model", "is not an lmtune run"),
        ):
            r = client.post("/admin/adapters", json={"name": "x", "run_dir": str(run_dir)}, headers=auth)
            assert r.status_code == 422 and message in r.json()["detail"]
        r = client.post("/admin/adapters", json={"name": "a/b", "run_dir": "x"}, headers=auth)
        assert r.status_code == 422

        # A run with other labels cannot share the server: refused with what differs.
        other = tmp_path / "other-labels"
        shutil.copytree(serve_runs["neg"], other)
        cfg = yaml.safe_load((other / "config.yaml").read_text())
        cfg["data"]["labels"] = ["bad", "good"]
        (other / "config.yaml").write_text(yaml.safe_dump(cfg))
        r = client.post("/admin/adapters", json={"name": "other", "run_dir": str(other)}, headers=auth)
        assert r.status_code == 422
        assert (
            "its labels is ['bad', 'good'], the served run's is ['negative', 'positive']"
            in r.json()["detail"]
        )

        assert client.delete("/admin/adapters/neg", headers=auth).json()["adapters"] == ["default"]
        r = client.post("/predict", json={"texts": TEXTS, "adapter": "neg"})
        assert r.status_code == 404 and "available: default" in r.json()["detail"]
        assert client.delete("/admin/adapters/neg", headers=auth).status_code == 404
        assert client.delete("/admin/adapters/default", headers=auth).status_code == 422
        assert_same(client.post("/predict", json={"texts": TEXTS}).json()["predictions"], expected["pos"])


def test_startup_refuses_bad_adapters(serve_runs, tmp_path):
    other = tmp_path / "other-base"
    shutil.copytree(serve_runs["neg"], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["model"]["name"] = "all-MiniLM-L6-v2"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(LmtuneError, match="its base model is"):
        create_app(serve_runs["pos"], {"other": other})
    with pytest.raises(LmtuneError, match="invalid adapter name"):
        create_app(serve_runs["pos"], {"../x": serve_runs["neg"]})
    with pytest.raises(LmtuneError, match="already loaded"):
        create_app(serve_runs["pos"], {"default": serve_runs["neg"]})
    state = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**state, "status": "running"}))
    with pytest.raises(LmtuneError, match="did not finish"):
        create_app(serve_runs["pos"], {"other": other})


@pytest.mark.slow
def test_two_minilm_lora_adapters_answer_oppositely(tmp_path):
    """Real packaged model: one base MiniLM, two LoRA adapters trained on opposite labels."""
    from tests.serving.conftest import train_run

    pos = train_run("all-MiniLM-L6-v2", tmp_path / "pos", flipped=False, epochs=2, learning_rate=5e-3)
    neg = train_run("all-MiniLM-L6-v2", tmp_path / "neg", flipped=True, epochs=2, learning_rate=5e-3)
    texts = ["the hotel was wonderful", "this book was terrible", "the show was brilliant"]
    with TestClient(create_app(pos, {"flipped": neg})) as client:
        a = client.post("/predict", json={"texts": texts}).json()["predictions"]
        b = client.post("/predict", json={"texts": texts, "adapter": "flipped"}).json()["predictions"]
    assert_same(a, load_run(pos).predict(texts))
    assert_same(b, load_run(neg).predict(texts))
    # Same base model in memory, opposite answers: the flipped adapter ranks the texts reversed.
    pa, pb = ([r["scores"]["positive"] for r in rows] for rows in (a, b))
    assert pa[0] > pa[1] < pa[2] and pb[0] < pb[1] > pb[2], (pa, pb)


def test_base_none_serves_the_base_model_with_the_adapters_off(serve_runs, tiny_llama, tmp_path):
    """`--adapter base=none` on a LoRA SFT run: the shared PeftModel answers with its adapter
    disabled, the default adapter as trained; a classifier's base (a random head) is refused."""
    from tests.conftest import train_sft_run

    records = [{"instruction": "Say hi.", "output": "hi hi"}] * 8
    run = load_run(train_sft_run(tiny_llama, records, tmp_path / "sft", max_steps=4, learning_rate=5e-2))
    prompts = ["Say hi.", "Who are you?"]
    options = {"max_new_tokens": 5}
    with run.model.disable_adapter():
        expected_base = run.predict(prompts, options=options)
    tuned = run.predict(prompts, options=options)
    assert tuned != expected_base  # the adapter changes the answers: the test can tell them apart
    with TestClient(create_app(run.directory, {"base": "none"})) as client:
        info = client.get("/info").json()["adapters"]
        assert info["base"]["method"] == "none (adapters off)" and info["base"]["shared_base_model"] is True
        for name, want in (("base", expected_base), ("default", tuned), ("base", expected_base)):
            body = {"texts": prompts, "adapter": name, "options": options}
            assert client.post("/predict", json=body).json()["predictions"] == want
    with pytest.raises(LmtuneError, match="has no trained head"):
        create_app(serve_runs["pos"], {"base": "none"})


# ---- mixed-adapter batches ----------------------------------------------------------------------
def test_lora_adapters_share_forwards_and_answer_as_their_own_runs(serve_runs, expected):
    """Rows of one forward each run with their own LoRA adapter (peft's adapter_names): the
    answers equal each run's own predictions; a BitFit run is batched apart."""
    from lmtune.serving.app import MIXED_LORA, AdapterPool

    pool = AdapterPool(serve_runs["pos"])
    pool.load("neg", serve_runs["neg"])
    pool.load("bitfit", serve_runs["bitfit"])
    assert pool.group_key("default") == pool.group_key("neg") == MIXED_LORA
    assert pool.group_key("bitfit") == "adapter:bitfit"
    names = ["default", "neg"] * len(TEXTS)
    items = [{"text": t} for t in TEXTS for _ in range(2)]
    rows = pool.run_group(names, items, {}, 8)
    assert_same(rows[0::2], expected["pos"])
    assert_same(rows[1::2], expected["neg"])
    # An adapter removed while its request waited fails that request alone.
    pool.remove("neg")
    rows = pool.run_group(["default", "neg"], items[:2], {}, 8)
    assert_same(rows[:1], expected["pos"][:1])
    assert isinstance(rows[1], LookupError) and "'neg' was removed" in str(rows[1])
    assert AdapterPool(serve_runs["pos"], mixed_batches=False).group_key("default") == "adapter:default"


def test_concurrent_requests_for_two_adapters_share_one_forward(serve_runs, expected, monkeypatch):
    from lmtune.serving.app import AdapterPool

    forwards: list[list[str]] = []
    real = AdapterPool.run_group

    def recording(self, names, items, options, batch_size):
        forwards.append(list(names))
        return real(self, names, items, options, batch_size)

    monkeypatch.setattr(AdapterPool, "run_group", recording)
    for mixed in (True, False):
        forwards.clear()
        settings = ServeSettings(max_wait_ms=400, mixed_adapter_batches=mixed)
        app = create_app(serve_runs["pos"], {"neg": serve_runs["neg"]}, settings)
        with TestClient(app) as client, ThreadPoolExecutor(8) as threads:
            info = client.get("/info").json()
            assert info["adapters"]["neg"]["mixed_batches"] is mixed
            assert info["limits"]["mixed_adapter_batches"] is mixed

            def ask(i: int) -> tuple[str, dict]:
                name = ("default", "neg")[i % 2]
                body = {"texts": [TEXTS[i % 4]], "adapter": name}
                return name, client.post("/predict", json=body).json()["predictions"][0]

            for name, row in threads.map(ask, range(8)):
                want = expected["pos" if name == "default" else "neg"]
                assert_same([row], [r for r in want if r["text"] == row["text"]])
        together = [f for f in forwards if len(set(f)) > 1]
        assert bool(together) is mixed, forwards


@pytest.mark.slow
def test_mixed_generation_batches_equal_each_adapters_own(tiny_llama, tmp_path):
    """Two LoRA SFT adapters and the base (adapters off) in one `generate`: each row's greedy
    answer is the one its adapter gives alone."""
    from tests.conftest import train_sft_run

    from lmtune.serving.app import MIXED_LORA, AdapterPool

    runs = {}
    for word in ("hi", "no"):
        records = [{"instruction": "Say it.", "output": f"{word} {word}"}] * 8
        runs[word] = train_sft_run(tiny_llama, records, tmp_path / word, max_steps=4, learning_rate=5e-2)
    pool = AdapterPool(runs["hi"])
    pool.load("no", runs["no"])
    pool.load("base", "none")
    assert {pool.group_key(n) for n in ("default", "no", "base")} == {MIXED_LORA}
    prompts = [{"text": "Say it."}, {"text": "What is the longest river?"}]
    options = pool.primary.task.predict_options({"max_new_tokens": 5}).model_dump(mode="json")
    alone = {name: pool.run_group([name] * 2, prompts, options, 8) for name in ("default", "no", "base")}
    assert len({json.dumps(rows) for rows in alone.values()}) == 3  # three different answers
    names = ["base", "default", "no", "no", "default", "base"]
    mixed = pool.run_group(
        names, [prompts[0], prompts[0], prompts[0], prompts[1], prompts[1], prompts[1]], options, 8
    )
    for i, (name, row) in enumerate(zip(names, mixed, strict=True)):
        assert row == alone[name][0 if i < 3 else 1], (name, i)


def test_runs_with_different_fitted_state_do_not_share_a_batch_key():
    """Two adapters with different temperatures would be predicted through one task in a mixed batch."""
    from types import SimpleNamespace

    from lmtune.config import RunConfig
    from lmtune.serving.app import _prediction_settings

    cfg = RunConfig.from_dict({"model": "x"})

    def run(state: dict) -> SimpleNamespace:
        return SimpleNamespace(config=cfg, task=SimpleNamespace(fitted_state=lambda: state))

    assert _prediction_settings(run({})) == _prediction_settings(run({}))
    assert _prediction_settings(run({"temperature": 1.5})) != _prediction_settings(run({}))


# ---- merged adapter, inference precision --------------------------------------------------------
def lora_layers_merged(pool) -> list[bool]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m.merged for m in pool.peft_model.modules() if isinstance(m, BaseTunerLayer)]


def test_a_lone_adapter_is_served_merged_and_unmerged_when_another_joins(serve_runs, expected):
    """The served run's LoRA is merged into the base weights while it is the only adapter on the
    PeftModel (same answers); loading a second one unmerges it (the two still answer as their own
    runs, mixed in one forward); removing it merges again. A separate model (BitFit) does not
    touch the PeftModel, so it does not unmerge it."""
    from lmtune.serving.app import AdapterPool

    pool = AdapterPool(serve_runs["pos"])
    items = [{"text": t} for t in TEXTS]
    assert_same(pool.run_group(["default"] * 4, items, {}, 8), expected["pos"])
    assert pool.merged and all(lora_layers_merged(pool))
    pool.load("bitfit", serve_runs["bitfit"])
    assert_same(pool.run_group(["default"] * 4, items, {}, 8), expected["pos"])
    assert pool.merged
    pool.load("neg", serve_runs["neg"])
    assert not pool.merged and not any(lora_layers_merged(pool))
    rows = pool.run_group(["default", "neg"] * 4, [i for i in items for _ in range(2)], {}, 8)
    assert_same(rows[0::2], expected["pos"])
    assert_same(rows[1::2], expected["neg"])
    pool.remove("neg")
    assert pool.merged and all(lora_layers_merged(pool))
    assert_same(pool.run_group(["default"] * 4, items, {}, 8), expected["pos"])

    unmerged = AdapterPool(serve_runs["pos"], merge_single=False)
    assert_same(unmerged.run_group(["default"] * 4, items, {}, 8), expected["pos"])
    assert not unmerged.merged and not any(lora_layers_merged(unmerged))


def test_the_base_model_served_beside_an_adapter_unmerges_it(serve_runs, monkeypatch):
    from lmtune.serving.app import AdapterPool

    pool = AdapterPool(serve_runs["pos"])
    pool.settle_merge()
    assert pool.merged
    monkeypatch.setattr(type(pool.primary.task), "supports", lambda self, capability: True)
    pool.add_base("base")  # a chat run would be allowed: here the capability check is patched
    assert not pool.merged and not any(lora_layers_merged(pool))


def test_serve_precision_setting_runs_forwards_in_bf16_and_is_checked(serve_runs, expected, monkeypatch):
    """`precision: bf16` runs the served forwards under bf16 autocast (the linear layers answer in
    bf16) with the same labels; an unknown value, or bf16 on a CPU without native bf16, is refused."""
    import torch

    from lmtune.serving import app as serving_app
    from lmtune.tasks import base as task_base

    with pytest.raises(LmtuneError, match="precision must be one of"):
        ServeSettings(precision="int4")
    monkeypatch.setattr(task_base, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(LmtuneError, match="no native bf16"):
        serving_app.AdapterPool(serve_runs["pos"], precision="bf16")
    monkeypatch.setattr(task_base, "cpu_has_native_bf16", lambda: True)
    items = [{"text": t} for t in TEXTS]
    for precision, want_dtype in (("bf16", torch.bfloat16), ("run", torch.float32)):
        pool = serving_app.AdapterPool(serve_runs["pos"], precision=precision)
        dtypes: list[torch.dtype] = []
        linear = next(m for m in pool.primary.model.modules() if isinstance(m, torch.nn.Linear))
        handle = linear.register_forward_hook(lambda module, args, out, seen=dtypes: seen.append(out.dtype))
        rows = pool.run_group(["default"] * 4, items, {}, 8)
        handle.remove()
        assert dtypes and set(dtypes) == {want_dtype}, precision
        assert [r["label"] for r in rows] == [r["label"] for r in expected["pos"]]
        for got, want in zip(rows, expected["pos"], strict=True):
            assert got["scores"] == pytest.approx(want["scores"], abs=0.05)


def test_the_loaded_model_is_frozen_out_of_the_garbage_collector(serve_runs):
    """A full collection of the loaded model's objects stalls every request (214 ms on MiniLM):
    the server moves them out of the collector's view when it starts."""
    import gc

    gc.unfreeze()
    with TestClient(create_app(serve_runs["pos"])) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() > 10_000
    gc.unfreeze()
