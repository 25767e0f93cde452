"""Serving: a FastAPI app with micro-batching and several adapters on one base model.

`lmtune serve RUN_DIR` runs it under uvicorn; `create_app` builds it in Python;
`lmtune.serving.client.Client` talks to it. Needs the `serve` extra (fastapi, uvicorn, httpx,
prometheus-client).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client", "ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `import lmtune.serving.client` must not import FastAPI, torch or transformers.
    if name in ("create_app", "ServeSettings"):
        from lmtune.serving import app

        return getattr(app, name)
    if name == "Client":
        from lmtune.serving.client import Client

        return Client
    raise AttributeError(name)
