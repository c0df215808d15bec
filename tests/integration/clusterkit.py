"""Helpers for the integration tests: a Cluster handle over kubectl, waiting, manifests."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from datetime import timezone
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack" / "cluster"))
import localcluster as lc  # noqa: E402

DEFAULT_WAIT = float(os.environ.get("EAT_TEST_WAIT_SECONDS", "60"))


def wait_until(fn: Callable[[], Any], what: str, timeout: float = DEFAULT_WAIT, interval: float = 0.25) -> Any:
    """Poll fn until it returns something truthy; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            r = fn()
            if r:
                return r
            last = r
        except lc.ClusterError as e:  # transient API errors count as "not yet"
            last = e
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def parse_time(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


class Cluster:
    """A handle on the cluster under test: kubeconfig plus kubectl helpers."""

    def __init__(self, kubeconfig: str | Path, local: bool) -> None:
        self.kubeconfig = str(kubeconfig)
        self.local = local

    def kubectl(self, *args: str, input: str | None = None, check: bool = True):
        return lc.kubectl(*args, kubeconfig=self.kubeconfig, input=input, check=check)

    def get(self, *args: str) -> Any:
        return lc.kubectl_json("get", *args, kubeconfig=self.kubeconfig)

    def exists(self, *args: str) -> bool:
        r = self.kubectl("get", *args, "-o", "name", "--ignore-not-found", check=True)
        return bool(r.stdout.strip())

    def create(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        r = self.kubectl("create", *ns, "-o", "json", "-f", "-", input=json.dumps(obj))
        return json.loads(r.stdout)

    def add_nodes(self, count: int, **kw: Any) -> list[str]:
        return lc.add_nodes(count, kubeconfig=self.kubeconfig, **kw)

    def delete_nodes(self, names: list[str]) -> None:
        lc.delete_nodes(names, kubeconfig=self.kubeconfig)

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get("pod", "-n", namespace, name)

    def wait_pod_phase(self, namespace: str, name: str, phases: set[str] | str,
                       timeout: float = DEFAULT_WAIT) -> dict[str, Any]:
        phases = {phases} if isinstance(phases, str) else phases

        def check():
            p = self.pod(namespace, name)
            return p if p.get("status", {}).get("phase") in phases else None

        return wait_until(check, f"pod {namespace}/{name} phase in {sorted(phases)}", timeout)

    def events_for(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return self.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]

    def create_gpu_node(self, name: str, pool: str = "h100", gpus: int | None = None,
                        labels: dict[str, str] | None = None, max_pods: int | None = None, kubelet: bool = True,
                        timeout: float = DEFAULT_WAIT) -> str:
        """One fake GPU node of a pool in hack/cluster/nodes.yaml, with extra labels, once it is
        Ready. ``max_pods``: its pod slots (0: kube-scheduler can bind nothing there, which a
        planner that counts GPUs cannot see). ``kubelet=False``: kwok does not run it; the
        test writes its Ready condition, and pods bound there never start nor finish, as on
        a node whose kubelet has died but not yet been noticed."""
        defaults, pools = lc.load_node_pools()
        m = lc.node_manifest(next(p for p in pools if p["name"] == pool), defaults, name, gpus)
        m["metadata"]["labels"].update(labels or {})
        if max_pods is not None:
            for key in ("capacity", "allocatable"):
                m["status"][key]["pods"] = str(max_pods)
        if not kubelet:
            del m["metadata"]["annotations"][lc.KWOK_NODE_ANNOTATION]
            m["status"]["conditions"] = [self._ready_condition(True)]
        self.kubectl("create", "-f", "-", input=json.dumps(m))
        self.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p",
                     json.dumps({"status": m["status"]}))

        def ready() -> bool:
            conds = self.get("node", name).get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

        wait_until(ready, f"node {name} Ready (is kwok running?)", timeout)
        return name

    @staticmethod
    def _ready_condition(ready: bool) -> dict[str, str]:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"type": "Ready", "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "KubeletStoppedPosting", "message": "set by a test",
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    def set_not_ready(self, node: str) -> None:
        """Ready=False through the status subresource; only for a node made with kubelet=False
        (kwok would set its own nodes Ready again at once)."""
        self.kubectl("patch", "node", node, "--subresource=status", "--type=strategic", "-p",
                     json.dumps({"status": {"conditions": [self._ready_condition(False)]}}))

    def set_gpus(self, node: str, gpus: int) -> None:
        """The node's nvidia.com/gpu capacity and allocatable, as its device plugin would report them."""
        res = {lc.GPU_RESOURCE: str(gpus)}
        self.kubectl("patch", "node", node, "--subresource=status", "--type=merge", "-p",
                     json.dumps({"status": {"capacity": res, "allocatable": res}}))

    def taint(self, node: str, key: str, effect: str = "NoSchedule") -> None:
        self.kubectl("taint", "node", node, f"{key}=true:{effect}")


def pod_manifest(name: str, *, gpus: int | None = 1, scheduler: str = lc.EAT_SCHEDULER_NAME,
                 restart_policy: str = "Never", annotations: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pod pinned to the fake GPU nodes (never to a real kubelet, e.g. kind's)."""
    container: dict[str, Any] = {"name": "main", "image": "eat-inference:test"}
    if gpus:
        container["resources"] = {"limits": {lc.GPU_RESOURCE: str(gpus)}}
    meta: dict[str, Any] = {"name": name, "annotations": annotations or {}, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "schedulerName": scheduler,
            "restartPolicy": restart_policy,
            "nodeSelector": {lc.LABEL_FAKE_NODE: "true"},
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
        },
    }

