"""The filter decision, as a pure function of the pod, the candidates and the cluster state."""

from __future__ import annotations

import pytest

from eat_extender import filtering, state, wire

from . import kube
from .conftest import build_state

NOW = 1000.0
NODES = ["gpu-a", "gpu-b", "gpu-c"]


def view(pod: dict) -> state.PodView:  # type: ignore[type-arg]
    return state.pod_view(wire.Pod.model_validate(pod))


def cluster(*pods: dict, gpus: tuple[int, ...] = (4, 2, 1), admissions: dict[str, float] | None = None  # type: ignore[type-arg]
            ) -> state.ClusterState:
    return build_state([kube.make_node(n, g) for n, g in zip(NODES, gpus)], list(pods), admissions)


def test_planned_pod_passes_only_its_planned_node() -> None:
    d = filtering.decide(view(kube.make_pod("p", planned="gpu-b")), NODES, cluster(), NOW)
    assert d.kind is filtering.Kind.PLANNED
    assert d.passed == ("gpu-b",)
    assert d.failed == {}
    assert d.unresolvable == {"gpu-a": "eat-extender: pod is planned for node gpu-b",
                              "gpu-c": "eat-extender: pod is planned for node gpu-b"}
    assert d.rejections == {filtering.Reason.NOT_PLANNED_NODE: 2}
    assert d.admit_group is None


def test_planned_node_without_a_free_gpu_is_rejected_with_the_count() -> None:
    busy = kube.make_pod("busy", 1, node="gpu-c", phase="Running")
    d = filtering.decide(view(kube.make_pod("p", planned="gpu-c")), NODES, cluster(busy), NOW)
    assert d.passed == ()
    # A full planned node can be freed (preemption may help): FailedNodes, not unresolvable.
    assert d.failed == {"gpu-c": "eat-extender: planned node gpu-c has 0 free nvidia.com/gpu, the pod needs 1"}
    assert set(d.unresolvable) == {"gpu-a", "gpu-b"}
    assert d.rejections == {filtering.Reason.NOT_PLANNED_NODE: 2, filtering.Reason.PLANNED_NODE_FULL: 1}


def test_planned_node_must_have_all_the_gpus_the_pod_asks_for() -> None:
    d = filtering.decide(view(kube.make_pod("p", 3, planned="gpu-b")), NODES, cluster(), NOW)
    assert d.passed == () and "has 2 free nvidia.com/gpu, the pod needs 3" in d.failed["gpu-b"]


def test_planned_node_that_is_not_a_candidate_leaves_nothing() -> None:
    d = filtering.decide(view(kube.make_pod("p", planned="gpu-c")), ["gpu-a", "gpu-b"], cluster(), NOW)
    assert d.passed == () and set(d.unresolvable) == {"gpu-a", "gpu-b"}
    assert all("planned for node gpu-c" in r for r in d.unresolvable.values())


def test_planned_node_unknown_to_the_extender_waits() -> None:
    d = filtering.decide(view(kube.make_pod("p", planned="gpu-new")), ["gpu-a", "gpu-new"], cluster(), NOW)
    assert d.passed == ()
    assert "gpu-new is not (yet) in the extender's view" in d.failed["gpu-new"]
    assert d.rejections[filtering.Reason.PLANNED_NODE_UNKNOWN] == 1


def test_unplanned_pod_passes_every_node() -> None:
    d = filtering.decide(view(kube.make_pod("p")), NODES, cluster(), NOW)
    assert (d.kind, d.passed, dict(d.failed), dict(d.unresolvable)) == (filtering.Kind.UNPLANNED, tuple(NODES), {}, {})


def test_unplanned_pod_trusts_the_scheduler_when_our_view_says_full() -> None:
    """Without a hold, our view can only be staler than the scheduler's own resource fit."""
    busy = kube.make_pod("busy", 1, node="gpu-c", phase="Running")
    d = filtering.decide(view(kube.make_pod("p")), NODES, cluster(busy), NOW)
    assert d.passed == tuple(NODES)


@pytest.mark.parametrize("planned", [None, "gpu-a"], ids=["unplanned", "planned"])
def test_pods_without_gpu_requests_are_not_counted(planned: str | None) -> None:
    busy = [kube.make_pod(f"b{i}", 1, node=n, phase="Running") for i, n in enumerate(["gpu-a"] * 4)]
    d = filtering.decide(view(kube.make_pod("cpu", None, planned=planned)), NODES, cluster(*busy), NOW)
    assert d.passed == (("gpu-a",) if planned else tuple(NODES))


def test_pod_with_an_unreadable_plan_waits_everywhere_with_the_problem() -> None:
    pod = kube.make_pod("p", planned="gpu-a", group="g", group_size=2)
    pod["metadata"]["annotations"]["eat.aigc.io/group-size"] = "two"
    d = filtering.decide(view(pod), NODES, cluster(), NOW)
    assert d.kind is filtering.Kind.INVALID and d.passed == ()
    assert set(d.unresolvable) == set(NODES)
    assert "group-size='two' is not a positive integer" in d.unresolvable["gpu-a"]


def test_unknown_candidate_nodes_pass_for_unplanned_pods() -> None:
    d = filtering.decide(view(kube.make_pod("p")), ["gpu-a", "gpu-x"], cluster(), NOW)
    assert d.passed == ("gpu-a", "gpu-x")


def test_empty_candidate_list_is_answered() -> None:
    d = filtering.decide(view(kube.make_pod("p", planned="gpu-a")), [], cluster(), NOW)
    assert (d.passed, dict(d.failed), dict(d.unresolvable)) == ((), {}, {})


def test_gang_member_passes_and_asks_to_hold_its_group() -> None:
    pods = kube.gang("g", ["gpu-a", "gpu-b"])
    d = filtering.decide(view(pods[0]), NODES, cluster(*pods), NOW)
    assert d.passed == ("gpu-a",) and d.admit_group == "render/g"
    assert d.verdict is not None and d.verdict.fits


def test_gang_member_waits_when_the_rest_of_its_group_does_not_fit() -> None:
    # rank 0 alone would fit on gpu-a, but ranks 1 and 2 both need gpu-c, which has one GPU.
    pods = kube.gang("g", ["gpu-a", "gpu-c", "gpu-c"])
    d = filtering.decide(view(pods[0]), NODES, cluster(*pods), NOW)
    assert d.passed == () and d.admit_group is None
    msg = d.unresolvable["gpu-a"]
    assert msg.startswith("eat-extender: pod group render/g waits to be placed whole: 0/3 placed")
    assert "node gpu-c needs 2 nvidia.com/gpu for 2 member(s), 1 free" in msg
    assert d.rejections[filtering.Reason.GANG_WAITING] == 1


def test_unplanned_pod_is_kept_off_gpus_held_for_an_admitted_group() -> None:
    pods = kube.gang("g", ["gpu-b", "gpu-b"])  # holds both GPUs of gpu-b
    s = cluster(*pods, admissions={"render/g": NOW + 30})
    d = filtering.decide(view(kube.make_pod("other")), NODES, s, NOW)
    assert d.passed == ("gpu-a", "gpu-c")
    assert d.failed == {"gpu-b": "eat-extender: free nvidia.com/gpu on the node are held for pod groups being placed"}
    assert d.rejections == {filtering.Reason.HELD_FOR_GANG: 1}
    # Once the hold expires, the GPUs are anyone's.
    assert filtering.decide(view(kube.make_pod("other")), NODES, s, NOW + 30).passed == tuple(NODES)


def test_planned_pod_sees_gpus_held_for_another_group_as_taken() -> None:
    pods = kube.gang("g", ["gpu-b", "gpu-a"])
    s = cluster(*pods, admissions={"render/g": NOW + 30})
    d = filtering.decide(view(kube.make_pod("solo", 2, planned="gpu-b")), NODES, s, NOW)
    assert d.passed == ()
    assert d.failed["gpu-b"] == ("eat-extender: planned node gpu-b has 1 free nvidia.com/gpu "
                                 "(1 more held for pod groups being placed), the pod needs 2")


def test_short_nodes_name_the_nodes_whose_gpus_held_the_pod_back() -> None:
    busy = kube.make_pod("busy", 1, node="gpu-c", phase="Running")
    full = filtering.decide(view(kube.make_pod("p", planned="gpu-c")), NODES, cluster(busy), NOW)
    assert full.short_nodes == ("gpu-c",)
    pods = kube.gang("g", ["gpu-a", "gpu-c", "gpu-c", "gone"])
    waiting = filtering.decide(view(pods[0]), NODES, cluster(*pods), NOW)
    assert waiting.short_nodes == ("gpu-c",)  # an unknown node cannot be re-read into having room
    assert filtering.decide(view(kube.make_pod("p", planned="gpu-a")), NODES, cluster(), NOW).short_nodes == ()
