"""The node agent: cache metrics under the names agreed in eat_policy.api, pre-warming, annotation."""

from __future__ import annotations

import fcntl
import http.server
import json
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

import httpx
from eat_inference import cache, node_agent, settings
from eat_policy import api
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from .conftest import child_env, free_port
from .test_cache import MiB, make_model


@pytest.fixture
def store(tmp_path: pathlib.Path) -> pathlib.Path:
    s = tmp_path / "store"
    cache.pack(make_model(tmp_path, "sd-a", MiB), s, "sd-a")
    cache.pack(make_model(tmp_path, "sd-b", MiB), s, "sd-b")
    (s / "sd-b.tar.sha256").write_text("0" * 64 + "\n")  # corrupt in the store
    return s


@pytest.fixture
def client(tmp_path: pathlib.Path, store: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    cfg = settings.AgentSettings(
        node_name="gpu-node-1", cache_dir=tmp_path / "cache", cache_capacity_bytes=10 * MiB, store=str(store)
    )
    monkeypatch.setattr(node_agent, "get_settings", lambda: cfg)  # read by the app's lifespan
    with TestClient(node_agent.app) as c:
        yield c


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prewarm_then_metrics(client: TestClient, tmp_path: pathlib.Path) -> None:
    before = samples(client.get("/metrics").text)
    assert not any(name == api.METRIC_MODEL_CACHED for name, _ in before)
    assert before[(api.METRIC_CACHE_FREE_BYTES, (("node", "gpu-node-1"),))] == 10 * MiB

    r = client.post("/v1/models/sd-a/prewarm", params={"wait": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cached"

    after = samples(client.get("/metrics").text)
    labels = (("model", "sd-a"), ("node", "gpu-node-1"))
    assert after[(api.METRIC_MODEL_CACHED, labels)] == 1.0
    assert after[(api.METRIC_MODEL_BYTES, labels)] > MiB
    assert after[(api.METRIC_MODEL_LOAD_SECONDS, labels)] > 0
    assert after[(api.METRIC_CACHE_FREE_BYTES, (("node", "gpu-node-1"),))] < 9 * MiB
    assert after[(node_agent.PREWARM_TOTAL, (("result", "fetched"),))] == 1.0
    assert [m["model"] for m in client.get("/v1/models").json()] == ["sd-a"]

    # Evicted (by an inference pod's cache, here directly): gone from the next scrape.
    cache.ModelCache(tmp_path / "cache", 10 * MiB).evict("sd-a")
    assert not any(name == api.METRIC_MODEL_CACHED for name, _ in samples(client.get("/metrics").text))


def test_prewarm_in_background(client: TestClient) -> None:
    r = client.post("/v1/models/sd-a/prewarm")
    assert r.status_code == 202 and r.json()["state"] in ("fetching", "cached")
    deadline = time.monotonic() + 20
    while client.get("/v1/models/sd-a").json()["state"] != "cached":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_prewarm_failure_is_reported(client: TestClient) -> None:
    r = client.post("/v1/models/sd-b/prewarm", params={"wait": "true"})
    assert r.status_code == 502
    assert r.json()["state"] == "failed" and "sha256 mismatch" in r.json()["error"]
    assert client.get("/v1/models/sd-b").json()["state"] == "failed"
    r = client.post("/v1/models/nowhere/prewarm", params={"wait": "true"})
    assert r.status_code == 502 and "not in the store" in r.json()["error"]


def test_a_prewarm_that_fails_unexpectedly_says_why(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only cache errors: any failure is reported as the prewarm's state, with the reason
    (it used to end the fetch thread and leave the model "absent", with no error)."""
    def disk_full(*_: object) -> cache.Fetched:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(client.app.state.agent.model_cache, "ensure", disk_full)  # type: ignore[attr-defined]
    r = client.post("/v1/models/sd-a/prewarm", params={"wait": "true"})
    assert r.status_code == 502
    assert r.json()["state"] == "failed" and "OSError: [Errno 28] No space left on device" in r.json()["error"]


def test_bad_model_name_is_422(client: TestClient) -> None:
    assert client.post("/v1/models/..%2Fetc/prewarm").status_code in (404, 422)
    assert client.get("/v1/models/a b").status_code == 422


def test_resident_while_a_process_holds_the_model(client: TestClient, tmp_path: pathlib.Path) -> None:
    d = tmp_path / "cache" / "resident"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "sd-a.123.host.json"
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps({"model": "sd-a", "gpu": "0"}))
        f.flush()
        key = (api.METRIC_MODEL_RESIDENT, (("gpu", "0"), ("model", "sd-a"), ("node", "gpu-node-1")))
        assert samples(client.get("/metrics").text)[key] == 1.0
        fcntl.flock(f, fcntl.LOCK_UN)
    assert not any(n == api.METRIC_MODEL_RESIDENT for n, _ in samples(client.get("/metrics").text))


def test_node_annotation_patch() -> None:
    """The agent merge-patches the node's cached-models annotation (wire format checked on a stub)."""
    seen: list[tuple[str, str, dict[str, object]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{srv.server_address[1]}") as c:
            node_agent.annotate_node(c, "gpu-node-1", ["sd-b", "sd-a"])
    finally:
        srv.shutdown()
    assert seen == [
        (
            "/api/v1/nodes/gpu-node-1",
            "application/merge-patch+json",
            {"metadata": {"annotations": {api.ANNOTATION_CACHED_MODELS: "sd-a,sd-b"}}},
        )
    ]


def test_annotations_use_the_current_service_account_token(tmp_path: pathlib.Path) -> None:
    """The kubelet rotates the token file; each request reads it again."""
    token = tmp_path / "token"
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Authorization"])
        return httpx.Response(200, json={})

    with httpx.Client(base_url="https://kubernetes", auth=node_agent.ServiceAccountToken(token),
                      transport=httpx.MockTransport(answer)) as c:
        token.write_text("first\n")
        node_agent.annotate_node(c, "gpu-node-1", ["sd-a"])
        token.write_text("second\n")
        node_agent.annotate_node(c, "gpu-node-1", ["sd-b"])
    assert sent == ["Bearer first", "Bearer second"]


def test_agent_process_serves_metrics(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    """``eat-node-agent serve`` as a real process: pre-warm over HTTP, then scrape."""
    port = free_port()
    env = child_env(
        EAT_NODE_AGENT_NODE_NAME="gpu-node-7",
        EAT_NODE_AGENT_CACHE_DIR=str(tmp_path / "cache"),
        EAT_NODE_AGENT_CACHE_CAPACITY_BYTES=str(10 * MiB),
        EAT_NODE_AGENT_STORE=str(store),
    )
    code = "from eat_inference import cli; cli.agent_main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.1)
        assert httpx.post(f"{base}/v1/models/sd-a/prewarm", params={"wait": "true"}, timeout=30).status_code == 200
        text = httpx.get(f"{base}/metrics").text
        assert f'{api.METRIC_MODEL_CACHED}{{model="sd-a",node="gpu-node-7"}} 1.0' in text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
