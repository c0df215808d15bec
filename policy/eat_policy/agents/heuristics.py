"""Heuristic schedulers: the prototype's baselines and the strong ones EAT must beat.

- ``random``, ``round-robin``, ``first-fit``: the prototype's baselines. In choose-k mode
  they do not split images (k = 1), unless random, which draws k.
- ``least-loaded``: GPUs from the least busy nodes first.
- ``cache-lct``: cache-aware least completion time: for each job (oldest first), the k and
  GPU set that minimise predicted finish time, counting cold starts. When the best plan is
  warm GPUs that are still busy, it waits and reserves them; younger jobs may borrow
  reserved GPUs only warm and only if they finish first (backfilling). Cold plans are not
  worth idling GPUs for, so they are never reserved (measured: reserving them loses to
  first-fit in the paper's fixed-k mode).
- ``edf-cache``: the same placement, jobs in earliest-deadline-first order; jobs already
  past their deadline go last, since they can no longer be saved.

All but ``random`` spend as many steps as still meet the deadline (best quality on time),
or ``DEFAULT_STEPS`` for jobs without one (``cache-lct-steps:N``, ``edf-cache-steps:N``: N).

The cache-aware policies' planning lives in ``cache_aware``: defined by ``plan_simply``,
answered on edge by ``Planner``, which reaches the same decisions with a fraction of the
candidate searches by carrying each job's last search across decisions.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from eat_policy.agents import base
from eat_policy.agents.cache_aware import DEFAULT_STEPS, LOOKAHEAD, Planner, plan_simply
from eat_policy.snapshot import Decision, Snapshot
from eat_policy.sim import catalog, physics



def usable_idle_gpus(snap: Snapshot, j: int) -> np.ndarray:
    """Idle GPUs with enough memory for job j's model."""
    idle = snap.idle_gpus()
    if snap.scenario != "edge":
        return idle
    need = catalog.MODELS[int(snap.job_model[j])].vram_gb
    return idle[snap.node_gpu_mem_gb[snap.gpu_node[idle]] >= need]


def steps_for(snap: Snapshot, j: int, gpus: tuple[int, ...], phys: physics.Physics) -> int:
    return physics.steps_within_deadline(snap, j, phys.estimate(snap, j, gpus), DEFAULT_STEPS)


class RandomPolicy:
    name = "random"

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA11]))

    def decide(self, snap: Snapshot) -> Decision | None:
        for j in self.rng.permutation(snap.n_jobs):
            usable = usable_idle_gpus(snap, int(j))
            ks = [k for k in snap.allowed_k(int(j)) if k <= len(usable)]
            if ks:
                k = int(self.rng.choice(ks))
                gpus = tuple(sorted(int(g) for g in self.rng.choice(usable, k, replace=False)))
                lo, hi = int(snap.job_steps_min[j]), int(snap.job_steps_max[j])
                return Decision(int(j), gpus, int(self.rng.integers(lo, hi + 1)))
        return None


class _FifoPolicy:
    """Oldest job that fits, k = its demand or 1, GPUs in the order ``_rank`` gives."""

    name = "fifo"

    def __init__(self) -> None:
        self.phys: dict[str, physics.Physics] = {}

    def reset(self, seed: int) -> None:
        pass

    def decide(self, snap: Snapshot) -> Decision | None:
        phys = self.phys.setdefault(snap.scenario, physics.for_scenario(snap.scenario))
        for j in range(snap.n_jobs):
            usable = usable_idle_gpus(snap, j)
            k = min(snap.allowed_k(j))
            if k <= len(usable):
                gpus = tuple(int(g) for g in self._rank(snap, usable)[:k])
                self._used(snap, gpus)
                return Decision(j, gpus, steps_for(snap, j, gpus, phys))
        return None

    def _rank(self, snap: Snapshot, gpus: np.ndarray) -> np.ndarray:
        return gpus

    def _used(self, snap: Snapshot, gpus: tuple[int, ...]) -> None:
        pass


class FirstFitPolicy(_FifoPolicy):
    name = "first-fit"


class RoundRobinPolicy(_FifoPolicy):
    name = "round-robin"
    next_gpu = 0

    def reset(self, seed: int) -> None:
        self.next_gpu = 0

    def _rank(self, snap: Snapshot, gpus: np.ndarray) -> np.ndarray:
        return gpus[np.argsort((gpus - self.next_gpu) % snap.n_gpus, kind="stable")]

    def _used(self, snap: Snapshot, gpus: tuple[int, ...]) -> None:
        self.next_gpu = (gpus[-1] + 1) % snap.n_gpus


class LeastLoadedPolicy(_FifoPolicy):
    name = "least-loaded"

    def _rank(self, snap: Snapshot, gpus: np.ndarray) -> np.ndarray:
        busy = np.bincount(snap.gpu_node, weights=snap.gpu_util, minlength=snap.n_nodes)
        load = (busy / snap.node_gpus)[snap.gpu_node[gpus]]
        return gpus[np.argsort(load, kind="stable")]


class CacheAwareLCTPolicy:
    name = "cache-lct"

    def __init__(self, default_steps: int = DEFAULT_STEPS) -> None:
        self.default_steps = default_steps
        if default_steps != DEFAULT_STEPS:
            self.name = f"{type(self).name}-steps:{default_steps}"
        self.phys: dict[str, physics.Physics] = {}
        self.planner = Planner(default_steps)

    def reset(self, seed: int) -> None:
        self.planner = Planner(self.default_steps)

    def order(self, snap: Snapshot) -> np.ndarray:
        return np.arange(snap.n_jobs)

    def decide(self, snap: Snapshot) -> Decision | None:
        window = self.order(snap)[:LOOKAHEAD]
        if snap.scenario == "edge":
            return self.planner.decide(snap, window)
        phys = self.phys.setdefault(snap.scenario, physics.for_scenario(snap.scenario))
        return plan_simply(snap, window.tolist(), phys, self.default_steps)


class EdfCachePolicy(CacheAwareLCTPolicy):
    name = "edf-cache"

    def order(self, snap: Snapshot) -> np.ndarray:
        late = snap.job_deadline_s < snap.now
        return np.lexsort((snap.job_arrival_s, snap.job_deadline_s, late))


def _with_steps(cls: type[CacheAwareLCTPolicy]) -> Callable[[str], CacheAwareLCTPolicy]:
    """``<name>-steps:N``: the policy spending N steps on jobs without a deadline, so that a
    learned policy that spends fewer can be compared with it at equal quality."""
    def make(argument: str) -> CacheAwareLCTPolicy:
        if not argument.isdigit() or not 1 <= int(argument) <= 100:
            raise base.UnknownPolicy(f"{cls.name}-steps:N takes a number of steps from 1 to 100, got {argument!r}")
        return cls(int(argument))
    return make


for _cls in (RandomPolicy, RoundRobinPolicy, FirstFitPolicy, LeastLoadedPolicy, CacheAwareLCTPolicy, EdfCachePolicy):
    base.register(_cls.name, _cls)
for _cls in (CacheAwareLCTPolicy, EdfCachePolicy):
    base.register_family(f"{_cls.name}-steps", _with_steps(_cls), "N")
