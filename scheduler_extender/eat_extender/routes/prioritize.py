"""``POST /prioritize``: kube-scheduler's prioritize verb.

Answers a ``HostPriorityList`` (scores 0–10). A body it cannot read gets HTTP 400 with
``{"Error": ...}``: a HostPriorityList has no error field, and kube-scheduler ignores a failed
prioritize call (the other scores decide), so a 4xx is the honest answer here.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from eat_extender import metrics, prioritizing, state, wire
from eat_extender.deps import CacheDep, ClockDep
from eat_extender.routes import _body

log = logging.getLogger(__name__)
router = APIRouter(tags=["scheduling"])

VERB = "prioritize"


@router.post("/prioritize", response_model=wire.HostPriorityList, openapi_extra=_body.openapi_body(),
             responses={400: {"description": "The body is not an ExtenderArgs: {\"Error\": \"...\"}"}},
             summary="Score candidate nodes for a pod (kube-scheduler extender prioritize verb)")
async def prioritize_nodes(request: Request, cache: CacheDep, clock: ClockDep) -> Response:
    with metrics.observed(VERB) as call:
        try:
            args, candidates = _body.parse_args(await request.body())
        except _body.BadRequest as e:
            call.outcome = "bad_request"
            return Response(content=wire.ErrorBody(Error=f"eat-extender: {e}").model_dump_json(),
                            status_code=400, media_type="application/json")
        try:
            pod = state.pod_view(args.pod)
            scores = prioritizing.decide(pod, candidates, cache.snapshot(), clock())
        except Exception as e:  # a bug: a 500 kube-scheduler ignores, logged and counted
            call.outcome = "internal_error"
            log.exception("prioritize failed")
            return Response(content=wire.ErrorBody(Error=f"eat-extender: internal error: {type(e).__name__}: {e}")
                            .model_dump_json(), status_code=500, media_type="application/json")
        metrics.decisions.labels(VERB, scores.kind.value, "scored").inc()
        return Response(content=wire.host_priority_list_json(scores.scores), media_type="application/json")
