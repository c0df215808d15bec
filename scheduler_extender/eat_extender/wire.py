"""The kube-scheduler extender wire format, with the Go field names.

kube-scheduler (``k8s.io/kube-scheduler/extender/v1``) sends ``ExtenderArgs`` to the filter and
prioritize verbs and expects ``ExtenderFilterResult`` and ``HostPriorityList`` back. Those Go
structs have no json tags, so the JSON keys are the Go field names (``Pod``, ``NodeNames``,
``FailedNodes``, ``Host``, ``Score``); the aliases below carry them and the Python attributes
are snake_case. The ``Pod`` inside is a ``v1.Pod`` in its usual JSON form: only the fields the
extender reads are modelled, everything else is ignored.

The same ``Pod`` and ``Node`` models parse the objects of the watch (``watching``), so a pod is
read one way whether the scheduler sent it or the API server did.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic_core import to_json

MAX_EXTENDER_PRIORITY = 10
"""``extenderv1.MaxExtenderPriority``: scores are 0..10, scaled by the scheduler."""


class _Kube(BaseModel):
    """Part of a Kubernetes object: unknown fields ignored, camelCase names by alias."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


Quantity = str | int | float
"""A resource.Quantity as JSON: a string ("1", "500m", "8Gi"); numbers are tolerated."""


class ResourceRequirements(_Kube):
    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class Container(_Kube):
    name: str = ""
    resources: ResourceRequirements | None = None
    restart_policy: str | None = Field(default=None, alias="restartPolicy")
    """Only set on init containers: ``Always`` makes it a sidecar."""


class ObjectMeta(_Kube):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    resource_version: str = Field(default="", alias="resourceVersion")
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")


class Toleration(_Kube):
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""


class Taint(_Kube):
    key: str = ""
    value: str = ""
    effect: str = ""


class PodSpec(_Kube):
    containers: list[Container] = Field(default_factory=list)
    tolerations: list[Toleration] | None = None
    init_containers: list[Container] | None = Field(default=None, alias="initContainers")
    node_name: str | None = Field(default=None, alias="nodeName")
    scheduler_name: str | None = Field(default=None, alias="schedulerName")


class PodStatus(_Kube):
    phase: str | None = None


class Pod(_Kube):
    metadata: ObjectMeta
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus | None = None


class NodeSpec(_Kube):
    unschedulable: bool = False
    taints: list[Taint] | None = None


class NodeCondition(_Kube):
    type: str
    status: str


class NodeStatus(_Kube):
    allocatable: dict[str, Quantity] | None = None
    capacity: dict[str, Quantity] | None = None
    conditions: list[NodeCondition] | None = None


class Node(_Kube):
    metadata: ObjectMeta
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus | None = None


class NodeList(_Kube):
    """``v1.NodeList`` as sent when ``nodeCacheCapable`` is false.

    Items stay raw: kube-scheduler builds its NodeInfos from the objects in the *answer*, so
    the filter must echo the nodes it keeps unchanged, every field included.
    """

    items: list[dict[str, Any]] = Field(default_factory=list)


class ExtenderArgs(_Kube):
    """Request body of the filter and prioritize verbs (``extenderv1.ExtenderArgs``)."""

    pod: Pod = Field(alias="Pod")
    nodes: NodeList | None = Field(default=None, alias="Nodes")
    """Candidate nodes, only when the extender is not ``nodeCacheCapable``."""
    node_names: list[str] | None = Field(default=None, alias="NodeNames")
    """Candidate node names, only when the extender is ``nodeCacheCapable`` (our setting)."""

    def candidate_names(self) -> list[str]:
        """The candidates' names, whichever form the scheduler sent; ValueError if neither."""
        if self.node_names is not None:
            return self.node_names
        if self.nodes is not None:
            return [_item_name(item) for item in self.nodes.items]
        raise ValueError("ExtenderArgs has neither NodeNames nor Nodes")


def _item_name(item: dict[str, Any]) -> str:
    meta = item.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError("a node in Nodes.items has no metadata.name")
    return name


class _Result(BaseModel):
    """A response: always serialised with the Go field names."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ExtenderFilterResult(_Result):
    """Response of the filter verb (``extenderv1.ExtenderFilterResult``).

    kube-scheduler reads ``Error`` first: non-empty means the call failed (an ``ignorable``
    extender is then skipped for this pod). ``FailedNodes`` may pass after a preemption;
    ``FailedAndUnresolvableNodes`` cannot (preemption will not touch them). Each value is the
    reason a person reads in the pod's FailedScheduling event.
    """

    nodes: NodeList | None = Field(default=None, alias="Nodes")
    node_names: list[str] | None = Field(default=None, alias="NodeNames")
    failed_nodes: dict[str, str] = Field(default_factory=dict, alias="FailedNodes")
    failed_and_unresolvable_nodes: dict[str, str] = Field(default_factory=dict, alias="FailedAndUnresolvableNodes")
    error: str = Field(default="", alias="Error")


class HostPriority(_Result):
    host: str = Field(alias="Host")
    score: int = Field(alias="Score", ge=0, le=MAX_EXTENDER_PRIORITY)


class HostPriorityList(RootModel[list[HostPriority]]):
    """Response of the prioritize verb (``extenderv1.HostPriorityList``)."""


class ErrorBody(_Result):
    """Body of a 4xx answer (prioritize only: the filter reports errors in its result)."""

    error: str = Field(alias="Error")


def host_priority_list_json(scores: Iterable[tuple[str, int]]) -> bytes:
    """A HostPriorityList as JSON, without building a model per node (thousands per call).

    Same bytes as ``HostPriorityList([...]).model_dump_json()``; a unit test holds them equal.
    """
    return to_json([{"Host": host, "Score": score} for host, score in scores])
