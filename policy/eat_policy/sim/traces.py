"""Arrival traces: every job of an episode, drawn up front from the seed.

A trace depends only on (scenario, seed), never on the policy, which is what makes
comparisons fair: every method sees exactly the same jobs at exactly the same times.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from eat_policy.sim import catalog, paper, scenarios

if TYPE_CHECKING:
    from eat_policy.sim import layout

# QoS classes of edge jobs: (probability, deadline multiplier of the reference latency, slack s).
QOS_CLASSES = ((0.5, 1.5, 2.0), (0.35, 3.0, 15.0), (0.15, 8.0, 60.0))
MMPP_HIGH_FACTOR = 3.0
"""The bursty state's rate is 3× the mean; it holds 20% of the time (60 s high, 240 s low)."""
MMPP_HIGH_SHARE, MMPP_HIGH_MEAN_S = 0.2, 60.0
DIURNAL_AMPLITUDE, DIURNAL_PERIOD_S = 0.8, 3600.0


@dataclasses.dataclass(frozen=True)
class Trace:
    """Columns of one episode's jobs, sorted by arrival time. Shapes are all (n_jobs,)."""

    arrival_s: np.ndarray
    model: np.ndarray
    pixels: np.ndarray
    steps_min: np.ndarray
    steps_max: np.ndarray
    deadline_s: np.ndarray
    """Relative to arrival; +inf when the job has no deadline (paper scenario)."""
    k: np.ndarray
    """Patch count fixed by the job (fixed-k mode); 0 where the scheduler chooses."""

    def __len__(self) -> int:
        return len(self.arrival_s)


def make_trace(scenario: scenarios.Scenario, seed: int) -> Trace:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xEA7]))
    if scenario.name == "paper":
        return _paper_trace(scenario, rng)
    return _edge_trace(scenario, rng)


def _paper_trace(sc: scenarios.Scenario, rng: np.random.Generator) -> Trace:
    n, q0 = sc.n_jobs, sc.initial_queue
    arrivals = np.zeros(n)
    arrivals[q0:] = np.cumsum(rng.exponential(1.0 / sc.rate, n - q0))
    k = rng.choice(np.array(sc.k_choices), n) if sc.mode == "fixed-k" else np.zeros(n, dtype=int)
    return Trace(
        arrival_s=arrivals,
        model=np.zeros(n, dtype=np.int64),
        pixels=np.full(n, paper.PIXELS, dtype=np.float64),
        steps_min=np.full(n, paper.STEPS_MIN, dtype=np.int64),
        steps_max=np.full(n, paper.STEPS_MAX, dtype=np.int64),
        deadline_s=np.full(n, np.inf),
        k=k.astype(np.int64),
    )


def _edge_trace(sc: scenarios.Scenario, rng: np.random.Generator) -> Trace:
    n = sc.n_jobs
    models = catalog.MODELS
    popularity = np.array([m.popularity for m in models])
    model = rng.choice(len(models), n, p=popularity / popularity.sum())
    pixels = np.array([rng.choice(models[m].pixels) for m in model], dtype=np.float64)
    steps_min = np.array([models[m].steps_range[0] for m in model])
    steps_max = np.array([models[m].steps_range[1] for m in model])
    qos = rng.choice(len(QOS_CLASSES), n, p=[c[0] for c in QOS_CLASSES])
    ref = np.array([reference_latency_s(models[m], p, s) for m, p, s in zip(model, pixels, steps_max)])
    deadline = np.array([QOS_CLASSES[c][1] for c in qos]) * ref + np.array([QOS_CLASSES[c][2] for c in qos])
    rate = rate_for_load(sc) if sc.load is not None else sc.rate
    arrivals = _arrival_times(sc, rate, n, rng)
    k = _fixed_k(sc, model, pixels, rng) if sc.mode == "fixed-k" else np.zeros(n, dtype=int)
    return Trace(arrivals, model.astype(np.int64), pixels, steps_min, steps_max, deadline, k.astype(np.int64))


def max_patches(model: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Each edge job's most patches: what its (square) image splits into, as the inference
    runtime splits it (``catalog.ModelSpec.max_patches``)."""
    heights = np.sqrt(pixels).round().astype(np.int64)
    return np.array([catalog.MODELS[m].max_patches(int(h)) for m, h in zip(model, heights)], dtype=np.int64)


def _fixed_k(sc: scenarios.Scenario, model: np.ndarray, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each job's own patch count, among the choices its image splits into: a job asking for
    more would be refused at admission (the operator's InvalidSpec), so none arrives."""
    out = np.empty(len(model), dtype=np.int64)
    for i, (m, px, most) in enumerate(zip(model, pixels, max_patches(model, pixels))):
        fits = [k for k in sc.k_choices if k <= most]
        if not fits:
            raise scenarios.ScenarioError(f"no k in {sc.k_choices} splits a {catalog.MODELS[m].name} image of {px:g} px")
        out[i] = rng.choice(fits)
    return out


def reference_latency_s(model: catalog.ModelSpec, pixels: float, steps: int) -> float:
    """Warm latency on one A100 with no patches: the yardstick for deadlines and load."""
    return steps * model.step_s(pixels, 1.0) + model.text_s + model.vae512_s * pixels / catalog.REFERENCE_PIXELS


def rate_for_load(sc: scenarios.Scenario) -> float:
    """Arrival rate giving offered load ρ: ρ · (cluster speed in A100s) / E[work per job].

    A job's work is its reference latency (warm, single-GPU, at its maximum steps). Without a
    warm pool (``gpu_keeps_model`` false) every job must also load its model, so the work adds
    the start-up from the node's disk (pipeline init + load), in A100-seconds at the cluster's
    mean GPU speed: the least any policy can spend, so that ρ 0.8 is not an overload. Store
    downloads and patch inefficiency still make the real utilisation higher than ρ.
    """
    from eat_policy.sim import layout  # local import: layout imports traces' siblings only

    cluster = layout.make_layout(sc)
    capacity = float(np.sum(cluster.gpu_speed))
    models = catalog.MODELS
    weights = np.array([m.popularity for m in models])
    weights = weights / weights.sum()
    mean_work = sum(
        w * (np.mean([reference_latency_s(m, p, m.steps_range[1]) for p in m.pixels]) + _startup_work(sc, m, cluster))
        for w, m in zip(weights, models)
    )
    assert sc.load is not None
    return sc.load * capacity / mean_work


def _startup_work(sc: scenarios.Scenario, model: catalog.ModelSpec, cluster: layout.Layout) -> float:
    if sc.gpu_keeps_model:
        return 0.0
    return model.disk_start_s() * float(np.mean(cluster.gpu_speed))


def _arrival_times(sc: scenarios.Scenario, rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    q0 = sc.initial_queue
    times = np.zeros(n)
    if sc.arrival == "poisson":
        times[q0:] = np.cumsum(rng.exponential(1.0 / rate, n - q0))
    elif sc.arrival == "mmpp":
        times[q0:] = _mmpp(rate, n - q0, rng)
    else:
        times[q0:] = _diurnal(rate, n - q0, rng)
    return times


def _mmpp(rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Two-state Markov-modulated Poisson process with mean rate ``rate``."""
    high = rate * MMPP_HIGH_FACTOR
    low = rate * (1 - MMPP_HIGH_SHARE * MMPP_HIGH_FACTOR) / (1 - MMPP_HIGH_SHARE)
    low_mean_s = MMPP_HIGH_MEAN_S * (1 - MMPP_HIGH_SHARE) / MMPP_HIGH_SHARE
    # Start in the stationary mix of states: an episode (about a minute) is much shorter than a
    # dwell, so always starting low would deliver about half the asked load.
    out, t, state_high = [], 0.0, bool(rng.random() < MMPP_HIGH_SHARE)
    state_end = rng.exponential(MMPP_HIGH_MEAN_S if state_high else low_mean_s)
    while len(out) < n:
        lam = high if state_high else low
        nxt = t + rng.exponential(1.0 / lam)
        if nxt < state_end:
            out.append(nxt)
            t = nxt
        else:
            t = state_end
            state_high = not state_high
            state_end = t + rng.exponential(MMPP_HIGH_MEAN_S if state_high else low_mean_s)
    return np.array(out)


def _diurnal(rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sinusoidal rate λ(t) = rate·(1 + a·sin(2π(t + t0)/P)) by thinning, from a time of day t0
    drawn per episode: an episode lasts minutes of the cycle, so the seeds sample the day."""
    peak = rate * (1 + DIURNAL_AMPLITUDE)
    t0 = rng.uniform(0.0, DIURNAL_PERIOD_S)
    out, t = [], 0.0
    while len(out) < n:
        t += rng.exponential(1.0 / peak)
        lam = rate * (1 + DIURNAL_AMPLITUDE * math.sin(2 * math.pi * (t + t0) / DIURNAL_PERIOD_S))
        if rng.random() * peak <= lam:
            out.append(t)
    return np.array(out)
