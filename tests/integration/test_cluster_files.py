"""The local cluster's data files agree with each other and with EAT's contracts (no cluster needed)."""

from __future__ import annotations

import pytest
import yaml

from clusterkit import lc


def test_keys_match_the_contracts_module() -> None:
    api = pytest.importorskip("eat_policy.api")
    assert lc.GPU_RESOURCE == api.GPU_RESOURCE
    assert lc.LABEL_GPU_PRODUCT == api.GPU_PRODUCT_LABEL
    assert lc.LABEL_GPU_TYPE == api.LABEL_GPU_TYPE
    assert lc.LABEL_NODE_POOL == api.LABEL_NODE_POOL
    assert lc.ANNOTATION_SIM_DURATION == api.ANNOTATION_SIM_DURATION
    assert lc.ANNOTATION_SIM_FAIL == api.ANNOTATION_SIM_FAIL
    assert lc.EAT_SCHEDULER_NAME == api.SCHEDULER_NAME


def test_scheduler_config_renders_the_extender() -> None:
    text = lc.render_scheduler_config("/tmp/kc", extender_url="http://127.0.0.1:9/x", leader_elect=True)
    cfg = yaml.safe_load(text)
    assert "${" not in "".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert cfg["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert [p["schedulerName"] for p in cfg["profiles"]] == [lc.EAT_SCHEDULER_NAME]
    assert cfg["clientConnection"]["kubeconfig"] == "/tmp/kc"
    assert cfg["leaderElection"] == {"leaderElect": True, "resourceNamespace": "kube-system",
                                     "resourceName": "eat-scheduler"}
    (ext,) = cfg["extenders"]
    assert ext["urlPrefix"] == "http://127.0.0.1:9/x"
    assert (ext["filterVerb"], ext["prioritizeVerb"]) == ("filter", "prioritize")
    assert ext["ignorable"] is True and ext["nodeCacheCapable"] is True
    assert ext["managedResources"] == [{"name": lc.GPU_RESOURCE, "ignoredByScheduler": False}]
    assert ext["httpTimeout"] == "2s" and ext["weight"] > 0


def test_unknown_placeholder_is_an_error(tmp_path) -> None:
    t = tmp_path / "cfg.yaml"
    t.write_text("kind: KubeSchedulerConfiguration\nx: ${EAT_NOPE}\n")
    with pytest.raises(lc.ClusterError, match="EAT_NOPE"):
        lc.render_scheduler_config("", template=t)


def test_node_pools_make_valid_gpu_nodes() -> None:
    defaults, pools = lc.load_node_pools()
    products = {p["gpuProduct"] for p in pools}
    assert {"NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"} <= products
    for pool in pools:
        node = lc.node_manifest(pool, defaults, f"eat-gpu-{pool['name']}-0")
        gpus = int(node["status"]["allocatable"][lc.GPU_RESOURCE])
        assert 1 <= gpus <= 8
        assert node["status"]["capacity"] == node["status"]["allocatable"]
        assert {"cpu", "memory", "pods"} <= set(node["status"]["capacity"])
        labels = node["metadata"]["labels"]
        assert labels[lc.LABEL_GPU_PRODUCT] == pool["gpuProduct"]
        assert int(labels[lc.LABEL_GPU_MEMORY]) > 0
        assert labels[lc.LABEL_GPU_TYPE] and labels[lc.LABEL_NODE_POOL] == pool["name"]
        assert node["metadata"]["annotations"][lc.KWOK_NODE_ANNOTATION] == "fake"
    with pytest.raises(ValueError):
        lc.node_manifest(pools[0], defaults, "x", gpus=9)


def test_stages_cover_the_pod_lifecycle() -> None:
    stages = {d["metadata"]["name"]: d for d in yaml.safe_load_all(lc.STAGES_FILE.read_text()) if d}
    assert set(stages) == {"node-initialize", "node-heartbeat-with-lease", "eat-pod-running",
                           "eat-pod-complete", "eat-pod-fail", "eat-pod-delete"}
    for name in ("eat-pod-complete", "eat-pod-fail"):
        expr = stages[name]["spec"]["delay"]["durationFrom"]["jq"]["expression"]
        assert lc.ANNOTATION_SIM_DURATION in expr
    assert "phase: Succeeded" in stages["eat-pod-complete"]["spec"]["next"]["statusTemplate"]
    assert "phase: Failed" in stages["eat-pod-fail"]["spec"]["next"]["statusTemplate"]
