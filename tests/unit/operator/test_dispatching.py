"""Batch selection, the plan request, and the policy client's in-process fallback."""

from __future__ import annotations

import asyncio
import socket

from tests.unit.operator.builders import T0, active_status, job, node, pod

from eat_policy import api

from eat_operator import dispatching, snapshot, spec as spec_mod

MODELS = spec_mod.known_models(())


def test_pending_jobs_in_queue_order_and_invalid_ones_apart() -> None:
    jobs = [job("late", created=T0 + 2), job("early", created=T0), job("urgent", created=T0 + 5, priority=10),
            job("bad", model="nope"), job("running", status=active_status("Running", ["a"])),
            job("leftover", status={"phase": "Pending"})]
    snap = snapshot.build([node("a")], [pod("leftover-0", job="leftover", deleting=True)], jobs, T0 + 10)
    valid, invalid = dispatching.select_pending(snap, MODELS)
    assert [j.name for j, _ in valid] == ["urgent", "early", "late"]
    assert [(j.name, e.reason) for j, e in invalid] == [("bad", "UnknownModel")]


def test_plan_request_carries_jobs_and_free_gpus() -> None:
    snap = snapshot.build([node("a", gpus=8)], [], [job("x", deadlineSeconds=30, maxPatches=2)], T0 + 1)
    valid, _ = dispatching.select_pending(snap, MODELS)
    req = dispatching.plan_request(valid, snap.node_infos(), snap.now, MODELS)
    assert req.jobs[0].deadline_s == 30 and req.jobs[0].max_patches == 2 and req.nodes[0].gpus_free == 8
    assert req.now == T0 + 1


def test_policy_down_plans_in_process_and_says_why() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens
    client = dispatching.PolicyClient(f"http://127.0.0.1:{port}", timeout_s=0.5, retry_after_s=30)
    req = api.PlanRequest(
        jobs=[api.JobRequest(id="ns/a", model="sd15", width=512, height=512, steps_min=20, steps_max=30,
                             arrival_time=T0)],
        nodes=[api.NodeInfo(name="n", gpu_product="NVIDIA-H100-80GB-HBM3", gpus_total=4, gpus_free=4)], now=T0 + 1)

    async def twice() -> tuple[dispatching.PlanOutcome, dispatching.PlanOutcome]:
        try:
            return await client.plan(req), await client.plan(req)
        finally:
            await client.close()

    first, second = asyncio.run(twice())
    for out in (first, second):
        assert out.source == "in-process" and "unreachable" in (out.fallback_reason or "")
        assert out.response.decisions[0].action == "dispatch"
    assert second.duration_s < 0.5  # the service is not retried within retry_after_s


def test_held_reasons_are_rewritten_at_most_every_interval(settings) -> None:  # type: ignore[no-untyped-def]
    now = [T0]
    d = dispatching.Dispatcher(settings, client=None, policy=None, clock=lambda: now[0])  # type: ignore[arg-type]
    fresh = snapshot.job_view(job())
    assert d._pending(fresh, T0, "waiting for a plan").status is not None  # first sight: always written
    shown = snapshot.job_view(job(status={"phase": "Pending", "message": "waiting for a plan"}))
    assert d._pending(shown, T0 + 1, "held: no idle GPU", "Held").empty
    step = d._pending(shown, T0 + settings.pending_status_interval_s + 1, "held: no idle GPU", "Held")
    assert step.status is not None and step.status["reason"] == "Held"


def test_resting_nodes_are_not_offered_until_their_rest_ends(settings) -> None:  # type: ignore[no-untyped-def]
    d = dispatching.Dispatcher(settings, client=None, policy=None)  # type: ignore[arg-type]
    d._resting = {"b": T0 + 60}
    snap = snapshot.build([node("a"), node("b")], [], [], T0)
    assert [n.name for n in d._offered(snap)] == ["a"]
    snap = snapshot.build([node("a"), node("b")], [], [], T0 + 61)
    assert [n.name for n in d._offered(snap)] == ["a", "b"] and not d._resting
