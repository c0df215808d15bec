"""From a ``PlanRequest`` (plus live metrics) to the simulator's ``Snapshot``.

Times are made relative to the request's ``now`` (which becomes 0), as in the simulator,
so the featurisation sees the same scales in training and in service.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from eat_policy import api
from eat_policy.service import prometheus
from eat_policy.sim import catalog
from eat_policy.snapshot import Snapshot

K_CHOICES = (1, 2, 4, 8)
UNKNOWN_GPU = catalog.GpuType("unknown", "", 0.5, 16.0, "pcie")
DEFAULT_DISK_GB = 100.0


class BadRequest(ValueError):
    """The request is well-formed JSON but cannot be planned; the message says why (HTTP 422)."""


def gpu_type(product: str) -> catalog.GpuType:
    """GPU type from the ``nvidia.com/gpu.product`` label: the catalog's type whose name is a
    word of the label (``NVIDIA-L40`` is no ``L4``), with the label's interconnect and memory
    where it names them (``NVIDIA-A100-PCIE-40GB``); the unknown type if no word names one."""
    for g in catalog.GPU_TYPES.values():
        if product == g.product:
            return g
    words = re.split(r"[-_\s]+", product.upper())
    known = [g for g in catalog.GPU_TYPES.values() if g.name.upper() in words]
    base = known[0] if known else UNKNOWN_GPU
    sizes = [float(m[1]) for w in words if (m := _MEMORY_SIZE.fullmatch(w))]
    return dataclasses.replace(base, link="pcie" if "PCIE" in words else base.link,
                               mem_gb=sizes[-1] if sizes else base.mem_gb)


_MEMORY_SIZE = re.compile(r"(?:\d+G\.)?([1-9]\d{0,3})GB")
"""A memory size word: ``40GB``, or a MIG slice's ``1G.5GB`` (its 5 GB, named after the card's)."""


@dataclasses.dataclass(frozen=True)
class Planned:
    """The snapshot plus what maps it back to names."""

    snapshot: Snapshot
    jobs: list[api.JobRequest]
    """Window jobs, in snapshot row order."""
    overflow: list[api.JobRequest]
    """Jobs beyond the window."""
    now: float


def validate_jobs(jobs: list[api.JobRequest]) -> None:
    known = {m.name for m in catalog.MODELS}
    for job in jobs:
        if job.model not in known:
            raise BadRequest(f"job {job.id!r}: unknown model {job.model!r}; known models: {', '.join(sorted(known))}")
        if job.steps_min > job.steps_max:
            raise BadRequest(f"job {job.id!r}: steps_min {job.steps_min} > steps_max {job.steps_max}")
        if job.patches is not None and job.patches not in K_CHOICES:
            raise BadRequest(f"job {job.id!r}: patches must be one of {K_CHOICES}, got {job.patches}")
        if job.patches is not None and job.max_patches is not None and job.patches > job.max_patches:
            raise BadRequest(f"job {job.id!r}: patches {job.patches} > max_patches {job.max_patches}")
        spec = catalog.MODEL_BY_NAME[job.model]
        if job.patches is not None and job.patches > spec.max_patches(job.height):
            raise BadRequest(f"job {job.id!r}: height {job.height} of {job.model} does not split into {job.patches} "
                             f"row patches (a multiple of {spec.patch_row_px * job.patches} would)")
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        raise BadRequest("job ids must be unique")


OVERDUE_S = 1e-3
"""When a busy GPU frees, seen from a request whose estimate for it has passed: any moment (1 ms),
but not now. The node still reports it busy, so it must not be planned onto (nor read as idle)."""


def build(req: api.PlanRequest, now: float, window: int, live: prometheus.NodeMetrics, busy_guess_s: float,
          saturated: float) -> Planned:
    validate_jobs(req.jobs)
    names = [n.name for n in req.nodes]
    if len(set(names)) != len(names):
        raise BadRequest("node names must be unique")
    jobs = sorted(req.jobs, key=lambda j: (j.arrival_time, j.id))
    nodes = [n for n in req.nodes if n.gpus_total > 0]  # nothing can run on the others
    return Planned(_snapshot(nodes, jobs[:window], len(jobs), now, live, busy_guess_s, saturated),
                   jobs[:window], jobs[window:], now)


def _snapshot(nodes: list[api.NodeInfo], jobs: list[api.JobRequest], queue_len: int, now: float,
              live: prometheus.NodeMetrics, busy_guess_s: float, saturated: float) -> Snapshot:
    model_index = {m.name: i for i, m in enumerate(catalog.MODELS)}
    n_models = len(catalog.MODELS)
    types = [gpu_type(n.gpu_product) for n in nodes]
    gpus = np.array([n.gpus_total for n in nodes], dtype=np.int64)
    gpu_node = np.repeat(np.arange(len(nodes)), gpus)
    width = max(1, int(gpus.max())) if len(nodes) else 1
    slots = np.full((len(nodes), width), len(gpu_node), dtype=np.int64)
    free_at = np.zeros(len(gpu_node))
    resident = np.zeros((len(gpu_node), n_models), dtype=bool)
    util = np.zeros(len(gpu_node))
    disk = np.zeros((len(nodes), n_models), dtype=bool)
    first = 0
    for i, node in enumerate(nodes):
        own = np.arange(first, first + node.gpus_total)
        slots[i, : node.gpus_total] = own
        busy = node.gpus_total - min(node.gpus_free, node.gpus_total)
        release = sorted(max(t - now, OVERDUE_S) for t in node.gpu_free_at)[:busy]
        release += [busy_guess_s] * (busy - len(release))
        free_at[own[node.gpus_total - busy:]] = release  # the last GPUs are the busy ones
        util[own[node.gpus_total - busy:]] = 1.0
        seen = live.get(node.name)
        # A model the node agent reports in GPU memory is held by the inference pod that loaded
        # it, whose GPU is busy; it leaves with that pod. So it says the node's disk has it.
        on_disk = set(node.cached_models) | (seen.cached | seen.resident if seen else set())
        for model in on_disk:
            if model in model_index:
                disk[i, model_index[model]] = True
        for model in node.resident_models:  # the caller's word: e.g. a warm pool that keeps it loaded
            if model in model_index:
                resident[own, model_index[model]] = True
        if seen:
            # DCGM's GPU indices are not the request's (its busy GPUs are placed last above): the
            # busy ones take the highest readings, so only saturation beyond them marks more.
            readings = sorted((v for gpu, v in seen.gpu_util.items() if 0 <= gpu < node.gpus_total), reverse=True)
            by_load = np.concatenate([own[node.gpus_total - busy:], own[: node.gpus_total - busy]])
            for g, value in zip(by_load, readings):
                util[g] = max(util[g], value)
                if value >= saturated and free_at[g] <= 0:
                    free_at[g] = busy_guess_s  # busy with work we did not place
        first += node.gpus_total
    speed = np.array([t.speed for t in types])
    return Snapshot(
        now=0.0,
        scenario="edge",
        k_choices=K_CHOICES,
        model_names=tuple(m.name for m in catalog.MODELS),
        node_names=tuple(n.name for n in nodes),
        node_type=tuple(t.name for t in types),
        node_speed=speed,
        node_gpus=np.maximum(gpus, 1),
        node_link=tuple(t.link for t in types),
        node_gpu_mem_gb=np.array([n.gpu_mem_gb or t.mem_gb for n, t in zip(nodes, types)]),
        node_disk_gb=np.array([n.disk_gb or DEFAULT_DISK_GB for n in nodes]),
        node_up=np.array([n.ready for n in nodes], dtype=bool),
        node_disk=disk,
        node_disk_ready_s=np.zeros(disk.shape),  # the node agent reports a model once its fetch is complete
        node_group=np.full(len(nodes), -1, dtype=np.int64),
        slots=slots,
        gpu_node=gpu_node,
        gpu_speed=speed[gpu_node],
        gpu_free_at=free_at,
        gpu_resident=resident,
        gpu_util=util,
        job_id=np.arange(len(jobs), dtype=np.int64),
        job_model=np.array([model_index[j.model] for j in jobs], dtype=np.int64),
        job_pixels=np.array([float(j.width * j.height) for j in jobs]),
        job_arrival_s=np.array([j.arrival_time - now for j in jobs]),
        job_deadline_s=np.array([j.arrival_time - now + (j.deadline_s or np.inf) for j in jobs]),
        job_steps_min=np.array([j.steps_min for j in jobs], dtype=np.int64),
        job_steps_max=np.array([j.steps_max for j in jobs], dtype=np.int64),
        job_k=np.array([j.patches or 0 for j in jobs], dtype=np.int64),
        job_k_max=np.array([min(j.max_patches or 8, catalog.MODEL_BY_NAME[j.model].max_patches(j.height))
                            for j in jobs], dtype=np.int64),
        queue_len=queue_len,
    )
