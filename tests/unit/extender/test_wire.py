"""The wire format is kube-scheduler's: Go field names in, Go field names out."""

from __future__ import annotations

import json

import pytest

from eat_extender import wire
from pydantic import ValidationError

from . import kube


def test_go_shaped_filter_args_parse() -> None:
    args = wire.ExtenderArgs.model_validate_json(json.dumps(kube.fixture("filter_args_planned.json")))
    assert args.node_names == ["gpu-a", "gpu-b", "gpu-c"]
    assert args.nodes is None
    assert args.pod.metadata.name == "sd-job-7-rank-1"
    assert args.pod.spec.containers[0].resources is not None
    assert args.pod.spec.containers[0].resources.limits == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert args.candidate_names() == ["gpu-a", "gpu-b", "gpu-c"]


def test_args_with_node_objects_give_their_names() -> None:
    args = wire.ExtenderArgs.model_validate(kube.fixture("filter_args_nodes.json"))
    assert args.candidate_names() == ["gpu-b", "gpu-c"]
    # The node objects are kept whole, to be echoed back unchanged.
    assert args.nodes is not None and args.nodes.items[1]["status"]["nodeInfo"] == {"kubeletVersion": "fake"}


def test_args_without_candidates_are_refused() -> None:
    args = wire.ExtenderArgs.model_validate({"Pod": kube.make_pod("p"), "Nodes": None, "NodeNames": None})
    with pytest.raises(ValueError, match="neither NodeNames nor Nodes"):
        args.candidate_names()


def test_filter_result_uses_go_field_names() -> None:
    result = wire.ExtenderFilterResult(NodeNames=["a"], FailedNodes={"b": "why"},
                                       FailedAndUnresolvableNodes={"c": "never"})
    assert json.loads(result.model_dump_json()) == {
        "Nodes": None, "NodeNames": ["a"], "FailedNodes": {"b": "why"},
        "FailedAndUnresolvableNodes": {"c": "never"}, "Error": "",
    }


def test_host_priority_list_is_a_bare_list_of_host_and_score() -> None:
    body = wire.HostPriorityList([wire.HostPriority(Host="a", Score=10), wire.HostPriority(Host="b", Score=0)])
    assert json.loads(body.model_dump_json()) == [{"Host": "a", "Score": 10}, {"Host": "b", "Score": 0}]


@pytest.mark.parametrize("score", [-1, 11])
def test_scores_stay_within_the_extender_range(score: int) -> None:
    with pytest.raises(ValidationError):
        wire.HostPriority(Host="a", Score=score)


def test_fast_priority_list_json_is_the_models_json() -> None:
    scores = [("gpu-a", 10), ("gpu-b.example", 0), ("x", 7)]
    model = wire.HostPriorityList([wire.HostPriority(Host=h, Score=s) for h, s in scores])
    assert wire.host_priority_list_json(scores) == model.model_dump_json().encode()
    assert wire.HostPriorityList.model_validate_json(wire.host_priority_list_json(scores)) == model
