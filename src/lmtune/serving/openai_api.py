"""OpenAI-compatible routes for runs that generate text (SFT, preference, GRPO runs).

    GET  /v1/models              one entry per served adapter ("default" is the served run)
    POST /v1/chat/completions    {"model", "messages", "max_tokens", "temperature", "top_p",
                                  "stop", "seed", "n", "stream", "stream_options"}
    POST /v1/completions         the same with "prompt" (raw text continued, no chat template)

Any OpenAI client works against `http://HOST:PORT/v1`. The chat template is the run's own (the
one it was trained with). `model` names an adapter. Parameters lmtune does not implement
(logprobs, tools, response_format, penalties, ...) are refused with a 400 in OpenAI's error
shape, `{"error": {"message", "type", "param", "code"}}`, never ignored. Non-streaming requests
go through the micro-batcher with `/predict`'s requests (requests with equal options share a
forward); a streaming request runs on its own in the model thread and sends each decoded piece
as it is generated, as server-sent events in OpenAI's chunk format ending with `data: [DONE]`.
The server's limits apply: body size, characters, `max_tokens` at most `--max-new-tokens`,
queue full -> 503, timeout -> 504.

Written by hand: FastAPI has no OpenAI layer, and vLLM's or llama.cpp's servers would bring a
whole other inference engine.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from lmtune.errors import LmtuneError
from lmtune.serving.batcher import BatcherStoppedError, QueueFullError, RequestTimeoutError

MAX_CHOICES = 8


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


# ---- request bodies -------------------------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    """The parameters both routes take."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)  # an end-user id, for the caller's logs


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str = Field(min_length=1)


# ---- shared steps ---------------------------------------------------------------------------------
def _adapter(served: Any, name: str) -> Any:
    from lmtune.serving.app import UnknownAdapterError

    try:
        return served.pool.get(name)
    except UnknownAdapterError as exc:
        raise OpenAIError(404, str(exc), "model", "model_not_found") from None


def generation_options(served: Any, body: _Sampling, raw: bool) -> Any:
    """The request's GenerationOptions, checked against the server's limits."""
    from lmtune.tasks.causal_lm import GenerationOptions

    limit = served.settings.max_new_tokens
    wanted = body.max_completion_tokens or body.max_tokens or min(limit, 256)
    if wanted > limit:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise OpenAIError(400, f"{param} is {wanted}; this server allows at most {limit}", param)
    if body.stream and body.n > 1:
        raise OpenAIError(400, "n > 1 cannot be streamed by this server; ask for n = 1", "n")
    greedy = body.temperature == 0
    try:
        return GenerationOptions(
            max_new_tokens=wanted,
            greedy=greedy,
            temperature=1.0 if greedy else body.temperature,
            top_p=body.top_p,
            stop=body.stop or [],
            seed=body.seed,
            raw=raw,
        )
    except ValueError as exc:
        message = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        raise OpenAIError(400, f"stop: {message}", "stop") from None


def _check_size(served: Any, item: dict[str, Any]) -> None:
    from lmtune.serving.app import text_chars

    chars = text_chars(item)
    if chars > served.settings.max_text_chars:
        raise OpenAIError(413, f"{chars} characters; at most {served.settings.max_text_chars} per request")


async def _generate(served: Any, name: str, item: dict[str, Any], options: Any, n: int) -> list[dict]:
    """n generations of one item through the micro-batcher (shared with /predict)."""
    values = options.model_dump(mode="json")
    key = json.dumps(values, sort_keys=True)
    try:
        return await served.batcher.submit(name, [item] * n, values, key, served.settings.timeout_s)
    except QueueFullError as exc:
        raise OpenAIError(503, f"server busy: {exc}") from None
    except BatcherStoppedError as exc:
        raise OpenAIError(503, str(exc)) from None
    except RequestTimeoutError as exc:
        raise OpenAIError(504, str(exc), kind="timeout") from None
    except LmtuneError as exc:
        raise OpenAIError(400, str(exc)) from None


def _usage(rows: list[dict[str, Any]]) -> dict[str, int]:
    prompt = rows[0]["prompt_tokens"] if rows else 0
    completion = sum(r["completion_tokens"] for r in rows)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# ---- streaming --------------------------------------------------------------------------------------
class _StopWatch:
    """Holds back the end of the streamed text that could be the start of a stop string, and
    ends the stream at a stop string (which is not sent)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.text, self.sent, self.stopped = stops, "", 0, False

    def feed(self, piece: str, final: bool = False) -> str:
        if self.stopped:
            return ""
        self.text += piece
        cuts = [self.text.find(stop) for stop in self.stops if stop in self.text]
        if cuts:
            self.stopped = True
            safe = min(cuts)
        else:
            hold = 0 if final else max((len(s) - 1 for s in self.stops), default=0)
            safe = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent : safe], max(self.sent, safe)
        return out


def _next_piece(streamer: Any) -> str | None:
    """The next decoded piece, None at the end (a stalled generation ends the stream too)."""
    try:
        return next(streamer)  # the streamer was built with this timeout
    except (StopIteration, queue.Empty):
        return None


async def stream_events(
    served: Any, name: str, item: dict[str, Any], options: Any, chunk: Any, usage_wanted: bool
) -> AsyncIterator[str]:
    """Server-sent events of one streamed generation: `chunk(text, finish_reason)` builds each."""
    from transformers import TextIteratorStreamer

    adapter = _adapter(served, name)
    streamer = TextIteratorStreamer(
        adapter.run.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=served.settings.timeout_s
    )
    job = asyncio.ensure_future(served.batcher.call(served.pool.stream, name, item, options, streamer))
    watch = _StopWatch(options.stop)
    yield f"data: {json.dumps(chunk(None, None))}\n\n"
    while (piece := await asyncio.to_thread(_next_piece, streamer)) is not None:
        text = watch.feed(piece)
        if text:
            yield f"data: {json.dumps(chunk(text, None))}\n\n"
    try:
        result = await asyncio.wait_for(job, served.settings.timeout_s)
    except (LmtuneError, RuntimeError, TimeoutError) as exc:
        error = {"error": {"message": str(exc)[:300], "type": "server_error", "param": None, "code": None}}
        yield f"data: {json.dumps(error)}\n\n"
        return
    rest = watch.feed("", final=True)
    if rest:
        yield f"data: {json.dumps(chunk(rest, None))}\n\n"
    yield f"data: {json.dumps(chunk(None, result['finish_reason']))}\n\n"
    if usage_wanted:
        yield f"data: {json.dumps(chunk(None, None, usage=_usage([result])))}\n\n"
    yield "data: [DONE]\n\n"


# ---- routes ---------------------------------------------------------------------------------------
def _envelope(kind: str, name: str) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": name}


def add_openai_routes(app: FastAPI, served: Any) -> None:
    """The /v1 routes, and OpenAI-shaped errors for everything under /v1."""
    started = int(time.time())

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    previous = app.exception_handlers.get(RequestValidationError)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Any:
        if not request.url.path.startswith("/v1/"):
            return await previous(request, exc)
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if first.get("type") == "extra_forbidden":
            message = f"unsupported parameter {param!r}: lmtune does not implement it"
        return OpenAIError(400, message, param, first.get("type")).response()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The served adapters, as OpenAI model objects."""
        data = [
            {"id": n, "object": "model", "created": started, "owned_by": "lmtune"}
            for n in served.pool.names()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        """A chat completion with the named adapter, in OpenAI's format (streamed if asked)."""
        item = {"messages": [m.model_dump() for m in body.messages]}
        return await _complete(served, body, item, "chat.completion", raw=False)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Any:
        """The prompt continued as raw text (no chat template), in OpenAI's format."""
        return await _complete(served, body, {"text": body.prompt}, "text_completion", raw=True)


async def _complete(served: Any, body: _Sampling, item: dict[str, Any], kind: str, raw: bool) -> Any:
    _adapter(served, body.model)
    _check_size(served, item)
    options = generation_options(served, body, raw)
    chat = kind == "chat.completion"
    if body.stream:
        envelope = _envelope("chat.completion.chunk" if chat else kind, body.model)

        def chunk(text: str | None, finish: str | None, usage: dict | None = None) -> dict[str, Any]:
            if usage is not None:
                return {**envelope, "choices": [], "usage": usage}
            if chat:
                delta = {"role": "assistant", "content": ""} if text is None and finish is None else {}
                delta |= {"content": text} if text is not None else {}
                return {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return {**envelope, "choices": [{"index": 0, "text": text or "", "finish_reason": finish}]}

        usage = bool(body.stream_options and body.stream_options.include_usage)
        events = stream_events(served, body.model, item, options, chunk, usage)
        return StreamingResponse(events, media_type="text/event-stream")
    rows = await _generate(served, body.model, item, options, body.n)
    if chat:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": r["generation"]},
                "finish_reason": r["finish_reason"],
            }
            for i, r in enumerate(rows)
        ]
    else:
        choices = [
            {"index": i, "text": r["generation"], "finish_reason": r["finish_reason"], "logprobs": None}
            for i, r in enumerate(rows)
        ]
    return {**_envelope(kind, body.model), "choices": choices, "usage": _usage(rows)}
