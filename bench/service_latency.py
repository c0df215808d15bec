"""Policy service latency: POST /v1/plan over HTTP at 64 nodes × 32 jobs, one uvicorn worker.

Starts one ``eat-policy serve`` subprocess per configuration (the fallback heuristic alone; the
learned policy with the default reuse 32, with reuse 1 and with 2 torch threads), then sends
sequential requests from one client, a round of each server in turn, so that a slow spell of a
shared machine moves one round of every configuration rather than one configuration. Prints
p50/p99 (medians over rounds), GET /healthz of the first server as the baseline, and each
p50's ratio to the heuristic's. Target (issue 4): p99 <= 25 ms. The learned policy is
EAT_POLICY_CHECKPOINT, by default the image's ``eat-edge-pods.pt``.
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from eat_policy import api
from eat_policy.sim import catalog

ROUNDS, REQUESTS = 5, 100
SHIPPED = Path(__file__).resolve().parents[1] / "policy" / "eat_policy" / "checkpoints" / "eat-edge-pods.pt"


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


def serve(stack: ExitStack, env: dict[str, str]) -> httpx.Client:
    """A server with ``env``, stopped when ``stack`` closes; its client once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "eat_policy.cli", "serve", "--port", str(port), "--log-level", "warning"],
                              env=env)
    stack.callback(server.wait)
    stack.callback(server.terminate)
    client = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
    for _ in range(300):
        try:
            client.get("/healthz")
            return client
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the server with {env.get('EAT_POLICY_CHECKPOINT')} did not answer")


def configurations(checkpoint: str) -> dict[str, dict[str, str]]:
    learned = {"EAT_POLICY_CHECKPOINT": checkpoint}
    return {"fallback heuristic": {}, "learned, reuse 32": learned,
            "learned, reuse 1": {**learned, "EAT_POLICY_REUSE": "1"},
            "learned, reuse 32, 2 threads": {**learned, "EAT_POLICY_THREADS": "2"}}


def main() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EAT_POLICY_")}
    checkpoint = os.environ.get("EAT_POLICY_CHECKPOINT", str(SHIPPED))
    body = request_body()
    with ExitStack() as stack:
        clients = {name: serve(stack, {**env, **extra}) for name, extra in configurations(checkpoint).items()}
        answered = {name: c.post("/v1/plan", json=body).json()["policy"] for name, c in clients.items()}
        plans: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        health = []
        for _ in range(ROUNDS):
            health.append(percentiles(next(iter(clients.values())), "GET", "/healthz", None))
            for name, c in clients.items():
                plans[name].append(percentiles(c, "POST", "/v1/plan", body))

    def med(runs: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(p for p, _ in runs), statistics.median(p for _, p in runs)

    print(f"64 nodes x 32 jobs; {ROUNDS} rounds x {REQUESTS} requests per server, interleaved; medians of the rounds' percentiles")
    first_p50 = med(plans["fallback heuristic"])[0]
    for name, runs in plans.items():
        p50, p99 = med(runs)
        policy = answered[name]
        print(f"  {name:<30} {policy['name']} ({policy['version']})")
        print(f"    POST /v1/plan  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms   (p50 {p50 / first_p50:.2f}x the heuristic's)")
    b50, b99 = med(health)
    print(f"  GET /healthz (baseline)  p50 {b50:7.2f} ms  p99 {b99:7.2f} ms")


if __name__ == "__main__":
    main()
