"""The HTTP verbs as kube-scheduler calls them: Go-shaped bodies in, Go-shaped answers out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eat_extender import cache, deps, filtering, metrics, prioritizing, wire
from eat_extender.app import app

from . import kube
from .conftest import Clock, fill

NODES = ["gpu-a", "gpu-b", "gpu-c"]


@pytest.fixture
def cluster(the_cache: cache.ClusterCache) -> cache.ClusterCache:
    return fill(the_cache, [kube.make_node("gpu-a", 8), kube.make_node("gpu-b", 4, cached=("sd15",)),
                            kube.make_node("gpu-c", 1, cached=("sdxl",))])


def post(client: Any, verb: str, body: Any) -> Any:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(f"/{verb}", content=content, headers={"Content-Type": "application/json"})


def test_filter_go_fixture_passes_the_planned_node(client: Any, cluster: cache.ClusterCache) -> None:
    r = post(client, "filter", kube.fixture("filter_args_planned.json"))
    assert r.status_code == 200
    assert r.json() == {
        "Nodes": None,
        "NodeNames": ["gpu-b"],
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {"gpu-a": "eat-extender: pod is planned for node gpu-b",
                                       "gpu-c": "eat-extender: pod is planned for node gpu-b"},
        "Error": "",
    }


def test_filter_with_node_objects_echoes_the_kept_nodes_whole(client: Any, cluster: cache.ClusterCache) -> None:
    body = kube.fixture("filter_args_nodes.json")
    r = post(client, "filter", body)
    out = r.json()
    assert r.status_code == 200 and out["Error"] == "" and out["NodeNames"] is None
    assert out["Nodes"] == {"items": [body["Nodes"]["items"][1]]}
    assert set(out["FailedAndUnresolvableNodes"]) == {"gpu-b"}


def test_answers_validate_as_the_wire_models(client: Any, cluster: cache.ClusterCache) -> None:
    """The verbs serialise without re-validating: their bytes must still be the models'."""
    for body in (kube.fixture("filter_args_planned.json"), kube.fixture("filter_args_nodes.json"),
                 kube.args(kube.make_pod("p"), NODES), b"{}"):
        r = post(client, "filter", body)
        assert wire.ExtenderFilterResult.model_validate_json(r.content).model_dump_json() == r.text
    r = post(client, "prioritize", kube.fixture("prioritize_args_unplanned.json"))
    assert wire.HostPriorityList.model_validate_json(r.content).model_dump_json() == r.text


def test_prioritize_go_fixture_prefers_the_warm_node(client: Any, cluster: cache.ClusterCache) -> None:
    r = post(client, "prioritize", kube.fixture("prioritize_args_unplanned.json"))
    assert r.status_code == 200
    assert r.json() == [{"Host": "gpu-a", "Score": 4}, {"Host": "gpu-b", "Score": 4},
                        {"Host": "gpu-c", "Score": 10}]


MALFORMED = [
    pytest.param(b"", "empty request body", id="empty"),
    pytest.param(b"{not json", "invalid ExtenderArgs", id="not-json"),
    pytest.param(b"[]", "invalid ExtenderArgs", id="json-array"),
    pytest.param({"NodeNames": ["gpu-a"]}, "Pod: Field required", id="no-pod"),
    pytest.param({"Pod": {"spec": {}}, "NodeNames": ["gpu-a"]}, "Pod.metadata: Field required", id="pod-no-metadata"),
    pytest.param({"Pod": kube.make_pod("p"), "NodeNames": None, "Nodes": None}, "neither NodeNames nor Nodes",
                 id="no-candidates"),
    pytest.param({"Pod": kube.make_pod("p"), "NodeNames": "gpu-a"}, "NodeNames: Input should be a valid array",
                 id="names-not-a-list"),
    pytest.param({"Pod": kube.make_pod("p"), "Nodes": {"items": [{"metadata": {}}]}}, "no metadata.name",
                 id="node-without-name"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED)
def test_malformed_filter_body_answers_200_with_error(client: Any, cluster: cache.ClusterCache, body: Any,
                                                      message: str) -> None:
    r = post(client, "filter", body)
    assert r.status_code == 200
    out = r.json()
    assert out["Error"].startswith("eat-extender: ") and message in out["Error"], out
    assert out["NodeNames"] is None and out["FailedNodes"] == {}


@pytest.mark.parametrize(("body", "message"), MALFORMED)
def test_malformed_prioritize_body_answers_400(client: Any, cluster: cache.ClusterCache, body: Any,
                                               message: str) -> None:
    r = post(client, "prioritize", body)
    assert r.status_code == 400
    assert message in r.json()["Error"]


def test_filter_before_sync_answers_error_so_the_scheduler_goes_on(client: Any) -> None:
    r = post(client, "filter", kube.args(kube.make_pod("p", planned="gpu-a"), NODES))
    assert r.status_code == 200
    assert "not synced" in r.json()["Error"]
    assert client.get("/readyz").status_code == 503


def test_unknown_nodes_and_gpu_less_pods(client: Any, cluster: cache.ClusterCache) -> None:
    r = post(client, "filter", kube.args(kube.make_pod("cpu", None), ["gpu-a", "mystery"]))
    assert r.json()["NodeNames"] == ["gpu-a", "mystery"]
    r = post(client, "prioritize", kube.args(kube.make_pod("cpu", None), ["gpu-a", "mystery"]))
    assert r.json() == [{"Host": "gpu-a", "Score": 4}, {"Host": "mystery", "Score": 0}]
    r = post(client, "filter", kube.args(kube.make_pod("p", planned="mystery"), ["gpu-a", "mystery"]))
    assert r.json()["NodeNames"] == [] and "mystery" in r.json()["FailedNodes"]


def test_gang_admission_holds_gpus_against_a_competing_group(client: Any, cluster: cache.ClusterCache,
                                                             clock: Clock) -> None:
    # Two groups want gpu-c's single GPU (and gpu-b). Whichever is admitted first gets it whole.
    first = kube.gang("first", ["gpu-b", "gpu-c"])
    second = kube.gang("second", ["gpu-c", "gpu-b"])
    fill(cluster, [kube.make_node("gpu-a", 8), kube.make_node("gpu-b", 4), kube.make_node("gpu-c", 1)],
         first + second)
    r = post(client, "filter", kube.args(first[0], NODES))
    assert r.json()["NodeNames"] == ["gpu-b"]
    r = post(client, "filter", kube.args(second[0], NODES))
    assert r.json()["NodeNames"] == []
    assert "(1 more held for pod groups being placed)" in r.json()["FailedNodes"]["gpu-c"]
    # The first group's other member still gets its node.
    assert post(client, "filter", kube.args(first[1], NODES)).json()["NodeNames"] == ["gpu-c"]
    # The hold expires: the second group may try (gpu-c is still free: nothing was bound).
    clock.t += 31
    assert post(client, "filter", kube.args(second[0], NODES)).json()["NodeNames"] == ["gpu-c"]


class FakeRefresher:
    """Re-reads nodes from a 'live' pod list: the cache had not yet seen the hog's deletion."""

    def __init__(self, c: cache.ClusterCache, live: list[dict[str, Any]]) -> None:
        self.cache, self.live, self.asked = c, live, []

    def refresh_nodes(self, nodes: Any) -> bool:
        self.asked.append(tuple(nodes))
        for n in nodes:
            with self.cache.node_read(n) as replace:
                replace([wire.Pod.model_validate(p) for p in self.live if p["spec"].get("nodeName") == n])
        return True


def test_capacity_rejections_are_checked_against_a_fresh_read(client: Any, cluster: cache.ClusterCache) -> None:
    hog = kube.make_pod("hog", 1, node="gpu-c", phase="Running")
    fill(cluster, [kube.make_node("gpu-c", 1)], [hog])
    refresher = FakeRefresher(cluster, live=[hog])
    app.dependency_overrides[deps.get_refresher] = lambda: refresher
    pod = kube.make_pod("p", planned="gpu-c")
    # Really full: re-read, still full, rejected.
    assert post(client, "filter", kube.args(pod, ["gpu-c"])).json()["NodeNames"] == []
    assert refresher.asked == [("gpu-c",)]
    # The hog is gone at the API server but the watch has not said so yet: the re-read sees it.
    refresher.live = []
    assert post(client, "filter", kube.args(pod, ["gpu-c"])).json()["NodeNames"] == ["gpu-c"]
    # A pod that passes costs no re-read.
    assert post(client, "filter", kube.args(pod, ["gpu-c"])).json()["NodeNames"] == ["gpu-c"]
    assert len(refresher.asked) == 2


def test_metrics_count_latency_decisions_and_rejections(client: Any, cluster: cache.ClusterCache) -> None:
    post(client, "filter", kube.fixture("filter_args_planned.json"))
    post(client, "filter", b"garbage")
    post(client, "prioritize", kube.fixture("prioritize_args_unplanned.json"))
    text = client.get("/metrics").text
    for line in [
        'eat_extender_request_duration_seconds_bucket{le="0.005",verb="filter"}',
        'eat_extender_request_duration_seconds_count{verb="prioritize"}',
        'eat_extender_requests_total{outcome="bad_request",verb="filter"}',
        'eat_extender_decisions_total{kind="planned",result="passed",verb="filter"}',
        'eat_extender_decisions_total{kind="warm",result="scored",verb="prioritize"}',
        'eat_extender_node_rejections_total{reason="not_planned_node"}',
        'eat_extender_gang_checks_total{result="fits"}',
        "eat_extender_cache_nodes 3.0",
        "eat_extender_cache_synced 1.0",
    ]:
        assert line in text, line


def test_a_bug_in_either_verb_is_counted_as_an_internal_error(client: Any, cluster: cache.ClusterCache,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    def errors(verb: str) -> float:
        labels = {"verb": verb, "outcome": "internal_error"}
        return metrics.REGISTRY.get_sample_value("eat_extender_requests_total", labels) or 0.0

    before = {verb: errors(verb) for verb in ("filter", "prioritize")}
    monkeypatch.setattr(filtering, "decide", broken)
    monkeypatch.setattr(prioritizing, "decide", broken)
    answer = post(client, "filter", kube.fixture("filter_args_planned.json"))
    assert answer.status_code == 200  # kube-scheduler skips an ignorable extender that answers Error
    assert answer.json()["Error"] == "eat-extender: internal error: RuntimeError: boom"
    answer = post(client, "prioritize", kube.fixture("prioritize_args_unplanned.json"))
    assert answer.status_code == 500  # prioritize has no Error field: a 500, which kube-scheduler ignores
    assert answer.json()["Error"] == "eat-extender: internal error: RuntimeError: boom"
    assert {verb: errors(verb) - before[verb] for verb in before} == {"filter": 1.0, "prioritize": 1.0}


def test_health(client: Any, cluster: cache.ClusterCache) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "nodes": 3, "pods": 0}


def test_openapi_documents_the_wire_types(client: Any) -> None:
    schema = client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    assert {"ExtenderArgs", "ExtenderFilterResult", "HostPriority"} <= set(comps)
    assert {"Pod", "Nodes", "NodeNames"} <= set(comps["ExtenderArgs"]["properties"])
    assert "FailedAndUnresolvableNodes" in comps["ExtenderFilterResult"]["properties"]
