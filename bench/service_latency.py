"""Policy service latency: POST /v1/plan over HTTP at 64 nodes × 32 jobs, one uvicorn worker.

Starts ``eat-policy serve`` in a subprocess, sends sequential requests from one client, and
prints p50/p99 (median over runs) next to GET /healthz on the same server as the baseline.
Target (issue 4): p99 <= 25 ms. Measures the fallback heuristic, then the learned policy
(EAT_POLICY_CHECKPOINT, default the shipped eat-edge.pt; EAT_POLICY_REUSE applies).
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from eat_policy import api
from eat_policy.sim import catalog

RUNS, REQUESTS = 3, 200
SHIPPED = Path(__file__).resolve().parents[1] / "policy" / "eat_policy" / "checkpoints" / "eat-edge.pt"


def request_body(n_nodes: int = 64, n_jobs: int = 32, seed: int = 0) -> dict:  # type: ignore[type-arg]
    rng = random.Random(seed)
    now = time.time()
    products = [g.product for g in catalog.GPU_TYPES.values()]
    models = [m.name for m in catalog.MODELS]
    nodes = []
    for i in range(n_nodes):
        total = rng.choice([1, 2, 4, 8])
        free = rng.randint(0, total)
        nodes.append(api.NodeInfo(name=f"node-{i}", gpu_product=rng.choice(products), gpus_total=total, gpus_free=free,
                                  gpu_free_at=[now + rng.uniform(1, 60) for _ in range(total - free)],
                                  cached_models=rng.sample(models, rng.randint(0, 2)),
                                  resident_models=rng.sample(models, rng.randint(0, 1))))
    jobs = []
    for j in range(n_jobs):
        spec = catalog.MODELS[rng.randrange(len(models))]
        side = int(rng.choice(spec.pixels) ** 0.5)
        jobs.append(api.JobRequest(id=f"ns/job-{j}", model=spec.name, width=side, height=side,
                                   steps_min=spec.steps_range[0], steps_max=spec.steps_range[1],
                                   deadline_s=rng.uniform(10, 120), arrival_time=now - rng.uniform(0, 30)))
    return api.PlanRequest(jobs=jobs, nodes=nodes, now=now).model_dump()


def percentiles(client: httpx.Client, method: str, path: str, body: dict | None) -> tuple[float, float]:  # type: ignore[type-arg]
    times = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        r = client.request(method, path, json=body)
        times.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def measure(env: dict[str, str]) -> tuple[dict, tuple[float, float], tuple[float, float]]:  # type: ignore[type-arg]
    """Serve with ``env``; (policy that answered, plan p50/p99, healthz p50/p99), medians over runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "eat_policy.cli", "serve", "--port", str(port), "--log-level", "warning"],
                              env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(100):
                try:
                    client.get("/healthz")
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            body = request_body()
            policy = client.post("/v1/plan", json=body).json()["policy"]
            base = [percentiles(client, "GET", "/healthz", None) for _ in range(RUNS)]
            plan = [percentiles(client, "POST", "/v1/plan", body) for _ in range(RUNS)]
    finally:
        server.terminate()
        server.wait()
    def med(runs: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(p for p, _ in runs), statistics.median(p for _, p in runs)

    return policy, med(plan), med(base)


def main() -> None:
    """The fallback heuristic (no checkpoint) and the learned policy (EAT_POLICY_CHECKPOINT, else
    the shipped eat-edge.pt), each in its own server, one after the other."""
    env = {k: v for k, v in os.environ.items() if k != "EAT_POLICY_CHECKPOINT"}
    checkpoint = os.environ.get("EAT_POLICY_CHECKPOINT", str(SHIPPED))
    print(f"64 nodes x 32 jobs; {REQUESTS} requests x {RUNS} runs; medians of the runs' percentiles")
    first_p50 = None
    for label, extra in (("heuristic", {}), ("learned", {"EAT_POLICY_CHECKPOINT": checkpoint})):
        policy, (p50, p99), (b50, b99) = measure({**env, **extra})
        first_p50 = first_p50 or p50
        print(f"{label:<9} {policy['name']} ({policy['version']})")
        print(f"  POST /v1/plan  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms   (p50 {p50 / first_p50:.2f}x the heuristic's)")
        print(f"  GET  /healthz  p50 {b50:7.2f} ms  p99 {b99:7.2f} ms   (baseline)")


if __name__ == "__main__":
    main()
