"""The board's HTTP server: the page, its static assets and the JSON API of docs/board.md.

`create_board_app(BoardSettings(...))` builds the FastAPI app; `lmtune board` serves it with
uvicorn. Every request passes the token check when a token is set; every path a request names
is resolved inside the runs root or a data root (`roots.inside`); bodies are bounded.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lmtune.board import compare_view, forms, playground, run_view
from lmtune.board.index import COLLECTION_FILES, IndexedRun, RunIndex
from lmtune.board.jobs import JobQueue
from lmtune.board.roots import PathRefused, inside
from lmtune.errors import LmtuneError

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "lmtune_board_token"
TOKEN_ENV = "LMTUNE_BOARD_TOKEN"
_JSON_BODY_LIMIT = 2 * 1024 * 1024
_UPLOAD_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt", ".conll"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class BoardSettings:
    """Where the board looks and what it allows."""

    runs_dir: Path
    data_dirs: list[Path] = field(default_factory=list)
    token: str | None = None
    max_upload_mb: float = 50.0
    max_running_jobs: int = 1
    loaded_runs: int = 2  # finished runs the playground keeps loaded


class Board:
    """What the routes share: the index, the job queue and the playground's loaded runs."""

    def __init__(self, settings: BoardSettings) -> None:
        self.settings = settings
        self.root = settings.runs_dir.resolve()
        self.data_roots = [d.resolve() for d in settings.data_dirs]
        self.index = RunIndex(self.root)
        self.jobs = JobQueue(self.root / ".board", settings.max_running_jobs)
        self.loaded = playground.LoadedRuns(settings.loaded_runs)

    def run(self, path: str) -> IndexedRun:
        directory = inside(self.root, path)
        if not (directory / "run.json").is_file():
            raise PathRefused(f"{path} is not a run directory (no run.json)", 404)
        return self.index.get(directory)

    def finished(self, path: str) -> Path:
        run = self.run(path)
        if run.row["status"] != "complete":
            raise LmtuneError(f"run {path} is {run.row['status']}, not complete", hint="pick a finished run")
        return run.directory

    def job_view(self, job: Any) -> dict[str, Any]:
        run_path = None
        with contextlib.suppress(ValueError):
            run_path = job.run_dir.resolve().relative_to(self.root).as_posix()
        view = job.public(run_path)
        row = None
        if run_path and (job.run_dir / "run.json").is_file():
            row = self.index.get(job.run_dir.resolve()).row
        view["progress"] = 1.0 if job.status == "finished" else (row or {}).get("progress")
        return view


class LaunchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any]


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(max_length=1000)
    inputs: list[Any] = Field(max_length=64)
    options: dict[str, Any] = Field(default_factory=dict)


def create_board_app(settings: BoardSettings) -> FastAPI:
    board = Board(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Read every run once in the background, so the first page load finds the index warm
        # (500 runs: about 1.7 s cold on 2 cores, 30 ms warm).
        # The launch form's schema imports every task and method (about 5 s): built then too.
        def warm_up() -> None:
            board.index.scan()
            forms.schema()

        threading.Thread(target=warm_up, name="board-warm-up", daemon=True).start()
        yield
        board.jobs.close()

    app = FastAPI(title="lmtune board", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.board = board
    _guard(app, board)
    _page_routes(app, board)
    _run_routes(app, board)
    _launch_routes(app, board)
    _playground_routes(app, board)
    return app


# ---- cross-cutting: token, body limits, error shapes -------------------------------------------
def _guard(app: FastAPI, board: Board) -> None:
    token = board.settings.token
    upload_limit = int(board.settings.max_upload_mb * 2**20)

    @app.middleware("http")
    async def check(request: Request, call_next: Any) -> Response:
        if token is not None and not _token_ok(request, token):
            return JSONResponse(
                {"detail": "missing or wrong token (Authorization: Bearer, or /?token=)"}, 401
            )
        limit = upload_limit if request.url.path == "/api/upload" else _JSON_BODY_LIMIT
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse({"detail": f"request body over {limit} bytes"}, 413)
        response = await call_next(request)
        if token is not None and request.query_params.get("token") == token:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.exception_handler(PathRefused)
    async def refused(request: Request, exc: PathRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, exc.status)

    @app.exception_handler(LmtuneError)
    async def bad_input(request: Request, exc: LmtuneError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 400)

    @app.exception_handler(forms.FormErrors)
    async def form_errors(request: Request, exc: forms.FormErrors) -> JSONResponse:
        return JSONResponse({"ok": False, "errors": exc.errors}, 422)


def _token_ok(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    candidates = [
        given.removeprefix("Bearer ").strip() if given.startswith("Bearer ") else "",
        request.cookies.get(TOKEN_COOKIE, ""),
        request.query_params.get("token", "") if request.url.path == "/" else "",
    ]
    return any(c and hmac.compare_digest(c.encode(), token.encode()) for c in candidates)


# ---- the page -----------------------------------------------------------------------------------
def _page_routes(app: FastAPI, board: Board) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name == "plotly.min.js":
            return FileResponse(_plotly_js(), media_type="text/javascript")
        return FileResponse(inside(STATIC, name))


def _plotly_js() -> Path:
    try:
        import plotly
    except ImportError:
        raise LmtuneError("plotly is not installed", hint="pip install 'lmtune[board]'") from None
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


# ---- runs, comparisons, files ------------------------------------------------------------------
def _run_routes(app: FastAPI, board: Board) -> None:
    from lmtune.evaluation.predictions import prediction_files, read_predictions

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        found, collections = board.index.scan()
        return {"root": str(board.root), "runs": [r.row for r in found], "collections": collections}

    @app.get("/api/run")
    def run(path: str = Query(max_length=1000)) -> dict[str, Any]:
        return run_view.run_detail(board.run(path), board.root)

    @app.get("/api/run/examples")
    def examples(
        path: str = Query(max_length=1000),
        split: str = Query("test", max_length=200),
        gold: str | None = Query(None, max_length=1000),
        predicted: str | None = Query(None, max_length=1000),
        limit: int = Query(50, ge=1, le=1000),
    ) -> dict[str, Any]:
        files = prediction_files(board.run(path).directory)
        if split not in files:
            raise PathRefused(f"run {path} has no saved predictions for split {split!r}", 404)
        records, total = read_predictions(files[split], gold=gold, predicted=predicted, limit=limit)
        return {"examples": records, "total": total}

    @app.get("/api/file")
    def file(path: str = Query(max_length=1000)) -> FileResponse:
        target = inside(board.root, path)
        if not target.is_file():
            raise PathRefused(f"{path} is not a file", 404)
        return FileResponse(target, filename=target.name if not _inline(target) else None)

    @app.get("/api/compare")
    def compare(runs: list[str] = Query(min_length=1, max_length=50)) -> dict[str, Any]:
        return compare_view.compare_runs([board.run(p) for p in runs])

    @app.get("/api/collection")
    def collection(path: str = Query(max_length=1000)) -> dict[str, Any]:
        directory = inside(board.root, path)
        kind = next((k for n, k in COLLECTION_FILES.items() if (directory / n).is_file()), None)
        if kind is None:
            raise PathRefused(f"{path} is not a compare or sweep output directory", 404)
        prefix = path.rstrip("/") + "/"
        members = [r for r in board.index.scan()[0] if r.row["path"].startswith(prefix)]
        return compare_view.collection_detail(directory, path, kind, members)


def _inline(path: Path) -> bool:
    return path.suffix.lower() in {".png", ".svg", ".jpg", ".jpeg", ".md", ".json", ".yaml", ".txt", ".html"}


# ---- launch: schema, validation, jobs, data files ---------------------------------------------
def _launch_routes(app: FastAPI, board: Board) -> None:
    @app.get("/api/schema")
    def schema() -> dict[str, Any]:
        return forms.schema()

    @app.post("/api/validate")
    def validate(body: LaunchBody) -> dict[str, Any]:
        cfg = forms.validate(body.config, board.root, board.data_roots)
        return {"ok": True, "yaml": cfg.to_yaml()}

    @app.post("/api/launch", status_code=202)
    def launch(body: LaunchBody) -> dict[str, Any]:
        cfg = forms.validate(body.config, board.root, board.data_roots)
        run_dir = Path(cfg.output_dir)
        _refuse_busy(board, run_dir)
        return {"job": board.job_view(board.jobs.submit(cfg.to_dict(), run_dir))}

    @app.post("/api/run/resume", status_code=202)
    def resume(path: str = Query(max_length=1000)) -> dict[str, Any]:
        run = board.run(path)
        if run.row["status"] not in ("interrupted", "failed"):
            raise LmtuneError(f"run {path} is {run.row['status']}: only interrupted or failed runs resume")
        _refuse_busy(board, run.directory)
        config = dict(run.state.get("config") or {})
        config["output_dir"] = str(run.directory)
        return {"job": board.job_view(board.jobs.submit(config, run.directory))}

    @app.get("/api/jobs")
    def jobs() -> dict[str, Any]:
        return {"jobs": [board.job_view(j) for j in board.jobs.jobs()]}

    @app.get("/api/jobs/{job_id}/log")
    def log(job_id: str, offset: int = Query(0, ge=0)) -> dict[str, Any]:
        found = board.jobs.log(job_id, offset)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return {"text": found[0], "offset": found[1]}

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        job = board.jobs.cancel(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return board.job_view(job)

    _data_routes(app, board)


def _refuse_busy(board: Board, run_dir: Path) -> None:
    if board.jobs.active_for(run_dir) is not None:
        raise LmtuneError(f"a job is already training into {run_dir.name}", hint="wait for it or cancel it")


def _data_routes(app: FastAPI, board: Board) -> None:
    @app.get("/api/data")
    def data() -> dict[str, Any]:
        files = []
        for root in board.data_roots:
            for path in sorted(root.rglob("*")) if root.is_dir() else []:
                if path.is_file() and path.suffix.lower() in _UPLOAD_SUFFIXES and len(files) < 2000:
                    files.append(
                        {
                            "path": str(path),
                            "name": path.relative_to(root).as_posix(),
                            "root": str(root),
                            "size": path.stat().st_size,
                        }
                    )
        return {"roots": [str(r) for r in board.data_roots], "files": files}

    @app.post("/api/upload")
    def upload(file: UploadFile = File(...)) -> dict[str, Any]:
        if not board.data_roots:
            raise LmtuneError("no data root to upload into", hint="start the board with --data-dir")
        return {"path": str(_store_upload(file, board.data_roots[0], board.settings.max_upload_mb))}


def _store_upload(file: UploadFile, root: Path, max_mb: float) -> Path:
    """The uploaded file under ROOT/uploads/, its name reduced to safe characters; refused past the
    size bound (counted while reading, whatever Content-Length said)."""
    from lmtune.io import atomic_path

    name = _SAFE_NAME.sub("_", Path(file.filename or "upload").name).strip("._") or "upload"
    if Path(name).suffix.lower() not in _UPLOAD_SUFFIXES:
        raise LmtuneError(f"upload {name}: expected one of {', '.join(sorted(_UPLOAD_SUFFIXES))}")
    target = root / "uploads" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    limit, written = int(max_mb * 2**20), 0
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        while chunk := file.file.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise HTTPException(413, f"upload over {max_mb:g} MB")
            out.write(chunk)
    return target


# ---- playground ---------------------------------------------------------------------------------
def _playground_routes(app: FastAPI, board: Board) -> None:
    @app.post("/api/predict")
    def predict(body: PredictBody) -> dict[str, Any]:
        directory = board.finished(body.path)
        view = run_view.playground_view(board.index.get(directory))
        return {
            "view": view,
            "predictions": playground.predict(board.loaded, directory, body.inputs, body.options),
        }

    @app.get("/api/generate")
    def generate(
        path: str = Query(max_length=1000),
        prompt: str = Query(max_length=20_000),
        model: str = Query("tuned", pattern="^(tuned|base)$"),
        max_new_tokens: int = Query(64, ge=1, le=512),
    ) -> StreamingResponse:
        directory = board.finished(path)
        pieces = playground.stream_generation(
            board.loaded, directory, prompt, model == "base", {"max_new_tokens": max_new_tokens}
        )
        return StreamingResponse(_events(pieces), media_type="text/event-stream")


def _events(pieces: Iterator[str]) -> Iterator[str]:
    """Server-sent events: each piece, then done (or the error that ended the stream)."""
    try:
        for piece in pieces:
            if piece:
                yield f"data: {json.dumps({'text': piece})}\n\n"
    except LmtuneError as exc:
        yield f"data: {json.dumps({'error': str(exc)})}\n\n"
        return
    yield f"data: {json.dumps({'done': True})}\n\n"


def token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None
