"""The README's first command, end to end: every component, a burst of jobs, all succeed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCALCLUSTER = ROOT / "hack" / "cluster" / "localcluster.py"

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _stop(demo: subprocess.Popen[str], grace_s: float = 60.0) -> str:
    """SIGTERM first, so the demo's `finally` stops its services and cluster; SIGKILL after grace_s.
    Returns the rest of its output."""
    if demo.poll() is None:
        demo.terminate()
    try:
        out, _ = demo.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        demo.kill()
        out, _ = demo.communicate()
    return out or ""


def test_demo_runs_a_burst_to_completion(tmp_path: Path) -> None:
    env = {**os.environ, "EAT_CLUSTER_DIR": str(tmp_path / "cluster")}
    env.pop("KUBECONFIG", None)
    demo = subprocess.Popen([sys.executable, str(ROOT / "hack" / "demo.py"), "--jobs", "6", "--timeout", "240"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out, _ = demo.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the demo ran past 600 s:\n{_stop(demo)[-4000:]}")
    finally:
        if demo.poll() is None:
            _stop(demo)
        # Whatever the demo managed, no control plane of it outlives the test.
        subprocess.run([sys.executable, str(LOCALCLUSTER), "down"], env=env, capture_output=True, timeout=120)
    assert demo.returncode == 0, out[-4000:]
    assert "6/6 Succeeded" in out
    assert "The same cluster and burst in the simulator" in out and "edf-cache" in out
