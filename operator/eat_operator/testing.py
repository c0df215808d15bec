"""Run ``eat-operator`` as a child process against a cluster, for tests and benchmarks.

Like ``kopf.testing.KopfRunner``, but a real process: tests can kill it with SIGKILL in the
middle of a burst and start another, which is the restart-safety contract.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]


class OperatorProcess:
    def __init__(self, kubeconfig: str, log_path: str | Path, env: dict[str, str] | None = None,
                 metrics_port: int = 0) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = Path(log_path)
        self.metrics_port = metrics_port
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "policy"),
                                           os.environ.get("PYTHONPATH", "")]),
            "EAT_OPERATOR_KUBECONFIG": kubeconfig,
            "EAT_OPERATOR_METRICS_PORT": str(metrics_port),
            "EAT_OPERATOR_LIVENESS_PORT": "0",
            "EAT_OPERATOR_IDENTITY": "eat-operator-test",
            "EAT_OPERATOR_NODE_SELECTOR": '{"eat.aigc.io/fake-node": "true"}',
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "eat_operator", "--log-format", "plain"],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye (the restart-safety case)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text

    def wait_metrics(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.metrics()
                return
            except OSError:
                if time.monotonic() > deadline or not self.alive:
                    raise
                time.sleep(0.2)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
