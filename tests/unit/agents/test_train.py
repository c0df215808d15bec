"""The real trainer for a few hundred steps, as cleanrl's tests run each script (and resume)."""

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eat_policy.agents import eat as eat_agent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trainer_runs_logs_checkpoints_and_resumes(tmp_path) -> None:
    cmd = [sys.executable, "-m", "eat_policy.train", "--scenario", "paper", "--variant", "eat",
           "--total-timesteps", "240", "--learning-starts", "120", "--eval-every", "240", "--eval-seeds", "1",
           "--bc-policy", "cache-lct", "--bc-episodes", "2", "--bc-updates", "5", "--bc-weight", "0.5",
           "--target-entropy-frac", "0.1", "--actor-starts", "200", "--kl-weight", "0.5",
           "--out", str(tmp_path), "--export", str(tmp_path / "exported.pt")]
    ran = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=280, env=os.environ | {"COLUMNS": "200"})
    # its progress shows as it goes, not only at the end (stdout is not a terminal here, as in a Job)
    assert "warm start from cache-lct" in ran.stdout and "round 1/1: episode 1/2 labelled" in ran.stdout
    assert "round 1/1: cloning" in ran.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for name in ("log.csv", "curve.png", "state.pt", "policy.pt", "card.json", "args.json", "demos.npz", "clone-round-1.pt"):
        assert (run_dir / name).exists(), name
    card_args = json.loads((run_dir / "card.json").read_text())["args"]
    assert (card_args["target_entropy_frac"], card_args["actor_starts"], card_args["kl_weight"]) == ("0.1", "200", "0.5")
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    assert any(r["kind"] == "episode" for r in rows)
    # the warm start evaluated its clone, so SAC's first evaluation is its periodic one
    assert [(r["kind"], r["step"]) for r in rows if r["kind"] != "episode"] == [("clone", "1"), ("eval", "240")]
    exported = eat_agent.load_actor(tmp_path / "exported.pt")
    assert exported.encoder.train_nodes == 4  # the paper scenario's cluster, for the node-share correction
    assert torch.load(run_dir / "state.pt", weights_only=True)["global_step"] == 240

    resume = [sys.executable, "-m", "eat_policy.train", "--scenario", "paper", "--total-timesteps", "300",
              "--eval-every", "300", "--eval-seeds", "1", "--bc-weight", "0.5", "--resume", str(run_dir)]
    saved = (run_dir / "args.json").read_text()
    subprocess.run(resume, check=True, capture_output=True, timeout=280)
    assert torch.load(run_dir / "state.pt", weights_only=True)["global_step"] == 300
    assert (run_dir / "args.json").read_text() == saved  # the run's record stays; the resume's is beside it
    assert json.loads((run_dir / "args-resume-240.json").read_text())["total_timesteps"] == 300


def test_the_warm_starts_demonstrations_survive_a_save_and_load(tmp_path) -> None:
    import numpy as np

    from eat_policy import nets, train

    rng = np.random.default_rng(0)
    env = train.make_env(train.Args(scenario="edge"), rng)
    env.reset(seed=3)
    obs = nets.observe(env.sim.snapshot(), env.scenario.window)
    rb = train.ReplayBuffer(8, obs)
    for i in range(5):
        rb.add(obs, i + 1, float(i), obs, 0.99, i == 4)
    rb.save_states(tmp_path / train.DEMOS_FILE)
    back = train.load_demos(tmp_path)
    assert len(back) == 5 and back.action.tolist() == [1, 2, 3, 4, 5]
    for k, v in obs.items():
        assert np.array_equal(back.obs[k][4], v) and back.obs[k].dtype == rb.obs[k].dtype
    o, actions, _, _, _ = back.sample(16, rng)  # it samples like the buffer it came from
    assert set(actions.tolist()) <= {1, 2, 3, 4, 5} and o["nodes"].shape[0] == 16


def test_resuming_with_a_clone_loss_needs_the_runs_demonstrations(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--bc-weight", "0.5", "--resume", str(tmp_path)],
                       capture_output=True, text=True, env=os.environ | {"COLUMNS": "400"})
    assert r.returncode != 0 and "demos.npz is missing (the run had no warm start)" in r.stderr, r.stderr


def test_resuming_refuses_options_that_change_the_runs_networks(tmp_path) -> None:
    from eat_policy import train

    run = train.Args(scenario="edge", hint="edf-cache-queue-fit", residual=True, bc_policy="edf-cache-queue-fit")
    (tmp_path / "args.json").write_text(json.dumps(dataclasses.asdict(run), default=str))
    r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--scenario", "edge", "--hint", "edf-cache-queue-fit",
                        "--resume", str(tmp_path)], capture_output=True, text=True, env=os.environ | {"COLUMNS": "400"})
    assert r.returncode != 0 and "residual is True in the run, False here" in r.stderr, r.stderr
    assert train.resume_mismatches(tmp_path, dataclasses.replace(run, seed=7, bc_weight=1.0)) == []
    # the run's best return was measured with its reward and evaluation: a resume keeps them
    assert train.resume_mismatches(tmp_path, dataclasses.replace(run, quality_weight=8.0, eval_seeds=2)) == [
        "quality_weight is 0.0 in the run, 8.0 here", "eval_seeds is 5 in the run, 2 here"]
    legacy = {k: v for k, v in json.loads((tmp_path / "args.json").read_text()).items() if k != "residual"}
    (tmp_path / "args.json").write_text(json.dumps(legacy))  # a run from before residual actors
    assert train.resume_mismatches(tmp_path, dataclasses.replace(run, residual=False)) == []
    assert train.resume_mismatches(tmp_path, train.Args(scenario="edge")) == [
        "hint is 'edf-cache-queue-fit' in the run, None here"]
    r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--resume", str(tmp_path / "nowhere")],
                       capture_output=True, text=True, env=os.environ | {"COLUMNS": "400"})
    assert r.returncode != 0 and "args.json is missing: not a run directory" in r.stderr, r.stderr


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


def test_each_scenario_has_its_reward_defaults_and_explicit_values_win() -> None:
    from eat_policy import train

    edge, paper = train.Args(scenario="edge"), train.Args(scenario="paper")
    assert (edge.time_scale_s, edge.env_reward_weight, edge.quality_weight) == (600.0, 1.0, 0.0)
    assert (paper.time_scale_s, paper.env_reward_weight, paper.quality_weight) == (10.0, 0.0, 8.0)
    assert edge.points == (0.5, 1.0) and paper.buffer_size == 100_000
    explicit = train.Args(scenario="paper", quality_weight=0.0, time_scale_s=30.0, points=(0.05, 0.05))
    assert (explicit.quality_weight, explicit.time_scale_s, explicit.points) == (0.0, 30.0, (0.05, 0.05))


def test_a_clone_keeps_the_teachers_steps_to_the_nearest_bin() -> None:
    import numpy as np

    from eat_policy import nets, train
    from eat_policy.agents import base

    args = train.Args(scenario="paper", points=(0.11, 0.11), step_bins=16)
    env = train.make_env(args, np.random.default_rng(0))
    env.reset(seed=3)
    teacher = base.make("cache-lct-queue")
    teacher.reset(3)
    while not env.sim.done:
        snap = env.sim.snapshot()
        d = teacher.decide(snap)
        index = train.option_of(snap, d, args.step_bins)
        if d is not None:
            option = nets.decode(index, snap.n_jobs, snap.n_nodes, args.step_bins)
            took = eat_agent.to_decision(snap, option, np.zeros(snap.n_nodes), env._last_obs.free[d.job], args.step_bins)
            assert (took.job, took.k) == (d.job, d.k) and abs(took.steps - d.steps) <= 1
        train.step(env, args, index, None)


def test_cli_refuses_an_unknown_mode() -> None:
    r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--mode", "sometimes"], capture_output=True, text=True)
    assert r.returncode != 0 and "mode must be choose-k, fixed-k or mixed" in r.stderr


@pytest.mark.parametrize(("option", "value", "error"), [
    ("--target-entropy-frac", "0", "target-entropy-frac must be in (0, 1]"),
    ("--target-entropy-frac", "1.5", "target-entropy-frac must be in (0, 1]"),
    ("--kl-weight", "-1", "kl-weight must be at least 0"),
    ("--bc-max-decisions", "0", "bc-max-decisions must be at least 1"),
    ("--teacher-futures", "4", "teacher-futures, -horizon and -steps-factors shape a rollout: teacher"),
    ("--teacher-horizon", "10", "teacher-futures, -horizon and -steps-factors shape a rollout: teacher"),
    ("--teacher-steps-factors", "0.5", "teacher-futures, -horizon and -steps-factors shape a rollout: teacher"),
])
def test_cli_refuses_out_of_range_sac_settings(option: str, value: str, error: str) -> None:
    r = subprocess.run([sys.executable, "-m", "eat_policy.train", option, value],
                       capture_output=True, text=True, env=os.environ | {"COLUMNS": "400"})
    assert r.returncode != 0 and error in r.stderr, r.stderr


def test_cli_refuses_an_unknown_hint_or_teacher() -> None:
    for option in ("--hint", "--bc-policy"):
        r = subprocess.run([sys.executable, "-m", "eat_policy.train", option, "edf-kache"], capture_output=True, text=True)
        assert r.returncode != 0 and "unknown policy 'edf-kache'" in r.stderr, r.stderr


def warm_started(**overrides):
    """Args, a filled replay buffer and (actor, critic, critic) after a short warm start from cache-lct."""
    import copy

    import numpy as np

    from eat_policy import nets, train

    torch.manual_seed(0)
    fields = dict(scenario="paper", points=(0.08, 0.08), batch_size=16, policy_frequency=1, bc_policy="cache-lct",
                  bc_episodes=1, bc_weight=3.0, quality_weight=8.0, time_scale_s=10.0)
    args = train.Args(**{**fields, **overrides})
    rng = np.random.default_rng(0)
    env = train.make_env(args, rng)
    env.reset(seed=1)
    rb = train.ReplayBuffer(2000, nets.observe(env.sim.snapshot(), env.scenario.window))
    nets_ = [nets.Actor("eat", d=32, dp=16), nets.Critic("eat", d=32, dp=16), nets.Critic("eat", d=32, dp=16)]
    train._warm_start(args, rng, rb, nets_[0], nets_[1], nets_[2], copy.deepcopy(nets_[1]), copy.deepcopy(nets_[2]),
                      torch.optim.Adam(nets_[0].parameters()), torch.optim.Adam(nets_[1].parameters()),
                      torch.tensor(-3.0, requires_grad=True))
    return args, rb, nets_


def one_update(args, rb, nets_, global_step, demos=None):
    """One sac_update on copies of ``nets_`` with a fixed batch and chain noise; returns (losses, actor, q1, α)."""
    import copy

    import numpy as np

    from eat_policy import train

    actor, q1, q2 = (copy.deepcopy(n) for n in nets_)
    log_alpha = torch.tensor(-3.0, requires_grad=True)
    torch.manual_seed(1)
    out = train.sac_update(args, global_step, rb, np.random.default_rng(7), actor, q1, q2, copy.deepcopy(q1),
                           copy.deepcopy(q2), torch.optim.Adam([*q1.parameters(), *q2.parameters()]),
                           torch.optim.Adam(actor.parameters()), torch.optim.Adam([log_alpha]), log_alpha, demos)
    return out, actor, q1, log_alpha


def test_the_actor_loss_adds_the_weighted_clone_loss_on_the_heuristics_decisions() -> None:
    import copy

    args, rb, nets_ = warm_started()
    demos = copy.deepcopy(rb)
    plain, cloned = (one_update(args, rb, nets_, 0, d)[0]["actor"] for d in (None, demos))
    # the clone term is the heuristic's decisions' NLL under the actor: positive, of the order of log(#options)
    assert 0.5 < (cloned - plain) / args.bc_weight < 10.0


def test_before_actor_starts_only_the_critics_learn() -> None:
    args, rb, nets_ = warm_started(actor_starts=100)

    def moved(before: torch.nn.Module, after: torch.nn.Module) -> bool:
        return any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))

    out, actor, q1, log_alpha = one_update(args, rb, nets_, 99)
    assert moved(nets_[1], q1) and not moved(nets_[0], actor)
    assert log_alpha.item() == -3.0 and math.isnan(out["actor"])
    out, actor, _, log_alpha = one_update(args, rb, nets_, 100)
    assert moved(nets_[0], actor) and log_alpha.item() != -3.0


@pytest.mark.parametrize("kl_weight", [0.0, 20.0])
def test_the_trust_region_holds_the_actor_near_the_clone(kl_weight: float) -> None:
    import copy

    import numpy as np

    from eat_policy import nets, train

    args, rb, nets_ = warm_started(kl_weight=kl_weight, bc_weight=0.0)
    reference = train.frozen(nets_[0])  # the actor as SAC begins, as train() makes it
    actor, q1, q2 = (copy.deepcopy(n) for n in nets_)
    obs, *_ = rb.sample(64, np.random.default_rng(3))
    log_alpha = torch.tensor(-3.0, requires_grad=True)
    optimisers = (torch.optim.Adam([*q1.parameters(), *q2.parameters()]), torch.optim.Adam(actor.parameters(), lr=1e-3),
                  torch.optim.Adam([log_alpha]))
    rng = np.random.default_rng(7)
    for step in range(30):
        train.sac_update(args, step, rb, rng, actor, q1, q2, copy.deepcopy(q1), copy.deepcopy(q2), *optimisers,
                         log_alpha, None, reference if kl_weight else None)
    with torch.no_grad():
        torch.manual_seed(9)
        ref = nets.masked_log_probs(*reference(obs), obs)
        torch.manual_seed(9)
        own = nets.masked_log_probs(*actor(obs), obs)
    kl = float((ref.exp() * (ref - own)).sum(1).mean())
    # measured: 13.8 without the trust region, 0.001 with it
    assert (kl > 1.0) if kl_weight == 0 else (kl < 0.2)
    assert all(not p.requires_grad for p in reference.parameters())


def test_the_entropy_target_counts_wait_only_where_it_is_open() -> None:
    from eat_policy import train

    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[:, 0, :2] = True  # two feasible dispatches in each state
    may_wait = torch.tensor([True, False])
    target = train.entropy_target(mask, may_wait, step_bins=4, frac=0.5)
    # 2 dispatches x 4 bins, plus wait in the first state only
    assert torch.allclose(target, 0.5 * torch.log(torch.tensor([9.0, 8.0])))


def test_rollout_teachers_are_made_for_training_and_checked_by_the_cli() -> None:
    from eat_policy import train
    from eat_policy.agents import rollout

    edge = train.objective(train.Args(scenario="edge"))
    teacher = train.make_teacher("rollout:edf-cache-queue", edge)
    assert isinstance(teacher, rollout.RolloutTeacher) and teacher.base.name == "edf-cache-queue"
    assert teacher.objective == rollout.Objective(env_reward_weight=1.0, quality_weight=0.0, time_scale_s=600.0)
    assert teacher.futures == 0 and teacher.horizon_s is None
    drawing = train.make_teacher("rollout:edf-cache-queue", edge, futures=4, horizon_s=10.0, steps_factors=(0.5, 0.75))
    assert (drawing.futures, drawing.horizon_s, drawing.steps_factors) == (4, 10.0, (0.5, 0.75))
    assert train.make_teacher("cache-lct", edge).name == "cache-lct"
    for option, value, error in (("--teacher-futures", "-1", "teacher-futures must be >= 0 and teacher-horizon > 0"),
                                 ("--teacher-horizon", "0", "teacher-futures must be >= 0 and teacher-horizon > 0"),
                                 ("--teacher-steps-factors", "0.5,x", "teacher-steps-factors must be comma-separated numbers > 0")):
        r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--bc-policy", "rollout:edf-cache-queue", option, value],
                           capture_output=True, text=True, env=os.environ | {"COLUMNS": "400"})
        assert r.returncode != 0 and error in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--bc-policy", "rollout:edf-kache"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unknown policy 'edf-kache'" in r.stderr, r.stderr


@pytest.mark.parametrize("init", [None, Path("start.pt")])
def test_dagger_rounds_let_the_clone_act_and_keep_the_teachers_labels(init: Path | None, tmp_path) -> None:
    import copy

    import numpy as np

    from eat_policy import nets, train

    torch.manual_seed(0)
    args = train.Args(scenario="paper", points=(0.11, 0.11), batch_size=8, bc_policy="cache-lct", bc_episodes=1,
                      bc_updates=2, bc_dagger=1, init=init, eval_points=(0.11,), eval_seeds=1)
    rng = np.random.default_rng(0)
    env = train.make_env(args, rng)
    env.reset(seed=1)
    rb = train.ReplayBuffer(2000, nets.observe(env.sim.snapshot(), env.scenario.window))
    actor, q1, q2 = nets.Actor("eat", d=32, dp=16), nets.Critic("eat", d=32, dp=16), nets.Critic("eat", d=32, dp=16)
    start = copy.deepcopy(actor.state_dict())
    run_log = train.RunLog(args, tmp_path, time.time())
    labels = train._warm_start(args, rng, rb, actor, q1, q2, copy.deepcopy(q1), copy.deepcopy(q2),
                               torch.optim.Adam(actor.parameters()), torch.optim.Adam([*q1.parameters(), *q2.parameters()]),
                               torch.tensor(-3.0, requires_grad=True), run_log)
    run_log.close()
    n = len(rb)
    assert len(labels) == n
    # each round left its clone and the labels so far: a run stopped midway can be evaluated
    assert len(train.ReplayBuffer.load_states(tmp_path / train.DEMOS_FILE)) == n
    rounds = [start] + [eat_agent.load_actor(tmp_path / f"clone-round-{r}.pt").state_dict() for r in (1, 2)]
    assert not all(torch.equal(rounds[1][k], v) for k, v in rounds[2].items())
    # every clone was evaluated (and the starting policy, where there is one), and the actor
    # leaves the warm start as the best of them, which is also policy.pt
    evals = [r for r in csv.DictReader((tmp_path / "log.csv").open()) if r["kind"] == "clone"]
    assert [int(r["step"]) for r in evals] == ([0, 1, 2] if init else [1, 2])
    best = int(max(evals, key=lambda r: float(r["return"]))["step"])
    assert run_log.best == max(float(r["return"]) for r in evals)
    for weights in (actor.state_dict(), eat_agent.load_actor(tmp_path / "policy.pt").state_dict()):
        assert all(torch.equal(rounds[best][k], v) for k, v in weights.items())
    first = int(np.flatnonzero(rb.done[:n])[0]) + 1  # round 0: one episode
    if init is None:  # round 0 follows the teacher
        assert (rb.action[:first] == labels.action[:first]).all()
    else:  # a run started from a policy lets it act from round 0
        assert (rb.action[:first] != labels.action[:first]).any()
    assert (rb.action[first:n] != labels.action[first:n]).any(), "in the DAgger round the clone acts"
    for k in rb.obs:
        assert np.array_equal(rb.obs[k][:n], labels.obs[k][:n])


def test_cli_refuses_a_bad_points_range() -> None:
    for bad in ("0.8", "1.0,0.5", "a,b", "0,1"):
        r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--points", bad], capture_output=True, text=True)
        assert r.returncode != 0 and "points must be LO,HI" in r.stderr, (bad, r.stderr)


def test_the_periodic_evaluation_covers_every_eval_cluster(monkeypatch) -> None:
    from eat_policy import nets, train
    from eat_policy.sim import scenarios

    seen = []

    def small(args, point, mode="choose-k"):  # type: ignore[no-untyped-def]
        seen.append(args.nodes)
        return scenarios.edge(n_nodes=args.nodes or 8, load=point, n_jobs=8)

    monkeypatch.setattr(train, "make_scenario", small)
    args = train.Args(scenario="edge", nodes=3, eval_nodes=(5, 7), eval_seeds=2)
    ev = train.greedy_eval(nets.Actor("eat", d=32, dp=16).eval(), args)
    assert seen == [3, 5, 7] and all(math.isfinite(v) for v in ev.values())


def test_cli_refuses_bad_cluster_sizes() -> None:
    for option, bad, message in (("--eval-nodes", "16,x", "comma-separated node counts"),
                                 ("--eval-nodes", "0", "n_nodes must be in"), ("--nodes", "0", "n_nodes must be in")):
        r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--scenario", "edge", option, bad],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and message in r.stderr, (bad, r.stderr)


def test_decisions_are_discounted_by_the_time_between_them_and_episode_ends_bootstrap() -> None:
    """A semi-Markov discount: dispatches of one instant cost no γ, each ``discount_time_s`` of
    waiting one; and an episode's end (the trace ran out) still bootstraps, because the policy
    serves an endless stream and cannot see the trace ending."""
    import dataclasses

    import numpy as np

    from eat_policy import nets, train
    from eat_policy.agents import base

    args = train.Args(scenario="paper")
    assert train.discount(args, 0.0) == 1.0
    assert train.discount(args, args.discount_time_s) == pytest.approx(args.gamma)
    assert train.discount(args, 10 * args.discount_time_s) == pytest.approx(args.gamma**10)
    assert train.discount(dataclasses.replace(args, discount_time_s=0.0), 123.0) == args.gamma  # per decision

    draw = train.EpisodeDraw.draw(args, np.random.default_rng(0))
    episode = train._label_episode(args, draw, base.make("cache-lct"), None, None)
    done = np.array([t.done for t in episode])
    discounts = np.array([t.discount for t in episode])
    assert done[-1] and not done[:-1].any()
    assert (discounts > 0).all() and (discounts <= 1).all()
    assert (discounts == 1).any() and (discounts < args.gamma).any()  # same instant; long gaps
    # ... from the state the episode reached, not the last one (r + γ·V(s) would loop on itself)
    last_obs, last_next = episode[-1].obs, episode[-1].next_obs
    assert not all(np.array_equal(last_next[k], last_obs[k]) for k in last_obs)
    assert last_next["job_mask"].sum() == 0  # every job served: nothing left to dispatch



def test_worker_processes_label_as_this_process_does_and_repeat_with_the_seed() -> None:
    """``--workers``: the teacher's episodes come out the same from the pool as from this process;
    a clone's (DAgger) episodes repeat exactly, each worker seeding torch with its episode."""
    import numpy as np

    from eat_policy import nets, train
    from eat_policy.agents import base

    args = train.Args(scenario="paper", points=(0.11, 0.11), hint="cache-lct-queue", bc_policy="rollout:cache-lct-queue",
                      teacher_futures=2, teacher_horizon_s=60.0, workers=2)
    rng = np.random.default_rng(3)
    draws = [train.EpisodeDraw.draw(args, rng) for _ in range(2)]
    teacher = train.make_teacher("rollout:cache-lct-queue", train.objective(args), 2, 60.0)
    hint = base.make("cache-lct-queue").decide
    here = list(train._label_episodes(args, draws, teacher, None, hint, None))
    clone = nets.Actor("eat", d=32, dp=16, hint="cache-lct-queue")
    with train._labelling_pool(2) as pool:
        assert pool is not None
        pooled = list(train._label_episodes(args, draws, teacher, None, hint, pool))
        dagger = [list(train._label_episodes(args, draws, teacher, clone, hint, pool)) for _ in range(2)]

    def actions(episodes: list[list[train.Labelled]]) -> list[list[tuple[int, int, float]]]:
        return [[(t.taken, t.label, t.reward) for t in episode] for episode in episodes]

    assert actions(pooled) == actions(here) and all(len(e) > 10 for e in here)
    assert all(t.taken == t.label for episode in here for t in episode)
    assert actions(dagger[0]) == actions(dagger[1])
    assert any(t.taken != t.label for episode in dagger[0] for t in episode), "the clone acts"


def test_a_labelled_episode_stops_at_its_decision_cap() -> None:
    import numpy as np

    from eat_policy import train

    args = train.Args(scenario="paper", points=(0.11, 0.11), bc_policy="cache-lct")
    draw = train.EpisodeDraw.draw(args, np.random.default_rng(4))
    teacher = train.make_teacher("cache-lct", train.objective(args))
    whole = train._label_episode(args, draw, teacher, None, None)
    capped = train._label_episode(dataclasses.replace(args, bc_max_decisions=5), draw, teacher, None, None)
    assert len(whole) > 5 and whole[-1].done
    assert [(t.label, t.reward) for t in capped] == [(t.label, t.reward) for t in whole[:5]]
    assert not capped[-1].done  # cut short, it still bootstraps from the state it reached


def test_a_residual_run_labels_and_takes_only_its_hints_options() -> None:
    """``--residual``: the rollout teacher moves no GPUs, so its labels, like a residual clone's
    choices, are among the options around the hint's proposal (never a masked-out option)."""
    import numpy as np

    from eat_policy import nets, train
    from eat_policy.agents import base
    from eat_policy.sim import scenarios

    args = train.Args(scenario="edge", hint="edf-cache-queue-fit", residual=True, bc_policy="rollout:edf-cache-queue-fit",
                      teacher_futures=2, teacher_horizon_s=5.0, teacher_steps_factors=(0.5, 1.25))
    draw = train.EpisodeDraw(scenarios.edge(n_nodes=5, load=0.9, n_jobs=40, gpu_keeps_model=False), 7)
    teacher = train.make_teacher(str(args.bc_policy), train.objective(args), 2, 5.0, (0.5, 1.25), gpu_moves=False)
    clone = nets.Actor("eat", d=32, dp=16, hint="edf-cache-queue-fit", residual=True)
    hint = base.make("edf-cache-queue-fit").decide
    labelled = train._label_episode(args, draw, teacher, None, hint) + train._label_episode(args, draw, teacher, clone, hint)
    for t in labelled:
        o = nets.to_tensors(t.obs)
        open_ = torch.cat([o["may_wait"][0], nets.option_mask(o)[0].flatten().repeat_interleave(args.step_bins)])
        assert open_[t.label] and open_[t.taken]
    assert any(t.label != 0 for t in labelled) and any(t.taken != 0 for t in labelled)


@pytest.mark.parametrize("extra", [[], ["--hint", "cache-lct", "--bc-policy", "rollout:edf-cache"],
                                   ["--hint", "cache-lct", "--bc-policy", "rollout:eat-pods"]])
def test_cli_refuses_a_residual_run_without_its_hints_teacher(extra: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--residual", *extra], capture_output=True, text=True)
    assert r.returncode != 0 and "residual: give --hint" in r.stderr, r.stderr


def test_a_residual_clone_learns_from_its_heuristic_or_a_residual_policy_over_it() -> None:
    from eat_policy import train

    assert train.teaches_around("rollout:edf-cache-queue-fit", "edf-cache-queue-fit")
    assert train.teaches_around("edf-cache-queue-fit", "edf-cache-queue-fit")
    assert train.teaches_around("rollout:eat-pods", "edf-cache-queue-fit")  # residual over that hint
    assert not train.teaches_around("rollout:eat-pods", "edf-cache-queue")
    assert not train.teaches_around("eat", "edf-cache-queue")  # eat-edge is shown the hint, not held to it
    assert not train.teaches_around("rollout:edf-cache", "edf-cache-queue-fit")


def test_a_run_started_from_a_policy_keeps_it_until_sac_improves_on_it(tmp_path) -> None:
    from eat_policy import nets, train

    torch.manual_seed(123)
    args = train.Args(scenario="paper", total_timesteps=3, learning_starts=1000, eval_every=1000, eval_seeds=1,
                      out=tmp_path / "runs", init=tmp_path / "start.pt")
    start = train.new_actor(args)
    train.save_policy(start, tmp_path / "start.pt")
    run_dir = train.train(args)
    # the run acts and is evaluated as the given policy from its first step: no update has run,
    # so its best (and only) evaluated policy is the one it started from, not a fresh actor
    best = eat_agent.load_actor(run_dir / "policy.pt")
    for key, value in start.state_dict().items():
        assert torch.equal(best.state_dict()[key], value), key
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    assert [r["step"] for r in rows if r["kind"] == "eval"] == ["1", "3"]


def test_a_run_on_another_cluster_size_keeps_the_starting_policys_node_share(tmp_path) -> None:
    from eat_policy import train

    torch.manual_seed(5)
    start = train.new_actor(train.Args(scenario="paper"))  # trained on the paper's 4 nodes
    train.save_policy(start, tmp_path / "start.pt")
    args = train.Args(scenario="paper", nodes=8, total_timesteps=3, learning_starts=1000, eval_every=1000,
                      eval_seeds=1, out=tmp_path / "runs", init=tmp_path / "start.pt")
    assert train.new_actor(args).encoder.train_nodes == 8
    run_dir = train.train(args)
    assert eat_agent.load_actor(run_dir / "policy.pt").encoder.train_nodes == 4
    assert torch.load(run_dir / "state.pt", weights_only=True)["train_nodes"] == 4
    # resumed (without --init, as the CLI requires), it still has the starting policy's
    train.train(dataclasses.replace(args, init=None, resume=run_dir, total_timesteps=6))
    state = torch.load(run_dir / "state.pt", weights_only=True)
    assert (state["global_step"], state["train_nodes"]) == (6, 4)


@pytest.mark.parametrize(("extra", "error"), [
    (["--resume", "runs/x"], "init starts a new run from a trained policy: it takes no --resume"),
    (["--kl-weight", "1", "--bc-weight", "0.5"], "bc-weight keeps a teacher's labels in SAC's actor loss: give --bc-policy"),
    (["--scenario", "edge"], "has other networks or inputs: hint is 'edf-cache-queue-fit' there, None here"),
])
def test_cli_refuses_an_init_policy_it_cannot_start_from(extra: list[str], error: str) -> None:
    shipped = eat_agent.CHECKPOINTS / "eat-edge-pods.pt"
    r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--init", str(shipped), *extra],
                       capture_output=True, text=True, env=os.environ | {"COLUMNS": "400"})
    assert r.returncode != 0 and error in r.stderr, r.stderr


def test_cli_refuses_an_init_path_that_is_not_a_policy(tmp_path) -> None:
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    for path, error in ((tmp_path / "missing.pt", "is not a file"), (tmp_path / "notes.pt", "is not a policy checkpoint (UnpicklingError)")):
        r = subprocess.run([sys.executable, "-m", "eat_policy.train", "--init", str(path)],
                           capture_output=True, text=True, env=os.environ | {"COLUMNS": "400"})
        assert r.returncode != 0 and error in r.stderr and "Traceback" not in r.stderr, r.stderr
