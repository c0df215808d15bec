"""The real trainer for a few hundred steps, as cleanrl's tests run each script (and resume)."""

import csv
import subprocess
import sys

import pytest
import torch

from eat_policy.agents import eat as eat_agent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trainer_runs_logs_checkpoints_and_resumes(tmp_path) -> None:
    cmd = [sys.executable, "-m", "eat_policy.train", "--scenario", "paper", "--variant", "eat",
           "--total-timesteps", "240", "--learning-starts", "120", "--eval-every", "240", "--eval-seeds", "1",
           "--bc-policy", "cache-lct", "--bc-episodes", "2", "--bc-updates", "5",
           "--out", str(tmp_path), "--export", str(tmp_path / "exported.pt")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=280)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for name in ("log.csv", "curve.png", "state.pt", "policy.pt", "card.json", "args.json"):
        assert (run_dir / name).exists(), name
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    assert any(r["kind"] == "episode" for r in rows) and any(r["kind"] == "eval" for r in rows)
    eat_agent.load_actor(tmp_path / "exported.pt")
    assert torch.load(run_dir / "state.pt", weights_only=True)["global_step"] == 240

    resume = [sys.executable, "-m", "eat_policy.train", "--scenario", "paper", "--total-timesteps", "300",
              "--eval-every", "300", "--eval-seeds", "1", "--resume", str(run_dir)]
    subprocess.run(resume, check=True, capture_output=True, timeout=280)
    assert torch.load(run_dir / "state.pt", weights_only=True)["global_step"] == 300


def test_mixed_mode_trains_on_both_paper_modes_and_evaluates_each() -> None:
    import numpy as np

    from eat_policy import train

    args = train.Args(scenario="paper", mode="mixed", points=(0.01, 0.11))
    assert train.modes(args) == ("choose-k", "fixed-k")
    rng = np.random.default_rng(0)
    drawn = {train.make_env(args, rng).scenario.mode for _ in range(20)}
    assert drawn == {"choose-k", "fixed-k"}
    assert train.make_env(train.Args(scenario="paper", points=(0.05, 0.05)), rng).scenario.mode == "choose-k"
    assert train.modes(train.Args(scenario="edge")) == ("",)


def test_cli_refuses_an_unknown_mode() -> None:
    r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--mode", "sometimes"], capture_output=True, text=True)
    assert r.returncode != 0 and "mode must be choose-k, fixed-k or mixed" in r.stderr
