"""The cache-aware policies' compiled planner decides exactly as their plain definition.

``cache_aware.plan_simply`` is the definition (numpy, one candidate search per job and
reservation state); on edge the policies answer through ``cache_aware.Planner``, which runs
the numba transcription in ``cache_aware_kernel``. Every decision here is checked against
``plan_simply`` on the same snapshot: along whole episodes, and along chains of randomly changed
snapshots with many exact ties, time going backwards and nodes failing, which the simulator
never produces.
"""

import dataclasses

import numba
import numpy as np
import pytest

from eat_policy.agents import base, cache_aware, cache_aware_kernel, heuristics
from eat_policy.sim import engine, physics, scenarios
from eat_policy.snapshot import Snapshot

POLICIES = ["cache-lct", "edf-cache"]


def reference(policy: heuristics.CacheAwareLCTPolicy, snap: Snapshot) -> object:
    jobs = [int(j) for j in policy.order(snap)[: cache_aware.LOOKAHEAD]]
    return cache_aware.plan_simply(snap, jobs, physics.EdgePhysics())


def check_episode(scenario: scenarios.Scenario, name: str, seed: int) -> int:
    sim = engine.Simulator(scenario)
    policy = base.make(name)
    sim.reset(seed)
    policy.reset(seed)
    decisions = 0
    while not sim.done:
        snap = sim.snapshot()
        expected = reference(policy, snap)
        got = policy.decide(snap)
        assert got == expected, f"decision {decisions} at t={snap.now}: {got} != {expected}"
        sim.step(got)
        decisions += 1
    return decisions


EPISODES = [
    pytest.param(dict(n_nodes=3, n_jobs=60), id="3-nodes"),
    pytest.param(dict(n_nodes=16, n_jobs=120), id="16-nodes"),
    pytest.param(dict(n_nodes=16, n_jobs=120, mode="fixed-k"), id="16-nodes-fixed-k"),
    pytest.param(dict(n_nodes=8, n_jobs=100, failures_per_node_h=3.0, repair_s=60.0, noise_cv=0.3),
                 id="failures-noise"),
    pytest.param(dict(n_nodes=12, n_jobs=120, arrival="mmpp", load=1.3), id="bursty-overload"),
]


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("overrides", EPISODES)
def test_decisions_equal_the_definition_along_episodes(name: str, overrides: dict) -> None:  # type: ignore[type-arg]
    overrides = {"load": 0.9, **overrides}
    assert check_episode(scenarios.edge(**overrides), name, seed=1) > 50


@pytest.mark.slow
@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("n_nodes", [24, 64])
def test_decisions_equal_the_definition_on_larger_clusters(name: str, n_nodes: int) -> None:
    # More nodes than the kernel's small tests: long cross-node orders, many nodes re-ranked per reservation.
    scenario = scenarios.edge(n_nodes=n_nodes, load=0.9, n_jobs=3 * n_nodes, failures_per_node_h=1.0)
    for seed in range(2):
        check_episode(scenario, name, seed)


def decision_points(scenario: scenarios.Scenario, name: str, seed: int) -> list[Snapshot]:
    """Copies of the snapshots an episode decides on."""
    sim = engine.Simulator(scenario)
    policy = base.make(name)
    sim.reset(seed)
    policy.reset(seed)
    out = []
    while not sim.done:
        snap = sim.snapshot()
        out.append(dataclasses.replace(
            snap, gpu_free_at=snap.gpu_free_at.copy(), gpu_resident=snap.gpu_resident.copy(),
            node_disk=snap.node_disk.copy(), node_up=snap.node_up.copy(), gpu_util=snap.gpu_util.copy(),
        ))
        sim.step(policy.decide(snap))
    return out


def nudged(snap: Snapshot, rng: np.random.Generator) -> Snapshot:
    """The snapshot a little later with a GPU or two changed, on a 0.5 s grid (ties)."""
    now = snap.now + 0.5 * int(rng.integers(0, 3))
    free_at, resident, up = snap.gpu_free_at.copy(), snap.gpu_resident.copy(), snap.node_up.copy()
    for g in rng.choice(snap.n_gpus, int(rng.integers(0, 3)), replace=False):
        free_at[g] = now + 0.5 * int(rng.integers(-2, 30))
        resident[g, rng.integers(resident.shape[1])] ^= True
    if rng.random() < 0.05:
        up[rng.integers(snap.n_nodes)] ^= True
    return dataclasses.replace(snap, now=now, gpu_free_at=free_at, gpu_resident=resident, node_up=up,
                               gpu_util=(free_at > now).astype(float))


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize(("n_nodes", "mode"), [(6, "choose-k"), (16, "choose-k"), (16, "fixed-k"), (40, "choose-k")])
def test_decisions_equal_the_definition_on_changed_snapshot_chains(name: str, n_nodes: int, mode: str) -> None:
    points = decision_points(scenarios.edge(n_nodes=n_nodes, load=1.2, n_jobs=2 * n_nodes + 40, mode=mode), name, 0)
    rng = np.random.default_rng(7)
    policy = base.make(name)
    snap = points[0]
    outcomes = []
    for step in range(300):
        if rng.random() < 0.15:  # another decision point, earlier or later
            snap = points[int(rng.integers(len(points)))]
        else:
            snap = nudged(snap, rng)
        expected = reference(policy, snap)
        got = policy.decide(snap)
        assert got == expected, f"step {step}: {got} != {expected}"
        outcomes.append(got is None)
    assert 30 < sum(outcomes) < 270  # both waits and dispatches


def test_the_planner_runs_compiled() -> None:
    # The test environment has numba, so the checks above compare the compiled kernel.
    assert cache_aware_kernel.numba is numba
    assert isinstance(cache_aware_kernel.plan, numba.core.registry.CPUDispatcher)
    policy = base.make("cache-lct")
    sim = engine.Simulator(scenarios.edge(n_nodes=4, load=0.9, n_jobs=20))
    sim.reset(0)
    policy.decide(sim.snapshot())
    assert cache_aware_kernel.plan.signatures, "the edge decision did not go through the kernel"


def test_without_numba_the_planner_is_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator's image has no numba; its fallback planning must still decide.
    monkeypatch.setattr(cache_aware_kernel, "numba", None)
    assert check_episode(scenarios.edge(n_nodes=4, load=0.9, n_jobs=40), "edf-cache", seed=2) > 20


def test_a_copy_of_the_cluster_reuses_the_tables_and_then_takes_the_identity_check() -> None:
    import copy

    sim = engine.Simulator(scenarios.edge(n_nodes=4, n_jobs=20))
    sim.reset(3)
    planner = cache_aware.Planner()
    window = list(range(sim.snapshot().n_jobs))
    planner.decide(sim.snapshot(), window)
    tables = planner.tables
    twin = copy.deepcopy(sim)  # what the rollout teacher plays out on: equal arrays, other objects
    assert twin.snapshot().slots is not sim.snapshot().slots
    assert planner.decide(twin.snapshot(), window) == planner.decide(sim.snapshot(), window)
    planner.decide(twin.snapshot(), window)
    assert planner.tables is tables  # equal layout: not rebuilt
    assert all(a is b for a, b in zip(cache_aware._layout(twin.snapshot()), tables.layout))


def test_fresh_planners_share_a_layouts_tables_until_they_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    # The service plans each request with a freshly reset policy, hence a fresh planner.
    sims = []
    for n_nodes in (4, 5):
        sim = engine.Simulator(scenarios.edge(n_nodes=n_nodes, n_jobs=20))
        sim.reset(3)
        sims.append(sim)
    window = list(range(sims[0].snapshot().n_jobs))
    first = cache_aware.Planner()
    decision = first.decide(sims[0].snapshot(), window)
    kinds = len(first.tables.kind_key)
    assert kinds > 0
    again = cache_aware.Planner()
    assert again.decide(sims[0].snapshot(), window) == decision
    assert again.tables is first.tables and len(again.tables.kind_key) == kinds  # nothing tabled twice
    other = cache_aware.Planner()
    other.decide(sims[1].snapshot(), list(range(sims[1].snapshot().n_jobs)))
    assert other.tables is not first.tables  # another cluster, its own tables
    monkeypatch.setattr(cache_aware, "MAX_KINDS", kinds)
    full = cache_aware.Planner()
    assert full.decide(sims[0].snapshot(), window) == decision
    assert full.tables is not first.tables  # a full table is replaced, not scanned forever
