"""AIGCJobs end to end on the real control plane: apply → planned → gang-scheduled → Succeeded.

The operator runs as a child process (eat_operator.testing) against the session cluster,
planning through a real policy service (`eat-policy serve`). Fake GPU nodes (kwok) finish a
pod after its predicted latency, scaled down by EAT_OPERATOR_SIM_DURATION_SCALE.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterkit import REPO, Cluster, wait_until

sys.path.insert(0, str(REPO / "operator"))
from eat_operator import testing  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CRD_DIR = REPO / "charts" / "eat" / "crds"
JOB_WAIT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/aigcjobs.eat.aigc.io")


def job_manifest(name: str, annotations: dict[str, str] | None = None, **spec: object) -> dict[str, object]:
    return {"apiVersion": "eat.aigc.io/v1alpha1", "kind": "AIGCJob",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"prompt": "a lighthouse in a storm", **spec}}


def job(cluster: Cluster, ns: str, name: str) -> dict[str, object]:
    return cluster.get("aigcjob", "-n", ns, name)  # type: ignore[no-any-return]


def wait_phase(cluster: Cluster, ns: str, name: str, phases: set[str], timeout: float = JOB_WAIT,
               op: testing.OperatorProcess | None = None) -> dict:
    def check() -> dict | None:
        j = job(cluster, ns, name)
        if op is not None and not op.alive:
            pytest.fail(f"operator exited:\n{op.log_tail()}")
        return j if (j.get("status") or {}).get("phase") in phases else None

    return wait_until(check, f"aigcjob {ns}/{name} phase in {sorted(phases)}", timeout)


@pytest.fixture(scope="module")
def policy_service(tmp_path_factory: pytest.TempPathFactory) -> str:
    port = free_port()
    log = open(tmp_path_factory.mktemp("policy") / "policy.log", "wb")
    exe = Path(sys.executable).parent / "eat-policy"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "eat_policy.cli"]
    proc = subprocess.Popen([*cmd, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until(up, "policy service /healthz", 60)
    yield url
    proc.terminate()
    proc.wait(10)


def running_operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory,
                     **settings: str) -> Iterator[testing.OperatorProcess]:
    """An operator (CRD installed) with these EAT_OPERATOR_* settings, serving metrics, for a fixture."""
    install_crd(cluster)
    env = {f"EAT_OPERATOR_{k.upper()}": v for k, v in settings.items()}
    op = testing.OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log",
                                 metrics_port=free_port(), env=env)
    with op:
        op.wait_metrics()
        yield op


@pytest.fixture(scope="module")
def operator(cluster: Cluster, gpu_nodes: list[str], policy_service: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[testing.OperatorProcess]:
    yield from running_operator(cluster, tmp_path_factory, policy_url=policy_service, sim_duration_scale="0.1",
                                sim_duration_max_s="3", backoff_limit="1")


def test_example_job_succeeds_on_planned_nodes(cluster: Cluster, namespace: str,
                                               operator: testing.OperatorProcess) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "job.yaml"))
    j = wait_phase(cluster, namespace, "astronaut", {"Succeeded", "Failed"}, op=operator)
    st = j["status"]
    assert st["phase"] == "Succeeded", st
    plan = st["plan"]
    assert plan["plannedBy"] == "service" and plan["policy"] and plan["explanation"]
    assert plan["patches"] == len(plan["nodes"]) >= 1
    assert 20 <= plan["steps"] <= 40
    assert st["latencySeconds"] > 0 and isinstance(st["deadlineMet"], bool)
    assert st["attempts"] == 1 and st["outputLocation"].endswith(f"/{namespace}/astronaut/image.png")
    for key in ("pending", "planned", "scheduling", "running", "succeeded"):
        assert key in st["timestamps"], key
    pods = cluster.get("pods", "-n", namespace, "-l", "eat.aigc.io/pod-group=astronaut")["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == [f"astronaut-{r}" for r in range(plan["patches"])]
    for p in pods:
        rank = int(p["metadata"]["labels"]["eat.aigc.io/rank"])
        assert p["spec"]["schedulerName"] == "eat-scheduler"
        assert p["spec"]["nodeName"] == plan["nodes"][rank] == p["metadata"]["annotations"]["eat.aigc.io/planned-node"]
        assert not p["spec"].get("schedulingGates")
        env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == str(plan["patches"])
        assert env["MASTER_ADDR"] == f"astronaut-0.astronaut.{namespace}.svc"
        assert env["EAT_INFER_OUTPUT"] == f"/output/{namespace}/astronaut"  # the directory eat-infer writes into
        assert p["status"]["phase"] == "Succeeded"
    if plan["patches"] > 1:  # the rendezvous Service of a gang
        assert cluster.get("service", "-n", namespace, "astronaut")["spec"]["clusterIP"] == "None"
    table = cluster.kubectl("get", "aj", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header[:6] == ["NAME", "PHASE", "PATCHES", "NODES", "STEPS", "LATENCY"], table
    assert "DEADLINE" in header and "AGE" in header and "Succeeded" in table
    reasons = {e["reason"] for e in cluster.events_for(namespace, "astronaut")}
    assert {"Planned", "Succeeded"} <= reasons, reasons


BAD = [
    pytest.param({"model": "sd15"}, "spec.prompt: Required value", id="missing-prompt"),
    pytest.param({"prompt": "x", "width": 7}, "spec.width", id="width-7"),
    pytest.param({"prompt": "x", "width": 516}, "multiple of 8", id="width-not-multiple-of-8"),
    pytest.param({"prompt": "x", "steps": -5}, "spec.steps: Invalid value: -5", id="negative-steps"),
    pytest.param({"prompt": "x", "sampler": "euler"}, 'unknown field "spec.sampler"', id="unknown-field"),
    pytest.param({"prompt": "x" * 100_000}, "spec.prompt: Too long", id="100kB-prompt"),
    pytest.param({"prompt": "x", "stepsMin": 30, "stepsMax": 10}, "stepsMin must be less than or equal to stepsMax",
                 id="inverted-range"),
    pytest.param({"prompt": "x", "steps": 20, "stepsMax": 30}, "set either steps", id="steps-and-range"),
    pytest.param({"prompt": "x", "outputLocation": "file:///tmp/x.png"}, "spec.outputLocation in body should match",
                 id="output-not-s3"),
    pytest.param({"prompt": "x", "model": "sdxl-turbo", "guidanceScale": 7.5},
                 "sdxl-turbo is distilled to run without classifier-free guidance", id="guided-turbo"),
]


@pytest.mark.parametrize("spec,message", BAD)
def test_invalid_spec_is_rejected_with_a_readable_message(cluster: Cluster, namespace: str, operator: object,
                                                          spec: dict, message: str) -> None:
    doc = json.dumps({"apiVersion": "eat.aigc.io/v1alpha1", "kind": "AIGCJob", "metadata": {"name": "bad"},
                      "spec": spec})
    r = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=doc, check=False)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr[:2000]
    assert len(r.stderr) < 5000  # the 100 kB value is not echoed back
    assert not cluster.exists("aigcjob", "-n", namespace, "bad")


def test_unknown_model_fails_with_reason(cluster: Cluster, namespace: str, operator: testing.OperatorProcess) -> None:
    cluster.create(job_manifest("mystery", model="dalle-9"), namespace)
    st = wait_phase(cluster, namespace, "mystery", {"Failed", "Succeeded"}, op=operator)["status"]
    assert st["phase"] == "Failed" and st["reason"] == "UnknownModel"
    assert "'dalle-9' is not in the catalog" in st["message"] and "sd15" in st["message"]
    assert not cluster.get("pods", "-n", namespace)["items"]
    assert any(e["reason"] == "UnknownModel" for e in cluster.events_for(namespace, "mystery"))


def test_failed_member_is_retried_then_succeeds(cluster: Cluster, namespace: str,
                                                operator: testing.OperatorProcess) -> None:
    cluster.create(job_manifest("flaky", annotations={"eat.aigc.io/sim-fail": "1"}, model="sd15", steps=20),
                   namespace)
    st = wait_phase(cluster, namespace, "flaky", {"Failed", "Succeeded"}, op=operator)["status"]
    assert st["phase"] == "Succeeded", st
    assert st["attempts"] == 2 and st["failures"] == 1
    pods = cluster.get("pods", "-n", namespace)["items"]
    assert {p["metadata"]["labels"]["eat.aigc.io/attempt"] for p in pods} == {"2"}
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)
    assert "Retrying" in {e["reason"] for e in cluster.events_for(namespace, "flaky")}


def test_failing_beyond_backoff_limit_fails(cluster: Cluster, namespace: str,
                                            operator: testing.OperatorProcess) -> None:
    cluster.create(job_manifest("doomed", annotations={"eat.aigc.io/sim-fail": "true"}, model="sd15", steps=20),
                   namespace)
    st = wait_phase(cluster, namespace, "doomed", {"Failed", "Succeeded"}, op=operator)["status"]
    assert st["phase"] == "Failed" and st["reason"] == "BackoffLimitExceeded", st
    assert st["failures"] == 2 and st["attempts"] == 2  # backoff limit 1: one retry
    assert "simulated failure" in st["message"] or "failed" in st["message"]
    wait_until(lambda: all(p["status"].get("phase") in ("Failed", "Succeeded")
                           for p in cluster.get("pods", "-n", namespace)["items"]), "no pod of the failed job left running")


def test_deleting_a_job_removes_its_group(cluster: Cluster, namespace: str,
                                          operator: testing.OperatorProcess) -> None:
    cluster.create(job_manifest("gone", model="sd15", steps=20), namespace)
    wait_phase(cluster, namespace, "gone", {"Running", "Succeeded"}, op=operator)
    assert cluster.get("pods", "-n", namespace)["items"]
    cluster.kubectl("delete", "aigcjob", "-n", namespace, "gone", "--wait=true")
    wait_until(lambda: not cluster.get("pods", "-n", namespace)["items"]
               and not cluster.get("services", "-n", namespace)["items"], "pods and service garbage-collected")


def test_metrics_are_served(operator: testing.OperatorProcess) -> None:
    text = operator.metrics()
    for name in ("eat_operator_jobs", "eat_operator_job_latency_seconds_bucket", "eat_operator_queue_depth",
                 "eat_operator_plan_duration_seconds_bucket", "eat_operator_deadline_misses_total",
                 "eat_operator_leader 1.0"):
        assert name in text, name
    assert 'eat_operator_plan_duration_seconds_count{source="service"}' in text
