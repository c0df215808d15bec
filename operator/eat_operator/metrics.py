"""The operator's Prometheus metrics (``eat_operator_*``), served on ``settings.metrics_port``.

Names follow Prometheus conventions: units in names, ``_total`` for counters, histograms
for latencies. The phase gauge is recomputed from the snapshot every dispatcher cycle, so
it is right after a restart too; counters count what this process did.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry()

jobs = Gauge("eat_operator_jobs", "AIGCJobs by phase, as last seen.", ["phase"], registry=registry)
queue_depth = Gauge("eat_operator_queue_depth", "AIGCJobs waiting for a plan.", registry=registry)
job_latency = Histogram(
    "eat_operator_job_latency_seconds", "Apply to Succeeded, per job.", registry=registry,
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
deadline_misses = Counter("eat_operator_deadline_misses_total", "Jobs that finished after their deadline.",
                          registry=registry)
jobs_finished = Counter("eat_operator_jobs_finished_total", "Jobs that reached a terminal phase.", ["phase"],
                        registry=registry)
plan_latency = Histogram(
    "eat_operator_plan_duration_seconds", "One plan request (service or in-process).", ["source"],
    registry=registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
fallbacks = Counter("eat_operator_plan_fallbacks_total",
                    "Plans made in-process because the policy service could not answer.", ["reason"],
                    registry=registry)
decisions = Counter("eat_operator_decisions_total", "Policy decisions acted on.", ["action"], registry=registry)
retries = Counter("eat_operator_retries_total", "Pod groups torn down and re-planned.", ["reason"],
                  registry=registry)
pods_created = Counter("eat_operator_pods_created_total", "Pods created.", registry=registry)
api_errors = Counter("eat_operator_api_errors_total", "Kubernetes API calls that failed.", ["verb"],
                     registry=registry)
cycle_seconds = Histogram("eat_operator_cycle_duration_seconds", "One dispatcher cycle.", registry=registry,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
leader = Gauge("eat_operator_leader", "1 while this replica holds the Lease and dispatches.", registry=registry)
