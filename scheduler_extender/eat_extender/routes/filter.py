"""``POST /filter``: kube-scheduler's filter verb.

Always HTTP 200 with an ``ExtenderFilterResult``, as kube-scheduler expects: a body it cannot
read, a cache that is not synced yet, or a bug set ``Error`` (the scheduler then skips this
``ignorable`` extender for the pod and logs the message).

Before holding a pod back for lack of GPUs, it re-reads the pods of the nodes concerned from
the API server (every time: see ``watching.Watcher.refresh_nodes``): the watch can trail
kube-scheduler's own informers by a few milliseconds, and a pod that only the extender rejected
is retried on the next cluster event, which in a quiet cluster may not come for minutes.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response

from eat_extender import filtering, metrics, state, wire
from eat_extender.deps import CacheDep, ClockDep, Refresher, RefresherDep, SettingsDep
from eat_extender.routes import _body

log = logging.getLogger(__name__)
router = APIRouter(tags=["scheduling"])

VERB = "filter"
REFRESH_WAIT_S = 1.0
"""Longest wait for a re-read of short nodes; kube-scheduler's httpTimeout is 2 s."""
NOT_SYNCED = ("eat-extender: not synced with the API server yet (nodes and pods not listed); "
              "scheduling without the extender")


@router.post("/filter", response_model=wire.ExtenderFilterResult, openapi_extra=_body.openapi_body(),
             summary="Filter candidate nodes for a pod (kube-scheduler extender filter verb)")
async def filter_nodes(request: Request, cache: CacheDep, clock: ClockDep, settings: SettingsDep,
                       refresher: RefresherDep) -> Response:
    with metrics.observed(VERB) as call:
        try:
            args, candidates = _body.parse_args(await request.body())
            cluster = cache.snapshot()
            if not cluster.synced:
                call.outcome = "not_synced"
                return _answer(wire.ExtenderFilterResult(Error=NOT_SYNCED))
            now = clock()
            pod = state.pod_view(args.pod)
            decision = filtering.decide(pod, candidates, cluster, now)
            if decision.short_nodes and refresher is not None and await _refreshed(refresher, decision.short_nodes):
                decision = filtering.decide(pod, candidates, cache.snapshot(), now)
            if decision.admit_group is not None:
                cache.admit(decision.admit_group, now + settings.gang_hold_s)
            _count(decision)
            return Response(content=answer(args, decision), media_type="application/json")
        except _body.BadRequest as e:
            call.outcome = "bad_request"
            return _answer(wire.ExtenderFilterResult(Error=f"eat-extender: {e}"))
        except Exception as e:  # a bug: answer in Error (the scheduler skips us), log it, count it
            call.outcome = "internal_error"
            log.exception("filter failed")
            return _answer(wire.ExtenderFilterResult(Error=f"eat-extender: internal error: {type(e).__name__}: {e}"))


async def _refreshed(refresher: Refresher, nodes: tuple[str, ...]) -> bool:
    """Re-read ``nodes`` (in a thread: the client blocks); on failure decide on what we have."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(refresher.refresh_nodes, nodes), REFRESH_WAIT_S)
    except Exception as e:  # noqa: BLE001 - API down or slow: the cached view still answers
        log.warning("re-reading nodes %s failed: %s: %s", ",".join(nodes), type(e).__name__, e)
        return False


def answer(args: wire.ExtenderArgs, d: filtering.Decision) -> bytes:
    """The ExtenderFilterResult of a decision, as JSON, in the form the scheduler sent the nodes."""
    return _result(args, d).model_dump_json().encode()


def _result(args: wire.ExtenderArgs, d: filtering.Decision) -> wire.ExtenderFilterResult:
    node_names: list[str] | None = None
    nodes: wire.NodeList | None = None
    if args.node_names is not None:  # nodeCacheCapable: answer in kind
        node_names = list(d.passed)
    elif args.nodes is not None:
        # kube-scheduler builds its NodeInfos from the nodes we return: echo them unchanged.
        passed = set(d.passed)
        nodes = wire.NodeList.model_construct(items=[i for i in args.nodes.items if i["metadata"]["name"] in passed])
    # Built from values that are already valid: skip re-validating a thousand-entry map.
    return wire.ExtenderFilterResult.model_construct(
        nodes=nodes, node_names=node_names, failed_nodes=dict(d.failed),
        failed_and_unresolvable_nodes=dict(d.unresolvable), error="")


def _count(d: filtering.Decision) -> None:
    metrics.decisions.labels(VERB, d.kind.value, "passed" if d.passed else "held").inc()
    for reason, n in d.rejections.items():
        metrics.rejections.labels(reason.value).inc(n)
    if d.verdict is not None:
        metrics.gang_checks.labels("fits" if d.verdict.fits else "waits").inc()


def _answer(result: wire.ExtenderFilterResult) -> Response:
    return Response(content=result.model_dump_json(), media_type="application/json")
