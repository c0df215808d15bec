"""Contracts shared by the operator, the policy service, the extender and the node agent.

This module is the one place for: the ``POST /v1/plan`` wire schemas, the Kubernetes label
and annotation keys, and the node-agent metric names. It imports nothing of ours and no
numerical library, so the operator and the extender can import it without torch or numpy.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "v1"

# --- Kubernetes keys ----------------------------------------------------------------------

GROUP = "eat.aigc.io"
CRD_VERSION = "v1alpha1"
CRD_KIND, CRD_PLURAL, CRD_SHORT = "AIGCJob", "aigcjobs", "aj"
SCHEDULER_NAME = "eat-scheduler"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

LABEL_POD_GROUP = f"{GROUP}/pod-group"
"""Pod label: the AIGCJob (pod group) a pod belongs to."""
LABEL_RANK = f"{GROUP}/rank"
LABEL_ATTEMPT = f"{GROUP}/attempt"
"""Pod label: which attempt of the job the pod group belongs to (retries re-plan)."""
ANNOTATION_GROUP_SIZE = f"{GROUP}/group-size"
"""Pod annotation: how many pods (patches, k) the gang has."""
ANNOTATION_PLANNED_NODE = f"{GROUP}/planned-node"
"""Pod annotation: the node the policy planned for this pod; the extender enforces it."""
ANNOTATION_GROUP_NODES = f"{GROUP}/group-nodes"
"""Pod annotation: comma-separated planned node of every rank, rank order (for the gang guard)."""
ANNOTATION_MODEL = f"{GROUP}/model"
"""Pod annotation: the model the pod runs (unplanned pods prefer nodes that cache it)."""
ANNOTATION_CACHED_MODELS = f"{GROUP}/cached-models"
"""Node annotation: comma-separated models in the node's disk cache (set by the node agent)."""
LABEL_GPU_TYPE = f"{GROUP}/gpu-type"
LABEL_NODE_POOL = f"{GROUP}/node-pool"
ANNOTATION_SIM_DURATION = f"{GROUP}/sim-duration-seconds"
"""Pod annotation read by the fake (kwok) nodes: run this long, then succeed."""
ANNOTATION_SIM_FAIL = f"{GROUP}/sim-fail"
SCHEDULING_GATE = f"{GROUP}/gang"
"""Pod scheduling gate lifted once the whole group exists."""
OUTPUT_LOCATION_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$"
"""An AIGCJob's ``outputLocation``: ``s3://<bucket>/<key>`` (S3 bucket naming), where rank 0
uploads the image. The CRD's schema holds the same pattern."""

# --- node-agent metrics (Prometheus), read by the policy service ---------------------------

METRIC_MODEL_CACHED = "eat_node_model_cached"
"""Gauge {node, model}: 1 when the model is in the node's disk cache, else absent or 0."""
METRIC_MODEL_RESIDENT = "eat_node_model_resident"
"""Gauge {node, model, gpu}: 1 when a serving process holds the model in that GPU's memory."""
METRIC_MODEL_BYTES = "eat_node_model_bytes"
"""Gauge {node, model}: bytes of the cached model on disk."""
METRIC_MODEL_LOAD_SECONDS = "eat_node_model_last_load_seconds"
"""Gauge {node, model}: duration of the last load of the model (fetch included when cold)."""
METRIC_CACHE_FREE_BYTES = "eat_node_cache_free_bytes"
"""Gauge {node}: free bytes in the node's model cache."""
DCGM_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"

# --- POST /v1/plan ---------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(_Model):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


LATEST_TIME = 32_503_680_000.0
"""Unix time of the year 3000: the latest a request's clock readings may be (422 beyond)."""
UnixTime = Annotated[float, Field(ge=0, le=LATEST_TIME)]
MAX_GPU_MEM_GB = 1024.0
"""The most memory a node's GPU may report (422 beyond): a bound that keeps the policy's
float32 features finite, far above any GPU made."""
MAX_DISK_GB = 1_000_000.0
"""The largest model cache a node may report (a petabyte; 422 beyond)."""


class JobRequest(_Request):
    id: str = Field(min_length=1, max_length=253, description="Job identity, e.g. namespace/name.")
    model: str = Field(min_length=1, max_length=128)
    width: int = Field(ge=64, le=4096, multiple_of=8)
    height: int = Field(ge=64, le=4096, multiple_of=8)
    steps_min: int = Field(ge=1, le=200)
    steps_max: int = Field(ge=1, le=200)
    deadline_s: float | None = Field(default=None, gt=0, le=LATEST_TIME,
                                     description="Seconds after arrival; none: best effort.")
    arrival_time: UnixTime = Field(description="Unix time the job was submitted.")
    patches: int | None = Field(default=None, description="Fixed patch count; none: the policy chooses.")
    max_patches: int | None = Field(default=None, ge=1, le=8)
    priority: int = 0


class NodeInfo(_Request):
    name: str = Field(min_length=1, max_length=253)
    gpu_product: str = Field(default="", description="nvidia.com/gpu.product label value.")
    gpus_total: int = Field(ge=0, le=64)
    gpus_free: int = Field(ge=0, le=64)
    gpu_free_at: list[UnixTime] = Field(default_factory=list, description="Unix times busy GPUs are expected to free.")
    ready: bool = True
    cached_models: list[str] = Field(default_factory=list)
    resident_models: list[str] = Field(default_factory=list)
    gpu_mem_gb: float | None = Field(default=None, gt=0, le=MAX_GPU_MEM_GB)
    disk_gb: float | None = Field(default=None, gt=0, le=MAX_DISK_GB)


class PlanRequest(_Request):
    jobs: list[JobRequest] = Field(max_length=1024)
    nodes: list[NodeInfo] = Field(max_length=4096)
    now: UnixTime | None = Field(default=None, description="Unix time of the snapshot; default: the server's clock.")


class JobDecision(_Model):
    job: str
    action: Literal["dispatch", "wait"]
    patches: int = 0
    nodes: list[str] = Field(default_factory=list, description="Node of each rank, rank order.")
    steps: int = 0
    predicted_latency_s: float | None = None
    predicted_quality: float | None = None
    cache: str | None = Field(default=None, description="resident, disk or store: the worst member's model state.")
    explanation: list[str] = Field(default_factory=list)
    reason: str | None = None


class PolicyInfo(_Model):
    name: str
    version: str
    fallback: bool = False
    fallback_reason: str | None = None


class MetricsSource(_Model):
    used: bool
    error: str | None = None
    stale_nodes: list[str] = Field(default_factory=list)


class PlanResponse(_Model):
    api_version: str = API_VERSION
    decisions: list[JobDecision]
    policy: PolicyInfo
    metrics: MetricsSource
