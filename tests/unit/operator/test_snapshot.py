"""ClusterSnapshot from fake API objects: free GPUs, readiness, taints, reservations."""

from __future__ import annotations

from tests.unit.operator.builders import T0, active_status, job, node, pod

from eat_operator import snapshot


def infos(nodes, pods=(), jobs=(), **kw):  # type: ignore[no-untyped-def]
    snap = snapshot.build(nodes, pods, jobs, T0 + 5, **kw)
    return {n.name: n for n in snap.node_infos()}


def test_free_gpus_count_running_pods_of_anyone_but_not_finished_ones() -> None:
    pods = [pod("x", job=None, node="a", phase="Running", gpus=2), pod("y", job=None, node="a", phase="Succeeded"),
            pod("z", job=None, node="", phase="Pending")]
    n = infos([node("a", gpus=4)], pods)["a"]
    assert (n.gpus_total, n.gpus_free) == (4, 2)


def test_active_plan_reserves_gpus_of_ranks_not_bound_yet() -> None:
    st = active_status("Planned", ["a", "a", "b"])
    pods = [pod("j-0", rank=0, node="a", phase="Running")]
    got = infos([node("a", gpus=4), node("b", gpus=1)], pods, [job(status=st)])
    assert got["a"].gpus_free == 2  # rank 0 bound (pod) + rank 1 reserved
    assert got["b"].gpus_free == 0  # rank 2 reserved
    assert len(got["a"].gpu_free_at) == 2 and got["a"].gpu_free_at[0] == T0 + 10.0


def test_reservation_without_any_pod_yet() -> None:
    got = infos([node("a", gpus=2)], [], [job(status=active_status("Planned", ["a", "a"]))])
    assert got["a"].gpus_free == 0


def test_finished_and_pending_jobs_reserve_nothing() -> None:
    jobs = [job("p", status={"phase": "Pending"}), job("s", status={**active_status("Succeeded", ["a"])})]
    assert infos([node("a", gpus=2)], [], jobs)["a"].gpus_free == 2


def test_not_ready_nodes_are_flagged_and_tainted_or_cordoned_nodes_left_out() -> None:
    nodes = [node("ok"), node("down", ready=False),
             node("tainted", taints=[{"key": "maintenance", "effect": "NoSchedule"}]),
             node("gpu-taint", taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]),
             node("cordoned", unschedulable=True), node("cpu", gpus=0)]
    got = infos(nodes, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert set(got) == {"ok", "down", "gpu-taint"}
    assert got["down"].ready is False and got["ok"].ready is True


def test_node_selector_and_cached_models() -> None:
    nodes = [node("a", cached="sdxl"), node("other", labels={"eat.aigc.io/fake-node": "false"})]
    pods = [pod("j-0", node="a", phase="Succeeded", model="sd15")]
    got = infos(nodes, pods, node_selector={"eat.aigc.io/fake-node": "true"})
    assert set(got) == {"a"}
    assert got["a"].cached_models == ["sd15", "sdxl"]  # the annotation, plus what ran there
    assert got["a"].gpu_product == "NVIDIA-A100-SXM4-80GB"


def test_pods_are_grouped_by_job_in_rank_order() -> None:
    snap = snapshot.build([], [pod("j-1", rank=1), pod("j-0", rank=0), pod("k-0", job="k")], [job()], T0)
    assert [p.name for p in snap.pods_of(snapshot.job_view(job()))] == ["j-0", "j-1"]


def test_pod_view_reads_failure_reason_and_gate() -> None:
    p = pod("j-0", gated=True, phase="Failed")
    p["status"]["containerStatuses"] = [{"state": {"terminated": {"exitCode": 1, "reason": "Error",
                                                                   "message": "boom"}}}]
    v = snapshot.pod_view(p)
    assert v.gated and v.phase == "Failed" and v.reason == "Error" and v.message == "boom"
    assert snapshot.is_relevant_pod(p) and not snapshot.is_relevant_pod(pod("cpu", job=None, gpus=0))


def test_views_are_reused_for_unchanged_objects_only() -> None:
    cache = snapshot.ViewCache()
    a, p = node("a"), pod("j-0")
    first = snapshot.build([a], [p], [], T0, cache=cache)
    again = snapshot.build([a], [p], [], T0 + 1, cache=cache)
    assert again.nodes["a"] is first.nodes["a"]
    assert again.pods_by_job[("ns", "j")][0] is first.pods_by_job[("ns", "j")][0]
    bound = pod("j-0", node="a", phase="Running")  # the watch delivers a new object
    third = snapshot.build([a], [bound], [], T0 + 2, cache=cache)
    assert third.pods_by_job[("ns", "j")][0].node == "a" and third.nodes["a"].cached_models == ("sd15",)
