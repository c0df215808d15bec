"""FastAPI app: ``POST /v1/plan``, ``/healthz``, ``/readyz``, ``/metrics``.

Run it with ``eat-policy serve`` (or ``uvicorn eat_policy.service.app:app``); configure it with
``EAT_POLICY_*`` variables (``settings.Settings``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eat_policy import __version__, api
from eat_policy.agents import cache_aware
from eat_policy.service import requests, telemetry
from eat_policy.service.planner import Planner
from eat_policy.service.settings import get_settings


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.planner = Planner.from_settings(get_settings())
    cache_aware.compile_ahead()  # the fallback heuristics' kernel, so that no request waits for numba
    yield


app = FastAPI(title="EAT policy service", version=__version__, lifespan=lifespan,
              description="Plans AIGC jobs onto GPU nodes: patches, nodes, steps, with reasons.")


@app.exception_handler(RequestValidationError)
async def unprocessable(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, but a non-finite number the errors echo is written as a string: JSON has
    no NaN or Infinity, and the default answer would fail to encode it (a 500)."""
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(exc.errors()))})


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def get_planner(request: Request) -> Planner:
    state = request.app.state
    if not hasattr(state, "planner"):  # served without lifespan events (some ASGI test clients)
        state.planner = Planner.from_settings(get_settings())
    return state.planner  # type: ignore[no-any-return]


PlannerDep = Annotated[Planner, Depends(get_planner)]


@app.post("/v1/plan", response_model=api.PlanResponse, tags=["plan"],
          responses={422: {"description": "The request cannot be planned (unknown model, bad ranges)."}})
def plan(body: api.PlanRequest, planner: PlannerDep) -> api.PlanResponse:
    """Decide, for each queued job, whether to dispatch it now and where, or to hold it."""
    t0 = time.perf_counter()
    try:
        return planner.plan(body)
    except requests.BadRequest as e:
        raise HTTPException(status_code=422, detail=str(e)) from None
    finally:
        telemetry.plan_seconds.observe(time.perf_counter() - t0)


@app.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/readyz", tags=["health"], responses={503: {"description": "No learned policy loaded (the fallback serves)."}})
def readyz(planner: PlannerDep) -> JSONResponse:
    """Ready when the learned policy's checkpoint is loaded."""
    if planner.ready:
        return JSONResponse({"status": "ready", "policy": planner.learned_version})
    return JSONResponse({"status": "not ready", "reason": planner.load_error}, status_code=503)


@app.get("/metrics", tags=["health"])
def metrics() -> Response:
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)
