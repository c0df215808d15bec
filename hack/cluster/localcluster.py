#!/usr/bin/env python3
"""A real local Kubernetes control plane with fake GPU nodes, for tests and the demo.

Runs the upstream binaries that hack/cluster/build.sh builds (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok) as plain processes bound to 127.0.0.1:

  etcd                     storage (no fsync: it is throwaway)
  kube-apiserver           RBAC on, TLS with a locally generated CA
  kube-controller-manager  garbage collector, namespace, service accounts, workloads
  kube-scheduler           the default profile (default-scheduler)
  eat-scheduler            a second kube-scheduler running the `eat-scheduler` profile
                           rendered from charts/eat/files/scheduler-config.yaml (calls
                           the EAT extender; ignorable, so it schedules without it)
  kwok                     keeps the fake nodes Ready and moves their pods through
                           phases (Stages in hack/cluster/kwok/stages.yaml)

Commands:
  up [--build/--no-build]   start (idempotent: a healthy cluster is left alone)
  down                      stop the processes this tool started (pid files)
  status                    components, readiness, nodes with their GPUs
  add-nodes N [--pool P]    create N fake GPU nodes (hack/cluster/nodes.yaml)
  delete-nodes [NAME...]    delete fake GPU nodes (all of them without names)
  attach --kubeconfig K     run kwok + eat-scheduler against an existing cluster (kind)
  detach                    stop what attach started
  env                       print shell exports (KUBECONFIG, PATH) for this cluster

State (certificates, kubeconfigs, etcd data, logs, pid files) lives in
${EAT_CLUSTER_DIR:-~/.cache/eat/cluster}; the admin kubeconfig is <state>/kubeconfig.
Binaries come from ${EAT_CLUSTER_BIN:-the bin dir of `build.sh --print`}.

Needs: Python >= 3.11, PyYAML, openssl on PATH.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NODES_FILE = HERE / "nodes.yaml"
STAGES_FILE = HERE / "kwok" / "stages.yaml"
SCHEDULER_CONFIG_TEMPLATE = REPO / "charts" / "eat" / "files" / "scheduler-config.yaml"
VERSIONS_FILE = HERE / "versions.env"
BUILD_SH = HERE / "build.sh"

# Keys shared with the rest of EAT.
GPU_RESOURCE = "nvidia.com/gpu"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"
LABEL_GPU_MEMORY = "nvidia.com/gpu.memory"
LABEL_GPU_COUNT = "nvidia.com/gpu.count"
LABEL_GPU_TYPE = "eat.aigc.io/gpu-type"
LABEL_NODE_POOL = "eat.aigc.io/node-pool"
LABEL_FAKE_NODE = "eat.aigc.io/fake-node"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
ANNOTATION_SIM_DURATION = "eat.aigc.io/sim-duration-seconds"
ANNOTATION_SIM_FAIL = "eat.aigc.io/sim-fail"
EAT_SCHEDULER_NAME = "eat-scheduler"
DEFAULT_EXTENDER_URL = "http://127.0.0.1:18080"

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"

# kube-controller-manager controllers: enough for namespaces, service accounts,
# garbage collection and the workload kinds the chart and the operator use.
CONTROLLERS = [
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "replicaset-controller",
    "deployment-controller",
    "statefulset-controller",
    "daemonset-controller",
    "endpointslice-controller",
    "pod-garbage-collector-controller",
    "resourcequota-controller",
    "disruption-controller",
]

CORE = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
ADDONS = ["eat-scheduler", "kwok"]


class ClusterError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"localcluster: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- paths


def read_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def cache_root() -> Path:
    return Path(os.environ.get("EAT_CACHE") or Path.home() / ".cache" / "eat")


def bin_dir() -> Path:
    if os.environ.get("EAT_CLUSTER_BIN"):
        return Path(os.environ["EAT_CLUSTER_BIN"])
    return _built_bin_dir(str(cache_root()))


@functools.lru_cache
def _built_bin_dir(cache: str) -> Path:
    """build.sh names its folder by a hash of its inputs: it says which (`--print`)."""
    r = subprocess.run(["bash", str(BUILD_SH), "--print"], env={**os.environ, "EAT_CACHE": cache},
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterError(f"{BUILD_SH} --print failed: {r.stderr.strip()}")
    return Path(r.stdout.strip())


def state_dir() -> Path:
    return Path(os.environ.get("EAT_CLUSTER_DIR") or cache_root() / "cluster")


BINARIES = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl", "helm"]


def binaries_present(bdir: Path | None = None) -> bool:
    bdir = bdir or bin_dir()
    return all(os.access(bdir / b, os.X_OK) for b in BINARIES) and (bdir.parent / "stamp").exists()


def ensure_binaries(build: bool = True) -> Path:
    """Return the bin dir, running build.sh first when binaries are missing."""
    bdir = bin_dir()
    if os.environ.get("EAT_CLUSTER_BIN"):
        missing = [b for b in BINARIES if not os.access(bdir / b, os.X_OK)]
        if missing:
            raise ClusterError(f"EAT_CLUSTER_BIN={bdir} lacks {missing}")
        return bdir
    if not binaries_present(bdir):
        if not build:
            raise ClusterError(f"binaries missing in {bdir}; run {BUILD_SH}")
        log(f"building control-plane binaries ({BUILD_SH}); a cold build takes a while")
        subprocess.run(["bash", str(BUILD_SH)], check=True, stdout=subprocess.DEVNULL)
    return bdir


# --------------------------------------------------------------------------- state


@dataclass
class Layout:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def info(self) -> Path:
        return self.root / "cluster.json"

    def component_kubeconfig(self, name: str) -> Path:
        return self.run / f"{name}.kubeconfig"

    def make(self) -> None:
        for d in (self.root, self.pki, self.logs, self.pids, self.run):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


# --------------------------------------------------------------------------- PKI


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path), cwd=path.parent)
    os.chmod(path, 0o600)


def _sign(pki: Path, name: str, subject: str, ext: str) -> None:
    key, csr, crt, extf = (pki / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    _ec_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=pki)
    extf.write_text(ext)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "3650", "-sha256", "-extfile", str(extf), "-out", str(crt), cwd=pki,
    )
    csr.unlink()
    extf.unlink()


CLIENTS = {
    # name: subject (CN = user, O = group)
    "admin": "/O=system:masters/CN=eat-admin",
    "kube-controller-manager": "/CN=system:kube-controller-manager",
    "kube-scheduler": "/CN=system:kube-scheduler",
    "kwok": "/O=system:masters/CN=eat-kwok",
    # The API server's client cert towards aggregated API servers (requestheader auth).
    "front-proxy-client": "/CN=front-proxy-client",
}


def ensure_pki(lay: Layout) -> None:
    """CA, API server serving cert, client certs and the service-account key pair."""
    pki = lay.pki
    wanted = ["ca.crt", "ca.key", "apiserver.crt", "sa.key", "sa.pub", "done"] + [f"{c}.crt" for c in CLIENTS]
    if all((pki / f).exists() for f in wanted):
        return
    shutil.rmtree(pki, ignore_errors=True)
    pki.mkdir(parents=True)
    _ec_key(pki / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=eat-local-ca", "-days", "3650", "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "ca.crt", cwd=pki,
    )
    sans = ",".join([
        "IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
    ])
    _sign(pki, "apiserver", "/CN=kube-apiserver",
          f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
          f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
    for name, subj in CLIENTS.items():
        _sign(pki, name, subj,
              "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=clientAuth\n")
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for k in pki.glob("*.key"):
        os.chmod(k, 0o600)
    (pki / "done").write_text("ok\n")


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "eat-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "eat-local", "context": {"cluster": "eat-local", "user": user, "namespace": "default"}}],
        "current-context": "eat-local",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.chmod(path, 0o600)


# --------------------------------------------------------------------------- processes


def _pidfile(lay: Layout, name: str) -> Path:
    return lay.pids / f"{name}.pid"


def _read_pid(lay: Layout, name: str) -> tuple[int, str] | None:
    """(pid, binary) from the pid file, or None."""
    try:
        pid_s, exe = _pidfile(lay, name).read_text().split("\n", 1)
        return int(pid_s), exe.strip()
    except (OSError, ValueError):
        return None


def _alive(pid: int, exe: str) -> bool:
    """True when pid is running the binary we started (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        # A rebuild (build.sh --force) replaces the file: the process still runs ours.
        running_exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        return running_exe == os.path.realpath(exe)
    except (OSError, IndexError):
        return False


def running(lay: Layout, name: str) -> int | None:
    rec = _read_pid(lay, name)
    if rec and _alive(*rec):
        return rec[0]
    return None


def start(lay: Layout, name: str, argv: Sequence[str]) -> int:
    logf = lay.logs / f"{name}.log"
    with open(logf, "wb") as out:
        out.write(("# " + " ".join(argv) + "\n").encode())
        out.flush()
        p = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=lay.root,
        )
    _pidfile(lay, name).write_text(f"{p.pid}\n{os.path.realpath(argv[0])}\n")
    return p.pid


def stop(lay: Layout, name: str, timeout: float = 15.0) -> bool:
    """Stop one component we started (SIGTERM, then SIGKILL). True if it was running."""
    rec = _read_pid(lay, name)
    pf = _pidfile(lay, name)
    if not rec:
        pf.unlink(missing_ok=True)
        return False
    pid, exe = rec
    was = _alive(pid, exe)
    if was:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid, exe) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid, exe):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid, exe):
                time.sleep(0.05)
    pf.unlink(missing_ok=True)
    return was


def _log_tail(lay: Layout, name: str, n: int = 25) -> str:
    try:
        return "\n".join((lay.logs / f"{name}.log").read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_for(what: str, check, timeout: float, lay: Layout | None = None, comp: str | None = None,
             interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if lay and comp and not running(lay, comp):
            raise ClusterError(f"{comp} exited while waiting for {what}; log {lay.logs / (comp + '.log')}:\n"
                               f"{_log_tail(lay, comp)}")
        try:
            r = check()
            if r:
                return r
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(interval)
    extra = f"\n{_log_tail(lay, comp)}" if lay and comp else ""
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last}){extra}")


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def _insecure_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _admin_ctx(lay: Layout) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(lay.pki / "ca.crt"))
    ctx.load_cert_chain(str(lay.pki / "admin.crt"), str(lay.pki / "admin.key"))
    return ctx


# --------------------------------------------------------------------------- kubectl


def kubectl(*args: str, kubeconfig: Path | str | None = None, input: str | None = None,
            check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    kc = kubeconfig or os.environ.get("KUBECONFIG") or state_dir() / "kubeconfig"
    kbin = bin_dir() / "kubectl"
    exe = str(kbin) if kbin.exists() else (shutil.which("kubectl") or str(kbin))
    r = subprocess.run([exe, f"--kubeconfig={kc}", *args], input=input, capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def kubectl_json(*args: str, kubeconfig: Path | str | None = None) -> Any:
    return json.loads(kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)


# --------------------------------------------------------------------------- scheduler config


def resolve_extender_url(extender_url: str | None = None) -> str:
    return extender_url or os.environ.get("EAT_EXTENDER_URL") or DEFAULT_EXTENDER_URL


def cluster_info() -> dict[str, Any]:
    """What up/attach recorded: mode, server, ports, bin, versions, kubeconfig, extender_url."""
    return _info(Layout(state_dir()))


def render_scheduler_config(kubeconfig: str, extender_url: str | None = None, leader_elect: bool = False,
                            template: Path = SCHEDULER_CONFIG_TEMPLATE) -> str:
    """Render charts/eat/files/scheduler-config.yaml (the single source) for a process here."""
    url = resolve_extender_url(extender_url)
    values = {
        "EAT_EXTENDER_URL": url,
        "EAT_SCHEDULER_KUBECONFIG": kubeconfig,
        "EAT_LEADER_ELECT": "true" if leader_elect else "false",
    }

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise ClusterError(f"{template}: unknown placeholder ${{{m.group(1)}}}")
        return values[m.group(1)]

    # Only ${EAT_*} names are placeholders (the Helm chart replaces the same ones).
    text = re.sub(r"\$\{(EAT_[A-Z0-9_]+)\}", sub, template.read_text())
    cfg = yaml.safe_load(text)  # must stay valid YAML after substitution
    if cfg.get("kind") != "KubeSchedulerConfiguration":
        raise ClusterError(f"{template} is not a KubeSchedulerConfiguration")
    return text


# --------------------------------------------------------------------------- up / down


def _info(lay: Layout) -> dict[str, Any]:
    try:
        return json.loads(lay.info.read_text())
    except (OSError, ValueError):
        return {}


def is_up(lay: Layout | None = None) -> bool:
    lay = lay or Layout(state_dir())
    info = _info(lay)
    if info.get("mode") != "local" or not all(running(lay, c) for c in CORE + ADDONS):
        return False
    try:
        return _http_ok(f"https://127.0.0.1:{info['ports']['apiserver']}/readyz", _admin_ctx(lay))
    except (OSError, KeyError, ssl.SSLError):
        return False


def up(build: bool = True, timeout: float = 120.0, extender_url: str | None = None) -> Path:
    """Start the local control plane (no-op when it is already healthy and calls the same
    extender). Returns the admin kubeconfig."""
    lay = Layout(state_dir())
    if is_up(lay):
        recorded, wanted = _info(lay).get("extender_url"), resolve_extender_url(extender_url)
        if recorded == wanted:
            log(f"already up; KUBECONFIG={lay.kubeconfig}")
            return lay.kubeconfig
        log(f"restarting: its eat-scheduler calls the extender at {recorded}, not {wanted}")
    bdir = ensure_binaries(build)
    for attempt in (1, 2):
        try:
            return _up(lay, bdir, timeout, extender_url)
        except ClusterError as e:
            _stop_all(lay, quiet=True)
            if attempt == 2:
                log(f"up failed; stopped what it started; logs in {lay.logs}")
                raise
            # Free ports are picked before the processes bind them: another process may
            # have taken one meanwhile. One more try, on new ports.
            log(f"up failed ({str(e).splitlines()[0]}); retrying once")
        except BaseException:
            _stop_all(lay, quiet=True)
            raise
    raise AssertionError("unreachable")


def _up(lay: Layout, bdir: Path, timeout: float, extender_url: str | None) -> Path:
    _stop_all(lay, quiet=True)
    lay.make()
    shutil.rmtree(lay.etcd_data, ignore_errors=True)
    for f in lay.logs.glob("*.log"):
        f.unlink()
    ensure_pki(lay)
    t0 = time.monotonic()
    (etcd_p, peer_p, api_p, kcm_p, sch_p, eat_p, kwok_p) = free_ports(7)
    ports = {"etcd": etcd_p, "etcd-peer": peer_p, "apiserver": api_p, "kube-controller-manager": kcm_p,
             "kube-scheduler": sch_p, "eat-scheduler": eat_p, "kwok": kwok_p}
    server = f"https://127.0.0.1:{api_p}"
    pki = lay.pki
    write_kubeconfig(lay.kubeconfig, server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key", "eat-admin")
    for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
        write_kubeconfig(lay.component_kubeconfig(name), server, pki / "ca.crt", pki / f"{name}.crt",
                         pki / f"{name}.key", name)
    lay.info.write_text(json.dumps({"mode": "local", "server": server, "ports": ports, "bin": str(bdir),
                                    "versions": read_versions(), "kubeconfig": str(lay.kubeconfig),
                                    "extender_url": resolve_extender_url(extender_url)}, indent=2))

    b = lambda n: str(bdir / n)  # noqa: E731
    # etcd
    start(lay, "etcd", [
        b("etcd"), "--name=eat", f"--data-dir={lay.etcd_data}",
        f"--listen-client-urls=http://127.0.0.1:{etcd_p}", f"--advertise-client-urls=http://127.0.0.1:{etcd_p}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_p}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_p}",
        f"--initial-cluster=eat=http://127.0.0.1:{peer_p}", "--unsafe-no-fsync", "--log-level=warn",
    ])
    wait_for("etcd /health", lambda: _http_ok(f"http://127.0.0.1:{etcd_p}/health"), 30, lay, "etcd")

    # kube-apiserver
    start(lay, "kube-apiserver", [
        b("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_p}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_p}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=Node,RBAC",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--endpoint-reconciler-type=none",
        # Request-header auth (aggregation layer); also fills the CA bundle that the
        # controller manager and schedulers read for their own serving endpoints.
        f"--requestheader-client-ca-file={pki / 'ca.crt'}", "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        # No node-lifecycle controller runs here (kwok nodes have no real kubelet), so
        # nothing would lift the not-ready taint that this plugin puts on new nodes.
        "--disable-admission-plugins=TaintNodesByCondition",
        "--allow-privileged=true", "--profiling=false", "--v=0",
    ])
    ctx = _admin_ctx(lay)
    wait_for("kube-apiserver /readyz", lambda: _http_ok(f"{server}/readyz", ctx), timeout, lay, "kube-apiserver")

    # kube-controller-manager
    kcm_kc = lay.component_kubeconfig("kube-controller-manager")
    start(lay, "kube-controller-manager", [
        b("kube-controller-manager"), f"--kubeconfig={kcm_kc}", f"--authentication-kubeconfig={kcm_kc}",
        f"--authorization-kubeconfig={kcm_kc}", "--bind-address=127.0.0.1", f"--secure-port={kcm_p}",
        f"--cert-dir={lay.run / 'kcm-certs'}", "--leader-elect=false", "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
        f"--controllers={','.join(CONTROLLERS)}", "--profiling=false",
    ])

    # kube-scheduler (default profile) and eat-scheduler (profile from the chart's config)
    sch_kc = lay.component_kubeconfig("kube-scheduler")
    start(lay, "kube-scheduler", [
        b("kube-scheduler"), f"--kubeconfig={sch_kc}", f"--authentication-kubeconfig={sch_kc}",
        f"--authorization-kubeconfig={sch_kc}", "--bind-address=127.0.0.1", f"--secure-port={sch_p}",
        f"--cert-dir={lay.run / 'scheduler-certs'}", "--leader-elect=false", "--profiling=false",
    ])
    _start_addons(lay, bdir, sch_kc, lay.component_kubeconfig("kwok"), ports, extender_url, timeout)

    insecure = _insecure_ctx()
    wait_for("kube-controller-manager /healthz",
             lambda: _http_ok(f"https://127.0.0.1:{kcm_p}/healthz", insecure), timeout, lay,
             "kube-controller-manager")
    wait_for("kube-scheduler /healthz",
             lambda: _http_ok(f"https://127.0.0.1:{sch_p}/healthz", insecure), timeout, lay, "kube-scheduler")
    wait_for("service account default/default",
             lambda: _http_ok(f"{server}/api/v1/namespaces/default/serviceaccounts/default", ctx),
             timeout, lay, "kube-controller-manager")
    log(f"up in {time.monotonic() - t0:.1f}s: {server}; KUBECONFIG={lay.kubeconfig}; logs in {lay.logs}")
    return lay.kubeconfig


def _start_addons(lay: Layout, bdir: Path, sched_kc: Path, kwok_kc: Path, ports: dict[str, int],
                  extender_url: str | None, timeout: float, scheduler: bool = True) -> None:
    """eat-scheduler + kwok (with its Stage CRD and our Stages) against the cluster in kwok_kc."""
    kc = str(kwok_kc)
    crd = bdir.parent / "share" / "kwok-stage-crd.yaml"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd), kubeconfig=kc)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/stages.kwok.x-k8s.io", kubeconfig=kc)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(STAGES_FILE), kubeconfig=kc)

    if scheduler:
        cfg = lay.run / "eat-scheduler-config.yaml"
        cfg.write_text(render_scheduler_config(str(sched_kc), extender_url))
        start(lay, "eat-scheduler", [
            str(bdir / "kube-scheduler"), f"--config={cfg}", f"--authentication-kubeconfig={sched_kc}",
            f"--authorization-kubeconfig={sched_kc}", "--bind-address=127.0.0.1",
            f"--secure-port={ports['eat-scheduler']}", f"--cert-dir={lay.run / 'eat-scheduler-certs'}",
            "--profiling=false",
        ])
    start(lay, "kwok", [
        str(bdir / "kwok"), f"--kubeconfig={kc}", "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        "--enable-crds=Stage", "--node-lease-duration-seconds=40", f"--cidr={POD_CIDR}",
        "--node-ip=127.0.0.1", f"--node-port={ports['kwok']}", f"--server-address=127.0.0.1:{ports['kwok']}",
    ])
    insecure = _insecure_ctx()
    if scheduler:
        wait_for("eat-scheduler /healthz",
                 lambda: _http_ok(f"https://127.0.0.1:{ports['eat-scheduler']}/healthz", insecure), timeout, lay,
                 "eat-scheduler")
    wait_for("kwok /healthz", lambda: _http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"), timeout, lay, "kwok")


def attach(kubeconfig: str, build: bool = True, extender_url: str | None = None, timeout: float = 120.0,
           scheduler: bool = True) -> None:
    """Run kwok + eat-scheduler on this machine against an existing cluster (e.g. kind)."""
    lay = Layout(state_dir())
    bdir = ensure_binaries(build)
    _stop_all(lay, quiet=True)
    lay.make()
    kc = Path(kubeconfig).resolve()
    eat_p, kwok_p = free_ports(2)
    lay.info.write_text(json.dumps({"mode": "attached", "kubeconfig": str(kc), "bin": str(bdir),
                                    "ports": {"eat-scheduler": eat_p, "kwok": kwok_p},
                                    "extender_url": resolve_extender_url(extender_url),
                                    "components": (["eat-scheduler"] if scheduler else []) + ["kwok"],
                                    "versions": read_versions()}, indent=2))
    _start_addons(lay, bdir, kc, kc, {"eat-scheduler": eat_p, "kwok": kwok_p}, extender_url, timeout, scheduler)
    log(f"attached kwok + eat-scheduler to {kc}; logs in {lay.logs}")


def _stop_all(lay: Layout, quiet: bool = False) -> list[str]:
    stopped = []
    if lay.pids.exists():
        order = list(reversed(CORE + ADDONS))
        names = order + sorted(p.stem for p in lay.pids.glob("*.pid") if p.stem not in order)
        for name in names:
            if stop(lay, name):
                stopped.append(name)
    if stopped and not quiet:
        log(f"stopped {', '.join(stopped)}")
    return stopped


def down() -> list[str]:
    """Stop every process this tool started for the state dir (from its pid files), and drop
    the etcd data (throwaway: up starts from none)."""
    lay = Layout(state_dir())
    stopped = _stop_all(lay)
    if not stopped:
        log("nothing running")
    if not _processes_in(lay.root):
        shutil.rmtree(lay.etcd_data, ignore_errors=True)
    return stopped


def _processes_in(root: Path) -> list[int]:
    """Pids working in root: every process start() ran there, even one whose pid file is lost."""
    root_s = os.path.realpath(root)
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == root_s:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


# --------------------------------------------------------------------------- fake GPU nodes


def load_node_pools(path: Path = NODES_FILE) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = yaml.safe_load(path.read_text())
    return data.get("defaults", {}), data["pools"]


def node_manifest(pool: dict[str, Any], defaults: dict[str, Any], name: str,
                  gpus: int | None = None) -> dict[str, Any]:
    """A kwok-managed Node that advertises GPUs like a node with the NVIDIA device plugin."""
    n = int(gpus if gpus is not None else pool["gpus"])
    if not 0 <= n <= 8:
        raise ValueError(f"gpus must be within 0..8, got {n}")
    res = {k: str(pool.get(k, defaults.get(k))) for k in ("cpu", "memory", "pods", "ephemeral-storage")
           if pool.get(k, defaults.get(k)) is not None}
    res[GPU_RESOURCE] = str(n)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                LABEL_FAKE_NODE: "true",
                LABEL_NODE_POOL: pool["name"],
                LABEL_GPU_TYPE: pool["gpuType"],
                LABEL_GPU_PRODUCT: pool["gpuProduct"],
                LABEL_GPU_MEMORY: str(pool["gpuMemoryMiB"]),
                LABEL_GPU_COUNT: str(n),
            },
        },
        "spec": {},
        "status": {"capacity": dict(res), "allocatable": dict(res)},
    }


def _existing_fake_nodes(kubeconfig: Path | str | None) -> list[dict[str, Any]]:
    return kubectl_json("get", "nodes", "-l", f"{LABEL_FAKE_NODE}=true", kubeconfig=kubeconfig)["items"]


def add_nodes(count: int, pool: str | None = None, gpus: int | None = None,
              kubeconfig: Path | str | None = None, wait: bool = True, timeout: float = 60.0) -> list[str]:
    """Create `count` fake GPU nodes (round robin over the pools in nodes.yaml, or only `pool`).

    Names are eat-gpu-<pool>-<index>, continuing after nodes that already exist.
    Returns the new node names once kwok reports them Ready (when wait).
    """
    defaults, pools = load_node_pools()
    if pool is not None:
        pools = [p for p in pools if p["name"] == pool]
        if not pools:
            raise ClusterError(f"no pool {pool!r} in {NODES_FILE}")
    taken = {n["metadata"]["name"] for n in _existing_fake_nodes(kubeconfig)}
    manifests, names = [], []
    for i in range(count):
        p = pools[i % len(pools)]
        idx = 0
        while f"eat-gpu-{p['name']}-{idx}" in taken:
            idx += 1
        name = f"eat-gpu-{p['name']}-{idx}"
        taken.add(name)
        names.append(name)
        manifests.append(node_manifest(p, defaults, name, gpus))
    if not manifests:
        return []
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    kubectl("create", "-f", "-", input=doc, kubeconfig=kubeconfig)
    # The API server keeps status on node create; patch it anyway so capacity is right
    # on any server version (status is a subresource).
    for m in manifests:
        kubectl("patch", "node", m["metadata"]["name"], "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": m["status"]}), kubeconfig=kubeconfig)
    if wait:
        def ready() -> bool:
            items = {n["metadata"]["name"]: n for n in _existing_fake_nodes(kubeconfig)}
            for name in names:
                conds = items.get(name, {}).get("status", {}).get("conditions") or []
                if not any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                    return False
            return True
        wait_for(f"{len(names)} fake nodes Ready (is kwok running?)", ready, timeout, interval=0.3)
    return names


def delete_nodes(names: Iterable[str] | None = None, kubeconfig: Path | str | None = None) -> None:
    """Delete the given fake nodes, or all of them (label eat.aigc.io/fake-node=true)."""
    if names is None:
        kubectl("delete", "nodes", "-l", f"{LABEL_FAKE_NODE}=true", "--wait=true", kubeconfig=kubeconfig)
    else:
        names = list(names)
        if names:
            kubectl("delete", "nodes", "--ignore-not-found", "--wait=true", *names, kubeconfig=kubeconfig)


GPU_COLUMNS = ("NAME:.metadata.name,POOL:.metadata.labels.eat\\.aigc\\.io/node-pool,"
               "PRODUCT:.metadata.labels.nvidia\\.com/gpu\\.product,"
               "GPU:.status.allocatable.nvidia\\.com/gpu,CPU:.status.allocatable.cpu,"
               "MEMORY:.status.allocatable.memory,READY:.status.conditions[?(@.type==\"Ready\")].status")


def gpu_table(kubeconfig: Path | str | None = None) -> str:
    return kubectl("get", "nodes", "-o", f"custom-columns={GPU_COLUMNS}", kubeconfig=kubeconfig).stdout


# --------------------------------------------------------------------------- CLI


def status() -> int:
    lay = Layout(state_dir())
    info = _info(lay)
    mode = info.get("mode", "none")
    comps = info.get("components") or (CORE + ADDONS if mode == "local" else ADDONS)
    ok = mode != "none"
    print(f"state:   {lay.root} (mode: {mode})")
    print(f"bin:     {info.get('bin', bin_dir())}")
    for c in comps:
        pid = running(lay, c)
        ok &= pid is not None
        print(f"{c:24} {'running pid ' + str(pid) if pid else 'stopped'}")
    if mode == "local":
        try:
            ready = _http_ok(f"{info['server']}/readyz", _admin_ctx(lay))
        except (OSError, KeyError, ssl.SSLError):
            ready = False
        ok &= ready
        print(f"{'apiserver /readyz':24} {'ok' if ready else 'not ready'}  {info.get('server', '')}")
        print(f"KUBECONFIG={lay.kubeconfig}")
    if ok:
        try:
            print(gpu_table(info.get("kubeconfig")), end="")
        except ClusterError as e:
            print(f"nodes: {e}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="localcluster.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="start the local control plane (idempotent)")
    p.add_argument("--no-build", dest="build", action="store_false", help="fail instead of running build.sh")
    p.add_argument("--extender-url", help=f"eat-extender base URL (default $EAT_EXTENDER_URL or {DEFAULT_EXTENDER_URL})")
    p.add_argument("--nodes", type=int, default=0, help="also add this many fake GPU nodes")
    p.add_argument("--timeout", type=float, default=120.0)
    sub.add_parser("down", help="stop what up/attach started")
    sub.add_parser("status", help="show components and nodes")
    p = sub.add_parser("add-nodes", help="create fake GPU nodes")
    p.add_argument("count", type=int)
    p.add_argument("--pool", help="only this pool of nodes.yaml")
    p.add_argument("--gpus", type=int, help="override the GPUs per node (0..8)")
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG, else the local cluster's")
    p = sub.add_parser("delete-nodes", help="delete fake GPU nodes (all without names)")
    p.add_argument("names", nargs="*")
    p.add_argument("--kubeconfig")
    p = sub.add_parser("attach", help="run kwok + eat-scheduler against an existing cluster")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--extender-url")
    p.add_argument("--no-build", dest="build", action="store_false")
    p.add_argument("--no-scheduler", dest="scheduler", action="store_false",
                   help="kwok only (the cluster runs its own eat-scheduler, e.g. from the Helm chart)")
    sub.add_parser("detach", help="stop what attach started (same as down)")
    sub.add_parser("env", help="print shell exports for this cluster")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "up":
            kc = up(build=a.build, timeout=a.timeout, extender_url=a.extender_url)
            if a.nodes:
                add_nodes(a.nodes, kubeconfig=kc)
            print(kc)
        elif a.cmd in ("down", "detach"):
            down()
        elif a.cmd == "status":
            return status()
        elif a.cmd == "add-nodes":
            for n in add_nodes(a.count, pool=a.pool, gpus=a.gpus, kubeconfig=a.kubeconfig):
                print(n)
        elif a.cmd == "delete-nodes":
            delete_nodes(a.names or None, kubeconfig=a.kubeconfig)
        elif a.cmd == "attach":
            attach(a.kubeconfig, build=a.build, extender_url=a.extender_url, scheduler=a.scheduler)
        elif a.cmd == "env":
            lay = Layout(state_dir())
            kc = _info(lay).get("kubeconfig", str(lay.kubeconfig))
            print(f"export KUBECONFIG={kc}\nexport PATH={bin_dir()}:$PATH")
    except (ClusterError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
