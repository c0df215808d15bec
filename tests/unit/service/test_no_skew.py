"""The service featurises a live state exactly as the simulator does (no train/serve skew)."""

import numpy as np

from eat_policy import api, features
from eat_policy.service import requests
from eat_policy.sim import catalog, engine, scenarios

NOW = 1_800_000_000.0


def snapshot_as_request(snap, now: float) -> api.PlanRequest:  # type: ignore[no-untyped-def]
    """Describe a simulator snapshot as the operator would send it."""
    nodes = []
    for n, name in enumerate(snap.node_names):
        own = snap.slots[n, : snap.node_gpus[n]]
        busy = own[snap.gpu_free_at[own] > snap.now]
        resident = [m for i, m in enumerate(snap.model_names) if snap.gpu_resident[own, i].all()]
        nodes.append(api.NodeInfo(
            name=name, gpu_product=catalog.GPU_TYPES[snap.node_type[n]].product,
            gpus_total=int(snap.node_gpus[n]), gpus_free=int(len(own) - len(busy)),
            gpu_free_at=[now + float(snap.gpu_free_at[g] - snap.now) for g in busy],
            ready=bool(snap.node_up[n]),
            cached_models=[m for i, m in enumerate(snap.model_names) if snap.node_disk[n, i]],
            resident_models=resident, gpu_mem_gb=float(snap.node_gpu_mem_gb[n]), disk_gb=float(snap.node_disk_gb[n]),
        ))
    jobs = [api.JobRequest(
        id=f"job-{int(snap.job_id[j])}", model=snap.model_names[int(snap.job_model[j])],
        width=int(np.sqrt(snap.job_pixels[j])), height=int(np.sqrt(snap.job_pixels[j])),
        steps_min=int(snap.job_steps_min[j]), steps_max=int(snap.job_steps_max[j]),
        deadline_s=float(snap.job_deadline_s[j] - snap.job_arrival_s[j]),
        arrival_time=now + float(snap.job_arrival_s[j] - snap.now),
    ) for j in range(snap.n_jobs)]
    return api.PlanRequest(jobs=jobs, nodes=nodes, now=now)


def test_one_state_two_paths_identical_tensors() -> None:
    sim = engine.Simulator(scenarios.edge(n_nodes=8, load=1.2, n_jobs=80))
    sim.reset(5)
    policy_steps = 0
    from eat_policy.agents import base

    policy = base.make("first-fit")
    while sim.snapshot().n_jobs < 4 or policy_steps < 6:  # a state with busy GPUs and a queue
        sim.step(policy.decide(sim.snapshot()))
        policy_steps += 1
    # The wire format carries busy GPUs last on each node and residency per node: align the sim.
    for n in range(sim.layout.n_nodes):
        own = sim.layout.slots[n, : sim.layout.node_gpus[n]]
        sim.gpu_free_at[own] = np.sort(sim.gpu_free_at[own])
        sim.gpu_resident[own] = sim.gpu_resident[own].all(axis=0)
    sim._snap = None
    sim_snap = sim.snapshot()
    # Service times are relative to now (0), the sim's to the episode start: shift the sim.
    shifted = requests.build(snapshot_as_request(sim_snap, NOW), NOW, 32, {}, 30.0, 0.9).snapshot
    a, b = features.featurize(sim_snap), features.featurize(shifted)
    assert sim_snap.n_jobs >= 4 and (sim_snap.gpu_free_at > sim_snap.now).any()
    for field in ("nodes", "jobs", "pairs", "global_", "job_mask", "k_mask", "free"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-5, err_msg=field)
