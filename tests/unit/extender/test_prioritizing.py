"""Scores: the planned node on top; for unplanned pods warm cache first, then free GPUs."""

from __future__ import annotations

from eat_extender import prioritizing, state, wire

from . import kube
from .conftest import build_state


def view(pod: dict) -> state.PodView:  # type: ignore[type-arg]
    return state.pod_view(wire.Pod.model_validate(pod))


def test_planned_pod_scores_its_node_top_and_the_rest_zero() -> None:
    s = build_state([kube.make_node(n) for n in "abc"])
    scores = prioritizing.decide(view(kube.make_pod("p", planned="b")), ["a", "b", "c"], s, 0.0)
    assert scores.kind is prioritizing.Kind.PLANNED
    assert scores.scores == (("a", 0), ("b", 10), ("c", 0))


def test_warm_cache_beats_free_gpus() -> None:
    s = build_state(
        [kube.make_node("cold-idle", 8), kube.make_node("warm-busy", 8, cached=("sdxl",)),
         kube.make_node("warm-idle", 8, cached=("sd15", "sdxl"))],
        [kube.make_pod(f"b{i}", 1, node="warm-busy", phase="Running") for i in range(6)],
    )
    scores = dict(prioritizing.decide(view(kube.make_pod("p", model="sdxl")),
                                      ["cold-idle", "warm-busy", "warm-idle"], s, 0.0).scores)
    assert scores == {"cold-idle": 4, "warm-busy": 7, "warm-idle": 10}


def test_without_a_model_the_least_loaded_node_wins() -> None:
    s = build_state([kube.make_node("a", 4), kube.make_node("b", 4)],
                    [kube.make_pod("x", 3, node="a", phase="Running")])
    scores = prioritizing.decide(view(kube.make_pod("p")), ["a", "b"], s, 0.0)
    assert scores.kind is prioritizing.Kind.COLD
    assert dict(scores.scores) == {"a": 1, "b": 4}


def test_unknown_and_gpu_less_nodes_score_zero() -> None:
    s = build_state([kube.make_node("cpu", 0, cached=("sd15",))])
    scores = dict(prioritizing.decide(view(kube.make_pod("p", model="sd15")), ["cpu", "nowhere"], s, 0.0).scores)
    assert scores == {"cpu": 6, "nowhere": 0}


def test_gpus_held_for_a_group_lower_the_score() -> None:
    pods = kube.gang("g", ["a", "a"])
    s = build_state([kube.make_node("a", 4), kube.make_node("b", 4)], pods, admissions={"render/g": 100.0})
    assert dict(prioritizing.decide(view(kube.make_pod("p")), ["a", "b"], s, 0.0).scores) == {"a": 2, "b": 4}


def test_scores_stay_in_range_for_many_nodes() -> None:
    s = build_state([kube.make_node(f"n{i}", i % 9, cached=("m",) if i % 3 else ()) for i in range(100)])
    scores = prioritizing.decide(view(kube.make_pod("p", model="m")), [f"n{i}" for i in range(100)], s, 0.0)
    assert all(0 <= sc <= 10 for _, sc in scores.scores)
