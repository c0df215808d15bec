"""The rollout teacher: one-step lookahead over a heuristic, scored on copies of the episode."""

import copy

import pytest

from eat_policy.agents import base, rollout
from eat_policy.sim import engine, scenarios


def _episode(policy, scenario: scenarios.Scenario, seed: int) -> tuple[float, engine.Simulator]:
    sim = engine.Simulator(scenario)
    sim.reset(seed)
    base.begin_episode(policy, sim, seed)
    total = 0.0
    while not sim.done:
        total += sim.step(policy.decide(sim.snapshot()))
    return total, sim


@pytest.mark.parametrize("seed", [0, 1])
def test_the_teacher_improves_on_its_heuristic(seed: int) -> None:
    """Policy improvement: on a deterministic episode, the best of the proposal and its
    alternatives, each played out exactly, cannot lose return against the proposal alone; on
    these loaded episodes some alternative wins (measured: +5.6 and +12.2 on 51–54)."""
    scenario = scenarios.edge(n_nodes=4, load=0.9, n_jobs=40)
    heuristic, _ = _episode(base.make("edf-cache-queue"), scenario, seed)
    teacher, sim = _episode(rollout.RolloutTeacher("edf-cache-queue"), scenario, seed)
    assert teacher > heuristic + 1.0
    assert sim.metrics().finished == 40


def test_alternatives_start_with_the_proposal_and_are_all_feasible() -> None:
    sim = engine.Simulator(scenarios.edge(n_nodes=6, load=0.8, n_jobs=60, initial_queue=10))
    sim.reset(2)
    heuristic = base.make("edf-cache-queue")
    idle = sim.snapshot()  # every GPU idle: waiting is not an option (features.may_wait)
    assert None not in rollout.alternatives(idle, heuristic.decide(idle))
    sim.step(heuristic.decide(idle))
    while (proposal := heuristic.decide(snap := sim.snapshot())) is None or proposal.k > 1:
        sim.step(proposal)  # to a single-GPU proposal, which has other GPUs to compare with
    options = rollout.alternatives(snap, proposal)
    assert options[0] == proposal and options[1] is None and len(options) > 3
    assert len(set(options)) == len(options)
    for option in options:
        copy.deepcopy(sim).step(option)  # raises engine.InvalidDecision on anything infeasible


def test_the_teacher_refuses_snapshots_of_other_episodes() -> None:
    teacher = rollout.RolloutTeacher("edf-cache-queue")
    sim = engine.Simulator(scenarios.edge(n_nodes=4, load=0.8, n_jobs=20))
    sim.reset(0)
    with pytest.raises(RuntimeError, match="only for the simulator attached"):
        teacher.decide(sim.snapshot())
