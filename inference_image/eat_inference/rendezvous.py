"""The gang's rendezvous: find the other ranks of the job, or fail clearly and in bounded time.

The operator starts one pod per rank and sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` (rank 0's pod, through the job's headless Service), as ``torchrun`` would.
Rank 0 hosts a ``TCPStore``; every rank checks in under its own key, and the process group
(gloo on CPU, NCCL on GPU) is built on that store only when all ranks are there. A rank that
never comes makes every other rank fail within ``timeout_s`` with a message that says which
ranks were missing, instead of hanging in a collective: a gang is all-or-nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import threading
import time
from collections.abc import Mapping

import torch
import torch.distributed as dist

# Its functions take `group=group.WORLD` as a default argument, bound when it is imported.
# Imported after init_process_group (diffusers' imports pull it in, after the rendezvous), it
# would hold the process group past leave(): the gloo threads would then die in interpreter
# teardown, sometimes with SIGABRT. Imported now, while there is no group, it binds None.
import torch.distributed.nn.functional  # noqa: F401

logger = logging.getLogger(__name__)

_JOINED = "eat/joined/"
_FAILED = "eat/failed"
_ACK = "eat/failed-ack/"
_VERDICT_GRACE_S = 5.0


class RendezvousError(RuntimeError):
    """The gang could not be assembled (a rank missing, rank 0 unreachable, bad environment)."""


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the gang, read from the environment."""

    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Read RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and LOCAL_RANK); none set: one rank."""
        env = os.environ if environ is None else environ

        def integer(name: str, default: int) -> int:
            raw = env.get(name, "")
            if raw == "":
                return default
            try:
                return int(raw)
            except ValueError:
                raise RendezvousError(f"{name}={raw!r} is not an integer") from None

        world_size = integer("WORLD_SIZE", 1)
        rank = integer("RANK", 0)
        if world_size < 1:
            raise RendezvousError(f"WORLD_SIZE={world_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise RendezvousError(f"RANK={rank} is not in 0..{world_size - 1} (WORLD_SIZE={world_size})")
        addr = env.get("MASTER_ADDR", "")
        if world_size > 1 and not addr:
            raise RendezvousError(f"MASTER_ADDR is not set (needed for WORLD_SIZE={world_size})")
        port = integer("MASTER_PORT", 29500)
        if not 0 < port < 65536:
            raise RendezvousError(f"MASTER_PORT={port} is not a TCP port")
        return cls(rank, world_size, addr or "127.0.0.1", port, integer("LOCAL_RANK", 0))


def default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def join(env: DistEnv, backend: str, timeout_s: float, op_timeout_s: float = 300.0) -> dist.Store | None:
    """Assemble the gang and initialise the default process group, or raise RendezvousError.

    ``timeout_s`` bounds the whole rendezvous (reaching rank 0 and waiting for the others);
    ``op_timeout_s`` bounds each collective afterwards (a rank that dies mid-image).
    A watchdog ends the process if the rendezvous is stuck past ``timeout_s`` plus a grace
    period in a place no exception can reach (exit code 3, as for RendezvousError).
    """
    if env.world_size == 1:
        return None
    where = f"{env.master_addr}:{env.master_port}"
    deadline = time.monotonic() + timeout_s
    watchdog = threading.Timer(timeout_s + 30.0, _stuck, args=(env, where, timeout_s))
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            store = dist.TCPStore(
                env.master_addr,
                env.master_port,
                env.world_size,
                is_master=env.rank == 0,
                timeout=datetime.timedelta(seconds=timeout_s),
                wait_for_workers=False,
            )
        except (RuntimeError, OSError) as e:
            if env.rank == 0:
                raise RendezvousError(
                    f"rank 0 could not host the rendezvous on port {env.master_port}: {_first_line(e)}"
                ) from e
            raise RendezvousError(
                f"rank {env.rank} could not reach rank 0's rendezvous at {where} within {timeout_s:g} s: {_first_line(e)}"
            ) from e
        keys = [f"{_JOINED}{r}" for r in range(env.world_size)]
        # Rank 0 gives the verdict on a timeout and tells the others through the store; they
        # wait a little longer than rank 0 so that all ranks report the same missing ranks.
        if env.rank != 0:
            deadline += _VERDICT_GRACE_S
        try:
            store.set(keys[env.rank], "1")
            while not store.check(keys):
                if store.check([_FAILED]):
                    store.set(f"{_ACK}{env.rank}", "1")
                    raise RendezvousError(store.get(_FAILED).decode())
                if time.monotonic() > deadline:
                    missing = [r for r, k in enumerate(keys) if not store.check([k])]
                    message = (
                        f"rendezvous at {where} timed out after {timeout_s:g} s: "
                        f"{env.world_size - len(missing)} of {env.world_size} ranks joined, missing rank(s) "
                        f"{', '.join(map(str, missing))}"
                    )
                    if env.rank == 0:
                        _tell_the_others(store, message, [r for r in range(1, env.world_size) if r not in missing])
                    raise RendezvousError(message)
                time.sleep(0.05)
        except (RuntimeError, OSError) as e:
            if isinstance(e, RendezvousError):
                raise
            raise RendezvousError(
                f"rank {env.rank} lost the rendezvous at {where} (rank 0 gone?): {_first_line(e)}"
            ) from e
        dist.init_process_group(
            backend,
            store=dist.PrefixStore("eat/pg/", store),
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=op_timeout_s),
        )
        logger.info("rendezvous done: rank %d of %d at %s (%s)", env.rank, env.world_size, where, backend)
        return store
    finally:
        watchdog.cancel()


class PeerFailedError(RuntimeError):
    """Another rank of the gang reported a failure (or never became ready) before a barrier."""


def barrier(store: dist.Store | None, env: DistEnv, tag: str, timeout_s: float, error: str | None = None) -> None:
    """Wait until every rank reached ``tag``, through the rendezvous store.

    A rank that failed passes ``error`` (and returns once the others could read it, to
    raise its own exception): the others stop waiting at once and raise
    :class:`PeerFailedError` with its message, instead of waiting for a timeout in a
    collective. Used after loading the model, which can take minutes on a cold node.
    """
    if store is None:
        return
    store.set(f"eat/{tag}/{env.rank}", "ok" if error is None else f"error: {error}")
    keys = [f"eat/{tag}/{r}" for r in range(env.world_size)]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            present = [k for k in keys if store.check([k])]
            failures = [
                f"rank {r} failed: {value[len('error: ') :]}"
                for r, k in enumerate(keys)
                if k in present and r != env.rank and (value := store.get(k).decode()).startswith("error: ")
            ]
        except (RuntimeError, OSError) as e:
            raise PeerFailedError(
                f"lost the rendezvous store of rank 0 while waiting for {tag}: {_first_line(e)}"
            ) from e
        if failures and error is None:
            raise PeerFailedError("; ".join(failures))
        if error is not None and (env.rank != 0 or len(present) == len(keys) or time.monotonic() > deadline):
            if env.rank == 0:
                time.sleep(1.0)  # rank 0 hosts the store: give the others a moment to read the error
            return
        if error is None and len(present) == len(keys):
            return
        if time.monotonic() > deadline:
            missing = [r for r, k in enumerate(keys) if k not in present]
            raise PeerFailedError(f"rank(s) {', '.join(map(str, missing))} not ready ({tag}) after {timeout_s:g} s")
        time.sleep(0.05)


def _tell_the_others(store: dist.Store, message: str, present: list[int]) -> None:
    """Rank 0 hosts the store: publish the verdict and stay until the present ranks read it."""
    store.set(_FAILED, message)
    until = time.monotonic() + _VERDICT_GRACE_S
    while time.monotonic() < until and not all(store.check([f"{_ACK}{r}"]) for r in present):
        time.sleep(0.05)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _stuck(env: DistEnv, where: str, timeout_s: float) -> None:
    logger.error("rank %d: rendezvous at %s stuck for more than %g s; exiting", env.rank, where, timeout_s)
    os._exit(3)
