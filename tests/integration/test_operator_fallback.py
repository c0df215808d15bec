"""Policy service down: jobs still complete, planned in-process, and the plan says so."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pytest

from clusterkit import REPO, Cluster, wait_until
from test_operator_jobs import free_port, job_manifest, running_operator, wait_phase

sys.path.insert(0, str(REPO / "operator"))
from eat_operator import testing  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def operator(cluster: Cluster, gpu_nodes: list[str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[testing.OperatorProcess]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    yield from running_operator(cluster, tmp_path_factory, policy_url=dead, policy_timeout_s="0.5",
                                sim_duration_scale="0.1", sim_duration_max_s="2")


def test_policy_down_jobs_complete_via_fallback_flagged(cluster: Cluster, namespace: str,
                                                        operator: testing.OperatorProcess) -> None:
    names = [f"fb-{i}" for i in range(4)]
    for i, name in enumerate(names):
        cluster.create(job_manifest(name, model=("sd15", "sdxl-turbo")[i % 2], deadlineSeconds=60), namespace)
    for name in names:
        st = wait_phase(cluster, namespace, name, {"Succeeded", "Failed"}, op=operator)["status"]
        assert st["phase"] == "Succeeded", st
        plan = st["plan"]
        assert plan["plannedBy"] == "in-process" and plan["fallback"] is True
        assert "policy service unreachable" in plan["fallbackReason"], plan["fallbackReason"]
        assert "in-process fallback" in st["message"] or "done" in st["message"]
        cond = {c["type"]: c for c in st["conditions"]}["PolicyFallback"]
        assert cond["status"] == "True" and "unreachable" in cond["message"]
    text = operator.metrics()
    m = re.search(r'eat_operator_plan_fallbacks_total\{reason="unreachable"\} (\S+)', text)
    assert m and float(m.group(1)) >= 1, text
    assert 'eat_operator_plan_duration_seconds_count{source="in-process"}' in text
    wait_until(lambda: operator.alive, "operator alive")
