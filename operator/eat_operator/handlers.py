"""kopf handlers: the only module that knows kopf's decorators. Each one is thin.

The watch handlers copy every AIGCJob, GPU pod and node event into the dispatcher's read
cache and wake it; they never write, so every replica may run them (and no kopf peering
is needed to keep two replicas from acting: the Lease in ``leadership`` decides who
writes). Startup builds the runtime (API client, policy client, dispatcher, Lease loop,
metrics server) and cleanup stops it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, cast

import kopf
import prometheus_client

from eat_policy import api

from eat_operator import dispatching, kube, leadership, metrics, settings as settings_mod

log = logging.getLogger(__name__)


class Runtime:
    """What one operator process runs besides kopf's watch streams."""

    def __init__(self, s: settings_mod.Settings) -> None:
        self.settings = s
        self.client = kube.Client.from_kubeconfig(s.kubeconfig, s.api_concurrency)
        self.policy = dispatching.PolicyClient(s.policy_url, s.policy_timeout_s, s.policy_retry_after_s)
        self.dispatcher = dispatching.Dispatcher(s, self.client, self.policy)
        self.leadership = leadership.Leadership(self.client, s.lease_namespace, s.lease_name, s.identity,
                                                s.lease_duration_s, s.leader_election)
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.settings.metrics_port:
            prometheus_client.start_http_server(self.settings.metrics_port, registry=metrics.registry)
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self.leadership.run(), name="eat-lease"))
        self.tasks.append(loop.create_task(
            self.dispatcher.run(lambda: self.leadership.is_leader, self.leadership.changed), name="eat-dispatcher"))
        for t in self.tasks:
            t.add_done_callback(_crash_on_error)

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.policy.close()
        await self.client.close()


def _crash_on_error(task: asyncio.Task[None]) -> None:
    """A dead dispatcher must not leave a live-looking process: exit, let the pod restart."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("%s died: %r; exiting so that the operator restarts", task.get_name(), task.exception())
        logging.shutdown()
        os._exit(1)


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's watch streams use the same credentials as the dispatcher's client."""
    cfg = kube.load_configuration(settings_mod.Settings().kubeconfig)
    scheme, token = kube.credentials(cfg)
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl, scheme=scheme,
        token=token, certificate_path=cfg.cert_file, private_key_path=cfg.key_file,
    )


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf keeps a diff base (a deep copy of each object, compared on every event) for
    change handlers; ours only observe raw events, so it was pure cost: about a tenth of
    the operator's CPU in a 1,000-job burst. Nothing is stored; every event is "new"."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our handlers are silent read-only observers: nothing for kopf to post as Events
    # (the dispatcher posts its own), and no progress to persist on the objects.
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = _NoDiffBase()
    memo.runtime = Runtime(settings_mod.Settings())
    await memo.runtime.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.stop()


# Coroutines, not plain functions: kopf runs a plain function in a worker thread, which costs
# a thread hop per event and would touch the read cache and the dispatcher's asyncio.Event
# from outside the event loop (neither is thread-safe).
@kopf.on.event(api.GROUP, api.CRD_VERSION, api.CRD_PLURAL)
async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.dispatcher.observe("jobs", event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods")
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.dispatcher.observe("pods", event.get("type"), event["object"])


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.dispatcher.observe("nodes", event.get("type"), event["object"])
