"""Re-planning on the real control plane: a planned node lost, or pods that cannot be bound.

Each test runs its own operator (planning in-process) over nodes only it sees: they carry
a label unique to the test, which is the operator's node selector. The first node is the
only one when the job is planned, so the plan lands there; the node then fails, and a
second node is added only when the failure must already have been acted on (without the
extender the pods' node affinity is only preferred, and kube-scheduler would otherwise
bind them to the new node under the old plan). The job must end Succeeded on the second
node after exactly one re-plan, with a Retrying Event that says why.

- lost while running: the node has no kubelet (kwok does not run it: its pods are bound and
  never finish), then it is deleted or goes NotReady;
- unusable before binding: the node has no pod slots left (kube-scheduler can bind nothing,
  which the operator, counting GPUs, cannot see), then it is tainted or loses its GPUs, or
  nothing changes and the unschedulable timeout fires.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator

import pytest

from clusterkit import REPO, Cluster, wait_until
from test_operator_jobs import install_crd, job_manifest, wait_phase

sys.path.insert(0, str(REPO / "operator"))
from eat_operator import testing  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

POOL_LABEL = "eat.aigc.io/test-pool"
JOB = "phoenix"
OperatorFactory = Callable[..., testing.OperatorProcess]


@pytest.fixture
def start_operator(cluster: Cluster, namespace: str, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[OperatorFactory]:
    """Start an operator that sees only this test's nodes; extra EAT_OPERATOR_* settings as kwargs."""
    install_crd(cluster)
    started: list[testing.OperatorProcess] = []

    def start(**settings: str) -> testing.OperatorProcess:
        env = {"EAT_OPERATOR_POLICY_URL": "", "EAT_OPERATOR_NODE_SELECTOR": json.dumps({POOL_LABEL: namespace}),
               "EAT_OPERATOR_SIM_DURATION_SCALE": "0.05", "EAT_OPERATOR_SIM_DURATION_MAX_S": "1",
               **{f"EAT_OPERATOR_{k.upper()}": v for k, v in settings.items()}}
        op = testing.OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log",
                                     env=env).start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def nodes(cluster: Cluster, namespace: str) -> Iterator[list[str]]:
    """Names of this test's nodes (created by the test), deleted at the end."""
    names: list[str] = []
    yield names
    cluster.delete_nodes(names)


def add_node(cluster: Cluster, namespace: str, nodes: list[str], suffix: str, **kw: object) -> str:
    name = f"{namespace}-{suffix}"[:63]
    nodes.append(name)
    return cluster.create_gpu_node(name, labels={POOL_LABEL: namespace}, **kw)  # type: ignore[arg-type]


def status_of(cluster: Cluster, namespace: str) -> dict:
    return cluster.get("aigcjob", "-n", namespace, JOB).get("status") or {}


def wait_replanned(cluster: Cluster, namespace: str, op: testing.OperatorProcess) -> dict:
    def check() -> dict | None:
        if not op.alive:
            pytest.fail(f"operator exited:\n{op.log_tail()}")
        st = status_of(cluster, namespace)
        return st if st.get("replans") == 1 and st.get("phase") in ("Pending", "Planned", "Scheduling") else None

    return wait_until(check, f"{namespace}/{JOB} torn down for a new plan", 60)


def assert_replanned_onto(cluster: Cluster, namespace: str, op: testing.OperatorProcess, lost: str, good: str,
                          why: str) -> None:
    st = wait_phase(cluster, namespace, JOB, {"Succeeded", "Failed"}, op=op)["status"]
    assert st["phase"] == "Succeeded", st
    assert st["attempts"] == 2 and st["replans"] == 1 and not st.get("failures"), st
    assert set(st["plan"]["nodes"]) == {good}, st["plan"]
    pods = cluster.get("pods", "-n", namespace)["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == [f"{JOB}-{r}" for r in range(st["plan"]["patches"])]
    for p in pods:
        assert p["metadata"]["labels"]["eat.aigc.io/attempt"] == "2" and p["spec"]["nodeName"] == good
        assert p["status"]["phase"] == "Succeeded"
    retries = [e["message"] for e in cluster.events_for(namespace, JOB) if e["reason"] == "Retrying"]
    assert len(retries) == 1 and lost in retries[0] and why in retries[0], retries


def plan_onto_first_node(cluster: Cluster, namespace: str, op: testing.OperatorProcess, first: str,
                         phases: set[str]) -> None:
    cluster.create(job_manifest(JOB, model="sd15", steps=20), namespace)
    st = wait_phase(cluster, namespace, JOB, phases | {"Failed", "Succeeded"}, op=op)["status"]
    assert st["phase"] in phases, st
    assert set(st["plan"]["nodes"]) == {first} and st["attempts"] == 1


@pytest.mark.parametrize("fail", ["deleted", "not-ready"])
def test_node_lost_while_the_group_runs_replans_elsewhere(cluster: Cluster, namespace: str, nodes: list[str],
                                                          start_operator: OperatorFactory, fail: str) -> None:
    first = add_node(cluster, namespace, nodes, "a", kubelet=False)  # its pods are bound, then never finish
    op = start_operator(node_not_ready_grace_s="2")
    plan_onto_first_node(cluster, namespace, op, first, {"Running"})
    good = add_node(cluster, namespace, nodes, "b")
    if fail == "deleted":
        cluster.delete_nodes([first])
    else:
        cluster.set_not_ready(first)
    # Its pods can never be confirmed gone by a kubelet: the operator removes them at once
    # (grace period 0) instead of waiting for the pod garbage collector, or forever.
    assert_replanned_onto(cluster, namespace, op, first, good, "is gone" if fail == "deleted" else "is not Ready")


@pytest.mark.parametrize("fail", ["tainted", "gpus-gone", "deleted"])
def test_planned_node_unusable_before_binding_replans_at_once(cluster: Cluster, namespace: str, nodes: list[str],
                                                              start_operator: OperatorFactory, fail: str) -> None:
    first = add_node(cluster, namespace, nodes, "a", max_pods=0)
    op = start_operator(unschedulable_timeout_s="600")  # the timeout is not what acts here
    plan_onto_first_node(cluster, namespace, op, first, {"Scheduling"})
    if fail == "tainted":
        cluster.taint(first, "eat.aigc.io/maintenance")
        why = "has a taint"
    elif fail == "gpus-gone":
        cluster.set_gpus(first, 0)
        why = "has 0 GPUs"
    else:
        cluster.delete_nodes([first])
        why = "is gone"
    wait_replanned(cluster, namespace, op)
    good = add_node(cluster, namespace, nodes, "b")
    assert_replanned_onto(cluster, namespace, op, first, good, why)


def test_unschedulable_past_the_timeout_replans_and_rests_the_node(cluster: Cluster, namespace: str,
                                                                   nodes: list[str],
                                                                   start_operator: OperatorFactory) -> None:
    first = add_node(cluster, namespace, nodes, "a", max_pods=0)
    op = start_operator(unschedulable_timeout_s="3")
    plan_onto_first_node(cluster, namespace, op, first, {"Scheduling"})
    wait_replanned(cluster, namespace, op)
    # The node still looks fine to the operator; it rests, so the new plan waits for another.
    wait_until(lambda: "no free GPU" in (status_of(cluster, namespace).get("message") or ""),
               "the job held for want of a node", 30)
    good = add_node(cluster, namespace, nodes, "b")
    assert_replanned_onto(cluster, namespace, op, first, good, "not bound to")


def test_pods_refused_by_the_api_server_fail_the_job_with_its_reason(cluster: Cluster, namespace: str,
                                                                      nodes: list[str],
                                                                      start_operator: OperatorFactory) -> None:
    """A quota that admits no pod: each attempt times out Planned, counted as a failure, and the
    job ends Failed past the backoff limit with the API server's reason, not Planned forever."""
    cluster.create({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
                    "spec": {"hard": {"pods": "0"}}}, namespace)
    wait_until(lambda: (cluster.get("resourcequota", "-n", namespace, "no-pods").get("status") or {}).get("hard"),
               "the quota controller to fill in the quota", 30)
    add_node(cluster, namespace, nodes, "a")
    op = start_operator(unschedulable_timeout_s="3", backoff_limit="1")
    cluster.create(job_manifest(JOB, model="sd15", steps=20), namespace)
    st = wait_phase(cluster, namespace, JOB, {"Failed", "Succeeded"}, op=op, timeout=60)["status"]
    assert st["phase"] == "Failed" and st["reason"] == "BackoffLimitExceeded", st
    assert st["failures"] == 2 and st["attempts"] == 2 and "group not released after" in st["message"], st
    assert "exceeded quota" in st["message"], st
    events = cluster.events_for(namespace, JOB)
    refused = [e for e in events if e["reason"] == "FailedCreate"]
    assert len(refused) == 2 and all("exceeded quota" in e["message"] for e in refused)  # one per attempt
    assert not cluster.get("pods", "-n", namespace)["items"]
