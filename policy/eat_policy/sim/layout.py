"""The static shape of a cluster: nodes, their GPUs, disks and initial model caches.

The layout depends on the scenario and its ``cluster_seed`` only, never on the trace seed, so
one evaluation compares policies on one cluster across many traces.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eat_policy.sim import catalog, scenarios

# Edge cluster mix (est.): a plausible edge/cloud fleet, fast and slow GPUs side by side.
GPU_MIX = {"H100": 0.10, "A100": 0.25, "L40S": 0.20, "A10G": 0.20, "L4": 0.15, "T4": 0.10}
GPUS_PER_NODE = {1: 0.3, 2: 0.3, 4: 0.25, 8: 0.15}
DISK_CACHE_GB = (10.0, 16.0, 24.0)
"""Node-local model cache sizes: the catalog (15.9 GB) does not fit everywhere, so LRU matters."""


@dataclasses.dataclass(frozen=True)
class Layout:
    node_names: tuple[str, ...]
    node_type: tuple[str, ...]
    node_speed: np.ndarray
    node_gpus: np.ndarray
    node_link: tuple[str, ...]
    node_gpu_mem_gb: np.ndarray
    node_disk_gb: np.ndarray
    gpu_node: np.ndarray
    """(G,) node index of each GPU."""
    gpu_speed: np.ndarray
    slots: np.ndarray
    """(N, max GPUs per node) GPU indices of each node, padded with G (a sentinel)."""
    initial_disk: tuple[tuple[int, ...], ...]
    """Per node, cached model indices, least recently used first."""
    initial_resident: tuple[tuple[int, ...], ...]
    """Per GPU, model indices resident in GPU memory, least recently used first."""

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    @property
    def n_gpus(self) -> int:
        return len(self.gpu_node)


def make_layout(sc: scenarios.Scenario) -> Layout:
    if sc.name == "paper":
        return _paper_layout(sc.n_nodes)
    return _edge_layout(sc.n_nodes, sc.cluster_seed)


def _paper_layout(n: int) -> Layout:
    return _assemble(
        names=[f"n{i}" for i in range(n)], types=["A100"] * n, gpus=[1] * n,
        disk_gb=[float("inf")] * n, disk=[()] * n, resident=[()] * n,
    )


def _edge_layout(n: int, seed: int) -> Layout:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A40]))
    types = list(rng.choice(list(GPU_MIX), n, p=list(GPU_MIX.values())))
    gpus = [int(g) for g in rng.choice(list(GPUS_PER_NODE), n, p=list(GPUS_PER_NODE.values()))]
    disk_gb = [float(d) for d in rng.choice(DISK_CACHE_GB, n)]
    disk, resident = [], []
    for i in range(n):
        cached: list[int] = []
        for m in rng.permutation(len(catalog.MODELS)):
            spec = catalog.MODELS[m]
            used = sum(catalog.MODELS[c].size_gb for c in cached)
            if rng.random() < spec.popularity * 1.5 and used + spec.size_gb <= disk_gb[i]:
                cached.append(int(m))
        disk.append(tuple(cached))
        mem = catalog.GPU_TYPES[types[i]].mem_gb
        for _ in range(gpus[i]):
            fits = [m for m in cached if catalog.MODELS[m].vram_gb <= mem]
            resident.append((int(rng.choice(fits)),) if fits and rng.random() < 0.5 else ())
    return _assemble([f"n{i}" for i in range(n)], types, gpus, disk_gb, disk, resident)


def _assemble(names, types, gpus, disk_gb, disk, resident) -> Layout:  # type: ignore[no-untyped-def]
    gpu_types = [catalog.GPU_TYPES[t] for t in types]
    gpu_node = np.repeat(np.arange(len(names)), gpus)
    g_total, width = len(gpu_node), max(gpus)
    slots = np.full((len(names), width), g_total, dtype=np.int64)
    first = 0
    for i, count in enumerate(gpus):
        slots[i, :count] = np.arange(first, first + count)
        first += count
    node_speed = np.array([g.speed for g in gpu_types])
    return Layout(
        node_names=tuple(names),
        node_type=tuple(types),
        node_speed=node_speed,
        node_gpus=np.array(gpus, dtype=np.int64),
        node_link=tuple(g.link for g in gpu_types),
        node_gpu_mem_gb=np.array([g.mem_gb for g in gpu_types]),
        node_disk_gb=np.array(disk_gb, dtype=np.float64),
        gpu_node=gpu_node,
        gpu_speed=node_speed[gpu_node],
        slots=slots,
        initial_disk=tuple(tuple(d) for d in disk),
        initial_resident=tuple(tuple(r) for r in resident),
    )
