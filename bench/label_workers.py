"""Warm-start labelling with ``train --workers``: wall time of the same labelled episodes in this
process and on a pool of worker processes.

Four 200-job edge episodes (8 nodes, pods, ρ 0.8), labelled by the clairvoyant rollout teacher
over ``edf-cache-queue-fit``, with workers 1 and N in turn; prints the median wall time of
``--repeats`` rounds and the speed-up. The pool's start-up (spawned processes import torch) is
included, as a warm start pays it once.

    python bench/label_workers.py --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np

from eat_policy import train
from eat_policy.agents import base


def label_seconds(args: train.Args, draws: list[train.EpisodeDraw], workers: int) -> tuple[float, int]:
    teacher = train.make_teacher(str(args.bc_policy), train.objective(args))
    hint = base.make(str(args.hint)).decide
    start = time.perf_counter()
    with train._labelling_pool(workers) as pool:
        labels = sum(len(episode) for episode in train._label_episodes(args, draws, teacher, None, hint, pool))
    return time.perf_counter() - start, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    cli = parser.parse_args()
    args = train.Args(scenario="edge", gpu_keeps_model=False, points=(0.8, 0.8), hint="edf-cache-queue-fit",
                      bc_policy="rollout:edf-cache-queue-fit")
    rng = np.random.default_rng(0)
    draws = [train.EpisodeDraw.draw(args, rng) for _ in range(4)]
    draws = [dataclasses.replace(d, scenario=dataclasses.replace(d.scenario, n_jobs=200)) for d in draws]
    walls: dict[int, list[float]] = {1: [], cli.workers: []}
    for _ in range(cli.repeats):
        for workers in walls:
            seconds, labels = label_seconds(args, draws, workers)
            walls[workers].append(seconds)
    one, many = statistics.median(walls[1]), statistics.median(walls[cli.workers])
    print(f"{len(draws)} episodes, {labels} labels; median of {cli.repeats}:")
    print(f"  workers 1  {one:7.1f} s")
    print(f"  workers {cli.workers}  {many:7.1f} s   ({one / many:.2f}x faster)")


if __name__ == "__main__":
    main()
