"""Fair evaluation: every policy on identical arrival traces, many seeds, 95% CIs.

A trace is a function of (scenario, seed) only (``sim.traces.make_trace``), so for each seed
and load point all policies schedule exactly the same jobs. Results: one row per
(policy, load point, seed) in a CSV, a table of mean ± 95% CI over seeds, and PNG plots.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from eat_policy.agents import base
from eat_policy.sim import engine, scenarios
from eat_policy.sim import metrics as metrics_mod

TABLE_METRICS = ("resp_mean_s", "resp_p95_s", "deadline_attainment", "quality_mean", "cold_start_rate", "gpu_util")


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    policy: str
    point: float
    """The load point: λ (jobs/s) or ρ, as swept."""
    seed: int
    metrics: dict[str, float]
    responses_s: np.ndarray


def run_episode(sim: engine.Simulator, policy: base.Policy, seed: int) -> tuple[dict[str, float], np.ndarray]:
    sim.reset(seed)
    base.begin_episode(policy, sim, seed)
    while not sim.done:
        sim.step(policy.decide(sim.snapshot()))
    m = sim.metrics()
    resp = metrics_mod.responses(sim.records, sim.trace, sim.now)
    return m.as_dict(), resp


def sweep(
    make_scenario: Callable[[float], scenarios.Scenario],
    policies: Iterable[str],
    points: Iterable[float],
    seeds: Iterable[int],
    progress: Callable[[EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Run every policy on every (point, seed) trace; ``progress`` gets each episode's result."""
    results = []
    for point in points:
        sim = engine.Simulator(make_scenario(point))
        for name in policies:
            policy = base.make(name)
            for seed in seeds:
                metrics, resp = run_episode(sim, policy, seed)
                results.append(EpisodeResult(name, point, seed, metrics, resp))
                if progress:
                    progress(results[-1])
    return results


def mean_ci(values: Iterable[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width (Student t) of the finite values."""
    x = np.array([v for v in values if math.isfinite(v)])
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan")
    t = t95(len(x) - 1)
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


@functools.lru_cache(maxsize=None)
def t95(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom (to 1e-12)."""
    lo, hi = 0.0, 16.0  # the quantile is 12.706 at df = 1 and falls with df
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df``: the closed forms of Abramowitz and
    Stegun 26.7.3 (odd df) and 26.7.4 (even df); scipy is not a dependency."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    term = total = 1.0
    for i in range(2 + df % 2, df - 1, 2):  # the series in cos(theta)^2: i = 2, 4, ... or 3, 5, ...
        term *= c2 * (i - 1) / i
        total += term
    if df % 2 == 0:
        return math.sin(theta) * total
    tail = math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0
    return 2 / math.pi * (theta + tail)


def summarise(results: list[EpisodeResult]) -> list[dict[str, object]]:
    """One row per (policy, point): mean and CI of each table metric."""
    rows = []
    for key in dict.fromkeys((r.policy, r.point) for r in results):
        group = [r for r in results if (r.policy, r.point) == key]
        row: dict[str, object] = {"policy": key[0], "point": key[1], "seeds": len(group)}
        for metric in TABLE_METRICS:
            row[metric] = mean_ci(r.metrics[metric] for r in group)
        rows.append(row)
    return rows


PAIRED_METRICS = ("resp_mean_s", "deadline_attainment", "quality_mean", "cold_start_rate")


def paired(results: list[EpisodeResult], baseline: str) -> list[dict[str, object]]:
    """One row per (policy, point) other than the baseline: mean and 95% CI of the per-seed
    difference policy − baseline of each paired metric (the same trace on both sides, so the
    trace-to-trace spread cancels), and the ratio of mean response times."""
    base = {(r.point, r.seed): r.metrics for r in results if r.policy == baseline}
    groups: dict[tuple[str, float], list[EpisodeResult]] = {}
    for r in results:
        if r.policy != baseline and (r.point, r.seed) in base:
            groups.setdefault((r.policy, r.point), []).append(r)
    rows = []
    for key, group in groups.items():
        row: dict[str, object] = {"policy": key[0], "point": key[1], "seeds": len(group)}
        for metric in PAIRED_METRICS:
            row[metric] = mean_ci(r.metrics[metric] - base[(r.point, r.seed)][metric] for r in group)
        own = np.mean([r.metrics["resp_mean_s"] for r in group])
        row["resp_ratio"] = float(own / np.mean([base[(r.point, r.seed)]["resp_mean_s"] for r in group]))
        rows.append(row)
    return rows


def write_csv(results: list[EpisodeResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(results[0].metrics)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "point", "seed", *fields])
        for r in results:
            w.writerow([r.policy, r.point, r.seed, *(r.metrics[k] for k in fields)])


def plot(results: list[EpisodeResult], out_dir: Path, point_label: str) -> list[Path]:
    """Response time vs load, response-time CDF at the highest load, deadline attainment vs load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarise(results)
    policies = list(dict.fromkeys(r.policy for r in results))
    paths = []
    for metric, label, name in (
        ("resp_mean_s", "mean response time (s)", "response_vs_load.png"),
        ("deadline_attainment", "deadline attainment", "deadline_vs_load.png"),
    ):
        if all(math.isnan(r.metrics[metric]) for r in results):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for p in policies:
            pts = [(r["point"], *r[metric]) for r in rows if r["policy"] == p]  # type: ignore[misc]
            x, y, ci = (np.array(v, dtype=float) for v in zip(*pts))
            ax.errorbar(x, y, yerr=np.nan_to_num(ci), label=p, capsize=3, marker="o", ms=3)
        ax.set_xlabel(point_label)
        ax.set_ylabel(label + " (mean ± 95% CI)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        paths.append(out_dir / name)
    top = max(r.point for r in results)
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in policies:
        resp = np.sort(np.concatenate([r.responses_s for r in results if r.policy == p and r.point == top]))
        ax.plot(resp, np.arange(1, len(resp) + 1) / len(resp), label=p)
    ax.set_xscale("log")
    ax.set_xlabel(f"response time (s) at {point_label} = {top:g}")
    ax.set_ylabel("CDF over jobs and seeds")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "response_cdf.png", dpi=120)
    plt.close(fig)
    paths.append(out_dir / "response_cdf.png")
    return paths
