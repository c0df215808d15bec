"""Live node state from Prometheus: GPU utilisation (DCGM) and model caches (node agent).

Instant queries over the HTTP API, all of one plan within one time budget; samples older
than the staleness limit, non-finite samples and series with malformed labels are ignored.
Any failure yields no metrics plus the reason, so planning goes on from the request alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
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
            raise PrometheusError(self._timed_out())
        try:
            # httpx's timeout bounds each socket operation, not the request: a server that
            # trickles its answer would restart it with every chunk, so the body is read here.
            with self.http.stream("GET", f"{self.url}/api/v1/query", params={"query": promql}, timeout=left) as r:
                body = json.loads(self._read_body(r, deadline))
        except (httpx.HTTPError, ValueError) as e:
            raise PrometheusError(f"{type(e).__name__}: {e}") from None
        if r.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"HTTP {r.status_code}: {body.get('error', 'query failed')}")
        return body["data"]["result"]  # type: ignore[no-any-return]

    def _read_body(self, r: httpx.Response, deadline: float) -> bytes:
        chunks = []
        for chunk in r.iter_bytes():
            if time.perf_counter() > deadline:
                raise PrometheusError(self._timed_out())
            chunks.append(chunk)
        return b"".join(chunks)

    def _timed_out(self) -> str:
        return f"timed out: queries took over {self.timeout_s} s"

    def fresh(self, metric: str, deadline: float) -> tuple[list[tuple[dict[str, str], float]], set[str]]:
        """Series of ``metric`` with their finite values, dropping samples older than the limit.

        Returns the fresh (labels, value) pairs and the nodes that only had stale samples.
        """
        now = time.time()
        series = self.query(metric, deadline)
        stamps = {_key(s["metric"]): float(s["value"][1]) for s in self.query(f"timestamp({metric})", deadline)}
        out, stale = [], set()
        for s in series:
            labels = s["metric"]
            age = now - stamps.get(_key(labels), now)
            if not age <= self.staleness_s:  # a NaN timestamp is no sign of freshness either
                stale.add(labels.get("node") or labels.get(self.node_label, "?"))
                continue
            value = float(s["value"][1])
            if math.isfinite(value):  # "+Inf" and "NaN" are valid Prometheus samples
                out.append((labels, value))
        return out, stale

    def fetch(self) -> Fetch:
        t0 = time.perf_counter()
        try:
            nodes, stale = self._read(t0 + self.timeout_s)  # one budget for all queries of a plan
        except (PrometheusError, LookupError, TypeError, ValueError, AttributeError) as e:
            why = str(e) if isinstance(e, PrometheusError) else f"malformed answer: {type(e).__name__}: {e}"
            log.warning("prometheus unavailable, planning from the request alone: %s", why)
            return Fetch({}, why, [], time.perf_counter() - t0)
        return Fetch(nodes, None, sorted(stale - set(nodes)), time.perf_counter() - t0)

    def _read(self, deadline: float) -> tuple[NodeMetrics, set[str]]:
        """Every node's live state, and the nodes with stale samples only."""
        cached, s1 = self.fresh(api.METRIC_MODEL_CACHED, deadline)
        resident, s2 = self.fresh(api.METRIC_MODEL_RESIDENT, deadline)
        util, s3 = self.fresh(api.DCGM_GPU_UTIL, deadline)
        nodes: NodeMetrics = {}
        for labels, value in cached:
            node, model = _label(labels, "node"), _label(labels, "model")
            if value > 0 and node and model:
                nodes.setdefault(node, NodeLive()).cached.add(model)
        for labels, value in resident:
            node, model = _label(labels, "node"), _label(labels, "model")
            if value > 0 and node and model:
                nodes.setdefault(node, NodeLive()).resident.add(model)
        for labels, value in util:
            node, gpu = _label(labels, self.node_label) or _label(labels, "node"), _label(labels, "gpu")
            if node and gpu and gpu.isascii() and gpu.isdigit():  # "²" is a digit, not an index
                nodes.setdefault(node, NodeLive()).gpu_util[int(gpu)] = min(max(value / 100.0, 0.0), 1.0)
        return nodes, s1 | s2 | s3


def _label(labels: dict[str, str], name: str) -> str | None:
    """A label's value; None where it is missing or not a string (a malformed series)."""
    value = labels.get(name)
    return value if isinstance(value, str) else None


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))
