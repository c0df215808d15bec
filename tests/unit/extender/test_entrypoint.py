"""``eat-extender`` as a process: it serves, degrades without an API server, imports no torch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import eat_extender

from . import kube

SRC = Path(eat_extender.__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str, **env: str) -> str:
        port = _free_port()
        with open(tmp_path / f"extender-{port}.log", "wb") as log:
            p = subprocess.Popen([sys.executable, "-m", "eat_extender", "--host", "127.0.0.1", "--port", str(port),
                                  *flags], env=_env(**env), stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(url + "/healthz")
                return url
            except (urllib.error.URLError, ConnectionError):
                if p.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"eat-extender did not serve: {(tmp_path / f'extender-{port}.log').read_text()}")
                time.sleep(0.1)

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def test_help() -> None:
    r = subprocess.run([sys.executable, "-m", "eat_extender", "--help"], env=_env(), capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "--port" in r.stdout


def test_without_an_api_server_it_answers_error_so_the_scheduler_goes_on(serve: Any, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{_free_port()}"}}],
        "users": [{"name": "x", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
    }))
    url = serve(EAT_EXTENDER_KUBECONFIG=str(kubeconfig))
    status, body = _get(url + "/readyz")
    assert status == 503 and body["status"] == "syncing"
    status, body = _get(url + "/filter", json.dumps(kube.args(kube.make_pod("p", planned="a"), ["a"])).encode())
    assert status == 200 and "not synced" in body["Error"]
    deadline = time.monotonic() + 10
    while "last_error" not in body and time.monotonic() < deadline:
        time.sleep(0.2)
        _, body = _get(url + "/readyz")
    assert "Connection refused" in body.get("last_error", "") or "Max retries" in body.get("last_error", ""), body


def test_the_trace_log_level_starts(serve: Any) -> None:
    """uvicorn's "trace" (which the chart offers) is no Python logging level: it used to crash at start."""
    url = serve(EAT_EXTENDER_WATCH="false", EAT_EXTENDER_LOG_LEVEL="trace")
    assert _get(url + "/healthz") == (200, {"status": "ok"})


def test_watch_can_be_turned_off(serve: Any) -> None:
    url = serve(EAT_EXTENDER_WATCH="false")
    assert _get(url + "/healthz") == (200, {"status": "ok"})
    status, _ = _get(url + "/readyz")
    assert status == 503  # nothing listed: never ready, filter answers Error


def test_the_extender_imports_no_numerical_library() -> None:
    code = ("import sys, eat_extender.app, eat_extender.__main__; "
            "bad = [m for m in ('numpy', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
