"""A training-only teacher: one-step lookahead over a heuristic, scored by rollouts.

At each decision it takes the heuristic's proposal and a few alternatives (wait, unless every GPU
is idle; the proposed job on the fastest idle GPU that holds its model, has it on disk, or has
neither, unless ``gpu_moves`` is off; the proposed steps ×0.75 and ×1.25, or other
``steps_factors``), plays each out on a copy of the simulator with the heuristic deciding
everything after it, and keeps the one with the highest return under the training objective
(``Objective``: the env's reward, quality and the job-seconds spent in the system, weighted as
``eat-policy train`` weights them). That is policy iteration's improvement step. By default the
copy is the same episode, so the step is exact but clairvoyant (the copy knows future arrivals):
labels the state cannot predict. With ``futures`` = n the options are
played out on n futures drawn from the present instead (``Simulator.with_future``, the same n
for every option), a teacher that knows only what a policy can; ``horizon_s`` scores the
play-outs on the jobs arriving within that many seconds, which cuts their cost and their noise.
Either way it labels demonstrations for ``eat-policy train --bc-policy rollout:<heuristic>``.
Two probes of a richer option set (``bench/edge_headroom.py``): ``sticky_steps`` plays a steps
option's factor out on every later dispatch too, and ``job_moves`` adds other queued jobs.
The "heuristic" may be any policy: the play-outs of all options run in lockstep, so a learned
one (``eat-pods``: a second step of policy iteration) decides each round of them in one batched
actor pass (``LearnedPolicy.decide_all``).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np

from eat_policy import features
from eat_policy.agents import base, cache_aware, heuristics
from eat_policy.sim import catalog, engine, metrics
from eat_policy.snapshot import Decision, Snapshot

PREFIX = "rollout:"
STEPS_FACTORS = (0.75, 1.25)


@dataclasses.dataclass(frozen=True)
class Objective:
    """The training reward: per dispatch, ``env_reward_weight`` × the env's reward +
    ``quality_weight`` × Q(steps), less the job-seconds spent in the system / ``time_scale_s``."""

    env_reward_weight: float = 1.0
    quality_weight: float = 0.0
    time_scale_s: float = math.inf

    def reward(self, env_reward: float, quality: float, job_seconds: float) -> float:
        return self.env_reward_weight * env_reward + self.quality_weight * quality - job_seconds / self.time_scale_s

    def rest_of_episode(self, env_rewards: float, sim: engine.Simulator) -> float:
        """The return from a decision on, given the env's rewards since it, on a finished episode,
        up to terms that the decision cannot change (what was earned before it)."""
        quality = float(np.nansum(sim.records.quality))
        job_seconds = float(metrics.responses(sim.records, sim.trace, sim.now).sum())
        return self.reward(env_rewards, quality, job_seconds)

    def of_first_jobs(self, n: int, sim: engine.Simulator) -> float:
        """The return earned on the first ``n`` jobs, all started: their dispatch rewards, quality
        and job-seconds from arrival to (known) finish."""
        finish = sim.known_finish_s()[:n]
        started = np.isfinite(finish)
        job_seconds = float((finish[started] - sim.trace.arrival_s[:n][started]).sum())
        return self.reward(float(sim.records.reward[:n].sum()), float(np.nansum(sim.records.quality[:n])), job_seconds)


class RolloutTeacher:
    """``futures`` = 0 plays each option out on the episode itself (clairvoyant); n > 0 on n
    futures drawn afresh from the present (``Simulator.with_future``), the same n for every
    option, and keeps the option with the best mean return: a teacher that knows only the state."""

    def __init__(self, heuristic: str, objective: Objective = Objective(), futures: int = 0,
                 horizon_s: float | None = None, steps_factors: tuple[float, ...] = STEPS_FACTORS,
                 gpu_moves: bool = True, sticky_steps: bool = False, job_moves: int = 0) -> None:
        self.name = PREFIX + heuristic
        self.base = base.make(heuristic)
        self.objective = objective
        self.futures = futures
        self.horizon_s = horizon_s
        self.steps_factors = steps_factors
        self.gpu_moves = gpu_moves
        self.sticky_steps = sticky_steps
        self.job_moves = job_moves
        self.sim: engine.Simulator | None = None
        self._rng = np.random.default_rng(0)

    def attach(self, sim: engine.Simulator) -> None:
        """The simulator whose episode the next decisions are for (copied, never stepped)."""
        self.sim = sim

    def reset(self, seed: int) -> None:
        self.base.reset(seed)
        self._rng = np.random.default_rng([seed, 0xF07])

    def decide(self, snap: Snapshot) -> Decision | None:
        if self.sim is None or self.sim.snapshot() is not snap:
            raise RuntimeError(f"{self.name} decides only for the simulator attached to it (training demonstrations)")
        proposal = self.base.decide(snap)
        if proposal is None:
            return None
        options = alternatives(snap, proposal, self.steps_factors, self.gpu_moves) + other_jobs(snap, proposal, self.job_moves)
        if self.futures == 0:
            worlds = [self.sim]
        else:
            worlds = [self.sim.with_future(int(s)) for s in self._rng.integers(2**31, size=self.futures)]
        factors = [self._factor_of(option, proposal) for option in options]
        returns = self._play_outs(worlds, options, factors).mean(axis=1)
        return options[int(np.argmax(returns))]

    def _factor_of(self, option: Decision | None, proposal: Decision) -> float:
        """With ``sticky_steps``, the factor a steps option applies to every later dispatch of its
        play-out too; otherwise 1 (the play-out is the heuristic's own)."""
        if not self.sticky_steps or option is None or (option.job, option.gpus) != (proposal.job, proposal.gpus):
            return 1.0
        return option.steps / proposal.steps

    def _play_outs(self, worlds: list[engine.Simulator], options: list[Decision | None],
                   factors: list[float]) -> np.ndarray:
        """(options, worlds) returns: each option played out on a copy of each world, all copies
        in lockstep, so that a heuristic with ``decide_all`` (a learned policy) decides each round
        of them in one batch."""
        sims = [copy.deepcopy(world) for _ in options for world in worlds]
        horizon = self.horizon_s  # each world's jobs up to then (a drawn future has its own arrivals)
        n = [None if horizon is None else int(np.searchsorted(sim.trace.arrival_s, sim.now + horizon, side="right"))
             for sim in sims]
        firsts = [(option, f) for option, f in zip(options, factors) for _ in worlds]
        env_rewards = [sim.step(first) for sim, (first, _) in zip(sims, firsts)]
        live = [i for i, sim in enumerate(sims) if _goes_on(sim, n[i])]
        decide_all = getattr(self.base, "decide_all", None)
        while live:
            snaps = [sims[i].snapshot() for i in live]
            ds = decide_all(snaps) if decide_all is not None else [self.base.decide(snap) for snap in snaps]
            for i, snap, d in zip(live, snaps, ds):
                env_rewards[i] += sims[i].step(_scaled(snap, d, firsts[i][1]))
            live = [i for i in live if _goes_on(sims[i], n[i])]
        if horizon is None:
            returns = [self.objective.rest_of_episode(r, sim) for r, sim in zip(env_rewards, sims)]
        else:  # of_first_jobs reads the rewards from the records
            returns = [self.objective.of_first_jobs(m, sim) for m, sim in zip(n, sims) if m is not None]
        return np.array(returns).reshape(len(options), len(worlds))


def _goes_on(sim: engine.Simulator, n: int | None) -> bool:
    """Whether a play-out decides again: to the episode's end, or (``n``) until its first ``n``
    jobs have arrived and left the queue."""
    return not sim.done and (n is None or sim.n_arrived < n or bool(sim.queue and sim.queue[0] < n))


def _scaled(snap: Snapshot, d: Decision | None, factor: float) -> Decision | None:
    """A play-out's decision, its steps × ``factor``."""
    if d is None or factor == 1.0:
        return d
    return Decision(d.job, d.gpus, scaled_steps(snap, d, factor))


def alternatives(snap: Snapshot, proposal: Decision, steps_factors: tuple[float, ...] = STEPS_FACTORS,
                 gpu_moves: bool = True) -> list[Decision | None]:
    """The proposal first (ties keep it), then wait (where a policy may: ``features.may_wait``),
    other single GPUs (with ``gpu_moves``) and the proposed steps × each of ``steps_factors``."""
    out: list[Decision | None] = [proposal] + ([None] if features.may_wait(snap, can_dispatch=True) else [])
    j, m = proposal.job, int(snap.job_model[proposal.job])
    if gpu_moves and proposal.k == 1:
        idle = (snap.gpu_free_at <= snap.now) & snap.node_up[snap.gpu_node]
        idle[list(proposal.gpus)] = False
        fits = snap.node_gpu_mem_gb[snap.gpu_node] >= catalog.MODELS[m].vram_gb if snap.scenario == "edge" else True
        warm = snap.gpu_resident[:, m]
        on_disk = snap.node_disk[snap.gpu_node, m]
        for where in (warm, ~warm & on_disk, ~warm & ~on_disk):
            gpus = np.flatnonzero(idle & where & fits)
            if len(gpus):
                out.append(Decision(j, (int(gpus[np.argmax(snap.gpu_speed[gpus])]),), proposal.steps))
    for factor in steps_factors:
        steps = scaled_steps(snap, proposal, factor)
        if steps != proposal.steps:
            out.append(Decision(j, proposal.gpus, steps))
    return out


def other_jobs(snap: Snapshot, proposal: Decision, n: int) -> list[Decision]:
    """Up to ``n`` other queued jobs, earliest deadline first, each dispatched where the plain
    cache-aware plan of that job alone starts it now (none if it cannot start now)."""
    if n == 0:
        return []  # every label of a training teacher: no sort, no physics
    phys = heuristics.physics_of(snap.scenario)
    out: list[Decision] = []
    for j in np.argsort(snap.job_deadline_s, kind="stable"):
        if len(out) == n:
            break
        if j != proposal.job and (d := cache_aware.plan_simply(snap, [int(j)], phys)) is not None:
            out.append(d)
    return out


def scaled_steps(snap: Snapshot, d: Decision, factor: float) -> int:
    """``d``'s steps × ``factor``, within its job's steps range."""
    return int(np.clip(round(d.steps * factor), snap.job_steps_min[d.job], snap.job_steps_max[d.job]))
