"""The state a scheduler decides on: one frozen view of the cluster and its queue.

The simulator produces it at every decision point and the policy service builds it from a
live ClusterSnapshot, so heuristics, the featurisation and the learned policy all read the
same structure (no train/serve skew). Arrays may be shared with the simulator's live state:
treat them as read-only and do not keep a snapshot past the next simulator step.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Snapshot:
    now: float
    scenario: str
    """``paper`` or ``edge``: which physics prices a placement (``sim.physics``)."""
    k_choices: tuple[int, ...]
    model_names: tuple[str, ...]
    # Nodes, shape (N,) unless noted.
    node_names: tuple[str, ...]
    node_type: tuple[str, ...]
    node_speed: np.ndarray
    node_gpus: np.ndarray
    node_link: tuple[str, ...]
    node_gpu_mem_gb: np.ndarray
    node_disk_gb: np.ndarray
    node_up: np.ndarray
    node_disk: np.ndarray
    """(N, M) bool: model m is in node n's disk cache (or being fetched into it)."""
    node_disk_ready_s: np.ndarray
    """(N, M) when a fetch into node n's disk cache completes; a pod that loads the model from
    that disk waits for it (the cache downloads once). In the past (0) once complete."""
    node_group: np.ndarray
    """Paper scenario: id of the warm process group a node belongs to, -1 for none."""
    slots: np.ndarray
    """(N, max GPUs per node) GPU indices of each node, padded with G."""
    # GPUs, shape (G,) unless noted.
    gpu_node: np.ndarray
    gpu_speed: np.ndarray
    gpu_free_at: np.ndarray
    """Absolute time the GPU becomes free (<= now: idle now)."""
    gpu_resident: np.ndarray
    """(G, M) bool: model m is loaded in this GPU's memory."""
    gpu_util: np.ndarray
    """Observed utilisation in [0, 1] (busy share in the sim, DCGM in the service)."""
    # Visible queue window, oldest first, shape (J,).
    job_id: np.ndarray
    job_model: np.ndarray
    job_pixels: np.ndarray
    job_arrival_s: np.ndarray
    job_deadline_s: np.ndarray
    """Absolute deadline; +inf for none."""
    job_steps_min: np.ndarray
    job_steps_max: np.ndarray
    job_k: np.ndarray
    """Patch count the job demands, 0 where the scheduler chooses."""
    job_k_max: np.ndarray
    """Most patches the job accepts (8: any)."""
    queue_len: int
    """All queued jobs, including those beyond the window."""

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    @property
    def n_gpus(self) -> int:
        return len(self.gpu_node)

    @property
    def n_jobs(self) -> int:
        return len(self.job_id)

    def idle_gpus(self) -> np.ndarray:
        """Indices of GPUs free now on nodes that are up."""
        return np.flatnonzero((self.gpu_free_at <= self.now) & self.node_up[self.gpu_node])

    def allowed_k(self, j: int) -> tuple[int, ...]:
        k = int(self.job_k[j])
        if k:
            return (k,)
        k_max = int(self.job_k_max[j])
        return tuple(c for c in self.k_choices if c <= k_max)


@dataclasses.dataclass(frozen=True)
class Decision:
    """Dispatch window job ``job`` on ``gpus`` (one per patch) with ``steps`` denoising steps."""

    job: int
    gpus: tuple[int, ...]
    steps: int

    @property
    def k(self) -> int:
        return len(self.gpus)
