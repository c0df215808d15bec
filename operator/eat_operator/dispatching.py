"""The dispatcher: one loop (on the leader) that plans pending jobs in batches and drives
every job's status from a snapshot of the cluster.

A cycle: take a ``ClusterSnapshot`` of the read cache; reconcile each job past Pending
(``status.reconcile``: create missing pods, lift gates, follow phases, tear down and retry);
then send the oldest pending jobs (by priority) with the nodes' free GPUs to ``POST /v1/plan``
and act on each decision: write the plan to status, then create the group; the next batch
takes the pending jobs after those, so jobs the policy holds (too big for the free GPUs, say)
do not keep the ones behind them from being planned. When the policy service cannot answer
in time the same planner code runs in-process (``eat_policy.service.planner``), and the plan
says so.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from pydantic import ValidationError

from eat_policy import api

from eat_operator import kube, metrics, podgroup, settings as settings_mod, snapshot, spec as spec_mod, status
from eat_operator.store import Store

log = logging.getLogger(__name__)

Obj = dict[str, Any]
JOBS_URL = kube.path(api.GROUP, api.CRD_VERSION, api.CRD_PLURAL)


# --------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class PlanOutcome:
    response: api.PlanResponse
    source: str
    """``service`` or ``in-process``."""
    fallback_reason: str | None
    duration_s: float


class PolicyClient:
    """``POST /v1/plan`` with a bounded timeout; the in-process planner when that fails."""

    def __init__(self, url: str | None, timeout_s: float, retry_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._url = url.rstrip("/") + "/v1/plan" if url else None
        self._http = httpx.AsyncClient(timeout=timeout_s) if url else None
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self._down_reason: str | None = None
        self._planner: Any = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def plan(self, req: api.PlanRequest) -> PlanOutcome:
        t0 = time.perf_counter()
        reason: str | None
        if self._url is None or self._http is None:
            reason = "no policy service configured"
            metrics.fallbacks.labels("not_configured").inc()
        elif self._clock() < self._down_until:
            reason = self._down_reason
            metrics.fallbacks.labels("service_down").inc()
        else:
            try:
                r = await self._http.post(self._url, content=req.model_dump_json(),
                                          headers={"Content-Type": "application/json"})
                r.raise_for_status()
                resp = api.PlanResponse.model_validate_json(r.content)
                dt = time.perf_counter() - t0
                metrics.plan_latency.labels("service").observe(dt)
                self._down_reason = None
                return PlanOutcome(resp, "service", None, dt)
            except (httpx.HTTPError, ValidationError, ValueError) as e:
                kind = ("timeout" if isinstance(e, httpx.TimeoutException) else
                        "unreachable" if isinstance(e, httpx.TransportError) else "bad_answer")
                reason = f"policy service {kind}: {type(e).__name__}: {str(e)[:200]}"
                if self._down_reason is None:
                    log.warning("%s; planning in-process for %.0f s", reason, self._retry_after_s)
                self._down_until = self._clock() + self._retry_after_s
                self._down_reason = reason
                metrics.fallbacks.labels(kind).inc()
        t1 = time.perf_counter()
        resp = self.local().plan(req)
        metrics.plan_latency.labels("in-process").observe(time.perf_counter() - t1)
        return PlanOutcome(resp, "in-process", reason, time.perf_counter() - t0)

    def local(self) -> Any:
        """The policy service's own planner, built once (numpy only: no checkpoint, no torch)."""
        if self._planner is None:
            from eat_policy.service.planner import Planner
            from eat_policy.service.settings import Settings as PolicySettings

            self._planner = Planner.from_settings(PolicySettings(checkpoint=None, prometheus_url=None))
        return self._planner


def select_pending(snap: snapshot.ClusterSnapshot, models: dict[str, tuple[int, int]],
                   parse: Callable[[Obj], spec_mod.JobSpec] | None = None
                   ) -> tuple[list[tuple[snapshot.JobView, spec_mod.JobSpec]],
                              list[tuple[snapshot.JobView, spec_mod.InvalidSpec]]]:
    """Jobs waiting for a plan whose old pods are all gone, valid and invalid, in queue order
    (priority first, then arrival). ``parse``: a ``spec.Parsed`` over the same models."""
    parse = parse or spec_mod.Parsed(models)
    valid, invalid = [], []
    for job in snap.jobs.values():
        if job.phase != "Pending" or job.deleting or snap.pods_of(job):
            continue
        try:
            valid.append((job, parse(job.body)))
        except spec_mod.InvalidSpec as e:
            invalid.append((job, e))
    valid.sort(key=lambda js: (-js[1].priority, js[0].created, js[0].namespace, js[0].name))
    return valid, invalid


def plan_request(batch: Iterable[tuple[snapshot.JobView, spec_mod.JobSpec]], nodes: list[api.NodeInfo],
                 now: float, models: dict[str, tuple[int, int]]) -> api.PlanRequest:
    jobs = [spec_mod.job_request(j.namespace, j.name, sp, j.created, models) for j, sp in batch]
    return api.PlanRequest(jobs=jobs, nodes=nodes, now=now)


def _infeasible(d: api.JobDecision, spec: spec_mod.JobSpec, free: dict[str, int]) -> str | None:
    """What is wrong with a dispatch decision against the GPUs offered (``free``, which it then
    takes), or None. The policy service is ours, but the pods it places would wait for ever."""
    ranks = collections.Counter(d.nodes)
    if len(d.nodes) != d.patches or (spec.patches is not None and d.patches != spec.patches):
        return f"{d.patches} patches on {len(d.nodes)} nodes"
    short = [n for n, k in ranks.items() if free.get(n, 0) < k]
    if short:
        return f"not enough free GPUs offered on {', '.join(short)}"
    for n, k in ranks.items():
        free[n] -= k
    return None


# --------------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why the API server refuses part of a job's group (a pod, a gate lift, the Service)."""

    attempt: int
    message: str
    since: float
    """When this attempt's refusals began (the dispatcher's clock): the timeout counts from it."""


def owned_by(obj: Obj, uid: str) -> bool:
    return uid in {o.get("uid") for o in (obj.get("metadata") or {}).get("ownerReferences") or []}


class Dispatcher:
    def __init__(self, s: settings_mod.Settings, client: kube.Client, policy: PolicyClient,
                 clock: Callable[[], float] = time.time) -> None:
        self.s = s
        self.client = client
        self.policy = policy
        self.clock = clock
        self.jobs = Store()
        self.pods = Store(keep=snapshot.is_relevant_pod)
        self.nodes = Store()
        self.wake = asyncio.Event()
        self.models = spec_mod.known_models(s.models)
        self.parse = spec_mod.Parsed(self.models)
        self._pending_at: dict[tuple[str, str], float] = {}
        """When each Pending job's reason was last written by us (see ``_pending``)."""
        self._views = snapshot.ViewCache()
        self._resting: dict[str, float] = {}
        """Node → until when it is not offered to the policy (``Step.rest_nodes``)."""
        self._create_errors: dict[tuple[str, str], Refusal] = {}
        """Per job: why the API server refuses one of its pods or a gate lift, or why a pod's name
        is not free (cleared by a pass over the group that meets no refusal)."""
        self._services: set[tuple[str, str, str]] = set()
        self._service_refused: dict[tuple[str, str], Refusal] = {}
        """Per job: why its Service could not be made (its gates stay on meanwhile)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._building: dict[tuple[str, str], asyncio.Task[None]] = {}
        """Jobs whose group is being created now; the next batch plans meanwhile."""

    # --- the read cache ---------------------------------------------------------------

    def observe(self, kind: str, type_: str | None, obj: Obj) -> None:
        store = {"jobs": self.jobs, "pods": self.pods, "nodes": self.nodes}[kind]
        if store.apply(type_, obj):
            self.wake.set()

    async def relist(self) -> None:
        for store, url in ((self.nodes, "/api/v1/nodes"), (self.pods, "/api/v1/pods"), (self.jobs, JOBS_URL)):
            listed = await self.client.list(url)
            store.replace(listed.get("items") or [], (listed.get("metadata") or {}).get("resourceVersion"))

    def take_snapshot(self) -> snapshot.ClusterSnapshot:
        return snapshot.build(self.nodes.values(), self.pods.values(), self.jobs.values(), self.clock(),
                              self.s.node_selector, self.s.tolerations, self._views)

    async def _relist_until_done(self) -> None:
        while True:
            try:
                await self.relist()
                return
            except (kube.ApiError, OSError) as e:
                log.warning("relist failed, retrying: %s", e)
                await asyncio.sleep(1.0)

    async def run(self, is_leader: Callable[[], bool], leader_changed: asyncio.Event) -> None:
        # The in-process planner imports numpy and the policy's agents (a second or two on a
        # busy node): build it now, beside the first relist, not in the first batch's path.
        await asyncio.gather(self._relist_until_done(), asyncio.to_thread(self.policy.local))
        last_relist = time.monotonic()
        log.info("dispatcher started: %d jobs, %d GPU pods, %d nodes", len(self.jobs), len(self.pods),
                 len(self.nodes))
        while True:
            if not is_leader():
                leader_changed.clear()
                await leader_changed.wait()
                await self._relist_until_done()
                continue
            t0 = time.perf_counter()
            try:
                await self.cycle()
            except (kube.ApiError, OSError) as e:
                log.warning("cycle failed, next one retries: %s", e)
                await asyncio.sleep(1.0)
            metrics.cycle_seconds.observe(time.perf_counter() - t0)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.s.cycle_interval_s)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            await asyncio.sleep(self.s.cycle_min_interval_s)
            if time.monotonic() - last_relist > self.s.resync_interval_s:
                try:
                    await self.relist()
                    last_relist = time.monotonic()
                except (kube.ApiError, OSError) as e:
                    log.warning("relist failed, kept the cache: %s", e)

    async def cycle(self) -> None:
        t0 = time.perf_counter()
        snap = self.take_snapshot()
        t_snap = time.perf_counter() - t0
        self._gauges(snap)
        self._create_errors = {k: v for k, v in self._create_errors.items() if k in snap.jobs}
        self._services = {k for k in self._services if k[:2] in snap.jobs and snap.jobs[k[:2]].uid == k[2]}
        self._service_refused = {k: v for k, v in self._service_refused.items() if k in snap.jobs}
        work = []
        for job in snap.jobs.values():
            if job.deleting or job.phase == "Succeeded" or (job.phase == "Pending" and not snap.pods_of(job)):
                continue
            if job.key in self._building:
                continue
            try:
                spec = self.parse(job.body)
            except spec_mod.InvalidSpec as e:  # edited, or a model no longer served: fail it, free its GPUs
                left = status.leftovers(job, snap)
                invalid = (status.failed(job, snap.now, e.reason, str(e), delete=left) if job.phase != "Failed"
                           else status.Step(delete=left))
                if not invalid.empty:
                    work.append(self.execute(job, invalid))
                continue
            refused = self._refusal(job)
            step = status.reconcile(job, snap, self.s, podgroup.output_location(job, spec, self.s),
                                    refused.message if refused else None, refused.since if refused else None)
            if not step.empty:
                work.append(self.execute(job, step, spec))
        # Planning needs none of these writes: they touch jobs past Pending (or their leftover
        # pods), never one a batch can pick, and free no GPU the snapshot still counts. So they
        # run while the batches are planned.
        reconciling = asyncio.ensure_future(_gather(work))
        t1 = time.perf_counter()
        batches = dispatched = 0
        shown: set[tuple[str, str]] = set()
        try:
            # Bounded by the jobs shown, not the requests: a batch holds one priority, so held
            # jobs at many priorities would otherwise use up the requests of every cycle.
            while len(shown) < self.s.batches_per_cycle * self.s.batch_size:
                n = await self.dispatch_batch(shown)
                batches += 1
                dispatched += n
                if n < 0:
                    break
        finally:
            await reconciling
        if self._building:
            await asyncio.gather(*self._building.values(), return_exceptions=True)
        t2 = time.perf_counter()
        await self._mark_queued()
        if work or dispatched:
            log.info("cycle: snapshot %.3f s; %d jobs reconciled and %d batches dispatched %d jobs in %.3f s",
                     t_snap, len(work), batches, dispatched, t2 - t1)

    async def dispatch_batch(self, shown: set[tuple[str, str]]) -> int:
        """Plan one batch of the pending jobs not in ``shown`` (the jobs this cycle's batches
        showed the policy: those it held cannot fit in less than it had then, and the jobs
        behind them may), all of the highest priority among them; how many were dispatched,
        or -1 when no job or no GPU is left."""
        snap = self.take_snapshot()
        valid, invalid = select_pending(snap, self.models, self.parse)
        await _gather([self.execute(j, status.failed(j, snap.now, e.reason, str(e))) for j, e in invalid
                       if j.status.get("phase") != "Failed"])
        if not shown:
            metrics.queue_depth.set(len(valid))
        unseen = [(j, sp) for j, sp in valid if j.key not in shown]
        if not unseen:
            return -1
        # One priority per batch: the policy orders a batch by deadline and age, not priority.
        batch = [(j, sp) for j, sp in unseen if sp.priority == unseen[0][1].priority][: self.s.batch_size]
        shown.update(j.key for j, _ in batch)
        nodes = self._offered(snap)
        if not any(n.gpus_free > 0 and n.ready for n in nodes):
            await _gather([self.execute(j, self._pending(j, snap.now, "no free GPU in the cluster"))
                           for j, _ in batch])
            return -1
        try:
            outcome = await self.policy.plan(plan_request(batch, nodes, snap.now, self.models))
        except ValueError as e:  # a request the planner refuses (422) and the spec checks let through
            log.error("a batch of %d jobs cannot be planned: %s", len(batch), e)
            await _gather([self.execute(j, self._pending(j, snap.now, f"cannot be planned: {e}"[:400]))
                           for j, _ in batch])
            return 0
        by_id = {spec_mod.job_id(j.namespace, j.name): (j, sp) for j, sp in batch}
        free = {n.name: n.gpus_free for n in nodes if n.ready}
        work, dispatched = [], 0
        for d in outcome.response.decisions:
            if d.job not in by_id:
                continue
            job, sp = by_id[d.job]
            metrics.decisions.labels(d.action).inc()
            wrong = _infeasible(d, sp, free) if d.action == "dispatch" else None
            if wrong:
                log.error("plan for %s ignored: %s", d.job, wrong)
                d = d.model_copy(update={"action": "wait", "reason": f"the plan was not feasible: {wrong}"})
            if d.action == "dispatch" and d.nodes:
                dispatched += 1
                step = status.planned(job, d, outcome.response.policy, outcome.source, outcome.fallback_reason,
                                      snap.now)
                work.append(self.execute(job, step, sp, background=True))
            else:
                why = d.reason or "by the policy"
                work.append(self.execute(job, self._pending(job, snap.now, why if why.startswith("held") else
                                                            f"held: {why}", "Held")))
        await _gather(work)
        return dispatched

    def _refusal(self, job: snapshot.JobView) -> Refusal | None:
        """The refusal of the job's current attempt that began first, if any."""
        current = [r for r in (self._create_errors.get(job.key), self._service_refused.get(job.key))
                   if r is not None and r.attempt == job.attempts]
        return min(current, key=lambda r: r.since, default=None)

    def _refused(self, refusals: dict[tuple[str, str], Refusal], job: snapshot.JobView, message: str) -> None:
        """Keep the gates on and say why: one FailedCreate Event when the refusals begin; the
        attempt fails once they last the timeout (``status.reconcile``)."""
        old = refusals.get(job.key)
        if old is None or old.attempt != job.attempts:
            self._post_event(job, status.Event("Warning", "FailedCreate", message))
            old = Refusal(job.attempts, message, self.clock())
        refusals[job.key] = dataclasses.replace(old, message=message)

    def _offered(self, snap: snapshot.ClusterSnapshot) -> list[api.NodeInfo]:
        """The nodes the policy may plan on: the snapshot's, less the resting ones."""
        self._resting = {n: t for n, t in self._resting.items() if t > snap.now}
        return [n for n in snap.node_infos() if n.name not in self._resting]

    async def _mark_queued(self) -> None:
        snap = self.take_snapshot()
        await _gather([self.execute(j, self._pending(j, snap.now, "waiting for a plan"))
                       for j in snap.jobs.values() if not j.status.get("phase") and not j.deleting])

    def _pending(self, job: snapshot.JobView, now: float, message: str, reason: str = "Waiting") -> status.Step:
        """``status.pending``, but a job already shown Pending gets a new reason at most every
        ``pending_status_interval_s``: in a burst, held jobs' reasons change batch by batch."""
        if job.status.get("phase") == "Pending" and now < self._pending_at.get(job.key, -1.0) + \
                self.s.pending_status_interval_s:
            return status.NOTHING
        step = status.pending(job, now, message, reason)
        if step.status is not None:
            self._pending_at[job.key] = now
        return step

    def _gauges(self, snap: snapshot.ClusterSnapshot) -> None:
        counts = {p: 0 for p in status.PHASES}
        for j in snap.jobs.values():
            counts[j.phase] = counts.get(j.phase, 0) + 1
        self._pending_at = {k: t for k, t in self._pending_at.items()
                            if k in snap.jobs and snap.jobs[k].phase == "Pending"}
        for phase, n in counts.items():
            metrics.jobs.labels(phase).set(n)

    # --- acting on one job ---------------------------------------------------------------

    async def execute(self, job: snapshot.JobView, step: status.Step, spec: spec_mod.JobSpec | None = None,
                      background: bool = False) -> None:
        if step.status is not None:
            body = await self.patch_status(job, step.status)
            if body is None:
                return
            job = snapshot.job_view(body)
            self._count(job, step)
        for ev in step.events:
            self._post_event(job, ev)
        if step.rest_nodes:
            until = self.clock() + self.s.unschedulable_rest_s
            self._resting.update({n: until for n in step.rest_nodes})
            log.info("nodes %s rest %.0f s: %s/%s stayed unbound on them", ",".join(step.rest_nodes),
                     self.s.unschedulable_rest_s, job.namespace, job.name)
        if step.delete or step.force_delete:
            await _gather([self._delete_pod(job.namespace, name) for name in step.delete]
                          + [self._delete_pod(job.namespace, name, force=True) for name in step.force_delete])
        if step.ensure_group and spec is not None and job.phase in ("Planned", "Scheduling", "Running"):
            if background:  # a fresh plan: build its group while the next batch is planned
                task = asyncio.get_running_loop().create_task(self.ensure_group(job, spec))
                self._building[job.key] = task
                key = job.key
                task.add_done_callback(lambda _t: self._building.pop(key, None))
            else:
                await self.ensure_group(job, spec)

    def _count(self, job: snapshot.JobView, step: status.Step) -> None:
        if step.retried:
            metrics.retries.labels(step.retried).inc()
        phase = (step.status or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            metrics.jobs_finished.labels(phase).inc()
        if phase == "Succeeded":
            latency = job.status.get("latencySeconds")
            if latency is not None:
                metrics.job_latency.observe(float(latency))
            if job.status.get("deadlineMet") is False:
                metrics.deadline_misses.inc()

    async def patch_status(self, job: snapshot.JobView, patch: Obj) -> Obj | None:
        """Merge-patch .status, conditional on the resourceVersion we decided on; None on conflict."""
        url = kube.path(api.GROUP, api.CRD_VERSION, api.CRD_PLURAL, job.namespace, job.name, "status")
        try:
            body = await self.client.merge_patch(url, {"metadata": {"resourceVersion": job.resource_version},
                                                       "status": patch})
        except kube.ApiError as e:
            metrics.api_errors.labels("patch_status").inc()
            if e.status == 404:
                self.jobs.forget(job.key)
                return None
            if e.status == 409:  # someone (our own earlier write) got there first: re-read, decide again
                try:
                    self.jobs.apply(None, await self.client.request("GET", url[: -len("/status")]))
                except kube.ApiError:
                    pass
                self.wake.set()
                return None
            log.warning("status of %s/%s: %s", job.namespace, job.name, e)
            return None
        self.jobs.apply(None, body)
        return body

    async def ensure_group(self, job: snapshot.JobView, spec: spec_mod.JobSpec) -> None:
        """Create what is missing of the group and lift the gates once all pods exist.
        Idempotent: names are fixed, 409 means it exists; with nothing missing, no request."""
        plan = job.plan or {}
        svc_key = (job.namespace, job.name, job.uid)
        needs_service = len(plan.get("nodes") or []) > 1  # one pod: no rendezvous
        manifests = podgroup.pods(job, spec, plan, job.attempts, self.s)
        unmade_service = svc_key if needs_service and svc_key not in self._services else None
        refusals = await self._create_missing(job, manifests, unmade_service)
        gated = self._gated_if_whole(job, manifests, refusals)
        if gated is not None and (not needs_service or svc_key in self._services):
            # no member starts before rank 0 can be found by name
            lifted = await asyncio.gather(*[self._lift_gate(job, name) for name in gated])
            refusals += [r for r in lifted if r]
        if refusals:
            self._refused(self._create_errors, job, refusals[0])
        else:
            self._create_errors.pop(job.key, None)
        # The next cycle moves the job on (status.reconcile): to Running if kube-scheduler
        # bound the group meanwhile, else to Scheduling.

    async def _create_missing(self, job: snapshot.JobView, manifests: list[Obj],
                              service: tuple[str, str, str] | None) -> list[str]:
        """Create the pods not in the read cache, and the Service if ``service`` (its key) is
        given; why any pod was refused."""
        missing = [m for m in manifests if self.pods.get((job.namespace, m["metadata"]["name"])) is None]
        work = [self._create_service(job, service)] if service else []
        created = await asyncio.gather(*[self._create_pod(job, m) for m in missing], *work)
        return [r for r in created[: len(missing)] if r]

    def _gated_if_whole(self, job: snapshot.JobView, manifests: list[Obj], refusals: list[str]) -> list[str] | None:
        """The gated pods of the group, or None while it is not whole (a pod missing, of
        another attempt, being deleted, or one whose name another object holds: added to
        ``refusals``)."""
        whole, gated = True, []
        for m in manifests:
            name = m["metadata"]["name"]
            cur = self.pods.get((job.namespace, name))
            if cur is not None and not owned_by(cur, job.uid):
                refusals.append(_name_taken(name))
                cur = None
            if cur is None:
                whole = False
                continue
            pv = snapshot.pod_view(cur)
            if pv.attempt != job.attempts or pv.deleting:
                whole = False
            elif pv.gated:
                gated.append(pv.name)
        return gated if whole else None

    async def _create_service(self, job: snapshot.JobView, key: tuple[str, str, str]) -> None:
        url = kube.path("", "v1", "services", job.namespace)
        try:
            await self.client.create(url, podgroup.service(job, self.s))
        except kube.ApiError as e:
            if e.status != 409:
                metrics.api_errors.labels("create_service").inc()
                log.warning("service %s/%s: %s", job.namespace, job.name, e)
                self._refused(self._service_refused, job, f"service {job.name}: {e}")
                return
            try:  # ours, or a deleted job's of the same name that the garbage collector has yet to remove?
                existing = await self.client.request("GET", f"{url}/{job.name}")
            except kube.ApiError as e2:
                if e2.status != 404:  # 404: gone since; the next attempt creates it
                    metrics.api_errors.labels("create_service").inc()
                    self._refused(self._service_refused, job, f"service {job.name} exists but cannot be read: {e2}")
                return
            if not owned_by(existing, job.uid):
                self._refused(self._service_refused, job,
                              f"service {job.name}: the name is taken by a Service this job does not own")
                return
        self._service_refused.pop(job.key, None)
        self._services.add(key)

    async def _create_pod(self, job: snapshot.JobView, manifest: Obj) -> str | None:
        """Create one pod; why it was refused, if it was."""
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        url = kube.path("", "v1", "pods", ns)
        try:
            body = await self.client.create(url, manifest)
            metrics.pods_created.inc()
        except kube.ApiError as e:
            if e.status != 409:
                metrics.api_errors.labels("create_pod").inc()
                log.warning("pod %s/%s: %s", ns, name, e)
                return f"pod {name}: {e}"
            try:
                body = await self.client.request("GET", f"{url}/{name}")
            except kube.ApiError:
                return None
            if not owned_by(body, job.uid):  # the read cache may not keep it (no GPU): say so here
                return _name_taken(name)
        self.pods.apply(None, body)
        return None

    async def _lift_gate(self, job: snapshot.JobView, name: str) -> str | None:
        """Lift one pod's gate; why it was refused, if it was (a pod deleted meanwhile is not
        refused: the next cycle creates it again)."""
        try:
            body = await self.client.merge_patch(kube.path("", "v1", "pods", job.namespace, name),
                                                 podgroup.lift_gate_patch())
        except kube.ApiError as e:
            metrics.api_errors.labels("lift_gate").inc()
            log.warning("gate of %s/%s: %s", job.namespace, name, e)
            return None if e.status == 404 else f"pod {name}: the scheduling gate cannot be lifted: {e}"
        self.pods.apply(None, body)
        return None

    async def _delete_pod(self, ns: str, name: str, force: bool = False) -> None:
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if force:
            options["gracePeriodSeconds"] = 0
        try:
            body = await self.client.delete(kube.path("", "v1", "pods", ns, name), options)
        except kube.ApiError as e:
            if e.status == 404:
                self.pods.forget((ns, name))
                return
            metrics.api_errors.labels("delete_pod").inc()
            log.warning("delete %s/%s: %s", ns, name, e)
            return
        if body.get("kind") == "Pod":
            self.pods.apply(None, body)

    def _post_event(self, job: snapshot.JobView, ev: status.Event) -> None:
        involved = {"apiVersion": f"{api.GROUP}/{api.CRD_VERSION}", "kind": api.CRD_KIND,
                    "metadata": {"name": job.name, "namespace": job.namespace, "uid": job.uid}}
        body = kube.event(involved, ev.type, ev.reason, ev.message, self.clock())
        log.info("%s/%s %s: %s", job.namespace, job.name, ev.reason, ev.message)

        async def post() -> None:
            try:
                await self.client.create(kube.path("", "v1", "events", job.namespace), body)
            except kube.ApiError as e:
                metrics.api_errors.labels("event").inc()
                log.debug("event for %s/%s: %s", job.namespace, job.name, e)

        task = asyncio.get_running_loop().create_task(post())  # Events never delay the job
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _name_taken(pod: str) -> str:
    return f"pod {pod}: the name is taken by a pod this job does not own"


async def _gather(work: list[Any]) -> None:
    if work:
        await asyncio.gather(*work)
