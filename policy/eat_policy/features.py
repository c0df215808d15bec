"""The one featurisation of a ``Snapshot``: used by the simulator's gymnasium env in
training and by the policy service on live data, so the policy sees identical tensors.

Shapes: nodes (N, NODE_DIM), jobs (J, JOB_DIM), pairs (J, N, PAIR_DIM), global (GLOBAL_DIM,);
masks: job_mask (J,), k_mask (J, len(K_VALUES)), free (J, N) usable idle GPUs per job and node,
may_wait (whether waiting is an option, ``may_wait``).
Times are in units of TIME_SCALE_S and clipped, so features stay in a small range whatever the
cluster size or load.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eat_policy.snapshot import Snapshot
from eat_policy.sim import catalog

K_VALUES = (1, 2, 4, 8)
MAX_MODELS = 8
"""Width of the model one-hot; the catalog may grow to this without changing shapes."""
TIME_SCALE_S = 60.0
TIME_CLIP = 10.0
NODE_DIM, JOB_DIM, PAIR_DIM, GLOBAL_DIM = 11, MAX_MODELS + 6 + len(K_VALUES), 4, 4

_LOAD_S = np.array([m.disk_start_s() for m in catalog.MODELS])
_FETCH_S = _LOAD_S + np.array([m.size_gb / catalog.STORE_FETCH_GB_S for m in catalog.MODELS])
_VRAM_GB = np.array([m.vram_gb for m in catalog.MODELS])


@dataclasses.dataclass(frozen=True)
class Observation:
    nodes: np.ndarray
    jobs: np.ndarray
    pairs: np.ndarray
    global_: np.ndarray
    job_mask: np.ndarray
    k_mask: np.ndarray
    free: np.ndarray
    may_wait: bool


def _t(seconds: np.ndarray) -> np.ndarray:
    return np.clip(seconds / TIME_SCALE_S, -TIME_CLIP, TIME_CLIP)


def featurize(snap: Snapshot) -> Observation:
    job_mask, k_mask, free = masks(snap)
    return Observation(
        nodes=_node_features(snap).astype(np.float32),
        jobs=_job_features(snap).astype(np.float32),
        pairs=_pair_features(snap).astype(np.float32),
        global_=_global_features(snap).astype(np.float32),
        job_mask=job_mask,
        k_mask=k_mask,
        free=free,
        may_wait=may_wait(snap, bool(job_mask.any())),
    )


def masks(snap: Snapshot, jobs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Only the feasibility part of ``featurize``: (job_mask, k_mask, free), of the rows ``jobs``
    (all by default)."""
    rows = np.arange(snap.n_jobs) if jobs is None else jobs
    free = _free_per_job(snap, rows)
    k_mask = _k_mask(snap, free, rows)
    return k_mask.any(axis=1), k_mask, free


def may_wait(snap: Snapshot, can_dispatch: bool) -> bool:
    """Whether waiting is an option: only while a GPU is busy, or when nothing can be dispatched.
    A wait pays off when a running job frees a better (warm) GPU; with every GPU idle no
    completion is coming, so waiting only delays, and with no arrivals left it strands the queue
    (measured: a policy that waited there left 9 jobs unserved at the end of an episode)."""
    busy = (snap.gpu_free_at > snap.now) & snap.node_up[snap.gpu_node]
    return bool(busy.any()) or not can_dispatch


def _node_features(snap: Snapshot) -> np.ndarray:
    idle = (snap.gpu_free_at <= snap.now) & snap.node_up[snap.gpu_node]
    n = snap.n_nodes
    idle_count = np.bincount(snap.gpu_node, weights=idle, minlength=n)
    remaining = np.maximum(snap.gpu_free_at - snap.now, 0.0)
    busy_sum = np.bincount(snap.gpu_node, weights=remaining, minlength=n)
    busy_min = np.full(n, np.inf)
    np.minimum.at(busy_min, snap.gpu_node, remaining)
    util = np.bincount(snap.gpu_node, weights=snap.gpu_util, minlength=n) / snap.node_gpus
    group = snap.node_group
    grouped = group >= 0
    group_size = np.zeros(n)
    group_size[grouped] = np.bincount(group[grouped])[group[grouped]]
    return np.stack([
        snap.node_speed / 2.0,
        snap.node_gpus / 8.0,
        idle_count / snap.node_gpus,
        _t(busy_sum / snap.node_gpus),
        _t(busy_min),
        snap.node_up.astype(float),
        snap.node_gpu_mem_gb / 80.0,
        np.minimum(snap.node_disk_gb, 100.0) / 100.0,
        np.array([lk == "nvlink" for lk in snap.node_link], dtype=float),
        group_size / 8.0,
        util,
    ], axis=1)


def _job_features(snap: Snapshot) -> np.ndarray:
    j = snap.n_jobs
    one_hot = np.zeros((j, MAX_MODELS))
    one_hot[np.arange(j), np.minimum(snap.job_model, MAX_MODELS - 1)] = 1.0
    deadline = snap.job_deadline_s
    has_deadline = np.isfinite(deadline)
    slack = np.where(has_deadline, deadline - snap.now, 0.0)
    k_fixed = (snap.job_k[:, None] == np.array(K_VALUES)[None, :]).astype(float)
    scalars = np.stack([
        snap.job_pixels / (1024.0 * 1024.0),
        snap.job_steps_min / 50.0,
        snap.job_steps_max / 50.0,
        _t(snap.now - snap.job_arrival_s),
        _t(slack),
        has_deadline.astype(float),
    ], axis=1)
    return np.concatenate([one_hot, scalars, k_fixed], axis=1)


def _pair_features(snap: Snapshot) -> np.ndarray:
    """Per (job, node): how warm the job's model is there and what loading it would cost."""
    n, j = snap.n_nodes, snap.n_jobs
    out = np.zeros((j, n, PAIR_DIM))
    if snap.scenario != "edge" or j == 0:
        return out
    m = snap.job_model
    resident = snap.gpu_resident[:, m].T.astype(float)  # (J, G)
    bins = (np.arange(j)[:, None] * n + snap.gpu_node[None, :]).ravel()  # (job, node) of each (job, GPU)
    resident_share = np.bincount(bins, weights=resident.ravel(), minlength=j * n).reshape(j, n) / snap.node_gpus
    on_disk = snap.node_disk[:, m].T.astype(float)  # (J, N)
    load = np.where(resident_share > 0, 0.0, np.where(on_disk > 0, _LOAD_S[m][:, None], _FETCH_S[m][:, None]))
    fits = (snap.node_gpu_mem_gb[None, :] >= _VRAM_GB[m][:, None]).astype(float)
    out[..., 0], out[..., 1], out[..., 2], out[..., 3] = resident_share, on_disk, _t(load), fits
    return out


def _global_features(snap: Snapshot) -> np.ndarray:
    busy = float(np.mean(snap.gpu_free_at > snap.now))
    # No absolute clock: a live cluster has no episode start, so the sim must not show one.
    mean_wait = float(np.mean(snap.now - snap.job_arrival_s)) if snap.n_jobs else 0.0
    return np.array([
        _t(np.array(mean_wait)),
        min(snap.queue_len / 64.0, 4.0),
        busy,
        np.log2(snap.n_nodes) / 8.0,
    ])


def _free_per_job(snap: Snapshot, rows: np.ndarray) -> np.ndarray:
    """(len(rows), N) idle GPUs on each node that have memory for each job's model."""
    idle = (snap.gpu_free_at <= snap.now) & snap.node_up[snap.gpu_node]
    per_node = np.bincount(snap.gpu_node, weights=idle, minlength=snap.n_nodes).astype(np.int64)
    if snap.scenario != "edge":
        return np.repeat(per_node[None, :], len(rows), axis=0)
    fits = snap.node_gpu_mem_gb[None, :] >= _VRAM_GB[snap.job_model[rows]][:, None]
    return np.where(fits, per_node[None, :], 0)


def _k_mask(snap: Snapshot, free: np.ndarray, rows: np.ndarray) -> np.ndarray:
    total = free.sum(axis=1)
    ks = np.array(K_VALUES)
    offered = np.array([k in snap.k_choices for k in K_VALUES])  # np.isin costs ~60 µs a call here
    allowed = offered[None, :] & (ks[None, :] <= np.minimum(total, snap.job_k_max[rows])[:, None])
    job_k = snap.job_k[rows]
    fixed = job_k > 0
    allowed[fixed] &= ks[None, :] == job_k[fixed][:, None]
    return allowed
