"""EAT against the heuristics on the paper scenario: per-seed response ratios with 95% CIs.

Every policy runs on the same arrival traces (seeds 0..N-1, the harness's test seeds). For
each λ and each (policy, reference) pair it prints the mean over seeds of
resp(policy)/resp(reference) − 1 with its 95% CI, the ratio of the mean responses, and both
mean qualities, since a policy can always buy time with fewer denoising steps (issue 3).

    python bench/paper_ratios.py --mode choose-k --seeds 20 \
        --policies eat --references random,cache-lct,cache-lct-queue,cache-lct-queue:30
"""

from __future__ import annotations

import argparse

import numpy as np

from eat_policy import evaluate
from eat_policy.sim import scenarios

RATES = (0.01, 0.03, 0.05, 0.07, 0.09, 0.11)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="choose-k", choices=scenarios.MODES)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--policies", default="eat")
    parser.add_argument("--references", default="random,cache-lct,cache-lct-queue")
    args = parser.parse_args()
    policies, references = args.policies.split(","), args.references.split(",")
    results = evaluate.sweep(lambda rate: scenarios.paper(mode=args.mode, rate=rate),
                             dict.fromkeys(policies + references), RATES, range(args.seeds))
    metric = {(r.policy, r.point, r.seed): r.metrics for r in results}
    print(f"paper ({args.mode}), {args.seeds} seeds: response vs reference, mean of per-seed ratios − 1 ± 95% CI")
    print(f"{'λ':>5}  {'policy':<20} {'reference':<20} {'per-seed':>16} {'ratio of means':>15} {'quality':>15}")
    for rate in RATES:
        for p in policies:
            for ref in (r for r in references if r != p):
                seeds = range(args.seeds)
                mine = np.array([metric[p, rate, s]["resp_mean_s"] for s in seeds])
                theirs = np.array([metric[ref, rate, s]["resp_mean_s"] for s in seeds])
                mean, ci = evaluate.mean_ci(100 * (mine / theirs - 1))
                q_mine = np.mean([metric[p, rate, s]["quality_mean"] for s in seeds])
                q_theirs = np.mean([metric[ref, rate, s]["quality_mean"] for s in seeds])
                print(f"{rate:>5}  {p:<20} {ref:<20} {mean:>+7.1f} ± {ci:4.1f}% {mine.mean() / theirs.mean():>14.2f}x"
                      f" {q_mine:>7.3f}/{q_theirs:.3f}")


if __name__ == "__main__":
    main()
