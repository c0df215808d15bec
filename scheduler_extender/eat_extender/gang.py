"""The gang guard: a pod group is placed whole or not at all.

kube-scheduler places pods one at a time, so without help a group of k patches could get some
members bound (holding GPUs) while the rest cannot fit, and the job would hold GPUs and never
run. The guard admits a member only if every member still to place fits on its planned node
(``ANNOTATION_GROUP_NODES``), counting the members already bound; otherwise every member waits.

Admitting a member also holds back, for a short while (``Settings.gang_hold_s``), the GPUs its
group's remaining members need: other pods and other groups see those GPUs as taken, so the
rest of the group cannot be squeezed out between two scheduling cycles. The hold ends when the
group's members are all bound (its remaining demand is then zero) or when it expires.

A group without per-rank plan is checked in aggregate: enough GPU slots across the cluster for
its members still to place. Such groups hold nothing (there is no node to hold on).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from eat_policy import api

from eat_extender import state


def held_gpus(cluster: state.ClusterState, now: float, exclude_group: str | None = None) -> dict[str, int]:
    """GPUs per node held for admitted groups (other than ``exclude_group``) at monotonic time ``now``."""
    held: dict[str, int] = {}
    for key, (until, gpus, todo) in cluster.admitted_demand.items():
        if key == exclude_group or until <= now:
            continue
        for node, members in todo.items():
            held[node] = held.get(node, 0) + members * gpus
    return held


@dataclasses.dataclass(frozen=True, slots=True)
class Shortfall:
    node: str
    members: int
    """Members of the group still to place on this node (the asking pod included)."""
    gpus_needed: int
    gpus_free: int
    """Free for this group: allocatable − requested − held for other groups."""
    known: bool = True
    usable: bool = True
    """False: cordoned, not Ready or tainted against the group, so it cannot be bound there now."""


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    fits: bool
    message: str = ""
    """Why the group waits, for a person (empty when it fits)."""
    shortfalls: tuple[Shortfall, ...] = ()


def check(pod: state.PodView, cluster: state.ClusterState, held: Mapping[str, int]) -> Verdict:
    """Does the whole of ``pod``'s group still fit? ``held``: GPUs held for other groups."""
    if not pod.is_gang or pod.gpus <= 0:
        return Verdict(True)
    assert pod.group is not None
    group = cluster.groups.get(pod.group)
    bound = group.bound_slots if group else ()
    if pod.group_nodes:
        return _check_planned(pod, cluster, held, bound)
    return _check_aggregate(pod, cluster, held, bound)


def _check_planned(pod: state.PodView, cluster: state.ClusterState, held: Mapping[str, int],
                   bound: tuple[str, ...]) -> Verdict:
    todo = state.remaining_plan(pod.group_nodes, bound)
    if pod.planned_node and todo[pod.planned_node] == 0:
        # The plan says this node's share of the group is already bound: one more would be
        # beyond the plan (a duplicate member). Count this pod anyway so it needs a GPU.
        todo[pod.planned_node] = 1
    shortfalls = []
    for node, members in sorted(todo.items()):
        need = members * pod.gpus
        ns = cluster.nodes.get(node)
        if ns is None:
            shortfalls.append(Shortfall(node, members, need, 0, known=False))
            continue
        takes = ns.takes(pod)
        free = (ns.gpus_free if takes else 0) - held.get(node, 0)
        if free < need:
            shortfalls.append(Shortfall(node, members, need, max(free, 0), usable=takes))
    if not shortfalls:
        return Verdict(True)
    parts = [
        f"node {s.node} is not in the cluster" if not s.known
        else f"node {s.node} is cordoned, not Ready or tainted against the group" if not s.usable
        else f"node {s.node} needs {s.gpus_needed} {api.GPU_RESOURCE} for {s.members} member(s), {s.gpus_free} free"
        for s in shortfalls
    ]
    placed = len(pod.group_nodes) - sum(todo.values())
    return Verdict(False, f"{placed}/{pod.group_size} placed; " + "; ".join(parts), tuple(shortfalls))


def _check_aggregate(pod: state.PodView, cluster: state.ClusterState, held: Mapping[str, int],
                     bound: tuple[str, ...]) -> Verdict:
    todo = max(pod.group_size - len(bound), 1)
    slots = 0
    for ns in cluster.nodes.values():
        if ns.takes(pod):
            slots += max(ns.gpus_free - held.get(ns.name, 0), 0) // pod.gpus
        if slots >= todo:
            return Verdict(True)
    return Verdict(False, f"{len(bound)}/{pod.group_size} placed; {todo} member(s) of {pod.gpus} "
                          f"{api.GPU_RESOURCE} need placing, the cluster has room for {slots}")

