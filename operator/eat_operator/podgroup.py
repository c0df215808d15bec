"""The pod group of one AIGCJob attempt: k pods ``<job>-<rank>`` and a headless Service.

Everything here is a pure function of the job, its plan (from status, the source of truth)
and the settings, so re-creating a missing pod after a restart yields the same pod, and a
name that already exists means the pod exists: nothing is ever created twice.

Each pod asks for one GPU, goes to ``eat-scheduler``, names its planned node twice (the
annotation the extender enforces, and a preferred node affinity that keeps the plan when
the extender is down), and waits behind a scheduling gate until the whole group exists,
so kube-scheduler never binds half a gang.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from eat_policy import api
from eat_policy.sim import catalog

from eat_operator import settings as settings_mod
from eat_operator import snapshot, spec as spec_mod

Obj = dict[str, Any]

MANAGED_BY = "eat-operator"
T = TypeVar("T")


def pod_name(job: str, rank: int) -> str:
    return f"{job}-{rank}"


def owner_reference(job: snapshot.JobView) -> Obj:
    return {
        "apiVersion": f"{api.GROUP}/{api.CRD_VERSION}", "kind": api.CRD_KIND, "name": job.name, "uid": job.uid,
        "controller": True, "blockOwnerDeletion": True,
    }


def output_dir(job: snapshot.JobView, s: settings_mod.Settings) -> str:
    """The directory, on the mounted output volume, where rank 0 writes image.png and report.json."""
    return f"{s.output_mount.rstrip('/')}/{job.namespace}/{job.name}"


def output_location(job: snapshot.JobView, spec: spec_mod.JobSpec, s: settings_mod.Settings) -> str:
    """What status reports: the job's own outputLocation (rank 0 uploads the image there, and
    exits non-zero if it cannot), else the image on the output volume."""
    return spec.output_location or f"{s.output_root.rstrip('/')}/{job.namespace}/{job.name}/image.png"


def sim_duration_s(plan: Obj, s: settings_mod.Settings) -> float:
    predicted = float(plan.get("predictedLatencySeconds") or 1.0)
    return round(min(max(predicted * s.sim_duration_scale, 0.05), s.sim_duration_max_s), 3)


RENDEZVOUS_PORTS = 64
"""Attempt n's rank 0 listens on ``master_port + (n - 1) % RENDEZVOUS_PORTS``. Pod names
repeat across attempts, so a container of an earlier attempt still running on a partitioned
node resolves the same rank-0 name; on another port it cannot join the new gang."""


def rendezvous_port(s: settings_mod.Settings, attempt: int) -> int:
    return s.master_port + (attempt - 1) % RENDEZVOUS_PORTS


def service(job: snapshot.JobView, s: settings_mod.Settings) -> Obj:
    """Headless Service ``<job>``: stable DNS for rank 0 (MASTER_ADDR) before pods are Ready.
    Only groups of two or more pods get one: a single pod has no rendezvous. Its port is the
    first attempt's; a headless Service's DNS name reaches any port of the pod."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job.name, "namespace": job.namespace,
            "labels": {api.LABEL_POD_GROUP: job.name, "app.kubernetes.io/managed-by": MANAGED_BY},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": {api.LABEL_POD_GROUP: job.name},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": s.master_port, "targetPort": s.master_port}],
        },
    }


def default_guidance(model: str) -> float | None:
    """The guidance of a job that sets none: 0 (no classifier-free guidance) for a model the
    catalog runs without it (SDXL-Turbo, distilled for that; planned at one UNet pass per step),
    else the runner's default."""
    return None if catalog.MODEL_BY_NAME[model].cfg else 0.0


def literal(text: str) -> str:
    """An env ``value`` the container sees as ``text``: the kubelet expands ``$(VAR)`` (with the
    variables defined before it, RANK among them) and turns ``$$`` into ``$``."""
    return text.replace("$", "$$")


def pods(job: snapshot.JobView, spec: spec_mod.JobSpec, plan: Obj, attempt: int,
         s: settings_mod.Settings) -> list[Obj]:
    """All k pods of this attempt, rank order."""
    nodes: list[str] = list(plan.get("nodes") or [])
    return [pod(job, spec, plan, attempt, rank, s) for rank in range(len(nodes))]


def pod(job: snapshot.JobView, spec: spec_mod.JobSpec, plan: Obj, attempt: int, rank: int,
        s: settings_mod.Settings) -> Obj:
    nodes: list[str] = list(plan.get("nodes") or [])
    k = len(nodes)
    node = nodes[rank]
    name = pod_name(job.name, rank)
    steps = int(plan.get("steps") or 0)
    port = rendezvous_port(s, attempt)
    env = [
        {"name": "RANK", "value": str(rank)},
        {"name": "WORLD_SIZE", "value": str(k)},
        {"name": "MASTER_ADDR", "value": f"{pod_name(job.name, 0)}.{job.name}.{job.namespace}.svc"},
        {"name": "MASTER_PORT", "value": str(port)},
        {"name": "EAT_INFER_JOB", "value": f"{job.namespace}/{job.name}"},
        {"name": "EAT_INFER_MODEL", "value": spec.model},
        {"name": "EAT_INFER_PROMPT", "value": literal(spec.prompt)},
        {"name": "EAT_INFER_WIDTH", "value": str(spec.width)},
        {"name": "EAT_INFER_HEIGHT", "value": str(spec.height)},
        {"name": "EAT_INFER_STEPS", "value": str(steps)},
        {"name": "EAT_INFER_OUTPUT", "value": output_dir(job, s)},
        {"name": "EAT_INFER_CACHE_DIR", "value": s.model_cache_mount},
    ]
    if spec.negative_prompt:
        env.append({"name": "EAT_INFER_NEGATIVE_PROMPT", "value": literal(spec.negative_prompt)})
    guidance = default_guidance(spec.model) if spec.guidance_scale is None else spec.guidance_scale
    if guidance is not None:
        env.append({"name": "EAT_INFER_GUIDANCE_SCALE", "value": str(guidance)})
    if spec.seed is not None:
        env.append({"name": "EAT_INFER_SEED", "value": str(spec.seed)})
    if spec.output_location:
        env.append({"name": "EAT_INFER_OUTPUT_URI", "value": literal(spec.output_location)})
    env += _copy(s.extra_env)
    resources = _copy(s.resources)
    resources.setdefault("limits", {})[api.GPU_RESOURCE] = "1"
    container: Obj = {
        "name": "inference",
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "env": env,
        "resources": resources,
        # eat-infer says why it failed on stderr (exit codes 2-6): the kubelet then puts the
        # log's tail in the termination message, which the job's status reports.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "ports": [{"name": "rendezvous", "containerPort": port}] if rank == 0 else [],
        "volumeMounts": [
            {"name": "model-cache", "mountPath": s.model_cache_mount},
            {"name": "output", "mountPath": s.output_mount},
            *s.extra_volume_mounts,
        ],
    }
    if s.security_context:
        container["securityContext"] = _copy(s.security_context)
    if s.command:
        container["command"] = list(s.command)
    if s.args:
        container["args"] = list(s.args)
    volumes = [
        _volume("model-cache", s.model_cache_host_path),
        _volume("output", s.output_host_path),
        *s.extra_volumes,
    ]
    pod_spec: Obj = {
        "schedulerName": s.scheduler_name,
        "restartPolicy": "Never",
        # A one-pod group is whole as soon as it exists: no gate to lift (one request less).
        "schedulingGates": [{"name": api.SCHEDULING_GATE}] if k > 1 else [],
        "hostname": name,
        "subdomain": job.name,
        "terminationGracePeriodSeconds": s.termination_grace_period_s,
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [node]}]}},
        ]}},
        "tolerations": list(s.tolerations),
        "containers": [container],
        "volumes": volumes,
    }
    if s.node_selector:
        pod_spec["nodeSelector"] = dict(s.node_selector)
    if s.pod_security_context:
        pod_spec["securityContext"] = _copy(s.pod_security_context)
    annotations = {
        api.ANNOTATION_GROUP_SIZE: str(k),
        api.ANNOTATION_PLANNED_NODE: node,
        api.ANNOTATION_GROUP_NODES: ",".join(nodes),
        api.ANNOTATION_MODEL: spec.model,
        api.ANNOTATION_SIM_DURATION: str(sim_duration_s(plan, s)),
    }
    if rank == 0 and sim_fails(job, attempt):
        annotations[api.ANNOTATION_SIM_FAIL] = "true"
    if s.service_account:
        pod_spec["serviceAccountName"] = s.service_account
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": {
                api.LABEL_POD_GROUP: job.name,
                api.LABEL_RANK: str(rank),
                api.LABEL_ATTEMPT: str(attempt),
                "app.kubernetes.io/name": "eat-inference",
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
            "annotations": annotations,
            "ownerReferences": [owner_reference(job)],
        },
        "spec": pod_spec,
    }


def sim_fails(job: snapshot.JobView, attempt: int) -> bool:
    """Fault injection for fake nodes: the job's ``sim-fail`` annotation makes rank 0 fail.

    ``"true"`` fails every attempt; a number n fails the first n attempts (then it succeeds).
    """
    raw = ((job.body.get("metadata") or {}).get("annotations") or {}).get(api.ANNOTATION_SIM_FAIL)
    if raw is None:
        return False
    if raw.strip().lower() == "true":
        return True
    try:
        return attempt <= int(raw)
    except ValueError:
        return False


def _copy(value: T) -> T:
    """A deep copy: settings are shared by every pod, and manifests get modified downstream."""
    out: T = json.loads(json.dumps(value))
    return out


def _volume(name: str, host_path: str | None) -> Obj:
    if host_path:
        return {"name": name, "hostPath": {"path": host_path, "type": "DirectoryOrCreate"}}
    return {"name": name, "emptyDir": {}}


def lift_gate_patch() -> Obj:
    """Merge patch that removes the scheduling gate (gates may only be removed, never added)."""
    return {"spec": {"schedulingGates": None}}
