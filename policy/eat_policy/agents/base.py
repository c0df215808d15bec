"""The policy interface every scheduler implements, and the registry of them by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from eat_policy.snapshot import Decision, Snapshot

if TYPE_CHECKING:
    from eat_policy.sim import engine


class Policy(Protocol):
    name: str

    def reset(self, seed: int) -> None:
        """Start an episode; policies with randomness seed it from here."""

    def decide(self, snap: Snapshot) -> Decision | None:
        """Dispatch one queued job, or None to wait for the next event."""


@runtime_checkable
class LooksAhead(Protocol):
    """A training teacher that plays copies of the episode it decides for (``agents.rollout``)."""

    def attach(self, sim: engine.Simulator) -> None:
        """The simulator whose episode the next decisions are for (copied, never stepped)."""


def begin_episode(policy: Policy, sim: engine.Simulator, seed: int) -> None:
    """Ready ``policy`` for the episode ``sim`` was just reset to with ``seed``."""
    policy.reset(seed)
    if isinstance(policy, LooksAhead):
        policy.attach(sim)


class UnknownPolicy(ValueError):
    pass


_REGISTRY: dict[str, Callable[[], Policy]] = {}
_PARAMETRISED: dict[str, tuple[Callable[[str], Policy], str]] = {}
"""Families named ``prefix:argument``, e.g. ``checkpoint:runs/x/policy.pt``, and what the
argument is."""


def register(name: str, factory: Callable[[], Policy]) -> None:
    _REGISTRY[name] = factory


def register_family(prefix: str, factory: Callable[[str], Policy], argument: str) -> None:
    _PARAMETRISED[prefix] = (factory, argument)


def families() -> dict[str, str]:
    """Each family's prefix and what its argument is, e.g. ``{"checkpoint": "PATH"}``."""
    _load_builtin()
    return {prefix: argument for prefix, (_, argument) in _PARAMETRISED.items()}


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
        return _PARAMETRISED[prefix][0](argument)
    try:
        return _REGISTRY[name]()
    except KeyError:
        others = "".join(f", {prefix}:{argument}" for prefix, (_, argument) in _PARAMETRISED.items())
        raise UnknownPolicy(f"unknown policy {name!r}; choose from {', '.join(_REGISTRY)}{others}") from None


def _load_builtin() -> None:
    from eat_policy.agents import heuristics  # noqa: F401  (registers on import)

    try:  # the learned policies need torch (extra `train`); without it, heuristics only
        from eat_policy.agents import eat  # noqa: F401
    except ImportError:
        pass
