"""Simulator throughput: scheduling decisions per second on the edge scenario.

A decision is one call of the policy at a decision point (dispatch or wait), with the
simulation of the events in between included. One process, one core. Prints the median of
several episodes per (nodes, policy), and the ratio against first-fit run in the same process
(edf-cache-queue is the policy service's fallback).
Target (issue 2): >= 20,000 decisions/s at 16 nodes with the cache-aware heuristic.

The cache-aware policies plan through a numba kernel; its compilation (or loading from
numba's cache) happens in a warm-up episode before timing and is printed on its own.
"""

from __future__ import annotations

import statistics
import time

from eat_policy.agents import base
from eat_policy.sim import engine, scenarios

REPEATS = 5


def decisions_per_s(n_nodes: int, policy_name: str, seed: int) -> float:
    sim = engine.Simulator(scenarios.edge(n_nodes=n_nodes, load=0.8, n_jobs=max(300, 4 * n_nodes)))
    return episode_rate(sim, base.make(policy_name), seed)


def episode_rate(sim: engine.Simulator, policy: base.Policy, seed: int) -> float:
    """Decisions per second of one whole episode of ``policy`` on ``sim``'s trace ``seed``."""
    sim.reset(seed)
    base.begin_episode(policy, sim, seed)
    n, t0 = 0, time.perf_counter()
    while not sim.done:
        sim.step(policy.decide(sim.snapshot()))
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    t0 = time.perf_counter()
    decisions_per_s(4, "cache-lct", seed=0)
    print(f"warm-up (numba compile or cache load included): {time.perf_counter() - t0:.2f} s")
    print(f"{'nodes':>5} {'policy':<16} {'decisions/s (median of %d)' % REPEATS:>28} {'vs first-fit':>12}")
    for n_nodes in (16, 256):
        rates = {name: statistics.median(decisions_per_s(n_nodes, name, s) for s in range(REPEATS))
                 for name in ("first-fit", "cache-lct", "edf-cache", "edf-cache-queue")}
        for name, rate in rates.items():
            print(f"{n_nodes:>5} {name:<16} {rate:>28,.0f} {rate / rates['first-fit']:>12.2f}")


if __name__ == "__main__":
    main()
