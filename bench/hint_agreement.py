"""Where a hinted learned policy departs from its hint (the heuristic it is shown).

For each decision of a checkpoint's greedy episodes (edge, ρ 0.8, pods physics by default), the
hint's proposal on the same state against the policy's decision: same job? same k? same GPUs,
and if not, a faster or slower one? fewer or more steps (±5%)? Prints the shares over the
decisions where both dispatch, how often the policy waits where the hint dispatches, and the
policy's deadline attainment. ``--keep-hint-gpus`` instead plays the policy with its hint's GPUs
whenever it dispatches the hint's job with the hint's k (a probe of what its GPU choices cost),
and prints it against the hint, paired by seed. The checkpoint defaults to ``eat-edge-pods``.

    python bench/hint_agreement.py policy/eat_policy/checkpoints/eat-edge.pt --nodes 32
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from eat_policy import evaluate
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


class HintsGpus:
    """The policy, on its hint's GPUs whenever it dispatches the hint's job with the hint's k."""

    name = "policy on its hint's GPUs"

    def __init__(self, policy: eat_agent.LearnedPolicy, hint: base.Policy) -> None:
        self.policy, self.hint = policy, hint

    def reset(self, seed: int) -> None:
        self.policy.reset(seed)
        self.hint.reset(seed)

    def decide(self, snap: Snapshot) -> Decision | None:
        d, proposal = self.policy.decide(snap), self.hint.decide(snap)
        if d is not None and proposal is not None and (d.job, d.k) == (proposal.job, proposal.k):
            return Decision(d.job, proposal.gpus, d.steps)
        return d


def against_hint(sim: engine.Simulator, probe: HintsGpus, hint_name: str, seeds: range) -> None:
    hint = base.make(hint_name)
    pairs = [(evaluate.run_episode(sim, probe, s)[0], evaluate.run_episode(sim, hint, s)[0]) for s in seeds]
    print(f"{probe.name} − {hint_name}, paired over seeds {seeds.start}..{seeds.stop - 1} (mean ± 95% CI):")
    for metric, scale in (("resp_mean_s", 1.0), ("deadline_attainment", 100.0), ("quality_mean", 1.0)):
        mean, ci = evaluate.mean_ci(scale * (a[metric] - b[metric]) for a, b in pairs)
        print(f"  Δ {metric:<20} {mean:+8.3f} ± {ci:.3f}" + (" points" if scale == 100.0 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?", default=eat_agent.CHECKPOINTS / "eat-edge-pods.pt")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2, help="held-out seeds 100000 onwards")
    parser.add_argument("--warm-pool", action="store_true", help="GPUs keep models between jobs")
    parser.add_argument("--keep-hint-gpus", action="store_true", help="play it on its hint's GPUs, against the hint")
    args = parser.parse_args()
    actor = eat_agent.load_actor(args.checkpoint)
    if actor.hint is None:
        parser.error(f"{args.checkpoint} was trained without a hint")
    policy, hint = eat_agent.LearnedPolicy(actor=actor, name="checkpoint"), base.make(actor.hint)
    sim = engine.Simulator(scenarios.edge(n_nodes=args.nodes, load=0.8, gpu_keeps_model=args.warm_pool))
    if args.keep_hint_gpus:
        against_hint(sim, HintsGpus(policy, hint), actor.hint, range(100_000, 100_000 + args.seeds))
        return
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
