"""How the cache-aware policies (``cache-lct``, ``edf-cache``) plan one decision.

``plan_simply`` is the definition: place the policy's first LOOKAHEAD jobs in turn, each at
its earliest-finishing candidate after the reservations of the jobs before it; dispatch the
first that can start now, or backfill a younger job onto reserved GPUs if it finishes first.
``Planner`` reaches the same decisions on edge through a numba-compiled transcription
(``cache_aware_kernel``); tests/unit/policy/test_planner.py pins it to ``plan_simply``
decision by decision.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from eat_policy.agents import cache_aware_kernel as kernel
from eat_policy.snapshot import Decision, Snapshot
from eat_policy.sim import catalog, physics

INF = float("inf")
DEFAULT_STEPS = 20
"""Steps for jobs without a deadline: Q(20) = 0.248 of the paper's 0.284 maximum, at 2/3 the cost."""
LOOKAHEAD = 16
"""How many jobs the cache-aware policies place (reserving GPUs) per decision. Measured on
edge at ρ = 1 (10 seeds): 4 → 69% deadlines met, 8 → 89%, 16 → 93%, 32 → 92%."""


def plan_simply(
    snap: Snapshot, jobs: list[int], phys: physics.Physics, default_steps: int = DEFAULT_STEPS,
) -> Decision | None:
    """The cache-aware policies' decision, written plainly: place ``jobs`` in turn, reserving.

    This is the definition; ``Planner`` reaches the same decisions on edge, compiled.
    """
    plans = _Plans(snap, phys)
    for j in jobs:
        steps = reference_steps(snap, j, default_steps)
        options = plans.candidates(j, steps, idle_only=False)
        best = _earliest(options, steps)
        if best is not None and best.start_s <= snap.now:
            return _dispatch(snap, j, best, default_steps)
        backfill = plans.backfill(j, steps)
        if backfill is not None:
            return _dispatch(snap, j, backfill, default_steps)
        if best is not None and not best.cold:
            plans.reserve(best)  # a cold plan is not worth idling GPUs for
    return None


def _earliest(options: list[physics.Placement], steps: int) -> physics.Placement | None:
    """The option that finishes first (fewer patches on a tie, then the first listed)."""
    return min(options, key=lambda p: (p.finish_s(steps), p.k)) if options else None


def _warm_fit(
    options: list[physics.Placement], steps: int, claimed: Callable[[tuple[int, ...]], float],
) -> physics.Placement | None:
    """The earliest warm option that finishes before ``claimed`` (its GPUs' first reservation)."""
    return _earliest([p for p in options if not p.cold and p.finish_s(steps) <= claimed(p.gpus)], steps)


def _dispatch(snap: Snapshot, j: int, p: physics.Placement, default_steps: int) -> Decision:
    return Decision(j, p.gpus, physics.steps_within_deadline(snap, j, p, default_steps))


class _Plans:
    """Candidate placements for one decision, memoised by what they depend on.

    Jobs with the same model, resolution, steps and k demand get the same candidates, so a
    window of 32 jobs costs a handful of physics calls; reservations invalidate the memo.
    """

    def __init__(self, snap: Snapshot, phys: physics.Physics) -> None:
        self.snap, self.phys = snap, phys
        self.reserved_from = np.full(snap.n_gpus, np.inf)  # when a waiting older job claims each GPU
        self.version = 0
        self.memo: dict[tuple[object, ...], list[physics.Placement]] = {}

    def candidates(self, j: int, steps: int, idle_only: bool) -> list[physics.Placement]:
        s = self.snap
        key = (int(s.job_model[j]), float(s.job_pixels[j]), steps, int(s.job_k[j]), idle_only,
               None if idle_only else self.version)
        if key not in self.memo:
            exclude = None if idle_only else np.isfinite(self.reserved_from)
            self.memo[key] = self.phys.candidates(s, j, steps, idle_only=idle_only, exclude=exclude)
        return self.memo[key]

    def reserve(self, p: physics.Placement) -> None:
        gpus = list(p.gpus)
        self.reserved_from[gpus] = np.minimum(self.reserved_from[gpus], p.start_s)
        self.version += 1

    def backfill(self, j: int, steps: int) -> physics.Placement | None:
        """An idle placement that finishes before any reservation it borrows starts.

        Reservations count on warm state, so only warm placements may borrow reserved GPUs.
        """
        if self.version == 0:
            return None
        options = self.candidates(j, steps, idle_only=True)
        return _warm_fit(options, steps, lambda gpus: self.reserved_from[list(gpus)].min())


# --- the same decisions on edge, compiled (issue 2) ---------------------------------------


class Planner:
    """``plan_simply`` on edge, through the compiled ``cache_aware_kernel.plan``.

    Without numba (the operator's image) it is ``plan_simply`` itself. Tables of what a kind
    of job costs on this cluster's nodes are built once per kind and layout.
    """

    def __init__(self, default_steps: int = DEFAULT_STEPS) -> None:
        self.phys = physics.EdgePhysics()
        self.default_steps = default_steps
        self.tables: _Tables | None = None

    def decide(self, snap: Snapshot, jobs: list[int] | np.ndarray) -> Decision | None:
        if kernel.numba is None:
            return plan_simply(snap, [int(j) for j in jobs], self.phys, self.default_steps)
        t = self.tables
        if t is None or len(t.kind_key) >= MAX_KINDS or not t.matches(snap):
            t = self.tables = _tables_for(snap, self.phys)
        window = np.asarray(jobs, dtype=np.int64)
        while True:
            p, k, node, launch, worst = kernel.plan(
                float(snap.now), snap.gpu_free_at, snap.node_up, snap.gpu_resident, snap.node_disk,
                snap.node_disk_ready_s, window,
                snap.job_model, snap.job_pixels, snap.job_deadline_s, snap.job_steps_min, snap.job_steps_max,
                snap.job_k, snap.job_k_max, self.default_steps, t.gpu_node, t.gpu_speed, t.speed_id, t.slots, t.fits,
                t.load, t.kind_key, t.kind_ks, t.single_step, t.single_per_step, t.single_fixed,
                t.cross_per_step, t.cross_fixed, catalog.GANG_RENDEZVOUS_S, t.out)
            if p != kernel.NO_KIND:
                break
            t.add_kind(snap, int(window[k]), self.default_steps)
        if p < 0:
            return None
        j = int(window[p])
        gpus = tuple(t.out[:k].tolist())
        if node >= 0:
            speed, link = float(snap.node_speed[node]), snap.node_link[node]
        else:
            speed, link = min(float(snap.gpu_speed[g]) for g in gpus), "network"
        placement = self.phys.placement(int(snap.job_model[j]), float(snap.job_pixels[j]), gpus, launch, worst, speed, link)
        return _dispatch(snap, j, placement, self.default_steps)


def compile_ahead() -> None:
    """Compile the kernel (or load it from numba's cache) now rather than on the first edge
    decision: compiling takes ~10 s, loading ~1 s."""
    from eat_policy.sim import engine, scenarios  # the simulator builds a snapshot of each dtype the kernel sees

    sim = engine.Simulator(scenarios.edge(n_nodes=2, n_jobs=4))
    sim.reset(0)
    snap = sim.snapshot()
    Planner().decide(snap, list(range(snap.n_jobs)))


class _Tables:
    """The kernel's view of one cluster layout, and per kind of job its gangs' seconds.

    A kind is (model, pixels, steps compared at, demanded k, most k); per allowed k it has each
    node's search time and gang shape, and per GPU speed a cross-node gang's shape."""

    def __init__(self, snap: Snapshot, phys: physics.EdgePhysics) -> None:
        self.phys = phys
        self.layout = _layout(snap)
        self.gpu_node = snap.gpu_node.astype(np.int64)
        self.gpu_speed = snap.gpu_speed.astype(np.float64)
        self.speeds, speed_id = np.unique(self.gpu_speed, return_inverse=True)
        self.speed_id = speed_id.astype(np.int64)
        self.slots = snap.slots.astype(np.int64)
        mem = snap.node_gpu_mem_gb[snap.gpu_node]
        self.fits = np.stack([mem >= spec.vram_gb for spec in phys.models])
        self.load = np.stack([np.zeros(len(phys.models)), phys.load_s, phys.fetch_s], axis=1)
        width = max(len(snap.k_choices), 1)
        n, s = snap.n_nodes, len(self.speeds)
        self.kind_key = np.empty((0, 5))
        self.kind_ks = np.empty((0, width), np.int64)
        self.single_step = np.empty((0, width, n))
        self.single_per_step, self.single_fixed = np.empty((0, width, n)), np.empty((0, width, n))
        self.cross_per_step, self.cross_fixed = np.empty((0, width, s)), np.empty((0, width, s))
        self.out = np.empty(max((*snap.k_choices, 8)), np.int64)

    def matches(self, snap: Snapshot) -> bool:
        now = _layout(snap)
        if all(a is b for a, b in zip(now, self.layout)):
            return True
        same = all(
            a.shape == b.shape and bool(np.all(a == b)) if isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
            else a == b
            for a, b in zip(now, self.layout)
        )
        if same:  # a copy of the same cluster (the rollout teacher's): its later snapshots hit the identity test
            self.layout = now
        return same

    def add_kind(self, snap: Snapshot, j: int, default_steps: int) -> None:
        m, px, steps = int(snap.job_model[j]), float(snap.job_pixels[j]), reference_steps(snap, j, default_steps)
        ks = snap.allowed_k(j)
        width, n = self.kind_ks.shape[1], snap.n_nodes
        row_ks = np.zeros((1, width), np.int64)
        single_step, single_per_step, single_fixed = (np.full((1, width, n), INF) for _ in range(3))
        cross_per_step, cross_fixed = (np.full((1, width, len(self.speeds)), INF) for _ in range(2))
        step_s = self.phys.step_s(snap, m, px, steps, ks)
        for i, k in enumerate(ks):
            row_ks[0, i] = k
            if k in step_s:
                single_step[0, i] = step_s[k]
                for node in range(n):
                    shape = self.phys.shape(m, px, float(snap.node_speed[node]), k, snap.node_link[node])
                    single_per_step[0, i, node], single_fixed[0, i, node] = shape
            for x, speed in enumerate(self.speeds.tolist()):
                cross_per_step[0, i, x], cross_fixed[0, i, x] = self.phys.shape(m, px, speed, k, "network")
        key = [[m, px, steps, int(snap.job_k[j]), int(snap.job_k_max[j])]]
        self.kind_key = np.concatenate([self.kind_key, key])
        self.kind_ks = np.concatenate([self.kind_ks, row_ks])
        self.single_step = np.concatenate([self.single_step, single_step])
        self.single_per_step = np.concatenate([self.single_per_step, single_per_step])
        self.single_fixed = np.concatenate([self.single_fixed, single_fixed])
        self.cross_per_step = np.concatenate([self.cross_per_step, cross_per_step])
        self.cross_fixed = np.concatenate([self.cross_fixed, cross_fixed])


MAX_KINDS = 256
"""Kinds a table holds before a fresh one replaces it (the kernel scans them for each job)."""
_recent_tables: list[_Tables] = []
"""Tables of the last few layouts, shared by planners: the service makes a fresh planner with
each request (``reset``), and building a layout's tables again cost ~2 ms of a 30 ms plan."""


def _tables_for(snap: Snapshot, phys: physics.EdgePhysics) -> _Tables:
    for t in reversed(_recent_tables):
        if t.phys.models is phys.models and len(t.kind_key) < MAX_KINDS and t.matches(snap):
            return t
    t = _Tables(snap, phys)
    _recent_tables[:] = [*_recent_tables[-3:], t]
    return t


def _layout(snap: Snapshot) -> tuple[object, ...]:
    """What the kernel's tables depend on besides the job: the cluster's shape and the k choices."""
    return (snap.slots, snap.gpu_node, snap.gpu_speed, snap.node_speed, snap.node_link, snap.node_gpu_mem_gb,
            snap.k_choices)


def reference_steps(snap: Snapshot, j: int, default_steps: int = DEFAULT_STEPS) -> int:
    """Steps at which placements are compared: the most the job allows if it has a deadline."""
    if np.isposinf(snap.job_deadline_s[j]):  # as the kernel tests it (== inf)
        return physics.default_steps_of(snap, j, default_steps)
    return int(snap.job_steps_max[j])
