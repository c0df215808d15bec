"""eat-extender with the real kube-scheduler: plans are honoured, gangs stay whole, loss is survivable.

The extender runs as a process started here, on the URL the cluster's eat-scheduler was
configured with (rendered from charts/eat/files/scheduler-config.yaml into the cluster's state
dir by hack/cluster/localcluster.py). The tests use fake GPU nodes of their own (labelled, and
selected by every pod here), so GPUs held by other tests never interfere.

Every wait is a polling assertion with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusterkit import Cluster, lc, pod_manifest, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LABEL_TEST_POOL = "eat.aigc.io/test-pool"
ANN_PLANNED = "eat.aigc.io/planned-node"
ANN_GROUP_SIZE = "eat.aigc.io/group-size"
ANN_GROUP_NODES = "eat.aigc.io/group-nodes"
LABEL_POD_GROUP = "eat.aigc.io/pod-group"
LABEL_RANK = "eat.aigc.io/rank"


# ----------------------------------------------------------------------------- the extender


def scheduler_extender_url() -> str:
    """The extender URL the running eat-scheduler calls (from its rendered config)."""
    cfg = lc.state_dir() / "run" / "eat-scheduler-config.yaml"
    if not cfg.exists():
        pytest.fail(f"{cfg} is missing: the eat-scheduler of this cluster was not started by localcluster.py")
    extenders = yaml.safe_load(cfg.read_text()).get("extenders") or []
    if not extenders:
        pytest.fail(f"{cfg} configures no extender")
    return str(extenders[0]["urlPrefix"]).rstrip("/")


class Extender:
    """eat-extender as a child process on the scheduler's extender URL."""

    def __init__(self, url: str, kubeconfig: str, log: Path) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url, self.host, self.port = url, parts.hostname or "127.0.0.1", parts.port or 80
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: subprocess.Popen[bytes] | None = None

    def _port_taken(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, self.port)) == 0

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def start(self) -> None:
        if self._port_taken():
            pytest.fail(f"{self.host}:{self.port} (the eat-scheduler's extender URL {self.url}) is already in use "
                        "by another process; stop it, or bring the cluster up with another EAT_EXTENDER_URL")
        src = str(REPO / "scheduler_extender")
        env = dict(os.environ, EAT_EXTENDER_HOST=self.host, EAT_EXTENDER_PORT=str(self.port),
                   EAT_EXTENDER_KUBECONFIG=self.kubeconfig, EAT_EXTENDER_LOG_LEVEL="info",
                   PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "eat_extender"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"eat-extender exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                return self.get("/readyz")[0] == 200
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_until(ready, f"eat-extender ready on {self.url}", timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        wait_until(lambda: not self._port_taken(), f"{self.url} closed", timeout=15)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def extender(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Extender]:
    ext = Extender(scheduler_extender_url(), cluster.kubeconfig, tmp_path_factory.mktemp("extender") / "extender.log")
    ext.start()
    yield ext
    ext.stop()


@pytest.fixture
def running_extender(extender: Extender) -> Extender:
    """The extender, started again if a test stopped it."""
    if extender.proc is None:
        extender.start()
    return extender


# ----------------------------------------------------------------------------- nodes and pods


@pytest.fixture(scope="module")
def pool(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """Three fake GPU nodes of this module: big (2 GPUs), wide (2 GPUs), small (1 GPU)."""
    tag = f"ext-{uuid.uuid4().hex[:6]}"
    big, wide = cluster.add_nodes(2, pool="h100", gpus=2)
    (small,) = cluster.add_nodes(1, pool="l4", gpus=1)
    names = [big, wide, small]
    for n in names:
        cluster.kubectl("label", "node", n, f"{LABEL_TEST_POOL}={tag}")
    yield {"tag": tag, "big": big, "wide": wide, "small": small, "names": names}
    cluster.delete_nodes(names)


def gpu_pod(pool: dict[str, Any], name: str, *, planned: str | None = None, gpus: int = 1,
            affinity_to: str | None = None, group: tuple[str, list[str], int] | None = None) -> dict[str, Any]:
    """A GPU pod that keeps running (holds its GPU) and may only go to this module's nodes."""
    notes: dict[str, str] = {}
    labels: dict[str, str] = {}
    if planned:
        notes[ANN_PLANNED] = planned
    if group:
        gname, plan, rank = group
        labels |= {LABEL_POD_GROUP: gname, LABEL_RANK: str(rank)}
        notes |= {ANN_GROUP_SIZE: str(len(plan)), ANN_GROUP_NODES: ",".join(plan)}
    pod = pod_manifest(name, gpus=gpus, restart_policy="Always", annotations=notes, labels=labels)
    pod["spec"]["nodeSelector"][LABEL_TEST_POOL] = pool["tag"]
    if affinity_to:
        # What the operator sets beside the annotation: followed even when the extender is away.
        pod["spec"]["affinity"] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [affinity_to]}]}}]}}
    return pod


@pytest.fixture
def ns(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The test's namespace; its pods are gone (GPUs free) before the next test starts."""
    yield namespace
    cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false")
    wait_until(lambda: not cluster.get("pods", "-n", namespace)["items"], f"pods of {namespace} gone")


def node_of(cluster: Cluster, ns: str, name: str) -> str:
    return str(cluster.pod(ns, name)["spec"].get("nodeName") or "")


def wait_bound(cluster: Cluster, ns: str, name: str) -> str:
    return str(wait_until(lambda: node_of(cluster, ns, name), f"pod {ns}/{name} bound"))


def failed_scheduling(cluster: Cluster, ns: str, name: str, needle: str) -> str:
    """Wait for a FailedScheduling event of the pod whose message contains ``needle``."""
    def find() -> str | None:
        for e in cluster.events_for(ns, name):
            if e["reason"] == "FailedScheduling" and needle in e.get("message", ""):
                return str(e["message"])
        return None

    return str(wait_until(find, f"FailedScheduling of {ns}/{name} mentioning {needle!r}"))


def stays_unbound(cluster: Cluster, ns: str, names: list[str], seconds: float = 4.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        bound = {n: node_of(cluster, ns, n) for n in names}
        assert not any(bound.values()), f"bound while they should wait: {bound}"
        time.sleep(0.5)


# ----------------------------------------------------------------------------- tests


def test_pods_land_on_their_planned_nodes(cluster: Cluster, pool: dict[str, Any], running_extender: Extender,
                                          ns: str) -> None:
    # Two on `big` while `wide` is empty: the scheduler's own scoring would spread them.
    plan = {"p0": pool["small"], "p1": pool["big"], "p2": pool["big"], "p3": pool["wide"]}
    for name, node in plan.items():
        cluster.create(gpu_pod(pool, name, planned=node), ns)
    assert {name: wait_bound(cluster, ns, name) for name in plan} == plan
    scheduled = wait_until(lambda: [e for e in cluster.events_for(ns, "p1") if e["reason"] == "Scheduled"],
                           "Scheduled event")
    assert scheduled[0].get("reportingComponent") == "eat-scheduler"

    status, body = running_extender.get("/readyz")
    assert status == 200 and json.loads(body)["nodes"] >= 3
    status, text = running_extender.get("/metrics")
    assert status == 200
    for line in ('eat_extender_decisions_total{kind="planned",result="passed",verb="filter"}',
                 'eat_extender_request_duration_seconds_bucket{le="0.005",verb="filter"}',
                 'eat_extender_node_rejections_total{reason="not_planned_node"}', "eat_extender_cache_synced 1.0"):
        assert line in text, line


def test_pod_whose_planned_node_is_full_waits_with_the_reason(cluster: Cluster, pool: dict[str, Any],
                                                             running_extender: Extender, ns: str) -> None:
    small = pool["small"]
    cluster.create(gpu_pod(pool, "hog", planned=small), ns)
    assert wait_bound(cluster, ns, "hog") == small
    cluster.create(gpu_pod(pool, "waiter", planned=small), ns)
    msg = failed_scheduling(cluster, ns, "waiter", f"eat-extender: pod is planned for node {small}")
    assert "nvidia.com/gpu" in msg  # the scheduler's own reason for the full planned node
    stays_unbound(cluster, ns, ["waiter"])
    assert cluster.pod(ns, "waiter")["status"]["phase"] == "Pending"

    # The planned node frees up: the waiting pod goes there, and nowhere else.
    cluster.kubectl("delete", "pod", "hog", "-n", ns, "--wait=false")
    assert wait_bound(cluster, ns, "waiter") == small


def test_gang_that_cannot_fit_is_never_partly_bound(cluster: Cluster, pool: dict[str, Any],
                                                    running_extender: Extender, ns: str) -> None:
    # Ranks 1 and 2 both need `small`, which has one GPU: rank 0 (big) and rank 1 (small) would
    # fit one by one, but the group would never be whole.
    plan = [pool["big"], pool["small"], pool["small"]]
    members = [f"g-{r}" for r in range(3)]
    for r, name in enumerate(members):
        cluster.create(gpu_pod(pool, name, planned=plan[r], group=("doomed", plan, r)), ns)
    for name in members:
        failed_scheduling(cluster, ns, name, f"pod group {ns}/doomed waits to be placed whole")
    msg = failed_scheduling(cluster, ns, "g-0", "needs 2 nvidia.com/gpu for 2 member(s), 1 free")
    assert pool["small"] in msg
    stays_unbound(cluster, ns, members)
    status, text = running_extender.get("/metrics")
    assert status == 200 and 'eat_extender_gang_checks_total{result="waits"}' in text


def test_gang_waits_for_room_then_is_placed_whole(cluster: Cluster, pool: dict[str, Any],
                                                  running_extender: Extender, ns: str) -> None:
    big, wide = pool["big"], pool["wide"]
    cluster.create(gpu_pod(pool, "hog", planned=big), ns)
    assert wait_bound(cluster, ns, "hog") == big
    plan = [big, big, wide]  # needs both of big's GPUs: one is taken
    members = [f"m-{r}" for r in range(3)]
    for r, name in enumerate(members):
        cluster.create(gpu_pod(pool, name, planned=plan[r], group=("job", plan, r)), ns)
    failed_scheduling(cluster, ns, "m-2", f"pod group {ns}/job waits to be placed whole")
    stays_unbound(cluster, ns, members, seconds=2)

    cluster.kubectl("delete", "pod", "hog", "-n", ns, "--wait=false")
    assert [wait_bound(cluster, ns, m) for m in members] == plan


def test_without_the_extender_pods_still_schedule_and_follow_the_preferred_node(
    cluster: Cluster, pool: dict[str, Any], extender: Extender, ns: str
) -> None:
    extender.stop()
    try:
        plan = {"a0": pool["big"], "a1": pool["big"], "a2": pool["wide"], "a3": pool["small"]}
        for name, node in plan.items():
            cluster.create(gpu_pod(pool, name, planned=node, affinity_to=node), ns)
        placed = {name: wait_bound(cluster, ns, name) for name in plan}  # ignorable: scheduled anyway
        followed = sum(placed[n] == plan[n] for n in plan)
        assert followed >= 3, f"preferred affinity mostly followed: {placed} vs {plan}"
    finally:
        extender.start()

