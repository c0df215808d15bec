"""Scenario definitions: what cluster, what arrivals, how an episode ends.

A scenario plus a seed fully determines an episode's arrival trace, so every policy is
compared on identical traces (``traces.make_trace``).
"""

from __future__ import annotations

import dataclasses

SCENARIOS = ("paper", "edge")
MODES = ("fixed-k", "choose-k")
ARRIVALS = ("poisson", "mmpp", "diurnal")
MAX_NODES = 4096


GPU_KEEPS_MODEL_HELP = ("Edge: GPUs keep models loaded between jobs (a warm pool); --no-gpu-keeps-model: every job "
                        "loads its model, as one pod per job does.")
"""The CLIs' help for ``Scenario.gpu_keeps_model``."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str = "paper"
    """``paper`` (the prototype's model) or ``edge`` (the Kubernetes-shaped cluster)."""
    mode: str = "choose-k"
    """``fixed-k``: each job arrives with its patch count k; ``choose-k``: the scheduler picks it."""
    n_nodes: int = 4
    rate: float = 0.05
    """Mean arrival rate in jobs/s (the paper's λ). Edge scenarios may set ``load`` instead."""
    load: float | None = None
    """Edge only: target offered load ρ; overrides ``rate`` (see ``traces.rate_for_load``)."""
    arrival: str = "poisson"
    n_jobs: int = 32
    initial_queue: int = 10
    """Jobs already queued at t = 0 (the prototype queues 10 of its 32)."""
    cut_s: float | None = 1024.0
    """Episode end; jobs not finished by then are reported unfinished. None: after the last
    arrival plus ``grace_s``."""
    grace_s: float = 3600.0
    window: int = 10
    """How many queued jobs (oldest first) a policy sees and may pick from."""
    k_choices: tuple[int, ...] = (1, 2, 4)
    cluster_seed: int = 0
    """Seed of the cluster layout and initial caches (edge); fixed across trace seeds."""
    failures_per_node_h: float = 0.0
    """Edge: Poisson node failures per node-hour (0 disables)."""
    repair_s: float = 300.0
    noise_cv: float = 0.0
    """Coefficient of variation of run times around the model's prediction (0: exact)."""
    gpu_keeps_model: bool = True
    """Edge: a GPU keeps the last models it ran in memory between jobs, so the next job of that
    model starts at once (a warm pool of inference workers). False: every job loads its model
    from the node's disk or the store, as the operator's pods do today (one pod per job rank;
    the model leaves GPU memory with the pod)."""

    def __post_init__(self) -> None:
        _check(self.name in SCENARIOS, f"unknown scenario {self.name!r}; choose one of {', '.join(SCENARIOS)}")
        _check(self.mode in MODES, f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        _check(self.arrival in ARRIVALS, f"unknown arrival process {self.arrival!r}; choose one of {', '.join(ARRIVALS)}")
        _check(1 <= self.n_nodes <= MAX_NODES, f"n_nodes must be in 1..{MAX_NODES}, got {self.n_nodes}")
        _check(self.rate > 0, f"rate must be > 0 jobs/s, got {self.rate}")
        _check(self.load is None or 0 < self.load <= 5, f"load must be in (0, 5], got {self.load}")
        _check(self.n_jobs >= 1, f"n_jobs must be >= 1, got {self.n_jobs}")
        _check(0 <= self.initial_queue <= self.n_jobs, "initial_queue must be in 0..n_jobs")
        _check(self.window >= 1, f"window must be >= 1, got {self.window}")
        _check(all(k in (1, 2, 4, 8) for k in self.k_choices), f"k_choices must be among 1, 2, 4, 8, got {self.k_choices}")
        if self.name == "paper":
            _check(max(self.k_choices) <= self.n_nodes, f"k up to {max(self.k_choices)} needs at least that many nodes")
            # The prototype's model (paper-notes.md) has Poisson arrivals and no node failures.
            _check(self.arrival == "poisson", f"the paper scenario's arrivals are Poisson, got {self.arrival!r}")
            _check(self.failures_per_node_h == 0, "the paper scenario has no node failures")


class ScenarioError(ValueError):
    """A scenario parameter is out of range; the message names it."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ScenarioError(message)


def paper(n_nodes: int = 4, mode: str = "choose-k", rate: float = 0.05, **overrides: object) -> Scenario:
    """The prototype's setting: single-GPU nodes, 32 tasks, 10 queued at 0, cut at 1024 s."""
    k_choices = (1, 2, 4, 8) if n_nodes >= 8 else (1, 2, 4)
    fields = dict(name="paper", mode=mode, n_nodes=n_nodes, rate=rate, k_choices=k_choices)
    fields.update(overrides)
    return Scenario(**fields)  # type: ignore[arg-type]


def edge(n_nodes: int = 8, load: float | None = 0.8, **overrides: object) -> Scenario:
    """The Kubernetes-shaped cluster: heterogeneous multi-GPU nodes, 3 models, deadlines."""
    fields = dict(
        name="edge", mode="choose-k", n_nodes=n_nodes, load=load, n_jobs=300, initial_queue=0,
        cut_s=None, window=32, k_choices=(1, 2, 4, 8),
    )
    fields.update(overrides)
    return Scenario(**fields)  # type: ignore[arg-type]


def make(name: str, **overrides: object) -> Scenario:
    """Scenario by name, with the defaults of ``paper`` or ``edge`` and any overrides."""
    if name == "paper":
        return paper(**overrides)  # type: ignore[arg-type]
    if name == "edge":
        return edge(**overrides)  # type: ignore[arg-type]
    raise ScenarioError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
