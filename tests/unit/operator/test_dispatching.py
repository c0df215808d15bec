"""Batch selection, the plan request, and the policy client's in-process fallback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.unit.operator.builders import T0, active_status, job, node, pod
from tests.unit.operator.fake_api import FakeApi

from eat_policy import api

from eat_operator import dispatching, kube, snapshot, spec as spec_mod, status

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


# --- whole cycles, against an in-memory API ---------------------------------------------------


def _url(plural: str, name: str) -> str:
    group = (api.GROUP, api.CRD_VERSION) if plural == api.CRD_PLURAL else ("", "v1")
    return kube.path(*group, plural, None if plural == "nodes" else "ns", name)


def _dispatcher(fake: FakeApi, settings, now: float = T0 + 100) -> dispatching.Dispatcher:  # type: ignore[no-untyped-def]
    """A dispatcher planning in-process, its read cache filled from ``fake``."""
    d = dispatching.Dispatcher(settings, fake, dispatching.PolicyClient(None, 1, 1), clock=lambda: now)  # type: ignore[arg-type]
    for url, obj in list(fake.objects.items()):
        kind = next((k for k, plural in KINDS.items() if f"/{plural}/" in url), None)
        if kind:
            d.observe(kind, "ADDED", obj)
    return d


KINDS = {"nodes": "nodes", "pods": "pods", "jobs": api.CRD_PLURAL}


def _cycle(fake: FakeApi, settings, now: float = T0 + 100) -> dispatching.Dispatcher:  # type: ignore[no-untyped-def]
    """One dispatcher cycle over what ``fake`` holds."""
    d = _dispatcher(fake, settings, now)
    asyncio.run(d.cycle())
    return d


def _status(fake: FakeApi, name: str) -> dict:
    return fake.objects[_url(api.CRD_PLURAL, name)].get("status") or {}


def test_jobs_the_policy_holds_do_not_keep_the_ones_behind_them_waiting(settings) -> None:  # type: ignore[no-untyped-def]
    """A batch's worth of jobs too big for the free GPUs heads the queue: the job behind them
    that fits is planned in the same cycle (they used to be the only ones shown, every cycle)."""
    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    for i in range(2):
        fake.put(_url(api.CRD_PLURAL, f"big{i}"), job(f"big{i}", created=T0 + i, patches=8))
    fake.put(_url(api.CRD_PLURAL, "small"), job("small", created=T0 + 2))
    _cycle(fake, settings.model_copy(update={"batch_size": 2}))
    assert _status(fake, "small")["phase"] == "Planned" and _status(fake, "small")["plan"]["nodes"] == ["a"]
    assert [_status(fake, f"big{i}")["reason"] for i in range(2)] == ["Held", "Held"]


def test_a_batch_the_planner_refuses_waits_with_the_reason_and_the_dispatcher_goes_on(settings) -> None:  # type: ignore[no-untyped-def]
    """A 422 and then the in-process planner's refusal used to end the dispatcher task, and with it
    the operator (and again after each restart)."""
    from eat_policy.service.requests import BadRequest

    class Refusing:
        async def plan(self, req: api.PlanRequest) -> dispatching.PlanOutcome:
            raise BadRequest(f"job {req.jobs[0].id!r}: something the operator did not check")

    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    fake.put(_url(api.CRD_PLURAL, "a"), job("a"))
    d = _dispatcher(fake, settings)
    d.policy = Refusing()  # type: ignore[assignment]
    asyncio.run(d.cycle())
    st = _status(fake, "a")
    assert st["phase"] == "Pending" and "cannot be planned: job 'ns/a': something" in st["message"]


def test_a_higher_priority_job_gets_the_gpu_before_an_older_one(settings) -> None:  # type: ignore[no-untyped-def]
    """The policy orders the jobs it is shown by deadline and age: each batch holds one priority."""
    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=1))
    fake.put(_url(api.CRD_PLURAL, "low"), job("low", created=T0, priority=-1000))
    fake.put(_url(api.CRD_PLURAL, "high"), job("high", created=T0 + 50, priority=1000))
    _cycle(fake, settings)
    assert _status(fake, "high")["phase"] == "Planned" and _status(fake, "low")["phase"] == "Pending"


def test_a_job_whose_spec_turns_invalid_fails_and_frees_its_gpus(settings) -> None:  # type: ignore[no-untyped-def]
    """E.g. its model edited to one not served: Failed with the reason, and its pods deleted
    (they used to be left running, holding GPUs, as the failed job was never looked at again)."""
    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    fake.put(_url(api.CRD_PLURAL, "j"), job("j", status=active_status("Running", ["a", "a"]), model="nope"))
    for rank in range(2):
        fake.put(_url("pods", f"j-{rank}"), pod(f"j-{rank}", rank=rank, node="a", phase="Running"))
    _cycle(fake, settings)
    assert _status(fake, "j")["phase"] == "Failed" and _status(fake, "j")["reason"] == "UnknownModel"
    assert not fake.under(kube.path("", "v1", "pods", "ns"))


def test_a_service_left_by_an_earlier_job_of_the_same_name_is_not_taken_for_ours(settings) -> None:  # type: ignore[no-untyped-def]
    """Deleted and re-applied under its name, a job finds the old job's Service, which the
    garbage collector has yet to remove: its pods stay gated (rank 0 could not be found by
    name) until its own Service is made; a name taken for good fails the attempt with why."""
    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    fake.put(_url(api.CRD_PLURAL, "j"), job("j", status=active_status("Planned", ["a", "a"], at=T0 + 90), patches=2))
    old = {"metadata": {"name": "j", "namespace": "ns", "ownerReferences": [{"uid": "uid-of-the-deleted-j"}]}}
    fake.put(_url("services", "j"), old)
    d = _cycle(fake, settings)
    pods = fake.under(kube.path("", "v1", "pods", "ns"))
    assert len(pods) == 2 and all(p["spec"].get("schedulingGates") for p in pods)
    assert "taken by a Service this job does not own" in d._service_refused[("ns", "j")].message

    d.clock = lambda: T0 + 100 + settings.unschedulable_timeout_s + 1  # still taken past the timeout
    for p in pods:
        d.observe("pods", "ADDED", p)
    asyncio.run(d.cycle())
    st = _status(fake, "j")
    assert st["phase"] == "Pending" and st["reason"] == "GroupNotCreated" and "taken by a Service" in st["message"]

    assert not fake.under(kube.path("", "v1", "pods", "ns"))  # torn down
    for p in pods:
        d.observe("pods", "DELETED", p)
    del fake.objects[_url("services", "j")]  # the garbage collector catches up; the job is planned again
    asyncio.run(d.cycle())
    owners = fake.objects[_url("services", "j")]["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == ["uid-j"] and ("ns", "j") not in d._service_refused


def test_a_service_the_api_server_refuses_keeps_the_gates_on_and_fails_the_attempt(settings) -> None:  # type: ignore[no-untyped-def]
    fake = FakeApi()
    fake.refusals[kube.path("", "v1", "services", "ns")] = kube.ApiError(403, "Forbidden", "exceeded quota: services=0")
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    fake.put(_url(api.CRD_PLURAL, "j"), job("j", status=active_status("Planned", ["a", "a"], at=T0 + 90), patches=2))
    d = _cycle(fake, settings)
    pods = fake.under(kube.path("", "v1", "pods", "ns"))
    assert len(pods) == 2 and all(p["spec"].get("schedulingGates") for p in pods)
    d.clock = lambda: T0 + 100 + settings.unschedulable_timeout_s + 1  # from the first refusal
    for p in pods:
        d.observe("pods", "ADDED", p)
    asyncio.run(d.cycle())
    st = _status(fake, "j")
    assert st["reason"] == "GroupNotCreated" and "service j: " in st["message"] and "exceeded quota" in st["message"]


def test_plans_the_offered_gpus_cannot_hold_are_not_acted_on(settings) -> None:  # type: ignore[no-untyped-def]
    """Pods placed on a node that was not offered, or on more GPUs than it has free, would wait
    for ever: such a decision is taken as a wait, with why; the feasible ones go ahead."""
    decisions = [
        api.JobDecision(job="ns/ok", action="dispatch", patches=2, nodes=["a", "a"], steps=20),
        api.JobDecision(job="ns/over", action="dispatch", patches=2, nodes=["a", "a"], steps=20),  # 1 of a's 3 left
        api.JobDecision(job="ns/ghost", action="dispatch", patches=1, nodes=["z"], steps=20),
        api.JobDecision(job="ns/short", action="dispatch", patches=2, nodes=["b"], steps=20),
    ]

    class Answering:
        async def plan(self, req: api.PlanRequest) -> dispatching.PlanOutcome:
            policy = api.PolicyInfo(name="test", version="1")
            response = api.PlanResponse(decisions=decisions, policy=policy, metrics=api.MetricsSource(used=False))
            return dispatching.PlanOutcome(response, "service", None, 0.0)

    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=3))
    fake.put(_url("nodes", "b"), node("b", gpus=4))
    for i, name in enumerate(("ok", "over", "ghost", "short")):
        fake.put(_url(api.CRD_PLURAL, name), job(name, created=T0 + i))
    d = _dispatcher(fake, settings)
    d.policy = Answering()  # type: ignore[assignment]
    asyncio.run(d.cycle())
    assert _status(fake, "ok")["phase"] == "Planned"
    for name, why in (("over", "not enough free GPUs offered on a"), ("ghost", "not enough free GPUs offered on z"),
                      ("short", "2 patches on 1 nodes")):
        st = _status(fake, name)
        assert st["phase"] == "Pending" and f"the plan was not feasible: {why}" in st["message"], (name, st)


def test_a_service_that_exists_but_cannot_be_read_is_said_so(settings) -> None:  # type: ignore[no-untyped-def]
    """E.g. RBAC without `get` on Services (the chart lacked it): the gates stay on and the job
    says why, instead of waiting in silence."""
    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    fake.put(_url(api.CRD_PLURAL, "j"), job("j", status=active_status("Planned", ["a", "a"]), patches=2))
    fake.put(_url("services", "j"), {"metadata": {"name": "j", "namespace": "ns", "ownerReferences": [{"uid": "uid-j"}]}})
    plain = fake.request

    async def forbidden(method: str, url: str, *args: object, **kw: object) -> dict:
        if "/services/" in url:
            raise kube.ApiError(403, "Forbidden", 'services "j" is forbidden: cannot get resource "services"')
        return await plain(method, url, *args, **kw)  # type: ignore[arg-type]

    fake.request = forbidden  # type: ignore[method-assign]
    d = _cycle(fake, settings)
    assert "service j exists but cannot be read: " in d._service_refused[("ns", "j")].message
    assert all(p["spec"].get("schedulingGates") for p in fake.under(kube.path("", "v1", "pods", "ns")))


def _failed_creates(d: dispatching.Dispatcher) -> list[str]:
    """The messages of the FailedCreate Events ``d`` posts from now on."""
    seen: list[str] = []
    post = d._post_event

    def recording(job: snapshot.JobView, ev: status.Event) -> None:
        if ev.reason == "FailedCreate":
            seen.append(ev.message)
        post(job, ev)

    d._post_event = recording  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("gpus", [0, 1], ids=["a-pod-the-read-cache-drops", "a-gpu-pod"])
def test_a_pod_name_another_object_holds_fails_the_attempt_with_why(settings, gpus) -> None:  # type: ignore[no-untyped-def]
    """StatefulSet `web`'s pod web-0 has the name of AIGCJob `web`'s rank 0: the job used to stay
    Planned for ever, its GPUs reserved, re-posting the pod (or waiting for it) without a word."""
    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    fake.put(_url(api.CRD_PLURAL, "web"), job("web", status=active_status("Planned", ["a", "a"], at=T0 + 90), patches=2))
    fake.put(_url("pods", "web-0"), pod("web-0", job=None, gpus=gpus, phase="Running"))  # owned by no AIGCJob
    d = _dispatcher(fake, settings)
    events = _failed_creates(d)
    asyncio.run(d.cycle())
    taken = "pod web-0: the name is taken by a pod this job does not own"
    assert events == [taken] and _status(fake, "web")["phase"] == "Planned"

    d.clock = lambda: T0 + 100 + settings.unschedulable_timeout_s + 1
    asyncio.run(d.cycle())
    st = _status(fake, "web")
    assert st["reason"] == "GroupNotCreated" and taken in st["message"] and st["failures"] == 1
    assert events == [taken]  # one Event per attempt
    assert fake.objects[_url("pods", "web-0")]["metadata"]["uid"] == "uid-web-0"  # theirs, left alone


@pytest.mark.parametrize("code", [403, 404])
def test_a_gate_lift_refused_for_good_fails_the_attempt_with_why(settings, code) -> None:  # type: ignore[no-untyped-def]
    """E.g. a webhook denying pod updates, or RBAC without `patch` on pods: the gates stayed on
    and only the log said why. A 404 (the pod deleted meanwhile) is no refusal: it is made again."""
    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    fake.put(_url(api.CRD_PLURAL, "j"), job("j", status=active_status("Planned", ["a", "a"], at=T0 + 90), patches=2))
    plain = fake.merge_patch

    async def refusing(url: str, patch: dict) -> dict:
        if "/pods/" in url:
            raise kube.ApiError(code, "Refused", "admission webhook denied the request")
        return await plain(url, patch)

    fake.merge_patch = refusing  # type: ignore[method-assign]
    d = _dispatcher(fake, settings)
    events = _failed_creates(d)
    asyncio.run(d.cycle())
    d.clock = lambda: T0 + 100 + settings.unschedulable_timeout_s + 1
    asyncio.run(d.cycle())
    st = _status(fake, "j")
    if code == 404:
        assert st["phase"] == "Planned" and not events
        return
    why = f"pod j-0: the scheduling gate cannot be lifted: {code} Refused: admission webhook denied the request"
    assert st["reason"] == "GroupNotCreated" and why in st["message"] and events == [why]


def test_one_transient_refusal_after_a_restart_does_not_fail_the_attempt(settings) -> None:  # type: ignore[no-untyped-def]
    """Planned, then the operator was down longer than the timeout: its first creation meets a
    500 once. The timeout counts from that refusal, not from the plan."""
    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    fake.put(_url(api.CRD_PLURAL, "j"), job("j", status=active_status("Planned", ["a", "a"], at=T0), patches=2))
    pods = kube.path("", "v1", "pods", "ns")
    fake.refusals[pods] = kube.ApiError(500, "InternalError", "failed calling webhook: context deadline exceeded")
    restarted = T0 + 4 * settings.unschedulable_timeout_s
    d = _dispatcher(fake, settings, now=restarted)
    asyncio.run(d.cycle())
    assert d._create_errors[("ns", "j")].since == restarted
    del fake.refusals[pods]
    d.clock = lambda: restarted + 0.5
    asyncio.run(d.cycle())
    assert _status(fake, "j")["phase"] == "Planned" and len(fake.under(pods)) == 2
    assert ("ns", "j") not in d._create_errors  # a pass without refusal clears it


def _held_behind(held: int, settings) -> FakeApi:  # type: ignore[no-untyped-def]
    """One cycle of two batches of two over 4 GPUs: ``held`` jobs of 8 patches at as many
    priorities, and behind them a job that fits."""
    fake = FakeApi()
    fake.put(_url("nodes", "a"), node("a", gpus=4))
    for p in range(held):
        fake.put(_url(api.CRD_PLURAL, f"big{p}"), job(f"big{p}", patches=8, priority=10 + p))
    fake.put(_url(api.CRD_PLURAL, "small"), job("small", priority=0))
    _cycle(fake, settings.model_copy(update={"batches_per_cycle": 2, "batch_size": 2}))
    return fake


def test_held_jobs_at_many_priorities_do_not_keep_a_lower_one_from_the_policy(settings) -> None:  # type: ignore[no-untyped-def]
    """Each batch holds one priority: three held jobs at three priorities used to take every plan
    request of a two-request cycle, every cycle. A cycle is bounded by the jobs it shows."""
    fake = _held_behind(3, settings)
    assert _status(fake, "small")["phase"] == "Planned"
    assert [_status(fake, f"big{p}")["reason"] for p in range(3)] == ["Held"] * 3


def test_a_cycle_shows_the_policy_at_most_batches_per_cycle_times_batch_size_jobs(settings) -> None:  # type: ignore[no-untyped-def]
    fake = _held_behind(4, settings)
    assert _status(fake, "small")["message"] == "waiting for a plan"  # the fifth job: next cycle
