"""The EAT prototype's constants (``shared/paper-notes.md``), kept exactly."""

from __future__ import annotations

import math

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
