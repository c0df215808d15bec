"""Rollout teacher throughput: labelled decisions per second (the edge warm start's main cost).

``rollout:edf-cache-queue`` plays the heuristic's proposal and a few alternatives to the end
of a copy of the episode at every decision (``agents/rollout.py``), so one label costs
hundreds of heuristic decisions on simulator copies. Edge scenario, 8 nodes (the training
cluster), ρ 0.8, 100 jobs per episode, one core. Prints the median over seeds of labels/s,
and the heuristic's own decisions/s on the same traces (the ratio is the teacher's overhead),
for the clairvoyant teacher (play-outs to the episode's end) and the one that knows only the
present (4 drawn futures, play-outs scored on the next 10 s: ``--teacher-futures 4
--teacher-horizon 10``).
"""

from __future__ import annotations

import statistics

from sim_throughput import episode_rate

from eat_policy.agents import base, rollout
from eat_policy.sim import engine, scenarios

SEEDS = (1, 2, 3)
TEACHERS = {
    "rollout:edf-cache-queue": rollout.RolloutTeacher("edf-cache-queue"),
    "  4 drawn futures, 10 s horizon": rollout.RolloutTeacher("edf-cache-queue", futures=4, horizon_s=10.0),
}


def per_second(policy: base.Policy, seed: int) -> float:
    return episode_rate(engine.Simulator(scenarios.edge(n_nodes=8, load=0.8, n_jobs=100)), policy, seed)


def main() -> None:
    per_second(base.make("edf-cache-queue"), seed=0)  # numba compile or cache load
    heuristic = statistics.median(per_second(base.make("edf-cache-queue"), s) for s in SEEDS)
    print(f"edf-cache-queue                            {heuristic:10.1f} decisions/s (median of {len(SEEDS)} episodes)")
    for name, teacher in TEACHERS.items():
        rate = statistics.median(per_second(teacher, s) for s in SEEDS)
        print(f"{name:<42} {rate:10.1f} labels/s     ({heuristic / rate:.0f}x slower)")


if __name__ == "__main__":
    main()
