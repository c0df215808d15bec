"""The evaluation harness and the eat-policy CLI, including its errors on bad input."""

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from eat_policy import cli, evaluate
from eat_policy.sim import scenarios

runner = CliRunner()


def test_mean_ci_uses_student_t() -> None:
    mean, ci = evaluate.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert ci == pytest.approx(3.18245 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-5)
    assert np.isnan(evaluate.mean_ci([])[0])


@pytest.mark.parametrize("df, quantile", [(1, 12.7062), (3, 3.1824), (30, 2.0423), (31, 2.0395), (40, 2.0211),
                                           (120, 1.9799), (1000, 1.9623)])
def test_mean_ci_uses_the_exact_t_quantile_at_every_sample_size(df: int, quantile: float) -> None:
    """Beyond 30 degrees of freedom it used the normal's 1.96: CIs 2-4% too narrow."""
    values = np.arange(df + 1, dtype=float) ** 1.5
    _, ci = evaluate.mean_ci(values)
    assert ci == pytest.approx(quantile * np.std(values, ddof=1) / np.sqrt(df + 1), abs=1e-4 * ci)


def test_sweep_runs_every_policy_on_the_same_traces() -> None:
    res = evaluate.sweep(lambda r: scenarios.paper(rate=r), ["random", "first-fit"], [0.05], range(3))
    by = {(r.policy, r.seed): r for r in res}
    for seed in range(3):
        assert by[("random", seed)].metrics["arrived"] == by[("first-fit", seed)].metrics["arrived"]
    rows = evaluate.summarise(res)
    assert {r["policy"] for r in rows} == {"random", "first-fit"} and all(r["seeds"] == 3 for r in rows)


def test_evaluate_writes_table_csv_and_plots(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "ev"
    result = runner.invoke(cli.app, ["evaluate", "--scenario", "edge", "--seeds", "2", "--loads", "0.5,0.9",
                                     "--policies", "first-fit,edf-cache", "--jobs", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "edf-cache" in result.output and "±" in result.output
    assert "episodes 1/8" in result.output and "first-fit at 0.5, seed 0" in result.output  # progress, as it goes
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    assert len(rows) == 2 * 2 * 2
    for name in ("response_vs_load.png", "deadline_vs_load.png", "response_cdf.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_can_run_seeds_away_from_the_test_seeds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "ev"
    args = ["evaluate", "--seeds", "2", "--first-seed", "100003", "--rates", "0.05", "--policies", "first-fit"]
    result = runner.invoke(cli.app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 seeds (100003–100004)" in result.output
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    assert sorted(int(r["seed"]) for r in rows) == [100003, 100004]
    (direct,) = evaluate.sweep(lambda r: scenarios.paper(rate=r), ["first-fit"], [0.05], [100004])
    assert float(next(r for r in rows if r["seed"] == "100004")["resp_mean_s"]) == pytest.approx(
        direct.metrics["resp_mean_s"])


def test_paired_differences_are_per_seed_against_the_baseline() -> None:
    res = evaluate.sweep(lambda r: scenarios.paper(rate=r), ["random", "cache-lct"], [0.05], range(4))
    (row,) = evaluate.paired(res, "random")
    assert row["policy"] == "cache-lct" and row["seeds"] == 4
    by = {(r.policy, r.seed): r.metrics["resp_mean_s"] for r in res}
    diffs = [by[("cache-lct", s)] - by[("random", s)] for s in range(4)]
    assert row["resp_mean_s"] == pytest.approx(evaluate.mean_ci(diffs))
    assert row["resp_ratio"] == pytest.approx(np.mean([by[("cache-lct", s)] for s in range(4)])
                                              / np.mean([by[("random", s)] for s in range(4)]))
    assert row["resp_mean_s"][0] < 0  # the cache-aware heuristic is faster than random on every trace here


def test_evaluate_prints_the_paired_table_and_refuses_a_baseline_it_does_not_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = ["evaluate", "--seeds", "2", "--rates", "0.05", "--policies", "random,cache-lct", "--out", str(tmp_path)]
    result = runner.invoke(cli.app, [*args, "--baseline", "random"])
    assert result.exit_code == 0, result.output
    assert "policy − random, paired by seed" in result.output and "resp ratio" in result.output
    refused = runner.invoke(cli.app, [*args, "--baseline", "edf-cache"])
    assert refused.exit_code == 2
    assert "baseline 'edf-cache' is not one of the policies" in " ".join(refused.output.replace("│", " ").split())


def test_simulate_prints_metrics() -> None:
    result = runner.invoke(cli.app, ["simulate", "--scenario", "paper", "--policy", "cache-lct", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "resp_mean_s" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["simulate", "--scenario", "moon"], "unknown scenario 'moon'"),
    (["simulate", "--policy", "fastest"], "unknown policy 'fastest'"),
    (["simulate", "--nodes", "0"], "n_nodes must be in"),
    (["simulate", "--rate", "-1"], "rate must be > 0"),
    (["simulate", "--mode", "any-k"], "unknown mode"),
    (["evaluate", "--rates", "0.1,abc"], "comma-separated numbers"),
    (["evaluate", "--rates", "0"], "positive numbers"),
    (["evaluate", "--seeds", "1"], "seeds must be >= 2"),
    (["evaluate", "--first-seed", "-1"], "first-seed must be >= 0"),
    (["evaluate", "--scenario", "edge", "--loads", "9"], "load must be in"),
    (["evaluate", "--policies", "cache-lct-steps:0"], "takes a number of steps from 1 to 100, got '0'"),
    (["evaluate", "--threads", "0"], "Invalid value for '--threads'"),
], ids=["scenario", "policy", "nodes", "rate", "mode", "rates-text", "rates-zero", "seeds", "first-seed", "load",
        "steps", "threads"])
def test_bad_input_is_a_clear_error_not_a_traceback(args: list[str], message: str) -> None:
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())
    assert "Traceback" not in result.output


def test_a_trained_policy_file_is_evaluated_by_its_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch  # the learned policies need the train extra, which the test environment has

    from eat_policy import nets
    from eat_policy.train import save_policy

    torch.manual_seed(0)
    path = tmp_path / "policy.pt"
    save_policy(nets.Actor("eat", d=32, dp=16), path)
    out = tmp_path / "ev"
    name = f"checkpoint:{path}"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = runner.invoke(cli.app, ["evaluate", "--scenario", "paper", "--seeds", "2", "--rates", "0.05",
                                         "--policies", f"first-fit,{name}", "--out", str(out)])
        assert torch.get_num_threads() == 1, "learned policies decide on one torch thread unless --threads says"
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    assert {r["policy"] for r in rows} == {"first-fit", name}


@pytest.mark.parametrize("content", [None, b"not a checkpoint"], ids=["missing", "corrupt"])
def test_a_checkpoint_that_does_not_load_is_a_clear_error(tmp_path, content: bytes | None) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "policy.pt"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(cli.app, ["evaluate", "--policies", f"cache-lct,checkpoint:{path}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "Invalid value: policy 'checkpoint:" in text  # the path itself may be wrapped in the box
    assert ("FileNotFoundError" if content is None else "UnpicklingError") in text
