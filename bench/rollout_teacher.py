"""Rollout teacher throughput: labelled decisions per second (the edge warm start's main cost).

``rollout:<policy>`` plays the policy's proposal and a few alternatives on copies of the
episode at every decision (``agents/rollout.py``), so one label costs hundreds of the
policy's decisions on simulator copies. Edge scenario, 8 nodes (the training cluster), ρ 0.8,
one core. Prints the median over seeds of labels/s and, against the policy the teacher plays,
how many times slower it is, for:

- the warm pool, 100 jobs per episode: ``rollout:edf-cache-queue``, clairvoyant (play-outs to
  the episode's end) and knowing only the present (4 drawn futures, play-outs scored on the
  next 10 s: ``--teacher-futures 4 --teacher-horizon 10``);
- the pods' physics (no warm pool), 40 jobs per episode, residual teachers (no single-GPU
  moves) with the shipped steps factors: over ``edf-cache-queue-fit`` (``eat-edge-pods``'
  teacher) and over ``eat-pods`` itself (the second policy-iteration step), whose play-outs
  ask the learned policy for every copy's decision in one batched actor pass.

Measured on a quiet machine (2026-12-01): the warm pool's teachers 64.7 and 14.2 labels/s; on
the pods, over ``edf-cache-queue-fit`` 27.7 labels/s, over ``eat-pods`` 4.5 (4 futures, 10 s)
and 9.0 (2 futures, 5 s), so a label of the second policy-iteration step costs 6.2× and 3.1× one
of ``eat-edge-pods``' teacher.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from sim_throughput import episode_rate

from eat_policy import train
from eat_policy.agents import base, rollout
from eat_policy.sim import engine, scenarios

SEEDS = (1, 2, 3)
SHIPPED_FACTORS = (0.35, 0.5, 0.7, 0.85, 1.25)
"""``eat-edge-pods``' ``--teacher-steps-factors``."""


def warm_pool() -> engine.Simulator:
    return engine.Simulator(scenarios.edge(n_nodes=8, load=0.8, n_jobs=100))


def pods() -> engine.Simulator:
    return engine.Simulator(scenarios.edge(n_nodes=8, load=0.8, n_jobs=40, gpu_keeps_model=False))


def residual_teacher(policy: str, futures: int, horizon_s: float) -> base.Policy:
    """The teacher a residual training run over ``policy``'s hint makes (``train --residual``)."""
    return train.make_teacher(rollout.PREFIX + policy, train.objective(train.Args(scenario="edge")), futures,
                              horizon_s, SHIPPED_FACTORS, gpu_moves=False)


def median_rate(make_sim: Callable[[], engine.Simulator], policy: base.Policy) -> float:
    return statistics.median(episode_rate(make_sim(), policy, s) for s in SEEDS)


def report(make_sim: Callable[[], engine.Simulator], played: str, teachers: dict[str, base.Policy]) -> None:
    rate = median_rate(make_sim, base.make(played))
    print(f"{played:<46} {rate:10.1f} decisions/s (median of {len(SEEDS)} episodes)")
    for name, teacher in teachers.items():
        labels = median_rate(make_sim, teacher)
        print(f"{name:<46} {labels:10.1f} labels/s     ({rate / labels:.0f}x slower)")


def main() -> None:
    episode_rate(warm_pool(), base.make("edf-cache-queue"), seed=0)  # numba compile or cache load
    print("warm pool, 100 jobs")
    report(warm_pool, "edf-cache-queue", {
        "  rollout:edf-cache-queue": rollout.RolloutTeacher("edf-cache-queue"),
        "    4 drawn futures, 10 s horizon": rollout.RolloutTeacher("edf-cache-queue", futures=4, horizon_s=10.0),
    })
    print("pods' physics (no warm pool), 40 jobs, residual teachers")
    report(pods, "edf-cache-queue-fit", {
        "  rollout:edf-cache-queue-fit, 4 futures, 10 s": residual_teacher("edf-cache-queue-fit", 4, 10.0),
    })
    report(pods, "eat-pods", {
        "  rollout:eat-pods, 4 futures, 10 s": residual_teacher("eat-pods", 4, 10.0),
        "  rollout:eat-pods, 2 futures, 5 s": residual_teacher("eat-pods", 2, 5.0),
    })


if __name__ == "__main__":
    main()
