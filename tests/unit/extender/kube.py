"""Builders of Kubernetes objects and extender requests, shaped as kube-scheduler sends them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eat_policy import api

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def make_node(name: str, gpus: int = 4, cached: tuple[str, ...] = ()) -> dict[str, Any]:
    annotations = {api.ANNOTATION_CACHED_MODELS: ",".join(cached)} if cached else {}
    alloc = {"cpu": "32", "memory": "256Gi", api.GPU_RESOURCE: str(gpus)}
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": {"kubernetes.io/hostname": name},
                     "annotations": annotations},
        "spec": {},
        "status": {"capacity": dict(alloc), "allocatable": alloc,
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def make_pod(name: str, gpus: int | None = 1, *, namespace: str = "render", planned: str | None = None,
             group: str | None = None, group_nodes: list[str] | None = None, group_size: int | None = None,
             model: str | None = None, node: str | None = None, phase: str = "Pending",
             rank: int | None = None, attempt: int | None = None) -> dict[str, Any]:
    labels: dict[str, str] = {}
    notes: dict[str, str] = {}
    if group:
        labels[api.LABEL_POD_GROUP] = group
    if rank is not None:
        labels[api.LABEL_RANK] = str(rank)
    if attempt is not None:
        labels[api.LABEL_ATTEMPT] = str(attempt)
    if group_nodes is not None:
        notes[api.ANNOTATION_GROUP_NODES] = ",".join(group_nodes)
        notes[api.ANNOTATION_GROUP_SIZE] = str(group_size or len(group_nodes))
    elif group_size is not None:
        notes[api.ANNOTATION_GROUP_SIZE] = str(group_size)
    if planned:
        notes[api.ANNOTATION_PLANNED_NODE] = planned
    if model:
        notes[api.ANNOTATION_MODEL] = model
    container: dict[str, Any] = {"name": "main", "image": "eat-inference:test"}
    if gpus is not None:
        container["resources"] = {"limits": {api.GPU_RESOURCE: str(gpus)}, "requests": {api.GPU_RESOURCE: str(gpus)}}
    spec: dict[str, Any] = {"containers": [container], "schedulerName": api.SCHEDULER_NAME}
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                     "labels": labels, "annotations": notes},
        "spec": spec,
        "status": {"phase": phase},
    }


def gang(group: str, nodes: list[str], gpus: int = 1, **kw: Any) -> list[dict[str, Any]]:
    """The k member pods of a planned pod group, rank order."""
    return [make_pod(f"{group}-{r}", gpus, group=group, group_nodes=nodes, planned=n, rank=r, **kw)
            for r, n in enumerate(nodes)]


def args(pod: dict[str, Any], node_names: list[str]) -> dict[str, Any]:
    """ExtenderArgs of a nodeCacheCapable extender, as kube-scheduler marshals it."""
    return {"Pod": pod, "Nodes": None, "NodeNames": node_names}
