"""``eat-policy``: simulate one episode, evaluate schedulers fairly, train the agent, serve plans."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from eat_policy import evaluate as evaluation
from eat_policy import progress
from eat_policy.agents import base
from eat_policy.sim import engine, scenarios

app = typer.Typer(help="EAT policy: simulator, schedulers and evaluation.", no_args_is_help=True, add_completion=False)
console = Console(width=160)

ScenarioOpt = Annotated[str, typer.Option(help="paper (the prototype's model) or edge (Kubernetes-shaped).")]
ModeOpt = Annotated[str, typer.Option(help="fixed-k (jobs bring k) or choose-k (the scheduler picks k).")]
NodesOpt = Annotated[Optional[int], typer.Option(help="Number of nodes (default: 4 paper, 8 edge).")]
ArrivalOpt = Annotated[str, typer.Option(help="Arrival process: poisson, mmpp (bursty) or diurnal.")]
JobsOpt = Annotated[Optional[int], typer.Option(help="Jobs per episode (default: 32 paper, 300 edge).")]
ThreadsOpt = Annotated[int, typer.Option(min=1, help="torch threads of the learned policies (1 is fastest for their small passes).")]


def _scenario(name: str, mode: str, nodes: int | None, arrival: str, jobs: int | None, gpu_keeps_model: bool = True,
              **point: float | None) -> scenarios.Scenario:
    overrides: dict[str, object] = {"mode": mode, "arrival": arrival, "gpu_keeps_model": gpu_keeps_model}
    if nodes is not None:
        overrides["n_nodes"] = nodes
    if jobs is not None:
        overrides["n_jobs"] = jobs
        overrides["initial_queue"] = min(jobs, 10) if name == "paper" else 0
    overrides.update({k: v for k, v in point.items() if v is not None})
    try:
        return scenarios.make(name, **overrides)
    except scenarios.ScenarioError as e:
        raise typer.BadParameter(str(e)) from None


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise typer.BadParameter(f"{what} must be positive numbers, got {text!r}")
    return values


def _policies(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if not base.known(p)]
    if not names or unknown:
        families = ", ".join(f"{prefix}:{argument}" for prefix, argument in base.families().items())
        raise typer.BadParameter(f"unknown policy {', '.join(unknown) or text!r}; choose from {', '.join(base.names())}, "
                                 f"or {families}")
    for name in names:  # a checkpoint that does not load is bad input too
        try:
            base.make(name)
        except Exception as e:  # noqa: BLE001 (any load failure: torch raises many kinds)
            raise typer.BadParameter(f"policy {name!r}: {type(e).__name__}: {e}") from None
    return names


def _torch_threads(threads: int) -> None:
    """Threads for the learned policies, if any was loaded. A decision is many small tensor ops,
    which one thread runs fastest; torch's default of one thread per core made a pods episode
    (8 nodes, a residual checkpoint) take 80 s instead of 4 s while a second evaluation shared
    the 2 cores."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@app.command()
def simulate(
    scenario: ScenarioOpt = "paper",
    mode: ModeOpt = "choose-k",
    policy: Annotated[str, typer.Option(help="Scheduler to run.")] = "edf-cache",
    seed: int = 0,
    nodes: NodesOpt = None,
    rate: Annotated[Optional[float], typer.Option(help="Arrival rate λ in jobs/s.")] = None,
    load: Annotated[Optional[float], typer.Option(help="Edge: offered load ρ (overrides rate).")] = None,
    arrival: ArrivalOpt = "poisson",
    jobs: JobsOpt = None,
    failures: Annotated[float, typer.Option(help="Edge: node failures per node-hour.")] = 0.0,
    threads: ThreadsOpt = 1,
) -> None:
    """Run one episode of one policy and print its metrics."""
    _policies(policy)
    _torch_threads(threads)
    if rate is not None and rate <= 0:
        raise typer.BadParameter(f"rate must be > 0, got {rate}")
    extra: dict[str, float | None] = {"rate": rate, "load": load}
    if failures:
        extra["failures_per_node_h"] = failures
    sc = _scenario(scenario, mode, nodes, arrival, jobs, **extra)
    metrics, _ = evaluation.run_episode(engine.Simulator(sc), base.make(policy), seed)
    table = Table(title=f"{policy} on {sc.name} ({sc.mode}, {sc.n_nodes} nodes, seed {seed})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}")
    console.print(table)


@app.command()
def evaluate(
    scenario: ScenarioOpt = "paper",
    mode: ModeOpt = "choose-k",
    policies: Annotated[str, typer.Option(help="Comma-separated policies.")] = "random,round-robin,first-fit,least-loaded,cache-lct,edf-cache,cache-lct-queue,edf-cache-queue",
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1; each seed is one arrival trace shared by all policies.")] = 20,
    first_seed: Annotated[int, typer.Option(help="Start the seeds here instead of 0 (0..19 are the test seeds; training selects its checkpoints on 100000 onwards), e.g. for a held-out check between runs.")] = 0,
    rates: Annotated[Optional[str], typer.Option(help="Comma-separated λ (jobs/s). Default for paper: 0.01..0.11.")] = None,
    loads: Annotated[Optional[str], typer.Option(help="Edge: comma-separated offered loads ρ. Default 0.5,0.8,1.0.")] = None,
    nodes: NodesOpt = None,
    arrival: ArrivalOpt = "poisson",
    jobs: JobsOpt = None,
    gpu_keeps_model: Annotated[bool, typer.Option(help=scenarios.GPU_KEEPS_MODEL_HELP)] = True,
    out: Annotated[Optional[Path], typer.Option(help="Output folder for CSV and PNGs.")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="One of --policies: also print each other policy's paired difference from it (same seeds).")] = None,
    threads: ThreadsOpt = 1,
) -> None:
    """Compare schedulers on identical traces: table (mean ± 95% CI), CSV and plots."""
    names = _policies(policies)
    _torch_threads(threads)
    if baseline is not None and baseline not in names:
        raise typer.BadParameter(f"baseline {baseline!r} is not one of the policies ({', '.join(names)})")
    if seeds < 2:
        raise typer.BadParameter(f"seeds must be >= 2 for a confidence interval, got {seeds}")
    if first_seed < 0:
        raise typer.BadParameter(f"first-seed must be >= 0, got {first_seed}")
    if rates and loads:
        raise typer.BadParameter("give --rates or --loads, not both")
    if loads or (scenario == "edge" and not rates):
        points, label, key = _floats(loads or "0.5,0.8,1.0", "loads"), "offered load ρ", "load"
    else:
        points, label, key = _floats(rates or "0.01,0.03,0.05,0.07,0.09,0.11", "rates"), "arrival rate λ (jobs/s)", "rate"
    extra = {"load": None} if key == "rate" else {}
    make = lambda p: _scenario(scenario, mode, nodes, arrival, jobs, gpu_keeps_model, **{**extra, key: p})  # noqa: E731
    for p in points:
        make(p)  # validate every point before running any
    out = out or Path("runs") / f"eval-{scenario}-{mode}"
    total = len(points) * len(names) * seeds
    with progress.bar(console=console, transient=True) as bar:
        task = bar.add_task("episodes", total=total, info="")

        def done(r: evaluation.EpisodeResult) -> None:
            bar.update(task, advance=1, info=f"{r.policy} at {r.point:g}, seed {r.seed}")

        results = evaluation.sweep(make, names, points, range(first_seed, first_seed + seeds), progress=done)
    evaluation.write_csv(results, out / "episodes.csv")
    plots = evaluation.plot(results, out, label)
    console.print(_table(evaluation.summarise(results), label, f"{scenario} ({mode}), {_seed_range(first_seed, seeds)}, mean ± 95% CI"))
    if baseline is not None:
        console.print(_paired_table(evaluation.paired(results, baseline), label, baseline))
    console.print(f"wrote {out / 'episodes.csv'} and {', '.join(p.name for p in plots)}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Train the EAT agent or an ablation in the simulator (eat-policy train --help)."""
    from eat_policy import train as training  # torch loads only for this command

    training.app(ctx.args, prog_name="eat-policy train")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Learned policy checkpoint (EAT_POLICY_CHECKPOINT).")] = None,
    prometheus_url: Annotated[Optional[str], typer.Option(help="Prometheus base URL (EAT_POLICY_PROMETHEUS_URL).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve POST /v1/plan (settings: EAT_POLICY_* variables; flags override them)."""
    import os

    import uvicorn

    if checkpoint is not None:
        os.environ["EAT_POLICY_CHECKPOINT"] = str(checkpoint)
    if prometheus_url is not None:
        os.environ["EAT_POLICY_PROMETHEUS_URL"] = prometheus_url
    uvicorn.run("eat_policy.service.app:app", host=host, port=port, log_level=log_level, workers=1)


def _seed_range(first: int, n: int) -> str:
    return f"{n} seeds" if first == 0 else f"{n} seeds ({first}–{first + n - 1})"


def _table(rows: list[dict[str, object]], label: str, title: str) -> Table:
    table = Table(title=title)
    table.add_column(label.split(" (")[0], justify="right")
    table.add_column("policy", no_wrap=True)
    for metric in evaluation.TABLE_METRICS:
        table.add_column(metric, justify="right", no_wrap=True)
    for row in rows:
        cells = []
        for metric in evaluation.TABLE_METRICS:
            mean, ci = row[metric]  # type: ignore[misc]
            if math.isnan(mean):
                cells.append("–")
            else:
                ci = 0.0 if math.isfinite(ci) and ci < 1e-9 * max(1.0, abs(mean)) else ci  # float noise
                cells.append(f"{mean:.3g} ± {ci:.2g}" if math.isfinite(ci) else f"{mean:.3g}")
        table.add_row(f"{row['point']:g}", str(row["policy"]), *cells)
    return table


def _paired_table(rows: list[dict[str, object]], label: str, baseline: str) -> Table:
    table = Table(title=f"policy − {baseline}, paired by seed, mean ± 95% CI")
    table.add_column(label.split(" (")[0], justify="right")
    table.add_column("policy", no_wrap=True)
    for metric in evaluation.PAIRED_METRICS:
        table.add_column(f"Δ {metric}", justify="right", no_wrap=True)
    table.add_column("resp ratio", justify="right")
    for row in rows:
        cells = [f"{mean:+.3g} ± {ci:.2g}" for mean, ci in (row[m] for m in evaluation.PAIRED_METRICS)]  # type: ignore[misc]
        table.add_row(f"{row['point']:g}", str(row["policy"]), *cells, f"{row['resp_ratio']:.3f}")
    return table


if __name__ == "__main__":
    app()
