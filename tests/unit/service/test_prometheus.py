"""Live metrics from Prometheus: what is read, what is ignored, and the time budget."""

import http.server
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from eat_policy.service import prometheus


def answering(util: list[tuple[object, str]]) -> Callable[[httpx.Request], httpx.Response]:
    """A Prometheus with fresh DCGM readings of node n1: (gpu label, sample value) each."""
    now = time.time()
    series = [{"metric": {"Hostname": "n1", "gpu": gpu}, "value": [now, value]} for gpu, value in util]

    def answer(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        result: list[dict] = []  # type: ignore[type-arg]
        if query == "DCGM_FI_DEV_GPU_UTIL":
            result = series
        elif query == "timestamp(DCGM_FI_DEV_GPU_UTIL)":
            result = [{"metric": s["metric"], "value": [now, str(now)]} for s in series]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})

    return answer


def fetch(util: list[tuple[object, str]]) -> prometheus.Fetch:
    client = prometheus.Client("http://prometheus:9090", 0.5, 60, "Hostname")
    client.http = httpx.Client(transport=httpx.MockTransport(answering(util)))
    return client.fetch()


def test_utilisation_is_finite_and_within_0_and_1() -> None:
    """``+Inf`` and ``NaN`` are valid samples; an infinite utilisation made the learned policy's
    scores NaN."""
    f = fetch([("0", "+Inf"), ("1", "NaN"), ("2", "1e39"), ("3", "-3"), ("4", "45")])
    assert f.error is None
    assert f.nodes["n1"].gpu_util == {2: 1.0, 3: 0.0, 4: 0.45}


def test_series_with_malformed_gpu_labels_are_skipped() -> None:
    f = fetch([(0, "95"), ("²", "95"), ("1", "95")])
    assert f.error is None
    assert f.nodes["n1"].gpu_util == {1: 0.95}


class Trickling(http.server.BaseHTTPRequestHandler):
    """Answers an empty result, a byte every 50 ms: 3 s for the whole body."""

    protocol_version = "HTTP/1.1"
    body = b'{"status":"success","data":{"resultType":"vector","result":[]}}'

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            for byte in self.body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client gave up
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def trickling_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_trickles_its_answer_is_given_up_on_within_the_budget(trickling_url: str) -> None:
    """httpx's timeout bounds each read, and every byte starts a new one."""
    client = prometheus.Client(trickling_url, 0.3, 60, "Hostname")
    t0 = time.perf_counter()
    f = client.fetch()
    assert time.perf_counter() - t0 < 1.5
    assert f.nodes == {} and f.error is not None and f.error.startswith("timed out")
