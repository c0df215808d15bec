"""What a placement costs: start time, cold-start cost and per-step time of a gang.

One physics per scenario prices any (job, GPU set) exactly as the engine will charge it
(``estimate``), and proposes the few GPU sets worth considering for a job (``candidates``),
so heuristics, the learned policy's masks and the service's predicted latencies all agree
with the simulator. On edge, ``candidates`` is ``readiness`` (per model, shareable by the
model's jobs) followed by ``search``; ``agents.cache_aware_kernel`` compiles the same two.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Protocol

import numpy as np

from eat_policy.snapshot import Snapshot
from eat_policy.sim import catalog, paper

INF = float("inf")


@dataclasses.dataclass(frozen=True)
class Placement:
    gpus: tuple[int, ...]
    start_s: float
    """Absolute time the whole gang can launch (all members free)."""
    startup_s: float
    """Model fetch/load and rendezvous (paper: the cold start R_k, or 0 when warm)."""
    fixed_s: float
    """Per-image work besides the steps: text encoder, VAE, synchronous warm-up steps."""
    per_step_s: float
    cache: str
    """Worst member's model state: ``resident``/``disk``/``store`` (edge), ``warm``/``cold`` (paper)."""

    @property
    def k(self) -> int:
        return len(self.gpus)

    @property
    def cold(self) -> bool:
        return self.cache not in ("resident", "warm")

    def duration_s(self, steps: int) -> float:
        return self.startup_s + self.fixed_s + steps * self.per_step_s

    def finish_s(self, steps: int) -> float:
        return self.start_s + self.duration_s(steps)


class Physics(Protocol):
    def estimate(self, snap: Snapshot, j: int, gpus: tuple[int, ...]) -> Placement: ...

    def candidates(
        self, snap: Snapshot, j: int, steps: int, idle_only: bool = False, exclude: np.ndarray | None = None
    ) -> list[Placement]: ...

    def quality(self, snap: Snapshot, j: int, steps: int) -> float: ...

    def finish_each(self, snap: Snapshot, j: int, gpus: np.ndarray, steps: int) -> np.ndarray: ...


def for_scenario(name: str) -> Physics:
    return PaperPhysics() if name == "paper" else EdgePhysics()


def steps_within_deadline(snap: Snapshot, j: int, placement: Placement, default_steps: int) -> int:
    """Most steps (best quality) that still meet the job's deadline; its minimum if none do.

    Jobs without a deadline get ``default_steps``, clipped to their range.
    """
    deadline = float(snap.job_deadline_s[j])
    if math.isinf(deadline):
        return default_steps_of(snap, j, default_steps)
    budget = deadline - placement.start_s - placement.startup_s - placement.fixed_s
    return min(max(int(budget // placement.per_step_s), int(snap.job_steps_min[j])), int(snap.job_steps_max[j]))


def default_steps_of(snap: Snapshot, j: int, default_steps: int) -> int:
    """The steps of a job without a deadline: ``default_steps`` clipped to the job's range.
    (``agents.cache_aware_kernel`` repeats this rule inside its compiled loop.)"""
    return min(max(default_steps, int(snap.job_steps_min[j])), int(snap.job_steps_max[j]))


def _ready_times(snap: Snapshot, idle_only: bool, exclude: np.ndarray | None, unusable: np.ndarray | None) -> np.ndarray:
    ready = np.maximum(snap.gpu_free_at, snap.now)
    bad = ~snap.node_up[snap.gpu_node]
    if idle_only:
        bad |= snap.gpu_free_at > snap.now
    if exclude is not None:
        bad |= exclude
    if unusable is not None:
        bad |= unusable
    ready[bad] = INF
    return ready


# --- paper ------------------------------------------------------------------------------


class PaperPhysics:
    """The prototype: D = c_k·s (+ R_k unless exactly this node set ran the previous task)."""

    def estimate(self, snap: Snapshot, j: int, gpus: tuple[int, ...]) -> Placement:
        k = len(gpus)
        warm = is_warm_group(snap.node_group, gpus)
        start = max(snap.now, max(float(snap.gpu_free_at[g]) for g in gpus))
        return Placement(gpus, start, 0.0 if warm else paper.R_K[k], 0.0, paper.C_K[k], "warm" if warm else "cold")

    def finish_each(self, snap: Snapshot, j: int, gpus: np.ndarray, steps: int) -> np.ndarray:
        """(len(gpus),) when job j would finish alone on each GPU: ``estimate(snap, j, (g,))``."""
        return np.array([self.estimate(snap, j, (int(g),)).finish_s(steps) for g in gpus], dtype=float)

    def candidates(
        self, snap: Snapshot, j: int, steps: int, idle_only: bool = False, exclude: np.ndarray | None = None
    ) -> list[Placement]:
        ready = _ready_times(snap, idle_only, exclude, None)
        grouped = snap.node_group >= 0
        # Cold sets take the earliest-ready nodes, sparing nodes of live warm groups, then by index.
        order = np.lexsort((np.arange(len(ready)), grouped, ready))
        out = []
        for k in snap.allowed_k(j):
            for g in set(snap.node_group[grouped].tolist()):
                members = np.flatnonzero(snap.node_group == g)
                if len(members) == k and np.all(np.isfinite(ready[members])):
                    out.append(self.estimate(snap, j, tuple(int(m) for m in members)))
            pick = order[:k]
            if len(pick) == k and np.all(np.isfinite(ready[pick])):
                out.append(self.estimate(snap, j, tuple(sorted(int(m) for m in pick))))
        return out

    def quality(self, snap: Snapshot, j: int, steps: int) -> float:
        return paper.quality(steps)


def is_warm_group(node_group: np.ndarray, nodes: tuple[int, ...]) -> bool:
    """Warm iff exactly this node set forms a live process group (paper-notes.md)."""
    g = int(node_group[nodes[0]])
    if g < 0 or any(int(node_group[n]) != g for n in nodes):
        return False
    return int(np.count_nonzero(node_group == g)) == len(nodes)


@functools.lru_cache(maxsize=1024)
def most_efficient_k(scenario: str, k_choices: tuple[int, ...], k_max: int, pixels: float) -> int:
    """The patch count up to ``k_max`` with the least GPU-seconds per denoising step (ties: fewer
    patches): k·c_k on paper; on edge, k over its best patch speed-up (over the link kinds)."""
    ks = [c for c in k_choices if c <= k_max]
    if scenario == "paper":
        return min(ks, key=lambda c: (c * paper.C_K[c], c))
    best_speedup = {c: max(_speedup(c, pixels, link) for link in catalog.LINK_PENALTY) for c in ks}
    return min(ks, key=lambda c: (c / best_speedup[c], c))


# --- edge -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _speedup(k: int, pixels: float, link: str) -> float:
    return catalog.patch_speedup(k, pixels, link)


@functools.lru_cache(maxsize=64)
def _link_codes(node_link: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray]:
    """A layout's link kinds, and each node's as an index into them (integer comparisons cost
    a fraction of string ones, and ``finish_each`` runs at every ``-fit`` decision)."""
    names = tuple(dict.fromkeys(node_link))
    codes = np.array([names.index(lk) for lk in node_link], dtype=np.int64)
    codes.flags.writeable = False  # cached and shared by every caller with this layout
    return names, codes


def _compute_s(spec: catalog.ModelSpec, pixels: float) -> float:
    """Seconds of one step's UNet compute on an A100 (the part GPUs and patches divide)."""
    return spec.step_s(pixels, 1.0) - spec.t_floor_s


def _with_cache(snap: Snapshot, m: int, gpus: np.ndarray, ready: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``gpus`` free at ``ready``: when each can launch model m (a fetch into its node's disk
    may still be running: its pod waits for it) and the model's cache tier there (0 resident,
    1 node disk, 2 model store), as ``estimate`` prices them."""
    node = snap.gpu_node[gpus]
    tier = np.where(snap.gpu_resident[gpus, m], 0, np.where(snap.node_disk[node, m], 1, 2))
    return np.where(tier == 1, np.maximum(ready, snap.node_disk_ready_s[node, m]), ready), tier


@dataclasses.dataclass(frozen=True)
class Readiness:
    """When each GPU could serve one model: the part of a candidate search that does not
    depend on the job's resolution, steps or k, so one serves all the model's jobs."""

    model: int
    ready: np.ndarray
    """(G,) when each GPU is free to launch; inf where it cannot take part (down, too little
    memory, excluded, or busy in an idle-only search)."""
    tier: np.ndarray
    """(G,) the model's cache tier: 0 resident, 1 node disk, 2 model store."""
    begin: np.ndarray
    """(G,) when each GPU could begin computing: ready plus its tier's load time."""
    ranked: np.ndarray
    """(N, W) each node's GPUs by begin, ties by slot; padded with G."""
    launch: np.ndarray
    """(N, W) in column k - 1, for the gang of a node's first k ranked GPUs: when its last
    member is free."""
    worst: np.ndarray
    """(N, W) that gang's worst tier."""
    launch_setup: np.ndarray
    """(N, W) launch plus the worst tier's load time: when that gang starts computing."""
    usable: int
    """How many GPUs can take part."""


class EdgePhysics:
    """Heterogeneous GPUs, three-tier model cache, DistriFusion-style patch speed-ups."""

    def __init__(self, models: tuple[catalog.ModelSpec, ...] = catalog.MODELS) -> None:
        self.models = models
        self.load_s = np.array([m.disk_start_s() for m in models])
        self.download_s = np.array([m.size_gb / catalog.STORE_FETCH_GB_S for m in models])
        self.fetch_s = self.load_s + self.download_s
        self._shapes: dict[tuple[int, float, float, int, str], tuple[float, float]] = {}

    def estimate(self, snap: Snapshot, j: int, gpus: tuple[int, ...]) -> Placement:
        m, px = int(snap.job_model[j]), float(snap.job_pixels[j])
        spec, k = self.models[m], len(gpus)
        start, worst, speed, nodes = snap.now, 0, INF, set()
        for g in gpus:
            node = int(snap.gpu_node[g])
            nodes.add(node)
            start = max(start, float(snap.gpu_free_at[g]))
            speed = min(speed, float(snap.gpu_speed[g]))
            tier = 0 if snap.gpu_resident[g, m] else 1 if snap.node_disk[node, m] else 2
            if tier == 1:  # a fetch into the node's disk may still be running: its pod waits for it
                start = max(start, float(snap.node_disk_ready_s[node, m]))
            worst = max(worst, tier)
        link = snap.node_link[nodes.pop()] if len(nodes) == 1 else "network"
        return self._placement(spec, px, k, tuple(gpus), start, worst, speed, link, m)

    def finish_each(self, snap: Snapshot, j: int, gpus: np.ndarray, steps: int) -> np.ndarray:
        """(len(gpus),) when job j would finish alone on each GPU: ``estimate(snap, j, (g,))``'s
        finish, vectorised (the ``-fit`` heuristics ask it for every idle GPU at each decision)."""
        m, px = int(snap.job_model[j]), float(snap.job_pixels[j])
        start, tier = _with_cache(snap, m, gpus, np.maximum(snap.now, snap.gpu_free_at[gpus].astype(float)))
        startup = np.array([0.0, self.load_s[m], self.fetch_s[m]])[tier]
        per_step, fixed = np.empty(len(gpus)), np.empty(len(gpus))
        speeds = snap.gpu_speed[gpus].astype(float)
        names, codes = _link_codes(snap.node_link)
        links = codes[snap.gpu_node[gpus]]
        for speed, code in set(zip(speeds.tolist(), links.tolist())):
            same = (speeds == speed) & (links == code)
            per_step[same], fixed[same] = self.shape(m, px, speed, 1, names[code])
        return start + (startup + fixed + steps * per_step)

    def _step_and_fixed(self, spec: catalog.ModelSpec, px: float, speed: float, k: int, link: str) -> tuple[float, float]:
        compute = _compute_s(spec, px) / speed
        sp = _speedup(k, px, link)
        per_step = spec.t_floor_s + compute / sp
        fixed = spec.text_s + spec.vae512_s * px / catalog.REFERENCE_PIXELS / speed
        if k > 1:  # DistriFusion's synchronous warm-up steps run at 0.8 of the async efficiency
            sync = spec.t_floor_s + compute / max(1.0, 0.8 * sp)
            fixed += catalog.WARMUP_SYNC_STEPS * (sync - per_step)
        return per_step, fixed

    def candidates(
        self, snap: Snapshot, j: int, steps: int, idle_only: bool = False, exclude: np.ndarray | None = None
    ) -> list[Placement]:
        """Per allowed k: the best single-node gang and the best cross-node gang by finish time.

        Members are taken in order of when they could begin computing (free + model load);
        the gang launches when its last member is free and computes when its slowest loader is
        ready. Equal to ``estimate`` on the chosen sets, vectorised over nodes for speed.
        """
        return self.search(snap, j, steps, self.readiness(snap, int(snap.job_model[j]), idle_only, exclude))

    def readiness(
        self, snap: Snapshot, m: int, idle_only: bool = False, exclude: np.ndarray | None = None,
    ) -> Readiness:
        """The part of ``candidates`` that depends on the model only, shared by its jobs."""
        spec = self.models[m]
        too_small = snap.node_gpu_mem_gb[snap.gpu_node] < spec.vram_gb
        ready, tier = _with_cache(snap, m, np.arange(snap.n_gpus), _ready_times(snap, idle_only, exclude, too_small))
        load = np.array([0.0, self.load_s[m], self.fetch_s[m]])
        g = snap.n_gpus
        begin = np.empty(g + 1)
        begin[:g], begin[g] = ready + load[tier], INF
        order = np.argsort(begin[snap.slots], axis=1, kind="stable")
        ranked = np.take_along_axis(snap.slots, order, axis=1)
        ready_pad = np.empty(g + 1)
        ready_pad[:g], ready_pad[g] = ready, INF
        tier_pad = np.empty(g + 1, dtype=np.int64)
        tier_pad[:g], tier_pad[g] = tier, 0
        launch = np.maximum.accumulate(ready_pad[ranked], axis=1)
        worst = np.maximum.accumulate(tier_pad[ranked], axis=1)
        usable = int(np.count_nonzero(np.isfinite(begin[:g])))
        return Readiness(m, ready, tier, begin[:g], ranked, launch, worst, launch + load[worst], usable)

    def step_s(self, snap: Snapshot, m: int, px: float, steps: int, ks: tuple[int, ...]) -> dict[int, np.ndarray]:
        """Per k that fits on a node: each node's time for ``steps`` steps of a k-patch gang."""
        spec = self.models[m]
        compute = _compute_s(spec, px) / snap.node_speed
        nvlink = np.fromiter((lk == "nvlink" for lk in snap.node_link), dtype=bool, count=snap.n_nodes)
        out = {}
        for k in ks:
            if k <= snap.slots.shape[1]:
                sp = np.where(nvlink, _speedup(k, px, "nvlink"), _speedup(k, px, "pcie"))
                out[k] = steps * (spec.t_floor_s + compute / sp)
        return out

    @staticmethod
    def can_place(snap: Snapshot, j: int, r: Readiness) -> bool:
        """Whether ``search`` finds any placement for job j: some allowed k within the usable
        GPUs (k of them on one node give a single-node gang, spread over nodes a cross-node one),
        without pricing any."""
        return any(k <= r.usable for k in snap.allowed_k(j))

    def search(self, snap: Snapshot, j: int, steps: int, r: Readiness) -> list[Placement]:
        """``candidates`` from a readiness of the job's model."""
        m, px = int(snap.job_model[j]), float(snap.job_pixels[j])
        spec = self.models[m]
        ks = snap.allowed_k(j)
        step_s = self.step_s(snap, m, px, steps, ks)
        out = []
        for k in ks:
            if k > r.usable:
                continue
            if k in step_s:  # the node whose first k GPUs finish computing first
                finish = r.launch_setup[:, k - 1] + step_s[k]
                n = int(np.argmin(finish))
                if math.isfinite(finish[n]):
                    gpus = tuple(r.ranked[n, :k].tolist())
                    out.append(self._placement(spec, px, k, gpus, float(r.launch[n, k - 1]), int(r.worst[n, k - 1]),
                                               float(snap.node_speed[n]), snap.node_link[n], m))
            if k > 1:  # the k GPUs that could begin first anywhere (ties by index), if on several nodes
                pick = np.argsort(r.begin, kind="stable")[:k]
                if len(set(snap.gpu_node[pick].tolist())) > 1:
                    gpus = tuple(sorted(pick.tolist()))
                    out.append(self._placement(spec, px, k, gpus, float(r.ready[pick].max()), int(r.tier[pick].max()),
                                               float(snap.gpu_speed[pick].min()), "network", m))
        return out

    def placement(
        self, m: int, px: float, gpus: tuple[int, ...], launch: float, worst: int, speed: float, link: str,
    ) -> Placement:
        """What ``estimate`` gives for a job of model m on ``gpus`` that launch at ``launch``,
        with worst tier ``worst``, slowest GPU speed ``speed`` and ``link`` between them."""
        return self._placement(self.models[m], px, len(gpus), gpus, launch, worst, speed, link, m)

    def shape(self, m: int, px: float, speed: float, k: int, link: str) -> tuple[float, float]:
        """Per-step and fixed seconds of a k-patch gang of model m whose slowest GPU has ``speed``."""
        key = (m, px, speed, k, link)
        out = self._shapes.get(key)
        if out is None:
            out = self._shapes[key] = self._step_and_fixed(self.models[m], px, speed, k, link)
        return out

    def _placement(
        self, spec: catalog.ModelSpec, px: float, k: int, gpus: tuple[int, ...], launch: float, worst: int,
        speed: float, link: str, m: int,
    ) -> Placement:
        per_step, fixed = self.shape(m, px, speed, k, link)
        startup = (0.0, float(self.load_s[m]), float(self.fetch_s[m]))[worst]
        if k > 1:
            startup += catalog.GANG_RENDEZVOUS_S
        return Placement(gpus, launch, startup, fixed, per_step, ("resident", "disk", "store")[worst])

    def quality(self, snap: Snapshot, j: int, steps: int) -> float:
        return self.models[int(snap.job_model[j])].quality(steps)
