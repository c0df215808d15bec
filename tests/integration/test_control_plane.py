"""The local control plane is real: scheduler binds, controllers collect, kwok runs pods.

Every wait is a polling assertion with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse

import pytest

from clusterkit import Cluster, lc, parse_time, pod_manifest, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _terminated(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def _run_seconds(pod: dict) -> float:
    """Running -> finished, from the pod's own status timestamps (kwok writes them)."""
    return (parse_time(_terminated(pod)["finishedAt"]) - parse_time(pod["status"]["startTime"])).total_seconds()


def _fake_gpu_nodes(cluster: Cluster) -> set[str]:
    items = cluster.get("nodes", "-l", f"{lc.LABEL_FAKE_NODE}=true")["items"]
    return {n["metadata"]["name"] for n in items if int(n["status"]["allocatable"].get(lc.GPU_RESOURCE, 0)) > 0}


def test_fake_gpu_nodes_advertise_gpus(cluster: Cluster, gpu_nodes: list[str]) -> None:
    _, pools = lc.load_node_pools()
    by_pool = {p["name"]: p for p in pools}
    nodes = {n["metadata"]["name"]: n for n in cluster.get("nodes", "-l", f"{lc.LABEL_FAKE_NODE}=true")["items"]}
    for name in gpu_nodes:
        node = nodes[name]
        labels = node["metadata"]["labels"]
        pool = by_pool[labels[lc.LABEL_NODE_POOL]]
        assert node["status"]["capacity"][lc.GPU_RESOURCE] == str(pool["gpus"])
        assert node["status"]["allocatable"][lc.GPU_RESOURCE] == str(pool["gpus"])
        assert labels[lc.LABEL_GPU_PRODUCT] == pool["gpuProduct"]
        assert labels[lc.LABEL_GPU_MEMORY] == str(pool["gpuMemoryMiB"])
        assert labels[lc.LABEL_GPU_TYPE] == pool["gpuType"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"

    table = lc.gpu_table(cluster.kubeconfig)
    for name in gpu_nodes:
        row = next(line for line in table.splitlines() if line.startswith(name + " "))
        pool = by_pool[nodes[name]["metadata"]["labels"][lc.LABEL_NODE_POOL]]
        assert pool["gpuProduct"] in row.split()
        assert str(pool["gpus"]) in row.split()


def test_gpu_pod_is_bound_by_eat_scheduler_and_runs_to_success(
    cluster: Cluster, gpu_nodes: list[str], namespace: str
) -> None:
    cluster.create(pod_manifest("sd-0", gpus=1, annotations={lc.ANNOTATION_SIM_DURATION: "1"}), namespace)

    pod = cluster.wait_pod_phase(namespace, "sd-0", "Succeeded")
    assert pod["spec"]["nodeName"] in _fake_gpu_nodes(cluster)
    assert pod["spec"]["schedulerName"] == "eat-scheduler"
    assert _terminated(pod)["exitCode"] == 0
    # The eat-scheduler profile (not the default one) made the binding.
    scheduled = wait_until(
        lambda: [e for e in cluster.events_for(namespace, "sd-0") if e["reason"] == "Scheduled"],
        "Scheduled event",
    )
    assert scheduled[0].get("reportingComponent") == "eat-scheduler", scheduled[0]
    assert pod["spec"]["nodeName"] in scheduled[0]["message"]


def test_gpu_requests_are_accounted(cluster: Cluster, gpu_nodes: list[str], namespace: str) -> None:
    """No node has 16 GPUs: the pod stays Pending and the scheduler says why."""
    cluster.create(pod_manifest("too-big", gpus=16), namespace)
    failed = wait_until(
        lambda: [e for e in cluster.events_for(namespace, "too-big") if e["reason"] == "FailedScheduling"],
        "FailedScheduling event",
    )
    assert "nvidia.com/gpu" in failed[0]["message"]
    assert cluster.pod(namespace, "too-big")["status"]["phase"] == "Pending"


def test_default_scheduler_still_works(cluster: Cluster, gpu_nodes: list[str], namespace: str) -> None:
    cluster.create(pod_manifest("plain", gpus=None, scheduler="default-scheduler"), namespace)
    pod = cluster.wait_pod_phase(namespace, "plain", "Succeeded")
    assert pod["spec"]["nodeName"] in _fake_gpu_nodes(cluster)


def test_fail_annotation_makes_the_pod_fail(cluster: Cluster, gpu_nodes: list[str], namespace: str) -> None:
    cluster.create(pod_manifest("doomed", annotations={lc.ANNOTATION_SIM_FAIL: "true"}), namespace)
    pod = cluster.wait_pod_phase(namespace, "doomed", {"Failed", "Succeeded"})
    assert pod["status"]["phase"] == "Failed"
    assert _terminated(pod)["exitCode"] == 1
    assert pod["status"].get("reason") == "SimulatedFailure"


def test_duration_annotation_is_honoured(cluster: Cluster, gpu_nodes: list[str], namespace: str) -> None:
    cluster.create(pod_manifest("slow", annotations={lc.ANNOTATION_SIM_DURATION: "3"}), namespace)
    cluster.create(pod_manifest("quick", annotations={lc.ANNOTATION_SIM_DURATION: "0"}), namespace)
    slow = cluster.wait_pod_phase(namespace, "slow", "Succeeded")
    quick = cluster.wait_pod_phase(namespace, "quick", "Succeeded")
    # Status timestamps have one-second resolution.
    assert _run_seconds(slow) >= 3, slow["status"]
    assert _run_seconds(quick) <= 1.5, quick["status"]
    assert _run_seconds(slow) - _run_seconds(quick) >= 2


def test_pods_without_duration_complete_unless_restart_always(
    cluster: Cluster, gpu_nodes: list[str], namespace: str
) -> None:
    cluster.create(pod_manifest("server", gpus=None, restart_policy="Always"), namespace)
    cluster.wait_pod_phase(namespace, "server", "Running")
    # Started after `server` was Running, and runs the default delay: once it is done,
    # `server` has been Running longer than that delay and would have completed by now.
    cluster.create(pod_manifest("batch", gpus=None, restart_policy="Never"), namespace)
    batch = cluster.wait_pod_phase(namespace, "batch", "Succeeded")
    server = cluster.pod(namespace, "server")
    assert server["status"]["phase"] == "Running"
    assert parse_time(server["status"]["startTime"]) <= parse_time(batch["status"]["startTime"])


def test_namespace_deletion_collects_its_pods(cluster: Cluster, gpu_nodes: list[str], namespace: str) -> None:
    ns = namespace + "-gc"
    cluster.kubectl("create", "namespace", ns)
    wait_until(lambda: cluster.exists("serviceaccount", "default", "-n", ns), f"service account {ns}/default")
    for i in range(3):
        cluster.create(pod_manifest(f"p{i}", restart_policy="Always"), ns)
    for i in range(3):
        cluster.wait_pod_phase(ns, f"p{i}", "Running")

    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    wait_until(lambda: not cluster.exists("namespace", ns), f"namespace {ns} to be gone")
    assert cluster.get("pods", "-A", "--field-selector", f"metadata.namespace={ns}")["items"] == []


def test_deleting_an_owner_collects_its_dependents(cluster: Cluster, gpu_nodes: list[str], namespace: str) -> None:
    owner = cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}, namespace)
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dep", "ownerReferences": [ref]}},
                   namespace)
    cluster.create(pod_manifest("dep-pod", restart_policy="Always", owner=ref), namespace)
    cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bystander"}}, namespace)
    cluster.wait_pod_phase(namespace, "dep-pod", "Running")

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")
    wait_until(lambda: not cluster.exists("configmap", "dep", "-n", namespace), "dependent ConfigMap collected")
    wait_until(lambda: not cluster.exists("pod", "dep-pod", "-n", namespace), "dependent pod collected")
    assert cluster.exists("configmap", "bystander", "-n", namespace)


def test_job_runs_on_fake_nodes_and_is_collected(cluster: Cluster, gpu_nodes: list[str], namespace: str) -> None:
    template = pod_manifest("ignored", annotations={lc.ANNOTATION_SIM_DURATION: "0.5"})
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "render"},
        "spec": {
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {"metadata": {"annotations": template["metadata"]["annotations"]}, "spec": template["spec"]},
        },
    }
    cluster.create(job, namespace)

    def complete():
        j = cluster.get("job", "render", "-n", namespace)
        return j.get("status", {}).get("succeeded") == 2 and j

    wait_until(complete, "job render to succeed twice")
    pods = cluster.get("pods", "-n", namespace, "-l", "job-name=render")["items"]
    assert len(pods) == 2 and all(p["status"]["phase"] == "Succeeded" for p in pods)

    cluster.kubectl("delete", "job", "render", "-n", namespace, "--cascade=background")
    wait_until(lambda: not cluster.get("pods", "-n", namespace, "-l", "job-name=render")["items"],
               "job pods collected")


class _FakeExtender:
    """A stand-in for eat-extender on the URL the eat-scheduler profile calls.

    Filter keeps only `allow`; prioritize scores it 10. Records every request.
    """

    def __init__(self, url: str, allow: str) -> None:
        parsed = urllib.parse.urlparse(url)
        self.prefix = parsed.path.rstrip("/")
        self.allow = allow
        self.calls: list[tuple[str, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                verb = self.path[len(outer.prefix):].strip("/")
                outer.calls.append((verb, body))
                names = body.get("NodeNames") or []
                if verb == "filter":
                    out: object = {
                        "NodeNames": [n for n in names if n == outer.allow],
                        "FailedNodes": {n: "not in the plan" for n in names if n != outer.allow},
                        "Error": "",
                    }
                else:
                    out = [{"Host": n, "Score": 10 if n == outer.allow else 0} for n in names]
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((parsed.hostname, parsed.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "_FakeExtender":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_eat_scheduler_calls_the_extender(cluster: Cluster, gpu_nodes: list[str], namespace: str) -> None:
    """The rendered scheduler-config.yaml wires filter/prioritize for GPU pods only."""
    url = lc.cluster_info().get("extender_url")
    if not cluster.local or not url:
        pytest.skip("needs the local control plane (it knows the extender URL it configured)")
    parsed = urllib.parse.urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        pytest.skip(f"extender URL {url} is not on this machine")
    target = gpu_nodes[-1]
    try:
        fake = _FakeExtender(url, allow=target)
    except OSError as e:
        pytest.skip(f"cannot listen on {url} (a real extender running?): {e}")
    with fake:
        cluster.create(pod_manifest("planned", gpus=1), namespace)
        cluster.create(pod_manifest("cpu-only", gpus=None), namespace)
        planned = cluster.wait_pod_phase(namespace, "planned", {"Running", "Succeeded"})
        cluster.wait_pod_phase(namespace, "cpu-only", {"Running", "Succeeded"})
    assert planned["spec"]["nodeName"] == target
    filters = [b for verb, b in fake.calls if verb == "filter"]
    assert filters, fake.calls
    assert all(b["Pod"]["metadata"]["name"] == "planned" for _, b in fake.calls), "non-GPU pod reached the extender"
    # nodeCacheCapable: node names only, no full Node objects.
    assert target in filters[0]["NodeNames"] and not filters[0].get("Nodes")
