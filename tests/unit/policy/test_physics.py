"""Latency model: calibration points, cache tiers, and candidates agreeing with estimates."""

import numpy as np
import pytest

from eat_policy.agents import base
from eat_policy.sim import catalog, engine, physics, scenarios


@pytest.mark.parametrize(("k", "speedup"), [(2, 1.8), (4, 3.4), (8, 6.1)])
def test_distrifusion_speedups_at_3840px_over_nvlink(k: int, speedup: float) -> None:
    assert catalog.patch_speedup(k, 3840**2, "nvlink") == pytest.approx(speedup, rel=0.01)


def test_speedup_grows_with_resolution_and_shrinks_over_slower_links() -> None:
    assert catalog.patch_speedup(4, 512**2, "nvlink") < catalog.patch_speedup(4, 2048**2, "nvlink")
    assert catalog.patch_speedup(4, 1024**2, "network") < catalog.patch_speedup(4, 1024**2, "pcie") < catalog.patch_speedup(4, 1024**2, "nvlink")
    assert catalog.patch_speedup(8, 512**2, "network") == 1.0  # never slower than one GPU


def test_step_latency_matches_calibration_points() -> None:
    sd15, sdxl = catalog.MODELS[0], catalog.MODELS[1]
    assert sd15.step_s(512**2, 1.0) == pytest.approx(0.031, rel=0.01)  # calibration.md §6a
    assert sdxl.step_s(1024**2, 1.0) == pytest.approx(0.101, rel=0.02)


def test_quality_is_monotone_in_steps_per_model() -> None:
    for m in catalog.MODELS:
        q = [m.quality(s) for s in range(1, 60)]
        assert all(b >= a for a, b in zip(q, q[1:]))
    turbo = catalog.MODELS[2]
    assert turbo.quality(1) > catalog.MODELS[1].quality(4)


def _edge_sim(seed: int = 0) -> engine.Simulator:
    sim = engine.Simulator(scenarios.edge(n_nodes=8, load=0.9, n_jobs=120))
    sim.reset(seed)
    return sim


def test_cold_tiers_order_resident_disk_store() -> None:
    sim = _edge_sim()
    snap = sim.snapshot()
    phys = physics.EdgePhysics()
    j, m = 0, int(snap.job_model[0])
    g = int(np.flatnonzero(snap.node_gpu_mem_gb[snap.gpu_node] >= catalog.MODELS[m].vram_gb)[0])
    n = int(snap.gpu_node[g])
    costs = {}
    for tier, (res, disk) in {"resident": (True, True), "disk": (False, True), "store": (False, False)}.items():
        sim.gpu_resident[g, m], sim.node_disk[n, m] = res, disk
        p = phys.estimate(snap, j, (g,))
        assert p.cache == tier
        costs[tier] = p.startup_s
    assert costs["resident"] == 0 < costs["disk"] < costs["store"]
    spec = catalog.MODELS[m]
    assert costs["store"] - costs["disk"] == pytest.approx(spec.size_gb / catalog.STORE_FETCH_GB_S)


def _random_play(scenario: scenarios.Scenario, seed: int, decisions: int):  # type: ignore[no-untyped-def]
    """Snapshots of the first ``decisions`` decision points of an episode a random policy plays."""
    sim = engine.Simulator(scenario)
    policy = base.make("random")
    sim.reset(seed)
    policy.reset(seed)
    for _ in range(decisions):
        if sim.done:
            return
        snap = sim.snapshot()
        yield snap
        sim.step(policy.decide(snap))


@pytest.mark.parametrize("scenario", [scenarios.paper(mode="fixed-k", rate=0.1), scenarios.edge(n_nodes=8, n_jobs=120)], ids=["paper", "edge"])
def test_candidates_are_priced_exactly_as_estimate(scenario: scenarios.Scenario) -> None:
    phys = physics.for_scenario(scenario.name)
    checked = 0
    for snap in _random_play(scenario, 1, 10_000):
        if checked >= 200:
            break
        for j in range(min(snap.n_jobs, 3)):
            for p in phys.candidates(snap, j, 20):
                assert p == phys.estimate(snap, j, p.gpus)
                assert len(set(p.gpus)) == p.k
                checked += 1
    assert checked > 50


@pytest.mark.parametrize("scenario", [
    scenarios.paper(mode="fixed-k", rate=0.1),
    scenarios.edge(n_nodes=8, n_jobs=120),
    scenarios.edge(n_nodes=8, n_jobs=120, gpu_keeps_model=False),
], ids=["paper", "edge", "edge-pods"])
def test_finish_each_is_estimate_on_every_gpu_exactly(scenario: scenarios.Scenario) -> None:
    phys = physics.for_scenario(scenario.name)
    tiers, fetching = set(), 0
    for snap in _random_play(scenario, 2, 150):
        gpus = np.arange(snap.n_gpus)
        for j in range(min(snap.n_jobs, 2)):
            steps = int(snap.job_steps_min[j])
            expected = [phys.estimate(snap, j, (int(g),)) for g in gpus]
            assert phys.finish_each(snap, j, gpus, steps).tolist() == [p.finish_s(steps) for p in expected]
            tiers |= {p.cache for p in expected}
        if scenario.name == "edge":
            fetching += int((snap.node_disk_ready_s > snap.now).sum())
    if scenario.name == "paper":
        assert tiers == {"warm", "cold"}
    else:  # every cache tier, and model fetches still running into node disks
        assert tiers == ({"resident"} if scenario.gpu_keeps_model else set()) | {"disk", "store"} and fetching > 0


@pytest.mark.parametrize("gpu_keeps_model", [True, False])
def test_can_place_says_whether_candidates_finds_any(gpu_keeps_model: bool) -> None:
    phys = physics.EdgePhysics()
    rng = np.random.default_rng(0)
    seen = []
    for snap in _random_play(scenarios.edge(n_nodes=4, n_jobs=80, gpu_keeps_model=gpu_keeps_model), 2, 120):
        excluded = rng.random(snap.n_gpus) < rng.choice([0.0, 0.7, 0.95])  # few usable GPUs: big gangs cannot fit
        idle_only = bool(rng.integers(2))
        for j in range(snap.n_jobs):
            r = phys.readiness(snap, int(snap.job_model[j]), idle_only, excluded)
            found = bool(phys.candidates(snap, j, int(snap.job_steps_min[j]), idle_only, excluded))
            assert phys.can_place(snap, j, r) == found
            seen.append(found)
    assert any(seen) and not all(seen)


def test_engine_charges_what_physics_predicts() -> None:
    sim = _edge_sim(seed=3)
    snap = sim.snapshot()
    phys = physics.EdgePhysics()
    p = phys.candidates(snap, 0, int(snap.job_steps_max[0]), idle_only=True)[0]
    predicted = p.finish_s(int(snap.job_steps_max[0]))
    sim.step(base.Decision(0, p.gpus, int(snap.job_steps_max[0])))
    assert sim.gpu_free_at[p.gpus[0]] == pytest.approx(predicted)


def test_the_most_gpu_efficient_k_is_2_on_paper_and_1_on_edge() -> None:
    # paper: k·c_k = 0.315, 0.3125, 0.56 GPU-seconds per step; edge: patch speed-ups are sublinear
    assert physics.most_efficient_k("paper", (1, 2, 4), 8, 1440.0**2) == 2
    assert physics.most_efficient_k("paper", (1, 2, 4), 1, 1440.0**2) == 1  # capped by the job's k_max
    assert physics.most_efficient_k("edge", (1, 2, 4, 8), 8, 1024.0**2) == 1
