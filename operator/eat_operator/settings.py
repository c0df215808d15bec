"""Operator settings, read from ``EAT_OPERATOR_*`` environment variables.

Grouped by concern like kopf's ``OperatorSettings``: where the policy is, how the dispatcher
batches, how failures are retried, and what the pods of a group look like. Every field says
its unit and why its default was chosen. Nested values (resources, volumes, node selector)
are given as JSON, e.g. ``EAT_OPERATOR_NODE_SELECTOR='{"eat.aigc.io/fake-node": "true"}'``.
"""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


JOB_ENV = frozenset({
    "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "EAT_INFER_JOB", "EAT_INFER_MODEL", "EAT_INFER_PROMPT",
    "EAT_INFER_NEGATIVE_PROMPT", "EAT_INFER_WIDTH", "EAT_INFER_HEIGHT", "EAT_INFER_STEPS", "EAT_INFER_GUIDANCE_SCALE",
    "EAT_INFER_SEED", "EAT_INFER_OUTPUT", "EAT_INFER_OUTPUT_URI", "EAT_INFER_CACHE_DIR",
})
"""Environment the pod group builder sets from the job, its plan and the rank."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EAT_OPERATOR_", extra="ignore", frozen=True)

    # --- the policy --------------------------------------------------------------------
    policy_url: str | None = "http://eat-policy:8000"
    """Base URL of the policy service (``POST /v1/plan``). None or empty: always plan in-process."""
    policy_timeout_s: float = Field(default=2.0, gt=0)
    """Bound on one plan request; past it the in-process heuristic plans (never stall)."""
    policy_retry_after_s: float = Field(default=10.0, ge=0)
    """After the service failed, plan in-process this long before trying it again, so a
    dead service costs one timeout per interval, not one per batch."""
    models: tuple[str, ...] = ()
    """Models jobs may ask for, among the policy's catalog (a model it does not know cannot be
    planned); empty: the whole catalog (sd15, sdxl, sdxl-turbo)."""

    # --- the dispatcher ------------------------------------------------------------------
    batch_size: int = Field(default=32, ge=1, le=1024)
    """Pending jobs per plan request: the policy service's window (``EAT_POLICY_WINDOW``)."""
    batches_per_cycle: int = Field(default=8, ge=1)
    """Batches' worth of pending jobs a dispatcher cycle shows the policy: it sends plan
    requests, each for pending jobs it has not shown yet (so held jobs do not block those
    behind them), until it has shown ``batches_per_cycle × batch_size`` jobs. A batch holds
    one priority, so the requests are not what is bounded: held jobs at many priorities would
    use them all up, every cycle."""
    cycle_interval_s: float = Field(default=0.5, gt=0)
    """Longest sleep between cycles; watch events wake the loop earlier."""
    cycle_min_interval_s: float = Field(default=0.05, ge=0)
    """Shortest pause between cycles, so a burst of events is handled in batches."""
    resync_interval_s: float = Field(default=60.0, gt=0)
    """Full relist of jobs, pods and nodes, repairing anything a watch stream missed."""
    api_concurrency: int = Field(default=32, ge=1)
    """API requests in flight at once (pod creation, status patches)."""
    pending_status_interval_s: float = Field(default=10.0, ge=0)
    """A Pending job's reason (held by the policy, no free GPU, waiting) is rewritten at most
    this often: in a burst it changes batch by batch, and each rewrite is an API write (in a
    1,000-job burst on 100 nodes, 1.7 writes per job at 5 s)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Only nodes with these labels are offered to the policy and used by pods."""

    # --- failures --------------------------------------------------------------------------
    backoff_limit: int = Field(default=3, ge=0)
    """Failed attempts retried before the job is Failed (as a Kubernetes Job's backoffLimit)."""
    replan_limit: int = Field(default=10, ge=0)
    """Re-plans for causes that are not the job's fault (unschedulable, node lost)."""
    unschedulable_timeout_s: float = Field(default=60.0, gt=0)
    """A group not fully bound this long after its gate was lifted is torn down and re-planned;
    one whose pods, gate lifts or Service the API server still refuses (or whose names other
    objects still hold) this long after the plan and the first refusal, or one with a member
    whose container still cannot start (image pull, configuration) this long after binding,
    fails the attempt."""
    node_not_ready_grace_s: float = Field(default=40.0, ge=0)
    """A node NotReady for less than this is not lost yet: the groups bound to it are left
    alone, since a kubelet's brief silence (a restart, a network blip) must not kill them; it is
    offered no new work meanwhile. (kube-controller-manager takes 40 s of silence to mark a
    node NotReady, and evicts its pods 5 minutes after that.)"""
    unschedulable_rest_s: float = Field(default=120.0, ge=0)
    """After that timeout, the nodes that kept the pods unbound are offered to no plan for
    this long: what kept the pods off them (CPU, memory, pod slots, affinity) is not in the
    snapshot, so the policy would pick them again and wait another timeout."""

    # --- leadership --------------------------------------------------------------------------
    leader_election: bool = True
    """Only the holder of the Lease dispatches; other replicas watch and wait."""
    lease_name: str = "eat-operator"
    lease_namespace: str = "default"
    lease_duration_s: float = Field(default=15.0, gt=0)
    """A leader that stops renewing loses the Lease after this long (kube-controller-manager's default)."""
    identity: str = Field(default_factory=socket.gethostname)
    """Holder identity: the pod name in a cluster, so a restarted container keeps its Lease."""

    # --- the pod group -----------------------------------------------------------------------
    image: str = "eat-inference:latest"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=lambda: {"requests": {"cpu": "1", "memory": "4Gi"}})
    """Container resources; the one GPU per pod is added to limits by the operator."""
    scheduler_name: str = "eat-scheduler"
    master_port: int = Field(default=29500, gt=0, le=65535 - 63)
    """Rank 0's TCPStore port (torchrun's default) in the first attempt; later attempts use the
    next ports, up to 63 above (``podgroup.RENDEZVOUS_PORTS``)."""
    model_cache_host_path: str | None = "/var/lib/eat/models"
    """Node-local model cache (hostPath); None: an emptyDir (always cold)."""
    model_cache_mount: str = "/models"
    output_host_path: str | None = None
    """Where images are written on the node; None: an emptyDir."""
    output_mount: str = "/output"
    """Where the output volume is mounted. Rank 0 writes ``image.png`` and ``report.json`` into
    ``<output_mount>/<namespace>/<name>/`` (``EAT_INFER_OUTPUT``, a directory, as eat-infer reads it)."""
    output_root: str = "file:///output"
    """The output volume as seen from outside the pod: a job that names no output location
    reports ``<output_root>/<namespace>/<name>/image.png``."""
    extra_volumes: list[dict[str, Any]] = Field(default_factory=list)
    extra_volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    extra_env: list[dict[str, Any]] = Field(default_factory=list)
    """More environment of the inference container (EnvVar objects: ``name`` with ``value`` or
    ``valueFrom``), after the operator's own, e.g. ``EAT_INFER_STORE`` or ``EAT_INFER_MODE``.
    The variables the operator sets per pod (``JOB_ENV``) cannot be overridden."""
    security_context: dict[str, Any] | None = None
    """securityContext of the inference container (runAsNonRoot, capabilities, ...); None: none."""
    pod_security_context: dict[str, Any] | None = None
    """securityContext of the inference pods (runAsUser, fsGroup for a hostPath output, ...)."""
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    termination_grace_period_s: int = Field(default=30, ge=0)
    service_account: str | None = None
    sim_duration_scale: float = Field(default=1.0, gt=0)
    """Fake (kwok) nodes run a pod for predicted latency × this; tests shrink it."""
    sim_duration_max_s: float = Field(default=600.0, gt=0)

    # --- observability ---------------------------------------------------------------------
    metrics_port: int = Field(default=8080, ge=0, lt=65536)
    """Prometheus /metrics port; 0: do not serve."""
    liveness_port: int = Field(default=8081, ge=0, lt=65536)
    """kopf's /healthz port; 0: do not serve."""
    kubeconfig: str | None = None
    """Kubeconfig file; None: $KUBECONFIG, then the in-cluster service account."""

    @field_validator("extra_env")
    @classmethod
    def _env_of_our_own(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for e in v:
            name = e.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"an extra env entry needs a name: {e}")
            if name in JOB_ENV:
                raise ValueError(f"{name} is set by the operator for each pod and cannot be overridden")
        return v

    @field_validator("models")
    @classmethod
    def _models_the_policy_knows(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from eat_policy.sim import catalog  # plain data; no numpy at import

        known = [m.name for m in catalog.MODELS]
        unknown = [m for m in v if m not in known]
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))} not in the policy's catalog ({', '.join(known)}): "
                             "jobs asking for it could never be planned")
        return v

    @field_validator("policy_url")
    @classmethod
    def _empty_means_none(cls, v: str | None) -> str | None:
        # An env var cannot carry None; EAT_OPERATOR_POLICY_URL="" turns the service off.
        return v or None
