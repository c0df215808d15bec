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
_PARAMETRISED: dict[str, Callable[[str], Policy]] = {}
"""Families named ``prefix:argument``, e.g. ``checkpoint:runs/x/policy.pt``."""


def register(name: str, factory: Callable[[], Policy]) -> None:
    _REGISTRY[name] = factory


def register_family(prefix: str, factory: Callable[[str], Policy]) -> None:
    _PARAMETRISED[prefix] = factory


def known(name: str) -> bool:
    _load_builtin()
    prefix, sep, _ = name.partition(":")
    return name in _REGISTRY or bool(sep) and prefix in _PARAMETRISED


def names() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def make(name: str) -> Policy:
    _load_builtin()
    prefix, sep, argument = name.partition(":")
    if sep and prefix in _PARAMETRISED:
        return _PARAMETRISED[prefix](argument)
    try:
        return _REGISTRY[name]()
    except KeyError:
        families = "".join(f", {p}:…" for p in _PARAMETRISED)
        raise UnknownPolicy(f"unknown policy {name!r}; choose from {', '.join(_REGISTRY)}{families}") from None


def _load_builtin() -> None:
    from eat_policy.agents import heuristics  # noqa: F401  (registers on import)

    try:  # the learned policies need torch (extra `train`); without it, heuristics only
        from eat_policy.agents import eat  # noqa: F401
    except ImportError:
        pass
