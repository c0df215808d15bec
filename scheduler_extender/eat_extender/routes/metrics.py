"""``GET /metrics``: the extender's Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eat_extender import metrics
from eat_extender.deps import CacheDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(cache: CacheDep) -> Response:
    nodes, pods = cache.counts()
    metrics.cache_nodes.set(nodes)
    metrics.cache_pods.set(pods)
    metrics.cache_synced.set(1 if cache.snapshot().synced else 0)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
