"""The event-driven simulator: jumps from event to event, asks a policy at decision points.

A decision point is any moment when jobs are queued and some GPU is idle. The policy answers
with a ``Decision`` (dispatch one job on a GPU set) or ``None`` (wait for the next event:
an arrival, a completion, a node failure or repair). Several dispatches may happen at one
instant; time only moves when the policy waits or nothing can be decided.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import heapq
import math

import numpy as np

from eat_policy.snapshot import Decision, Snapshot
from eat_policy.sim import catalog, layout, metrics, paper, physics, scenarios, traces

GPU_RESIDENT_SHARE = 0.9
"""Share of GPU memory that resident pipelines may fill; the rest is activations."""


class InvalidDecision(ValueError):
    """A policy asked for something the cluster cannot do; the message says what."""


@dataclasses.dataclass(frozen=True)
class _Load:
    """What one dispatch loads: undone if its gang is killed before the load ends."""

    model: int
    ready_s: float
    """When the gang's start-up ends: before then its pods have not loaded the model."""
    gpus: tuple[int, ...]
    """Members that load the model (from disk or the store): it was not in their memory."""
    downloads: tuple[int, ...]
    """Nodes whose download of the model this dispatch started."""


class Simulator:
    def __init__(self, scenario: scenarios.Scenario) -> None:
        self.scenario = scenario
        self.layout = layout.make_layout(scenario)
        self.physics = physics.for_scenario(scenario.name)
        self.model_names = tuple(m.name for m in catalog.MODELS) if scenario.name == "edge" else ("sd14-1440",)
        self._vram = np.array([m.vram_gb for m in catalog.MODELS])
        self._size = np.array([m.size_gb for m in catalog.MODELS])

    # --- episode lifecycle --------------------------------------------------------------

    def reset(self, seed: int) -> None:
        sc, lay = self.scenario, self.layout
        self.seed = seed
        self.trace = traces.make_trace(sc, seed)
        self._k_max = _k_max(sc, self.trace)
        # Failures and run-time noise from streams of their own (per node, per job attempt), so
        # that every policy meets the same failures and the same job runs the same on the seed.
        self._failure_rngs = [np.random.default_rng([seed, 0xFA11, node]) for node in range(lay.n_nodes)]
        n, n_models = len(self.trace), len(self.model_names)
        self.now = 0.0
        self.end_s = sc.cut_s if sc.cut_s is not None else float(self.trace.arrival_s[-1]) + sc.grace_s
        self.done = False
        self._next_arrival = 0
        self.queue: list[int] = []
        self._running: list[tuple[float, int, int]] = []  # (finish, token, job)
        self._token = np.zeros(n, dtype=np.int64)
        self._job_gpus: dict[int, tuple[int, ...]] = {}
        self._loads: dict[int, _Load] = {}  # running edge jobs
        self.gpu_free_at = np.zeros(lay.n_gpus)
        self.busy_gpu_s = 0.0
        self.node_up = np.ones(lay.n_nodes, dtype=bool)
        self.node_group = np.full(lay.n_nodes, -1, dtype=np.int64)
        self._next_group = 0
        self._resident_lru = [list(r) for r in lay.initial_resident]
        self._disk_lru = [list(d) for d in lay.initial_disk]
        self.gpu_resident = np.zeros((lay.n_gpus, n_models), dtype=bool)
        self.node_disk = np.zeros((lay.n_nodes, n_models), dtype=bool)
        self.node_disk_ready = np.zeros((lay.n_nodes, n_models))
        if not sc.gpu_keeps_model:
            self._resident_lru = [[] for _ in self._resident_lru]
        for g, models in enumerate(self._resident_lru):
            self.gpu_resident[g, models] = True
        for i, models in enumerate(self._disk_lru):
            self.node_disk[i, models] = True
        self.records = metrics.JobRecords.empty(n)
        self._events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, node)
        self._seq = 0
        if sc.failures_per_node_h > 0:
            for node in range(lay.n_nodes):
                self._schedule_failure(node)
        self._snap: Snapshot | None = None
        self._window: tuple[list[int], dict[str, np.ndarray]] | None = None
        self._admit_arrivals()
        self._advance_until_decision()

    def snapshot(self) -> Snapshot:
        if self._snap is None:
            self._snap = self._build_snapshot()
        return self._snap

    def step(self, decision: Decision | None) -> float:
        """Apply one decision (None: wait); returns the reward earned by it."""
        if self.done:
            raise RuntimeError("episode is over; call reset()")
        if decision is None:
            self._advance(self._next_event_time())
            self._advance_until_decision()
            return 0.0
        reward = self._dispatch(decision)
        self._advance_until_decision()
        return reward

    def with_future(self, seed: int) -> "Simulator":
        """A copy whose jobs that have not arrived yet are drawn afresh from the scenario (trace
        ``seed``), arriving after now; what has arrived, runs or is cached is kept. For poisson
        arrivals the copy is a sample of the episode's possible futures given the present."""
        sim = copy.deepcopy(self)
        first = self._next_arrival
        if first >= len(self.trace):
            return sim
        fresh = traces.make_trace(self.scenario, seed)
        take = slice(self.scenario.initial_queue, self.scenario.initial_queue + len(self.trace) - first)
        columns = {f.name: getattr(self.trace, f.name).copy() for f in dataclasses.fields(self.trace)}
        for name, column in columns.items():
            column[first:] = getattr(fresh, name)[take]
        columns["arrival_s"][first:] += self.now
        sim.trace = traces.Trace(**columns)
        sim._k_max = _k_max(self.scenario, sim.trace)
        if self.scenario.cut_s is None:
            sim.end_s = float(sim.trace.arrival_s[-1]) + self.scenario.grace_s
        return sim

    @property
    def n_arrived(self) -> int:
        """Jobs that have arrived so far (trace order is arrival order)."""
        return self._next_arrival

    def known_finish_s(self) -> np.ndarray:
        """Per job, when it finished or, if it runs, when it will (no noise or failure to come
        by then); NaN for jobs not started."""
        out = self.records.finish_s.copy()
        for finish, token, job in self._running:
            if token == self._token[job]:
                out[job] = finish
        return out

    def metrics(self) -> metrics.EpisodeMetrics:
        return metrics.summarise(self.records, self.trace, self.now, self.layout.n_gpus, self._busy_until_end())

    # --- dispatching --------------------------------------------------------------------

    def _dispatch(self, d: Decision) -> float:
        snap = self.snapshot()
        self._validate(snap, d)
        job = int(snap.job_id[d.job])
        placement = self.physics.estimate(snap, d.job, d.gpus)
        run_s = placement.duration_s(d.steps)
        if self.scenario.noise_cv > 0:  # noise on the job's own run, not on a wait for another pod's download
            sigma = math.sqrt(math.log(1 + self.scenario.noise_cv**2))
            noise = np.random.default_rng([self.seed, 0x0153, job, int(self.records.attempts[job])])
            run_s *= float(noise.lognormal(-sigma**2 / 2, sigma))
        finish = placement.start_s + run_s  # its GPUs are idle: it starts now, or when its node's download ends
        duration = finish - self.now
        wait = self.now - float(self.trace.arrival_s[job])
        reward = self._reward(snap, d, placement, duration, wait)
        self.queue.remove(job)
        for g in d.gpus:
            self.gpu_free_at[g] = finish
        self.busy_gpu_s += duration * d.k
        self._token[job] += 1
        heapq.heappush(self._running, (finish, int(self._token[job]), job))
        self._job_gpus[job] = d.gpus
        self.records.start(job, self.now, d.k, d.steps, self.physics.quality(snap, d.job, d.steps), placement.cache, reward)
        self._update_caches(snap, d, job, placement)
        self._snap = None
        return reward

    def _validate(self, snap: Snapshot, d: Decision) -> None:
        if not 0 <= d.job < snap.n_jobs:
            raise InvalidDecision(f"job index {d.job} is outside the window of {snap.n_jobs} queued jobs")
        if d.k not in snap.allowed_k(d.job):
            raise InvalidDecision(f"k={d.k} is not allowed for this job; allowed: {snap.allowed_k(d.job)}")
        if len(set(d.gpus)) != d.k:
            raise InvalidDecision(f"GPUs must be distinct, got {d.gpus}")
        idle = set(snap.idle_gpus().tolist())
        busy = [g for g in d.gpus if g not in idle]
        if busy:
            raise InvalidDecision(f"GPUs {busy} are busy, down or unknown")
        if self.scenario.name == "edge":
            need = catalog.MODELS[int(snap.job_model[d.job])].vram_gb
            small = [g for g in d.gpus if snap.node_gpu_mem_gb[snap.gpu_node[g]] < need]
            if small:
                raise InvalidDecision(f"GPUs {small} have less memory than the model needs ({need} GB)")
        lo, hi = int(snap.job_steps_min[d.job]), int(snap.job_steps_max[d.job])
        if not lo <= d.steps <= hi:
            raise InvalidDecision(f"steps={d.steps} outside the job's range [{lo}, {hi}]")

    def _reward(self, snap: Snapshot, d: Decision, p: physics.Placement, duration: float, wait: float) -> float:
        if self.scenario.name == "paper":
            visible_wait = float(np.mean(self.now - snap.job_arrival_s))
            return paper.reward(visible_wait, duration, wait, d.steps)
        # Edge: meeting the deadline counts most, then quality, then speed relative to it.
        deadline = float(snap.job_deadline_s[d.job] - snap.job_arrival_s[d.job])
        response = wait + duration
        spec = catalog.MODELS[int(snap.job_model[d.job])]
        q = spec.quality(d.steps) / spec.quality_knots[-1][1]
        return float(response <= deadline) + q - min(response / deadline, 3.0) / 3.0

    def _update_caches(self, snap: Snapshot, d: Decision, job: int, p: physics.Placement) -> None:
        if self.scenario.name == "paper":
            if not physics.is_warm_group(self.node_group, d.gpus):
                self._form_group(d.gpus)
            return
        assert isinstance(self.physics, physics.EdgePhysics)
        m = int(self.trace.model[job])
        loading = tuple(g for g in d.gpus if not self.gpu_resident[g, m])  # before the touches below
        for g in d.gpus if self.scenario.gpu_keeps_model else ():
            mem = float(snap.node_gpu_mem_gb[snap.gpu_node[g]]) * GPU_RESIDENT_SHARE
            self._touch(self._resident_lru[g], self.gpu_resident[g], m, self._vram, mem)
        downloads = []
        loading_nodes = {int(snap.gpu_node[g]) for g in loading}
        for n in {int(snap.gpu_node[g]) for g in d.gpus}:
            if n not in loading_nodes and not self.node_disk[n, m]:
                continue  # every member on n runs from GPU memory: nothing is read or fetched
            if not self.node_disk[n, m]:  # this gang's pod on n downloads it; siblings wait for the file
                self.node_disk_ready[n, m] = p.start_s + self.physics.download_s[m]
                downloads.append(n)
            self._touch(self._disk_lru[n], self.node_disk[n], m, self._size, float(self.layout.node_disk_gb[n]))
        self._loads[job] = _Load(m, p.start_s + p.startup_s, loading, tuple(downloads))

    def _form_group(self, nodes: tuple[int, ...]) -> None:
        """A cold start tears down every group the new set touches (paper-notes.md)."""
        for n in nodes:
            g = self.node_group[n]
            if g >= 0:
                self.node_group[self.node_group == g] = -1
        self.node_group[list(nodes)] = self._next_group
        self._next_group += 1

    @staticmethod
    def _touch(lru: list[int], present: np.ndarray, m: int, sizes: np.ndarray, capacity: float) -> None:
        """Mark m most recently used; evict least recently used models beyond capacity."""
        if m in lru:
            lru.remove(m)
        lru.append(m)
        present[m] = True
        while len(lru) > 1 and sum(sizes[x] for x in lru) > capacity:
            present[lru.pop(0)] = False

    # --- time ---------------------------------------------------------------------------

    def _needs_decision(self) -> bool:
        if not self.queue:
            return False
        return bool(((self.gpu_free_at <= self.now) & self.node_up[self.layout.gpu_node]).any())

    def _advance_until_decision(self) -> None:
        while not self.done and not self._needs_decision():
            if self._all_finished():
                self.done = True
                return
            self._advance(self._next_event_time())

    def _all_finished(self) -> bool:
        return self._next_arrival >= len(self.trace) and not self.queue and not self._running

    def _next_event_time(self) -> float:
        t = math.inf
        if self._next_arrival < len(self.trace):
            t = float(self.trace.arrival_s[self._next_arrival])
        if self._running:
            t = min(t, self._running[0][0])
        if self._events:
            t = min(t, self._events[0][0])
        return t

    def _advance(self, t: float) -> None:
        if t > self.end_s:
            self.now, self.done = self.end_s, True
            self._snap = None
            return
        self.now = t
        while self._running and self._running[0][0] <= t:
            finish, token, job = heapq.heappop(self._running)
            if token == self._token[job]:
                self.records.finish(job, finish)
                del self._job_gpus[job]
                self._loads.pop(job, None)
        while self._events and self._events[0][0] <= t:
            _, _, kind, node = heapq.heappop(self._events)
            self._fail(node) if kind == "fail" else self._repair(node)
        self._admit_arrivals()
        self._snap = None

    def _admit_arrivals(self) -> None:
        arrivals = self.trace.arrival_s
        while self._next_arrival < len(arrivals) and arrivals[self._next_arrival] <= self.now:
            self.queue.append(self._next_arrival)
            self._next_arrival += 1

    # --- node failures ------------------------------------------------------------------

    def _schedule_failure(self, node: int) -> None:
        rate_s = self.scenario.failures_per_node_h / 3600.0
        self._push_event(self.now + float(self._failure_rngs[node].exponential(1.0 / rate_s)), "fail", node)

    def _push_event(self, t: float, kind: str, node: int) -> None:
        heapq.heappush(self._events, (t, self._seq, kind, node))
        self._seq += 1

    def _fail(self, node: int) -> None:
        """Kill the gangs touching the node, requeue their jobs, lose its GPU-resident models."""
        self.node_up[node] = False
        gpus = set(self.layout.slots[node, : self.layout.node_gpus[node]].tolist())
        killed = [job for job, members in self._job_gpus.items() if not gpus.isdisjoint(members)]
        loads = [load for load in (self._loads.pop(job, None) for job in killed) if load is not None]
        for job in killed:
            self._kill(job)
        for load in loads:
            self._undo_unfinished(load)
        # Their completions would still wake the episode, and keep it going, if left in the heap.
        self._running = [e for e in self._running if e[1] == self._token[e[2]]]
        heapq.heapify(self._running)
        for g in gpus:
            self.gpu_resident[g] = False
            self._resident_lru[g].clear()
        self._push_event(self.now + self.scenario.repair_s, "repair", node)

    def _kill(self, job: int) -> None:
        self._token[job] += 1  # the pending completion is now stale
        for g in self._job_gpus.pop(job):
            self.busy_gpu_s -= (self.gpu_free_at[g] - self.now)
            self.gpu_free_at[g] = self.now
        self.records.killed(job)
        bisect.insort(self.queue, job)

    def _undo_unfinished(self, load: _Load) -> None:
        """A gang killed during its start-up leaves behind no model in its GPUs' memory, nor
        a file its pods were still downloading (unless a live gang waits for that file)."""
        if self.now >= load.ready_s:
            return
        m = load.model
        for g in load.gpus:
            if self.gpu_resident[g, m]:
                self.gpu_resident[g, m] = False
                self._resident_lru[g].remove(m)
        for n in load.downloads:
            if self.node_disk[n, m] and self.now < self.node_disk_ready[n, m] and not self._awaited(n, m):
                self.node_disk[n, m] = False
                self._disk_lru[n].remove(m)

    def _awaited(self, node: int, m: int) -> bool:
        """Whether a live gang loads model m on the node from its disk."""
        gpu_node = self.layout.gpu_node
        return any(load.model == m and any(gpu_node[g] == node for g in load.gpus) for load in self._loads.values())

    def _repair(self, node: int) -> None:
        self.node_up[node] = True
        self._schedule_failure(node)

    # --- views --------------------------------------------------------------------------

    def _busy_until_end(self) -> float:
        end = self.now
        beyond = sum(
            max(0.0, float(self.gpu_free_at[g]) - end) for members in self._job_gpus.values() for g in members
        )
        return self.busy_gpu_s - beyond

    def _jobs(self) -> dict[str, np.ndarray]:
        """The visible queue's columns; kept while it is unchanged (snapshots never write to them)."""
        window = self.queue[: self.scenario.window]
        if self._window is None or self._window[0] != window:
            tr, ids = self.trace, np.array(window, dtype=np.int64)
            self._window = (window, dict(
                job_id=ids,
                job_model=tr.model[ids],
                job_pixels=tr.pixels[ids],
                job_arrival_s=tr.arrival_s[ids],
                job_deadline_s=tr.arrival_s[ids] + tr.deadline_s[ids],
                job_steps_min=tr.steps_min[ids],
                job_steps_max=tr.steps_max[ids],
                job_k=tr.k[ids],
                job_k_max=self._k_max[ids],
            ))
        return self._window[1]

    def _build_snapshot(self) -> Snapshot:
        lay = self.layout
        return Snapshot(
            now=self.now,
            scenario=self.scenario.name,
            k_choices=self.scenario.k_choices,
            model_names=self.model_names,
            node_names=lay.node_names,
            node_type=lay.node_type,
            node_speed=lay.node_speed,
            node_gpus=lay.node_gpus,
            node_link=lay.node_link,
            node_gpu_mem_gb=lay.node_gpu_mem_gb,
            node_disk_gb=lay.node_disk_gb,
            node_up=self.node_up,
            node_disk=self.node_disk,
            node_disk_ready_s=self.node_disk_ready,
            node_group=self.node_group,
            slots=lay.slots,
            gpu_node=lay.gpu_node,
            gpu_speed=lay.gpu_speed,
            gpu_free_at=self.gpu_free_at,
            gpu_resident=self.gpu_resident,
            gpu_util=(self.gpu_free_at > self.now).astype(np.float64),
            queue_len=len(self.queue),
            **self._jobs(),
        )


def _k_max(sc: scenarios.Scenario, trace: traces.Trace) -> np.ndarray:
    """Each job's most patches: 8 in the prototype's model; on edge, what its image splits into."""
    if sc.name != "edge":
        return np.full(len(trace), 8, dtype=np.int64)
    return traces.max_patches(trace.model, trace.pixels)
