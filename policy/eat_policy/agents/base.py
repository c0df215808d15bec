"""The policy interface every scheduler implements, and the registry of them by name."""

from __future__ import annotations

from typing import Callable, Protocol

from eat_policy.snapshot import Decision, Snapshot


class Policy(Protocol):
    name: str

    def reset(self, seed: int) -> None:
        """Start an episode; policies with randomness seed it from here."""

    def decide(self, snap: Snapshot) -> Decision | None:
        """Dispatch one queued job, or None to wait for the next event."""


class UnknownPolicy(ValueError):
    pass


_REGISTRY: dict[str, Callable[[], Policy]] = {}


def register(name: str, factory: Callable[[], Policy]) -> None:
    _REGISTRY[name] = factory


def names() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def make(name: str) -> Policy:
    _load_builtin()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise UnknownPolicy(f"unknown policy {name!r}; choose from {', '.join(_REGISTRY)}") from None


def _load_builtin() -> None:
    from eat_policy.agents import heuristics  # noqa: F401  (registers on import)

    try:  # the learned policies need torch (extra `train`); without it, heuristics only
        from eat_policy.agents import eat  # noqa: F401
    except ImportError:
        pass
