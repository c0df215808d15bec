"""Settings of eat-extender, from ``EAT_EXTENDER_*`` environment variables.

The Helm chart maps its values to these variables one to one; the local control plane
(hack/cluster) points kube-scheduler at ``http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EAT_EXTENDER_", extra="ignore")

    host: str = "0.0.0.0"
    """Address to listen on. All interfaces by default: kube-scheduler reaches the extender
    through a Service in a cluster; use 127.0.0.1 beside a local control plane."""
    port: int = Field(default=8080, ge=1, le=65535)
    """TCP port of the HTTP server (the scheduler config's ``urlPrefix`` must name it)."""
    kubeconfig: str | None = None
    """Kubeconfig file for the watch. Unset: the in-cluster service account, else
    ``$KUBECONFIG`` / ``~/.kube/config``."""
    watch: bool = True
    """Watch nodes and pods. Off only for tests and benchmarks that fill the cache themselves."""
    resync_s: float = Field(default=300.0, gt=0)
    """Seconds between full re-lists of nodes and pods (the watch is resumed in between). A
    re-list repairs any drift a missed event could cause; five minutes keeps its cost (one
    list of all pods) negligible next to the scheduler's own informers."""
    watch_timeout_s: float = Field(default=60.0, gt=0)
    """Server-side timeout of one watch request, seconds; the watch resumes from the last
    resourceVersion after it. Bounds how long a stopped extender waits for its threads."""
    backoff_max_s: float = Field(default=30.0, gt=0)
    """Longest wait between retries when the API server cannot be reached, seconds (doubling
    from 0.5 s)."""
    gang_hold_s: float = Field(default=30.0, ge=0)
    """Seconds an admitted pod group's remaining GPUs stay held for it. kube-scheduler places
    one member per cycle (milliseconds each), so 30 s covers a whole group with a wide margin
    while a group that never completes frees its GPUs soon."""
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    """Python/uvicorn log level (``trace``: uvicorn's; Python logging then logs at debug)."""


@functools.lru_cache
def get_settings() -> Settings:
    return Settings()
