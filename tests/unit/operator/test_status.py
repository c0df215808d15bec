"""The phase machine: each transition as a pure function of a snapshot."""

from __future__ import annotations

from tests.unit.operator.builders import T0, active_status, job, node, pod

from eat_policy import api

from eat_operator import kube, snapshot, status


def step(settings, st, pods=(), nodes=("a", "b"), now=T0 + 5, create_error=None, refused_since=None, **kw):  # type: ignore[no-untyped-def]
    j = job(status=st, **kw)
    snap = snapshot.build([node(n) for n in nodes], pods, [j], now)
    return status.reconcile(snap.jobs[("ns", "j")], snap, settings, "file:///o.png", create_error, refused_since)


def test_planned_writes_plan_and_next_attempt_before_any_pod() -> None:
    j = snapshot.job_view(job(status={"phase": "Pending", "attempts": 1, "failures": 1}))
    d = api.JobDecision(job="ns/j", action="dispatch", patches=2, nodes=["a", "a"], steps=25, predicted_latency_s=7.5,
                        cache="store", explanation=["a: cold"])
    s = status.planned(j, d, api.PolicyInfo(name="edf-cache", version="heuristic", fallback=True,
                                            fallback_reason="no checkpoint"), "in-process", "policy down", T0)
    assert s.ensure_group and s.status is not None
    st = s.status
    assert st["phase"] == "Planned" and st["attempts"] == 2 and st["plan"]["attempt"] == 2
    assert st["plan"]["placement"] == "a x2" and st["plan"]["warm"] is False
    assert st["plan"]["fallback"] and st["plan"]["fallbackReason"] == "policy down" and st["plan"]["plannedBy"] == "in-process"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["PolicyFallback"]["status"] == "True" and conds["Planned"]["status"] == "True"
    assert s.events[0].reason == "Planned" and "a: cold" in s.events[0].message


def test_planned_creates_group_then_scheduling_binds_to_running(settings) -> None:  # type: ignore[no-untyped-def]
    s = step(settings, active_status("Planned", ["a", "b"]))
    assert s.ensure_group and s.status is None
    gated = [pod("j-0", rank=0, gated=True), pod("j-1", rank=1, gated=True)]
    assert step(settings, active_status("Scheduling", ["a", "b"]), gated).ensure_group
    bound = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1, node="b")]
    s = step(settings, active_status("Scheduling", ["a", "b"]), bound)
    assert s.status is not None and s.status["phase"] == "Running" and s.events[0].reason == "Scheduled"


def test_missing_pod_after_a_crash_is_recreated(settings) -> None:  # type: ignore[no-untyped-def]
    s = step(settings, active_status("Scheduling", ["a", "b"]), [pod("j-0", rank=0, node="a", phase="Running")])
    assert s.ensure_group and s.status is None


def test_all_succeeded_gives_latency_and_deadline(settings) -> None:  # type: ignore[no-untyped-def]
    done = [pod("j-0", rank=0, node="a", phase="Succeeded"), pod("j-1", rank=1, node="b", phase="Succeeded")]
    s = step(settings, active_status("Running", ["a", "b"]), done, now=T0 + 12, deadlineSeconds=10)
    assert s.status is not None
    assert s.status["phase"] == "Succeeded" and s.status["latencySeconds"] == 12.0
    assert s.status["deadlineMet"] is False and s.status["outputLocation"] == "file:///o.png"
    s = step(settings, active_status("Running", ["a", "b"]), done, now=T0 + 8, deadlineSeconds=10)
    assert s.status is not None and s.status["deadlineMet"] is True
    # Killed right after creating the pods: the group (its Service) is completed first.
    assert step(settings, active_status("Planned", ["a", "b"]), done).ensure_group


def test_failed_member_tears_down_and_retries_then_fails_past_backoff(settings) -> None:  # type: ignore[no-untyped-def]
    pods = [pod("j-0", rank=0, node="a", phase="Failed"), pod("j-1", rank=1, node="b", phase="Running")]
    s = step(settings, active_status("Running", ["a", "b"]), pods)
    assert s.status is not None and s.status["phase"] == "Pending" and s.status["plan"] is None
    assert s.status["failures"] == 1 and set(s.delete) == {"j-0", "j-1"} and s.retried == "MemberFailed"
    assert s.events[0].reason == "Retrying"
    s = step(settings, active_status("Running", ["a", "b"], failures=2), pods)  # backoff_limit=2
    assert s.status is not None and s.status["phase"] == "Failed" and s.status["reason"] == "BackoffLimitExceeded"
    assert set(s.delete) == {"j-0", "j-1"}


def test_lost_or_not_ready_node_replans_without_counting_a_failure(settings) -> None:  # type: ignore[no-untyped-def]
    pods = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1, node="b", phase="Running")]
    s = step(settings, active_status("Running", ["a", "b"]), pods, nodes=("a",))
    assert s.status is not None and s.status["phase"] == "Pending" and s.status["reason"] == "NodeLost"
    assert s.status["replans"] == 1 and s.status["failures"] == 0
    j = job(status=active_status("Running", ["a", "b"]))
    snap = snapshot.build([node("a"), node("b", ready=False)], pods, [j], T0)
    s = status.reconcile(snap.jobs[("ns", "j")], snap, settings, "o")
    assert s.status is not None and "not Ready" in s.status["message"]
    s = step(settings, active_status("Running", ["a", "b"], replans=3), pods, nodes=("a",))
    assert s.status is not None and s.status["phase"] == "Failed" and s.status["reason"] == "ReplanLimitExceeded"


def test_unschedulable_past_timeout_replans(settings) -> None:  # type: ignore[no-untyped-def]
    pods = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1)]
    assert step(settings, active_status("Scheduling", ["a", "b"]), pods, now=T0 + 10).empty
    s = step(settings, active_status("Scheduling", ["a", "b"]), pods, now=T0 + 31)
    assert s.status is not None and s.status["reason"] == "Unschedulable" and "j-1" in s.status["message"]


def test_pods_the_api_server_keeps_refusing_fail_the_attempt_with_its_reason(settings) -> None:  # type: ignore[no-untyped-def]
    refused = 'pod j-1: 403 Forbidden: pods "j-1" is forbidden: exceeded quota'
    one = [pod("j-0", rank=0, gated=True)]
    assert step(settings, active_status("Planned", ["a", "b"]), one, now=T0 + 10, create_error=refused).ensure_group
    s = step(settings, active_status("Planned", ["a", "b"]), one, now=T0 + 31, create_error=refused)
    assert s.retried == "GroupNotCreated" and s.delete == ("j-0",)
    assert s.status is not None and s.status["phase"] == "Pending" and s.status["failures"] == 1
    assert "1 of 2 pods created, group not released after 31 s: " + refused in s.status["message"]
    # counted as failures: past the backoff limit (2) the job fails, saying why
    s = step(settings, active_status("Planned", ["a", "b"], failures=2), (), now=T0 + 31, create_error=refused)
    assert s.status is not None and s.status["phase"] == "Failed" and s.status["reason"] == "BackoffLimitExceeded"
    assert "exceeded quota" in s.status["message"]
    # all pods made (still gated, e.g. the operator restarted before lifting them): no timeout
    both = [pod("j-0", rank=0, gated=True), pod("j-1", rank=1, gated=True)]
    assert step(settings, active_status("Planned", ["a", "b"]), both, now=T0 + 31).ensure_group
    # none refused, only not made yet (the operator was down since the plan): made now, no failure
    s = step(settings, active_status("Planned", ["a", "b"]), one, now=T0 + 600)
    assert s.ensure_group and s.status is None and s.retried is None



def test_refusals_fail_the_attempt_a_timeout_after_the_first_of_them(settings) -> None:  # type: ignore[no-untyped-def]
    """Not a timeout after the plan: an operator down since then would fail the attempt on its
    first transient refusal."""
    refused = "pod j-0: 500 InternalError: failed calling webhook"
    planned = active_status("Planned", ["a", "b"])
    assert step(settings, planned, now=T0 + 600, create_error=refused, refused_since=T0 + 590).ensure_group
    s = step(settings, planned, now=T0 + 621, create_error=refused, refused_since=T0 + 590)
    assert s.status is not None and s.status["reason"] == "GroupNotCreated" and "after 31 s: " in s.status["message"]

def test_stale_pods_of_old_attempts_are_deleted(settings) -> None:  # type: ignore[no-untyped-def]
    pods = [pod("j-0", rank=0, attempt=1, node="a", phase="Failed")]
    s = step(settings, {"phase": "Pending", "attempts": 1}, pods)
    assert s.delete == ("j-0",) and s.status is None
    pods = [pod("j-0", rank=0, attempt=1, node="a", phase="Running", deleting=True)]
    assert step(settings, {"phase": "Pending", "attempts": 1}, pods).empty


def test_terminal_jobs_need_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    assert step(settings, active_status("Succeeded", ["a"]), [pod("j-0", node="a", phase="Succeeded")]).empty
    s = step(settings, {"phase": "Failed"}, [pod("j-0", node="a", phase="Running")])
    assert s.delete == ("j-0",)


def test_pending_message_is_written_once() -> None:
    j = snapshot.job_view(job())
    s = status.pending(j, T0 + 1, "waiting for a plan")
    assert s.status is not None and s.status["phase"] == "Pending" and "pending" in s.status["timestamps"]
    again = snapshot.job_view(job(status={"phase": "Pending", "message": "waiting for a plan"}))
    assert status.pending(again, T0 + 2, "waiting for a plan").empty


def test_conditions_keep_transition_time_when_unchanged() -> None:
    c = status.set_condition(None, "Planned", True, "R", "m", T0)
    c2 = status.set_condition(c, "Planned", True, "R", "m2", T0 + 50)
    assert c2[0]["lastTransitionTime"] == c[0]["lastTransitionTime"] and c2[0]["message"] == "m2"
    c3 = status.set_condition(c2, "Planned", False, "R", "m", T0 + 60)
    assert c3[0]["lastTransitionTime"] != c[0]["lastTransitionTime"]


def test_released_group_moves_on_in_the_next_cycle(settings) -> None:  # type: ignore[no-untyped-def]
    # Unbound: Scheduling (which starts the unschedulable clock); the Service is still ensured.
    unbound = [pod("j-0", rank=0), pod("j-1", rank=1)]
    s = step(settings, active_status("Planned", ["a", "b"]), unbound)
    assert s.status is not None and s.status["phase"] == "Scheduling" and s.ensure_group
    assert "scheduling" in s.status["timestamps"]
    # Bound before the operator looked again: straight to Running, one write instead of two.
    bound = [pod("j-0", rank=0, node="a"), pod("j-1", rank=1, node="b")]
    s = step(settings, active_status("Planned", ["a", "b"]), bound)
    assert s.status is not None and s.status["phase"] == "Running" and s.events[0].reason == "Scheduled"
    assert {"scheduling", "running"} <= set(s.status["timestamps"])
    assert {c["type"] for c in s.status["conditions"]} >= {"GroupCreated", "Scheduled"}


def test_planned_node_that_can_no_longer_take_its_rank_replans_at_once(settings) -> None:  # type: ignore[no-untyped-def]
    st = active_status("Scheduling", ["a", "b"])
    pods = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1)]
    tainted = node("b", taints=[{"key": "maintenance", "effect": "NoSchedule"}])
    for b in (tainted, node("b", unschedulable=True), node("b", gpus=0)):
        snap = snapshot.build([node("a"), b], pods, [job(status=st)], T0 + 5)
        s = status.reconcile(snap.jobs[("ns", "j")], snap, settings, "o")
        assert s.status is not None and s.status["phase"] == "Pending" and s.retried == "NodeUnschedulable"
        assert s.status["replans"] == 1 and "node b of rank 1" in s.status["message"]
    # A bound member keeps running on a node tainted after the fact.
    pods = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1, node="b", phase="Running")]
    snap = snapshot.build([node("a"), tainted], pods, [job(status=active_status("Running", ["a", "b"]))], T0 + 5)
    assert status.reconcile(snap.jobs[("ns", "j")], snap, settings, "o").empty
    # Two ranks planned on a node left with one GPU.
    snap = snapshot.build([node("a", gpus=1)], [], [job(status=active_status("Planned", ["a", "a"]))], T0 + 5)
    s = status.reconcile(snap.jobs[("ns", "j")], snap, settings, "o")
    assert s.retried == "NodeUnschedulable" and "has 1 GPUs; the plan puts 2 ranks on it" in s.status["message"]


def test_a_node_not_ready_for_less_than_the_grace_keeps_its_groups(settings) -> None:  # type: ignore[no-untyped-def]
    """A kubelet's brief silence: nothing is torn down or force-deleted until the grace is over."""
    pods = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1, node="b", phase="Running")]
    silent = node("b", ready=False)
    silent["status"]["conditions"][0]["lastTransitionTime"] = kube.now_rfc3339(T0)
    j = job(status=active_status("Running", ["a", "b"]))
    grace = settings.node_not_ready_grace_s
    snap = snapshot.build([node("a"), silent], pods, [j], T0 + grace - 1)
    assert status.reconcile(snap.jobs[("ns", "j")], snap, settings, "o").empty
    snap = snapshot.build([node("a"), silent], pods, [j], T0 + grace)
    s = status.reconcile(snap.jobs[("ns", "j")], snap, settings, "o")
    assert s.retried == "NodeLost" and "not Ready" in s.status["message"] and s.force_delete == ("j-1",)


def test_a_member_whose_image_cannot_be_pulled_fails_the_attempt_with_why(settings) -> None:  # type: ignore[no-untyped-def]
    """It would otherwise hold its GPUs, Running, for ever; a member still pulling is left alone."""
    stuck = pod("j-1", rank=1, node="b", phase="Pending")
    stuck["status"]["containerStatuses"] = [{"name": "c", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "eat/infer:nope"'}}}]
    pulling = pod("j-1", rank=1, node="b", phase="Pending")
    pulling["status"]["containerStatuses"] = [{"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    running = active_status("Running", ["a", "b"], timestamps={"running": kube.now_rfc3339(T0)})
    first = pod("j-0", rank=0, node="a", phase="Running")
    timeout = settings.unschedulable_timeout_s
    assert step(settings, running, [first, stuck], now=T0 + timeout - 1).empty
    assert step(settings, running, [first, pulling], now=T0 + timeout + 1).empty
    s = step(settings, running, [first, stuck], now=T0 + timeout + 1)
    assert s.retried == "MemberCannotStart" and s.status["failures"] == 1 and set(s.delete) == {"j-0", "j-1"}
    assert 'pod j-1 cannot start: ImagePullBackOff: Back-off pulling image "eat/infer:nope"' in s.status["message"]


def test_pods_on_a_lost_node_are_removed_without_grace(settings) -> None:  # type: ignore[no-untyped-def]
    pods = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1, node="b", phase="Running")]
    s = step(settings, active_status("Running", ["a", "b"]), pods, nodes=("a",))
    assert s.retried == "NodeLost" and s.delete == ("j-0",) and s.force_delete == ("j-1",)
    # Already being deleted (gracefully, before the node went): removed now, so the job can be planned again.
    stuck = [pod("j-0", rank=0, node="b", phase="Running", deleting=True)]
    s = step(settings, {"phase": "Pending", "attempts": 1}, stuck, nodes=("a",))
    assert s.force_delete == ("j-0",) and not s.delete


def test_a_node_that_loses_the_selector_labels_keeps_what_is_bound_to_it(settings) -> None:  # type: ignore[no-untyped-def]
    """Relabelled, not lost: a running group carries on (nothing is force-deleted from a Ready
    node); a rank not bound yet cannot go there any more, so the job is planned again."""
    selected = settings.model_copy(update={"node_selector": {"pool": "eat"}})
    nodes = [node("a", labels={"pool": "eat"}), node("b")]
    running = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1, node="b", phase="Running")]
    snap = snapshot.build(nodes, running, [job(status=active_status("Running", ["a", "b"]))], T0 + 5, {"pool": "eat"})
    assert status.reconcile(snap.jobs[("ns", "j")], snap, selected, "o").empty
    unbound = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1)]
    snap = snapshot.build(nodes, unbound, [job(status=active_status("Scheduling", ["a", "b"]))], T0 + 5, {"pool": "eat"})
    s = status.reconcile(snap.jobs[("ns", "j")], snap, selected, "o")
    assert s.retried == "NodeLost" and not s.force_delete and set(s.delete) == {"j-0", "j-1"}


def test_unschedulable_past_timeout_rests_the_nodes_that_kept_it(settings) -> None:  # type: ignore[no-untyped-def]
    pods = [pod("j-0", rank=0, node="a", phase="Running"), pod("j-1", rank=1)]
    s = step(settings, active_status("Scheduling", ["a", "b"]), pods, now=T0 + 31)
    assert s.retried == "Unschedulable" and s.rest_nodes == ("b",) and "not bound to b" in s.status["message"]


def test_a_torn_down_group_is_neither_created_nor_scheduled(settings) -> None:  # type: ignore[no-untyped-def]
    """Back to Pending, the job's GroupCreated and Scheduled conditions used to stay True."""
    was = [{"type": t, "status": "True", "reason": t, "message": "", "lastTransitionTime": kube.now_rfc3339(T0)}
           for t in ("Planned", "GroupCreated", "Scheduled")]
    pods = [pod("j-0", rank=0, node="a", phase="Failed"), pod("j-1", rank=1, node="b", phase="Running")]
    s = step(settings, active_status("Running", ["a", "b"], conditions=was), pods)
    assert s.status is not None and s.status["phase"] == "Pending"
    conds = {c["type"]: c for c in s.status["conditions"]}
    for type_ in ("Planned", "GroupCreated", "Scheduled"):
        assert conds[type_]["status"] == "False" and conds[type_]["reason"] == "MemberFailed", type_
        assert conds[type_]["message"] == "pod j-0 failed"
