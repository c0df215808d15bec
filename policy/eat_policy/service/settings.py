"""Service settings, read from ``EAT_POLICY_*`` environment variables (and CLI flags)."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EAT_POLICY_", extra="ignore")

    checkpoint: Path | None = None
    """Learned policy checkpoint (.pt). None or unloadable: the fallback heuristic answers."""
    fallback_policy: str = "edf-cache-queue-fit"
    """The heuristic that answers when the learned policy cannot (the strongest one measured)."""
    device: str = "cpu"
    """Torch device for the learned policy (``cpu``, ``cuda``, ``cuda:1``). Decisions take
    milliseconds on CPU; an unusable device means the checkpoint does not load (fallback)."""
    threads: int = Field(default=1, ge=1, le=256)
    """Torch CPU threads. One keeps latency predictable next to other processes (measured:
    the default, one per core, gave p99 ~1 s on a busy 2-core machine)."""
    prometheus_url: str | None = None
    """Prometheus base URL, e.g. http://prometheus:9090. None: plan from the request alone."""
    prometheus_timeout_s: float = Field(default=0.3, gt=0)
    """Bound on each Prometheus query: planning must not stall behind a slow Prometheus."""
    metrics_staleness_s: float = Field(default=60.0, gt=0)
    """Samples older than this are ignored (a dead node agent must not look warm forever)."""
    gpu_saturated_util: float = Field(default=0.9, gt=0, le=1)
    """A GPU the request calls free but DCGM shows at least this busy is treated as busy."""
    dcgm_node_label: str = "Hostname"
    """Label carrying the node name on DCGM series (the exporter's default)."""
    busy_guess_s: float = Field(default=30.0, gt=0)
    """When a busy GPU's release time is unknown, assume it frees this far ahead (0 would read
    busy GPUs as idle)."""
    gpu_keeps_model: bool = False
    """Whether a GPU keeps a job's model loaded once the job ends (a warm pool of inference
    workers). The operator runs one pod per job rank and the model leaves GPU memory with it, so
    by default a dispatch warms its nodes' disks, not its GPUs, as in the physics ``eat-edge-pods``
    is trained on (``--no-gpu-keeps-model``). A node's ``resident_models`` count either way."""
    reuse: int = Field(default=32, ge=1, le=1024)
    """Dispatches taken from one pass of the learned policy at the same instant before it runs
    again (1: a fresh pass per dispatch). Bounds request latency; see the README for its cost."""
    window: int = Field(default=32, ge=1, le=1024)
    """Jobs the policy considers per request (oldest first); the rest wait."""


@functools.lru_cache
def get_settings() -> Settings:
    return Settings()
