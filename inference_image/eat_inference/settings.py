"""Settings of ``eat-infer run`` (``EAT_INFER_*``) and of ``eat-node-agent`` (``EAT_NODE_AGENT_*``).

The operator sets these as environment variables on the pods it creates (and the rendezvous
variables RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, read by :mod:`eat_inference.rendezvous`);
command-line options override them.
"""

from __future__ import annotations

import pathlib
import socket
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from eat_policy import api

DEFAULT_CACHE_DIR = pathlib.Path("/var/cache/eat/models")
GiB = 1 << 30


class CacheSettings(BaseSettings):
    """Where the node's model cache lives and where models come from."""

    cache_dir: pathlib.Path = DEFAULT_CACHE_DIR
    """Node-local cache directory (a hostPath shared by the node's pods and the node agent)."""
    cache_capacity_bytes: int = Field(default=200 * GiB, gt=0)
    """Bytes the cache may hold; least-recently-used models are evicted beyond it. 200 GiB fits
    some 40 fp16 SD 1.x/2.x checkpoints, a common NVMe share on a GPU node."""
    store: str | None = None
    """Model store: a mounted directory, file://, http:// or https:// base URL holding
    ``<model>.tar`` and ``<model>.tar.sha256``. None: cache hits only."""
    store_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds to wait for the store to answer (connect and each read), not for a whole download."""
    lock_timeout_s: float = Field(default=1800.0, gt=0)
    """Seconds to wait for another process fetching the same model: a large model over a slow link."""


class InferSettings(CacheSettings):
    """One image of one job, produced by ``WORLD_SIZE`` ranks."""

    model_config = SettingsConfigDict(env_prefix="EAT_INFER_", extra="ignore")

    model: str = "tiny-sd"
    """Model name in the cache and the store (also the AIGCJob's ``model``)."""
    model_path: pathlib.Path | None = None
    """A local diffusers folder to load directly, bypassing the cache (development)."""
    expected_sha256: str | None = None
    """sha256 of the model's archive; None: the store's ``.sha256`` file."""
    job: str = ""
    """Job identity for the report (namespace/name of the AIGCJob)."""
    prompt: str = "a photo of a cat"
    negative_prompt: str | None = None
    height: int | None = Field(default=None, ge=8)
    """Image height in pixels; None: the model's native size."""
    width: int | None = Field(default=None, ge=8)
    steps: int = Field(default=25, ge=1, le=1000)
    guidance_scale: float = Field(default=7.5, ge=0.0)
    seed: int = 0
    mode: Literal["sync", "displaced", "naive", "cfg"] = "displaced"
    """Patch mode; see :mod:`eat_inference.pipeline`."""
    warmup_steps: int = Field(default=4, ge=0)
    """Synchronous steps before displaced ones (DistriFusion's default)."""
    comm_buckets: int = Field(default=4, ge=1)
    output: pathlib.Path = pathlib.Path("out")
    """Directory where rank 0 writes ``image.png`` and ``report.json``."""
    output_uri: str | None = Field(default=None, pattern=api.OUTPUT_LOCATION_PATTERN, max_length=1024)
    """The job's ``outputLocation``, ``s3://<bucket>/<key>``: rank 0 also uploads the image
    there (:mod:`eat_inference.upload`). None: the output directory only."""
    s3_endpoint: str = Field(default="https://s3.amazonaws.com", pattern=r"^https?://[^/]+/?$")
    """The S3-compatible store of ``output_uri``: http(s)://host[:port] (MinIO, Ceph RGW, ...)."""
    s3_region: str | None = None
    """The bucket's region; None: asked of the store."""
    s3_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds to wait for the store to connect and to answer each read."""
    save_array: bool = False
    """Also write ``image.npy`` (float32 H×W×3 in [0, 1]) for exact comparisons."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda:LOCAL_RANK when a GPU is visible, else cpu."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """auto: float16 on GPU, float32 on CPU (diffusers' default there)."""
    threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads; None: torch's default."""
    rendezvous_timeout_s: float = Field(default=120.0, gt=0)
    """Bound on assembling the gang: pods of one group start within seconds of each other once
    their scheduling gate is lifted; two minutes covers image pulls already on the node."""
    load_timeout_s: float = Field(default=1800.0, gt=0)
    """Bound on waiting for the slowest rank to fetch and load the model (a cold 5 GB model)."""
    op_timeout_s: float = Field(default=300.0, gt=0)
    """Bound on one collective after loading: a rank that died mid-image."""


class AgentSettings(CacheSettings):
    """The node agent: one per node (DaemonSet), reporting and pre-warming the node's cache."""

    model_config = SettingsConfigDict(env_prefix="EAT_NODE_AGENT_", extra="ignore")

    node_name: str = Field(default_factory=socket.gethostname)
    """Kubernetes node name (set from the downward API's spec.nodeName)."""
    host: str = "0.0.0.0"
    port: int = Field(default=9101, gt=0, lt=65536)
    """HTTP port for /metrics and the pre-warm API (9101: next to node-exporter's 9100)."""
    annotate_node: bool = False
    """Also keep the node annotation of cached models up to date (needs RBAC to patch nodes)."""
    annotate_interval_s: float = Field(default=30.0, gt=0)
    """Seconds between annotation refreshes (the policy reads metrics; the extender reads this)."""
