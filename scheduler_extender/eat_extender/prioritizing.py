"""The prioritize verb: 0–10 scores for the nodes that passed the filters.

- A planned pod: its planned node scores ``MAX_EXTENDER_PRIORITY``, every other node 0 (the
  filter already keeps them out; this matters when the filter is skipped, e.g. after an
  extender error, and keeps the two verbs consistent).
- An unplanned pod: a warm model cache first (the node's ``ANNOTATION_CACHED_MODELS`` holds the
  pod's ``ANNOTATION_MODEL``: ``WARM_POINTS``), then low load (the free share of the node's
  GPUs, GPUs held for admitted groups counted as taken: up to ``LOAD_POINTS``). A cold start
  costs a model load of tens of seconds, far more than queueing behind one busy GPU, hence the
  order. Nodes the extender does not know score 0.

kube-scheduler multiplies these by the extender's ``weight`` and scales them to its 0–100
range before adding them to its own plugins' scores.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from eat_extender import gang, state, wire

WARM_POINTS = 6
LOAD_POINTS = wire.MAX_EXTENDER_PRIORITY - WARM_POINTS


class Kind(enum.StrEnum):
    PLANNED = "planned"
    WARM = "warm"
    """Unplanned, with a model that at least one candidate caches."""
    COLD = "cold"
    """Unplanned, no candidate caches the model (or the pod names none)."""


@dataclasses.dataclass(frozen=True)
class Scores:
    kind: Kind
    scores: tuple[tuple[str, int], ...]
    """(node, score) in the candidates' order."""


def decide(pod: state.PodView, candidates: Sequence[str], cluster: state.ClusterState, now: float) -> Scores:
    """Score ``candidates`` for ``pod`` against ``cluster`` at monotonic time ``now``."""
    if pod.planned_node:
        top, planned = wire.MAX_EXTENDER_PRIORITY, pod.planned_node
        return Scores(Kind.PLANNED, tuple((n, top if n == planned else 0) for n in candidates))
    held_get = gang.held_gpus(cluster, now, exclude_group=pod.group).get
    node_get = cluster.nodes.get
    model = pod.model or ""
    warm_any = False
    out: list[tuple[str, int]] = []
    append = out.append
    # One pass over up to thousands of names per call: kept to plain local lookups.
    for name in candidates:
        ns = node_get(name)
        if ns is None:
            append((name, 0))
            continue
        score = 0
        if model in ns.cached_models:
            score = WARM_POINTS
            warm_any = True
        alloc = ns.gpus_allocatable
        if alloc > 0:
            free = alloc - ns.gpus_requested - held_get(name, 0)
            if free > 0:
                score += round(LOAD_POINTS * free / alloc)
        append((name, score))
    return Scores(Kind.WARM if warm_any else Kind.COLD, tuple(out))
