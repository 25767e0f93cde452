"""POST /explain: token attributions of the served run, bounded as /predict is.

    POST /explain   {"texts": [...], "adapter"?, "options"?, "target"?, "method"?, "n_steps"?}
                    -> {"explanations": [record, ...], "adapter", "model"}

The body is checked by the same code as /predict's (`app._checked_request`: adapter, item
count, characters, each item by the task, the task's options), so the same request gets the
same 4xx on both routes. An explanation costs n_steps forwards and backwards per target, so it
runs in the model thread between batches (never beside a forward) and at most `max_queue`
explanations wait at once (503 beyond); a task that declares no `token-attributions` gets 422.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from lmtune.errors import LmtuneError
from lmtune.evaluation.explain import CAPABILITY, ExplainSettings
from lmtune.serving.app import PREDICT_RESPONSES, PredictRequest, Served, _checked_request


class ExplainRequest(PredictRequest):
    target: str | None = Field(
        default=None, max_length=200, description="The label (entity type, span end) to explain."
    )
    method: Literal["ig", "rollout"] = Field(default="ig", description="ig (faithful) or rollout (quick).")
    n_steps: int = Field(default=32, ge=1, le=128, description="Integrated-gradients steps.")


class ExplainResponse(BaseModel):
    explanations: list[dict[str, Any]]
    adapter: str
    model: str


def add_explain_route(app: FastAPI, served: Served) -> None:
    waiting = [0]  # explanations queued or running (the batcher's queue holds predictions only)

    @app.post("/explain", response_model=ExplainResponse, responses=PREDICT_RESPONSES)
    async def explain(body: ExplainRequest) -> dict[str, Any]:
        """Token attributions per input: its prediction, tokens, words and each target's scores."""
        name, adapter, items, options = _checked_request(served, body)
        run = adapter.run
        if not run.task.supports(CAPABILITY):
            raise HTTPException(
                422, f"task '{run.config.task.type}' cannot explain its predictions (no {CAPABILITY})"
            )
        settings = ExplainSettings(method=body.method, n_steps=body.n_steps, target=body.target)
        if waiting[0] >= served.settings.max_queue:
            raise HTTPException(
                503, "server busy: too many explanations waiting", headers={"Retry-After": "1"}
            )
        waiting[0] += 1
        try:
            job = served.batcher.call(_explain, served, adapter, items, settings, options)
            records = await asyncio.wait_for(job, served.settings.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer within {served.settings.timeout_s:g} s") from None
        except LmtuneError as exc:
            raise HTTPException(422, str(exc)) from None
        finally:
            waiting[0] -= 1
        return {"explanations": records, "adapter": name, "model": run.config.model.name}


def _explain(
    served: Served, adapter: Any, items: list[dict[str, Any]], settings: ExplainSettings, options: dict
) -> list[dict[str, Any]]:
    """In the model thread: the adapter selected (as for its predictions), then the explanations."""
    with served.pool._selected(adapter):
        return adapter.run.explain(items, settings, options)
