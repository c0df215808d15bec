"""What the extender knows about the cluster, as frozen values the decisions are functions of.

``ClusterState`` is a snapshot: nodes with their free GPUs (allocatable ``nvidia.com/gpu``
minus the requests of non-terminated pods bound there), pod groups with their plan and the
members already bound, and the groups the gang guard has admitted (their remaining members'
GPUs are held back from other pods until the admission expires). ``cache`` keeps one up to
date from the watch; tests and the benchmark build one with ``build``.

``PodView`` is what the decisions read from a pod: its GPU request, its plan (planned node,
pod group, group size, the planned node of every rank) and its model. Annotations that cannot
be read become ``problems`` rather than exceptions, so a bad pod is reported, not crashed on.
The keys are the contracts of ``eat_policy.api``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from eat_policy import api

from eat_extender import wire

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}


def parse_count(value: wire.Quantity) -> int:
    """A resource.Quantity of a countable resource (GPUs) as an int, rounded up.

    Raises ValueError naming the value when it is not a quantity.
    """
    if isinstance(value, bool):
        raise ValueError(f"quantity {value!r} is not a number")  # noqa: TRY004 - callers catch ValueError
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        else:
            m = _QUANTITY.match(value.strip())
            if not m or m.group(2) not in _SUFFIX:
                raise ValueError(f"quantity {value!r} is not a Kubernetes quantity")
            number = float(m.group(1)) * _SUFFIX[m.group(2)]
    except OverflowError:
        raise ValueError(f"quantity {str(value)[:40]!r} is out of range") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"quantity {value!r} is not a non-negative number")
    return math.ceil(number - 1e-9)


def _container_gpus(c: wire.Container) -> int:
    r = c.resources
    if r is None:
        return 0
    # Extended resources: requests default to limits and must equal them when both are set.
    for source in (r.requests, r.limits):
        if source and api.GPU_RESOURCE in source:
            return parse_count(source[api.GPU_RESOURCE])
    return 0


def gpu_request(spec: wire.PodSpec) -> int:
    """The pod's effective ``nvidia.com/gpu`` request, as kube-scheduler computes it.

    max(app containers + sidecars, each regular init container + the sidecars started before
    it). Sidecars are init containers with ``restartPolicy: Always``.
    """
    sidecars = 0
    init_peak = 0
    for c in spec.init_containers or ():
        n = _container_gpus(c)
        if c.restart_policy == "Always":
            sidecars += n
        else:
            init_peak = max(init_peak, sidecars + n)
    return max(sum(_container_gpus(c) for c in spec.containers) + sidecars, init_peak)


@dataclasses.dataclass(frozen=True, slots=True)
class PodView:
    """The parts of a pod the extender decides on."""

    namespace: str
    name: str
    gpus: int
    """Effective ``nvidia.com/gpu`` request."""
    node_name: str = ""
    """The node it is bound to; empty while pending."""
    terminated: bool = False
    """Succeeded or Failed: bound but holding no GPU any more."""
    group: str | None = None
    """``namespace/pod-group``: the gang it belongs to (label ``LABEL_POD_GROUP``)."""
    group_size: int = 1
    """How many members the gang has (``ANNOTATION_GROUP_SIZE``); 1 when not a gang."""
    group_nodes: tuple[str, ...] = ()
    """Planned node of every rank, rank order (``ANNOTATION_GROUP_NODES``); may be empty."""
    planned_node: str | None = None
    """``ANNOTATION_PLANNED_NODE``: the only node this pod may go to."""
    model: str | None = None
    """``ANNOTATION_MODEL``: unplanned pods prefer nodes that cache it."""
    problems: tuple[str, ...] = ()
    """Annotations or requests that could not be read, as messages for a person."""
    tolerations: tuple[wire.Toleration, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def is_gang(self) -> bool:
        return self.group is not None and self.group_size > 1


def pod_view(pod: wire.Pod) -> PodView:
    """Read a pod (from the scheduler or the watch) into a PodView; never raises."""
    meta = pod.metadata
    labels = meta.labels or {}
    notes = meta.annotations or {}
    problems: list[str] = []

    try:
        gpus = gpu_request(pod.spec)
    except ValueError as e:
        problems.append(f"{api.GPU_RESOURCE} request: {e}")
        gpus = 0

    group_label = labels.get(api.LABEL_POD_GROUP)
    attempt = labels.get(api.LABEL_ATTEMPT)
    # Each attempt of a job is a gang of its own: a retry's members must not be counted with
    # the last attempt's, whose pods may still be terminating (or its plan used for holds).
    group = f"{meta.namespace}/{group_label}" + (f"#{attempt}" if attempt else "") if group_label else None

    group_size = 1
    raw_size = notes.get(api.ANNOTATION_GROUP_SIZE)
    if raw_size is not None:
        try:
            group_size = int(raw_size)
            if group_size < 1:
                raise ValueError
        except ValueError:
            problems.append(f"annotation {api.ANNOTATION_GROUP_SIZE}={raw_size!r} is not a positive integer")
            group_size = 1

    group_nodes: tuple[str, ...] = ()
    raw_nodes = notes.get(api.ANNOTATION_GROUP_NODES)
    if raw_nodes is not None:
        group_nodes = tuple(n.strip() for n in raw_nodes.split(",") if n.strip())
        if raw_size is not None and group_nodes and len(group_nodes) != group_size:
            problems.append(
                f"annotation {api.ANNOTATION_GROUP_NODES} lists {len(group_nodes)} nodes "
                f"but {api.ANNOTATION_GROUP_SIZE} is {group_size}"
            )
        elif raw_size is None:
            group_size = max(len(group_nodes), 1)
    if group_size > 1 and group is None:
        problems.append(f"a pod group of {group_size} needs the label {api.LABEL_POD_GROUP}")

    planned = (notes.get(api.ANNOTATION_PLANNED_NODE) or "").strip() or None
    if planned and group_nodes and planned not in group_nodes:
        problems.append(
            f"planned node {planned} is not among the group's planned nodes ({','.join(group_nodes)})"
        )

    return PodView(
        namespace=meta.namespace,
        name=meta.name,
        gpus=gpus,
        node_name=pod.spec.node_name or "",
        terminated=bool(pod.status and pod.status.phase in TERMINAL_PHASES),
        group=group,
        group_size=group_size,
        group_nodes=group_nodes,
        planned_node=planned,
        model=(notes.get(api.ANNOTATION_MODEL) or "").strip() or None,
        problems=tuple(problems),
        tolerations=tuple(pod.spec.tolerations or ()),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class NodeState:
    name: str
    gpus_allocatable: int
    gpus_requested: int = 0
    """Sum of the GPU requests of non-terminated pods bound to the node."""
    cached_models: frozenset[str] = frozenset()
    """``ANNOTATION_CACHED_MODELS``, written by the node agent."""
    usable: bool = True
    """Not cordoned, and Ready (or not saying): kube-scheduler would place nothing on it."""
    taints: tuple[wire.Taint, ...] = ()
    """Its NoSchedule and NoExecute taints: pods that do not tolerate one never land there."""

    @property
    def gpus_free(self) -> int:
        return max(self.gpus_allocatable - self.gpus_requested, 0)

    def takes(self, pod: PodView) -> bool:
        """Whether kube-scheduler would bind ``pod`` (or a member of its group) here at all."""
        return self.usable and all(tolerates(pod, t) for t in self.taints)


def tolerates(pod: PodView, taint: wire.Taint) -> bool:
    """The scheduler's rule: a toleration matches the taint's effect (or all), and its key and
    value (``Exists``: any value; no key: every taint)."""
    for t in pod.tolerations:
        if t.effect and t.effect != taint.effect:
            continue
        if t.operator == "Exists" and (not t.key or t.key == taint.key):
            return True
        if t.key == taint.key and t.value == taint.value:
            return True
    return False


def node_state(node: wire.Node, gpus_requested: int = 0) -> NodeState:
    """Read a node; an unreadable GPU quantity counts as no GPUs (the node cannot take GPU pods)."""
    allocatable = (node.status.allocatable if node.status else None) or {}
    try:
        gpus = parse_count(allocatable[api.GPU_RESOURCE]) if api.GPU_RESOURCE in allocatable else 0
    except ValueError:
        gpus = 0
    raw = (node.metadata.annotations or {}).get(api.ANNOTATION_CACHED_MODELS, "")
    conditions = (node.status.conditions if node.status else None) or []
    ready = next((c.status == "True" for c in conditions if c.type == "Ready"), True)
    return NodeState(
        name=node.metadata.name,
        gpus_allocatable=gpus,
        gpus_requested=gpus_requested,
        cached_models=frozenset(m.strip() for m in raw.split(",") if m.strip()),
        usable=ready and not node.spec.unschedulable,
        taints=tuple(t for t in node.spec.taints or () if t.effect in ("NoSchedule", "NoExecute")),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class GroupState:
    """A pod group as seen in the watched pods."""

    key: str
    plan: tuple[str, ...]
    """Planned node of every rank (from a member's ``ANNOTATION_GROUP_NODES``)."""
    gpus_per_member: int
    bound_slots: tuple[str, ...]
    """The planned node of every member already bound (its bound node when it has no plan),
    terminated members included, sorted: the plan slots those members have used up."""
    members: int
    """Members that exist (bound or not)."""


def group_state(key: str, members: Iterable[PodView]) -> GroupState:
    ms = list(members)
    plans = [m.group_nodes for m in ms if m.group_nodes]
    return GroupState(
        key=key,
        # Members of one group carry one plan; if they ever disagree, pick one deterministically.
        plan=max(plans) if plans else (),
        gpus_per_member=max((m.gpus for m in ms), default=0),
        bound_slots=tuple(sorted(_slot(m) for m in ms if m.node_name)),
        members=len(ms),
    )


def _slot(member: PodView) -> str:
    # The extender is ignorable, so kube-scheduler may bind a member off its plan (extender down
    # or timing out). It still fills its own rank: counting it on the node it landed on would
    # leave its planned node waiting, or holding a GPU, for a member that will never come.
    return member.planned_node or member.node_name


def remaining_plan(plan: Iterable[str], bound_slots: Iterable[str]) -> collections.Counter[str]:
    """Members still to place per planned node: the plan minus the slots bound members use."""
    return collections.Counter(plan) - collections.Counter(bound_slots)


@dataclasses.dataclass(frozen=True)
class ClusterState:
    nodes: Mapping[str, NodeState]
    groups: Mapping[str, GroupState] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    admissions: Mapping[str, float] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """Group key -> monotonic time until which its unbound members' GPUs are held for it."""
    synced: bool = True
    """False until the first list of nodes and pods has been read."""

    @functools.cached_property
    def admitted_demand(self) -> Mapping[str, tuple[float, int, Mapping[str, int]]]:
        """Admitted group -> (hold deadline, GPUs per member, members still to place per node).

        Computed once per snapshot: every request of the snapshot's lifetime reuses it.
        """
        out = {}
        for key, until in self.admissions.items():
            group = self.groups.get(key)
            if group is not None and group.gpus_per_member > 0:
                out[key] = (until, group.gpus_per_member, dict(remaining_plan(group.plan, group.bound_slots)))
        return MappingProxyType(out)


def build(nodes: Iterable[wire.Node], pods: Iterable[wire.Pod],
          admissions: Mapping[str, float] | None = None, synced: bool = True) -> ClusterState:
    """A ClusterState from whole objects, in one pass (tests, benchmark; ``cache`` does it incrementally)."""
    views = [pod_view(p) for p in pods]
    requested: collections.Counter[str] = collections.Counter()
    members: dict[str, list[PodView]] = collections.defaultdict(list)
    for v in views:
        if v.node_name and not v.terminated:
            requested[v.node_name] += v.gpus
        if v.group:
            members[v.group].append(v)
    node_states = {}
    for n in nodes:
        ns = node_state(n)
        node_states[ns.name] = dataclasses.replace(ns, gpus_requested=requested[ns.name])
    return ClusterState(
        nodes=MappingProxyType(node_states),
        groups=MappingProxyType({k: group_state(k, ms) for k, ms in members.items()}),
        admissions=MappingProxyType(dict(admissions or {})),
        synced=synced,
    )
