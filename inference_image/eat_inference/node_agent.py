"""The node agent (a DaemonSet): tells the cluster which models this node holds, and pre-warms.

It reads the node's model cache directory (shared with the inference pods through a
hostPath) at every scrape and exports, under the names agreed in :mod:`eat_policy.api`:

- ``eat_node_model_cached{node, model}`` 1 for each complete model in the cache;
- ``eat_node_model_bytes{node, model}`` its size on disk;
- ``eat_node_model_last_load_seconds{node, model}`` the last load's duration (fetch included
  when it was cold), recorded by the inference pods and by pre-warming;
- ``eat_node_model_resident{node, model, gpu}`` 1 while an inference process holds the model
  in that device's memory;
- ``eat_node_cache_free_bytes{node}`` capacity left (bounded by free disk).

The policy service reads these from Prometheus to tell warm nodes from cold ones. With
``annotate_node`` on, the agent also keeps the node annotation ``eat.aigc.io/cached-models``
current, for the scheduler extender (which reads the API server, not Prometheus).

HTTP: ``GET /metrics``, ``GET /healthz``, ``GET /v1/models``, ``GET /v1/models/{model}``,
``POST /v1/models/{model}/prewarm`` (202 and fetch in the background; ``?wait=true`` answers
when done).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import pathlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Literal

import httpx
from eat_policy import api
from fastapi import Depends, FastAPI, HTTPException, Query, Response
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from pydantic import BaseModel

from eat_inference import cache, settings

logger = logging.getLogger(__name__)

PREWARM_TOTAL = "eat_node_prewarm_total"


@functools.lru_cache
def get_settings() -> settings.AgentSettings:
    return settings.AgentSettings()


# --- metrics --------------------------------------------------------------------------------


def resident_models(cache_dir: pathlib.Path, stale_after_s: float = 60.0) -> Iterator[tuple[str, str]]:
    """(model, gpu) for every live holder: files in ``resident/`` whose lock is held."""
    d = cache_dir / "resident"
    if not d.is_dir():
        return
    for path in sorted(d.glob("*.json")):
        try:
            with path.open("r") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # held exclusively by a live inference process
                else:
                    fcntl.flock(f, fcntl.LOCK_UN)
                    if time.time() - path.stat().st_mtime > stale_after_s:
                        path.unlink(missing_ok=True)  # left by a process that died
                    continue
                info = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            continue
        if "model" in info:
            yield str(info["model"]), str(info.get("gpu", "0"))


class CacheCollector(Collector):
    """Reads the cache at each scrape, so an evicted model disappears from the metrics."""

    def __init__(self, model_cache: cache.ModelCache, node: str) -> None:
        self.cache = model_cache
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cached = GaugeMetricFamily(
            api.METRIC_MODEL_CACHED, "1 when the model is in the node's disk cache.", labels=["node", "model"]
        )
        size = GaugeMetricFamily(api.METRIC_MODEL_BYTES, "Bytes of the cached model on disk.", labels=["node", "model"])
        load = GaugeMetricFamily(
            api.METRIC_MODEL_LOAD_SECONDS,
            "Duration of the last load of the model (fetch included when cold).",
            labels=["node", "model"],
        )
        resident = GaugeMetricFamily(
            api.METRIC_MODEL_RESIDENT,
            "1 while a process holds the model in that GPU's memory.",
            labels=["node", "model", "gpu"],
        )
        free = GaugeMetricFamily(api.METRIC_CACHE_FREE_BYTES, "Free bytes in the node's model cache.", labels=["node"])
        models = self.cache.models()
        for m in models:
            cached.add_metric([self.node, m.name], 1.0)
            size.add_metric([self.node, m.name], float(m.bytes))
            if m.last_load_s is not None:
                load.add_metric([self.node, m.name], float(m.last_load_s))
        for model, gpu in sorted(set(resident_models(self.cache.root))):
            resident.add_metric([self.node, model, gpu], 1.0)
        free.add_metric([self.node], float(self.cache.free_bytes()))
        yield from (cached, size, load, resident, free)


# --- pre-warming ----------------------------------------------------------------------------


class ModelState(BaseModel):
    model: str
    state: Literal["cached", "fetching", "failed", "absent"]
    bytes: int | None = None
    last_load_seconds: float | None = None
    error: str | None = None


@dataclasses.dataclass
class Prewarmer:
    """Fetches models into the cache in background threads, one fetch per model at a time."""

    model_cache: cache.ModelCache
    store: cache.ModelStore | None
    counter: Counter
    _running: dict[str, threading.Thread] = dataclasses.field(default_factory=dict)
    _errors: dict[str, str] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def state(self, name: str) -> ModelState:
        with self._lock:
            if name in self._running:
                return ModelState(model=name, state="fetching")
            error = self._errors.get(name)
        m = self.model_cache.get(name)
        if m is not None:
            return ModelState(model=name, state="cached", bytes=m.bytes, last_load_seconds=m.last_load_s)
        if error is not None:
            return ModelState(model=name, state="failed", error=error)
        return ModelState(model=name, state="absent")

    def start(self, name: str) -> threading.Thread:
        with self._lock:
            thread = self._running.get(name)
            if thread is None:
                thread = threading.Thread(target=self._fetch, args=(name,), name=f"prewarm-{name}", daemon=True)
                self._running[name] = thread
                self._errors.pop(name, None)
                thread.start()
            return thread

    def _fetch(self, name: str) -> None:
        t0 = time.monotonic()
        try:
            fetched = self.model_cache.ensure(name, self.store)
            if fetched.cold:
                self.model_cache.record_load(name, time.monotonic() - t0)
            self.counter.labels(result="fetched" if fetched.cold else "hit").inc()
            logger.info("pre-warmed %s (%s, %.2f s)", name, fetched.source, time.monotonic() - t0)
        except Exception as e:  # any failure is the prewarm's answer (a bug included), with why
            self.counter.labels(result="failed").inc()
            logger.warning("pre-warming %s failed: %s", name, e, exc_info=not isinstance(e, cache.CacheError))
            with self._lock:
                self._errors[name] = str(e) if isinstance(e, cache.CacheError) else f"{type(e).__name__}: {e}"
        finally:
            with self._lock:
                self._running.pop(name, None)


# --- node annotation ------------------------------------------------------------------------

_SA = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")


def annotate_node(client: httpx.Client, node: str, models: list[str]) -> None:
    """Merge-patch the node's cached-models annotation (comma-separated, sorted)."""
    body = {"metadata": {"annotations": {api.ANNOTATION_CACHED_MODELS: ",".join(sorted(models))}}}
    r = client.patch(
        f"/api/v1/nodes/{node}", content=json.dumps(body), headers={"Content-Type": "application/merge-patch+json"}
    )
    r.raise_for_status()


class ServiceAccountToken(httpx.Auth):
    """The pod's service-account token, read for each request: the kubelet rotates the file
    (hourly where the API server does not extend token lifetimes)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = f"Bearer {self.path.read_text().strip()}"
        yield request


def in_cluster_client(account: pathlib.Path = _SA) -> httpx.Client:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    return httpx.Client(
        base_url=f"https://{host}:{port}",
        auth=ServiceAccountToken(account / "token"),
        verify=str(account / "ca.crt"),
        timeout=10.0,
    )


async def _annotate_loop(model_cache: cache.ModelCache, cfg: settings.AgentSettings, client: httpx.Client) -> None:
    last: list[str] | None = None
    while True:
        models = sorted(m.name for m in model_cache.models())
        if models != last:
            try:
                await asyncio.to_thread(annotate_node, client, cfg.node_name, models)
                last = models
            except httpx.HTTPError as e:
                logger.warning("could not annotate node %s: %s", cfg.node_name, e)
        await asyncio.sleep(cfg.annotate_interval_s)


# --- the app --------------------------------------------------------------------------------


@dataclasses.dataclass
class Agent:
    cfg: settings.AgentSettings
    model_cache: cache.ModelCache
    registry: CollectorRegistry
    prewarmer: Prewarmer


def build_agent(cfg: settings.AgentSettings) -> Agent:
    model_cache = cache.ModelCache(cfg.cache_dir, cfg.cache_capacity_bytes, cfg.lock_timeout_s)
    store = cache.store_from_uri(cfg.store, cfg.store_timeout_s) if cfg.store else None
    registry = CollectorRegistry()
    registry.register(CacheCollector(model_cache, cfg.node_name))
    counter = Counter(
        PREWARM_TOTAL, "Pre-warm requests by result (fetched, hit, failed).", ["result"], registry=registry
    )
    return Agent(cfg, model_cache, registry, Prewarmer(model_cache, store, counter))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    cfg = get_settings()
    agent = build_agent(cfg)
    app.state.agent = agent
    task = None
    if cfg.annotate_node:
        task = asyncio.create_task(_annotate_loop(agent.model_cache, cfg, in_cluster_client()))
    logger.info("node agent for %s: cache %s, store %s", cfg.node_name, cfg.cache_dir, cfg.store)
    yield
    if task is not None:
        task.cancel()


app = FastAPI(title="eat-node-agent", lifespan=lifespan)


def get_agent() -> Agent:
    agent: Agent = app.state.agent
    return agent


AgentDep = Annotated[Agent, Depends(get_agent)]


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/metrics")
def metrics(agent: AgentDep) -> Response:
    return Response(generate_latest(agent.registry), media_type=CONTENT_TYPE_LATEST)


@app.get("/v1/models")
def list_models(agent: AgentDep) -> list[ModelState]:
    return [agent.prewarmer.state(m.name) for m in agent.model_cache.models()]


def _checked(name: str) -> str:
    try:
        return cache.check_name(name)
    except cache.CacheError as e:
        raise HTTPException(status_code=422, detail=str(e)) from e


@app.get("/v1/models/{model:path}")
def get_model(model: str, agent: AgentDep) -> ModelState:
    return agent.prewarmer.state(_checked(model))


@app.post("/v1/models/{model:path}/prewarm", status_code=202)
async def prewarm(
    model: str,
    agent: AgentDep,
    response: Response,
    wait: Annotated[bool, Query(description="Answer when done.")] = False,
) -> ModelState:
    """Fetch the model into this node's cache (no-op when cached)."""
    name = _checked(model)
    if agent.prewarmer.store is None and agent.model_cache.get(name) is None:
        raise HTTPException(status_code=409, detail=f"model {name!r} is not cached and no model store is configured")
    thread = agent.prewarmer.start(name)
    if wait:
        await asyncio.to_thread(thread.join)
        state = agent.prewarmer.state(name)
        response.status_code = 200 if state.state == "cached" else 502
        return state
    return agent.prewarmer.state(name)
