import pytest

from eat_policy.sim import engine, scenarios
from eat_policy.snapshot import Decision


def run(sim: engine.Simulator, policy, seed: int, on_step=None) -> None:  # type: ignore[no-untyped-def]
    sim.reset(seed)
    policy.reset(seed)
    while not sim.done:
        snap = sim.snapshot()
        decision = policy.decide(snap)
        if on_step:
            on_step(sim, snap, decision)
        sim.step(decision)


@pytest.fixture
def small_edge() -> scenarios.Scenario:
    return scenarios.edge(n_nodes=6, load=0.9, n_jobs=80, failures_per_node_h=2.0, repair_s=60.0)


def dispatch(sim: engine.Simulator, gpus: tuple[int, ...], steps: int, job: int = 0) -> float:
    return sim.step(Decision(job, gpus, steps))
