"""The policy service against a real Prometheus scraping fake DCGM and node-cache metrics.

Prometheus (the Debian package) runs on 127.0.0.1 with a 1 s scrape interval; a small
exporter in this process publishes the metrics, which the tests change to watch the plan follow.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from eat_policy import api
from eat_policy.service.planner import Planner
from eat_policy.service.settings import Settings

pytestmark = [pytest.mark.slow]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exporter:
    """Fake DCGM exporter and node agent in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.util = Gauge(api.DCGM_GPU_UTIL, "GPU utilisation (%)", ["Hostname", "gpu"], registry=self.registry)
        self.cached = Gauge(api.METRIC_MODEL_CACHED, "model on disk", ["node", "model"], registry=self.registry)
        self.resident = Gauge(api.METRIC_MODEL_RESIDENT, "model in GPU memory", ["node", "model", "gpu"], registry=self.registry)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    e = Exporter()
    yield e
    e.server.shutdown()


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: fake-nodes\n    static_configs:\n      - targets: ['127.0.0.1:{exporter.port}']\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(root / "log").open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200, what="prometheus ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_for(check, what: str, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def scraped(url: str, promql: str, value: float) -> bool:
    result = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=2).json()["data"]["result"]
    return any(float(r["value"][1]) == value for r in result)


def sdxl_job() -> api.JobRequest:
    return api.JobRequest(id="ns/sdxl", model="sdxl", width=1024, height=1024, steps_min=15, steps_max=30,
                          deadline_s=60, arrival_time=time.time())


def two_nodes() -> list[api.NodeInfo]:
    return [api.NodeInfo(name=n, gpu_product="NVIDIA-A100-SXM4-80GB", gpus_total=1, gpus_free=1) for n in ("n1", "n2")]


def test_plan_follows_live_metrics(exporter: Exporter, prometheus: str) -> None:
    planner = Planner.from_settings(Settings(prometheus_url=prometheus, prometheus_timeout_s=2.0))
    exporter.util.labels("n1", "0").set(0)
    exporter.util.labels("n2", "0").set(0)
    exporter.cached.labels("n2", "sdxl").set(1)
    wait_for(lambda: scraped(prometheus, f'{api.METRIC_MODEL_CACHED}{{node="n2"}}', 1), what="cache metric scraped")

    warm = planner.plan(api.PlanRequest(jobs=[sdxl_job()], nodes=two_nodes()))
    assert warm.metrics.used and warm.metrics.error is None
    assert warm.decisions[0].nodes == ["n2"] and warm.decisions[0].cache == "disk"  # the warm node

    exporter.util.labels("n2", "0").set(100)  # something else saturates n2's GPU
    wait_for(lambda: scraped(prometheus, f'{api.DCGM_GPU_UTIL}{{Hostname="n2"}}', 100), what="util scraped")
    busy = planner.plan(api.PlanRequest(jobs=[sdxl_job()], nodes=two_nodes()))
    assert busy.decisions[0].nodes == ["n1"]  # the saturated GPU is avoided

    exporter.util.labels("n2", "0").set(0)
    exporter.cached.labels("n2", "sdxl").set(0)
    exporter.resident.labels("n1", "sdxl", "0").set(1)
    wait_for(lambda: scraped(prometheus, f'{api.METRIC_MODEL_RESIDENT}{{node="n1"}}', 1), what="residency scraped")
    wait_for(lambda: scraped(prometheus, f'{api.METRIC_MODEL_CACHED}{{node="n2"}}', 0), what="cache metric scraped")
    # In GPU memory only while the inference pod that loaded it runs: so the node's disk has it
    loaded = planner.plan(api.PlanRequest(jobs=[sdxl_job()], nodes=two_nodes()))
    assert loaded.decisions[0].nodes == ["n1"] and loaded.decisions[0].cache == "disk"

    # DCGM numbers GPUs its own way: the saturated one on a node with one of two GPUs busy is
    # that busy GPU, not the free one (the request cannot say which it is)
    exporter.util.labels("n3", "0").set(100)
    exporter.util.labels("n3", "1").set(0)
    wait_for(lambda: scraped(prometheus, f'{api.DCGM_GPU_UTIL}{{Hostname="n3",gpu="0"}}', 100), what="util scraped")
    half = api.NodeInfo(name="n3", gpu_product="NVIDIA-A100-SXM4-80GB", gpus_total=2, gpus_free=1,
                        gpu_free_at=[time.time() + 60])
    ours = planner.plan(api.PlanRequest(jobs=[sdxl_job()], nodes=[half]))
    assert ours.decisions[0].action == "dispatch" and ours.decisions[0].nodes == ["n3"]
    exporter.util.labels("n3", "1").set(100)  # now both are saturated: one by work we did not place
    wait_for(lambda: scraped(prometheus, f'{api.DCGM_GPU_UTIL}{{Hostname="n3",gpu="1"}}', 100), what="util scraped")
    full = planner.plan(api.PlanRequest(jobs=[sdxl_job()], nodes=[half]))
    assert full.decisions[0].action == "wait"


def test_service_over_http_reports_prometheus_use(prometheus: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EAT_POLICY_PROMETHEUS_URL", prometheus)
    from eat_policy.service import app as module
    from eat_policy.service.settings import get_settings

    get_settings.cache_clear()
    try:
        with TestClient(module.app) as client:
            body = client.post("/v1/plan", json=api.PlanRequest(jobs=[sdxl_job()], nodes=two_nodes()).model_dump()).json()
            assert body["metrics"]["used"] is True
            counts = [line.split()[-1] for line in client.get("/metrics").text.splitlines()
                      if line.startswith("eat_policy_prometheus_query_duration_seconds_count")]
            assert counts and float(counts[0]) >= 1
    finally:
        get_settings.cache_clear()


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        time.sleep(3)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_slow_prometheus_is_cut_off_at_the_timeout() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        planner = Planner.from_settings(Settings(prometheus_url=f"http://127.0.0.1:{server.server_port}",
                                                 prometheus_timeout_s=0.3))
        t0 = time.monotonic()
        plan = planner.plan(api.PlanRequest(jobs=[sdxl_job()], nodes=two_nodes()))
        elapsed = time.monotonic() - t0
    finally:
        server.shutdown()
    assert plan.decisions[0].action == "dispatch"
    assert plan.metrics.used is False and "Timeout" in (plan.metrics.error or "")
    assert elapsed < 2.0  # bounded by the 0.3 s budget, far below the server's 3 s stall
