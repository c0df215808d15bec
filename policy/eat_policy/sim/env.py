"""Gymnasium environment over the simulator: one step per decision point.

Observation: ``features.featurize`` of the snapshot, padded to the scenario's window.
Action (a Dict): ``job`` (window slot, or ``window`` to wait), ``k`` (index into
``features.K_VALUES``), ``node_scores`` (pointer-style scores over nodes: GPUs are taken from
the highest-scoring nodes first) and ``steps`` (one of ``step_bins`` bins over the job's steps
range).
Choices the masks rule out are repaired to the nearest feasible one, or become a wait.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from eat_policy import features
from eat_policy.snapshot import Decision, Snapshot
from eat_policy.sim import engine, scenarios

STEP_BINS = 8
"""Default steps bins (a learned policy's checkpoint records its own)."""


def steps_of_bin(lo: int, hi: int, b: int, bins: int) -> int:
    """Bin b of ``bins`` over a job's steps range [lo, hi]: lo + round(b/(bins − 1)·(hi − lo))."""
    return lo + round(b / (bins - 1) * (hi - lo))


def bin_of_steps(lo: int, hi: int, steps: int, bins: int) -> int:
    """The bin whose steps are nearest ``steps`` (the inverse of ``steps_of_bin``)."""
    return 0 if hi == lo else int(round((steps - lo) / (hi - lo) * (bins - 1)))


class SchedulingEnv(gym.Env):  # type: ignore[type-arg]
    metadata = {"render_modes": []}

    def __init__(self, scenario: scenarios.Scenario, step_bins: int = STEP_BINS) -> None:
        self.scenario, self.step_bins = scenario, step_bins
        self.sim = engine.Simulator(scenario)
        n, j, k = scenario.n_nodes, scenario.window, len(features.K_VALUES)
        box = lambda *shape: gym.spaces.Box(-features.TIME_CLIP, features.TIME_CLIP, shape, np.float32)  # noqa: E731
        self.observation_space = gym.spaces.Dict({
            "nodes": box(n, features.NODE_DIM),
            "jobs": box(j, features.JOB_DIM),
            "pairs": box(j, n, features.PAIR_DIM),
            "global": box(features.GLOBAL_DIM),
            "job_mask": gym.spaces.MultiBinary(j),
            "k_mask": gym.spaces.MultiBinary((j, k)),
            "free": gym.spaces.Box(0, 8, (j, n), np.int64),
            "may_wait": gym.spaces.MultiBinary(1),
        })
        self.action_space = gym.spaces.Dict({
            "job": gym.spaces.Discrete(j + 1),
            "k": gym.spaces.Discrete(k),
            "node_scores": gym.spaces.Box(-1.0, 1.0, (n,), np.float32),
            "steps": gym.spaces.Discrete(step_bins),
        })

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(2**31)) if seed is None else seed
        self.sim.reset(episode_seed)
        return self._obs(), {}

    def step(self, action: dict[str, Any]):  # type: ignore[override]
        snap = self.sim.snapshot()
        decision = to_decision(snap, action, self._last_obs, self.step_bins)
        reward = self.sim.step(decision)
        # Cut at the scenario's end time with jobs left (the paper's 1024 s): a time limit.
        truncated = self.sim.done and self.sim.now >= self.sim.end_s
        terminated = self.sim.done and not truncated
        info = {"waited": decision is None}
        if self.sim.done:
            info["metrics"] = self.sim.metrics().as_dict()
        return self._obs(), float(reward), terminated, truncated, info

    def _obs(self) -> dict[str, np.ndarray]:
        self._last_obs = features.featurize(self.sim.snapshot())
        return pad(self._last_obs, self.scenario.window)


def pad(obs: features.Observation, window: int) -> dict[str, np.ndarray]:
    """Pad the job axis to ``window`` rows (the queue may be shorter)."""
    j = obs.jobs.shape[0]

    def rows(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.zeros((window - j,) + a.shape[1:], a.dtype)]) if j < window else a[:window]

    return {
        "nodes": obs.nodes, "jobs": rows(obs.jobs), "pairs": rows(obs.pairs), "global": obs.global_,
        "job_mask": rows(obs.job_mask.astype(np.int8)), "k_mask": rows(obs.k_mask.astype(np.int8)),
        "free": rows(obs.free), "may_wait": np.array([obs.may_wait], np.int8),
    }


def to_decision(snap: Snapshot, action: dict[str, Any], obs: features.Observation, step_bins: int = STEP_BINS) -> Decision | None:
    """Turn a (possibly infeasible) action into a valid decision, or a wait.

    A wait where waiting is not an option (``may_wait``: every GPU idle, so no completion will
    come) serves the first job that can be served instead."""
    j = int(action["job"])
    if j >= snap.n_jobs or not obs.job_mask[j]:
        if obs.may_wait or not obs.job_mask.any():
            return None
        j = int(np.flatnonzero(obs.job_mask)[0])
    feasible = [i for i, ok in enumerate(obs.k_mask[j]) if ok]
    want = int(action["k"])
    ki = min(feasible, key=lambda i: (abs(i - want), -i))
    k = features.K_VALUES[ki]
    gpus = fill_gpus(snap, j, np.asarray(action["node_scores"], dtype=np.float64), k, obs.free[j])
    lo, hi = int(snap.job_steps_min[j]), int(snap.job_steps_max[j])
    return Decision(j, gpus, steps_of_bin(lo, hi, int(action["steps"]), step_bins))


def fill_gpus(snap: Snapshot, j: int, scores: np.ndarray, k: int, free: np.ndarray) -> tuple[int, ...]:
    """Take k idle GPUs from nodes in descending score, GPUs holding the model first."""
    idle = (snap.gpu_free_at <= snap.now) & snap.node_up[snap.gpu_node]
    m = int(snap.job_model[j])
    chosen: list[int] = []
    for n in np.argsort(-scores, kind="stable"):
        if free[n] == 0:
            continue
        gpus = [int(g) for g in snap.slots[n, : snap.node_gpus[n]] if idle[g]]
        gpus.sort(key=lambda g: not snap.gpu_resident[g, m])
        chosen.extend(gpus[: k - len(chosen)])
        if len(chosen) == k:
            break
    return tuple(chosen)
