"""The simulator's model caches and episode end when gangs are killed or run from GPU memory."""

import numpy as np
import pytest

from eat_policy.agents import base
from eat_policy.sim import catalog, engine, physics, scenarios

from .conftest import dispatch, run


def started_sim(**overrides: object) -> engine.Simulator:
    sim = engine.Simulator(scenarios.edge(n_nodes=8, load=0.8, n_jobs=60, **overrides))  # type: ignore[arg-type]
    sim.reset(1)
    return sim


def cold_gpu(sim: engine.Simulator, m: int, node: int, skip: int = 0) -> int:
    """A GPU of the node without model m in its memory."""
    snap = sim.snapshot()
    assert snap.node_gpu_mem_gb[node] >= catalog.MODELS[m].vram_gb
    return [int(g) for g in snap.slots[node, : snap.node_gpus[node]] if not snap.gpu_resident[g, m]][skip]


def fetching_node(sim: engine.Simulator, m: int, other_than: int) -> int | None:
    """A node with room for model m, without it on disk and in two GPUs' memory."""
    snap = sim.snapshot()
    return next((n for n in range(snap.n_nodes) if n != other_than and not snap.node_disk[n, m]
                 and snap.node_gpu_mem_gb[n] >= catalog.MODELS[m].vram_gb
                 and (~snap.gpu_resident[snap.slots[n, : snap.node_gpus[n]], m]).sum() >= 2), None)


def kill_at(sim: engine.Simulator, t: float, node: int) -> None:
    sim.now = t
    sim._fail(node)
    sim._snap = None


def dispatch_across(sim: engine.Simulator) -> tuple[int, int, int, physics.Placement]:
    """Dispatch the first job on a cold GPU of node 0 and one of a node that must fetch its
    model: (model, that node, its GPU, the placement)."""
    snap = sim.snapshot()
    m = int(snap.job_model[0])
    survivor_node = fetching_node(sim, m, other_than=0)
    assert survivor_node is not None
    g_fail, g_live = cold_gpu(sim, m, 0), cold_gpu(sim, m, survivor_node)
    placement = sim.physics.estimate(snap, 0, (g_fail, g_live))
    dispatch(sim, (g_fail, g_live), int(snap.job_steps_min[0]))
    return m, survivor_node, g_live, placement


def test_a_gang_killed_while_loading_leaves_no_model_on_its_surviving_members() -> None:
    """A gang on two nodes fetches its model; one node fails during the fetch. The survivor's
    GPU never loaded it and its node's download was cut: a new dispatch there fetches again."""
    sim = started_sim()
    m, survivor_node, g_live, placement = dispatch_across(sim)
    assert placement.cache == "store"

    kill_at(sim, placement.start_s + 1.0, 0)
    snap = sim.snapshot()
    assert not snap.gpu_resident[g_live, m] and not snap.node_disk[survivor_node, m]
    again = sim.physics.estimate(snap, int(np.flatnonzero(snap.job_id == 0)[0]), (g_live,))
    assert again.cache == "store" and again.startup_s == pytest.approx(sim.physics.fetch_s[m])


def test_a_gang_killed_after_its_start_up_keeps_the_model_it_loaded() -> None:
    sim = started_sim()
    m, survivor_node, g_live, placement = dispatch_across(sim)

    kill_at(sim, placement.start_s + placement.startup_s + 0.1, 0)
    assert sim.gpu_resident[g_live, m] and sim.node_disk[survivor_node, m]


def test_a_download_another_live_gang_waits_for_survives_the_kill() -> None:
    sim = started_sim(initial_queue=20)
    snap = sim.snapshot()
    m, node = next((m, n) for m in range(len(catalog.MODELS))
                   if (snap.job_model == m).sum() >= 2 and (n := fetching_node(sim, m, other_than=0)) is not None)
    first, second = np.flatnonzero(snap.job_model == m)[:2].tolist()
    first_id, second_id = int(snap.job_id[first]), int(snap.job_id[second])
    g_fail, g_a, g_b = cold_gpu(sim, m, 0), cold_gpu(sim, m, node), cold_gpu(sim, m, node, skip=1)
    dispatch(sim, (g_fail, g_a), int(snap.job_steps_min[first]), job=first)  # starts the node's download
    snap = sim.snapshot()
    j = int(np.flatnonzero(snap.job_id == second_id)[0])
    assert sim.physics.estimate(snap, j, (g_b,)).cache == "disk"  # waits for that download
    dispatch(sim, (g_b,), int(snap.job_steps_min[j]), job=j)

    kill_at(sim, snap.now + 1.0, 0)
    assert first_id in sim.queue and second_id not in sim.queue
    assert sim.node_disk[node, m] and not sim.gpu_resident[g_a, m]


def test_a_run_from_gpu_memory_puts_nothing_on_the_nodes_disk() -> None:
    """A warm GPU runs the model from memory: if its node's disk has evicted the file, no
    download happens, so the disk neither gets it back nor evicts another model for it."""
    sim = started_sim()
    snap = sim.snapshot()
    m = int(snap.job_model[0])
    g = next(int(g) for g in snap.idle_gpus() if snap.gpu_resident[g, m])
    node = int(snap.gpu_node[g])
    sim.node_disk[node, m] = False  # as if evicted from the disk since
    sim._disk_lru[node].remove(m)
    disk_before = sim.node_disk[node].copy()
    assert sim.physics.estimate(snap, 0, (g,)).cache == "resident"
    dispatch(sim, (g,), int(snap.job_steps_min[0]))
    np.testing.assert_array_equal(sim.node_disk[node], disk_before)


def test_a_run_from_gpu_memory_refreshes_the_model_on_the_nodes_disk() -> None:
    sim = started_sim()
    snap = sim.snapshot()
    m = int(snap.job_model[0])
    g = next(int(g) for g in snap.idle_gpus() if snap.gpu_resident[g, m] and snap.node_disk[snap.gpu_node[g], m])
    node = int(snap.gpu_node[g])
    dispatch(sim, (g,), int(snap.job_steps_min[0]))
    assert sim.node_disk[node, m] and sim._disk_lru[node][-1] == m


@pytest.mark.parametrize("seed", [2, 3])
def test_killed_jobs_do_not_stretch_the_episode(seed: int) -> None:
    """With every job done, the episode ends at the last finish, not at a killed attempt's
    stale completion time (that made it longer and gpu_util smaller)."""
    sc = scenarios.edge(n_nodes=8, load=0.8, n_jobs=120, failures_per_node_h=60.0, repair_s=20.0)
    sim = engine.Simulator(sc)
    run(sim, base.make("edf-cache-queue-fit"), seed)
    assert sim.records.attempts.max() > 1 and sim.metrics().unfinished == 0
    assert sim.now == pytest.approx(max(np.nanmax(sim.records.finish_s), float(sim.trace.arrival_s[-1])))
