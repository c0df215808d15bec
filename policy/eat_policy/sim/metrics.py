"""Per-job records of an episode and the metrics summarised from them."""

from __future__ import annotations

import dataclasses

import numpy as np

from eat_policy.sim import traces

CACHE_TIERS = ("resident", "disk", "store", "warm", "cold")


@dataclasses.dataclass
class JobRecords:
    """Columns indexed by job id; NaN/-1 until the job starts or finishes."""

    start_s: np.ndarray
    finish_s: np.ndarray
    k: np.ndarray
    steps: np.ndarray
    quality: np.ndarray
    cold_dispatches: np.ndarray
    """How many of the job's dispatches had to load its model."""
    reward: np.ndarray
    attempts: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "JobRecords":
        nan = np.full(n, np.nan)
        return cls(nan.copy(), nan.copy(), np.zeros(n, np.int64), np.zeros(n, np.int64), nan.copy(),
                   np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.int64))

    def start(self, job: int, now: float, k: int, steps: int, quality: float, cache: str, reward: float) -> None:
        self.start_s[job], self.k[job], self.steps[job], self.quality[job] = now, k, steps, quality
        self.cold_dispatches[job] += cache not in ("resident", "warm")
        self.reward[job] += reward
        self.attempts[job] += 1

    def finish(self, job: int, t: float) -> None:
        self.finish_s[job] = t

    def killed(self, job: int) -> None:
        self.start_s[job] = np.nan


@dataclasses.dataclass(frozen=True)
class EpisodeMetrics:
    arrived: int
    finished: int
    unfinished: int
    """Arrived before the end but not finished; their response time is censored at the end."""
    resp_mean_s: float
    resp_p95_s: float
    resp_p99_s: float
    deadline_attainment: float
    """Share of arrived jobs finished within their deadline (NaN when jobs have none)."""
    quality_mean: float
    """Mean Q(steps) over finished jobs."""
    cold_start_rate: float
    """Share of dispatches that paid a cold start (paper) or had to load the model (edge)."""
    gpu_util: float
    reward: float
    """Sum of per-dispatch rewards (the prototype's reward in the paper scenario)."""
    mean_k: float
    mean_steps: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def responses(rec: JobRecords, trace: traces.Trace, end_s: float) -> np.ndarray:
    """Response time of every arrived job; unfinished ones censored at the episode end."""
    arrived = trace.arrival_s <= end_s
    done = np.isfinite(rec.finish_s) & arrived
    return np.where(done, rec.finish_s - trace.arrival_s, end_s - trace.arrival_s)[arrived]


def summarise(rec: JobRecords, trace: traces.Trace, end_s: float, n_gpus: int, busy_gpu_s: float) -> EpisodeMetrics:
    arrived = trace.arrival_s <= end_s
    done = np.isfinite(rec.finish_s) & arrived
    response = responses(rec, trace, end_s)
    started = np.isfinite(rec.start_s)
    has_deadline = np.isfinite(trace.deadline_s[arrived])
    met = done[arrived] & (rec.finish_s[arrived] - trace.arrival_s[arrived] <= trace.deadline_s[arrived])
    n_arrived = int(arrived.sum())
    return EpisodeMetrics(
        arrived=n_arrived,
        finished=int(done.sum()),
        unfinished=n_arrived - int(done.sum()),
        resp_mean_s=_stat(response, np.mean),
        resp_p95_s=_stat(response, lambda x: np.percentile(x, 95)),
        resp_p99_s=_stat(response, lambda x: np.percentile(x, 99)),
        deadline_attainment=float(met.mean()) if n_arrived and has_deadline.all() else float("nan"),
        quality_mean=_stat(rec.quality[done], np.mean),
        cold_start_rate=float(rec.cold_dispatches.sum() / rec.attempts.sum()) if rec.attempts.sum() else float("nan"),
        gpu_util=busy_gpu_s / (n_gpus * end_s) if end_s > 0 else 0.0,
        reward=float(rec.reward.sum()),
        mean_k=_stat(rec.k[started].astype(float), np.mean),
        mean_steps=_stat(rec.steps[started].astype(float), np.mean),
    )


def _stat(x: np.ndarray, fn) -> float:  # type: ignore[no-untyped-def]
    return float(fn(x)) if len(x) else float("nan")
