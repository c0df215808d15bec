"""Where a hinted learned policy departs from its hint (the heuristic it is shown).

For each decision of a checkpoint's greedy episodes (edge, ρ 0.8, pods physics by default), the
hint's proposal on the same state against the policy's decision: same job? same k? same GPUs,
and if not, a faster or slower one? fewer or more steps (±5%)? Prints the shares over the
decisions where both dispatch, how often the policy waits where the hint dispatches, and the
policy's deadline attainment.

    python bench/hint_agreement.py policy/eat_policy/checkpoints/eat-edge.pt --nodes 32
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from eat_policy.agents import base
from eat_policy.agents import eat as eat_agent
from eat_policy.sim import engine, scenarios
from eat_policy.snapshot import Decision, Snapshot


def compare(snap: Snapshot, hint: Decision, d: Decision) -> list[str]:
    if hint.job != d.job:
        return ["other job"]
    out = ["same k" if hint.k == d.k else "other k"]
    if set(hint.gpus) == set(d.gpus):
        out.append("same GPUs")
    elif hint.k == d.k == 1:
        own, theirs = snap.gpu_speed[d.gpus[0]], snap.gpu_speed[hint.gpus[0]]
        out.append("faster GPU" if own > theirs else "slower GPU" if own < theirs else "other GPU, same speed")
    ratio = d.steps / hint.steps
    out.append("fewer steps" if ratio < 0.95 else "more steps" if ratio > 1.05 else "same steps")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2, help="held-out seeds 100000 onwards")
    parser.add_argument("--warm-pool", action="store_true", help="GPUs keep models between jobs")
    args = parser.parse_args()
    actor = eat_agent.load_actor(args.checkpoint)
    if actor.hint is None:
        parser.error(f"{args.checkpoint} was trained without a hint")
    policy, hint = eat_agent.LearnedPolicy(actor=actor, name="checkpoint"), base.make(actor.hint)
    sim = engine.Simulator(scenarios.edge(n_nodes=args.nodes, load=0.8, gpu_keeps_model=args.warm_pool))
    counts: collections.Counter[str] = collections.Counter()
    both, waits, met = 0, 0, []
    for seed in range(100_000, 100_000 + args.seeds):
        sim.reset(seed)
        policy.reset(seed)
        hint.reset(seed)
        while not sim.done:
            snap = sim.snapshot()
            proposal, d = hint.decide(snap), policy.decide(snap)
            if proposal is not None and d is not None:
                both += 1
                counts.update(compare(snap, proposal, d))
            elif proposal is not None:
                waits += 1
            sim.step(d)
        met.append(sim.metrics().deadline_attainment)
    print(f"{args.checkpoint} against its hint {actor.hint}: {args.nodes} nodes, ρ 0.8, seeds 100000..{99_999 + args.seeds}, "
          f"deadlines met {sum(met) / len(met):.1%}")
    print(f"  waits where the hint dispatches: {waits}; {both} decisions where both dispatch, and of them:")
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<34} {n / both:6.1%}  ({n})")


if __name__ == "__main__":
    main()
