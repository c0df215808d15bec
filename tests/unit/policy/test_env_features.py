"""The gymnasium env and the shared featurisation."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from eat_policy import features
from eat_policy.sim import engine, env, scenarios


@pytest.mark.parametrize("scenario", [scenarios.paper(), scenarios.paper(mode="fixed-k"), scenarios.edge(n_nodes=6, n_jobs=40)], ids=["paper", "paper-fixed-k", "edge"])
def test_env_passes_gymnasium_checks(scenario: scenarios.Scenario) -> None:
    check_env(env.SchedulingEnv(scenario), skip_render_check=True)


def test_random_actions_finish_an_episode_with_valid_decisions() -> None:
    e = env.SchedulingEnv(scenarios.edge(n_nodes=6, n_jobs=40))
    e.action_space.seed(0)
    obs, _ = e.reset(seed=0)
    terminated = truncated = False
    dispatched = 0
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = e.step(e.action_space.sample())
        assert e.observation_space.contains(obs)
        dispatched += not info["waited"]
    assert dispatched > 0 and info["metrics"]["arrived"] == 40


def test_an_episode_cut_by_its_time_limit_is_truncated_not_terminated() -> None:
    """Gymnasium's contract: a time limit truncates (the state still has a future); the end of
    the trace with every job served terminates."""
    def last_step(sc: scenarios.Scenario) -> tuple[bool, bool]:
        e = env.SchedulingEnv(sc)
        e.action_space.seed(0)
        e.reset(seed=0)
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, _ = e.step(e.action_space.sample())
        return terminated, truncated

    assert last_step(scenarios.paper(cut_s=30.0)) == (False, True)  # 10 jobs queued at 0, cut at 30 s
    assert last_step(scenarios.edge(n_nodes=6, n_jobs=40, load=0.3)) == (True, False)


def test_infeasible_choices_are_repaired_or_become_waits() -> None:
    e = env.SchedulingEnv(scenarios.paper())
    e.reset(seed=1)
    snap = e.sim.snapshot()
    obs = features.featurize(snap)
    # Every GPU is idle, so no completion will come: a wait would strand the queue and is
    # repaired into serving the first job (training masks it; the env's own API must too).
    assert not obs.may_wait and e.observation_space["may_wait"].contains(e._obs()["may_wait"])
    repaired = env.to_decision(snap, {"job": 10, "k": 0, "node_scores": np.zeros(4), "steps": 0}, obs)
    assert repaired is not None and repaired.job == 0
    d = env.to_decision(snap, {"job": 0, "k": 3, "node_scores": np.array([0.1, 0.9, 0.5, 0.2]), "steps": 7}, obs)
    assert d is not None and d.k == 4  # k=8 is not allowed with 4 nodes: nearest feasible is 4
    assert d.steps == 32
    d = env.to_decision(snap, {"job": 0, "k": 1, "node_scores": np.array([0.1, 0.9, 0.5, 0.2]), "steps": 0}, obs)
    assert d is not None and d.gpus == (1, 2)  # highest scores first
    e.step({"job": 0, "k": 0, "node_scores": np.zeros(4), "steps": 0})  # one GPU busy: waiting is an option
    busy = e.sim.snapshot()
    assert env.to_decision(busy, {"job": 10, "k": 0, "node_scores": np.zeros(4), "steps": 0}, features.featurize(busy)) is None


@pytest.mark.parametrize(("n_nodes", "window"), [(4, 10), (16, 32), (64, 32)])
def test_features_shapes_follow_nodes_and_jobs(n_nodes: int, window: int) -> None:
    sim = engine.Simulator(scenarios.edge(n_nodes=n_nodes, n_jobs=200, window=window, load=1.5))
    sim.reset(0)
    while sim.snapshot().n_jobs < 3 and not sim.done:
        sim.step(None)
    snap = sim.snapshot()
    obs = features.featurize(snap)
    j = snap.n_jobs
    assert obs.nodes.shape == (n_nodes, features.NODE_DIM)
    assert obs.jobs.shape == (j, features.JOB_DIM)
    assert obs.pairs.shape == (j, n_nodes, features.PAIR_DIM)
    assert obs.global_.shape == (features.GLOBAL_DIM,)
    for a in (obs.nodes, obs.jobs, obs.pairs, obs.global_):
        assert np.all(np.isfinite(a)) and np.abs(a).max() <= features.TIME_CLIP


def test_pair_features_see_the_cache_and_masks_see_memory() -> None:
    sim = engine.Simulator(scenarios.edge(n_nodes=8, n_jobs=40))
    sim.reset(0)
    snap = sim.snapshot()
    m = int(snap.job_model[0])
    sim.gpu_resident[:, m] = False
    sim.gpu_resident[0, m] = True
    obs = features.featurize(sim.snapshot())
    node0 = int(snap.gpu_node[0])
    assert obs.pairs[0, node0, 0] > 0 and obs.pairs[0, node0, 2] == 0.0
    assert np.all(obs.pairs[0, np.arange(8) != node0, 0] == 0)
    assert obs.free.sum(axis=1)[0] >= obs.k_mask[0].nonzero()[0].size


def test_observation_is_a_pure_function_of_the_snapshot() -> None:
    sim = engine.Simulator(scenarios.edge(n_nodes=8, n_jobs=40))
    sim.reset(2)
    a, b = features.featurize(sim.snapshot()), features.featurize(sim.snapshot())
    for field in ("nodes", "jobs", "pairs", "global_", "job_mask", "k_mask", "free"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_the_k_mask_offers_only_the_scenarios_patch_counts() -> None:
    sim = engine.Simulator(scenarios.edge(n_nodes=6, n_jobs=40, initial_queue=20, k_choices=(1, 2)))
    sim.reset(0)
    _, k_mask, _ = features.masks(sim.snapshot())
    two, four, eight = (features.K_VALUES.index(k) for k in (2, 4, 8))
    assert k_mask[:, two].any() and not k_mask[:, [four, eight]].any()
