"""Live node state from Prometheus: GPU utilisation (DCGM) and model caches (node agent).

Instant queries over the HTTP API, each bounded by a timeout; samples older than the
staleness limit are ignored. Any failure yields no metrics plus the reason, so planning
goes on from the request alone.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import httpx

from eat_policy import api

log = logging.getLogger(__name__)


@dataclasses.dataclass
class NodeLive:
    cached: set[str] = dataclasses.field(default_factory=set)
    resident: set[str] = dataclasses.field(default_factory=set)
    gpu_util: dict[int, float] = dataclasses.field(default_factory=dict)
    """GPU index → utilisation in [0, 1]."""


NodeMetrics = dict[str, NodeLive]


@dataclasses.dataclass(frozen=True)
class Fetch:
    nodes: NodeMetrics
    error: str | None
    stale_nodes: list[str]
    duration_s: float


class PrometheusError(RuntimeError):
    pass


class Client:
    def __init__(self, url: str, timeout_s: float, staleness_s: float, dcgm_node_label: str) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.staleness_s = staleness_s
        self.node_label = dcgm_node_label
        self.http = httpx.Client(timeout=timeout_s)

    def query(self, promql: str, deadline: float) -> list[dict]:  # type: ignore[type-arg]
        """One instant query, within what is left of the fetch's time budget (until ``deadline``,
        a ``time.perf_counter`` reading)."""
        left = deadline - time.perf_counter()
        if left <= 0:
            raise PrometheusError(f"timed out: queries took over {self.timeout_s} s")
        try:
            r = self.http.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=left)
            body = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise PrometheusError(f"{type(e).__name__}: {e}") from None
        if r.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"HTTP {r.status_code}: {body.get('error', 'query failed')}")
        return body["data"]["result"]  # type: ignore[no-any-return]

    def fresh(self, metric: str, deadline: float) -> tuple[list[tuple[dict[str, str], float]], set[str]]:
        """Series of ``metric`` with their values, dropping samples older than the limit.

        Returns the fresh (labels, value) pairs and the nodes that only had stale samples.
        """
        now = time.time()
        series = self.query(metric, deadline)
        stamps = {_key(s["metric"]): float(s["value"][1]) for s in self.query(f"timestamp({metric})", deadline)}
        out, stale = [], set()
        for s in series:
            labels = s["metric"]
            age = now - stamps.get(_key(labels), now)
            if age > self.staleness_s:
                stale.add(labels.get("node") or labels.get(self.node_label, "?"))
                continue
            out.append((labels, float(s["value"][1])))
        return out, stale

    def fetch(self) -> Fetch:
        t0 = time.perf_counter()
        deadline = t0 + self.timeout_s  # one budget for all queries of a plan
        nodes: NodeMetrics = {}
        stale: set[str] = set()
        try:
            cached, s1 = self.fresh(api.METRIC_MODEL_CACHED, deadline)
            resident, s2 = self.fresh(api.METRIC_MODEL_RESIDENT, deadline)
            util, s3 = self.fresh(api.DCGM_GPU_UTIL, deadline)
        except (PrometheusError, LookupError, TypeError, ValueError, AttributeError) as e:
            why = str(e) if isinstance(e, PrometheusError) else f"malformed answer: {type(e).__name__}: {e}"
            log.warning("prometheus unavailable, planning from the request alone: %s", why)
            return Fetch({}, why, [], time.perf_counter() - t0)
        stale = s1 | s2 | s3
        for labels, value in cached:
            if value > 0 and "node" in labels and "model" in labels:
                nodes.setdefault(labels["node"], NodeLive()).cached.add(labels["model"])
        for labels, value in resident:
            if value > 0 and "node" in labels and "model" in labels:
                nodes.setdefault(labels["node"], NodeLive()).resident.add(labels["model"])
        for labels, value in util:
            node = labels.get(self.node_label) or labels.get("node")
            if node is not None and labels.get("gpu", "").isdigit():
                nodes.setdefault(node, NodeLive()).gpu_util[int(labels["gpu"])] = value / 100.0
        return Fetch(nodes, None, sorted(stale - set(nodes)), time.perf_counter() - t0)


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))
