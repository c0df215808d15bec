"""Leader election on a ``coordination.k8s.io/v1`` Lease: only the holder dispatches.

Every replica runs kopf's watch streams (they only fill the read cache); writes come from
the dispatcher alone, so one Lease decides which replica writes. A leader renews every
third of the lease duration and steps down when a renewal fails or has not answered within
two thirds of it (client-go's renew deadline), before another replica may take over: that
happens only after the holder stopped renewing for a whole duration. The identity is the pod
name, so a container restarted in the same pod (kill -9, OOM) takes its Lease back at once
instead of waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import logging
import time

from eat_operator import kube, metrics

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, client: kube.Client, namespace: str, name: str, identity: str, duration_s: float,
                 enabled: bool = True) -> None:
        self._client = client
        self._url = kube.path("coordination.k8s.io", "v1", "leases", namespace)
        self._name = name
        self.identity = identity
        self.duration_s = duration_s
        self.enabled = enabled
        self.is_leader = not enabled
        self.changed = asyncio.Event()

    async def run(self) -> None:
        if not self.enabled:
            metrics.leader.set(1)
            return
        while True:
            try:
                held = await asyncio.wait_for(self.try_acquire(time.time()), self.duration_s * 2 / 3)
            except asyncio.TimeoutError:
                log.warning("lease %s: no answer within %.1f s", self._name, self.duration_s * 2 / 3)
                held = False
            except (kube.ApiError, OSError, ValueError) as e:
                log.warning("lease %s: %s", self._name, e)
                held = False
            if held != self.is_leader:
                log.info("leadership %s: %s", "acquired" if held else "lost", self.identity)
                self.is_leader = held
                self.changed.set()
                metrics.leader.set(1 if held else 0)
            await asyncio.sleep(self.duration_s / 3 if held else self.duration_s / 5)

    async def try_acquire(self, now: float) -> bool:
        url = f"{self._url}/{self._name}"
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(max(1, round(self.duration_s))),
                "renewTime": kube.micro_time(now)}
        try:
            lease = await self._client.request("GET", url)
        except kube.ApiError as e:
            if e.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self._name}, "spec": {**spec, "acquireTime": kube.micro_time(now)}}
            try:
                await self._client.create(self._url, body)
                return True
            except kube.ApiError as e2:
                if e2.status == 409:
                    return False
                raise
        cur = lease.get("spec") or {}
        holder = cur.get("holderIdentity")
        renewed = kube.parse_time(cur.get("renewTime")) or 0.0
        expired = now - renewed > float(cur.get("leaseDurationSeconds") or self.duration_s)
        if holder != self.identity and holder and not expired:
            return False
        if holder != self.identity:
            spec["acquireTime"] = kube.micro_time(now)
            spec["leaseTransitions"] = int(cur.get("leaseTransitions") or 0) + 1
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        try:
            await self._client.merge_patch(url, patch)
        except kube.ApiError as e:
            if e.status == 409:
                return False
            raise
        return True
