"""A small Python client for `lmtune serve` (httpx; imports nothing heavy).

from lmtune.serving.client import Client

with Client("http://127.0.0.1:8000") as client:
    client.predict(["what a wonderful film"])                 # [{"text", "label", "scores"}]
    client.predict(["what a wonderful film"], adapter="reviews-v2")
"""

from __future__ import annotations

from typing import Any

import httpx

from lmtune.errors import LmtuneError


class ServerError(LmtuneError):
    """The server answered with an error status; `status_code` and `detail` say which."""

    def __init__(self, status_code: int, detail: str, url: str) -> None:
        self.status_code = status_code
        self.detail = detail
        hints = {
            413: "send fewer or shorter texts per request (see /info limits)",
            503: "the server is busy or stopping; retry later",
            504: "the server did not answer in time; retry, or send fewer texts",
        }
        super().__init__(f"{url} answered {status_code}: {detail}", hint=hints.get(status_code))


class Client:
    """Client for one server; thread-safe, keeps connections open (close it, or use `with`)."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", timeout: float = 60.0, token: str | None = None
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LmtuneError(
                f"cannot reach {self._http.base_url}{path}: {exc}", hint="is `lmtune serve` running there?"
            ) from None
        if response.status_code >= 300:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServerError(response.status_code, str(detail), str(response.url))
        return response.json()

    def predict(
        self,
        texts: str | list[str | dict[str, Any]],
        adapter: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Task-shaped predictions, one per input (strings or records such as {"text", "text_pair"})."""
        body: dict[str, Any] = {"texts": [texts] if isinstance(texts, str) else list(texts)}
        if adapter is not None:
            body["adapter"] = adapter
        if options:
            body["options"] = options
        return self._request("POST", "/predict", json=body)["predictions"]

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/info")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def add_adapter(self, name: str, run_dir: str) -> dict[str, Any]:
        """Load a run on the server as adapter `name` (needs the admin token)."""
        return self._request("POST", "/admin/adapters", json={"name": name, "run_dir": run_dir})

    def remove_adapter(self, name: str) -> dict[str, Any]:
        return self._request("DELETE", f"/admin/adapters/{name}")
