"""The Helm chart (charts/eat), with the real helm, kube-scheduler, promtool and API server.

Without a cluster: `helm lint`; what `helm template` renders for the defaults and each
`ci/*-values.yaml` scenario (labels, security contexts, resource requests, images without a
registry host); every EAT_* variable it sets names a field of that component's settings and
parses there; the scheduler ConfigMap loads in kube-scheduler and matches the local control
plane's rendering of the same file; the alerts pass `promtool check rules` and fire (or not)
on synthetic series in `promtool test rules`; bad values are refused by values.schema.json
with a message that names the value.

With the control plane (marker `cluster`): every rendered object passes
`kubectl apply --dry-run=server --validate=strict`, under the `restricted` Pod Security
level (only the node agent's hostPath may be reported); `helm install` deploys; and
`kubectl auth can-i --as=<each ServiceAccount>` shows each component can do what it needs and
nothing more; `helm uninstall` leaves no cluster-scoped object behind.
"""

from __future__ import annotations

import importlib.util
import os
import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusterkit import REPO, Cluster, lc, wait_until

pytestmark = pytest.mark.slow

CHART = REPO / "charts" / "eat"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
SCENARIOS = [pytest.param(None, id="defaults"),
             *(pytest.param(p, id=p.name.removesuffix("-values.yaml")) for p in CI_VALUES)]
RELEASE_NS = "eat-system"
MONITORING_API = "monitoring.coreos.com/v1"
COMPONENTS = ("operator", "policy", "extender", "scheduler", "node-agent")


# --- helpers ---------------------------------------------------------------------------------

def tool(name: str) -> str:
    """A binary built by hack/cluster/build.sh (helm, kubectl, kube-scheduler), else from PATH."""
    built = lc.bin_dir() / name
    if built.exists():
        return str(built)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not built (hack/cluster/build.sh) nor on PATH")
    return found


def run(*argv: str, input: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"{' '.join(argv[:3])} ... exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(tool("helm"), *args, check=check)


def render_text(values: Path | None = None, *args: str, namespace: str = RELEASE_NS,
                monitoring: bool = True, release: str = "eat") -> str:
    """`helm template`; with `monitoring`, as if the Prometheus operator's API were served."""
    extra = ["-f", str(values)] if values else []
    api = ["--api-versions", MONITORING_API] if monitoring else []
    return helm("template", release, str(CHART), "-n", namespace, *extra, *api, *args).stdout


def render(values: Path | None = None, *args: str, **kw: Any) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(values, *args, **kw)) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def workloads(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Component name -> its Deployment or DaemonSet."""
    return {component(o): o for o in objs if o["kind"] in ("Deployment", "DaemonSet")}


def container(objs: list[dict[str, Any]], comp: str) -> dict[str, Any]:
    return workloads(objs)[comp]["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def settings_class(path: str, cls: str) -> type:
    """A settings class loaded from its file alone (it imports only pydantic)."""
    pytest.importorskip("pydantic_settings")
    spec = importlib.util.spec_from_file_location(f"_chart_settings_{Path(path).stem}_{cls}", REPO / path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # pydantic resolves the postponed annotations through it
    spec.loader.exec_module(mod)
    return getattr(mod, cls)


# --- lint and render -------------------------------------------------------------------------

@pytest.mark.parametrize("values", SCENARIOS)
def test_lint_is_clean(values: Path | None) -> None:
    extra = ["-f", str(values)] if values else []
    r = helm("lint", "--strict", str(CHART), *extra)
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout
    assert "[WARNING]" not in r.stdout and "[ERROR]" not in r.stdout, r.stdout


def test_app_version_is_the_package_version() -> None:
    """Image tags default to appVersion, so it must name the version the images are built from."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert package and chart["appVersion"] == package.group(1)


@pytest.mark.parametrize("values", SCENARIOS)
def test_renders_every_component_hardened(values: Path | None) -> None:
    objs = render(values)
    values_doc = yaml.safe_load(values.read_text()) if values else {}
    node_agent = (values_doc.get("nodeAgent") or {}).get("enabled", True)
    expected = set(COMPONENTS) - (set() if node_agent else {"node-agent"})
    assert set(workloads(objs)) == expected
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "eat" and labels["app.kubernetes.io/instance"] == "eat"
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and "helm.sh/chart" in labels
        assert labels["app.kubernetes.io/component"]
    for comp, w in workloads(objs).items():
        pod = w["spec"]["template"]["spec"]
        assert w["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == comp
        assert pod["securityContext"]["runAsNonRoot"] is True, comp
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, comp
        assert pod["serviceAccountName"].endswith(comp), comp
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, comp
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True, comp
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), comp
            # No registry host in the defaults: the user sets global.imageRegistry.
            assert "/" not in c["image"], c["image"]


def test_defaults_wire_components_together() -> None:
    objs = render()
    services = by_kind(objs, "Service")
    op = env_of(container(objs, "operator"))
    assert op["EAT_OPERATOR_POLICY_URL"] == f"http://eat-policy.{RELEASE_NS}.svc:8000"
    assert "eat-policy" in services and services["eat-policy"]["spec"]["ports"][0]["port"] == 8000
    assert json.loads(op["EAT_OPERATOR_MODELS"]) == ["sd15", "sdxl", "sdxl-turbo"]  # what eat-inference runs
    assert op["EAT_OPERATOR_LEADER_ELECTION"] == "true" and op["EAT_OPERATOR_LEASE_NAME"] == "eat-operator"
    assert op["EAT_OPERATOR_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert op["EAT_OPERATOR_IMAGE"] == "eat-inference:0.1.0"
    assert op["EAT_OPERATOR_SCHEDULER_NAME"] == "eat-scheduler"
    # The model cache is one directory on the node, seen by the inference pods and the agent.
    ds = workloads(objs)["node-agent"]["spec"]["template"]["spec"]
    (cache,) = [v for v in ds["volumes"] if v["name"] == "model-cache"]
    assert cache["hostPath"]["path"] == op["EAT_OPERATOR_MODEL_CACHE_HOST_PATH"] == "/var/lib/eat/models"
    assert ds["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert ds["automountServiceAccountToken"] is False
    agent = env_of(ds["containers"][0])
    assert agent["EAT_NODE_AGENT_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert agent["EAT_NODE_AGENT_CACHE_DIR"] == ds["containers"][0]["volumeMounts"][0]["mountPath"]
    policy = container(objs, "policy")
    assert policy["command"] == ["eat-policy", "serve"] and policy["args"][:2] == ["--port", "8000"]
    assert "EAT_POLICY_CHECKPOINT" not in env_of(policy)  # the image's shipped checkpoint
    assert workloads(objs)["policy"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    sched = container(objs, "scheduler")
    assert sched["image"].startswith("kube-scheduler:v1.")
    assert "--config=/etc/eat-scheduler/config.yaml" in sched["command"]
    # Monitoring is opt-in; with it off nothing of monitoring.coreos.com is rendered.
    assert not [o for o in objs if o["apiVersion"] == MONITORING_API]


def test_images_take_the_registry_the_user_sets() -> None:
    objs = render(None, "--set", "global.imageRegistry=registry.invalid/eat",
                  "--set", "scheduler.image.registry=mirror.invalid/k8s", "--set", "scheduler.image.tag=v1.37.2",
                  "--set", "policy.image.tag=abc", "--kube-version", "v1.33.1-eks-1234")
    images = {comp: container(objs, comp)["image"] for comp in COMPONENTS}
    assert images == {"operator": "registry.invalid/eat/eat-operator:0.1.0",
                      "policy": "registry.invalid/eat/eat-policy:abc",
                      "extender": "registry.invalid/eat/eat-extender:0.1.0",
                      "scheduler": "mirror.invalid/k8s/kube-scheduler:v1.37.2",
                      "node-agent": "registry.invalid/eat/eat-node-agent:0.1.0"}
    assert env_of(container(objs, "operator"))["EAT_OPERATOR_IMAGE"] == "registry.invalid/eat/eat-inference:0.1.0"
    # Without a tag, kube-scheduler follows the cluster's version, provider suffix dropped.
    plain = render(None, "--kube-version", "v1.33.1-eks-1234")
    assert container(plain, "scheduler")["image"] == "kube-scheduler:v1.33.1"


SETTINGS = {
    "operator": ("EAT_OPERATOR_", [("operator/eat_operator/settings.py", "Settings")]),
    "policy": ("EAT_POLICY_", [("policy/eat_policy/service/settings.py", "Settings")]),
    "extender": ("EAT_EXTENDER_", [("scheduler_extender/eat_extender/settings.py", "Settings")]),
    "node-agent": ("EAT_NODE_AGENT_", [("inference_image/eat_inference/settings.py", "AgentSettings")]),
}


@pytest.mark.parametrize("values", SCENARIOS)
@pytest.mark.parametrize("comp", sorted(SETTINGS))
def test_env_vars_are_settings_that_parse(comp: str, values: Path | None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """One to one: every EAT_* variable is a field of the component's settings, and the
    settings class accepts the rendered value (JSON lists and maps included)."""
    objs = render(values)
    if comp not in workloads(objs):
        # Only the minimal scenario turns a component off, and only the node agent.
        assert values is not None and values.name.startswith("minimal") and comp == "node-agent"
        return
    prefix, classes = SETTINGS[comp]
    env = {k: v for k, v in env_of(container(objs, comp)).items() if k.startswith(prefix)}
    assert env, comp
    for path, cls_name in classes:
        cls = settings_class(path, cls_name)
        fields = {f"{prefix}{name.upper()}" for name in cls.model_fields}
        assert set(env) <= fields, f"not settings of {cls_name}: {sorted(set(env) - fields)}"
        for k in list(os.environ):
            if k.startswith(prefix):
                monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, v if isinstance(v, str) else "from-the-downward-api")
        s = cls()  # raises on a value the component would refuse
        for k, v in env.items():
            field = k.removeprefix(prefix).lower()
            if isinstance(v, str) and v.startswith(("[", "{")):
                got = getattr(s, field)
                assert json.loads(json.dumps(list(got) if isinstance(got, tuple) else got)) == json.loads(v), k


def test_scheduler_config_is_the_shared_file_and_loads(tmp_path: Path) -> None:
    objs = render()
    text = by_kind(objs, "ConfigMap")["eat-scheduler"]["data"]["config.yaml"]
    url = f"http://eat-extender.{RELEASE_NS}.svc:8080"
    assert "${" not in text
    # The same source, rendered the way the local control plane renders it.
    assert yaml.safe_load(text) == yaml.safe_load(lc.render_scheduler_config("", extender_url=url, leader_elect=True))
    # And the real kube-scheduler accepts it (validation, defaulting) and sees our extender.
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "x", "user": {"token": "x"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text.replace('kubeconfig: ""', f'kubeconfig: "{kc}"'))
    out = tmp_path / "effective.yaml"
    run(tool("kube-scheduler"), f"--config={cfg}", f"--write-config-to={out}", timeout=30)
    eff = yaml.safe_load(out.read_text())
    assert [p["schedulerName"] for p in eff["profiles"]] == ["eat-scheduler"]
    assert eff["extenders"][0]["urlPrefix"] == url and eff["extenders"][0]["ignorable"] is True
    assert eff["leaderElection"]["leaderElect"] is True


def test_scheduler_without_leader_election_is_recreated() -> None:
    """No Lease keeps an old and a new kube-scheduler apart during a rolling update."""
    alone = workloads(render(None, "--set", "scheduler.leaderElect=false"))["scheduler"]
    assert alone["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in workloads(render())["scheduler"]["spec"]  # the Lease does it


def test_checkpoint_can_be_mounted() -> None:
    objs = render(None, "--set", "policy.checkpoint.volume.persistentVolumeClaim.claimName=ckpts",
                  "--set", "policy.checkpoint.file=v2.pt")
    pod = workloads(objs)["policy"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert env_of(c)["EAT_POLICY_CHECKPOINT"] == "/var/lib/eat/checkpoint/v2.pt"
    (vol,) = [v for v in pod["volumes"] if v["name"] == "checkpoint"]
    assert vol == {"name": "checkpoint", "persistentVolumeClaim": {"claimName": "ckpts"}}
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "checkpoint"]
    assert mount["readOnly"] is True
    baked = render(None, "--set", "policy.checkpoint.path=/opt/eat/other.pt")
    assert env_of(container(baked, "policy"))["EAT_POLICY_CHECKPOINT"] == "/opt/eat/other.pt"


def test_ha_scenario_has_disruption_budgets_and_monitoring() -> None:
    objs = render(CHART / "ci" / "ha-values.yaml")
    pdbs = {component(o) for o in objs if o["kind"] == "PodDisruptionBudget"}
    assert pdbs == {"operator", "policy", "scheduler"}
    assert workloads(objs)["operator"]["spec"]["replicas"] == 2
    monitors = {o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
                for o in objs if o["kind"] == "ServiceMonitor"}
    assert monitors == {"operator", "policy", "extender", "node-agent"}
    # Each ServiceMonitor selects a Service that has the port it scrapes.
    services = {component(s): s for s in objs if s["kind"] == "Service"}
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        svc = services[sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]]
        assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert len(by_kind(objs, "PrometheusRule")) == 1
    # Without the Prometheus operator's API the same values render no monitoring objects.
    bare = render(CHART / "ci" / "ha-values.yaml", monitoring=False)
    assert not [o for o in bare if o["apiVersion"] == MONITORING_API]
    assert "eat-dashboard" in by_kind(bare, "ConfigMap")


def test_node_agent_write_access_is_opt_in() -> None:
    assert not [o for o in render() if o["kind"] == "ClusterRole" and component(o) == "node-agent"]
    objs = render(None, "--set", "nodeAgent.annotateNode=true", "--set", "nodeAgent.cacheInit.enabled=true")
    (role,) = [o for o in objs if o["kind"] == "ClusterRole" and component(o) == "node-agent"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    pod = workloads(objs)["node-agent"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert env_of(pod["containers"][0])["EAT_NODE_AGENT_ANNOTATE_NODE"] == "true"
    (init,) = pod["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}


def _values_keys() -> list[tuple[int, str, str, bool, list[str]]]:
    """values.yaml's keys in order: (indent, dotted path, default text, has a `# --` comment
    block above, the comment lines right below it)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys, stack = [], []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w-]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        above, j = [], i - 1
        while j >= 0 and lines[j].lstrip().startswith("#"):
            above.append(lines[j].strip())
            j -= 1
        below, j = [], i + 1
        while j < len(lines) and lines[j].lstrip().startswith("#") and not lines[j].lstrip().startswith("# --"):
            below.append(lines[j].strip())
            j += 1
        keys.append((indent, ".".join(k for _, k in stack), rest, any(a.startswith("# --") for a in above), below))
    return keys


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of a repeated key; kubectl (and kustomize) refuse the file."""


def _no_repeats(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[type-arg]
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise yaml.constructor.ConstructorError(None, None, f"repeated keys {repeated}", node.start_mark)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_repeats)


def test_no_chart_yaml_repeats_a_key() -> None:
    for path in [CHART / "values.yaml", *sorted((CHART / "crds").glob("*.yaml"))]:
        list(yaml.load_all(path.read_text(), Loader=_StrictLoader))  # raises on a repeated key


def test_every_value_is_documented_with_examples() -> None:
    """helm-docs style (kueue's values.yaml): a `# --` comment on every key, and a commented
    example under every empty default. Keys inside a documented default (resources,
    affinity, probes, ...) are that default's content, not values of their own."""
    keys = _values_keys()
    documented = {path for _, path, _, doc, _ in keys if doc}
    undocumented, no_example = [], []
    for _, path, rest, doc, below in keys:
        parents = [path.rsplit(".", n)[0] for n in range(1, path.count(".") + 1)]
        # Content of a documented default: its nearest documented ancestor documents no child.
        owner = next((p for p in parents if p in documented), None)
        if owner and not any(d.startswith(owner + ".") for d in documented):
            continue
        if not doc:
            undocumented.append(path)
        elif rest in ('""', "{}", "[]"):
            leaf = path.rsplit(".", 1)[-1]
            if not any(b.startswith(f"# {leaf}:") for b in below):
                no_example.append(path)
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    assert not no_example, f"empty defaults without a commented example: {no_example}"
    assert "global.imageRegistry" in documented and "scheduler.image.registry" in documented


# --- bad values --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    pytest.param(["--set", "operator.replicaCount=two"], "at '/operator/replicaCount': got string, want integer",
                 id="string-replicas"),
    pytest.param(["--set", "operator.replicas=2"], "at '/operator': additional properties 'replicas' not allowed",
                 id="unknown-key"),
    pytest.param(["--set", "policy.port=-1"], "at '/policy/port': minimum: got -1, want 1", id="negative-port"),
    pytest.param(["--set", "operator.config.batchSiz=8"],
                 "at '/operator/config': additional properties 'batchSiz' not allowed", id="mistyped-setting"),
    pytest.param(["--set", "extender.replicaCount=2"], "at '/extender/replicaCount': maximum: got 2, want 1",
                 id="two-extenders"),
    pytest.param(["--set", "global.imagePullPolicy=Sometimes"],
                 "at '/global/imagePullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
                 id="pull-policy-enum"),
    pytest.param(["--set-string", "nodeAgent.annotateNode=yes"],
                 "at '/nodeAgent/annotateNode': got string, want boolean", id="string-boolean"),
    pytest.param(["--set", "monitoring.prometheusRule.window=10minutes"],
                 "at '/monitoring/prometheusRule/window': '10minutes' does not match pattern", id="bad-duration"),
    pytest.param(["--set", "models={sd15,sd21}"], "at '/models/1': value must be one of 'sd15', 'sdxl', 'sdxl-turbo'",
                 id="model-the-policy-cannot-plan"),
    pytest.param(["--set", "policy.config.fallbackPolicy=edf-kache"], "at '/policy/config/fallbackPolicy'",
                 id="unknown-fallback"),
    pytest.param(["--set", "policy.config.busyGuessS=0"], "at '/policy/config/busyGuessS': exclusiveMinimum",
                 id="busy-guess-zero"),
    pytest.param(["--set", "inference.config.extraEnv[0].name=RANK", "--set", "inference.config.extraEnv[0].value=3"],
                 "at '/inference/config/extraEnv/0/name'", id="env-the-operator-sets"),
    pytest.param(["--set", "tmpSizeLimit=512K"], "at '/tmpSizeLimit': '512K' does not match", id="quantity-suffix"),
    pytest.param(["--set", "modelCache.hostPath=relative/dir"],
                 "at '/modelCache/hostPath': 'relative/dir' does not match", id="relative-host-path"),
    pytest.param(["--set", "scheduler.extenderUrl=https://eat-extender.eat.svc:8443"],
                 "at '/scheduler/extenderUrl': 'https://eat-extender.eat.svc:8443' does not match",
                 id="https-extender-without-tls-config"),
    pytest.param(["--set", "operator.replicaCount=2", "--set", "operator.leaderElection.enabled=false"],
                 "operator.replicaCount is 2 but operator.leaderElection.enabled is false",
                 id="replicas-without-lease"),
])
def test_bad_values_are_refused_readably(args: list[str], message: str) -> None:
    r = helm("template", "eat", str(CHART), *args, check=False)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_the_fallback_pattern_takes_exactly_the_heuristics() -> None:
    """The schema names the service's possible fallbacks by pattern; it must follow the registry."""
    from eat_policy.agents import base
    from eat_policy.agents import eat as eat_agent

    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = re.compile(schema["properties"]["policy"]["properties"]["config"]["properties"]["fallbackPolicy"]["pattern"])
    for name in base.names():
        heuristic = not isinstance(base.make(name), eat_agent.LearnedPolicy)
        assert bool(pattern.match(name)) == heuristic, name
    assert all(pattern.match(name) for name in ("cache-lct-queue:30", "edf-cache-steps:12"))


# --- alerts and dashboard ------------------------------------------------------------------------

def known_metrics() -> set[str]:
    """Every series name our components export, from their sources (prometheus_client adds
    _total to counters and _bucket/_count/_sum to histograms)."""
    names: set[str] = set()
    for path in ("operator/eat_operator/metrics.py", "policy/eat_policy/service/telemetry.py",
                 "scheduler_extender/eat_extender/metrics.py"):
        src = (REPO / path).read_text()
        for kind, name in re.findall(r'\b(Counter|Gauge|Histogram)\(\s*"(eat_[a-z0-9_]+)"', src):
            if kind == "Counter":
                names.add(name.removesuffix("_total") + "_total")
            elif kind == "Histogram":
                names.update(name + s for s in ("_bucket", "_count", "_sum"))
            else:
                names.add(name)
    names.update(re.findall(r'^METRIC_\w+ = "(eat_[a-z0-9_]+)"', (REPO / "policy/eat_policy/api.py").read_text(), re.M))
    return names


def used_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(eat_[a-z0-9_]+)\b", expr))


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (rule,) = by_kind(render(CHART / "ci" / "ha-values.yaml"), "PrometheusRule").values()
    path = tmp_path_factory.mktemp("rules") / "eat-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool (Debian package prometheus, installed by hack/test.sh) is not installed")
    return found


def test_alerts_use_real_metrics_and_pass_promtool(rules_file: Path) -> None:
    spec = yaml.safe_load(rules_file.read_text())
    exprs = [r["expr"] for g in spec["groups"] for r in g["rules"]]
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}
    assert {"EATDeadlineMissRatioHigh", "EATPolicyFallbackRatioHigh", "EATJobsStuck"} <= alerts
    unknown = set().union(*map(used_metrics, exprs)) - known_metrics()
    assert not unknown, f"alerts use series no component exports: {sorted(unknown)}"
    r = run(promtool(), "check", "rules", str(rules_file))
    assert "SUCCESS" in r.stdout


def _series(name: str, values: str) -> dict[str, str]:
    return {"series": name, "values": values}


def test_alerts_fire_on_what_they_describe(rules_file: Path, tmp_path: Path) -> None:
    """promtool's rule unit tests: each alert fires on its condition and stays quiet otherwise."""
    sev = {"severity": "warning"}
    tests = [
        {   # half of the finished jobs miss their deadline; the policy answers itself
            "interval": "1m",
            "input_series": [
                _series('eat_operator_jobs_finished_total{phase="Succeeded",instance="a"}', "0+10x60"),
                _series('eat_operator_deadline_misses_total{instance="a"}', "0+5x60"),
                _series('eat_policy_plan_request_duration_seconds_count{instance="p"}', "0+10x60"),
                _series('eat_policy_fallbacks_total{reason="no_checkpoint"}', "0+0x60"),
                _series('eat_operator_jobs{phase="Pending",instance="a"}', "2x60"),
                _series('eat_operator_leader{instance="a"}', "1x60"),
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "EATDeadlineMissRatioHigh",
                 "exp_alerts": [{"exp_labels": sev}]},
                {"eval_time": "30m", "alertname": "EATPolicyFallbackRatioHigh", "exp_alerts": []},
                {"eval_time": "30m", "alertname": "EATJobsStuck", "exp_alerts": []},
                {"eval_time": "30m", "alertname": "EATOperatorNoLeader", "exp_alerts": []},
            ],
        },
        {   # jobs wait, none finishes, nobody leads, and the policy only falls back
            "interval": "1m",
            "input_series": [
                _series('eat_operator_jobs{phase="Pending",instance="a"}', "3x60"),
                _series('eat_operator_jobs{phase="Pending",instance="b"}', "3x60"),
                _series('eat_operator_jobs_finished_total{phase="Succeeded",instance="a"}', "7x60"),
                _series('eat_operator_leader{instance="a"}', "0x60"),
                _series('eat_operator_leader{instance="b"}', "0x60"),
                # every plan request falls back; each has 32 jobs (the ratio is per request)
                _series('eat_policy_plan_request_duration_seconds_count{instance="p"}', "0+4x60"),
                _series('eat_policy_decisions_total{policy="edf-cache",action="dispatch"}', "0+128x60"),
                _series('eat_policy_fallbacks_total{reason="no_checkpoint"}', "0+4x60"),
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "EATJobsStuck", "exp_alerts": [{"exp_labels": sev}]},
                {"eval_time": "30m", "alertname": "EATOperatorNoLeader", "exp_alerts": [{"exp_labels": sev}]},
                {"eval_time": "30m", "alertname": "EATPolicyFallbackRatioHigh", "exp_alerts": [{"exp_labels": sev}]},
                {"eval_time": "30m", "alertname": "EATDeadlineMissRatioHigh", "exp_alerts": []},
            ],
        },
    ]
    # promtool compares annotations too; they are checked by `check rules` above, not here.
    spec = yaml.safe_load(rules_file.read_text())
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "eat-rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    case = tmp_path / "eat-rules-test.yaml"
    case.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    r = run(promtool(), "test", "rules", str(case), check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_is_valid_and_uses_real_metrics() -> None:
    objs = render(CHART / "ci" / "ha-values.yaml")
    cm = by_kind(objs, "ConfigMap")["eat-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["eat.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    unknown = set().union(*map(used_metrics, exprs)) - known_metrics()
    assert not unknown, f"dashboard uses series no component exports: {sorted(unknown)}"


# --- against the API server ----------------------------------------------------------------------

# Stand-ins for the Prometheus operator's CRDs (their upstream manifests cannot be fetched
# here): the same group, kinds and field names, with structural schemas for the fields this
# chart writes, so --validate=strict refuses any field we misspell.
_STR = {"type": "string"}
_STRMAP = {"type": "object", "additionalProperties": _STR}
MONITORING_CRDS = [
    ("servicemonitors", "ServiceMonitor", {
        "selector": {"type": "object", "properties": {"matchLabels": _STRMAP}},
        "namespaceSelector": {"type": "object", "properties": {"matchNames": {"type": "array", "items": _STR},
                                                               "any": {"type": "boolean"}}},
        "endpoints": {"type": "array", "items": {"type": "object", "properties": {
            "port": _STR, "path": _STR, "interval": _STR, "scrapeTimeout": _STR, "scheme": _STR,
            "honorLabels": {"type": "boolean"}}}},
    }),
    ("prometheusrules", "PrometheusRule", {
        "groups": {"type": "array", "items": {"type": "object", "properties": {
            "name": _STR, "interval": _STR,
            "rules": {"type": "array", "items": {"type": "object", "properties": {
                "record": _STR, "alert": _STR, "expr": {"x-kubernetes-int-or-string": True}, "for": _STR,
                "labels": _STRMAP, "annotations": _STRMAP}}}}}},
    }),
]


def _monitoring_crd(plural: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com", "labels": {"eat.aigc.io/test": "chart-stand-in"}},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"plural": plural, "kind": kind, "singular": kind.lower(), "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object", "properties": spec}}}}}]},
    }


@pytest.fixture(scope="module")
def api_server(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with the chart's CRD, and stand-ins for the Prometheus operator's CRDs
    unless the real ones are there already (removed again at the end)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    ours = []
    for plural, kind, spec in MONITORING_CRDS:
        name = f"{plural}.monitoring.coreos.com"
        if not cluster.exists("crd", name):
            cluster.kubectl("create", "-f", "-", input=json.dumps(_monitoring_crd(plural, kind, spec)))
            ours.append(name)
    for name in ["aigcjobs.eat.aigc.io", *ours]:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    yield cluster
    for name in ours:
        cluster.kubectl("delete", "crd", name, "--ignore-not-found", "--wait=false")


def _fresh_namespace(cluster: Cluster, prefix: str, labels: dict[str, str] | None = None) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    if labels:
        cluster.kubectl("label", "namespace", ns, *(f"{k}={v}" for k, v in labels.items()))
    return ns


@pytest.mark.cluster
@pytest.mark.parametrize("values", SCENARIOS)
def test_rendered_objects_pass_server_side_validation(api_server: Cluster, values: Path | None) -> None:
    # `restricted` in warn mode: the API server reports any pod template that breaks it.
    ns = _fresh_namespace(api_server, "t-chart-dry", {"pod-security.kubernetes.io/warn": "restricted"})
    try:
        text = render_text(values, namespace=ns)
        n_objs = sum(1 for d in yaml.safe_load_all(text) if d)
        r = api_server.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=text, check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("(server dry run)") == n_objs, r.stdout
        warnings = [w for w in r.stderr.splitlines() if w.startswith("Warning:")]
        # The node agent needs its hostPath (the model cache); nothing else may break `restricted`.
        assert all('volume "model-cache" uses restricted volume type "hostPath"' in w for w in warnings), warnings
        node_agent = "node-agent" in {component(o) for o in yaml.safe_load_all(text) if o}
        assert len(warnings) == (1 if node_agent else 0), warnings
    finally:
        api_server.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.fixture(scope="module")
def release(api_server: Cluster) -> Iterator[tuple[str, str]]:
    """The chart installed with its defaults: (release name, namespace)."""
    ns = _fresh_namespace(api_server, "t-chart")
    name = f"eat-{uuid.uuid4().hex[:5]}"
    r = helm("install", name, str(CHART), "-n", ns, "--kubeconfig", api_server.kubeconfig, "--timeout", "90s")
    assert "STATUS: deployed" in r.stdout, r.stdout
    yield name, ns
    helm("uninstall", name, "-n", ns, "--kubeconfig", api_server.kubeconfig, "--timeout", "60s", check=False)
    api_server.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


@pytest.mark.cluster
def test_install_deploys_every_component(api_server: Cluster, release: tuple[str, str]) -> None:
    name, ns = release
    status = json.loads(helm("status", name, "-n", ns, "--kubeconfig", api_server.kubeconfig, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    sel = f"app.kubernetes.io/instance={name}"
    deployments = {component(d): d for d in api_server.get("deployments", "-n", ns, "-l", sel)["items"]}
    assert set(deployments) == {"operator", "policy", "extender", "scheduler"}
    assert [d["metadata"]["name"] for d in api_server.get("daemonsets", "-n", ns, "-l", sel)["items"]] \
        == [f"{name}-node-agent"]
    sas = {s["metadata"]["name"] for s in api_server.get("serviceaccounts", "-n", ns, "-l", sel)["items"]}
    assert sas == {f"{name}-{c}" for c in COMPONENTS}
    assert api_server.exists("configmap", f"{name}-scheduler", "-n", ns)
    assert api_server.exists("role", f"{name}-scheduler-leader-election", "-n", "kube-system")
    # The controllers accept the pod templates: every Deployment gets its pods (they stay
    # Pending here: no node runs real images).
    wait_until(lambda: {component(p) for p in api_server.get("pods", "-n", ns, "-l", sel)["items"]}
               >= {"operator", "policy", "extender", "scheduler"}, "pods of every Deployment")


def _can_i(cluster: Cluster, ns: str, sa: str, check: tuple[str, ...]) -> bool:
    """`kubectl auth can-i VERB RESOURCE [SCOPE...] --as=<sa>`; the scope defaults to all namespaces."""
    verb, resource, *scope = check
    scope = scope or ["--all-namespaces"]
    r = cluster.kubectl("auth", "can-i", verb, resource, *scope, f"--as=system:serviceaccount:{ns}:{sa}",
                        check=False)
    answer = r.stdout.strip()
    assert answer in ("yes", "no"), r.stderr
    return answer == "yes"


def _rbac_cases(name: str, ns: str) -> dict[str, tuple[list[tuple[str, ...]], list[tuple[str, ...]]]]:
    """Per ServiceAccount: what it must be allowed, and what it must not be."""
    here = ("-n", ns)
    other = ("-n", "default")
    job = "aigcjobs.eat.aigc.io"
    return {
        "operator": ([
            ("list", job), ("watch", job), ("get", job, *other),
            ("patch", job, "--subresource=status"),
            ("create", "pods"), ("delete", "pods"), ("patch", "pods"), ("watch", "pods"), ("get", "pods", *other),
            ("create", "services", *other), ("get", "services", *other), ("list", "nodes"), ("watch", "nodes"), ("create", "events", *other),
            ("create", "leases.coordination.k8s.io", *here),
            ("patch", f"leases.coordination.k8s.io/{name}-operator", *here),
        ], [
            ("get", "secrets"), ("list", "secrets"), ("get", "secrets", *here), ("list", "configmaps"),
            ("delete", "nodes"), ("patch", "nodes"), ("update", job), ("delete", job), ("create", job),
            ("delete", "services"), ("create", "pods", "--subresource=exec"),
            ("patch", "leases.coordination.k8s.io/kube-scheduler", "-n", "kube-system"),
            ("patch", "leases.coordination.k8s.io/someone-else", *here),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io"), ("*", "*"),
        ]),
        "extender": ([
            ("get", "nodes"), ("list", "nodes"), ("watch", "nodes"), ("list", "pods"), ("watch", "pods"),
        ], [
            ("create", "pods"), ("delete", "pods"), ("patch", "pods"), ("create", "pods", "--subresource=binding"),
            ("patch", "nodes"), ("get", "secrets"), ("list", job), ("create", "events"),
        ]),
        "node-agent": ([], [  # no API access at all by default
            ("get", "nodes"), ("patch", "nodes"), ("update", "nodes"), ("list", "pods"), ("create", "pods"),
            ("delete", "pods"), ("patch", job), ("get", "secrets"), ("create", "events"),
        ]),
        "policy": ([], [
            ("list", "nodes"), ("get", "pods"), ("get", "secrets"), ("list", job), ("create", "events"),
        ]),
        "scheduler": ([
            ("create", "pods", "--subresource=binding"), ("patch", "pods", "--subresource=status"),
            ("list", "nodes"), ("watch", "pods"), ("create", "events"),
            ("create", "leases.coordination.k8s.io", "-n", "kube-system"),
            ("update", "leases.coordination.k8s.io/eat-scheduler", "-n", "kube-system"),
            ("get", "configmaps/extension-apiserver-authentication", "-n", "kube-system"),
        ], [
            ("get", "secrets"), ("create", "pods"), ("delete", "nodes"), ("patch", job),
            ("update", "leases.coordination.k8s.io/eat-scheduler", *here),
            ("get", "configmaps", *here),
        ]),
    }


@pytest.mark.cluster
def test_each_service_account_has_least_privilege(api_server: Cluster, release: tuple[str, str]) -> None:
    name, ns = release
    cases = _rbac_cases(name, ns)
    checks = [(comp, want, c) for comp, (yes, no) in cases.items() for want, cs in ((True, yes), (False, no))
              for c in cs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda t: _can_i(api_server, ns, f"{name}-{t[0]}", t[2]), checks))
    wrong = [f"{comp}: can-i {' '.join(c)} -> {'yes' if got else 'no'}, want {'yes' if want else 'no'}"
             for (comp, want, c), got in zip(checks, answers) if got != want]
    assert not wrong, "\n".join(wrong)


@pytest.mark.cluster
def test_uninstall_removes_cluster_scoped_objects(api_server: Cluster) -> None:
    ns = _fresh_namespace(api_server, "t-chart-un")
    name = f"eat-{uuid.uuid4().hex[:5]}"
    kc = ["--kubeconfig", api_server.kubeconfig]
    try:
        helm("install", name, str(CHART), "-n", ns, *kc, "--set", "nodeAgent.annotateNode=true")
        sel = f"app.kubernetes.io/instance={name}"
        assert len(api_server.get("clusterroles", "-l", sel)["items"]) == 3  # operator, extender, node agent
        helm("uninstall", name, "-n", ns, *kc, "--timeout", "60s")
        for kind, extra in (("clusterroles", ()), ("clusterrolebindings", ()), ("roles", ("-n", "kube-system")),
                            ("rolebindings", ("-n", "kube-system"))):
            assert not api_server.get(kind, "-l", sel, *extra)["items"], kind
    finally:
        api_server.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


# --- the components, run here as their ServiceAccounts ---------------------------------------------

def _sa_kubeconfig(cluster: Cluster, ns: str, sa: str, path: Path) -> str:
    """A kubeconfig that authenticates as the ServiceAccount (a short-lived token)."""
    token = cluster.kubectl("create", "token", sa, "-n", ns, "--duration=10m").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    server = dict(admin["clusters"][0]["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": sa,
        "clusters": [{"name": "c", "cluster": server}], "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": "c", "user": sa}}]}))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rendered_env(name: str, ns: str, comp: str) -> dict[str, str]:
    """The release's environment for a component, downward-API values filled in as in a pod."""
    objs = render(None, release=name, namespace=ns, monitoring=False)
    downward = {"metadata.namespace": ns, "metadata.name": f"{name}-{comp}-0", "spec.nodeName": "node-0"}
    return {k: v if isinstance(v, str) else downward[v["fieldRef"]["fieldPath"]]
            for k, v in env_of(container(objs, comp)).items()}


def _forbidden(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "forbidden" in line.lower()]


@pytest.mark.cluster
def test_operator_runs_a_job_as_its_service_account(api_server: Cluster, release: tuple[str, str],
                                                    gpu_nodes: list[str], namespace: str, tmp_path: Path) -> None:
    """The operator with the chart's environment and only the chart's RBAC: it takes its Lease,
    plans (in-process: no policy service here), creates the pod group, patches status, posts
    Events, and the job succeeds on the fake GPU nodes."""
    sys.path.insert(0, str(REPO / "operator"))
    from eat_operator import testing  # noqa: PLC0415

    name, ns = release
    env = _rendered_env(name, ns, "operator")
    env.update({"EAT_OPERATOR_KUBECONFIG": _sa_kubeconfig(api_server, ns, f"{name}-operator", tmp_path / "kc"),
                "EAT_OPERATOR_POLICY_URL": f"http://127.0.0.1:{_free_port()}",  # refused at once: fallback
                "EAT_OPERATOR_METRICS_PORT": "0", "EAT_OPERATOR_LIVENESS_PORT": "0",
                "EAT_OPERATOR_IDENTITY": "chart-test", "EAT_OPERATOR_SIM_DURATION_SCALE": "0.05",
                "EAT_OPERATOR_SIM_DURATION_MAX_S": "2"})
    log = tmp_path / "operator.log"
    with testing.OperatorProcess(env["EAT_OPERATOR_KUBECONFIG"], log, env=env) as op:
        api_server.create({"apiVersion": "eat.aigc.io/v1alpha1", "kind": "AIGCJob", "metadata": {"name": "sa"},
                           "spec": {"prompt": "a lighthouse", "model": "sd15", "steps": 20}}, namespace)

        def done() -> dict[str, Any] | None:
            if not op.alive:
                pytest.fail(f"operator exited:\n{op.log_tail()}")
            st = api_server.get("aigcjob", "-n", namespace, "sa").get("status") or {}
            return st if st.get("phase") in ("Succeeded", "Failed") else None

        st = wait_until(done, "the job to finish", 60)
    assert st["phase"] == "Succeeded", st
    lease = api_server.get("lease", "-n", ns, f"{name}-operator")
    assert lease["spec"]["holderIdentity"] == "chart-test"
    assert {"Planned", "Succeeded"} <= {e["reason"] for e in api_server.events_for(namespace, "sa")}
    assert not _forbidden(log), _forbidden(log)[:5]


@pytest.mark.cluster
def test_extender_syncs_as_its_service_account(api_server: Cluster, release: tuple[str, str], tmp_path: Path) -> None:
    """eat-extender with only the chart's RBAC lists and watches nodes and pods (/readyz)."""
    name, ns = release
    port = _free_port()
    env = {**os.environ, **_rendered_env(name, ns, "extender"),
           "EAT_EXTENDER_KUBECONFIG": _sa_kubeconfig(api_server, ns, f"{name}-extender", tmp_path / "kc"),
           "EAT_EXTENDER_HOST": "127.0.0.1", "EAT_EXTENDER_PORT": str(port),
           "PYTHONPATH": os.pathsep.join([str(REPO / "scheduler_extender"), str(REPO / "policy")])}
    log = tmp_path / "extender.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "eat_extender"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"extender exited:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    return r.status == 200  # nodes and pods listed and watched
            except OSError:
                return False

        wait_until(ready, "extender /readyz (nodes and pods listed)", 45)
    finally:
        proc.kill()  # its watch threads would hold a graceful stop for up to a watch timeout
        proc.wait(10)
    assert not _forbidden(log), _forbidden(log)[:5]


@pytest.mark.cluster
def test_scheduler_leads_as_its_service_account(api_server: Cluster, release: tuple[str, str], tmp_path: Path) -> None:
    """kube-scheduler with the release's ConfigMap and only the chart's RBAC takes the
    kube-system/eat-scheduler Lease and runs its informers without a single `forbidden`."""
    name, ns = release
    kc = _sa_kubeconfig(api_server, ns, f"{name}-scheduler", tmp_path / "kc")
    text = api_server.get("configmap", "-n", ns, f"{name}-scheduler")["data"]["config.yaml"]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text.replace('kubeconfig: ""', f'kubeconfig: "{kc}"'))
    log = tmp_path / "scheduler.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([tool("kube-scheduler"), f"--config={cfg}", f"--authentication-kubeconfig={kc}",
                                 f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1",
                                 f"--secure-port={_free_port()}", f"--cert-dir={tmp_path / 'certs'}", "-v=2"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        def leading() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"kube-scheduler exited:\n{log.read_text()[-3000:]}")
            return any('"Successfully acquired lease"' in line and "kube-system/eat-scheduler" in line
                       for line in log.read_text(errors="replace").splitlines())

        wait_until(leading, "kube-scheduler to acquire kube-system/eat-scheduler", 45)
        wait_until(lambda: 'Caches populated" type="*v1.Node"' in log.read_text(errors="replace"), "node informer", 15)
    finally:
        proc.terminate()
        proc.wait(10)
    assert not _forbidden(log), _forbidden(log)[:5]
