"""The OpenAI-compatible routes: two tiny-Llama adapters that answer differently, streaming,
stop strings, usage, OpenAI-shaped errors, and the official `openai` client on a live server."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.conftest import train_sft_run

import lmtune
from lmtune.config import RunConfig
from lmtune.serving.app import ServeSettings, create_app

QUESTION = [{"role": "user", "content": "Say the word."}]


def memorising_run(model: str, out: Path, word: str) -> Path:
    """An SFT run that answers every prompt with `word` twice, then EOS: 40 full fine-tuning steps
    on the tiny Llama (LoRA on a 32-wide model learns the words but not yet where to stop)."""
    questions = ("Say the word.", "The word?", "Word!")
    records = [{"instruction": q, "output": f"{word} {word}"} for q in questions] * 6
    train = {"max_steps": 40, "batch_size": 6, "learning_rate": 1e-2, "warmup_ratio": 0.0}
    return train_sft_run(model, records, out, method="full", **train)


@pytest.fixture(scope="module")
def runs(tiny_llama: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openai-runs")
    return {
        "alpha": memorising_run(tiny_llama, root / "alpha", "alpha"),
        "beta": memorising_run(tiny_llama, root / "beta", "beta"),
    }


@pytest.fixture(scope="module")
def client(runs: dict[str, Path]):
    app = create_app(runs["alpha"], {"beta": runs["beta"]}, ServeSettings(max_new_tokens=16))
    with TestClient(app) as test_client:
        yield test_client


def chat(client: TestClient, **body) -> dict:
    response = client.post("/v1/chat/completions", json={"model": "default", "messages": QUESTION, **body})
    assert response.status_code == 200, response.text
    return response.json()


def streamed_chat(client: TestClient, **body):
    """A greedy streamed chat completion of at most 6 tokens (200 checked)."""
    request = {"model": "default", "messages": QUESTION, "temperature": 0, "max_tokens": 6, "stream": True}
    response = client.post("/v1/chat/completions", json={**request, **body})
    assert response.status_code == 200, response.text
    return response


def streamed_text(chunks: list) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def sse(response) -> list:
    events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_models_lists_every_adapter(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["beta", "default"]
    assert all(m["object"] == "model" and m["owned_by"] == "lmtune" for m in body["data"])


def test_two_adapters_on_one_base_answer_differently(client, runs):
    alpha = chat(client, temperature=0, max_tokens=6)
    beta = chat(client, model="beta", temperature=0, max_tokens=6)
    assert alpha["choices"][0]["message"] == {"role": "assistant", "content": "alpha alpha"}
    assert beta["choices"][0]["message"]["content"] == "beta beta"
    assert (
        alpha["object"] == "chat.completion"
        and alpha["model"] == "default"
        and alpha["id"].startswith("chatcmpl-")
    )
    # The same answer and token counts as the run's own predict (greedy).
    expected = lmtune.load_run(runs["alpha"]).predict(
        [{"messages": QUESTION}], options={"max_new_tokens": 6}
    )[0]
    assert alpha["choices"][0]["finish_reason"] == expected["finish_reason"] == "stop"
    usage = alpha["usage"]
    assert (
        usage["prompt_tokens"] == expected["prompt_tokens"]
        and usage["completion_tokens"] == expected["completion_tokens"]
    )
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_sends_the_same_text_in_openai_chunks(client):
    whole = chat(client, temperature=0, max_tokens=6)["choices"][0]["message"]["content"]
    response = streamed_chat(client, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse(response)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert streamed_text(chunks).strip() == whole
    finish = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finish == ["stop"] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_stop_strings_end_the_answer_without_the_stop(client):
    cut = chat(client, temperature=0, max_tokens=6, stop=["ha a"])["choices"][0]
    assert cut["message"]["content"] == "alp" and cut["finish_reason"] == "stop"
    text = streamed_text(sse(streamed_chat(client, stop="ha a")))
    assert text.strip() == "alp"


def test_sampling_with_a_seed_repeats_and_n_gives_choices(client):
    first = chat(client, temperature=1.5, seed=7, max_tokens=5)["choices"][0]["message"]["content"]
    again = chat(client, temperature=1.5, seed=7, max_tokens=5)["choices"][0]["message"]["content"]
    assert first == again
    several = chat(client, temperature=0, n=3, max_tokens=4)
    assert [c["index"] for c in several["choices"]] == [0, 1, 2]


def test_completions_continue_raw_text(client):
    response = client.post(
        "/v1/completions", json={"model": "beta", "prompt": "Once upon", "max_tokens": 3, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion" and body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope"}, 404, "model"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"max_tokens": 17}, 400, "max_tokens"),
        ({"stream": "yes"}, 400, "stream"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
        ({"messages": []}, 400, "messages"),
        ({"n": 2, "stream": True}, 400, "n"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"stop": [""]}, 400, "stop"),
    ],
)
def test_bad_requests_get_openais_error_object(client, body, status, param):
    response = client.post("/v1/chat/completions", json={"model": "default", "messages": QUESTION, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]


def test_routes_exist_only_for_runs_that_generate(tiny_bert, sentiment_files, tmp_path):
    from tests.conftest import fast_config

    run = lmtune.train(
        RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, tmp_path / "cls", train={"epochs": 1}))
    )
    with TestClient(create_app(run.directory)) as test_client:
        assert test_client.get("/v1/models").status_code == 404
        assert test_client.post("/predict", json={"texts": ["fine"]}).status_code == 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_official_openai_client_on_a_live_server(runs):
    openai = pytest.importorskip("openai")
    import uvicorn

    port = _free_port()
    app = create_app(runs["alpha"], {"beta": runs["beta"]}, ServeSettings(max_new_tokens=16))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert sorted(m.id for m in client.models.list()) == ["beta", "default"]
        reply = client.chat.completions.create(model="beta", messages=QUESTION, temperature=0, max_tokens=6)
        assert reply.choices[0].message.content == "beta beta" and reply.usage.completion_tokens > 0
        stream = client.chat.completions.create(
            model="default", messages=QUESTION, temperature=0, max_tokens=6, stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        assert "".join(pieces).strip() == "alpha alpha"
        with pytest.raises(openai.NotFoundError, match="unknown adapter"):
            client.chat.completions.create(model="gamma", messages=QUESTION, max_tokens=2)
        with pytest.raises(openai.BadRequestError, match="frequency_penalty"):
            client.chat.completions.create(
                model="default", messages=QUESTION, max_tokens=2, frequency_penalty=0.5
            )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
