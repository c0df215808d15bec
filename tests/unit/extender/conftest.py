"""Fixtures of the extender's unit tests: a cluster state or a cache, and an app client on it."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import eat_extender  # noqa: F401
except ImportError:  # not installed yet: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scheduler_extender"))

from eat_extender import cache, deps, state, wire
from eat_extender.app import app

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx backend on import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def build_state(nodes: list[dict[str, Any]], pods: list[dict[str, Any]] = (),  # type: ignore[assignment]
                admissions: dict[str, float] | None = None) -> state.ClusterState:
    return state.build([wire.Node.model_validate(n) for n in nodes], [wire.Pod.model_validate(p) for p in pods],
                       admissions)


def fill(c: cache.ClusterCache, nodes: list[dict[str, Any]], pods: list[dict[str, Any]] = ()) -> cache.ClusterCache:  # type: ignore[assignment]
    c.replace_nodes([wire.Node.model_validate(n) for n in nodes])
    c.replace_pods([wire.Pod.model_validate(p) for p in pods])
    return c


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def the_cache(clock: Clock) -> cache.ClusterCache:
    return cache.ClusterCache(clock=clock)


@pytest.fixture
def client(the_cache: cache.ClusterCache, clock: Clock) -> Iterator[Any]:
    """A TestClient on the app with the test's cache and clock (no lifespan: no watch)."""
    app.dependency_overrides[deps.get_cache] = lambda: the_cache
    app.dependency_overrides[deps.get_clock] = lambda: clock
    yield TestClient(app)
    app.dependency_overrides.clear()
