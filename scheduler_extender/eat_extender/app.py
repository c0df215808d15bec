"""The eat-extender FastAPI app: ``/filter``, ``/prioritize``, ``/healthz``, ``/readyz``, ``/metrics``.

Run it with ``eat-extender`` (or ``uvicorn eat_extender.app:app``), configured by
``EAT_EXTENDER_*`` variables (``settings.Settings``). The lifespan starts the watch of nodes and
pods that keeps ``deps.CACHE`` current; it stops with the app.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from eat_extender import __version__, deps, watching, wire
# Route modules are named after their verb; aliased where the name would shadow a builtin.
from eat_extender.routes import filter as filter_route
from eat_extender.routes import health, prioritize
from eat_extender.routes import metrics as metrics_route
from eat_extender.settings import get_settings


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    watcher = None
    if settings.watch:
        watcher = watching.Watcher(deps.CACHE, settings)
        watcher.start()
    app.state.watcher = watcher
    try:
        yield
    finally:
        if watcher is not None:
            watcher.stop()


app = FastAPI(
    title="eat-extender",
    version=__version__,
    lifespan=lifespan,
    description="kube-scheduler HTTP extender of EAT: enforces the policy's placement, keeps pod "
                "groups whole, prefers warm model caches. Wire format: k8s.io/kube-scheduler/extender/v1.",
)
app.include_router(filter_route.router)
app.include_router(prioritize.router)
app.include_router(health.router)
app.include_router(metrics_route.router)


def _openapi() -> dict[str, Any]:
    """FastAPI's schema, plus ExtenderArgs (the verbs read their body themselves, for speed and
    to answer a malformed one in the wire format rather than with FastAPI's 422)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        args = wire.ExtenderArgs.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(args.pop("$defs", {}))
        components["ExtenderArgs"] = args
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]
