"""The operator's API client authenticates as a pod does: one bearer token, re-read as the
kubelet rotates the service-account token file."""

import asyncio
import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client
from kubernetes.config import incluster_config

from eat_operator import kube


@pytest.fixture
def api_server() -> Iterator[tuple[str, list[str | None]]]:
    """An HTTP server that answers {} and records each request's Authorization header."""
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()


def in_cluster(tmp_path: Path, token: str) -> tuple[k8s_client.Configuration, incluster_config.InClusterConfigLoader, Path]:
    token_file, ca = tmp_path / "token", tmp_path / "ca.crt"
    token_file.write_text(token)
    ca.write_text("unused")
    loader = incluster_config.InClusterConfigLoader(
        token_filename=str(token_file), cert_filename=str(ca),
        environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    cfg = k8s_client.Configuration()
    loader.load_and_set(cfg)
    return cfg, loader, token_file


def test_in_cluster_credentials_are_one_bearer_token_and_follow_rotation(tmp_path: Path) -> None:
    cfg, loader, token_file = in_cluster(tmp_path, "first")
    assert cfg.api_key["BearerToken"] == "bearer first"  # what the kubernetes package stores
    assert kube.credentials(cfg) == ("Bearer", "first")
    token_file.write_text("second")
    loader.token_expires_at = dt.datetime.min  # the loader's minute has passed
    assert kube.credentials(cfg) == ("Bearer", "second")


@pytest.mark.parametrize(("key", "value"), [("authorization", "Bearer abc"), ("BearerToken", "abc")])
def test_kubeconfig_and_bare_keys_give_the_same_token(key: str, value: str) -> None:
    cfg = k8s_client.Configuration()
    cfg.api_key[key] = value
    assert kube.credentials(cfg) == ("Bearer", "abc")


def test_requests_carry_the_current_token(tmp_path: Path, api_server: tuple[str, list[str | None]]) -> None:
    url, seen = api_server
    cfg, loader, token_file = in_cluster(tmp_path, "first")
    cfg.host, cfg.ssl_ca_cert = url, None  # plain HTTP to the recording server
    client = kube.Client(cfg)

    async def two_requests() -> None:
        await client.request("GET", "/api")
        token_file.write_text("second")
        loader.token_expires_at = dt.datetime.min
        await client.request("GET", "/api")
        await client.close()

    asyncio.run(two_requests())
    assert seen == ["Bearer first", "Bearer second"]
