"""The filter verb: which of the scheduler's candidate nodes a pod may go to, and why not.

- A planned pod (``ANNOTATION_PLANNED_NODE``) passes only its planned node, and only if that
  node has the GPUs it requests free (GPUs held for other admitted groups count as taken) and,
  for a gang member, only if the gang guard admits its whole group.
- An unplanned pod passes every node, except nodes whose free GPUs are held for admitted
  groups; an unplanned gang member waits if its group cannot fit anywhere in aggregate.
- A pod whose plan cannot be read is held everywhere, with the problem as the reason.

Every rejected node gets a reason a person can read in the pod's FailedScheduling event.
Reasons that apply to many nodes are worded identically so kube-scheduler folds them into one
line ("999 eat-extender: pod is planned for node gpu-7"). Nodes the pod can never use go to
``FailedAndUnresolvableNodes``, so the scheduler's preemption does not evict pods there for
nothing; only a full planned node is ``FailedNodes`` (preempting there can help).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from eat_policy import api

from eat_extender import gang, state

PREFIX = "eat-extender: "


class Reason(enum.StrEnum):
    """Why a node was rejected; the values are the ``reason`` label of the rejection metric."""

    NOT_PLANNED_NODE = "not_planned_node"
    PLANNED_NODE_FULL = "planned_node_full"
    PLANNED_NODE_UNKNOWN = "planned_node_unknown"
    GANG_WAITING = "gang_waiting"
    HELD_FOR_GANG = "held_for_gang"
    INVALID_POD = "invalid_pod"


class Kind(enum.StrEnum):
    """What sort of pod was decided on (the ``kind`` label of the decision metric)."""

    PLANNED = "planned"
    UNPLANNED = "unplanned"
    INVALID = "invalid"


@dataclasses.dataclass(frozen=True)
class Decision:
    kind: Kind
    passed: tuple[str, ...]
    failed: Mapping[str, str]
    """Node -> reason, may pass after a preemption (``FailedNodes``)."""
    unresolvable: Mapping[str, str]
    """Node -> reason, cannot pass for this pod (``FailedAndUnresolvableNodes``)."""
    rejections: Mapping[Reason, int]
    """Rejected nodes per reason."""
    admit_group: str | None = None
    """A gang member passed: hold the rest of its group's GPUs (``cache.admit``)."""
    verdict: gang.Verdict | None = None
    """The gang guard's verdict, when it was asked."""

    @property
    def short_nodes(self) -> tuple[str, ...]:
        """Known nodes whose free GPUs, as the extender sees them, held the pod back.

        The extender's view can trail kube-scheduler's by the watch's latency: a GPU freed a
        moment ago may still look taken. The route re-reads these nodes before it answers.
        """
        if self.passed:
            return ()
        nodes = list(self.failed) if Reason.PLANNED_NODE_FULL in self.rejections else []
        if self.verdict is not None:
            nodes += [s.node for s in self.verdict.shortfalls if s.known]
        return tuple(dict.fromkeys(nodes))


def decide(pod: state.PodView, candidates: Sequence[str], cluster: state.ClusterState, now: float) -> Decision:
    """Filter ``candidates`` for ``pod`` against ``cluster`` at monotonic time ``now``."""
    if pod.problems:
        msg = PREFIX + "cannot place the pod: " + "; ".join(pod.problems)
        return _reject_all(Kind.INVALID, candidates, msg, Reason.INVALID_POD)
    held = gang.held_gpus(cluster, now, exclude_group=pod.group)
    if pod.planned_node:
        return _planned(pod, pod.planned_node, candidates, cluster, held)
    return _unplanned(pod, candidates, cluster, held)


def _planned(pod: state.PodView, planned: str, candidates: Sequence[str], cluster: state.ClusterState,
             held: Mapping[str, int]) -> Decision:
    elsewhere = PREFIX + f"pod is planned for node {planned}"
    unresolvable = dict.fromkeys(candidates, elsewhere)
    is_candidate = unresolvable.pop(planned, None) is not None
    rejections = {Reason.NOT_PLANNED_NODE: len(unresolvable)} if unresolvable else {}
    if not is_candidate:
        return _decision(Kind.PLANNED, (), {}, unresolvable, rejections)

    ns = cluster.nodes.get(planned)
    failed: dict[str, str] = {}
    reason: Reason | None = None
    verdict: gang.Verdict | None = None
    if ns is None:
        reason = Reason.PLANNED_NODE_UNKNOWN
        failed[planned] = PREFIX + f"planned node {planned} is not (yet) in the extender's view of the cluster"
    elif pod.gpus > 0 and ns.gpus_free - held.get(planned, 0) < pod.gpus:
        reason = Reason.PLANNED_NODE_FULL
        held_here = held.get(planned, 0)
        free = max(ns.gpus_free - held_here, 0)
        extra = f" ({held_here} more held for pod groups being placed)" if held_here else ""
        failed[planned] = (PREFIX + f"planned node {planned} has {free} free {api.GPU_RESOURCE}{extra}, "
                           f"the pod needs {pod.gpus}")
    elif pod.is_gang:
        verdict = gang.check(pod, cluster, held)
        if not verdict.fits:
            reason = Reason.GANG_WAITING
            # Preempting on one node cannot make a whole group fit: unresolvable.
            unresolvable[planned] = PREFIX + f"pod group {pod.group} waits to be placed whole: {verdict.message}"
    if reason is not None:
        rejections[reason] = 1
        return _decision(Kind.PLANNED, (), failed, unresolvable, rejections, gang_verdict=verdict)
    return _decision(Kind.PLANNED, (planned,), {}, unresolvable, rejections,
                     admit_group=pod.group if pod.is_gang else None, gang_verdict=verdict)


def _unplanned(pod: state.PodView, candidates: Sequence[str], cluster: state.ClusterState,
               held: Mapping[str, int]) -> Decision:
    verdict: gang.Verdict | None = None
    if pod.is_gang:
        verdict = gang.check(pod, cluster, held)
        if not verdict.fits:
            msg = PREFIX + f"pod group {pod.group} waits to be placed whole: {verdict.message}"
            return _reject_all(Kind.UNPLANNED, candidates, msg, Reason.GANG_WAITING, verdict)
    if pod.gpus <= 0 or not held:
        return _decision(Kind.UNPLANNED, tuple(candidates), {}, {}, {}, gang_verdict=verdict)
    passed: list[str] = []
    failed: dict[str, str] = {}
    msg = PREFIX + f"free {api.GPU_RESOURCE} on the node are held for pod groups being placed"
    for name in candidates:
        ns = cluster.nodes.get(name)
        on_hold = held.get(name, 0)
        # Only a hold makes us stricter than the scheduler's own resource fit: when our watch
        # says "full" without one, the scheduler (which saw the node fit, counting the pods it
        # is binding) knows better than our view.
        if ns is None or not on_hold or ns.gpus_free - on_hold >= pod.gpus:
            passed.append(name)
        else:
            failed[name] = msg
    rejections = {Reason.HELD_FOR_GANG: len(failed)} if failed else {}
    return _decision(Kind.UNPLANNED, tuple(passed), failed, {}, rejections, gang_verdict=verdict)


def _reject_all(kind: Kind, candidates: Sequence[str], msg: str, reason: Reason,
                verdict: gang.Verdict | None = None) -> Decision:
    unresolvable = dict.fromkeys(candidates, msg)
    return _decision(kind, (), {}, unresolvable, {reason: len(unresolvable)} if unresolvable else {},
                     gang_verdict=verdict)


def _decision(kind: Kind, passed: tuple[str, ...], failed: dict[str, str], unresolvable: dict[str, str],
              rejections: dict[Reason, int], admit_group: str | None = None,
              gang_verdict: gang.Verdict | None = None) -> Decision:
    return Decision(kind, passed, MappingProxyType(failed), MappingProxyType(unresolvable),
                    MappingProxyType(rejections), admit_group, gang_verdict)
