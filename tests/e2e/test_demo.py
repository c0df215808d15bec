"""The README's first command, end to end: every component, a burst of jobs, all succeed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_demo_runs_a_burst_to_completion(tmp_path: Path) -> None:
    env = {**os.environ, "EAT_CLUSTER_DIR": str(tmp_path / "cluster")}
    env.pop("KUBECONFIG", None)
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "demo.py"), "--jobs", "6", "--timeout", "240"],
                            capture_output=True, text=True, env=env, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "6/6 Succeeded" in out
    assert "The same cluster and burst in the simulator" in out and "edf-cache" in out
