"""FastAPI dependencies of the extender: the cache, the clock and the settings.

Tests and the benchmark swap them through ``app.dependency_overrides`` (a cache they filled
themselves, a clock they move by hand), so no test sleeps or needs a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Annotated, Protocol

from fastapi import Depends, Request

from eat_extender import cache
from eat_extender.settings import Settings, get_settings

CACHE = cache.ClusterCache()
"""The process-wide cache that the watch (started in the app's lifespan) keeps up to date."""


# The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in a worker thread, a hand-off that cost more than the whole decision.


async def get_cache() -> cache.ClusterCache:
    """``CACHE``."""
    return CACHE


async def get_clock() -> Callable[[], float]:
    """Monotonic seconds: gang holds are deadlines on this clock."""
    return time.monotonic


async def settings() -> Settings:
    """``settings.get_settings()`` (cached), as a dependency that tests may override."""
    return get_settings()


class Refresher(Protocol):
    def refresh_nodes(self, nodes: Iterable[str]) -> bool: ...


async def get_refresher(request: Request) -> Refresher | None:
    """What re-reads nodes before a capacity rejection: the app's watcher (none without a watch)."""
    return getattr(request.app.state, "watcher", None)


CacheDep = Annotated[cache.ClusterCache, Depends(get_cache)]
ClockDep = Annotated[Callable[[], float], Depends(get_clock)]
SettingsDep = Annotated[Settings, Depends(settings)]
RefresherDep = Annotated[Refresher | None, Depends(get_refresher)]
