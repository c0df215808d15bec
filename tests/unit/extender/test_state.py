"""Reading pods and nodes: GPU requests, plans, free GPUs; the cache agrees with a full rebuild."""

from __future__ import annotations

import random
from typing import Any

import pytest

from eat_extender import cache, metrics, state, wire
from eat_policy import api

from . import kube
from .conftest import build_state


@pytest.mark.parametrize(("quantity", "count"), [
    pytest.param("1", 1, id="string"),
    pytest.param(2, 2, id="int"),
    pytest.param("8", 8, id="eight"),
    pytest.param("1k", 1000, id="kilo"),
    pytest.param("500m", 1, id="milli-rounds-up"),
    pytest.param("0", 0, id="zero"),
])
def test_parse_count(quantity: wire.Quantity, count: int) -> None:
    assert state.parse_count(quantity) == count


@pytest.mark.parametrize("bad", ["", "one", "1x", "-1", True, pytest.param(10**400, id="huge-int"), "1e400"])
def test_parse_count_names_the_bad_value(bad: wire.Quantity) -> None:
    with pytest.raises(ValueError, match="quantity"):
        state.parse_count(bad)


def _spec(containers: list[dict], init: list[dict] | None = None) -> wire.PodSpec:  # type: ignore[type-arg]
    return wire.PodSpec.model_validate({"containers": containers, "initContainers": init})


def _c(gpus: int | None, restart: str | None = None, key: str = "limits") -> dict:  # type: ignore[type-arg]
    c: dict = {"name": "c"}  # type: ignore[type-arg]
    if gpus is not None:
        c["resources"] = {key: {api.GPU_RESOURCE: str(gpus)}}
    if restart:
        c["restartPolicy"] = restart
    return c


@pytest.mark.parametrize(("containers", "init", "gpus"), [
    pytest.param([_c(None)], None, 0, id="no-gpu"),
    pytest.param([_c(1)], None, 1, id="limits-only"),
    pytest.param([_c(2, key="requests")], None, 2, id="requests-only"),
    pytest.param([_c(1), _c(2)], None, 3, id="containers-add-up"),
    pytest.param([_c(1)], [_c(4)], 4, id="init-container-peak"),
    pytest.param([_c(1)], [_c(1, restart="Always")], 2, id="sidecar-adds"),
    pytest.param([_c(1)], [_c(1, restart="Always"), _c(2)], 3, id="init-after-sidecar"),
])
def test_gpu_request(containers: list[dict], init: list[dict] | None, gpus: int) -> None:  # type: ignore[type-arg]
    assert state.gpu_request(_spec(containers, init)) == gpus


def test_pod_view_reads_the_plan() -> None:
    v = state.pod_view(wire.Pod.model_validate(kube.fixture("filter_args_planned.json")["Pod"]))
    assert (v.key, v.gpus, v.planned_node, v.model) == ("render/sd-job-7-rank-1", 1, "gpu-b", "sd15")
    assert (v.group, v.group_size, v.group_nodes) == ("render/sd-job-7", 2, ("gpu-a", "gpu-b"))
    assert v.is_gang and not v.problems


@pytest.mark.parametrize(("labels", "notes", "problem"), [
    pytest.param({api.LABEL_POD_GROUP: "g"}, {api.ANNOTATION_GROUP_SIZE: "two"}, "not a positive integer",
                 id="size-not-int"),
    pytest.param({api.LABEL_POD_GROUP: "g"}, {api.ANNOTATION_GROUP_SIZE: "0"}, "not a positive integer",
                 id="size-zero"),
    pytest.param({api.LABEL_POD_GROUP: "g"}, {api.ANNOTATION_GROUP_SIZE: "3", api.ANNOTATION_GROUP_NODES: "a,b"},
                 "lists 2 nodes", id="nodes-vs-size"),
    pytest.param({}, {api.ANNOTATION_GROUP_SIZE: "2"}, "needs the label", id="gang-without-group-label"),
    pytest.param({api.LABEL_POD_GROUP: "g"},
                 {api.ANNOTATION_GROUP_NODES: "a,b", api.ANNOTATION_PLANNED_NODE: "c"},
                 "not among the group's planned nodes", id="planned-outside-plan"),
])
def test_pod_view_reports_bad_annotations(labels: dict[str, str], notes: dict[str, str], problem: str) -> None:
    pod = kube.make_pod("p")
    pod["metadata"]["labels"] = labels
    pod["metadata"]["annotations"] = notes
    v = state.pod_view(wire.Pod.model_validate(pod))
    assert any(problem in p for p in v.problems), v.problems


def test_bad_gpu_quantity_is_a_problem_not_a_crash() -> None:
    pod = kube.make_pod("p")
    pod["spec"]["containers"][0]["resources"] = {"limits": {api.GPU_RESOURCE: "lots"}}
    v = state.pod_view(wire.Pod.model_validate(pod))
    assert v.gpus == 0 and "lots" in v.problems[0]


def test_free_gpus_count_only_live_pods_bound_to_the_node() -> None:
    s = build_state(
        [kube.make_node("a", 4), kube.make_node("b", 2), kube.make_node("cpu-only", 0)],
        [
            kube.make_pod("run", 2, node="a", phase="Running"),
            kube.make_pod("done", 1, node="a", phase="Succeeded"),
            kube.make_pod("failed", 1, node="a", phase="Failed"),
            kube.make_pod("pending", 1),
            kube.make_pod("cpu", None, node="b", phase="Running"),
            kube.make_pod("b1", 1, node="b", phase="Running"),
            kube.make_pod("ghost", 1, node="gone", phase="Running"),
        ],
    )
    assert {n: (ns.gpus_allocatable, ns.gpus_free) for n, ns in s.nodes.items()} == {
        "a": (4, 2), "b": (2, 1), "cpu-only": (0, 0)}


def test_node_cached_models_come_from_the_annotation() -> None:
    s = build_state([kube.make_node("a", 1, cached=("sd15", "sdxl"))])
    assert s.nodes["a"].cached_models == {"sd15", "sdxl"}


def test_groups_record_plan_and_bound_members() -> None:
    pods = kube.gang("g", ["a", "b", "a"])
    pods[0]["spec"]["nodeName"] = "a"
    s = build_state([kube.make_node("a"), kube.make_node("b")], pods)
    g = s.groups["render/g"]
    assert (g.plan, g.bound_slots, g.members, g.gpus_per_member) == (("a", "b", "a"), ("a",), 3, 1)
    assert state.remaining_plan(g.plan, g.bound_slots) == {"a": 1, "b": 1}


def test_cache_applies_events_like_a_rebuild(clock: object) -> None:
    """Random adds, binds, completions and deletions: the cache equals a rebuild from the survivors."""
    rng = random.Random(7)
    nodes = {f"n{i}": kube.make_node(f"n{i}", rng.choice([1, 2, 4, 8])) for i in range(6)}
    c = cache.ClusterCache()
    c.replace_nodes([wire.Node.model_validate(n) for n in nodes.values()])
    c.replace_pods([])
    pods: dict[str, dict] = {}  # type: ignore[type-arg]
    for step in range(400):
        op = rng.random()
        if op < 0.45 or not pods:
            name = f"p{step}"
            group = rng.choice([None, "g1", "g2"])
            pod = kube.make_pod(name, rng.choice([None, 1, 2]), group=group,
                                group_nodes=["n0", "n1"] if group else None,
                                planned=rng.choice([None, "n0", "n1"]) if group else None)
            if rng.random() < 0.5:
                pod["spec"]["nodeName"] = rng.choice(list(nodes))
                pod["status"]["phase"] = "Running"
            pods[name] = pod
            c.upsert_pod(wire.Pod.model_validate(pod))
        elif op < 0.7:
            name = rng.choice(list(pods))
            pods[name]["status"]["phase"] = rng.choice(["Succeeded", "Failed", "Running"])
            pods[name]["spec"].setdefault("nodeName", rng.choice(list(nodes)))
            c.upsert_pod(wire.Pod.model_validate(pods[name]))
        elif op < 0.9:
            name = rng.choice(list(pods))
            del pods[name]
            c.delete_pod("render", name)
        else:
            name = rng.choice(list(nodes))
            nodes[name] = kube.make_node(name, rng.choice([0, 2, 8]))
            c.upsert_node(wire.Node.model_validate(nodes[name]))
    expected = build_state(list(nodes.values()), list(pods.values()))
    got = c.snapshot()
    assert dict(got.nodes) == dict(expected.nodes)
    assert dict(got.groups) == dict(expected.groups)
    assert got.synced


def test_replacing_a_nodes_pods_keeps_other_nodes_and_groups() -> None:
    c = cache.ClusterCache()
    c.replace_nodes([wire.Node.model_validate(kube.make_node(n, 4)) for n in ("a", "b")])
    members = kube.gang("g", ["a", "b"])
    members[0]["spec"]["nodeName"] = "a"
    c.replace_pods([wire.Pod.model_validate(p) for p in members + [
        kube.make_pod("x", 2, node="a", phase="Running"), kube.make_pod("y", 1, node="b", phase="Running")]])
    with c.node_read("a") as replace:
        replace([wire.Pod.model_validate(members[0])])  # x is gone
    s = c.snapshot()
    assert (s.nodes["a"].gpus_free, s.nodes["b"].gpus_free) == (3, 3)
    assert s.groups["render/g"].bound_slots == ("a",)


def node_a_with(*pods: dict[str, Any]) -> cache.ClusterCache:
    c = cache.ClusterCache()
    c.replace_nodes([wire.Node.model_validate(kube.make_node("a", 8))])
    c.replace_pods([wire.Pod.model_validate(p) for p in pods])
    return c


def test_a_node_read_keeps_what_the_watch_saw_while_it_was_in_flight() -> None:
    x, stale, fresh = (kube.make_pod(name, gpus, node="a", phase="Running") for name, gpus in
                       (("x", 1), ("stale", 2), ("fresh", 4)))
    c = node_a_with(x, stale)
    with c.node_read("a") as replace:
        c.delete_pod("render", "x")  # watch events after the LIST was answered
        c.upsert_pod(wire.Pod.model_validate(kube.make_pod("y", 3, node="a", phase="Running")))
        replace([wire.Pod.model_validate(p) for p in (x, fresh)])
    # x stays deleted, y stays bound; stale (no event) is dropped and fresh added from the LIST.
    assert c.snapshot().nodes["a"].gpus_requested == 3 + 4
    with pytest.raises(RuntimeError, match="has ended"):
        replace([])


def test_a_node_read_overtaken_by_a_relist_changes_nothing() -> None:
    c = node_a_with(kube.make_pod("x", 1, node="a", phase="Running"))
    with c.node_read("a") as replace:
        c.replace_pods([wire.Pod.model_validate(kube.make_pod("y", 2, node="a", phase="Running"))])
        replace([])
    assert c.snapshot().nodes["a"].gpus_requested == 2


def test_watch_events_after_a_node_read_are_not_held_against_the_next() -> None:
    x = kube.make_pod("x", 1, node="a", phase="Running")
    c = node_a_with(x)
    with c.node_read("a") as replace:
        replace([wire.Pod.model_validate(x)])
    c.upsert_pod(wire.Pod.model_validate(x))  # an event between the reads
    with c.node_read("a") as replace:
        replace([])  # x was deleted since; the watch has not said so yet
    assert c.snapshot().nodes["a"].gpus_requested == 0


def test_cache_is_not_synced_until_both_lists_are_in() -> None:
    c = cache.ClusterCache()
    assert not c.snapshot().synced
    c.replace_nodes([])
    assert not c.snapshot().synced
    c.replace_pods([])
    assert c.snapshot().synced


def test_snapshot_is_reused_until_something_changes() -> None:
    c = cache.ClusterCache()
    c.replace_nodes([wire.Node.model_validate(kube.make_node("a"))])
    c.replace_pods([])
    first = c.snapshot()
    assert c.snapshot() is first
    c.upsert_pod(wire.Pod.model_validate(kube.make_pod("p", 1, node="a", phase="Running")))
    assert c.snapshot() is not first and c.snapshot().nodes["a"].gpus_free == 3


def test_admissions_expire_on_the_clock() -> None:
    t = [0.0]
    c = cache.ClusterCache(clock=lambda: t[0])
    c.admit("ns/g", until=10.0)
    assert c.snapshot().admissions == {"ns/g": 10.0}
    c.admit("ns/g", until=5.0)  # an earlier deadline never shortens a hold
    assert c.snapshot().admissions == {"ns/g": 10.0}
    t[0] = 10.0
    assert c.snapshot().admissions == {}


def test_a_hold_that_expires_before_its_group_is_bound_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A hold ending with members unplaced frees their GPUs for others: operators must see it."""
    t = [0.0]
    c = cache.ClusterCache(clock=lambda: t[0])
    c.replace_nodes([wire.Node.model_validate(kube.make_node(n, 4)) for n in ("a", "b")])
    stuck, done = kube.gang("stuck", ["a", "b"]), kube.gang("done", ["a", "b"])
    stuck[0]["spec"]["nodeName"] = "a"
    for member, node in zip(done, ("a", "b")):
        member["spec"]["nodeName"] = node
    c.replace_pods([wire.Pod.model_validate(p) for p in stuck + done])
    c.admit("render/stuck", until=10.0)
    c.admit("render/done", until=10.0)
    c.admit("render/gone", until=10.0)  # its pods were deleted
    before = metrics.gang_holds_expired._value.get()
    t[0] = 9.0
    c.snapshot()
    assert metrics.gang_holds_expired._value.get() == before
    t[0] = 10.0
    with caplog.at_level("WARNING", logger="eat_extender.cache"):
        assert c.snapshot().admissions == {}
        c.snapshot()  # an expiry is reported once
    assert metrics.gang_holds_expired._value.get() == before + 1
    assert [r.getMessage() for r in caplog.records] == [
        "gang hold of render/stuck expired with 1 member(s) not placed: its GPUs are free for other pods"]
