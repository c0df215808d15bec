"""Restart safety: kill -9 the operator during a burst, restart it; nothing lost or run twice.

A watch on the namespace records every pod UID ever created. At the end every job is
Succeeded, each job's pods are exactly ``<job>-0..k-1`` of its last attempt, a job that was
never retried had each pod created once (one UID per name), and nothing is left without
its owner. Burst size: EAT_TEST_BURST (default 50; the issue's figure is 200).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest

from clusterkit import REPO, Cluster, lc, wait_until
from test_operator_jobs import free_port, install_crd, job_manifest

sys.path.insert(0, str(REPO / "operator"))
from eat_operator import testing  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BURST = int(os.environ.get("EAT_TEST_BURST", "50"))


class PodWatch:
    """Every (name, uid) the namespace ever had, from `kubectl get pods --watch`."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        kubectl = str(lc.bin_dir() / "kubectl")
        self.proc = subprocess.Popen(
            [kubectl, f"--kubeconfig={cluster.kubeconfig}", "get", "pods", "-n", namespace, "--watch",
             "--output-watch-events", "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.uids: dict[str, set[str]] = defaultdict(set)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        dec, buf = json.JSONDecoder(), ""
        for line in self.proc.stdout:
            buf += line
            while buf.strip():
                try:
                    ev, end = dec.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                meta = ev.get("object", {}).get("metadata", {})
                self.uids[meta.get("name", "")].add(meta.get("uid", ""))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def test_kill_during_burst_loses_nothing_and_duplicates_nothing(
        cluster: Cluster, gpu_nodes: list[str], namespace: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    install_crd(cluster)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {"EAT_OPERATOR_POLICY_URL": "", "EAT_OPERATOR_SIM_DURATION_SCALE": "0.05",
           "EAT_OPERATOR_SIM_DURATION_MAX_S": "1.5"}
    watch = PodWatch(cluster, namespace)
    op = testing.OperatorProcess(cluster.kubeconfig, log, env=env).start()
    try:
        models = ("sd15", "sdxl-turbo", "sdxl")
        items = [job_manifest(f"b-{i:03d}", model=models[i % 3], deadlineSeconds=120) for i in range(BURST)]
        cluster.kubectl("create", "-n", namespace, "-f", "-",
                        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        # Kill it twice mid-burst (once early, once with groups half-made), restart each time.
        for delay in (2.0, 3.0):
            time.sleep(delay)
            op.kill()
            op = testing.OperatorProcess(cluster.kubeconfig, log, env=env).start()

        def all_done() -> bool:
            if not op.alive:
                pytest.fail(f"operator exited:\n{op.log_tail()}")
            jobs = cluster.get("aigcjobs", "-n", namespace)["items"]
            return len(jobs) == BURST and all((j.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                                              for j in jobs)

        wait_until(all_done, f"{BURST} jobs finished", timeout=60 + 1.5 * BURST, interval=1.0)
    finally:
        op.stop()
        time.sleep(0.5)
        watch.stop()

    jobs = {j["metadata"]["name"]: j for j in cluster.get("aigcjobs", "-n", namespace)["items"]}
    failed = {n: j["status"] for n, j in jobs.items() if j["status"]["phase"] != "Succeeded"}
    assert not failed, failed
    pods = cluster.get("pods", "-n", namespace)["items"]
    by_job: dict[str, list[dict]] = defaultdict(list)
    for p in pods:
        owners = p["metadata"].get("ownerReferences") or []
        assert len(owners) == 1 and owners[0]["kind"] == "AIGCJob", p["metadata"]["name"]
        owner = jobs.get(owners[0]["name"])
        assert owner is not None and owner["metadata"]["uid"] == owners[0]["uid"], f"orphan {p['metadata']['name']}"
        by_job[owners[0]["name"]].append(p)
    for name, j in jobs.items():
        st = j["status"]
        k = st["plan"]["patches"]
        mine = by_job.get(name, [])
        assert sorted(p["metadata"]["name"] for p in mine) == [f"{name}-{r}" for r in range(k)], name
        assert {p["metadata"]["labels"]["eat.aigc.io/attempt"] for p in mine} == {str(st["attempts"])}
        assert all(p["status"]["phase"] == "Succeeded" for p in mine)
        if st["attempts"] == 1:
            for r in range(k):
                assert len(watch.uids[f"{name}-{r}"]) == 1, (name, r, watch.uids[f"{name}-{r}"])
    uids = [p["metadata"]["uid"] for p in pods]
    assert len(uids) == len(set(uids))
    services = cluster.get("services", "-n", namespace)["items"]
    gangs = {n for n, j in jobs.items() if j["status"]["plan"]["patches"] > 1}
    assert {s["metadata"]["name"] for s in services} == gangs  # a Service per gang, none left over
