"""The service's own Prometheus metrics (``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

registry = CollectorRegistry()
plan_seconds = Histogram(
    "eat_policy_plan_request_duration_seconds", "Time to answer POST /v1/plan.", registry=registry,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
decisions = Counter("eat_policy_decisions_total", "Decisions by the policy that made them and action.",
                    ["policy", "action"], registry=registry)
fallbacks = Counter("eat_policy_fallbacks_total", "Plans answered by the fallback heuristic, by reason.",
                    ["reason"], registry=registry)
prometheus_seconds = Histogram("eat_policy_prometheus_query_duration_seconds",
                               "Time spent fetching node metrics from Prometheus per plan.", registry=registry,
                               buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
prometheus_errors = Counter("eat_policy_prometheus_errors_total", "Plans made without Prometheus because it failed.",
                            registry=registry)
