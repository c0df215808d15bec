"""ClusterSnapshot: one frozen view of nodes, GPU pods and AIGCJobs, built from API objects.

Every decision of the operator (what to plan, what to create, what to tear down) is a pure
function of one snapshot, so it can be tested with plain dicts and no cluster (kueue's
scheduler works on its ``Snapshot`` the same way). The snapshot is also what the policy
sees: ``node_infos`` turns it into the ``NodeInfo`` list of ``POST /v1/plan``.

Free GPUs count both what runs and what is promised: a GPU is busy if a non-terminated pod
bound to the node requests it, or if an active job's plan reserves it and that rank's pod
is not bound yet (the plan is written before the pods exist, see ``status``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from eat_policy import api

from eat_operator import kube

Obj = dict[str, Any]

V = TypeVar("V")

ACTIVE = ("Planned", "Scheduling", "Running")
TERMINAL = ("Succeeded", "Failed")


@dataclasses.dataclass(frozen=True)
class NodeView:
    name: str
    gpus_total: int
    ready: bool
    schedulable: bool
    """Not cordoned and no taint our pods do not tolerate."""
    gpu_product: str = ""
    cached_models: tuple[str, ...] = ()
    not_ready_since: float | None = None
    """When a node that is not Ready stopped being so (its Ready condition's last transition),
    if it says."""


@dataclasses.dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    uid: str
    job: str | None
    """The AIGCJob name (pod-group label), None for pods that are not ours."""
    rank: int | None
    attempt: int | None
    node: str
    """spec.nodeName; empty until bound."""
    phase: str
    gated: bool
    deleting: bool
    gpus: int
    model: str | None = None
    reason: str = ""
    message: str = ""
    unschedulable: bool = False
    cannot_start: str = ""
    """Why a container of it waits for something that will not come by itself (a bad image, a
    missing Secret): ``<reason>: <message>``; empty otherwise."""

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclasses.dataclass(frozen=True)
class JobView:
    namespace: str
    name: str
    uid: str
    resource_version: str
    created: float
    body: Obj
    """The whole object, as read (treat as read-only)."""

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def status(self) -> Obj:
        s: Obj = self.body.get("status") or {}
        return s

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")

    @property
    def attempts(self) -> int:
        return int(self.status.get("attempts") or 0)

    @property
    def plan(self) -> Obj | None:
        p: Obj | None = self.status.get("plan")
        return p

    @property
    def deleting(self) -> bool:
        return bool(self.body.get("metadata", {}).get("deletionTimestamp"))


@dataclasses.dataclass(frozen=True)
class ClusterSnapshot:
    now: float
    nodes: Mapping[str, NodeView]
    jobs: Mapping[tuple[str, str], JobView]
    pods_by_job: Mapping[tuple[str, str], tuple[PodView, ...]]
    other_pods: tuple[PodView, ...]
    """GPU pods that belong to no AIGCJob (they still hold GPUs)."""
    ready_unselected: frozenset[str] = frozenset()
    """Ready nodes outside the node selector: offered no work, but what is bound there runs on
    (a node selector binds at scheduling time only)."""

    def pods_of(self, job: JobView) -> tuple[PodView, ...]:
        return self.pods_by_job.get(job.key, ())

    def gpu_usage(self) -> tuple[dict[str, int], dict[str, list[float]]]:
        """GPUs in use per node, and when the busy ones are expected to free (Unix seconds)."""
        used: dict[str, int] = defaultdict(int)
        free_at: dict[str, list[float]] = defaultdict(list)
        for p in self.other_pods:
            if p.node and not p.terminated:
                used[p.node] += p.gpus
        for key, pods in self.pods_by_job.items():
            job = self.jobs.get(key)
            current = job.attempts if job is not None and job.phase in ACTIVE else None
            plan = job.plan if job is not None else None
            bound: set[int] = set()
            for p in pods:
                if p.node and p.attempt == current and p.rank is not None:
                    bound.add(p.rank)  # its GPU is counted (or freed) by the pod itself
                if p.node and not p.terminated:
                    used[p.node] += p.gpus
                    if p.attempt == current and plan:
                        free_at[p.node].append(_finish(plan))
            if current is not None and plan:
                for rank, node in enumerate(plan.get("nodes") or []):
                    if rank not in bound:
                        used[node] += 1
                        free_at[node].append(_finish(plan))
        for key, job in self.jobs.items():
            if key not in self.pods_by_job and job.phase in ACTIVE and job.plan:
                for node in job.plan.get("nodes") or []:
                    used[node] += 1
                    free_at[node].append(_finish(job.plan))
        return dict(used), dict(free_at)

    def node_infos(self) -> list[api.NodeInfo]:
        """What the policy may plan on: Ready, schedulable nodes with at least one GPU."""
        used, free_at = self.gpu_usage()
        out = []
        for n in sorted(self.nodes.values(), key=lambda n: n.name):
            if n.gpus_total <= 0 or not n.schedulable:
                continue
            total = min(n.gpus_total, 64)
            out.append(api.NodeInfo(
                name=n.name, gpu_product=n.gpu_product, gpus_total=total,
                gpus_free=max(0, total - used.get(n.name, 0)), ready=n.ready,
                gpu_free_at=sorted(free_at.get(n.name, []))[:total], cached_models=list(n.cached_models),
            ))
        return out


def _finish(plan: Obj) -> float:
    started = kube.parse_time(plan.get("plannedAt")) or 0.0
    return started + float(plan.get("predictedLatencySeconds") or 0.0)


# --------------------------------------------------------------------------- from API objects


def gpu_request(pod: Obj) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        v = (res.get("limits") or {}).get(api.GPU_RESOURCE) or (res.get("requests") or {}).get(api.GPU_RESOURCE)
        if v is not None:
            try:
                total += int(str(v))
            except ValueError:
                pass
    return total


def is_relevant_pod(pod: Obj) -> bool:
    """Pods the operator keeps: its own, and any that holds GPUs."""
    labels = pod.get("metadata", {}).get("labels") or {}
    return api.LABEL_POD_GROUP in labels or gpu_request(pod) > 0


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def pod_view(pod: Obj) -> PodView:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    spec = pod.get("spec") or {}
    st = pod.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or []}
    sched = conds.get("PodScheduled") or {}
    reason, message = str(st.get("reason") or ""), str(st.get("message") or "")
    cannot_start = ""
    for cs in st.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode"):
            reason = reason or str(term.get("reason") or "")
            message = message or str(term.get("message") or f"exit code {term.get('exitCode')}")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CANNOT_START and not cannot_start:
            cannot_start = f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
    return PodView(
        namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""),
        job=labels.get(api.LABEL_POD_GROUP), rank=_int(labels.get(api.LABEL_RANK)),
        attempt=_int(labels.get(api.LABEL_ATTEMPT)), node=str(spec.get("nodeName") or ""),
        phase=str(st.get("phase") or "Pending"), gated=bool(spec.get("schedulingGates")),
        deleting=bool(meta.get("deletionTimestamp")), gpus=gpu_request(pod),
        model=(meta.get("annotations") or {}).get(api.ANNOTATION_MODEL), reason=reason, message=message,
        unschedulable=sched.get("status") == "False" and sched.get("reason") == "Unschedulable",
        cannot_start=cannot_start,
    )


CANNOT_START = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                          "CreateContainerError"})
"""Container waiting reasons that last until someone fixes the pod's image or configuration."""


def _tolerated(taint: Obj, tolerations: Iterable[Obj]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def node_view(node: Obj, tolerations: Iterable[Obj] = ()) -> NodeView:
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    st = node.get("status") or {}
    condition = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
    ready = condition.get("status") == "True"
    taints = [t for t in spec.get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")]
    tol = list(tolerations)
    schedulable = not spec.get("unschedulable") and all(_tolerated(t, tol) for t in taints)
    gpus = _int((st.get("allocatable") or {}).get(api.GPU_RESOURCE)) or 0
    cached = (meta.get("annotations") or {}).get(api.ANNOTATION_CACHED_MODELS) or ""
    return NodeView(
        name=str(meta.get("name") or ""), gpus_total=gpus, ready=ready, schedulable=schedulable,
        gpu_product=str((meta.get("labels") or {}).get(api.GPU_PRODUCT_LABEL) or ""),
        cached_models=tuple(m for m in (s.strip() for s in cached.split(",")) if m),
        not_ready_since=None if ready else kube.parse_time(condition.get("lastTransitionTime")),
    )


def job_view(job: Obj) -> JobView:
    meta = job.get("metadata") or {}
    return JobView(
        namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        created=kube.parse_time(meta.get("creationTimestamp")) or 0.0, body=job,
    )


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class ViewCache:
    """The views of the last snapshot, reused for API objects that did not change.

    The read cache replaces an object's dict whenever it changes, so identity tells a
    changed object from an unchanged one. A dispatcher builds several snapshots a cycle
    over thousands of pods; most are the same objects as last time."""

    def __init__(self) -> None:
        self._views: dict[int, tuple[Obj, Any]] = {}
        self._next: dict[int, tuple[Obj, Any]] = {}

    def view(self, obj: Obj, make: Callable[[Obj], V]) -> V:
        hit = self._views.get(id(obj))
        v: V = hit[1] if hit is not None and hit[0] is obj else make(obj)
        self._next[id(obj)] = (obj, v)
        return v

    def swap(self) -> None:
        """End of a build: keep only the objects it saw."""
        self._views, self._next = self._next, {}


def build(nodes: Iterable[Obj], pods: Iterable[Obj], jobs: Iterable[Obj], now: float,
          node_selector: Mapping[str, str] | None = None, tolerations: Iterable[Obj] = (),
          cache: ViewCache | None = None) -> ClusterSnapshot:
    """The snapshot of these API objects at ``now`` (Unix seconds). ``cache`` must be used
    with the same selector and tolerations every time."""
    tol = list(tolerations)
    selector = node_selector or {}
    views = cache or ViewCache()
    node_views = {}
    ready_unselected = set()
    for n in nodes:
        v = views.view(n, lambda o: node_view(o, tol))
        if _matches((n.get("metadata") or {}).get("labels") or {}, selector):
            node_views[v.name] = v
        elif v.ready:
            ready_unselected.add(v.name)
    job_views: dict[tuple[str, str], JobView] = {}
    for j in jobs:
        jv = views.view(j, job_view)
        job_views[jv.key] = jv
    by_job: dict[tuple[str, str], list[PodView]] = defaultdict(list)
    others: list[PodView] = []
    models_on: dict[str, set[str]] = defaultdict(set)
    for p in pods:
        pv = views.view(p, pod_view)
        if pv.job is not None:
            by_job[(pv.namespace, pv.job)].append(pv)
            if pv.node and pv.model and pv.phase in ("Running", "Succeeded"):
                models_on[pv.node].add(pv.model)  # it ran there: the node's cache holds it
        elif pv.gpus > 0:
            others.append(pv)
    for name, models in models_on.items():
        if name in node_views:
            nv = node_views[name]
            node_views[name] = dataclasses.replace(
                nv, cached_models=tuple(sorted(set(nv.cached_models) | models)))
    views.swap()
    return ClusterSnapshot(
        now=now, nodes=node_views, jobs=job_views,
        pods_by_job={k: tuple(sorted(v, key=lambda p: (p.rank if p.rank is not None else -1, p.name)))
                     for k, v in by_job.items()},
        other_pods=tuple(others), ready_unselected=frozenset(ready_unselected),
    )
