"""Turn a snapshot into decisions: the policy decides, the physics predicts, words explain.

The policy is asked repeatedly at the same instant, as in the simulator: each dispatch marks
its GPUs busy until the predicted finish and warms their caches, until the policy waits or
no job is left. A learned policy that raises, scores options with numbers that are not finite
or proposes something infeasible is replaced, for the whole request, by the fallback
heuristic, and the response says so.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from eat_policy import api
from eat_policy.agents import base
from eat_policy.service import requests
from eat_policy.sim import catalog, physics
from eat_policy.snapshot import Decision, Snapshot

log = logging.getLogger(__name__)
_physics = physics.EdgePhysics()


class PolicyFailed(RuntimeError):
    """The learned policy raised, scored with numbers that are not finite or proposed something
    infeasible; the message says what."""


@dataclasses.dataclass(frozen=True)
class Dispatch:
    row: int
    decision: Decision
    placement: physics.Placement
    attention: tuple[np.ndarray, dict[int, float]] | None = None
    """The learned policy's attention for this job: over nodes (N,), over other jobs (by id)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    dispatches: list[Dispatch]
    after: Snapshot
    """The snapshot once every dispatch is applied; its jobs are the ones left waiting."""
    rows_left: list[int]
    """Original row of each job left in ``after``."""


def plan_snapshot(snap: Snapshot, policy: base.Policy, strict: bool, gpu_keeps_model: bool = False) -> Plan:
    """Dispatches for one instant. ``strict``: raise PolicyFailed on an infeasible decision.
    ``gpu_keeps_model``: a dispatch leaves its model resident on its GPUs (a warm pool)."""
    out: list[Dispatch] = []
    rows = list(range(snap.n_jobs))  # original row of each job still queued
    policy.reset(0)
    while snap.n_jobs and len(snap.idle_gpus()):  # with no idle GPU, waiting is all any policy can do
        try:
            d = policy.decide(snap)
        except Exception as e:  # a learned policy's bug must not take the service down
            if not strict:
                raise
            raise PolicyFailed(f"policy raised {type(e).__name__}: {e}") from e
        if strict and not finite_outputs(policy):
            raise PolicyFailed("policy's outputs are not finite (NaN or infinite scores)")
        if d is None:
            break
        problem = infeasible(snap, d)
        if problem:
            if strict:
                raise PolicyFailed(f"infeasible decision: {problem}")
            raise RuntimeError(f"fallback heuristic proposed an infeasible decision: {problem}")
        placement = _physics.estimate(snap, d.job, d.gpus)
        attention = getattr(policy, "attention", None)
        out.append(Dispatch(rows[d.job], d, placement, attention(int(snap.job_id[d.job])) if attention else None))
        snap = _apply(snap, d, placement, gpu_keeps_model)
        del rows[d.job]
    return Plan(out, snap, rows)


def finite_outputs(policy: base.Policy) -> bool:
    """Whether the latest actor pass of a learned policy is finite. A NaN score compares false
    with every other, so the greedy choice among them is arbitrary but looks feasible."""
    instant = getattr(policy, "instant", None)  # a heuristic has none
    return instant is None or all(np.isfinite(x).all() for x in (instant.u, instant.v, instant.w))


def infeasible(snap: Snapshot, d: Decision) -> str | None:
    if not 0 <= d.job < snap.n_jobs:
        return f"job index {d.job} outside the window"
    if d.k not in snap.allowed_k(d.job):
        return f"k={d.k} not allowed (allowed {snap.allowed_k(d.job)})"
    idle = set(snap.idle_gpus().tolist())
    if len(set(d.gpus)) != d.k or not set(d.gpus) <= idle:
        return f"GPUs {d.gpus} are not {d.k} distinct idle GPUs"
    need = catalog.MODELS[int(snap.job_model[d.job])].vram_gb
    if any(snap.node_gpu_mem_gb[snap.gpu_node[g]] < need for g in d.gpus):
        return "a GPU has too little memory for the model"
    if not snap.job_steps_min[d.job] <= d.steps <= snap.job_steps_max[d.job]:
        return f"steps {d.steps} outside the job's range"
    return None


def _apply(snap: Snapshot, d: Decision, p: physics.Placement, gpu_keeps_model: bool) -> Snapshot:
    """The snapshot after dispatching d: its GPUs busy, its model on the disk of its nodes once
    their download ends (and resident on its GPUs if they keep it), its job gone."""
    gpus = list(d.gpus)
    m = int(snap.job_model[d.job])
    free_at, resident, disk, util = snap.gpu_free_at.copy(), snap.gpu_resident.copy(), snap.node_disk.copy(), snap.gpu_util.copy()
    disk_ready = snap.node_disk_ready_s.copy()
    free_at[gpus] = p.finish_s(d.steps)
    resident[gpus, m] |= gpu_keeps_model
    nodes = np.unique(snap.gpu_node[gpus])
    fetching = nodes[~disk[nodes, m]]
    disk_ready[fetching, m] = p.start_s + _physics.download_s[m]
    disk[nodes, m] = True
    util[gpus] = 1.0
    keep = np.arange(snap.n_jobs) != d.job
    jobs = {f.name: getattr(snap, f.name)[keep] for f in dataclasses.fields(snap) if f.name.startswith("job_")}
    return dataclasses.replace(snap, gpu_free_at=free_at, gpu_resident=resident, node_disk=disk,
                               node_disk_ready_s=disk_ready, gpu_util=util, queue_len=snap.queue_len - 1, **jobs)


def explain(snap: Snapshot, d: Dispatch) -> list[str]:
    """Why this placement, in words: cache state, GPU type and load of each chosen node."""
    m = int(snap.job_model[d.row])
    lines = []
    for n in dict.fromkeys(int(snap.gpu_node[g]) for g in d.decision.gpus):
        mine = [g for g in d.decision.gpus if snap.gpu_node[g] == n]
        lines.append(f"{snap.node_names[n]}: {_cache_words(snap, n, m, mine)}, {snap.node_type[n]} ×{len(mine)}, "
                     f"GPUs {_busy_share(snap, n):.0%} busy")
    k = d.decision.k
    lines.append(f"{k} patch{'es' if k > 1 else ''}, {d.decision.steps} steps: "
                 f"predicted {d.placement.finish_s(d.decision.steps) - snap.now:.1f} s")
    return lines


def explain_attention(snap: Snapshot, d: Dispatch, job_names: dict[int, str], top: int = 3) -> list[str]:
    """The learned policy's top attention weights over nodes and over the other queued jobs."""
    if d.attention is None:
        return []
    over_nodes, over_jobs = d.attention
    m = int(snap.job_model[d.row])
    nodes = []
    for n in np.argsort(-over_nodes, kind="stable")[:top]:
        n = int(n)
        idle = int(np.count_nonzero(snap.gpu_free_at[snap.slots[n, : snap.node_gpus[n]]] <= snap.now))
        nodes.append(f"{snap.node_names[n]} {over_nodes[n]:.0%} ({_cache_words(snap, n, m)}, "
                     f"{idle}/{snap.node_gpus[n]} GPUs idle)")
    lines = [f"attention over nodes (uniform {1 / snap.n_nodes:.0%}): " + "; ".join(nodes)]
    if over_jobs:
        ranked = sorted(over_jobs.items(), key=lambda kv: -kv[1])[:top]
        lines.append(f"attention over queued jobs (uniform {1 / (len(over_jobs) + 1):.0%}): "
                     + ", ".join(f"{job_names.get(i, i)} {w:.0%}" for i, w in ranked))
    return lines


def _cache_words(snap: Snapshot, n: int, m: int, gpus: list[int] | None = None) -> str:
    gpus = list(snap.slots[n, : snap.node_gpus[n]]) if gpus is None else gpus
    if all(snap.gpu_resident[g, m] for g in gpus):
        return "model warm in GPU memory"
    if any(snap.gpu_resident[g, m] for g in gpus):
        return "model warm on some GPUs"
    if snap.node_disk[n, m]:
        return "model on local disk"
    return "model fetched from the store (cold)"


def _busy_share(snap: Snapshot, n: int) -> float:
    return float(np.mean(snap.gpu_util[snap.slots[n, : snap.node_gpus[n]]]))


def to_decisions(planned: requests.Planned, plan: Plan) -> list[api.JobDecision]:
    snap = planned.snapshot
    job_names = {int(i): planned.jobs[row].id for row, i in enumerate(snap.job_id)}
    out = []
    done = {d.row: d for d in plan.dispatches}
    waiting = dict(zip(plan.rows_left, wait_reasons(plan.after)))
    for row, job in enumerate(planned.jobs):
        d = done.get(row)
        if d is None:
            out.append(api.JobDecision(job=job.id, action="wait", reason=waiting[row]))
            continue
        steps = d.decision.steps
        out.append(api.JobDecision(
            job=job.id, action="dispatch", patches=d.decision.k,
            nodes=[snap.node_names[snap.gpu_node[g]] for g in d.decision.gpus], steps=steps,
            predicted_latency_s=round(d.placement.finish_s(steps) - snap.now, 3),
            predicted_quality=round(_physics.quality(snap, row, steps), 4),
            cache=d.placement.cache, explanation=explain(snap, d) + explain_attention(snap, d, job_names),
        ))
    for job in planned.overflow:
        out.append(api.JobDecision(job=job.id, action="wait", reason="beyond the planning window; older jobs first"))
    return out


NO_GPU_FOR_MODEL = "no GPU can run this model now (memory or nodes not ready)"
HELD = "held: other jobs first, or waiting for warm GPUs is predicted to finish sooner"


def wait_reasons(snap: Snapshot) -> list[str]:
    """Why each job left in ``snap`` waits: no idle GPU at all, no GPU able to run its model
    (memory, nodes not ready), fewer such GPUs than its patch counts need, or held by the
    policy. One readiness per model, not a candidate search per job."""
    if not snap.idle_gpus().size:
        return ["no idle GPU"] * snap.n_jobs
    readiness = {m: _physics.readiness(snap, m) for m in set(snap.job_model.tolist())}
    return [_wait_reason(snap, j, readiness[int(snap.job_model[j])]) for j in range(snap.n_jobs)]


def _wait_reason(snap: Snapshot, j: int, r: physics.Readiness) -> str:
    if _physics.can_place(snap, j, r):
        return HELD
    if r.usable == 0:
        return NO_GPU_FOR_MODEL
    return f"needs {min(snap.allowed_k(j))} GPUs, {r.usable} usable"
