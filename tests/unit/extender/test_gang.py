"""The gang guard: the whole group fits on its planned nodes, or every member waits."""

from __future__ import annotations

from eat_extender import gang, state, wire

from . import kube
from .conftest import build_state

NOW = 50.0


def view(pod: dict) -> state.PodView:  # type: ignore[type-arg]
    return state.pod_view(wire.Pod.model_validate(pod))


def nodes(**gpus: int) -> list[dict]:  # type: ignore[type-arg]
    return [kube.make_node(n, g) for n, g in gpus.items()]


def test_group_that_fits_is_admitted() -> None:
    pods = kube.gang("g", ["a", "a", "b"])
    s = build_state(nodes(a=2, b=1), pods)
    assert gang.check(view(pods[0]), s, {}).fits


def test_every_member_gets_the_same_verdict() -> None:
    pods = kube.gang("g", ["a", "a", "b"])
    s = build_state(nodes(a=1, b=1), pods)
    verdicts = [gang.check(view(p), s, {}) for p in pods]
    assert [v.fits for v in verdicts] == [False, False, False]
    assert verdicts[0].shortfalls == (gang.Shortfall("a", 2, 2, 1),)


def test_members_already_bound_are_counted() -> None:
    pods = kube.gang("g", ["a", "a", "b"])
    pods[0]["spec"]["nodeName"] = "a"
    pods[0]["status"]["phase"] = "Running"
    # a: 2 GPUs, one taken by rank 0 itself; the last member for a still fits.
    s = build_state(nodes(a=2, b=1), pods)
    assert gang.check(view(pods[1]), s, {}).fits
    # Someone else took the other GPU on a: rank 1 cannot follow, the rest waits.
    other = kube.make_pod("other", 1, node="a", phase="Running")
    s = build_state(nodes(a=2, b=1), pods + [other])
    v = gang.check(view(pods[1]), s, {})
    assert not v.fits and v.message.startswith("1/3 placed; node a needs 1")


def test_finished_members_count_as_placed() -> None:
    pods = kube.gang("g", ["a", "b"])
    pods[0]["spec"]["nodeName"] = "a"
    pods[0]["status"]["phase"] = "Succeeded"
    s = build_state(nodes(a=0, b=1), pods)
    assert gang.check(view(pods[1]), s, {}).fits


def off_plan_gang() -> list[dict]:  # type: ignore[type-arg]
    """Rank 0 of a (x, y) plan, bound to z while the extender was skipped (it is ignorable)."""
    pods = kube.gang("g", ["x", "y"])
    pods[0]["spec"]["nodeName"] = "z"
    pods[0]["status"]["phase"] = "Running"
    return pods


def test_a_member_bound_off_plan_fills_its_own_rank() -> None:
    """x is full (which is why rank 0 went elsewhere): rank 1 must not wait for a rank 0 on x."""
    busy = kube.make_pod("busy", 1, node="x", phase="Running")
    pods = off_plan_gang()
    s = build_state(nodes(x=1, y=1, z=1), [busy, *pods])
    assert s.groups["render/g"].bound_slots == ("x",)
    assert gang.check(view(pods[1]), s, {}).fits


def test_an_admitted_group_holds_nothing_for_a_member_bound_off_plan() -> None:
    s = build_state(nodes(x=2, y=1, z=1), off_plan_gang(), admissions={"render/g": NOW + 10})
    assert gang.held_gpus(s, NOW) == {"y": 1}


def test_a_retry_is_a_gang_of_its_own() -> None:
    """The last attempt's rank 2, still terminating on c, is not a member placed for the retry,
    whose plan (c, d) is the one checked: c is full, so the retry waits."""
    old = kube.make_pod("job-2", 1, group="job", group_nodes=["a", "b", "c"], planned="c", rank=2, attempt=1,
                        node="c", phase="Running")
    old["metadata"]["deletionTimestamp"] = "2027-01-01T00:00:00Z"
    retry = kube.gang("job", ["c", "d"], attempt=2)
    s = build_state(nodes(c=1, d=1), [old, *retry])
    v = gang.check(view(retry[1]), s, {})
    assert view(retry[1]).group == "render/job#2" and s.groups["render/job#2"].bound_slots == ()
    assert not v.fits and v.shortfalls == (gang.Shortfall("c", 1, 1, 0),)


def test_a_cordoned_or_not_ready_planned_node_makes_the_group_wait() -> None:
    """kube-scheduler will place nothing there, so admitting the other members would only
    hold their GPUs until the operator gives up on the group."""
    pods = kube.gang("g", ["a", "b"])
    dedicated = [{"key": "team", "value": "vision", "effect": "NoSchedule"}]
    for make_unusable in (lambda n: n["spec"].update(unschedulable=True),
                          lambda n: n["status"].update(conditions=[{"type": "Ready", "status": "False"}]),
                          lambda n: n["spec"].update(taints=dedicated)):
        cluster = nodes(a=1, b=1)
        make_unusable(cluster[1])
        v = gang.check(view(pods[0]), build_state(cluster, pods), {})
        assert not v.fits and "node b is cordoned, not Ready or tainted against the group" in v.message
    tolerating = kube.gang("g", ["a", "b"])
    for p in tolerating:
        p["spec"]["tolerations"] = [{"key": "team", "operator": "Exists", "effect": "NoSchedule"}]
    cluster = nodes(a=1, b=1)
    cluster[1]["spec"]["taints"] = dedicated
    assert gang.check(view(tolerating[0]), build_state(cluster, tolerating), {}).fits
    unplanned = [kube.make_pod(f"u-{i}", 1, group="u", group_size=2) for i in range(2)]
    cluster = nodes(a=1, b=1)
    cluster[1]["spec"]["unschedulable"] = True
    assert not gang.check(view(unplanned[0]), build_state(cluster, unplanned), {}).fits


def test_planned_node_missing_from_the_cluster_makes_the_group_wait() -> None:
    pods = kube.gang("g", ["a", "gone"])
    v = gang.check(view(pods[0]), build_state(nodes(a=4), pods), {})
    assert not v.fits and "node gone is not in the cluster" in v.message


def test_gpus_held_for_other_groups_count_as_taken() -> None:
    first = kube.gang("first", ["a", "a"])
    second = kube.gang("second", ["a", "b"])
    s = build_state(nodes(a=2, b=1), first + second, admissions={"render/first": NOW + 10})
    held = gang.held_gpus(s, NOW, exclude_group="render/second")
    assert held == {"a": 2}
    assert not gang.check(view(second[0]), s, held).fits
    # The first group's own members do not see their hold as taken.
    assert gang.held_gpus(s, NOW, exclude_group="render/first") == {}
    assert gang.check(view(first[1]), s, {}).fits


def test_holds_shrink_as_members_bind_and_end_when_they_expire() -> None:
    pods = kube.gang("g", ["a", "a", "b"], gpus=2)
    pods[0]["spec"]["nodeName"] = "a"
    s = build_state(nodes(a=4, b=2), pods, admissions={"render/g": NOW + 10})
    assert gang.held_gpus(s, NOW) == {"a": 2, "b": 2}
    assert gang.held_gpus(s, NOW + 10) == {}


def test_single_pods_and_gpu_less_groups_always_fit() -> None:
    s = build_state(nodes(a=0))
    assert gang.check(view(kube.make_pod("solo", 4, planned="a")), s, {}).fits
    cpu_gang = kube.gang("cpu", ["a", "a"], gpus=0)
    assert gang.check(view(cpu_gang[0]), s, {}).fits


def test_group_without_a_per_rank_plan_is_checked_in_aggregate() -> None:
    members = [kube.make_pod(f"m{i}", 2, group="g", group_size=3) for i in range(3)]
    assert gang.check(view(members[0]), build_state(nodes(a=4, b=2), members), {}).fits
    v = gang.check(view(members[0]), build_state(nodes(a=3, b=2), members), {})
    assert not v.fits and "room for 2" in v.message
