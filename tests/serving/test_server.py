"""A real uvicorn server on 127.0.0.1 with concurrent clients, the Python client, `lmtune serve`."""

from __future__ import annotations

import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lmtune import cli
from lmtune.errors import LmtuneError
from lmtune.run import load_run
from lmtune.serving.app import ServeSettings, create_app
from lmtune.serving.client import Client, ServerError

TEXTS = ["the film was superb", "our meal was dreadful", "this phone was lovely", "the app was boring"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(serve_runs):
    """uvicorn serving the 'pos' run (+ 'neg' adapter) on a free local port, in a thread."""
    import uvicorn

    app = create_app(serve_runs["pos"], {"neg": serve_runs["neg"]}, ServeSettings(max_wait_ms=20))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=30)
    assert not thread.is_alive(), "server did not shut down"


def test_concurrent_clients_against_uvicorn(server, serve_runs):
    url, app = server
    expected = {
        "default": {r["text"]: r for r in load_run(serve_runs["pos"]).predict(TEXTS)},
        "neg": {r["text"]: r for r in load_run(serve_runs["neg"]).predict(TEXTS)},
    }

    def client_session(i: int) -> int:
        checked = 0
        with Client(url, timeout=60) as client:
            for j in range(5):
                adapter = "neg" if (i + j) % 2 else None
                texts = TEXTS[(i + j) % 4 :]
                rows = client.predict(texts, adapter=adapter)
                for row in rows:
                    want = expected[adapter or "default"][row["text"]]
                    assert row["label"] == want["label"]
                    assert row["scores"] == pytest.approx(want["scores"], abs=1e-4)
                checked += len(rows) == len(texts)
        return checked

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(client_session, range(16))) == 16 * 5

    with Client(url) as client:
        assert client.health() == {"status": "ok"}
        assert sorted(client.info()["adapters"]) == ["default", "neg"]
        with pytest.raises(
            ServerError, match="answered 404: unknown adapter 'x'; available: default, neg"
        ) as err:
            client.predict(["hi"], adapter="x")
        assert err.value.status_code == 404
        with pytest.raises(ServerError, match="answered 403"):
            client.add_adapter("again", str(serve_runs["neg"]))
        assert client.predict("one text")[0]["text"] == "one text"
    metrics = app.state.metrics.render().decode()
    assert 'lmtune_requests_total{endpoint="/predict",status="200"} 81.0' in metrics


def test_client_error_when_nothing_listens():
    with (
        Client(f"http://127.0.0.1:{free_port()}", timeout=5) as client,
        pytest.raises(LmtuneError, match="is `lmtune serve` running there"),
    ):
        client.predict(["hi"])


def test_serve_command(serve_runs, monkeypatch, capsys):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.setenv("MY_TOKEN", "t0k3n")
    argv = [
        "lmtune", "serve", str(serve_runs["pos"]), "--adapter", f"neg={serve_runs['neg']}",
        "--max-batch-size", "8", "--no-batching", "--admin-token-env", "MY_TOKEN",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 0
    assert started["host"] == "127.0.0.1" and started["port"] == 8000  # local only by default
    state = started["app"].state
    assert state.pool.names() == ["default", "neg"]
    assert state.settings.admin_token == "t0k3n" and state.settings.max_batch_size == 8
    assert state.batcher.batching is False
    assert "admin: on" in capsys.readouterr().err

    for spec, message in (("neg", "expected NAME=RUN_DIR"), ("a/b=x", "invalid adapter name")):
        monkeypatch.setattr(sys, "argv", ["lmtune", "serve", str(serve_runs["pos"]), "--adapter", spec])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        assert exit_.value.code == 2 and message in capsys.readouterr().err
