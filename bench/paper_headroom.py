"""How far below the best heuristic can any policy go on the paper scenario (issue 3's "−10%")?

For each λ, on the same traces (seeds 0..N-1), mean response and quality over the seeds of:
- ``cache-lct-queue`` (the reference, the best heuristic) and its own trade-off curve
  (``cache-lct-queue:C``, C steps on an empty queue);
- the clairvoyant rollout teacher over it (``agents.rollout``: one-step lookahead on copies of
  the episode, which knows future arrivals), scored by the training reward at several quality
  weights: what policy improvement finds, an optimistic yardstick for a learned policy;
- the shipped ``eat`` policy;
- ``paper.mean_response_bound`` at the reference's quality, per seed: no policy can go below it.
Ratios are of mean responses against the reference's; compare rows at equal quality.

    python bench/paper_headroom.py --seeds 20
"""

from __future__ import annotations

import argparse
import statistics

from eat_policy import evaluate
from eat_policy.agents import base, rollout
from eat_policy.sim import engine, paper, scenarios

RATES = (0.05, 0.07, 0.09, 0.11)
REFERENCE = "cache-lct-queue"
CURVE = (30, 35, 45, 50)
TEACHER_QUALITY_WEIGHTS = (5.0, 7.0, 9.0)
TARGET = 0.9


def rows(rate: float) -> dict[str, base.Policy]:
    out: dict[str, base.Policy] = {REFERENCE: base.make(REFERENCE)}
    out.update({f"{REFERENCE}:{c}": base.make(f"{REFERENCE}:{c}") for c in CURVE})
    for w in TEACHER_QUALITY_WEIGHTS:
        objective = rollout.Objective(env_reward_weight=0.0, quality_weight=w, time_scale_s=10.0)
        out[f"rollout teacher, quality weight {w:g}"] = rollout.RolloutTeacher(REFERENCE, objective)
    out["eat"] = base.make("eat")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    seeds = range(parser.parse_args().seeds)
    print(f"paper (choose-k), seeds 0..{len(seeds) - 1}: mean response / quality, ratio to {REFERENCE}")
    for rate in RATES:
        scenario = scenarios.paper(rate=rate)
        sim = engine.Simulator(scenario)
        results = {name: [evaluate.run_episode(sim, policy, s)[0] for s in seeds] for name, policy in rows(rate).items()}
        ref = statistics.mean(m["resp_mean_s"] for m in results[REFERENCE])
        print(f"λ {rate}")
        for name, episodes in results.items():
            resp = statistics.mean(m["resp_mean_s"] for m in episodes)
            quality = statistics.mean(m["quality_mean"] for m in episodes)
            print(f"  {name:<36} {resp:7.2f} s  q {quality:.4f}  {resp / ref:6.3f}")
        bound = statistics.mean(paper.mean_response_bound(scenario.n_nodes, scenario.k_choices, int(m["arrived"]),
                                                          scenario.initial_queue, m["quality_mean"])
                                for m in results[REFERENCE])
        print(f"  {'lower bound at its quality':<36} {bound:7.2f} s  {'':9}  {bound / ref:6.3f}")
        print(f"  {'target (−10%)':<36} {TARGET * ref:7.2f} s  {'':9}  {TARGET:6.3f}")


if __name__ == "__main__":
    main()
