"""The EAT prototype's constants (``shared/paper-notes.md``), kept exactly."""

from __future__ import annotations

import math

import numpy as np

C_K = {1: 0.315, 2: 0.15625, 4: 0.14, 8: 0.10}
"""Seconds per denoising step on k GPUs."""
R_K = {1: 24.0, 2: 24.0, 4: 32.0, 8: 30.0}
"""Cold-start seconds: spawn the job, init the process group, load the model, warm up."""
STEPS_MIN, STEPS_MAX = 1, 32
PIXELS = 1440 * 1440
"""SD v1.4 at 1440×1440, fp16."""
QUALITY_CAP = 0.27
REWARD_LATENCY_CAP, REWARD_LATENCY_SCALE, REWARD_QUALITY_WEIGHT = 10.0, 250.0, 10.0


def quality(steps: int) -> float:
    """Q(s): 0 below 5 steps, 0.16·log₆(s) − 0.02 up to 30, capped at 0.27 above."""
    if steps < 5:
        return 0.0
    if steps <= 30:
        return 0.16 * math.log(steps, 6) - 0.02
    return QUALITY_CAP


def duration_s(k: int, steps: int, warm: bool) -> float:
    """D = c_k·s (+ R_k when cold)."""
    return C_K[k] * steps + (0.0 if warm else R_K[k])


def reward(mean_visible_wait_s: float, duration: float, own_wait_s: float, steps: int) -> float:
    """Prototype reward per dispatched task: min(10, 250/(queue wait + D + own wait)) + 10·Q(s)."""
    latency_term = REWARD_LATENCY_SCALE / max(mean_visible_wait_s + duration + own_wait_s, 1e-9)
    return min(REWARD_LATENCY_CAP, latency_term) + REWARD_QUALITY_WEIGHT * quality(steps)


def mean_response_bound(n_gpus: int, k_choices: tuple[int, ...], n_jobs: int, queued_at_start: int,
                        mean_quality: float) -> float:
    """A lower bound on the mean response time of any policy reaching ``mean_quality``, on any
    trace of the paper scenario where ``n_jobs`` tasks arrive and all finish (no policy can beat
    it; how close one can come is open).

    Relaxation: every GPU's first task is cold (≥ min R_k) and a denoising step costs at least
    min_k k·c_k GPU-seconds, so the m-th of the tasks queued at t = 0 to finish does so no
    earlier than min R_k + (their GPU-seconds so far) / GPUs; a later task takes at least
    min_k c_k per step and waits for nothing. The quality constraint is priced by its Lagrange
    multiplier μ (weak duality: every μ ≥ 0 gives a bound; the best on a grid is returned).
    """
    steps = np.arange(STEPS_MIN, STEPS_MAX + 1)
    q = np.array([quality(int(s)) for s in steps])
    per_step_gpu_s = min(k * C_K[k] for k in k_choices) / n_gpus
    weights = np.concatenate([per_step_gpu_s * np.arange(queued_at_start, 0, -1),
                              np.full(n_jobs - queued_at_start, min(C_K[k] for k in k_choices))])
    cost = weights[:, None] * steps[None, :]
    cold = min(R_K[k] for k in k_choices) * queued_at_start
    mus = np.linspace(0.0, 400.0, 4001)
    relaxed = [(cold + (cost - mu * q).min(axis=1).sum()) / n_jobs + mu * mean_quality for mu in mus]
    return float(max(relaxed))
