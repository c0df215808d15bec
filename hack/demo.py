"""The demo: the whole system on a laptop-sized machine, no GPUs.

1. A real local control plane (hack/cluster) with 8 fake GPU nodes of mixed types whose
   model caches are pre-seeded; the node caches and GPU load are published as metrics.
2. Prometheus scraping them, the policy service (shipped EAT checkpoint when present, else
   the heuristic fallback) reading Prometheus, the extender, the operator.
3. A burst of AIGCJobs (the arrival trace of the simulator's edge scenario) applied with
   kubectl; fake nodes finish pods after their predicted durations.
4. A live table, a summary, and the same burst in the simulator for the learned policy and
   the best heuristics side by side.

Run: hack/demo.sh (sets up everything). Options: --jobs N, --seed S, --keep (leave it running).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from rich.console import Console
from rich.live import Live
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack" / "cluster"))
import localcluster as lc  # noqa: E402

from eat_operator.testing import OperatorProcess  # noqa: E402
from eat_policy import api, evaluate  # noqa: E402
from eat_policy.agents import base  # noqa: E402
from eat_policy.sim import catalog, engine, layout, scenarios, traces  # noqa: E402

console = Console(width=170)
NAMESPACE = "demo"
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
PROMPTS = ("a lighthouse in a storm, oil painting", "a red fox in fresh snow, photo", "a city of glass at dawn",
           "an astronaut riding a horse on the moon", "a bowl of ramen, studio lighting", "a gothic castle at dusk")


def demo_cluster_dir() -> Path:
    """One per checkout (as hack/test.sh keys the tests' one): another checkout's demo is left alone."""
    return lc.cache_root() / f"cluster-demo-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP end the run through `finally`, which stops what it started."""
    def handler(signum: int, _frame: object) -> None:
        ignore_exit_signals()
        raise SystemExit(128 + signum)
    for sig in EXIT_SIGNALS:
        signal.signal(sig, handler)


def ignore_exit_signals() -> None:
    """For the clean-up: a signal then must not cut it short."""
    for sig in EXIT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not come up at {url}")


def wait_scraped(prometheus: str, metric: str, timeout_s: float = 30.0) -> None:
    """Plans made before the first scrape would see every cache cold."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = httpx.get(f"{prometheus}/api/v1/query", params={"query": metric}, timeout=2).json()
        if result.get("data", {}).get("result"):
            return
        time.sleep(0.5)
    raise SystemExit(f"Prometheus never scraped {metric}")


def node_name(lay: layout.Layout, i: int) -> str:
    return f"eat-gpu-{lay.node_type[i].lower()}-{i}"


def create_nodes(lay: layout.Layout, kubeconfig: Path) -> list[str]:
    defaults, _ = lc.load_node_pools()
    names, manifests = [], []
    for i in range(lay.n_nodes):
        gpu = catalog.GPU_TYPES[lay.node_type[i]]
        pool = {"name": gpu.name.lower(), "gpuType": gpu.name.lower(), "gpuProduct": gpu.product,
                "gpuMemoryMiB": int(gpu.mem_gb * 1024)}
        m = lc.node_manifest(pool, defaults, node_name(lay, i), int(lay.node_gpus[i]))
        cached = ",".join(catalog.MODELS[k].name for k in lay.initial_disk[i])
        m["metadata"]["annotations"][api.ANNOTATION_CACHED_MODELS] = cached
        manifests.append(m)
        names.append(m["metadata"]["name"])
    lc.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
               kubeconfig=kubeconfig)
    for m in manifests:
        lc.kubectl("patch", "node", m["metadata"]["name"], "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": m["status"]}), kubeconfig=kubeconfig)
    return names


class NodeMetrics:
    """What DCGM and the node agents would publish for the fake nodes, served on a port."""

    def __init__(self, lay: layout.Layout) -> None:
        reg = CollectorRegistry()
        self.cached = Gauge(api.METRIC_MODEL_CACHED, "model in the node's disk cache", ["node", "model"], registry=reg)
        self.resident = Gauge(api.METRIC_MODEL_RESIDENT, "model in GPU memory", ["node", "model", "gpu"], registry=reg)
        util = Gauge(api.DCGM_GPU_UTIL, "GPU utilisation (%)", ["Hostname", "gpu"], registry=reg)
        for i in range(lay.n_nodes):
            name = node_name(lay, i)
            for m in lay.initial_disk[i]:
                self.cached.labels(name, catalog.MODELS[m].name).set(1)
            for local, g in enumerate(lay.slots[i, : lay.node_gpus[i]]):
                util.labels(name, str(local)).set(0)
                for m in lay.initial_resident[g]:
                    self.resident.labels(name, catalog.MODELS[m].name, str(local)).set(1)
        self.port = free_port()
        start_http_server(self.port, addr="127.0.0.1", registry=reg)

    def ran(self, nodes: list[str], model: str) -> None:
        """A finished pod leaves its model on the node's disk and in a GPU, as the agent reports."""
        for rank, node in enumerate(nodes):
            self.cached.labels(node, model).set(1)
            self.resident.labels(node, model, str(rank)).set(1)


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)


def stop(procs: list[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()


def job_manifests(sc: scenarios.Scenario, seed: int, n: int) -> list[tuple[float, dict]]:  # type: ignore[type-arg]
    tr = traces.make_trace(sc, seed)
    out = []
    for i in range(n):
        spec = catalog.MODELS[int(tr.model[i])]
        side = int(round(float(tr.pixels[i]) ** 0.5))
        out.append((float(tr.arrival_s[i]), {
            "apiVersion": f"{api.GROUP}/{api.CRD_VERSION}", "kind": api.CRD_KIND,
            "metadata": {"name": f"job-{i:02d}-{spec.name}", "namespace": NAMESPACE},
            "spec": {"prompt": PROMPTS[i % len(PROMPTS)], "model": spec.name, "width": side, "height": side,
                     "stepsMin": int(tr.steps_min[i]), "stepsMax": int(tr.steps_max[i]),
                     "deadlineSeconds": max(1, int(round(float(tr.deadline_s[i]))))},
        }))
    return out


def delete_leftovers(names: list[str], kubeconfig: Path) -> None:
    """A kept cluster may still hold these jobs from an earlier run, finished: they would count as done."""
    lc.kubectl("delete", "aigcjobs", "-n", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=50s", *names,
               kubeconfig=kubeconfig)


def live_table(items: list[dict]) -> Table:  # type: ignore[type-arg]
    t = Table(title=f"AIGCJobs in namespace {NAMESPACE}", header_style="bold")
    for col in ("job", "phase", "patches", "nodes", "steps", "policy", "predicted s", "observed s", "deadline s", "met"):
        t.add_column(col, no_wrap=True)
    for it in sorted(items, key=lambda x: x["metadata"]["name"]):
        st, plan = it.get("status") or {}, (it.get("status") or {}).get("plan") or {}
        pred, obs = plan.get("predictedLatencySeconds"), st.get("latencySeconds")
        met = st.get("deadlineMet")
        t.add_row(it["metadata"]["name"], st.get("phase", "…"), str(plan.get("patches", "")),
                  plan.get("placement", ""), str(plan.get("steps", "")),
                  (plan.get("policy", "") + (" (fallback)" if plan.get("fallback") else "")) if plan else "",
                  f"{pred:.1f}" if pred is not None else "", f"{obs:.1f}" if obs is not None else "",
                  str(it["spec"].get("deadlineSeconds", "")), {True: "yes", False: "no"}.get(met, ""))
    return t


def simulate_same_burst(sc: scenarios.Scenario, seed: int, policies: list[str]) -> Table:
    t = Table(title="The same cluster and burst in the simulator (one episode, seed %d)" % seed)
    for col in ("policy", "mean response s", "p95 s", "deadlines met", "mean quality", "cold starts"):
        t.add_column(col)
    for name in policies:
        m, _ = evaluate.run_episode(engine.Simulator(sc), base.make(name), seed)
        t.add_row(name, f"{m['resp_mean_s']:.1f}", f"{m['resp_p95_s']:.1f}", f"{m['deadline_attainment']:.0%}",
                  f"{m['quality_mean']:.3f}", f"{m['cold_start_rate']:.0%}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--keep", action="store_true", help="leave the cluster and services running")
    args = ap.parse_args()
    sc = scenarios.edge(n_nodes=8, load=0.8, n_jobs=args.jobs)
    lay = layout.make_layout(sc)
    work = Path(tempfile.mkdtemp(prefix="eat-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    operator = None
    extender_port = free_port()
    extender_url = f"http://127.0.0.1:{extender_port}"
    os.environ.setdefault("EAT_CLUSTER_DIR", str(demo_cluster_dir()))
    exit_on_signals()
    try:
        console.rule("1. control plane, fake GPU nodes, metrics")
        kubeconfig = lc.up(extender_url=extender_url)
        os.environ["KUBECONFIG"] = str(kubeconfig)
        os.environ["PATH"] = f"{lc.bin_dir()}:{os.environ['PATH']}"
        names = create_nodes(lay, kubeconfig)
        console.print(lc.gpu_table(kubeconfig))
        metrics = NodeMetrics(lay)
        exporter = metrics.port
        prom_port = free_port()
        (work / "prometheus.yml").write_text(
            "global: {scrape_interval: 2s}\nscrape_configs:\n  - job_name: eat-nodes\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{exporter}']}}]\n")
        procs.append(start([shutil.which("prometheus") or "prometheus", f"--config.file={work / 'prometheus.yml'}",
                            f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                           work / "prometheus.log"))
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", "Prometheus")
        wait_scraped(f"http://127.0.0.1:{prom_port}", api.METRIC_MODEL_CACHED)

        console.rule("2. policy service, extender, operator")
        checkpoint = ROOT / "policy" / "eat_policy" / "checkpoints" / "eat-edge-pods.pt"
        policy_port = free_port()
        serve = [sys.executable, "-m", "eat_policy.cli", "serve", "--host", "127.0.0.1", "--port", str(policy_port),
                 "--prometheus-url", f"http://127.0.0.1:{prom_port}", "--log-level", "warning"]
        if checkpoint.exists():
            serve += ["--checkpoint", str(checkpoint)]
        procs.append(start(serve, work / "policy.log"))
        wait_http(f"http://127.0.0.1:{policy_port}/healthz", "policy service")
        ready = httpx.get(f"http://127.0.0.1:{policy_port}/readyz").json()
        console.print(f"policy service: {ready}")
        procs.append(start([sys.executable, "-m", "eat_extender", "--host", "127.0.0.1", "--port", str(extender_port),
                            "--kubeconfig", str(kubeconfig)], work / "extender.log"))
        wait_http(f"http://127.0.0.1:{extender_port}/healthz", "extender")
        lc.kubectl("apply", "-f", str(ROOT / "charts" / "eat" / "crds"), kubeconfig=kubeconfig)
        lc.kubectl("apply", "-f", "-", kubeconfig=kubeconfig,
                   input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
        operator = OperatorProcess(str(kubeconfig), work / "operator.log", env={
            "EAT_OPERATOR_POLICY_URL": f"http://127.0.0.1:{policy_port}",
            "EAT_OPERATOR_LEASE_NAMESPACE": NAMESPACE,
        }).start()

        console.rule(f"3. a burst of {args.jobs} AIGCJobs (the edge scenario's trace, seed {args.seed})")
        pending = job_manifests(sc, args.seed, args.jobs)
        ours = {m["metadata"]["name"] for _, m in pending}
        delete_leftovers(sorted(ours), kubeconfig)
        t0 = time.monotonic()
        deadline = t0 + args.timeout
        with Live(console=console, refresh_per_second=2) as live:
            while time.monotonic() < deadline:
                elapsed = time.monotonic() - t0
                due = [m for at, m in pending if at <= elapsed]
                pending = [(at, m) for at, m in pending if at > elapsed]
                if due:
                    lc.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": due}),
                               kubeconfig=kubeconfig)
                items = [it for it in lc.kubectl_json("get", "aigcjobs", "-n", NAMESPACE, kubeconfig=kubeconfig)["items"]
                         if it["metadata"]["name"] in ours]
                for it in items:
                    st = it.get("status") or {}
                    if st.get("phase") == "Succeeded":
                        metrics.ran((st.get("plan") or {}).get("nodes") or [], it["spec"]["model"])
                live.update(live_table(items))
                if not pending and items and all((i.get("status") or {}).get("phase") in ("Succeeded", "Failed") for i in items):
                    break
                time.sleep(1.0)
        console.print()
        all_done = summarise(items, len(ours), time.monotonic() - t0)
        console.rule("4. side by side")
        policies = (["eat"] if "eat" in base.names() and checkpoint.exists() else []) + ["edf-cache-queue-fit", "edf-cache-queue", "edf-cache", "first-fit"]
        console.print(simulate_same_burst(sc, args.seed, policies))
        console.print(f"logs: {work}")
        if not all_done:
            raise SystemExit("not every job succeeded; see the logs above")
    finally:
        ignore_exit_signals()
        if operator is not None and not args.keep:
            operator.stop()
        if not args.keep:
            stop(procs)
            # Only the cluster this run started: the extender URL it recorded is ours.
            if lc.cluster_info().get("extender_url") == extender_url:
                lc.down()


def summarise(items: list[dict], burst: int, wall_s: float) -> bool:  # type: ignore[type-arg]
    """Print the outcome; True when every job of the burst succeeded (one never applied did not)."""
    status = [i.get("status") or {} for i in items]
    done = [s for s in status if s.get("phase") == "Succeeded"]
    met = [s for s in done if s.get("deadlineMet")]
    fallback = [s for s in status if (s.get("plan") or {}).get("fallback")]
    lat = [s["latencySeconds"] for s in done if s.get("latencySeconds") is not None]
    pred = [(s.get("plan") or {}).get("predictedLatencySeconds") for s in done]
    console.print(f"[bold]{len(done)}/{burst} Succeeded in {wall_s:.0f} s; deadlines met {len(met)}/{burst}; "
                  f"planned by the fallback: {len(fallback)}[/bold]")
    if lat:
        console.print(f"observed latency (submit → done): mean {sum(lat) / len(lat):.1f} s; "
                      f"predicted run time mean {sum(p for p in pred if p) / max(1, len([p for p in pred if p])):.1f} s")
    return burst > 0 and len(done) == burst


if __name__ == "__main__":
    main()
