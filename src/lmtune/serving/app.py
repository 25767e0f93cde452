"""The HTTP server: a FastAPI app that serves one run (and more adapters on its base model).

    POST /predict            {"texts": [...], "adapter"?: name, "options"?: {...}}
    POST /explain            the same body (+ "target", "method", "n_steps"): token attributions
                             (`serving/explain_api.py`)
    GET  /health, /info      liveness; model, task, labels, adapters, limits
    GET  /metrics            Prometheus text (requests by status, latency, batch sizes, queue)
    POST /admin/adapters     {"name", "run_dir"}: load an adapter at runtime (bearer token)
    DELETE /admin/adapters/{name}
    GET  /docs               OpenAPI (FastAPI)
    /v1/models, /v1/chat/completions, /v1/completions   OpenAI-compatible, for runs that
                             generate text (`serving/openai_api.py`)

Predictions go through `Run.predict`, so the server answers exactly what `lmtune predict`
answers and never special-cases a task: request items are strings or objects that the run's
task checks (`task.check_input`), options are the task's prediction options.

Adapters. The served run is adapter `default`. More runs fine-tuned from the same base model
for the same task and labels can be served beside it:
- peft runs of the same peft type (LoRA, DoRA, IA3, ... ) are loaded onto the *same* PeftModel
  with `load_adapter`, and the model thread switches with `set_adapter` before a forward:
  each extra adapter costs only its own weights (a LoRA adapter: a few MB);
- other runs (full, freeze, bitfit, gradual-unfreeze, bottleneck adapters, or a peft type the
  loaded PeftModel cannot hold) are loaded as separate models: each costs a whole model's
  memory (MiniLM: ~90 MB in fp32). `/info` says which adapters share the base model.
Requests name adapters, never paths; only the admin endpoint (off unless a token is set) and
the command line take run directories.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from lmtune.errors import LmtuneError
from lmtune.serving.batcher import (
    BatcherStoppedError,
    MicroBatcher,
    QueueFullError,
    RequestTimeoutError,
)

log = logging.getLogger("lmtune.serving")

ADAPTER_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_ADAPTER_NAME_RE = re.compile(ADAPTER_NAME)
DEFAULT_ADAPTER = "default"  # peft's name for the adapter PeftModel.from_pretrained loads


SERVE_PRECISIONS = ("run", "fp32", "bf16")


# ---- settings ---------------------------------------------------------------------------------
@dataclass
class ServeSettings:
    """Limits and batching knobs; the CLI flags of `lmtune serve` map one to one."""

    max_batch_size: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 256
    timeout_s: float = 30.0
    max_request_items: int = 64
    max_text_chars: int = 20_000
    max_new_tokens: int = 512  # the most tokens one OpenAI-style request may ask to generate
    batching: bool = True
    # Requests for different LoRA adapters on the served base share forwards (peft's adapter_names).
    mixed_adapter_batches: bool = True
    # Merge the served adapter into the base weights while it is the only one served (unmerged
    # again when another adapter or the base joins): one matrix product per layer, not three.
    merge_single_adapter: bool = True
    # "run": the run's own precision (answers equal `lmtune predict`'s); "fp32" or "bf16" replace it.
    precision: str = "run"
    admin_token: str | None = None
    # Raw body limit, checked on Content-Length before JSON parsing. Default: what the largest
    # valid request can take (every character escaped as \\uXXXX, plus per-item JSON overhead).
    max_body_bytes: int | None = None

    def __post_init__(self) -> None:
        for key in ("max_batch_size", "max_queue", "max_request_items", "max_text_chars", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise LmtuneError(f"serve setting {key} must be >= 1, got {getattr(self, key)}")
        if self.precision not in SERVE_PRECISIONS:
            raise LmtuneError(
                f"serve setting precision must be one of {', '.join(SERVE_PRECISIONS)}, "
                f"got {self.precision!r}"
            )
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise LmtuneError("serve settings: max_wait_ms must be >= 0 and timeout_s > 0")
        if self.max_body_bytes is None:
            self.max_body_bytes = 6 * self.max_text_chars + 512 * self.max_request_items + 16_384

    def limits(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "batching": self.batching and self.max_batch_size > 1,
            "mixed_adapter_batches": self.mixed_adapter_batches,
            "merge_single_adapter": self.merge_single_adapter,
            "precision": self.precision,
            "max_queue": self.max_queue,
            "timeout_s": self.timeout_s,
            "max_request_items": self.max_request_items,
            "max_text_chars": self.max_text_chars,
            "max_new_tokens": self.max_new_tokens,
            "max_body_bytes": self.max_body_bytes,
        }


# ---- adapters -----------------------------------------------------------------------------------
class UnknownAdapterError(LookupError):
    pass


@dataclass
class Adapter:
    name: str
    run: Any  # lmtune.run.Run; its model is the shared PeftModel when `shared`
    shared: bool
    info: dict[str, Any] = field(default_factory=dict)
    adapters_off: bool = False  # the base model: the shared PeftModel with its adapters disabled
    # What its predictions depend on besides the weights, derived once: compared per request.
    prediction_settings: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.prediction_settings = _prediction_settings(self.run)


BASE_MODEL_RUN = "none"  # `--adapter base=none`: serve the base model itself under that name
PEFT_NO_ADAPTER = "__base__"  # peft's adapter name for "adapters off" in a mixed batch
MIXED_LORA = "mixed-lora"  # the batch key of adapters that share forwards


def check_adapter_name(name: str) -> str:
    if not isinstance(name, str) or not _ADAPTER_NAME_RE.match(name):
        raise LmtuneError(f"invalid adapter name {name!r}", hint="use 1-64 letters, digits, '_', '.' or '-'")
    return name


def _saves_peft_adapter(cfg: Any) -> bool:
    """Is the run's model a peft adapter on its base model (its method says so)?"""
    from lmtune.methods import get_method_class

    return get_method_class(cfg.method.name).supports("peft-adapter")


class AdapterPool:
    """The served runs by name; every method that touches the model runs in the model thread."""

    def __init__(
        self,
        run_dir: str | Path,
        device: str | None = None,
        mixed_batches: bool = True,
        merge_single: bool = True,
        precision: str = "run",
    ) -> None:
        from lmtune.run import Run

        self.device = device
        self.mixed_batches = mixed_batches
        self.primary = Run.load(run_dir, device)
        self.precision = _checked_precision(precision, self.primary)
        self.merged = False
        # A peft run's model is the PeftModel that adapters of the same peft type are loaded onto.
        self.peft_model = self.primary.model if _saves_peft_adapter(self.primary.config) else None
        self.adapters: dict[str, Adapter] = {
            DEFAULT_ADAPTER: Adapter(
                DEFAULT_ADAPTER,
                self.primary,
                self.peft_model is not None,
                self._describe(self.primary.config),
            )
        }
        self.mergeable = merge_single and self._can_merge()

    def _can_merge(self) -> bool:
        """A peft tuner whose layers merge exactly enough: not prompt learning (no weights to merge
        into), not a quantised base (peft would requantise the merged weight, losing precision)."""
        from peft.tuners.tuners_utils import BaseTuner

        if self.peft_model is None or not isinstance(self.peft_model.base_model, BaseTuner):
            return False
        base = self.peft_model.get_base_model()
        return getattr(base, "hf_quantizer", None) is None and not getattr(base, "is_loaded_in_4bit", False)

    def settle_merge(self) -> None:
        """Merged while the served run's adapter is the only one (MiniLM LoRA, 16 reviews: 89 ->
        67 ms a forward); unmerged before another adapter or the base model is served, since peft
        switches and mixes adapters only on unmerged layers. Model thread only."""
        on_peft_model = [adapter for adapter in self.adapters.values() if adapter.shared]
        want = self.mergeable and [adapter.name for adapter in on_peft_model] == [DEFAULT_ADAPTER]
        if not want:
            self._unmerge()
        elif not self.merged:
            try:
                self.peft_model.base_model.merge_adapter()
            except (NotImplementedError, ValueError, RuntimeError) as exc:
                self.peft_model.base_model.unmerge_adapter()  # the layers merged before the refusal
                self.mergeable = False
                log.info("serving the adapter unmerged: %s", exc)
                return
            self.merged = True

    def _unmerge(self) -> None:
        if self.merged:
            self.peft_model.base_model.unmerge_adapter()
            self.merged = False

    @staticmethod
    def _describe(cfg: Any) -> dict[str, Any]:
        return {"method": cfg.method.name, "base_model": cfg.model.name}

    def names(self) -> list[str]:
        return sorted(self.adapters)

    def get(self, name: str) -> Adapter:
        adapter = self.adapters.get(name)
        if adapter is None:
            raise UnknownAdapterError(f"unknown adapter '{name}'; available: {', '.join(self.names())}")
        return adapter

    def check(self, name: str, run_dir: str | Path) -> Any:
        """Validate a run as an extra adapter (name, finished run, same base model/task/labels)."""
        check_adapter_name(name)
        if name in self.adapters:
            raise LmtuneError(
                f"adapter '{name}' is already loaded", hint="pick another name or remove it first"
            )
        from lmtune.run import first_mismatch, read_finished_config

        cfg = read_finished_config(Path(run_dir))
        mismatch = first_mismatch(self.primary.config, cfg, ("base model", "task", "labels"))
        if mismatch is not None:
            what, ours, theirs = mismatch
            raise LmtuneError(
                f"run {run_dir} cannot be served beside {self.primary.directory}: its {what} is "
                f"{theirs!r}, the served run's is {ours!r}",
                hint="serve runs fine-tuned from the same base model for the same task and labels "
                "(start another server for a different model)",
            )
        return cfg

    def _shares_base(self, run_dir: Path, cfg: Any) -> bool:
        """Can this run be loaded onto the served PeftModel (same peft type)?"""
        if self.peft_model is None or not _saves_peft_adapter(cfg):
            return False
        config_file = run_dir / "model" / "adapter_config.json"
        if not config_file.is_file():
            return False
        peft_type = json.loads(config_file.read_text(encoding="utf-8")).get("peft_type")
        return peft_type == str(self.peft_model.peft_config[DEFAULT_ADAPTER].peft_type.value)

    def add_base(self, name: str) -> Adapter:
        """Serve the base model as `name`: the served PeftModel with every adapter switched off."""
        check_adapter_name(name)
        if name in self.adapters:
            raise LmtuneError(f"adapter '{name}' is already loaded", hint="pick another name")
        if not self.primary.task.supports("chat-generation"):
            raise LmtuneError(
                f"--adapter {name}={BASE_MODEL_RUN}: a {self.primary.config.task.type} run's base model "
                "has no trained head (it would answer at random); only runs that generate text serve "
                "their base model",
                hint="serve an SFT, preference or GRPO run",
            )
        if self.peft_model is None:
            raise LmtuneError(
                f"--adapter {name}={BASE_MODEL_RUN} serves the base model with the adapters switched off, "
                f"but {self.primary.directory} ({self.primary.config.method.name}) is not a peft adapter run",
                hint="serve a LoRA-family run, or the base model's own run",
            )
        info = {"method": "none (adapters off)", "base_model": self.primary.config.model.name}
        adapter = Adapter(name, self.primary, True, info, adapters_off=True)
        self.adapters[name] = adapter
        self.settle_merge()
        return adapter

    def load(self, name: str, run_dir: str | Path) -> Adapter:
        """Load a run as adapter `name`; call in the model thread (never during a forward)."""
        from lmtune.run import Run, saved_task_state
        from lmtune.tasks import get_task_class

        if str(run_dir) == BASE_MODEL_RUN:
            return self.add_base(name)
        run_dir = Path(run_dir)
        cfg = self.check(name, run_dir)
        if self._shares_base(run_dir, cfg):
            self._unmerge()  # peft loads and switches adapters on unmerged layers
            try:
                self.peft_model.load_adapter(str(run_dir / "model"), adapter_name=name)
            except (ValueError, RuntimeError, KeyError) as exc:
                self.settle_merge()
                first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
                raise LmtuneError(f"cannot load the adapter of {run_dir}: {first}") from None
            self.peft_model.eval()  # freshly injected modules start in training mode (dropout)
            metrics_file = run_dir / "metrics.json"
            metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.exists() else {}
            task = get_task_class(cfg.task.type)(cfg)
            task.restore_state(saved_task_state(run_dir / "model"))  # e.g. its fitted temperature
            run = Run(run_dir, cfg, task, self.peft_model, self.primary.tokenizer, metrics)
            adapter = Adapter(name, run, True, self._describe(cfg))
        else:
            log.info("adapter '%s' (%s) is loaded as a separate model", name, cfg.method.name)
            adapter = Adapter(name, Run.load(run_dir, self.device), False, self._describe(cfg))
        self.adapters[name] = adapter
        return adapter

    def remove(self, name: str) -> None:
        """Unload adapter `name`; call in the model thread."""
        adapter = self.get(name)
        if name == DEFAULT_ADAPTER:
            raise LmtuneError("the served run ('default') cannot be removed", hint="stop the server instead")
        del self.adapters[name]
        if adapter.shared and not adapter.adapters_off:
            if self.peft_model.active_adapter == name:
                self.peft_model.set_adapter(DEFAULT_ADAPTER, inference_mode=True)
            self.peft_model.delete_adapter(name)
        self.settle_merge()

    def describe(self, name: str) -> dict[str, Any]:
        """What /info shows of an adapter: its run, and whether it shares the base and forwards."""
        adapter = self.get(name)
        mixed = self.group_key(name) == MIXED_LORA
        return {**adapter.info, "shared_base_model": adapter.shared, "mixed_batches": mixed}

    # ---- forwards ---------------------------------------------------------------------------
    def group_key(self, name: str) -> str:
        """Requests whose adapters have equal keys share forwards: the LoRA adapters on the served
        base (and the base itself) are mixed in one batch by peft's `adapter_names`; any other
        adapter is batched on its own."""
        adapter = self.adapters.get(name)
        return MIXED_LORA if adapter is not None and self._mixes(adapter) else f"adapter:{name}"

    def _mixes(self, adapter: Adapter) -> bool:
        if not (self.mixed_batches and adapter.shared and adapter.run.task.supports("mixed-adapter-batches")):
            return False
        # peft mixes plain LoRA only (not DoRA); the base needs LoRA layers to switch off.
        config = self.peft_model.peft_config.get(DEFAULT_ADAPTER if adapter.adapters_off else adapter.name)
        if config is None or str(config.peft_type.value) != "LORA" or getattr(config, "use_dora", False):
            return False
        # Rows of one batch go through one task: it must predict as each adapter's own task would.
        return adapter.prediction_settings == self.adapters[DEFAULT_ADAPTER].prediction_settings

    def run_group(
        self, names: list[str], items: list[dict[str, Any]], options: dict[str, Any], batch_size: int
    ) -> list[Any]:
        """One forward for items of one batch key and options (`names`: each item's adapter); an
        adapter removed while its request waited fails that request only. Model thread only."""
        from lmtune.tasks.base import inference_precision, rows_with_adapters

        found = {name: self.adapters.get(name) for name in set(names)}
        live = [i for i, name in enumerate(names) if found[name] is not None]
        results: list[Any] = [
            UnknownAdapterError(f"adapter '{name}' was removed; available: {', '.join(self.names())}")
            for name in names
        ]
        if not live:
            return results
        adapters = [found[names[i]] for i in live]
        rows = [items[i] for i in live]
        first = adapters[0]
        self.settle_merge()
        if len({a.name for a in adapters}) == 1:
            with self._selected(first), inference_precision(self.precision):
                predictions = first.run.predict(rows, batch_size, options)
        else:  # a mixed batch (group_key put them together): one forward, an adapter per row
            row_names = [PEFT_NO_ADAPTER if a.adapters_off else a.name for a in adapters]
            with rows_with_adapters(row_names), inference_precision(self.precision):
                predictions = first.run.predict(rows, batch_size, options)
        for i, prediction in zip(live, predictions, strict=True):
            results[i] = prediction
        return results

    def stream(self, name: str, item: dict[str, Any], options: Any, streamer: Any) -> dict[str, Any]:
        """One generation that feeds `streamer` as it goes; call in the model thread."""
        from lmtune.tasks.base import inference_precision

        adapter = self.get(name)
        run = adapter.run
        self.settle_merge()
        with self._selected(adapter), inference_precision(self.precision):
            return run.task.generate_streaming(run.model, run.tokenizer, item, options, streamer)

    def _selected(self, adapter: Adapter) -> Any:
        """The shared PeftModel set to `adapter` (or with its adapters off) for one forward."""
        if adapter.adapters_off:
            return self.peft_model.disable_adapter()
        if adapter.shared and self.peft_model.active_adapter != adapter.name:
            self.peft_model.set_adapter(adapter.name, inference_mode=True)
        return contextlib.nullcontext()


def _checked_precision(precision: str, run: Any) -> str | None:
    """The inference precision a server's `precision` setting means on this run's device (None:
    the run's own), or a clear error where the hardware has no bf16 matrix products."""
    from lmtune.tasks.base import cpu_has_native_bf16, model_device

    if precision == "run":
        return None
    device = model_device(run.model)
    if precision == "bf16":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
        if not native:
            raise LmtuneError(
                f"--precision bf16: this {device.type.upper()} has no native bf16 matrix products "
                "(CPUs need AMX or AVX512-BF16); emulated bf16 is slower than fp32",
                hint="serve with --precision run or fp32",
            )
    return precision


def _prediction_settings(run: Any) -> str:
    """What a run's predictions depend on besides its weights: its task (options and what was
    fitted after training, e.g. a temperature), truncation and precision."""
    cfg = run.config
    settings = [cfg.task.model_dump(mode="json"), cfg.data.max_length, cfg.train.precision]
    return json.dumps([*settings, run.task.fitted_state()], sort_keys=True)


# ---- metrics ------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics in a registry of this app's own (several apps can share a process)."""

    def __init__(self, queue_depth: Callable[[], float]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lmtune_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lmtune_request_latency_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lmtune_batch_size",
            "Items per model forward",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.items = Counter("lmtune_predicted_items", "Items predicted", registry=self.registry)
        depth = Gauge("lmtune_queue_depth", "Requests waiting for the model", registry=self.registry)
        depth.set_function(queue_depth)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.items.inc(size)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _GuardMiddleware:
    """Body-size limit before parsing, and request metrics, as plain ASGI middleware.

    Starlette has no body-size limit, and a `BaseHTTPMiddleware` would read the body first.
    Content-Length over the limit is refused at once; a chunked body is read up to the limit.
    """

    def __init__(
        self, app: Any, max_body_bytes: int, metrics: Metrics, paths: Callable[[], set[str]]
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.paths = paths  # route paths: the `endpoint` label of requests refused before routing

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        too_large = JSONResponse(
            {"detail": f"request body larger than {self.max_body_bytes} bytes"}, status_code=413
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await too_large(scope, receive, send_status)
                return
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                # A chunked body: read it here (it is small by then) and refuse it at the limit;
                # raising inside FastAPI's body parsing would turn into a 400.
                chunks, size, more = [], 0, True
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    more = message.get("more_body", False)
                    if size > self.max_body_bytes:
                        await too_large(scope, receive, send_status)
                        return
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

                async def replay_receive() -> dict:
                    return replay.pop() if replay else await receive()

                await self.app(scope, replay_receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            # Label by route template, never by raw path: unknown paths must not grow the metrics.
            endpoint = getattr(scope.get("route"), "path", None)
            if endpoint is None:
                endpoint = scope["path"] if scope["path"] in self.paths() else "other"
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


# ---- request and response bodies ---------------------------------------------------------------
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str | dict[str, Any]] = Field(
        min_length=1,
        description='Inputs: strings, or objects the task reads (e.g. {"text", "text_pair"}).',
        examples=[["what a wonderful film"]],
    )
    adapter: str | None = Field(
        default=None, pattern=ADAPTER_NAME, description="Adapter name (see /info); default: the served run."
    )
    options: dict[str, Any] | None = Field(default=None, description="The task's prediction options.")


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]]
    adapter: str
    model: str


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=ADAPTER_NAME)
    run_dir: str = Field(min_length=1, description="A finished lmtune run directory on the server.")


def text_chars(value: Any) -> int:
    """The characters of every string in a request item (nested dicts and lists included)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(text_chars(v) for v in value)
    return 0


# ---- the app ------------------------------------------------------------------------------------
@dataclass
class Served:
    """What the routes of one app share: the adapters, the batching worker, the limits, the metrics."""

    pool: AdapterPool
    batcher: MicroBatcher
    settings: ServeSettings
    metrics: Metrics


def create_app(
    run_dir: str | Path,
    adapters: dict[str, str | Path] | None = None,
    settings: ServeSettings | None = None,
    device: str | None = None,
) -> FastAPI:
    """Load the run (and extra adapters) and build the app; loading errors raise LmtuneError."""
    settings = settings or ServeSettings()
    pool = _load_pool(run_dir, adapters or {}, device, settings)
    batcher = _make_batcher(pool, settings)
    served = Served(pool, batcher, settings, Metrics(batcher.depth))
    batcher.on_batch = served.metrics.observe_batch
    app = _make_app(served)
    _add_predict_route(app, served)
    from lmtune.serving.explain_api import add_explain_route

    add_explain_route(app, served)
    if pool.primary.task.supports("chat-generation"):
        from lmtune.serving.openai_api import add_openai_routes

        add_openai_routes(app, served)
    _add_status_routes(app, served)
    _add_admin_routes(app, served)
    return app


def _load_pool(
    run_dir: str | Path, adapters: dict[str, str | Path], device: str | None, settings: ServeSettings
) -> AdapterPool:
    pool = AdapterPool(
        run_dir, device, settings.mixed_adapter_batches, settings.merge_single_adapter, settings.precision
    )
    for name, path in adapters.items():
        pool.load(name, path)
    pool.settle_merge()
    return pool


def _make_batcher(pool: AdapterPool, settings: ServeSettings) -> MicroBatcher:
    return MicroBatcher(
        pool.run_group,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        batching=settings.batching,
        forward_batch_size=max(settings.max_batch_size, pool.primary.batch_size),
        group_key=pool.group_key,
    )


def freeze_loaded_objects() -> None:
    """Move what loading created (the model's modules, tokenizer, libraries: ~415k objects for
    MiniLM) out of the garbage collector's view. A full collection of them took 214 ms with the
    GIL held, which stalled every request in flight: the p99 at 16 clients was such a stall."""
    gc.collect()
    gc.freeze()


def _make_app(served: Served) -> FastAPI:
    """The FastAPI app without routes: the batcher's lifespan, `app.state`, the guard middleware."""
    cfg = served.pool.primary.config

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        freeze_loaded_objects()
        await served.batcher.start()
        try:
            yield
        finally:
            await served.batcher.stop()

    app = FastAPI(
        title="lmtune server",
        description=f"Predictions of an lmtune run: task `{cfg.task.type}`, base model `{cfg.model.name}`.",
        lifespan=lifespan,
    )
    app.state.pool = served.pool
    app.state.batcher = served.batcher
    app.state.settings = served.settings
    app.state.metrics = served.metrics
    app.add_middleware(
        _GuardMiddleware,
        max_body_bytes=served.settings.max_body_bytes,
        metrics=served.metrics,
        paths=lambda: {getattr(route, "path", "") for route in app.routes},
    )
    return app


# ---- routes -------------------------------------------------------------------------------------
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown adapter"},
    413: {"description": "Too many items or characters"},
    422: {"description": "Invalid request, input or option"},
    503: {"description": "Queue full (see Retry-After)"},
    504: {"description": "Timed out"},
}


def _checked_request(
    served: Served, body: PredictRequest
) -> tuple[str, Adapter, list[dict[str, Any]], dict[str, Any]]:
    """(adapter name, adapter, items, options) of a request, or the HTTPException that refuses it."""
    settings = served.settings
    name = body.adapter or DEFAULT_ADAPTER
    try:
        adapter = served.pool.get(name)
    except UnknownAdapterError as exc:
        raise HTTPException(404, str(exc)) from None
    if len(body.texts) > settings.max_request_items:
        raise HTTPException(413, f"{len(body.texts)} items; at most {settings.max_request_items} per request")
    chars = text_chars(body.texts)
    if chars > settings.max_text_chars:
        raise HTTPException(413, f"{chars} characters; at most {settings.max_text_chars} per request")
    items = [t if isinstance(t, dict) else {"text": t} for t in body.texts]
    try:
        for i, item in enumerate(items):
            adapter.run.task.check_input(i, item)
        options = adapter.run.task.predict_options(body.options).model_dump(mode="json")
    except LmtuneError as exc:
        raise HTTPException(422, str(exc)) from None
    return name, adapter, items, options


def _add_predict_route(app: FastAPI, served: Served) -> None:
    @app.post("/predict", response_model=PredictResponse, responses=PREDICT_RESPONSES)
    async def predict(body: PredictRequest) -> dict[str, Any]:
        """Predict for a list of inputs with the chosen adapter; output rows are task-shaped."""
        name, adapter, items, options = _checked_request(served, body)
        key = json.dumps(options, sort_keys=True)
        try:
            predictions = await served.batcher.submit(name, items, options, key, served.settings.timeout_s)
        except QueueFullError as exc:
            raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": "1"}) from None
        except BatcherStoppedError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        except RequestTimeoutError as exc:
            raise HTTPException(504, str(exc)) from None
        except UnknownAdapterError as exc:
            raise HTTPException(404, str(exc)) from None
        except LmtuneError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"predictions": predictions, "adapter": name, "model": adapter.run.config.model.name}


def _add_status_routes(app: FastAPI, served: Served) -> None:
    """/health, /info and /metrics."""
    pool, cfg = served.pool, served.pool.primary.config

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while the batching worker runs, 503 otherwise."""
        ok = served.batcher.running
        return JSONResponse({"status": "ok" if ok else "down"}, status_code=200 if ok else 503)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """The served model, task, labels, adapters and request limits."""
        return {
            "model": cfg.model.name,
            "task": cfg.task.type,
            "labels": cfg.data.labels,
            "predict_options": sorted(pool.primary.task.PredictOptions.model_fields),
            "default_adapter": DEFAULT_ADAPTER,
            "adapters": {name: pool.describe(name) for name in pool.names()},
            "limits": served.settings.limits(),
        }

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(served.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _admin_guard(settings: ServeSettings) -> Callable[..., Any]:
    """The dependency of the admin routes: 403 without a configured token, 401 for a wrong one."""
    bearer = HTTPBearer(auto_error=False)

    async def require_admin(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> None:
        if not settings.admin_token:
            raise HTTPException(
                403, "admin endpoints are disabled: start the server with a token in --admin-token-env"
            )
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), settings.admin_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return require_admin


def _add_admin_routes(app: FastAPI, served: Served) -> None:
    """POST /admin/adapters and DELETE /admin/adapters/{name}; both run in the model thread."""
    pool, batcher = served.pool, served.batcher
    admin = [Depends(_admin_guard(served.settings))]

    @app.post("/admin/adapters", dependencies=admin, status_code=201)
    async def add_adapter(body: AdapterRequest) -> dict[str, Any]:
        """Load a finished run on this server as adapter `name` (admin token required)."""
        if body.name in pool.adapters:
            raise HTTPException(409, f"adapter '{body.name}' is already loaded")
        try:
            adapter = await batcher.call(pool.load, body.name, body.run_dir)
        except LmtuneError as exc:
            raise HTTPException(422, str(exc)) from None
        freeze_loaded_objects()
        return {"name": adapter.name, **pool.describe(adapter.name)}

    @app.delete("/admin/adapters/{name}", dependencies=admin)
    async def remove_adapter(name: str) -> dict[str, Any]:
        """Unload adapter `name` (admin token required)."""
        try:
            await batcher.call(pool.remove, name)
        except UnknownAdapterError as exc:
            raise HTTPException(404, str(exc)) from None
        except LmtuneError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"removed": name, "adapters": pool.names()}
