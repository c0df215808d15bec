"""The Lease: a leader that cannot renew steps down."""

from __future__ import annotations

import asyncio

from tests.unit.operator.fake_api import FakeApi

from eat_operator import leadership

LEASE_S = 0.6


def test_a_leader_whose_renewal_hangs_steps_down() -> None:
    """A renewal that never answers (the client's own timeout is 30 s) used to leave the replica
    leading long after its 15-s lease could have passed to another: two dispatchers. It now
    gives up after two thirds of the lease (waited for here up to twice the lease, for slack)."""
    async def scenario() -> tuple[bool, bool]:
        fake = FakeApi()
        lead = leadership.Leadership(fake, "default", "eat-operator", "pod-a", duration_s=LEASE_S)  # type: ignore[arg-type]
        task = asyncio.create_task(lead.run())
        await asyncio.wait_for(lead.changed.wait(), timeout=LEASE_S)
        acquired = lead.is_leader
        lead.changed.clear()

        async def hang(*_: object, **__: object) -> dict:
            await asyncio.sleep(3600)
            return {}

        fake.request = hang  # type: ignore[method-assign]
        try:
            await asyncio.wait_for(lead.changed.wait(), timeout=2 * LEASE_S)
        except asyncio.TimeoutError:
            pass
        task.cancel()
        return acquired, lead.is_leader

    acquired, leading = asyncio.run(scenario())
    assert acquired and not leading
