"""How much is there to gain over the best heuristic on edge (issue 3's "+5 points of deadlines")?

On the same traces (seeds 0..N-1), ρ 0.8, mean response and deadline attainment of:
- ``edf-cache-queue-fit`` (the reference: the best heuristic on deadlines) and the other strong
  heuristics;
- the clairvoyant rollout teacher over the reference (``agents.rollout``: one-step lookahead on
  copies of the episode, which knows future arrivals), scored by the edge training reward: what
  policy improvement finds, an optimistic yardstick for a learned policy that sees only the state;
- the same teacher knowing only the present: options played out on 4 futures drawn from it and
  scored on the jobs of the next 10 s, a yardstick a policy that sees the state can reach; that
  one trying half the proposed steps too; and that one keeping the reference's GPUs and trying
  more steps counts instead, the teacher of a residual clone (``train --residual``);
- the shipped ``eat`` policy (``eat-edge``).
Differences are paired by seed against the reference (mean ± 95% CI); quality is the mean
Q(steps). Without ``--warm-pool`` the cluster is the operator's pods (every job loads its model),
where the heuristics leave room.

    python bench/edge_headroom.py --seeds 8

``--residual-teachers`` runs the reference and the residual clone's teacher only, with the levers
tried for more: 8 drawn futures instead of 4, and finer steps factors (×0.25–1.25 in 7 factors).
Measured on the pods at 8 nodes, seeds 0–7 (about 12 / 20 / 12 min per teacher on one core):
4 futures +3.4 ± 2.4 points, 8 futures +3.9 ± 2.1, finer factors +3.0 ± 2.0; 8 futures against
4, paired: +0.5 ± 1.1 points, −0.17 ± 0.25 s.

``--horizons 5,20,40`` runs the reference and that teacher scoring the jobs of the next 5, 20 and
40 s instead of 10 (same setting, about 15 / 25 / 35 min per horizon): +3.3 ± 1.6 / +2.5 ± 2.0 /
+1.9 ± 2.0 points, −1.80 / −1.52 / −1.17 s; the longer a drawn future is played, the less it
tells.

At 16 nodes (``--nodes 16 --horizons 10 --seeds 6``, about 20 min) that teacher gains +5.2 ± 6.9
points and −3.58 ± 4.53 s (72.1% → 77.3%), more than at 8 nodes, where ``eat-pods`` is taught; on
the same seeds ``eat-pods`` gains +3.3 ± 7.5 points and −2.5 ± 4.7 s.

Two richer option sets for that teacher (8 nodes, seeds 0–7, against the same reference, whose
teacher row is +3.4 ± 2.4 points and −1.69 ± 0.41 s; about 12–18 min per teacher on one core):
``--sticky-horizons 10,20``, where a steps option's factor holds for its whole play-out, +3.4 ±
1.7 / +3.3 ± 1.7 points and −1.90 / −2.06 s; ``--job-moves 2,4``, which also tries the 2 or 4
earliest-deadline other jobs where their plan alone starts them now, +3.5 ± 1.9 / +3.6 ± 1.3
points and −1.58 / −1.62 s. Neither steps nor job order lifts the one-step teacher past +4.

A second step of policy iteration: ``--over eat-pods --futures 2 --horizon 5 --workers 2``, the
residual teacher over ``eat-pods`` (its proposals, and it deciding the play-outs, one batched
actor pass per round of them), beside the same teacher over the reference (8 nodes, seeds 0–7,
16 min on 2 workers): over the reference +1.5 ± 2.0 points, −1.73 ± 0.50 s; ``eat-pods`` +2.6 ±
2.6, −2.09 ± 0.44 s; over ``eat-pods`` +4.3 ± 1.9 points, −1.72 ± 0.32 s (79.9% against 78.2%,
more deadlines met on 7 of 8 seeds, 0.4 s slower): the most a teacher that sees only the present
has gained on the pods at 8 nodes. With the shipped teacher's setting (``--futures 4 --horizon
10``, 44 min on 2 workers) the teacher over ``eat-pods`` gains less: +3.2 ± 1.5 points, −1.71 ±
0.40 s (78.9%), +0.7 points over ``eat-pods`` (from −4.7 to +4.7 per seed). Each episode is
reported on stderr as it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import time

import torch

from eat_policy import evaluate
from eat_policy.agents import base, rollout
from eat_policy.sim import engine, scenarios

REFERENCE = "edf-cache-queue-fit"
HEURISTICS = ("edf-cache-queue", "cache-lct-queue-fit")
TRAINING_OBJECTIVE = rollout.Objective(env_reward_weight=1.0, time_scale_s=600.0)
"""``eat-policy train``'s edge reward: the env's reward less job-seconds / 600 s."""
RESIDUAL_STEPS_FACTORS = (0.35, 0.5, 0.7, 0.85, 1.25)
"""The residual pods clone's teacher (``train --residual --teacher-steps-factors``)."""
FINER_STEPS_FACTORS = (0.25, 0.35, 0.5, 0.6, 0.7, 0.85, 1.25)


def residual_teacher(futures: int = 4, steps_factors: tuple[float, ...] = RESIDUAL_STEPS_FACTORS,
                     horizon_s: float = 10.0, sticky_steps: bool = False, job_moves: int = 0,
                     over: str = REFERENCE) -> rollout.RolloutTeacher:
    """The teacher of a residual clone: the reference's GPUs, other steps, drawn futures, scored
    on the jobs of the next ``horizon_s`` (``eat-edge-pods``' teacher: 10 s); ``over`` another
    policy, that policy's proposals and play-outs instead of the reference's."""
    return rollout.RolloutTeacher(over, TRAINING_OBJECTIVE, futures=futures, horizon_s=horizon_s,
                                  steps_factors=steps_factors, gpu_moves=False, sticky_steps=sticky_steps,
                                  job_moves=job_moves)


def residual_teachers() -> dict[str, base.Policy]:
    return {REFERENCE: base.make(REFERENCE),
            "residual teacher, 4 futures, x0.35-1.25": residual_teacher(),
            "  8 futures": residual_teacher(futures=8),
            "  4 futures, x0.25-1.25 in 7 factors": residual_teacher(steps_factors=FINER_STEPS_FACTORS)}


def policies() -> dict[str, base.Policy]:
    out = {name: base.make(name) for name in (REFERENCE, *HEURISTICS)}
    out[f"rollout teacher over {REFERENCE}"] = rollout.RolloutTeacher(REFERENCE, TRAINING_OBJECTIVE)
    out["  the same, 4 drawn futures, 10 s"] = rollout.RolloutTeacher(REFERENCE, TRAINING_OBJECTIVE, futures=4, horizon_s=10.0)
    out["  and steps x0.5 too"] = rollout.RolloutTeacher(REFERENCE, TRAINING_OBJECTIVE, futures=4, horizon_s=10.0,
                                                         steps_factors=(0.5, *rollout.STEPS_FACTORS))
    out["  steps x0.35-1.25 on the reference's GPUs"] = residual_teacher()
    out["eat (eat-edge)"] = base.make("eat")
    return out


def _with_reference(teachers: dict[str, base.Policy]) -> dict[str, base.Policy]:
    return {REFERENCE: base.make(REFERENCE)} | teachers


_CHOSEN: dict[str, base.Policy] = {}
_SIM: list[engine.Simulator] = []


def _episode(job: tuple[str, int]) -> tuple[str, int, dict[str, float]]:
    name, seed = job
    torch.set_num_threads(1)
    return name, seed, evaluate.run_episode(_SIM[0], _CHOSEN[name], seed)[0]


def play(sim: engine.Simulator, chosen: dict[str, base.Policy], seeds: range, workers: int) -> dict[str, list[dict[str, float]]]:
    """Every policy's episode metrics on every seed, in ``workers`` forked processes; each
    episode is reported on stderr as it ends (a teacher's run can take hours)."""
    _CHOSEN.update(chosen)
    _SIM[:] = [sim]
    jobs = [(name, s) for name in chosen for s in seeds]
    start = time.perf_counter()
    done: dict[tuple[str, int], dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        if workers == 1:
            episodes = map(_episode, jobs)
        else:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(workers))
            episodes = pool.imap_unordered(_episode, jobs, chunksize=1)
        for name, seed, m in episodes:
            done[name, seed] = m
            print(f"[{len(done)}/{len(jobs)} {time.perf_counter() - start:6.0f} s] {name.strip()}, seed {seed}: "
                  f"{m['resp_mean_s']:.2f} s, {m['deadline_attainment']:.1%}", file=sys.stderr, flush=True)
    return {name: [done[name, s] for s in seeds] for name in chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--warm-pool", action="store_true", help="GPUs keep models between jobs")
    parser.add_argument("--residual-teachers", action="store_true", help="only the reference and residual teachers")
    parser.add_argument("--horizons", help="only the reference and the residual teacher scoring the next H s, "
                                           "for each H of this comma-separated list")
    parser.add_argument("--sticky-horizons", help="only the reference and the residual teacher whose steps factor "
                                                  "holds for the whole play-out, scoring the next H s, for each H")
    parser.add_argument("--job-moves", help="only the reference and the residual teacher that also tries the N "
                                            "earliest-deadline other jobs, for each N of this comma-separated list")
    parser.add_argument("--over", help="only the reference, this policy and the residual teachers over both "
                                       "(e.g. eat-pods: a second step of policy iteration)")
    parser.add_argument("--futures", type=int, default=4, help="drawn futures of --over's teachers")
    parser.add_argument("--horizon", type=float, default=10.0, help="seconds scored by --over's teachers")
    parser.add_argument("--workers", type=int, default=1, help="processes that play the episodes")
    args = parser.parse_args()
    seeds = range(args.seeds)
    sim = engine.Simulator(scenarios.edge(n_nodes=args.nodes, load=0.8, gpu_keeps_model=args.warm_pool))
    if args.horizons:
        chosen = _with_reference({f"residual teacher, {h:g} s horizon": residual_teacher(horizon_s=h)
                                  for h in map(float, args.horizons.split(","))})
    elif args.over:
        setting = dict(futures=args.futures, horizon_s=args.horizon)
        chosen = _with_reference({f"residual teacher, {args.futures} futures, {args.horizon:g} s": residual_teacher(**setting),
                                  args.over: base.make(args.over),
                                  "  the same teacher over it": residual_teacher(over=args.over, **setting)})
    elif args.job_moves:
        chosen = _with_reference({f"residual teacher + {n} other jobs": residual_teacher(job_moves=n)
                                  for n in map(int, args.job_moves.split(","))})
    elif args.sticky_horizons:
        chosen = _with_reference({f"sticky residual teacher, {h:g} s horizon": residual_teacher(horizon_s=h, sticky_steps=True)
                                  for h in map(float, args.sticky_horizons.split(","))})
    else:
        chosen = residual_teachers() if args.residual_teachers else policies()
    results = play(sim, chosen, seeds, args.workers)
    physics = "warm pool" if args.warm_pool else "pods, no warm pool"
    print(f"edge, {args.nodes} nodes, ρ 0.8, {physics}, seeds 0..{len(seeds) - 1}; Δ paired against {REFERENCE}")
    print(f"  {'policy':<42} {'response s':>10} {'deadlines':>9} {'quality':>7}   {'Δ response s':>14}   {'Δ deadlines, points':>20}")
    for name, episodes in results.items():
        resp, _ = evaluate.mean_ci(m["resp_mean_s"] for m in episodes)
        met, _ = evaluate.mean_ci(m["deadline_attainment"] for m in episodes)
        quality, _ = evaluate.mean_ci(m["quality_mean"] for m in episodes)
        d_resp = evaluate.mean_ci(m["resp_mean_s"] - r["resp_mean_s"] for m, r in zip(episodes, results[REFERENCE]))
        d_met = evaluate.mean_ci(100 * (m["deadline_attainment"] - r["deadline_attainment"])
                                 for m, r in zip(episodes, results[REFERENCE]))
        print(f"  {name:<42} {resp:10.2f} {met:9.1%} {quality:7.3f}   {d_resp[0]:+7.2f} ± {d_resp[1]:4.2f}   {d_met[0]:+11.1f} ± {d_met[1]:4.1f}")


if __name__ == "__main__":
    main()
