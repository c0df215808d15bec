"""eat-extender latency and throughput, per verb, at 100 and 1,000 nodes.

kube-scheduler calls the extender once per verb per scheduling cycle, with every feasible
node's name (``nodeCacheCapable``); a slow extender slows every GPU pod's placement. This runs
the real app under uvicorn (one worker) on 127.0.0.1 with a cache filled with a synthetic
cluster (nodes of 1/4/8 GPUs, two bound pods per node on average, a few pod groups, some of
them admitted), and sends Go-shaped ExtenderArgs over HTTP with httpx on a keep-alive
connection, as kube-scheduler's Go client does.

- filter: a gang member planned on one node (the heaviest answer: every other node comes back
  in FailedAndUnresolvableNodes with a reason, the gang guard runs);
- prioritize: an unplanned pod with a model (every node scored on cache and load).

Latency: sequential requests, client-side wall time, p50/p99 per run, median of the runs.
Throughput: requests/s with CONCURRENCY client threads for a fixed number of requests.
"in-process" runs the server in a thread of this process (the client shares the GIL, so
figures are pessimistic); "own process" runs it as a child process, as in production.
``handler`` is the same work without HTTP (parse, decide, serialise), for reference, and
``srv CPU`` the server process's CPU time per request (own process only): on a machine shared
with other work the wall-clock tails mostly measure the other work; CPU time does not.
Target (issue 7): p99 <= 5 ms at 1,000 nodes. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

try:
    import eat_extender  # noqa: F401
except ImportError:  # not installed yet: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scheduler_extender"))

import httpx
import uvicorn

from eat_extender import cache, deps, filtering, prioritizing, state, wire
from eat_extender.app import app
from eat_extender.routes import _body
from eat_extender.routes import filter as filter_route
from eat_policy import api

RUNS = 5
REQUESTS = 1000
WARMUP = 100
CONCURRENCY = 8
THROUGHPUT_REQUESTS = 2000
MODELS = ["sd15", "sd21", "sdxl", "sd3-medium"]


# ----------------------------------------------------------------------------- synthetic cluster


def node(name: str, gpus: int, cached: list[str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": {api.ANNOTATION_CACHED_MODELS: ",".join(cached)}},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", api.GPU_RESOURCE: str(gpus)}}}


def pod(name: str, gpus: int, node_name: str | None = None, notes: dict[str, str] | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod as kube-scheduler marshals it (defaults filled in), not a minimal one."""
    spec: dict[str, Any] = {
        "containers": [{
            "name": "inference", "image": "eat-inference:0.1.0", "args": ["--rank", "0"],
            "resources": {"limits": {"cpu": "8", "memory": "32Gi", api.GPU_RESOURCE: str(gpus)},
                          "requests": {"cpu": "4", "memory": "32Gi", api.GPU_RESOURCE: str(gpus)}},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        }],
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "schedulerName": api.SCHEDULER_NAME, "priority": 0,
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 300}],
    }
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}", "labels": labels or {},
                         "annotations": notes or {}, "creationTimestamp": "2026-03-02T10:15:04Z"},
            "spec": spec, "status": {"phase": "Running" if node_name else "Pending", "qosClass": "Burstable"}}


def gang_member(group: str, plan: list[str], rank: int) -> dict[str, Any]:
    return pod(f"{group}-{rank}", 1, notes={
        api.ANNOTATION_GROUP_SIZE: str(len(plan)), api.ANNOTATION_GROUP_NODES: ",".join(plan),
        api.ANNOTATION_PLANNED_NODE: plan[rank], api.ANNOTATION_MODEL: "sdxl"},
        labels={api.LABEL_POD_GROUP: group, api.LABEL_RANK: str(rank)})


def cluster(n_nodes: int, seed: int = 0, c: cache.ClusterCache | None = None
            ) -> tuple[cache.ClusterCache, dict[str, bytes]]:
    """A filled cache (``c``, else a new one) and the request body of each verb."""
    rng = random.Random(seed)
    names = [f"gpu-{i:04d}" for i in range(n_nodes)]
    gpus = [rng.choice([1, 4, 8]) for _ in names]
    nodes = [node(n, g, rng.sample(MODELS, rng.randint(0, 2))) for n, g in zip(names, gpus)]
    pods = [pod(f"run-{i}", 1, rng.choice(names)) for i in range(2 * n_nodes)]
    groups = []
    for g in range(max(n_nodes // 20, 2)):
        plan = rng.sample(names, 4)
        groups.append((f"job-{g}", plan))
        pods += [gang_member(f"job-{g}", plan, r) for r in range(4)]
    # The measured member's group is planned on roomy nodes: its filter passes (the usual case).
    roomy = [n for n, g in zip(names, gpus) if g == 8]
    groups[-1] = ("job-measured", rng.sample(roomy, 4))
    pods += [gang_member("job-measured", groups[-1][1], r) for r in range(4)]
    c = c if c is not None else cache.ClusterCache()
    c.replace_nodes([wire.Node.model_validate(n) for n in nodes])
    c.replace_pods([wire.Pod.model_validate(p) for p in pods])
    for g, _ in groups[: len(groups) // 2]:  # half the groups are being placed: their GPUs are held
        c.admit(f"bench/{g}", until=float("inf"))
    group, plan = groups[-1]
    bodies = {
        "filter": json.dumps({"Pod": gang_member(group, plan, 1), "Nodes": None, "NodeNames": names}).encode(),
        "prioritize": json.dumps({"Pod": pod("adhoc", 1, notes={api.ANNOTATION_MODEL: "sdxl"}),
                                  "Nodes": None, "NodeNames": names}).encode(),
    }
    return c, bodies


# ----------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int) -> uvicorn.Server:
    """uvicorn on the app as deployed (no dependency overrides: those cost per request); the
    process-wide cache is filled by the caller, and the lifespan (the watch) is off."""
    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                         log_level="warning", access_log=False))


def _child(n_nodes: int, port: int) -> None:
    cluster(n_nodes, c=deps.CACHE)
    serve(port).run()


class Server:
    """uvicorn with the app, in a thread of this process or in a child process."""

    def __init__(self, n_nodes: int, own_process: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Any = None
        self.server: uvicorn.Server | None = None
        if own_process:
            self.proc = multiprocessing.get_context("fork").Process(target=_child, args=(n_nodes, self.port))
            self.proc.start()
        else:
            cluster(n_nodes, c=deps.CACHE)
            self.server = serve(self.port)
            threading.Thread(target=self.server.run, daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.05)

    def cpu_s(self) -> float | None:
        """CPU seconds the server process has used (own process only): insensitive to other load."""
        if self.proc is None:
            return None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.proc is not None:
            self.proc.terminate()
            self.proc.join(10)


# ----------------------------------------------------------------------------- measures


def latency_ms(url: str, body: bytes) -> tuple[float, float]:
    """(p50, p99) in ms of sequential requests on one keep-alive connection."""
    headers = {"Content-Type": "application/json"}
    with httpx.Client(headers=headers, timeout=10) as client:
        for _ in range(WARMUP):
            client.post(url, content=body)
        samples = []
        for _ in range(REQUESTS):
            t0 = time.perf_counter()
            r = client.post(url, content=body)
            samples.append((time.perf_counter() - t0) * 1e3)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99) - 1]


def throughput(url: str, body: bytes) -> float:
    """Requests/s with CONCURRENCY threads, each on its own keep-alive connection."""
    per_thread = THROUGHPUT_REQUESTS // CONCURRENCY

    def worker() -> None:
        with httpx.Client(headers={"Content-Type": "application/json"}, timeout=10) as client:
            for _ in range(per_thread):
                client.post(url, content=body)

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per_thread * CONCURRENCY / (time.perf_counter() - t0)


def handler_ms(c: cache.ClusterCache, verb: str, body: bytes) -> float:
    """p50 in ms of the route's work without HTTP: parse, decide, serialise."""
    samples = []
    for _ in range(300):
        t0 = time.perf_counter()
        args, names = _body.parse_args(body)
        view = state.pod_view(args.pod)
        if verb == "filter":
            d = filtering.decide(view, names, c.snapshot(), 0.0)
            filter_route.answer(args, d)
        else:
            wire.host_priority_list_json(prioritizing.decide(view, names, c.snapshot(), 0.0).scores)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--mode", choices=["in-process", "own-process", "both"], default="both")
    a = ap.parse_args()
    modes = ["in-process", "own-process"] if a.mode == "both" else [a.mode]
    print(f"eat-extender, uvicorn 1 worker, httpx keep-alive; median of {a.runs} runs x {REQUESTS} requests; "
          f"throughput with {CONCURRENCY} client threads")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'server':<12} {'nodes':>5} {'verb':<10} {'body KiB':>8} {'handler p50':>11} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} {'srv CPU ms/req':>14}")
    for mode in modes:
        for n_nodes in a.nodes:
            c, bodies = cluster(n_nodes)
            server = Server(n_nodes, own_process=mode == "own-process")
            try:
                for verb, body in bodies.items():
                    url = f"{server.url}/{verb}"
                    cpu0 = server.cpu_s()
                    runs = [latency_ms(url, body) for _ in range(a.runs)]
                    cpu1 = server.cpu_s()
                    cpu = "-" if cpu0 is None or cpu1 is None else \
                        f"{(cpu1 - cpu0) * 1e3 / (a.runs * (REQUESTS + WARMUP)):.2f}"
                    p50 = statistics.median(r[0] for r in runs)
                    p99 = statistics.median(r[1] for r in runs)
                    rate = statistics.median(throughput(url, body) for _ in range(max(a.runs // 2, 1)))
                    print(f"{mode:<12} {n_nodes:>5} {verb:<10} {len(body) / 1024:>8.1f} "
                          f"{handler_ms(c, verb, body):>9.2f}ms {p50:>7.2f} {p99:>7.2f} {rate:>7,.0f} {cpu:>14}", flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
