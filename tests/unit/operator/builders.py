"""Builders for the operator's unit tests: API objects as plain dicts, like the API server's."""

from __future__ import annotations

from typing import Any

from eat_operator import kube

T0 = 1_800_000_000.0
Obj = dict[str, Any]


def node(name: str, gpus: int = 4, ready: bool = True, product: str = "NVIDIA-A100-SXM4-80GB",
         taints: list[Obj] | None = None, unschedulable: bool = False, labels: dict[str, str] | None = None,
         cached: str | None = None) -> Obj:
    return {
        "metadata": {"name": name, "resourceVersion": "1",
                     "labels": {"nvidia.com/gpu.product": product, "eat.aigc.io/fake-node": "true", **(labels or {})},
                     "annotations": {"eat.aigc.io/cached-models": cached} if cached else {}},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def job(name: str = "j", ns: str = "ns", status: Obj | None = None, rv: str = "10", created: float = T0,
        annotations: dict[str, str] | None = None, **spec: Any) -> Obj:
    return {
        "apiVersion": "eat.aigc.io/v1alpha1", "kind": "AIGCJob",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": rv, "generation": 1,
                     "creationTimestamp": kube.now_rfc3339(created)[:19] + "Z", "annotations": annotations or {}},
        "spec": {"prompt": "a cat", "model": "sd15", "width": 512, "height": 512, "priority": 0, **spec},
        **({"status": status} if status is not None else {}),
    }


def pod(name: str, ns: str = "ns", job: str | None = "j", rank: int = 0, attempt: int = 1, node: str = "",
        phase: str = "Pending", gated: bool = False, gpus: int = 1, deleting: bool = False,
        model: str = "sd15") -> Obj:
    labels = {}
    if job is not None:
        labels = {"eat.aigc.io/pod-group": job, "eat.aigc.io/rank": str(rank), "eat.aigc.io/attempt": str(attempt)}
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": "5", "labels": labels,
                     "annotations": {"eat.aigc.io/model": model} if job else {},
                     **({"deletionTimestamp": "2027-01-01T00:00:00Z"} if deleting else {})},
        "spec": {"nodeName": node or None, "schedulingGates": [{"name": "eat.aigc.io/gang"}] if gated else None,
                 "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": phase},
    }


def active_status(phase: str, nodes: list[str], attempt: int = 1, at: float = T0, **extra: Any) -> Obj:
    return {
        "phase": phase, "attempts": attempt,
        "plan": {"attempt": attempt, "patches": len(nodes), "nodes": nodes, "steps": 20,
                 "predictedLatencySeconds": 10.0, "plannedAt": kube.now_rfc3339(at)},
        "timestamps": {"planned": kube.now_rfc3339(at), "scheduling": kube.now_rfc3339(at)},
        **extra,
    }
