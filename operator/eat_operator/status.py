"""AIGCJob status: the phase machine, as pure functions from a snapshot to the next step.

    Pending ──plan──► Planned ──group exists, gates lifted──► Scheduling ──all bound──► Running
       ▲                 │                                        │                      │
       └── retry ◄───────┴──── member failed / node lost / unschedulable too long ◄──────┘
                                                                               all done ─┴─► Succeeded
    (invalid spec, or retries beyond the backoff limit) ─────────────────────────────────► Failed

Status is the source of truth: the plan (and the attempt number) is written *before* any
pod is created, so after a crash the group is rebuilt from status with the same names, and
a job goes back to Pending only in the same write that gives up its plan. Every function
here reads a ``ClusterSnapshot`` and returns a ``Step``; ``dispatching`` executes steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eat_policy import api

from eat_operator import kube, podgroup, settings as settings_mod, snapshot

Obj = dict[str, Any]

PHASES = ("Pending", "Planned", "Scheduling", "Running", "Succeeded", "Failed")


@dataclasses.dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Step:
    """What to do for one job, in order: write status, delete pods, ensure the group."""

    status: Obj | None = None
    """Merge patch for ``.status`` (None: leave it)."""
    delete: tuple[str, ...] = ()
    force_delete: tuple[str, ...] = ()
    """Pods bound to a node that is gone or not Ready: no kubelet will ever confirm a graceful
    delete, and the group's names stay taken until they are removed (grace period 0)."""
    ensure_group: bool = False
    """Create the missing pods and the Service, lift the gates once all exist, then Scheduling."""
    events: tuple[Event, ...] = ()
    retried: str | None = None
    """Why the group was torn down (for metrics), if it was."""
    rest_nodes: tuple[str, ...] = ()
    """Nodes that kept this group's pods unbound past the timeout, for a reason the snapshot
    cannot see: the dispatcher offers them to no plan for a while."""

    @property
    def empty(self) -> bool:
        return (self.status is None and not self.delete and not self.force_delete and not self.ensure_group
                and not self.events)


NOTHING = Step()


def stamp(t: float) -> str:
    return kube.now_rfc3339(t)


def set_condition(conditions: list[Obj] | None, type_: str, status: bool, reason: str, message: str,
                  now: float) -> list[Obj]:
    """The conditions list with one condition set (lastTransitionTime kept if unchanged)."""
    out = [dict(c) for c in conditions or [] if c.get("type") != type_]
    old = next((c for c in conditions or [] if c.get("type") == type_), None)
    value = "True" if status else "False"
    since = old["lastTransitionTime"] if old and old.get("status") == value else stamp(now)
    out.append({"type": type_, "status": value, "reason": reason, "message": message[:1024],
                "lastTransitionTime": since})
    return out


def timestamps(job: snapshot.JobView, phase: str, now: float) -> Obj:
    """The timestamps map with ``phase`` entered at ``now`` (a job is Pending from creation)."""
    ts = dict(job.status.get("timestamps") or {})
    ts.setdefault("pending", stamp(job.created))
    ts[phase.lower()] = stamp(now)
    return ts


def pending(job: snapshot.JobView, now: float, message: str, reason: str = "Waiting") -> Step:
    """First sight of a job, or a new reason to hold it."""
    st = job.status
    if st.get("phase") == "Pending" and st.get("message") == message:
        return NOTHING
    patch: Obj = {"phase": "Pending", "reason": reason, "message": message,
                  "observedGeneration": job.body.get("metadata", {}).get("generation")}
    if "pending" not in (st.get("timestamps") or {}):
        patch["timestamps"] = timestamps(job, "Pending", job.created)
    if "attempts" not in st:
        patch["attempts"] = 0
    return Step(status=patch)


def failed(job: snapshot.JobView, now: float, reason: str, message: str,
           delete: tuple[str, ...] = ()) -> Step:
    conds = set_condition(job.status.get("conditions"), "Failed", True, reason, message, now)
    return Step(
        status={"phase": "Failed", "reason": reason, "message": message,
                "timestamps": timestamps(job, "Failed", now), "conditions": conds},
        delete=delete, events=(Event("Warning", reason, message),),
    )


def planned(job: snapshot.JobView, decision: api.JobDecision, policy: api.PolicyInfo, source: str,
            fallback_reason: str | None, now: float) -> Step:
    """Pending → Planned: the plan and the new attempt number, written before any pod exists."""
    attempt = job.attempts + 1
    nodes = list(decision.nodes)
    fallback = source != "service" or policy.fallback
    why = fallback_reason or policy.fallback_reason
    placement = _placement(nodes)
    plan: Obj = {
        "attempt": attempt,
        "patches": decision.patches,
        "nodes": nodes,
        "placement": placement,
        "steps": decision.steps,
        "predictedLatencySeconds": decision.predicted_latency_s,
        "predictedQuality": decision.predicted_quality,
        "cache": decision.cache,
        "warm": decision.cache in ("resident", "disk") if decision.cache else None,
        "policy": policy.name,
        "policyVersion": policy.version,
        "plannedBy": source,
        "fallback": fallback,
        "fallbackReason": why if fallback else None,
        "explanation": list(decision.explanation),
        "plannedAt": stamp(now),
    }
    conds = set_condition(job.status.get("conditions"), "Planned", True, "Planned",
                          f"{decision.patches} patches on {placement}", now)
    conds = set_condition(conds, "PolicyFallback", fallback, "Fallback" if fallback else "Policy",
                          why or f"planned by {policy.name}" if fallback else f"planned by {policy.name}", now)
    latency = f"{decision.predicted_latency_s:.1f} s" if decision.predicted_latency_s is not None else "unknown"
    message = (f"attempt {attempt}: {decision.patches} patch{'es' if decision.patches != 1 else ''} on {placement}, "
               f"{decision.steps} steps, predicted {latency} ({policy.name}"
               f"{', in-process fallback' if source != 'service' else ''})")
    return Step(
        status={"phase": "Planned", "reason": "Planned", "message": message, "attempts": attempt, "plan": plan,
                "timestamps": timestamps(job, "Planned", now), "conditions": conds},
        ensure_group=True,
        events=(Event("Normal", "Planned", message + ": " + "; ".join(decision.explanation)),),
    )


def _placement(nodes: list[str]) -> str:
    """'a,b' with repeats folded: 'eat-gpu-a100-0 x4,eat-gpu-h100-1'."""
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n] = counts.get(n, 0) + 1
    return ",".join(n if c == 1 else f"{n} x{c}" for n, c in counts.items())


def _released(job: snapshot.JobView, now: float) -> tuple[list[Obj], Obj]:
    """Conditions and timestamps of a job whose whole group exists with its gates lifted."""
    conds = set_condition(job.status.get("conditions"), "GroupCreated", True, "GangReleased",
                          "all pods exist; scheduling gates lifted", now)
    return conds, timestamps(job, "Scheduling", now)


def scheduling(job: snapshot.JobView, now: float) -> Obj:
    """Status patch once the whole group exists and its gates are lifted."""
    conds, ts = _released(job, now)
    return {"phase": "Scheduling", "reason": "GangReleased", "message": "pod group created; waiting for binding",
            "timestamps": ts, "conditions": conds}


def reconcile(job: snapshot.JobView, snap: snapshot.ClusterSnapshot, s: settings_mod.Settings,
              output: str, create_error: str | None = None, refused_since: float | None = None) -> Step:
    """The next step for a job that is not waiting for a plan (phase past Pending), or one
    that has leftover pods. Planning itself is ``dispatching``'s business. ``create_error``:
    why the API server last refused one of its pods or a gate lift, or why its Service cannot
    be made, if so; ``refused_since``: when this attempt's refusals began.

    Pods on a lost node (gone, or not Ready for ``node_not_ready_grace_s``) are removed with
    grace period 0, those being deleted already included: otherwise they would hold their
    names, and the job its next plan, until the pod garbage collector or a returning kubelet
    let go of them."""
    step = _next_step(job, snap, s, output, create_error, refused_since)
    lost = {p.name for p in snap.pods_of(job) if p.node and _node_lost(snap, p.node, s)}
    if not lost:
        return step
    stuck = tuple(p.name for p in snap.pods_of(job) if p.deleting and p.name in lost)
    return dataclasses.replace(step, delete=tuple(n for n in step.delete if n not in lost),
                               force_delete=tuple(n for n in step.delete if n in lost) + stuck)


def leftovers(job: snapshot.JobView, snap: snapshot.ClusterSnapshot) -> tuple[str, ...]:
    """The job's pods still running or waiting to (a failed job deletes them)."""
    return tuple(p.name for p in snap.pods_of(job) if not p.deleting and not p.terminated)


def _node_lost(snap: snapshot.ClusterSnapshot, name: str, s: settings_mod.Settings) -> bool:
    view = snap.nodes.get(name)
    if view is None:
        return name not in snap.ready_unselected
    return not view.ready and _not_ready_past_grace(view, snap.now, s)


def _not_ready_past_grace(view: snapshot.NodeView, now: float, s: settings_mod.Settings) -> bool:
    """NotReady for ``node_not_ready_grace_s`` or more (or for how long it does not say)."""
    since = view.not_ready_since
    return since is None or now - since >= s.node_not_ready_grace_s


def _next_step(job: snapshot.JobView, snap: snapshot.ClusterSnapshot, s: settings_mod.Settings,
               output: str, create_error: str | None, refused_since: float | None) -> Step:
    now = snap.now
    pods = snap.pods_of(job)
    phase = job.phase
    live = tuple(p.name for p in pods if not p.deleting)
    if phase == "Succeeded":
        return NOTHING
    if phase == "Failed":
        left = leftovers(job, snap)
        return Step(delete=left) if left else NOTHING
    if phase == "Pending" or phase not in PHASES:
        return Step(delete=live) if live else NOTHING

    attempt = job.attempts
    plan = job.plan or {}
    nodes: list[str] = list(plan.get("nodes") or [])
    if not nodes:
        return _teardown(job, snap, s, live, failure=False, reason="PlanLost",
                         message=f"phase {phase} without a plan")
    stale = tuple(p.name for p in pods if p.attempt != attempt and not p.deleting)
    current = {p.rank: p for p in pods if p.attempt == attempt and p.rank is not None and not p.deleting}

    bad = [p for p in current.values() if p.phase == "Failed"]
    if bad:
        first = bad[0]
        why = (f"pod {first.name} failed" + (f": {first.reason}" if first.reason else "")
               + (f" ({first.message})" if first.message else ""))
        return _teardown(job, snap, s, live, failure=True, reason="MemberFailed", message=why)
    blocked = [p for p in current.values() if p.cannot_start]
    running_since = kube.parse_time((job.status.get("timestamps") or {}).get("running"))
    if blocked and phase == "Running" and running_since is not None and \
            now - running_since > s.unschedulable_timeout_s:
        return _teardown(job, snap, s, live, failure=True, reason="MemberCannotStart",
                         message=f"pod {blocked[0].name} cannot start: {blocked[0].cannot_start}")
    for rank, node in enumerate(nodes):
        member = current.get(rank)
        if member is not None and member.phase == "Succeeded":
            continue
        where = member.node if member is not None and member.node else node
        view = snap.nodes.get(where)
        if view is None and member is not None and member.node and where in snap.ready_unselected:
            continue  # its node lost our labels after it was bound: it runs on
        if view is not None and not view.ready and not _not_ready_past_grace(view, now, s):
            continue  # maybe a blip: it may come back
        if view is None or not view.ready:
            state = "is gone" if view is None else "is not Ready"
            return _teardown(job, snap, s, live, failure=False, reason="NodeLost",
                             message=f"node {where} of rank {rank} {state}")
        if member is None or not member.node:  # not bound yet: its planned node must still be able to take it
            unusable = _cannot_take(view, nodes.count(node))
            if unusable:
                return _teardown(job, snap, s, live, failure=False, reason="NodeUnschedulable",
                                 message=f"node {node} of rank {rank} {unusable}")
    if phase == "Running" and len(current) < len(nodes):
        gone = sorted(set(range(len(nodes))) - set(current))
        return _teardown(job, snap, s, live, failure=True, reason="MemberLost",
                         message=f"pod {podgroup.pod_name(job.name, gone[0])} disappeared")

    if len(current) < len(nodes) or any(p.gated for p in current.values()):
        since = kube.parse_time((job.status.get("timestamps") or {}).get("planned")) or now
        if refused_since is not None:
            since = max(since, refused_since)
        if phase == "Planned" and create_error and now - since > s.unschedulable_timeout_s:
            # The API server keeps refusing the pods (quota, admission, a bad pod template) or
            # their gates' lift, or a pod's or the Service's name is taken: count it as a failed
            # attempt, so the backoff limit ends it with the reason. Pods merely not tried yet
            # (the operator was down since the plan) are not a failure: the time counts from
            # the first refusal.
            made = len(nodes) - len(set(range(len(nodes))) - set(current))
            return _teardown(job, snap, s, live, failure=True, reason="GroupNotCreated",
                             message=f"{made} of {len(nodes)} pods created, group not released after "
                                     f"{now - since:.0f} s: {create_error}")
        return Step(delete=stale, ensure_group=True)
    # The group exists and is released. A Planned job moves on here, in the cycle after its
    # group was made (one status write less when kube-scheduler has bound it meanwhile); it
    # still ensures the group, whose Service a restart may have left unmade.
    released = phase == "Planned"
    if len(current) == len(nodes) and all(p.phase == "Succeeded" for p in current.values()):
        return dataclasses.replace(_succeeded(job, now, output, stale), ensure_group=released)

    all_bound = all(p.node for p in current.values())
    if phase in ("Planned", "Scheduling") and all_bound:
        placement = _placement([current[r].node for r in range(len(nodes))])
        conds, ts = _released(job, now) if released else (job.status.get("conditions"), timestamps(job, "Running", now))
        conds = set_condition(conds, "Scheduled", True, "Scheduled", placement, now)
        return Step(
            status={"phase": "Running", "reason": "Running", "message": f"running on {placement}",
                    "timestamps": {**ts, "running": stamp(now)}, "conditions": conds},
            delete=stale, ensure_group=released, events=(Event("Normal", "Scheduled", f"pods bound to {placement}"),),
        )
    if released:
        return Step(status=scheduling(job, now), delete=stale, ensure_group=True)
    if phase == "Scheduling" and not all_bound:
        since = kube.parse_time((job.status.get("timestamps") or {}).get("scheduling")) or now
        if now - since > s.unschedulable_timeout_s:
            waiting = sorted((r, p.name) for r, p in current.items() if not p.node)
            # Nothing the snapshot shows kept them off these nodes (CPU, memory, pod slots,
            # affinity, or the extender holding a gang): re-planning onto them would only
            # wait another timeout. A gang's healthy nodes rest too; the rest is short.
            rest = tuple(sorted({nodes[r] for r, _ in waiting}))
            st = _teardown(job, snap, s, live, failure=False, reason="Unschedulable",
                           message=f"pods {', '.join(n for _, n in waiting)} not bound to {', '.join(rest)} "
                                   f"after {now - since:.0f} s")
            return dataclasses.replace(st, rest_nodes=rest)
    return Step(delete=stale) if stale else NOTHING


def _cannot_take(view: snapshot.NodeView, ranks: int) -> str | None:
    """Why a node can never bind a rank planned on it (the snapshot's view), or None."""
    if not view.schedulable:
        return "is cordoned or has a taint the pods do not tolerate"
    if view.gpus_total < ranks:
        return f"has {view.gpus_total} GPUs; the plan puts {ranks} ranks on it"
    return None


def _succeeded(job: snapshot.JobView, now: float, output: str, stale: tuple[str, ...]) -> Step:
    latency = round(max(now - job.created, 0.0), 3)
    deadline = (job.body.get("spec") or {}).get("deadlineSeconds")
    met = None if deadline is None else latency <= float(deadline)
    conds = set_condition(job.status.get("conditions"), "Succeeded", True, "Succeeded", f"image at {output}", now)
    qos = "" if met is None else (", deadline met" if met else f", deadline of {deadline} s missed")
    message = f"done in {latency:.1f} s{qos}; image at {output}"
    patch: Obj = {"phase": "Succeeded", "reason": "Succeeded", "message": message, "latencySeconds": latency,
                  "outputLocation": output, "timestamps": timestamps(job, "Succeeded", now), "conditions": conds}
    if met is not None:
        patch["deadlineMet"] = met
    return Step(status=patch, delete=stale, events=(Event("Normal", "Succeeded", message),))


def _teardown(job: snapshot.JobView, snap: snapshot.ClusterSnapshot, s: settings_mod.Settings,
              live: tuple[str, ...], failure: bool, reason: str, message: str) -> Step:
    """Give up this attempt: back to Pending for a new plan, or Failed past the limits."""
    now = snap.now
    failures = int(job.status.get("failures") or 0) + (1 if failure else 0)
    replans = int(job.status.get("replans") or 0) + (0 if failure else 1)
    if failure and failures > s.backoff_limit:
        st = failed(job, now, "BackoffLimitExceeded",
                    f"{message}; {failures} failed attempts exceed the backoff limit of {s.backoff_limit}", live)
        assert st.status is not None
        return dataclasses.replace(st, status={**st.status, "failures": failures}, retried=reason)
    if not failure and replans > s.replan_limit:
        st = failed(job, now, "ReplanLimitExceeded", f"{message}; re-planned {replans - 1} times already", live)
        assert st.status is not None
        return dataclasses.replace(st, status={**st.status, "replans": replans}, retried=reason)
    conds = job.status.get("conditions")
    for type_ in ("Planned", "GroupCreated", "Scheduled"):  # none holds for the next attempt yet
        conds = set_condition(conds, type_, False, reason, message, now)
    text = f"retrying after attempt {job.attempts}: {message}"
    return Step(
        status={"phase": "Pending", "reason": reason, "message": text, "plan": None, "failures": failures,
                "replans": replans, "conditions": conds},
        delete=live, events=(Event("Warning", "Retrying", text),), retried=reason,
    )
