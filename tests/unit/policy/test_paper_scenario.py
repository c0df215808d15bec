"""The paper scenario must reproduce the prototype's constants (shared/paper-notes.md)."""

import math

import numpy as np
import pytest

from eat_policy.sim import engine, paper, scenarios, traces

from .conftest import dispatch


def fresh(mode: str = "choose-k", n_nodes: int = 4, rate: float = 0.05) -> engine.Simulator:
    sim = engine.Simulator(scenarios.paper(n_nodes=n_nodes, mode=mode, rate=rate))
    sim.reset(seed=3)
    return sim


@pytest.mark.parametrize(("k", "c", "r"), [(1, 0.315, 24), (2, 0.15625, 24), (4, 0.14, 32)])
def test_cold_duration_is_ck_times_steps_plus_rk(k: int, c: float, r: float) -> None:
    sim = fresh()
    job = int(sim.snapshot().job_id[0])
    dispatch(sim, tuple(range(k)), 20)
    assert sim.records.start_s[job] == 0.0
    assert sim.gpu_free_at[0] == pytest.approx(c * 20 + r)


def test_eight_node_variant_has_k8_constants() -> None:
    sim = fresh(n_nodes=8)
    assert sim.scenario.k_choices == (1, 2, 4, 8)
    dispatch(sim, tuple(range(8)), 10)
    assert sim.gpu_free_at[0] == pytest.approx(0.10 * 10 + 30)


def test_same_node_set_is_warm_any_other_set_is_cold() -> None:
    sim = fresh()
    dispatch(sim, (0, 1), 10)  # cold: forms group {0, 1}
    first_end = sim.gpu_free_at[0]
    while sim.now < first_end:
        sim.step(None)  # wait (arrivals are events too) until the pair is free again
    assert sim.now == pytest.approx(first_end)
    dispatch(sim, (0, 1), 10)  # exactly the same set: warm
    assert sim.gpu_free_at[0] - sim.now == pytest.approx(0.15625 * 10)
    dispatch(sim, (2,), 10)  # new set: cold
    assert sim.gpu_free_at[2] - sim.now == pytest.approx(0.315 * 10 + 24)


def test_a_cold_start_tears_down_the_groups_it_touches() -> None:
    sim = fresh()
    dispatch(sim, (0, 1), 5)
    dispatch(sim, (2, 3), 5)
    while sim.snapshot().idle_gpus().size < 4:
        sim.step(None)
    dispatch(sim, (1, 2), 5)  # touches both groups: both are gone
    assert sim.node_group[0] == -1 and sim.node_group[3] == -1
    assert sim.node_group[1] == sim.node_group[2] >= 0
    t = sim.now
    dispatch(sim, (0,), 5)  # node 0's old group is gone, so cold
    assert sim.gpu_free_at[0] - t == pytest.approx(0.315 * 5 + 24)


@pytest.mark.parametrize(("steps", "q"), [(1, 0.0), (4, 0.0), (5, 0.124), (10, 0.186), (20, 0.248), (30, 0.284), (31, 0.27), (32, 0.27)])
def test_quality_curve(steps: int, q: float) -> None:
    assert paper.quality(steps) == pytest.approx(q, abs=1e-3)


def test_arrivals_ten_queued_then_poisson_and_cut_at_1024() -> None:
    sc = scenarios.paper(rate=0.05)
    tr = traces.make_trace(sc, seed=11)
    assert len(tr) == 32
    assert np.count_nonzero(tr.arrival_s == 0.0) == 10
    gaps = np.diff(tr.arrival_s[10:])
    assert np.all(gaps > 0)
    # Mean gap over many seeds approaches 1/λ = 20 s.
    all_gaps = np.concatenate([np.diff(traces.make_trace(sc, s).arrival_s[9:]) for s in range(200)])
    assert all_gaps.mean() == pytest.approx(20.0, rel=0.05)
    assert sc.cut_s == 1024.0


def test_fixed_k_jobs_carry_k_from_choices() -> None:
    tr = traces.make_trace(scenarios.paper(mode="fixed-k"), seed=5)
    assert set(tr.k.tolist()) <= {1, 2, 4} and len(set(tr.k.tolist())) > 1
    sim = fresh(mode="fixed-k")
    snap = sim.snapshot()
    assert snap.allowed_k(0) == (int(snap.job_k[0]),)
    with pytest.raises(engine.InvalidDecision, match="not allowed"):
        wrong = 1 if snap.job_k[0] != 1 else 2
        dispatch(sim, tuple(range(wrong)), 10)


def test_jobs_unfinished_at_the_cut_are_reported() -> None:
    sim = fresh(rate=0.01)
    while not sim.done:
        sim.step(None)  # a scheduler that never dispatches
    m = sim.metrics()
    assert sim.now == 1024.0
    assert m.finished == 0 and m.unfinished == m.arrived >= 10
    assert m.resp_mean_s > 0


def test_prototype_reward() -> None:
    sim = fresh()
    reward = dispatch(sim, (0,), 20)
    # all 10 visible jobs waited 0 s; D = 0.315·20 + 24 = 30.3
    assert reward == pytest.approx(min(10, 250 / 30.3) + 10 * paper.quality(20))
    assert math.isclose(paper.reward(0, 10, 0, 30), 10 + 2.8385, rel_tol=1e-3)


@pytest.mark.parametrize("n_nodes", [4, 8])
def test_no_policy_beats_the_mean_response_bound_at_its_quality(n_nodes: int) -> None:
    from eat_policy import evaluate
    from eat_policy.agents import base

    for rate in (0.05, 0.11):
        scenario = scenarios.paper(n_nodes=n_nodes, rate=rate)
        sim = engine.Simulator(scenario)
        for name in ("random", "first-fit", "cache-lct", "cache-lct-steps:5", "cache-lct-queue", "cache-lct-queue:80"):
            for seed in range(3):
                m, _ = evaluate.run_episode(sim, base.make(name), seed)
                assert m["unfinished"] == 0  # (at λ 0.01 a task arriving just before the cut does not)
                bound = paper.mean_response_bound(n_nodes, scenario.k_choices, int(m["arrived"]),
                                                  scenario.initial_queue, m["quality_mean"])
                assert 0 < bound <= m["resp_mean_s"], (name, rate, seed)


def test_the_bound_rises_with_the_quality_asked_for() -> None:
    bounds = [paper.mean_response_bound(4, (1, 2, 4), 32, 10, q) for q in (0.0, 0.1, 0.2, 0.25, 0.27)]
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    cold_starts_alone = paper.R_K[1] * 10 / 32
    assert cold_starts_alone < bounds[0] < cold_starts_alone + 1.0
