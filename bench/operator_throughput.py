#!/usr/bin/env python3
"""Operator throughput on the real control plane: N AIGCJobs on M fake GPU nodes.

Creates M kwok GPU nodes (hack/cluster/nodes.yaml pools, round robin), starts eat-operator
(in-process planning unless --policy-url), creates N jobs in chunks, and watches pods.
A job counts as bound when all k pods of its group have a node (kube-scheduler bound them).
Prints jobs/s from the first apply to the last job bound, and p50/p99 apply→bound.

    python bench/operator_throughput.py --jobs 1000 --nodes 100     # the issue's target: >= 20 jobs/s
    python bench/operator_throughput.py --jobs 200 --nodes 20       # a quick run

Uses the local cluster of hack/cluster (started if needed; EAT_CLUSTER_DIR selects one), or
--kubeconfig. Cleans up its namespace and nodes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack" / "cluster"))
sys.path.insert(0, str(ROOT / "operator"))
import localcluster as lc  # noqa: E402

from eat_operator import testing  # noqa: E402


class BindWatch:
    """Client-side time at which each pod was first seen bound, from a pod watch."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.bound_at: dict[str, float] = {}
        self.group_size: dict[str, int] = {}
        self.job_of: dict[str, str] = {}
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [str(lc.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "pods", "-n", namespace,
             "--watch", "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        dec, buf = json.JSONDecoder(), ""
        for line in self.proc.stdout:
            buf += line
            if not line.startswith("}"):
                continue
            try:
                pod, _ = dec.raw_decode(buf.strip())
            except ValueError:
                continue
            buf = ""
            meta = pod.get("metadata", {})
            name = meta.get("name", "")
            if pod.get("spec", {}).get("nodeName"):
                with self.lock:
                    self.bound_at.setdefault(name, time.time())
                    self.job_of[name] = meta.get("labels", {}).get("eat.aigc.io/pod-group", "")
                    self.group_size[name] = int(meta.get("annotations", {}).get("eat.aigc.io/group-size", "1"))

    def jobs_bound(self) -> dict[str, float]:
        """Job → time its last pod was bound, for jobs whose whole group is bound."""
        with self.lock:
            pods_of: dict[str, list[float]] = defaultdict(list)
            size: dict[str, int] = {}
            for pod, t in self.bound_at.items():
                pods_of[self.job_of[pod]].append(t)
                size[self.job_of[pod]] = self.group_size[pod]
        return {j: max(ts) for j, ts in pods_of.items() if len(ts) >= size[j]}

    def stop(self) -> None:
        self.proc.terminate()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=50, help="jobs per create call")
    ap.add_argument("--rate", type=float, default=0.0, help="apply at most this many jobs/s (0: as fast as possible)")
    ap.add_argument("--policy-url", default="", help="policy service; empty: the operator plans in-process")
    ap.add_argument("--sim-scale", type=float, default=0.02, help="fake pod run time = predicted latency x this")
    ap.add_argument("--kubeconfig", help="default: the local cluster (started if needed)")
    ap.add_argument("--timeout", type=float, default=600.0)
    a = ap.parse_args()

    kubeconfig = a.kubeconfig or str(lc.up(build=False))
    kc = {"kubeconfig": kubeconfig}
    lc.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "charts" / "eat" / "crds"), **kc)
    lc.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/aigcjobs.eat.aigc.io", **kc)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    lc.kubectl("create", "namespace", ns, **kc)
    t = time.monotonic()
    while not lc.kubectl("get", "sa", "default", "-n", ns, "--ignore-not-found", "-o", "name", **kc).stdout.strip():
        if time.monotonic() - t > 60:
            raise SystemExit("service account never appeared")
        time.sleep(0.2)
    print(f"creating {a.nodes} fake GPU nodes ...", file=sys.stderr)
    nodes = lc.add_nodes(a.nodes, kubeconfig=kubeconfig, timeout=300)
    log = Path(tempfile.mkdtemp(prefix="eat-bench-")) / "operator.log"
    op = testing.OperatorProcess(kubeconfig, log, env={
        "EAT_OPERATOR_POLICY_URL": a.policy_url, "EAT_OPERATOR_SIM_DURATION_SCALE": str(a.sim_scale),
        "EAT_OPERATOR_SIM_DURATION_MAX_S": "5", "EAT_OPERATOR_IDENTITY": f"bench-{ns}",
        "EAT_OPERATOR_LEASE_NAME": f"eat-operator-{ns}",
    }, metrics_port=_free_port()).start()
    watch = BindWatch(kubeconfig, ns)
    applied: dict[str, float] = {}
    try:
        time.sleep(3.0)  # the operator's initial list and watch
        models = ("sd15", "sdxl-turbo", "sdxl")
        t_start = time.time()
        for c in range(0, a.jobs, a.chunk):
            names = [f"j-{i:05d}" for i in range(c, min(c + a.chunk, a.jobs))]
            items = [{"apiVersion": "eat.aigc.io/v1alpha1", "kind": "AIGCJob", "metadata": {"name": n},
                      "spec": {"prompt": f"bench image {n}", "model": models[i % 3], "deadlineSeconds": 60}}
                     for i, n in zip(range(c, c + len(names)), names)]
            t0 = time.time()
            lc.kubectl("create", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                         "items": items}), **kc)
            for n in names:
                applied[n] = t0
            if a.rate > 0:
                time.sleep(max(0.0, (c + len(names)) / a.rate - (time.time() - t_start)))
        t_applied = time.time()
        deadline = time.monotonic() + a.timeout
        while len(watch.jobs_bound()) < a.jobs and time.monotonic() < deadline:
            if not op.alive:
                raise SystemExit(f"operator exited:\n{op.log_tail()}")
            time.sleep(0.5)
        bound = watch.jobs_bound()
        try:
            wanted = ("eat_operator_decisions_total", "eat_operator_cycle_duration_seconds_sum",
                      "eat_operator_cycle_duration_seconds_count", "eat_operator_plan_duration_seconds_sum",
                      "eat_operator_plan_duration_seconds_count", "eat_operator_api_errors_total")
            stats = [ln for ln in op.metrics().splitlines() if ln.startswith(wanted)]
        except OSError:
            stats = []
    finally:
        op.stop()
        watch.stop()
        lc.kubectl("delete", "namespace", ns, "--wait=false", check=False, **kc)
        lc.delete_nodes(nodes, kubeconfig=kubeconfig)
    lat = sorted(bound[j] - applied[j] for j in bound if j in applied)
    if not lat:
        print("no job was bound", file=sys.stderr)
        return 1
    span = max(bound.values()) - t_start
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0]] * 99
    print(f"operator throughput: {len(bound)}/{a.jobs} jobs bound on {a.nodes} fake GPU nodes "
          f"(apply took {t_applied - t_start:.1f} s)")
    print(f"  jobs/s (first apply -> last job bound): {len(bound) / span:.1f}")
    print(f"  apply->bound latency: p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {lat[-1]:.2f} s")
    for ln in stats:
        print(f"  {ln}")
    print(f"  operator log: {log}")
    return 0 if len(bound) == a.jobs else 2


if __name__ == "__main__":
    sys.exit(main())
