"""The extender's own view of the cluster, kept up to date from the watch, read as snapshots.

``watching`` feeds it node and pod objects (whole lists after a (re)list, single objects from
watch events); request handlers read ``snapshot()``, a frozen ``state.ClusterState`` that is
rebuilt only after something changed. Updates are incremental: a pod event touches the GPU
count of at most two nodes and at most two pod groups, so a busy cluster of thousands of
nodes costs a dict copy per snapshot, not a recount.

It also records the gang guard's admissions (``admit``), which the snapshot carries until they
expire. Thread-safe: one lock, held only for dict updates and copies.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import MappingProxyType

from eat_extender import metrics, state, wire

log = logging.getLogger(__name__)

NODES, PODS = "nodes", "pods"
ADMIT_RESOLUTION_S = 1.0


class ClusterCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._nodes: dict[str, state.NodeState] = {}
        self._pods: dict[str, state.PodView] = {}
        self._requested: collections.Counter[str] = collections.Counter()
        self._members: dict[str, dict[str, state.PodView]] = {}
        self._groups: dict[str, state.GroupState] = {}
        self._admissions: dict[str, float] = {}
        self._synced: set[str] = set()
        self._snapshot: state.ClusterState | None = None
        self._reads: dict[int, set[str] | None] = {}
        """Per node re-read in flight: the pods watch events touched since it began (None: a re-list)."""
        self._last_read = 0

    # ------------------------------------------------------------------ reads

    def snapshot(self) -> state.ClusterState:
        """The current state; the same object until something changes or an admission expires."""
        now = self._clock()
        with self._lock:
            expired = [g for g, until in self._admissions.items() if until <= now]
            for g in expired:
                del self._admissions[g]
            unplaced = {g: n for g in expired if (n := self._unplaced(g))}
            if self._snapshot is None or expired:
                self._snapshot = state.ClusterState(
                    nodes=MappingProxyType(dict(self._nodes)),
                    groups=MappingProxyType(dict(self._groups)),
                    admissions=MappingProxyType(dict(self._admissions)),
                    synced=self._synced >= {NODES, PODS},
                )
            snapshot = self._snapshot
        for g, n in unplaced.items():
            metrics.gang_holds_expired.inc()
            log.warning("gang hold of %s expired with %d member(s) not placed: its GPUs are free for other pods", g, n)
        return snapshot

    def _unplaced(self, group: str) -> int:
        """Members of ``group`` still to place on their planned nodes (0 for a group that is gone)."""
        g = self._groups.get(group)
        return sum(state.remaining_plan(g.plan, g.bound_slots).values()) if g is not None else 0

    def counts(self) -> tuple[int, int]:
        """(nodes, tracked pods)."""
        with self._lock:
            return len(self._nodes), len(self._pods)

    # ------------------------------------------------------------------ gang admissions

    def admit(self, group: str, until: float) -> None:
        """Hold ``group``'s remaining GPUs for it until monotonic time ``until``.

        Every admitted member asks again; a hold is only extended once it would gain at least
        ``ADMIT_RESOLUTION_S``, so a stream of members does not rebuild the snapshot each time.
        """
        with self._lock:
            current = self._admissions.get(group)
            if current is None or until >= current + ADMIT_RESOLUTION_S:
                self._admissions[group] = until
                if self._snapshot is not None:  # only the admissions changed: share the rest
                    self._snapshot = dataclasses.replace(self._snapshot,
                                                         admissions=MappingProxyType(dict(self._admissions)))

    # ------------------------------------------------------------------ nodes

    def replace_nodes(self, nodes: Iterable[wire.Node]) -> None:
        """All nodes, after a (re)list: nodes absent from it are forgotten."""
        fresh = {n.metadata.name: n for n in nodes}
        with self._lock:
            self._nodes = {name: state.node_state(n, self._requested[name]) for name, n in fresh.items()}
            self._synced.add(NODES)
            self._snapshot = None

    def upsert_node(self, node: wire.Node) -> None:
        name = node.metadata.name
        with self._lock:
            self._nodes[name] = state.node_state(node, self._requested[name])
            self._snapshot = None

    def delete_node(self, name: str) -> None:
        with self._lock:
            if self._nodes.pop(name, None) is not None:
                self._snapshot = None

    # ------------------------------------------------------------------ pods

    def replace_pods(self, pods: Iterable[wire.Pod]) -> None:
        """All pods, after a (re)list: pods absent from it are forgotten."""
        views = [state.pod_view(p) for p in pods]
        with self._lock:
            self._pods.clear()
            self._requested.clear()
            self._members.clear()
            for v in views:
                if _tracked(v):
                    self._add(v)
            self._groups = {k: state.group_state(k, ms.values()) for k, ms in self._members.items()}
            self._nodes = {name: dataclasses.replace(ns, gpus_requested=self._requested[name])
                           for name, ns in self._nodes.items()}
            self._synced.add(PODS)
            self._snapshot = None
            self._reads = dict.fromkeys(self._reads)

    def upsert_pod(self, pod: wire.Pod) -> None:
        view = state.pod_view(pod)
        with self._lock:
            self._note_event(view.key)
            touched = self._remove(view.key)
            if _tracked(view):
                touched |= self._add(view)
            self._refresh(touched)

    @contextlib.contextmanager
    def node_read(self, node: str) -> Iterator[Callable[[Iterable[wire.Pod]], bool]]:
        """A re-read of ``node``'s pods: enter before sending its LIST, then call what this yields
        with the listed pods; the cache's pods there are replaced by them.

        Pods a watch event touched since the read began are left as the watch has them: the LIST
        may have been answered before that event, and then a pod bound meanwhile would vanish,
        or a pod deleted meanwhile would come back with no event left to remove it. Nothing is
        replaced if all pods were re-listed meanwhile (which LIST is the newer cannot be told):
        the call then returns False, and the caller may read again.

        For the rare re-read before a capacity rejection (``watching.Watcher.refresh_nodes``); a
        scan of all tracked pods is fine there.
        """
        with self._lock:
            self._last_read += 1
            ticket = self._last_read
            self._reads[ticket] = set()
        try:
            yield lambda pods: self._replace_node_pods(node, pods, ticket)
        finally:
            with self._lock:
                del self._reads[ticket]

    def _replace_node_pods(self, node: str, pods: Iterable[wire.Pod], ticket: int) -> bool:
        views = [v for v in (state.pod_view(p) for p in pods) if v.node_name == node and _tracked(v)]
        with self._lock:
            if ticket not in self._reads:
                raise RuntimeError(f"the re-read of {node} has ended: its pods can no longer be applied")
            newer = self._reads[ticket]
            if newer is None:
                return False
            touched: set[tuple[str, str]] = set()
            for key in [k for k, v in self._pods.items() if v.node_name == node and k not in newer]:
                touched |= self._remove(key)
            for v in views:
                if v.key not in newer:
                    touched |= self._remove(v.key)
                    touched |= self._add(v)
            self._refresh(touched)
            return True

    def delete_pod(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        with self._lock:
            self._note_event(key)
            self._refresh(self._remove(key))

    # ------------------------------------------------------------------ internals (lock held)

    def _note_event(self, key: str) -> None:
        for newer in self._reads.values():
            if newer is not None:
                newer.add(key)

    def _add(self, v: state.PodView) -> set[tuple[str, str]]:
        self._pods[v.key] = v
        touched: set[tuple[str, str]] = set()
        if v.node_name and not v.terminated and v.gpus:
            self._requested[v.node_name] += v.gpus
            touched.add((NODES, v.node_name))
        if v.group:
            self._members.setdefault(v.group, {})[v.key] = v
            touched.add((PODS, v.group))
        return touched

    def _remove(self, key: str) -> set[tuple[str, str]]:
        v = self._pods.pop(key, None)
        touched: set[tuple[str, str]] = set()
        if v is None:
            return touched
        if v.node_name and not v.terminated and v.gpus:
            self._requested[v.node_name] -= v.gpus
            if self._requested[v.node_name] <= 0:
                del self._requested[v.node_name]
            touched.add((NODES, v.node_name))
        if v.group:
            members = self._members.get(v.group, {})
            members.pop(key, None)
            if not members:
                self._members.pop(v.group, None)
            touched.add((PODS, v.group))
        return touched

    def _refresh(self, touched: set[tuple[str, str]]) -> None:
        for kind, name in touched:
            if kind == NODES:
                ns = self._nodes.get(name)
                if ns is not None:
                    self._nodes[name] = dataclasses.replace(ns, gpus_requested=self._requested[name])
            elif name in self._members:
                self._groups[name] = state.group_state(name, self._members[name].values())
            else:
                self._groups.pop(name, None)
        if touched:
            self._snapshot = None


def _tracked(v: state.PodView) -> bool:
    """Pods that change a decision: GPU holders and pod-group members; the rest are not kept."""
    return v.gpus > 0 or v.group is not None
