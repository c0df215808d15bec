#!/usr/bin/env python3
"""Operator throughput on the real control plane: N AIGCJobs on M fake GPU nodes.

Creates M kwok GPU nodes (hack/cluster/nodes.yaml pools, round robin), starts eat-operator
(in-process planning unless --policy-url), creates N jobs (8 creates in flight), and watches pods.
A job counts as bound when all k pods of its group have a node (kube-scheduler bound them).
Prints jobs/s from the first apply to the last job bound, and p50/p99 apply→bound.

    python bench/operator_throughput.py --jobs 1000 --nodes 100     # the issue's target: >= 20 jobs/s
    python bench/operator_throughput.py --jobs 200 --nodes 20       # a quick run

Uses the local cluster of hack/cluster (started if needed; EAT_CLUSTER_DIR selects one), or
--kubeconfig. Cleans up its namespace and nodes.

Where the time went, printed after the figures: CPU seconds of the operator and (local
cluster only) of each control-plane process during the run, and the API server's requests
by resource and verb (``apiserver_request_total``, all clients) per job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
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

from eat_operator import kube, testing  # noqa: E402


class BindWatch:
    """Client-side time at which each pod was first seen bound, from a pod watch.

    kubectl's watch can end (e.g. the API server answers 429 while its storage initialises
    on a fresh cluster): it is restarted, and the restarts are counted, since pods bound
    while it was down are timed when the new watch lists them (late)."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.bound_at: dict[str, float] = {}
        self.group_size: dict[str, int] = {}
        self.job_of: dict[str, str] = {}
        self.lock = threading.Lock()
        self.restarts = 0
        self._argv = [str(lc.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "pods", "-n", namespace,
                      "--watch", "-o", "json"]
        self._stopped = False
        self.proc = self._start()
        threading.Thread(target=self._run, daemon=True).start()

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self._argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _run(self) -> None:
        while True:
            self._read(self.proc)
            err = (self.proc.stderr.read() if self.proc.stderr else "").strip()
            if self._stopped:
                return
            self.restarts += 1
            print(f"pod watch ended ({self.proc.wait()}: {err[-200:]}); restarting", file=sys.stderr)
            time.sleep(0.5)
            self.proc = self._start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        dec, buf = json.JSONDecoder(), ""
        for line in proc.stdout:
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
        self._stopped = True
        self.proc.terminate()


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process, from /proc (None if it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _component_pids() -> dict[str, int]:
    """The local cluster's processes (empty when the cluster is not ours)."""
    lay = lc.Layout(lc.state_dir())
    out = {}
    for name in lc.CORE + lc.ADDONS:
        pid = lc.running(lay, name)
        if pid is not None:
            out[name] = pid
    return out


REQUEST_RE = re.compile(r'^apiserver_request_total\{(.*)\} (\S+)$')


def _api_requests(kubeconfig: str) -> dict[tuple[str, str], float]:
    """apiserver_request_total summed by (resource[/subresource], verb), all clients."""
    text = lc.kubectl("get", "--raw", "/metrics", kubeconfig=kubeconfig, check=False).stdout
    out: dict[tuple[str, str], float] = defaultdict(float)
    for line in text.splitlines():
        m = REQUEST_RE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("verb") in ("WATCH", "CONNECT"):
            continue
        res = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        out[(res, labels.get("verb", ""))] += float(m.group(2))
    return out


async def _apply(kubeconfig: str, ns: str, jobs: int, concurrency: int, rate: float, t_start: float,
                 applied: dict[str, float]) -> None:
    """Create the jobs, ``concurrency`` requests in flight; applied[name] = when its create was sent."""
    client = kube.Client.from_kubeconfig(kubeconfig, concurrency)
    url = kube.path("eat.aigc.io", "v1alpha1", "aigcjobs", ns)
    models = ("sd15", "sdxl-turbo", "sdxl")
    todo = iter(range(jobs))

    async def worker() -> None:
        for i in todo:
            if rate > 0:
                await asyncio.sleep(max(0.0, i / rate - (time.time() - t_start)))
            name = f"j-{i:05d}"
            body = {"apiVersion": "eat.aigc.io/v1alpha1", "kind": "AIGCJob", "metadata": {"name": name},
                    "spec": {"prompt": f"bench image {name}", "model": models[i % 3], "deadlineSeconds": 60}}
            applied[name] = time.time()
            await client.create(url, body)

    try:
        await asyncio.gather(*[worker() for _ in range(concurrency)])
    finally:
        await client.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (operator, namespace, nodes) on kill
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--apply-concurrency", type=int, default=8,
                    help="job creates in flight (kubectl's one at a time could not keep up with the operator)")
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
    pids = {"operator": op.proc.pid if op.proc else None, "bench kubectl watch": watch.proc.pid,
            **_component_pids()}
    cpu0: dict[str, float | None] = {}
    cpu1: dict[str, float | None] = {}
    req0: dict[tuple[str, str], float] = {}
    req1: dict[tuple[str, str], float] = {}
    try:
        time.sleep(3.0)  # the operator's initial list and watch
        cpu0 = {n: _cpu_s(p) for n, p in pids.items()}
        req0 = _api_requests(kubeconfig)
        t_start = time.time()
        asyncio.run(_apply(kubeconfig, ns, a.jobs, a.apply_concurrency, a.rate, t_start, applied))
        t_applied = time.time()
        deadline = time.monotonic() + a.timeout
        while len(watch.jobs_bound()) < a.jobs and time.monotonic() < deadline:
            if not op.alive:
                raise SystemExit(f"operator exited:\n{op.log_tail()}")
            time.sleep(0.5)
        bound = watch.jobs_bound()
        cpu1 = {n: _cpu_s(p) for n, p in pids.items()}
        req1 = _api_requests(kubeconfig)
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
    print(f"  jobs/s (first apply -> last job bound): {len(bound) / span:.1f}"
          + (f" (pod watch restarted {watch.restarts} times: some bind times are late)" if watch.restarts else ""))
    print(f"  apply->bound latency: p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {lat[-1]:.2f} s")
    for ln in stats:
        print(f"  {ln}")
    wall = max(bound.values()) - t_start
    used = {n: cpu1[n] - cpu0[n] for n in pids if cpu0.get(n) is not None and cpu1.get(n) is not None}
    if used:
        print(f"  CPU seconds over the run ({wall:.1f} s wall, {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}): "
              + ", ".join(f"{n} {c:.1f}" for n, c in sorted(used.items(), key=lambda kv: -kv[1])))
    delta = {k: req1[k] - req0.get(k, 0.0) for k in req1 if req1[k] - req0.get(k, 0.0) >= 1}
    if delta:
        total = sum(delta.values())
        print(f"  API requests during the run: {total:.0f} ({total / max(len(bound), 1):.1f} per job); top:")
        for (res, verb), n in sorted(delta.items(), key=lambda kv: -kv[1])[:12]:
            print(f"    {verb:6s} {res:28s} {n:7.0f}  ({n / max(len(bound), 1):.2f}/job)")
    print(f"  operator log: {log}")
    return 0 if len(bound) == a.jobs else 2


if __name__ == "__main__":
    sys.exit(main())
