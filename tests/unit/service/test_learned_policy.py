"""The service with the shipped EAT checkpoint, and its fallbacks when the policy misbehaves."""

from pathlib import Path

import pytest

from eat_policy import api
from eat_policy.service.planner import Planner
from eat_policy.service.settings import Settings
from eat_policy.snapshot import Decision

from .conftest import make_job, make_node

CHECKPOINTS = Path(__file__).resolve().parents[3] / "policy" / "eat_policy" / "checkpoints"


def request(n_jobs: int = 3) -> api.PlanRequest:
    return api.PlanRequest(
        jobs=[api.JobRequest(**make_job(id=f"ns/j{i}", model="sdxl", width=1024, height=1024, steps_min=15,
                                        steps_max=40, deadline_s=30, age_s=5 - i)) for i in range(n_jobs)],
        nodes=[api.NodeInfo(**make_node("a100", gpus=4, cached_models=["sdxl"])),
               api.NodeInfo(**make_node("l4", gpus=2, product="NVIDIA-L4"))],
    )


@pytest.fixture(scope="module", params=["eat-edge.pt", "eat-edge-pods.pt"])
def planner(request: pytest.FixtureRequest) -> Planner:
    """The service with each shipped edge checkpoint (the image serves ``eat-edge-pods``)."""
    return Planner.from_settings(Settings(checkpoint=CHECKPOINTS / request.param))


def test_shipped_checkpoint_answers_with_feasible_plans(planner: Planner) -> None:
    assert planner.ready and planner.load_error is None
    body = planner.plan(request())
    assert body.policy.name == "eat" and not body.policy.fallback and planner.settings.checkpoint.name in body.policy.version
    used: dict[str, int] = {}
    for d in body.decisions:
        if d.action == "dispatch":
            assert 15 <= d.steps <= 40 and len(d.nodes) == d.patches and d.predicted_latency_s
            for n in d.nodes:
                used[n] = used.get(n, 0) + 1
    assert used and used.get("a100", 0) <= 4 and used.get("l4", 0) <= 2  # no GPU given twice


def test_learned_decisions_are_explained_by_their_attention(planner: Planner) -> None:
    body = planner.plan(request())
    dispatched = [d for d in body.decisions if d.action == "dispatch"]
    assert dispatched
    for d in dispatched:
        nodes_line = next(line for line in d.explanation if line.startswith("attention over nodes (uniform 50%): "))
        # both nodes, ranked, with the weight and the node's state in words
        assert nodes_line.count("%") == 3 and "a100" in nodes_line and "l4" in nodes_line
        assert "GPUs idle" in nodes_line and "model" in nodes_line
        jobs_line = next(line for line in d.explanation if line.startswith("attention over queued jobs (uniform 33%): "))
        assert d.job not in jobs_line and "ns/j" in jobs_line


def test_a_policy_that_raises_is_replaced_by_the_fallback(planner: Planner, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(snap):  # type: ignore[no-untyped-def]
        raise RuntimeError("nan in the actor")

    monkeypatch.setattr(planner.learned, "decide", boom)
    body = planner.plan(request())
    assert body.policy.fallback and body.policy.name == "edf-cache-queue-fit"
    assert "nan in the actor" in (body.policy.fallback_reason or "")
    assert any(d.action == "dispatch" for d in body.decisions)


def test_an_infeasible_decision_is_replaced_by_the_fallback(planner: Planner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner.learned, "decide", lambda snap: Decision(0, (0, 0), 20))
    body = planner.plan(request())
    assert body.policy.fallback and "infeasible decision" in (body.policy.fallback_reason or "")


def test_an_actor_whose_scores_are_not_finite_is_replaced_by_the_fallback(
        planner: Planner, monkeypatch: pytest.MonkeyPatch) -> None:
    """With NaN scores the greedy choice still "answers" (every dispatch at the fewest steps)."""
    assert planner.learned is not None
    actor = planner.learned.actor  # type: ignore[attr-defined]
    forward = actor.forward
    monkeypatch.setattr(actor, "forward", lambda *a, **kw: tuple(t * float("nan") for t in forward(*a, **kw)))
    body = planner.plan(request())
    assert body.policy.fallback and body.policy.name == "edf-cache-queue-fit"
    assert "not finite" in (body.policy.fallback_reason or "")


def test_a_node_without_gpus_is_left_out(planner: Planner) -> None:
    req = api.PlanRequest(jobs=[api.JobRequest(**make_job())],
                          nodes=[api.NodeInfo(**make_node("a")), api.NodeInfo(**make_node("empty", gpus=0))])
    body = planner.plan(req)
    assert not body.policy.fallback and [(d.action, d.nodes) for d in body.decisions] == [("dispatch", ["a"])]


def test_concurrent_requests_get_the_plans_they_get_alone(planner: Planner) -> None:
    """uvicorn runs requests on a thread pool, and the policies keep state while they plan: eight
    at once used to cross plans (a job sent to another request's node) or fail with IndexError."""
    from concurrent.futures import ThreadPoolExecutor

    now = 1_800_000_000.0

    def req(i: int) -> api.PlanRequest:
        nodes = [api.NodeInfo(**make_node(f"n{n}", cached_models=["sd15"] if n == i else [])) for n in range(8)]
        return api.PlanRequest(jobs=[api.JobRequest(**make_job(id=f"ns/j{i}", now=now))], nodes=nodes, now=now)

    def decisions(i: int) -> list[tuple[str, str, list[str]]]:
        return [(d.job, d.action, d.nodes) for d in planner.plan(req(i)).decisions]

    alone = [decisions(i) for i in range(8)]
    assert all(plan_ == [(f"ns/j{i}", "dispatch", [f"n{i}"])] for i, plan_ in enumerate(alone))  # the warm node
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(decisions, [i % 8 for i in range(160)]))
    assert together == [alone[i % 8] for i in range(160)]


def test_with_no_idle_gpu_the_policy_is_not_asked(planner: Planner) -> None:
    """Nothing can be dispatched, so every job waits and no fallback is counted (the learned
    policy used to divide by zero on a cluster without GPUs and fall back)."""
    for nodes in ([], [make_node("full", gpus=2, free=0)], [make_node("empty", gpus=0)]):
        body = planner.plan(api.PlanRequest(jobs=[api.JobRequest(**make_job())], nodes=[api.NodeInfo(**n) for n in nodes]))
        assert not body.policy.fallback and body.policy.name == "eat"
        assert [d.action for d in body.decisions] == ["wait"] and body.decisions[0].reason
