"""``/healthz`` (the process serves) and ``/readyz`` (its cache is synced with the API server)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from eat_extender.deps import CacheDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Nodes and pods not listed yet."}})
async def readyz(request: Request, cache: CacheDep) -> JSONResponse:
    synced = cache.snapshot().synced
    nodes, pods = cache.counts()
    body: dict[str, Any] = {"status": "ok" if synced else "syncing", "nodes": nodes, "pods": pods}
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is not None and watcher.last_error:
        body["last_error"] = watcher.last_error
    return JSONResponse(body, status_code=200 if synced else 503)
