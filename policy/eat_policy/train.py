"""`eat-policy train`: discrete SAC with a diffusion actor (D2SAC) on the scheduling simulator.

Read top to bottom like cleanrl's ``sac_continuous_action.py``: ``Args`` → env factory and
reward → replay buffer → ``train`` (seeding, nets, the loop in paper order: diffusion-actor
sample → twin-Q target → critic loss → delayed actor loss → α autotune → Polyak update), with
banners separating the algorithm from the plumbing. The networks are in ``eat_policy.nets``
because the policy service imports them too.

Training reward (a documented choice, not the env's prototype reward): in ``paper`` the
prototype's per-dispatch reward caps its latency term at 10, so it cannot see response times
below 25 s; we charge instead −(job-seconds spent in the system since the last decision)/10 s
— its episode sum is −Σ response times / 10 (Little's law) — plus ``quality_weight``·Q(steps)
per dispatch. In ``edge`` we keep the env's reward (deadline met + quality − lateness) and add
the time charge per 600 job-seconds, a tie-breaker that leaves deadlines first (checkpoints
trained before that default took effect charged per 10, their cards say so).

Warm start (optional, before SAC): behaviour cloning from ``--bc-policy``, a heuristic or
``rollout:<heuristic>`` (``agents.rollout``: the heuristic improved by one-step lookahead on
copies of the episode, a teacher that cannot serve but can label), with ``--bc-dagger`` rounds in
which the clone acts and the teacher labels. ``--hint <heuristic>`` shows the networks that
heuristic's proposal at every decision (``nets.hint_features``), so the policy starts from it and
learns where to differ.

Training traces use seeds ≥ 10⁶ and periodic evaluation seeds 10⁵.., so the evaluation seeds
0..N of the harness are never trained on.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import csv
import dataclasses
import itertools
import json
import math
import multiprocessing
import pickle
import random
import time
from pathlib import Path
from typing import Annotated, Any, Iterator, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
import typer

from eat_policy import nets, progress
from eat_policy.agents import base
from eat_policy.agents import eat as eat_agent
from eat_policy.agents import rollout
from eat_policy.sim import env as sim_env
from eat_policy.sim import scenarios

DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": dict(points=(0.01, 0.11), quality_weight=8.0, env_reward_weight=0.0, time_scale_s=10.0,
                  eval_points=(0.05, 0.11), buffer_size=100_000, discount_time_s=16.0),
    "edge": dict(points=(0.5, 1.0), quality_weight=0.0, env_reward_weight=1.0, time_scale_s=600.0,
                 eval_points=(0.8,), buffer_size=40_000, discount_time_s=0.15),
}


@dataclasses.dataclass
class Args:
    scenario: str = "paper"
    """``paper`` (choose-k, 4 nodes, λ drawn per episode) or ``edge`` (8 nodes, ρ drawn per episode)."""
    variant: str = "eat"
    """``eat`` (attention + diffusion), ``d-sac`` (no attention) or ``sac`` (no diffusion)."""
    seed: int = 1
    """Seeds torch, numpy, random and the training traces."""
    total_timesteps: int = 30_000
    """Environment steps (decisions) to train for."""
    max_minutes: float = 25.0
    """Wall-clock budget; training stops (and saves) when it runs out. The issue's target is 30."""
    nodes: Optional[int] = None
    """Cluster size (default: 4 paper, 8 edge)."""
    mode: str = "choose-k"
    """Paper only: ``choose-k``, ``fixed-k`` (jobs bring k) or ``mixed`` (either, per episode)."""
    gpu_keeps_model: bool = True
    """Edge only: GPUs keep models between jobs (a warm pool); False: every job loads its model,
    as the operator's one-pod-per-rank jobs do (``scenarios.Scenario.gpu_keeps_model``)."""
    gamma: float = 0.99
    """Discount per ``discount_time_s`` of cluster time between decisions (see ``discount``)."""
    tau: float = 0.005
    """Polyak rate of the target critics (the prototype's value)."""
    batch_size: int = 64
    """Replay minibatch size (the prototype used 512; smaller fits a 2-core CPU budget)."""
    learning_starts: int = 1_000
    """Random-policy steps before updates start."""
    lr: float = 3e-4
    """Adam learning rate for actor, critics and α (the prototype's value)."""
    alpha_lr: float = 1e-3
    """Adam learning rate of log α (faster than the nets: rewards change scale during training)."""
    policy_frequency: int = 2
    """Delayed actor (and α) update: once every this many critic updates."""
    kl_weight: float = 0.0
    """A trust region for SAC's actor: this weight × KL(reference ‖ actor) on the replay batch, the
    reference being the actor as SAC begins (the warm start's clone, or as resumed). Unlike the
    clone loss, which holds the actor to the teacher's labels on the warm start's states, it holds
    it near the clone on every state SAC reaches."""
    actor_starts: int = 0
    """Critic-only updates before this global step: after a warm start, the critics first fit the
    clone's own returns, so that the actor is not steered by values they have not learned yet."""
    target_entropy_frac: float = 0.2
    """α autotune target: this share of log(#feasible options), per state."""
    diffusion_steps: int = 5
    """Length T of the reverse chain (D2SAC uses 5; the prototype 10)."""
    d_model: int = 64
    """Token width of the encoders."""
    step_bins: int = nets.STEP_BINS
    """Steps bins over each job's range (8: 1, 5, 10, 14, 19, 23, 28, 32 on the paper's 1–32;
    16 adds 3, 7, …, 30, the paper's best-quality step count)."""
    hint: Optional[str] = None
    """Show the actor and critics this heuristic's proposal at every decision (``nets.hint_features``),
    so the policy can follow it where it is good and learn where to do better (a residual policy)."""
    residual: bool = False
    """Keep the hint's placement: the actor's options are the hint's job, k and gang nodes at each
    steps bin, or wait (``nets.only_the_proposal``); the ``rollout:`` teacher then moves no GPUs."""
    bc_policy: Optional[str] = None
    """Warm start: fill the buffer with this policy's episodes and clone it first (reported);
    ``rollout:<heuristic>`` labels them by one-step rollouts over the heuristic (``agents.rollout``)."""
    teacher_futures: int = 0
    """``rollout:`` teacher: 0 plays each option out on the episode itself (clairvoyant); n > 0
    on n futures drawn from the present, so that its labels depend only on the state."""
    teacher_horizon_s: Optional[float] = None
    """``rollout:`` teacher: score play-outs on the jobs arriving within this many seconds
    (None: to the episode's end)."""
    teacher_steps_factors: tuple[float, ...] = rollout.STEPS_FACTORS
    """``rollout:`` teacher: the proposed steps × each of these are alternatives too."""
    bc_episodes: int = 0
    """Heuristic episodes for the warm start."""
    bc_dagger: int = 0
    """DAgger rounds after the first clone: ``bc_episodes`` more episodes in which the clone acts
    and the teacher labels what it reaches, then ``bc_updates`` more on all labels."""
    bc_max_decisions: Optional[int] = None
    """Label at most this many decisions of each warm-start episode (None: every one): bounds a
    round's cost where a clone lets the queue grow, since each rollout label plays out the queue."""
    bc_updates: int = 0
    """Cross-entropy updates of the actor (and TD updates of the critics) on those episodes."""
    bc_weight: float = 0.0
    """After the warm start, keep this weight × the cross-entropy on the heuristic's decisions in
    the actor loss (as TD3+BC does), so SAC improves on the clone instead of forgetting it
    (measured: without it, 400 SAC steps took the edge clone from 7.4 s to 10.7 s). The
    demonstrations are kept in the run directory (``demos.npz``), so ``--resume`` with a
    ``--bc-weight`` keeps the clone loss too."""
    eval_every: int = 2_500
    """Steps between periodic evaluations and checkpoints."""
    eval_seeds: int = 5
    """Held-out trace seeds (10⁵ + i) per evaluation point."""
    threads: int = 1
    """torch threads (the machine has 2 shared cores)."""
    workers: int = 1
    """Processes that play and label the warm start's episodes (the rollout teacher's play-outs
    are most of a warm start's time). 1 labels in this process, in the run's random order."""
    out: Path = Path("runs")
    """Parent folder of the run directory ``scenario__variant__seed__time``."""
    resume: Optional[Path] = None
    """Run directory to resume from (its ``state.pt``); the replay buffer is refilled."""
    init: Optional[Path] = None
    """A policy checkpoint (e.g. a shipped one) to start the actor from: SAC fine-tunes it, with
    fresh critics (``actor_starts`` lets them learn its returns first); with ``bc_policy`` it acts
    from the warm start's first round, and it is evaluated first, so the run keeps it unless a
    clone or SAC beats it."""
    export: Optional[Path] = None
    """Copy the best policy checkpoint here at the end (e.g. eat_policy/checkpoints/eat-paper.pt)."""
    # the scenario's DEFAULTS where None (an explicit value, 0 included, is kept)
    points: Optional[tuple[float, ...]] = None
    """Range of λ (paper) or ρ (edge) sampled per training episode."""
    eval_points: Optional[tuple[float, ...]] = None
    eval_nodes: tuple[int, ...] = ()
    """Further cluster sizes the periodic evaluation covers; the best policy is chosen on the mean
    over all of them (the 8-node return alone picked policies that stall jobs at 16-32 nodes)."""
    quality_weight: Optional[float] = None
    """Reward per unit of quality Q(steps) at dispatch, in units of 10 job-seconds."""
    env_reward_weight: Optional[float] = None
    """Weight of the env's own per-dispatch reward."""
    time_scale_s: Optional[float] = None
    """Job-seconds in the system per unit of negative reward."""
    buffer_size: Optional[int] = None
    """Replay capacity (transitions)."""
    discount_time_s: Optional[float] = None
    """Seconds of cluster time that cost one γ (about the mean gap between decisions: 16 s paper,
    0.15 s edge). 0: one γ per decision, whatever the time between them."""

    def __post_init__(self) -> None:
        for key, value in DEFAULTS[self.scenario].items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    @property
    def starts_from_policy(self) -> bool:
        """A fresh run whose actor is a policy from its first step (a warm start or ``init``)."""
        return bool(self.bc_policy or self.init) and not self.resume


def discount(args: Args, dt_s: float) -> float:
    """The factor on the next state's value after a decision followed by ``dt_s`` seconds.

    A semi-Markov discount: dispatches of one instant cost none, a long wait many γ, and the
    horizon in seconds does not shrink as load rises. An episode's end is a truncation, not a
    terminal state (the policy serves an endless stream, and nothing in its observation says
    that the trace is about to run out), so it is bootstrapped like any other transition."""
    if not args.discount_time_s:
        return args.gamma
    return float(args.gamma ** (dt_s / args.discount_time_s))


def modes(args: Args) -> tuple[str, ...]:
    if args.scenario != "paper":
        return ("",)
    return ("choose-k", "fixed-k") if args.mode == "mixed" else (args.mode,)


def make_scenario(args: Args, point: float, mode: str = "choose-k") -> scenarios.Scenario:
    nodes = {} if args.nodes is None else {"n_nodes": args.nodes}
    if args.scenario == "paper":
        return scenarios.paper(mode=mode, rate=point, **nodes)
    return scenarios.edge(load=point, gpu_keeps_model=args.gpu_keeps_model, **nodes)


def make_env(args: Args, rng: np.random.Generator) -> sim_env.SchedulingEnv:
    lo, hi = args.points
    point = float(rng.uniform(lo, hi))
    options = modes(args)
    mode = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
    return sim_env.SchedulingEnv(make_scenario(args, point, mode), args.step_bins)


@dataclasses.dataclass(frozen=True)
class EpisodeDraw:
    """A training episode's scenario and trace seed, drawn from the run's generator."""

    scenario: scenarios.Scenario
    seed: int

    @classmethod
    def draw(cls, args: Args, rng: np.random.Generator) -> "EpisodeDraw":
        """As ``make_env`` then the trace seed draw, in that order."""
        scenario = make_env(args, rng).scenario
        return cls(scenario, 1_000_000 + int(rng.integers(2**30)))


def time_in_system(env: sim_env.SchedulingEnv, t0: float, t1: float) -> float:
    """∫ (jobs arrived and not finished) dt over [t0, t1]."""
    sim = env.sim
    arrival, finish = sim.trace.arrival_s, sim.records.finish_s
    end = np.where(np.isfinite(finish), np.minimum(finish, t1), t1)
    return float(np.maximum(end - np.maximum(arrival, t0), 0.0).sum())


def step(env: sim_env.SchedulingEnv, args: Args, index: int, v: np.ndarray | None,
         free: np.ndarray | None = None) -> tuple[float, bool, dict]:
    """Apply a flat option index chosen on an observation whose (J, N) usable idle GPUs are
    ``free`` (default: the env's own); returns (training reward, done, info);
    ``info["discount"]`` is the factor on the next state's value (``discount``)."""
    snap = env.sim.snapshot()
    option = nets.decode(index, snap.n_jobs, snap.n_nodes, args.step_bins)
    t0 = snap.now
    if option is None:
        action = {"job": env.scenario.window, "k": 0, "node_scores": np.zeros(snap.n_nodes), "steps": 0}
        quality = 0.0
    else:
        free = (env._last_obs.free if free is None else free)[option[0]]
        pointer = np.zeros(snap.n_nodes) if v is None else v
        d = eat_agent.to_decision(snap, option, pointer, free, args.step_bins)
        action = {"job": d.job, "k": nets.features.K_VALUES.index(d.k), "node_scores": _scores_for(d, snap), "steps": option[3]}
        quality = float(env.sim.physics.quality(snap, d.job, d.steps))
    _, r_env, terminated, truncated, info = env.step(action)
    info["discount"] = discount(args, env.sim.now - t0)
    return objective(args).reward(r_env, quality, time_in_system(env, t0, env.sim.now)), terminated or truncated, info


def objective(args: Args) -> rollout.Objective:
    """The training reward's weights (the rollout teacher scores its play-outs by it too)."""
    return rollout.Objective(args.env_reward_weight, args.quality_weight, args.time_scale_s)


def _scores_for(d: Any, snap: Any) -> np.ndarray:
    """Node scores that make ``env.fill_gpus`` take exactly the decision's GPUs' nodes first."""
    scores = np.zeros(snap.n_nodes)
    for rank, g in enumerate(d.gpus):
        n = int(snap.gpu_node[g])
        scores[n] = max(scores[n], len(d.gpus) - rank)
    return scores


_JOB_AXIS = ("jobs", "pairs", "job_mask", "k_mask", "free", "hint_jobs", "hint_pairs")


class ReplayBuffer:
    """Fixed-shape ring buffer of (obs, option index, reward, next obs, discount of the next value),
    and where each episode ended (a truncation: it still bootstraps)."""

    def __init__(self, capacity: int, example: dict[str, np.ndarray]) -> None:
        self.capacity, self.pos, self.full = capacity, 0, False
        self.obs = {k: np.zeros((capacity,) + v.shape, v.dtype) for k, v in example.items()}
        self.next = {k: np.zeros((capacity,) + v.shape, v.dtype) for k, v in example.items()}
        self.action = np.zeros(capacity, np.int64)
        self.reward = np.zeros(capacity, np.float32)
        self.discount = np.zeros(capacity, np.float32)
        self.done = np.zeros(capacity, bool)

    def add(self, obs: dict, action: int, reward: float, next_obs: dict, discount: float, done: bool = False) -> None:
        for k in self.obs:
            self.obs[k][self.pos], self.next[k][self.pos] = obs[k], next_obs[k]
        self.action[self.pos], self.reward[self.pos] = action, reward
        self.discount[self.pos], self.done[self.pos] = discount, done
        self.pos = (self.pos + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def save_states(self, path: Path) -> None:
        """The filled part's states and actions (what a clone loss reads), compressed: padded
        job rows are mostly zeros. Rewards and next states are not kept."""
        n = len(self)
        np.savez_compressed(path, action=self.action[:n], **{f"obs.{k}": v[:n] for k, v in self.obs.items()})

    @classmethod
    def load_states(cls, path: Path) -> "ReplayBuffer":
        """A full buffer of what ``save_states`` kept (next states alias the states: unused)."""
        with np.load(path, allow_pickle=False) as f:
            example = {k.removeprefix("obs."): f[k][0] for k in f.files if k.startswith("obs.")}
            rb = cls(len(f["action"]), example)
            for k in rb.obs:
                rb.obs[k][:] = f[f"obs.{k}"]
            rb.action[:] = f["action"]
        rb.next, rb.full = rb.obs, True
        return rb

    def sample(self, n: int, rng: np.random.Generator) -> tuple[dict, torch.Tensor, torch.Tensor, dict, torch.Tensor]:
        i = rng.integers(0, len(self), n)

        def t(d: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
            # Job rows are padded to the window; cut the batch to its longest real queue (speed).
            j = max(1, int((np.abs(d["jobs"][i]).sum(-1) > 0).sum(1).max()))
            return {k: torch.from_numpy(v[i][:, :j] if k in _JOB_AXIS else v[i]) for k, v in d.items()}

        return (t(self.obs), torch.from_numpy(self.action[i]), torch.from_numpy(self.reward[i]), t(self.next),
                torch.from_numpy(self.discount[i]))


def greedy_eval(actor: nets.Actor, args: Args) -> dict[str, float]:
    """Held-out seeds 10⁵.. at each eval point (and cluster size of ``eval_nodes``): mean training
    return, response time, quality."""
    policy = eat_agent.LearnedPolicy(args.variant, actor=actor)
    hint = eat_agent.hinter_of(actor)
    rows: dict[str, list[float]] = {"resp_mean_s": [], "quality_mean": [], "deadline_attainment": [], "return": []}
    clusters = [args] + [dataclasses.replace(args, nodes=n) for n in args.eval_nodes]
    for cluster, point, mode in itertools.product(clusters, args.eval_points, modes(args)):
        env = sim_env.SchedulingEnv(make_scenario(cluster, point, mode), args.step_bins)
        for s in range(args.eval_seeds):
            env.reset(seed=100_000 + s)
            policy.reset(100_000 + s)
            ret, done, info = 0.0, env.sim.done, {}
            while not done:
                _, obs, index, pointer = eat_agent.act(actor, env.sim.snapshot(), policy.generator, hint=hint)
                r, done, info = step(env, args, index, pointer, obs["free"])
                ret += r
            m = env.sim.metrics().as_dict()
            for key in ("resp_mean_s", "quality_mean", "deadline_attainment"):
                rows[key].append(m[key])
            rows["return"].append(ret)
    return {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan") for k, v in rows.items()}


class RunLog:
    """A run's log.csv (and TensorBoard) rows and its held-out evaluations: the best policy
    evaluated so far is the run's ``policy.pt``, whether a warm start's clone or SAC's actor."""

    COLUMNS = ["kind", "step", "wall_s", "return", "resp_mean_s", "quality_mean", "deadline_attainment",
               "qf_loss", "actor_loss", "alpha", "entropy"]

    def __init__(self, args: Args, run_dir: Path, start_wall: float, best: float = -math.inf) -> None:
        self.args, self.run_dir, self.start_wall, self.best = args, run_dir, start_wall, best
        self.writer = _summary_writer(run_dir)
        self._file = (run_dir / "log.csv").open("a", newline="")
        self._csv = csv.writer(self._file)
        if self._file.tell() == 0:
            self._csv.writerow(self.COLUMNS)

    def row(self, kind: str, step: int, ret: float, m: dict, losses: dict | None = None, alpha: float = math.nan) -> None:
        losses = losses or {}
        self._csv.writerow([kind, step, round(time.time() - self.start_wall, 1), ret, m.get("resp_mean_s"),
                            m.get("quality_mean"), m.get("deadline_attainment"), losses.get("qf", math.nan),
                            losses.get("actor", math.nan), alpha, losses.get("entropy", math.nan)])

    def evaluate(self, actor: nets.Actor, kind: str, step: int, losses: dict | None = None,
                 alpha: float = math.nan) -> tuple[dict[str, float], bool]:
        """Evaluate ``actor`` on the held-out seeds and log it; returns the figures and whether
        it is the best so far (then saved as ``policy.pt``)."""
        ev = greedy_eval(actor, self.args)
        self.row(kind, step, ev["return"], ev, losses, alpha)
        self._file.flush()
        if self.writer:
            for key, value in ev.items():
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        improved = ev["return"] > self.best
        if improved:
            self.best = ev["return"]
            save_policy(actor, self.run_dir / "policy.pt")
        return ev, improved

    def close(self) -> None:
        self._file.close()
        if self.writer:
            self.writer.close()


def plot_curve(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log_path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "eval"]
    if not rows:
        return
    x = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key in zip(axes, ("return", "resp_mean_s", "quality_mean")):
        ax.plot(x, [float(r[key]) for r in rows], marker="o", ms=3)
        ax.set_xlabel("environment steps")
        ax.set_title(f"eval {key} (held-out seeds)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def train(args: Args) -> Path:
    """Run one training; returns the run directory (log.csv, curve.png, state.pt, policy.pt, and
    with a warm start demos.npz and clone-round-N.pt)."""
    if args.variant not in nets.VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(nets.VARIANTS)}, got {args.variant!r}")
    torch.set_num_threads(args.threads)
    start_wall = time.time()

    # TRY NOT TO MODIFY: seeding and run directory
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.resume:
        run_dir = args.resume
    else:
        run_dir = args.out / f"{args.scenario}__{args.variant}__{args.seed}__{int(time.time())}"
    run_dir.mkdir(parents=True, exist_ok=True)

    # ALGO LOGIC: networks, targets, optimisers, entropy temperature
    actor = new_actor(args)
    state = torch.load(run_dir / "state.pt", weights_only=True) if args.resume else None
    if state is not None:  # a run started from a policy kept that policy's cluster size
        actor.encoder.train_nodes = state.get("train_nodes", actor.encoder.train_nodes)
    elif args.init:
        load_init(actor, args.init)
    train_nodes = actor.encoder.train_nodes
    qf1, qf2 = (nets.Critic(args.variant, args.d_model, step_bins=args.step_bins, hint=bool(args.hint),
                            train_nodes=train_nodes) for _ in range(2))
    qf1_target, qf2_target = copy.deepcopy(qf1), copy.deepcopy(qf2)
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.lr)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.lr)
    log_alpha = torch.tensor(math.log(0.05), requires_grad=True)  # the prototype's α as the start
    a_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr)
    global_step, best = 0, -math.inf
    if state is not None:
        for module, key in ((actor, "actor"), (qf1, "qf1"), (qf2, "qf2"), (qf1_target, "qf1_target"), (qf2_target, "qf2_target")):
            module.load_state_dict(state[key])
        for opt, key in ((q_optimizer, "q_opt"), (actor_optimizer, "actor_opt"), (a_optimizer, "a_opt")):
            opt.load_state_dict(state[key])
        with torch.no_grad():
            log_alpha.copy_(state["log_alpha"])
        global_step, best = int(state["global_step"]), float(state["best"])
        rng = np.random.default_rng([args.seed, global_step])
        torch.manual_seed(int(rng.integers(2**31)))  # not the noise of the run's first steps again
    # a resume keeps the run's own record and writes its settings beside it
    args_file = "args.json" if state is None else f"args-resume-{global_step}.json"
    (run_dir / args_file).write_text(json.dumps(dataclasses.asdict(args), default=str, indent=1))
    run_log = RunLog(args, run_dir, start_wall, best)
    writer = run_log.writer
    if writer:
        table = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)

    env = make_env(args, rng)
    env.reset(seed=1_000_000 + int(rng.integers(2**30)))
    hint = eat_agent.hinter_of(actor)
    obs = nets.observe(env.sim.snapshot(), env.scenario.window, hint, args.residual)
    rb = ReplayBuffer(args.buffer_size, obs)

    def episode_seed() -> int:
        return 1_000_000 + int(rng.integers(2**30))

    # ALGO LOGIC: optional warm start from a heuristic (reported in the checkpoint card)
    demos = None
    if args.bc_policy and not args.resume:
        labels = _warm_start(args, rng, rb, actor, qf1, qf2, qf1_target, qf2_target, actor_optimizer, q_optimizer,
                             log_alpha, run_log)
        demos = labels if args.bc_weight > 0 else None
    elif args.resume and args.bc_weight > 0:
        demos = load_demos(run_dir)
    reference = frozen(actor) if args.kl_weight > 0 else None

    episode_return, losses = 0.0, {"qf": float("nan"), "actor": float("nan"), "entropy": float("nan")}
    start_step = global_step
    with progress.bar() as bar:
        task = bar.add_task(f"train {args.scenario}/{args.variant}", total=args.total_timesteps,
                            completed=global_step, info="")
        while global_step < args.total_timesteps:
            # ALGO LOGIC: act — sample an option from the diffusion actor (random at the start)
            o = nets.to_tensors(obs)
            mask = nets.option_mask(o)
            with torch.no_grad():
                u, v, w = actor(o)
                logp = nets.joint_log_probs(u, v, w, mask, o["may_wait"])[0]
            if global_step - start_step < args.learning_starts and not (args.starts_from_policy or args.resume):
                feasible = torch.cat([o["may_wait"][0], mask[0].flatten().repeat_interleave(args.step_bins)])
                index = int(torch.multinomial(feasible.float(), 1))
            else:
                index = int(torch.multinomial(logp.exp(), 1))
            option = nets.decode(index, env.sim.snapshot().n_jobs, env.sim.snapshot().n_nodes, args.step_bins)
            pointer = v[0, option[0], :, option[2]].numpy() if option else None
            reward, done, info = step(env, args, index, pointer, obs["free"])
            episode_return += reward
            # Even at the episode's end: it bootstraps from the state reached (the last state
            # itself would make its target r + γ·V(s), a loop that settles at r / (1 − γ)).
            next_obs = nets.observe(env.sim.snapshot(), env.scenario.window, hint, args.residual)
            rb.add(obs, index, reward, next_obs, info["discount"], done)
            obs = next_obs
            global_step += 1
            if done:
                m = info.get("metrics", {})
                run_log.row("episode", global_step, episode_return, m, losses, log_alpha.exp().item())
                if writer:
                    writer.add_scalar("charts/episodic_return", episode_return, global_step)
                    writer.add_scalar("charts/resp_mean_s", m.get("resp_mean_s", float("nan")), global_step)
                env = make_env(args, rng)
                env.reset(seed=episode_seed())
                while env.sim.done:
                    env.reset(seed=episode_seed())
                obs = nets.observe(env.sim.snapshot(), env.scenario.window, hint, args.residual)
                episode_return = 0.0

            # ALGO LOGIC: training
            if len(rb) >= min(args.learning_starts, args.buffer_size) and global_step - start_step >= min(args.learning_starts, 200):
                losses = sac_update(args, global_step, rb, rng, actor, qf1, qf2, qf1_target, qf2_target,
                                    q_optimizer, actor_optimizer, a_optimizer, log_alpha, demos, reference)
                if writer and global_step % 100 == 0:
                    writer.add_scalar("losses/qf_loss", losses["qf"], global_step)
                    writer.add_scalar("losses/actor_loss", losses["actor"], global_step)
                    writer.add_scalar("losses/alpha", log_alpha.exp().item(), global_step)
                    writer.add_scalar("charts/SPS", (global_step - start_step) / (time.time() - start_wall), global_step)

            out_of_time = (time.time() - start_wall) / 60 > args.max_minutes
            # a policy given to the run (by --init, or not yet evaluated by its warm start) is
            # evaluated before SAC moves it, so policy.pt is never worse than where the run began
            first = global_step == start_step + 1 and args.starts_from_policy and run_log.best == -math.inf
            if global_step % args.eval_every == 0 or out_of_time or global_step >= args.total_timesteps or first:
                ev, _ = run_log.evaluate(actor, "eval", global_step, losses, log_alpha.exp().item())
                torch.save({"actor": actor.state_dict(), "qf1": qf1.state_dict(), "qf2": qf2.state_dict(),
                            "qf1_target": qf1_target.state_dict(), "qf2_target": qf2_target.state_dict(),
                            "q_opt": q_optimizer.state_dict(), "actor_opt": actor_optimizer.state_dict(),
                            "a_opt": a_optimizer.state_dict(), "log_alpha": log_alpha.detach(),
                            "global_step": global_step, "best": run_log.best, "train_nodes": train_nodes},
                           run_dir / "state.pt")
                plot_curve(run_dir / "log.csv", run_dir / "curve.png")
                bar.update(task, info=f"eval return {ev['return']:.1f} resp {ev['resp_mean_s']:.1f}s q {ev['quality_mean']:.3f}")
            bar.update(task, completed=global_step)
            if out_of_time:
                break
    run_log.close()
    wall = time.time() - start_wall
    card = {"scenario": args.scenario, "variant": args.variant, "seed": args.seed, "steps": global_step,
            "wall_s": round(wall, 1), "best_eval_return": run_log.best, "torch": torch.__version__,
            "args": {k: str(v) for k, v in dataclasses.asdict(args).items()}}
    (run_dir / "card.json").write_text(json.dumps(card, indent=1))
    if args.export:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        args.export.write_bytes((run_dir / "policy.pt").read_bytes())
        args.export.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return run_dir


def sac_update(args: Args, global_step: int, rb: ReplayBuffer, rng: np.random.Generator, actor: nets.Actor,
               qf1: nets.Critic, qf2: nets.Critic, qf1_target: nets.Critic, qf2_target: nets.Critic,
               q_optimizer: torch.optim.Optimizer, actor_optimizer: torch.optim.Optimizer,
               a_optimizer: torch.optim.Optimizer, log_alpha: torch.Tensor,
               demos: ReplayBuffer | None = None, reference: nets.Actor | None = None) -> dict[str, float]:
    obs, actions, rewards, next_obs, discounts = rb.sample(args.batch_size, rng)
    alpha = log_alpha.exp().detach()
    # 1. diffusion-actor sample at s' and twin-Q target (exact expectation over the options)
    with torch.no_grad():
        next_logp = nets.masked_log_probs(*actor(next_obs), next_obs)
        next_p = next_logp.exp()
        min_q_next = torch.min(qf1_target(next_obs), qf2_target(next_obs))
        v_next = (next_p * (min_q_next - alpha * next_logp)).sum(1)
        y = rewards + discounts * v_next
    # 2. critic loss
    q1 = qf1(obs).gather(1, actions[:, None])[:, 0]
    q2 = qf2(obs).gather(1, actions[:, None])[:, 0]
    qf_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
    q_optimizer.zero_grad()
    qf_loss.backward()
    q_optimizer.step()
    out = {"qf": qf_loss.item(), "actor": float("nan"), "entropy": float("nan")}
    # 3. delayed actor loss through the whole reverse chain, then 4. α autotune
    if global_step % args.policy_frequency == 0 and global_step >= args.actor_starts:
        mask = nets.option_mask(obs)
        logp = nets.joint_log_probs(*actor(obs), mask, obs["may_wait"])
        p = logp.exp()
        with torch.no_grad():
            min_q = torch.min(qf1(obs), qf2(obs))
        actor_loss = (p * (alpha * logp - min_q)).sum(1).mean()
        if demos is not None:
            d_obs, d_actions, _, _, _ = demos.sample(args.batch_size, rng)
            d_logp = nets.masked_log_probs(*actor(d_obs), d_obs)
            actor_loss = actor_loss + args.bc_weight * F.nll_loss(d_logp, d_actions)
        if reference is not None:
            with torch.no_grad():
                ref_logp = nets.joint_log_probs(*reference(obs), mask, obs["may_wait"])
            actor_loss = actor_loss + args.kl_weight * (ref_logp.exp() * (ref_logp - logp)).sum(1).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
        actor_optimizer.step()
        entropy = -(p * logp).sum(1).detach()
        target = entropy_target(mask, obs["may_wait"], args.step_bins, args.target_entropy_frac)
        alpha_loss = (log_alpha * (entropy - target)).mean()
        a_optimizer.zero_grad()
        alpha_loss.backward()
        a_optimizer.step()
        out.update(actor=actor_loss.item(), entropy=entropy.mean().item())
    # 5. Polyak update of the target critics
    with torch.no_grad():
        for net, target_net in ((qf1, qf1_target), (qf2, qf2_target)):
            for p_, tp in zip(net.parameters(), target_net.parameters()):
                tp.mul_(1 - args.tau).add_(args.tau * p_)
    return out


def new_actor(args: Args) -> nets.Actor:
    """An untrained actor for the run: its networks, inputs and the cluster size it trains on."""
    return nets.Actor(args.variant, args.d_model, diffusion_steps=args.diffusion_steps, step_bins=args.step_bins,
                      hint=args.hint, train_nodes=make_scenario(args, args.points[0]).n_nodes, residual=args.residual)


def load_init(actor: nets.Actor, path: Path) -> None:
    """``actor`` takes the weights of the policy checkpoint at ``path``, which must have been
    trained with the same networks and inputs (the same ``nets.config_of``), and the cluster size
    it was trained on (``train_nodes``: a run on another size fine-tunes it there, with the
    attention's node share it has always had)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        theirs = nets.config_of(nets.actor_from_config(blob["config"]))
    except (KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as e:
        raise ValueError(f"init: {path} is not a policy checkpoint ({type(e).__name__})") from e
    ours = nets.config_of(actor)
    if differ := [f"{k} is {theirs[k]!r} there, {ours[k]!r} here" for k in ours
                  if k != "train_nodes" and theirs[k] != ours[k]]:
        raise ValueError(f"init: {path} has other networks or inputs: " + "; ".join(differ))
    actor.load_state_dict(blob["actor"])
    actor.encoder.train_nodes = theirs["train_nodes"]


def frozen(actor: nets.Actor) -> nets.Actor:
    """A copy of ``actor`` that no update moves (the trust region's reference)."""
    reference = copy.deepcopy(actor)
    reference.requires_grad_(False)
    return reference


def entropy_target(mask: torch.Tensor, may_wait: torch.Tensor, step_bins: int, frac: float) -> torch.Tensor:
    """α's target entropy per state: ``frac`` of the uniform entropy over the options open there
    (every feasible dispatch at each steps bin, and wait where ``may_wait``)."""
    n_open = mask.flatten(1).sum(1) * step_bins + may_wait.reshape(-1).long()
    return frac * torch.log(n_open.float())


def _warm_start(args: Args, rng: np.random.Generator, rb: ReplayBuffer, actor: nets.Actor, qf1: nets.Critic,
                qf2: nets.Critic, qf1_target: nets.Critic, qf2_target: nets.Critic,
                actor_optimizer: torch.optim.Optimizer, q_optimizer: torch.optim.Optimizer,
                log_alpha: torch.Tensor, run_log: RunLog | None = None) -> ReplayBuffer:
    """Behaviour cloning from a teacher: its decisions, mapped to options, label every state; the
    actor is trained by cross-entropy through the chain, the critics by the SAC target on the
    transitions taken. Round 0 follows the teacher, unless the actor starts from a trained policy
    (``init``); each of ``bc_dagger`` rounds more, and round 0 of such a run, lets the clone act
    and the teacher label the states the clone reaches (DAgger), then clones all labels so far
    again. With ``run_log``, each round's clone is saved (``clone-round-N.pt``) with the labels so
    far (``demos.npz``), so a long warm start stopped midway can still be used, and evaluated
    (log.csv's ``clone`` rows; step 0 is the ``init`` policy): the actor leaves the warm start as
    the best of them. Returns the labelled states (the demonstrations SAC's clone loss keeps)."""
    assert args.bc_policy is not None
    teacher = make_teacher(args.bc_policy, objective(args), args.teacher_futures, args.teacher_horizon_s,
                           args.teacher_steps_factors, gpu_moves=not args.residual)
    hint = eat_agent.hinter_of(actor)
    labels = ReplayBuffer(args.buffer_size, {k: v[0] for k, v in rb.obs.items()})
    rounds = 1 + args.bc_dagger
    best: dict[str, torch.Tensor] | None = None

    def keep_if_best(round_: int) -> None:
        nonlocal best
        if run_log is not None and run_log.evaluate(actor, "clone", round_)[1]:
            best = copy.deepcopy(actor.state_dict())

    if args.init:
        keep_if_best(0)
    with progress.bar() as bar, _labelling_pool(args.workers) as pool:
        task = bar.add_task(f"warm start from {args.bc_policy}", total=rounds * (args.bc_episodes + args.bc_updates), info="")
        for round_ in range(rounds):
            draws = [EpisodeDraw.draw(args, rng) for _ in range(args.bc_episodes)]
            clone = actor if round_ > 0 or args.init else None
            bar.update(task, info=f"round {round_ + 1}/{rounds}: labelling {args.bc_episodes} episodes")
            for e, episode in enumerate(_label_episodes(args, draws, teacher, clone, hint, pool)):
                for t in episode:
                    rb.add(t.obs, t.taken, t.reward, t.next_obs, t.discount, t.done)
                    labels.add(t.obs, t.label, t.reward, t.next_obs, t.discount, t.done)
                bar.advance(task)
                bar.update(task, info=f"round {round_ + 1}/{rounds}: episode {e + 1}/{args.bc_episodes} labelled, {len(labels)} labels")
            bar.update(task, info=f"round {round_ + 1}/{rounds}: cloning {len(labels)} labels")
            for _ in range(args.bc_updates):
                _clone_update(args, rng, labels, rb, actor, qf1, qf2, qf1_target, qf2_target, actor_optimizer,
                              q_optimizer, log_alpha)
                bar.advance(task)
            if run_log is not None:
                save_policy(actor, run_log.run_dir / f"clone-round-{round_ + 1}.pt")
                labels.save_states(run_log.run_dir / DEMOS_FILE)
                bar.update(task, info=f"round {round_ + 1}/{rounds}: evaluating the clone")
                keep_if_best(round_ + 1)
    if best is not None:
        actor.load_state_dict(best)
    return labels


def _clone_update(args: Args, rng: np.random.Generator, labels: ReplayBuffer, rb: ReplayBuffer, actor: nets.Actor,
                  qf1: nets.Critic, qf2: nets.Critic, qf1_target: nets.Critic, qf2_target: nets.Critic,
                  actor_optimizer: torch.optim.Optimizer, q_optimizer: torch.optim.Optimizer,
                  log_alpha: torch.Tensor) -> None:
    """One cross-entropy step of the actor on the labels, and one TD step of the critics on the
    transitions taken."""
    obs, actions, _, _, _ = labels.sample(args.batch_size, rng)
    logp = nets.masked_log_probs(*actor(obs), obs)
    loss = F.nll_loss(logp, actions)
    actor_optimizer.zero_grad()
    loss.backward()
    actor_optimizer.step()
    sac_update(dataclasses.replace(args, policy_frequency=10**9), 1, rb, rng, actor, qf1, qf2, qf1_target,
               qf2_target, q_optimizer, actor_optimizer, actor_optimizer, log_alpha)


class Labelled(NamedTuple):
    """One decision of a labelled episode."""

    obs: dict
    taken: int
    """The option taken (the teacher's, or the clone's in a DAgger round)."""
    label: int
    """The teacher's option."""
    reward: float
    next_obs: dict
    discount: float
    done: bool


@contextlib.contextmanager
def _labelling_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor | None]:
    if workers <= 1:
        yield None
        return
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _label_episodes(args: Args, draws: list[EpisodeDraw], teacher: base.Policy, clone: nets.Actor | None,
                    hint: nets.Hinter | None, pool: concurrent.futures.ProcessPoolExecutor | None) -> Iterator[list[Labelled]]:
    """Each drawn episode, labelled, in order: here, or on ``pool``'s processes (each seeds torch
    with its episode's seed and makes its own teacher, hint and copy of the clone)."""
    if pool is None:
        for draw in draws:
            yield _label_episode(args, draw, teacher, clone, hint)
        return
    blob = None if clone is None else {"config": nets.config_of(clone), "actor": clone.state_dict()}
    yield from pool.map(_label_episode_in_worker, itertools.repeat(args), draws, itertools.repeat(blob))


def _label_episode_in_worker(args: Args, draw: EpisodeDraw, clone_blob: dict | None) -> list[Labelled]:
    torch.set_num_threads(1)
    torch.manual_seed(draw.seed)
    clone = None
    if clone_blob is not None:
        clone = nets.actor_from_config(clone_blob["config"])
        clone.load_state_dict(clone_blob["actor"])
    teacher = make_teacher(str(args.bc_policy), objective(args), args.teacher_futures, args.teacher_horizon_s,
                           args.teacher_steps_factors, gpu_moves=not args.residual)
    hint = base.make(args.hint).decide if args.hint else None
    return _label_episode(args, draw, teacher, clone, hint)


def _label_episode(args: Args, draw: EpisodeDraw, teacher: base.Policy, clone: nets.Actor | None,
                   hint: nets.Hinter | None) -> list[Labelled]:
    """One training episode (its first ``bc_max_decisions``): the teacher labels every state; the
    clone acts if given, else the teacher."""
    env = sim_env.SchedulingEnv(draw.scenario, args.step_bins)
    env.reset(seed=draw.seed)
    base.begin_episode(teacher, env.sim, draw.seed)
    done, out = env.sim.done, list[Labelled]()
    cap = args.bc_max_decisions or math.inf
    while not done and len(out) < cap:
        snap = env.sim.snapshot()
        obs = nets.observe(snap, env.scenario.window, hint, args.residual)
        label = option_of(snap, teacher.decide(snap), args.step_bins)
        index, pointer = label, None
        if clone is not None:
            _, _, index, pointer = eat_agent.act(clone, snap, hint=hint)
        reward, done, info = step(env, args, index, pointer, obs["free"])
        next_obs = nets.observe(env.sim.snapshot(), env.scenario.window, hint, args.residual)
        out.append(Labelled(obs, index, label, reward, next_obs, info["discount"], done))
    return out


DEMOS_FILE = "demos.npz"


def load_demos(run_dir: Path) -> ReplayBuffer:
    """The warm start's labelled states of a run, for the clone loss of a resumed run."""
    path = run_dir / DEMOS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: --bc-weight on --resume needs a run that had a warm start "
                                "(--bc-policy)")
    return ReplayBuffer.load_states(path)


def make_teacher(name: str, objective: rollout.Objective, futures: int = 0, horizon_s: float | None = None,
                 steps_factors: tuple[float, ...] = rollout.STEPS_FACTORS, gpu_moves: bool = True) -> base.Policy:
    """A registered policy, or ``rollout:<heuristic>`` (``agents.rollout``, training only),
    which scores its play-outs by ``objective`` over ``futures`` drawn futures (0: the episode's
    own) up to ``horizon_s``, trying the proposed steps × each of ``steps_factors`` too, and
    with ``gpu_moves`` other single GPUs."""
    if name.startswith(rollout.PREFIX):
        return rollout.RolloutTeacher(name.removeprefix(rollout.PREFIX), objective, futures, horizon_s, steps_factors,
                                      gpu_moves)
    return base.make(name)


def teaches_around(bc_policy: str, hint: str) -> bool:
    """Whether a residual clone over ``hint`` can take ``bc_policy``'s labels: that heuristic's,
    or a residual learned policy's over it (``eat-pods``: policy iteration's next step), either
    of them itself or improved by rollouts (``rollout:<it>``)."""
    name = bc_policy.removeprefix(rollout.PREFIX)
    if name == hint:
        return True
    actor = getattr(base.make(name), "actor", None)
    return isinstance(actor, nets.Actor) and actor.residual and actor.hint == hint


def option_of(snap: Any, d: Any, bins: int) -> int:
    """A heuristic's Decision as the nearest option (anchor = the node holding most of its GPUs)."""
    if d is None:
        return 0
    anchor = nets.anchor_of(snap, d.gpus)
    lo, hi = int(snap.job_steps_min[d.job]), int(snap.job_steps_max[d.job])
    b = nets.bin_of_steps(lo, hi, d.steps, bins)
    return nets.encode(d.job, anchor, nets.features.K_VALUES.index(d.k), b, snap.n_nodes, bins)


def save_policy(actor: nets.Actor, path: Path) -> None:
    """The small serving checkpoint: config + actor weights, loadable with weights_only=True."""
    torch.save({"config": nets.config_of(actor), "actor": actor.state_dict()}, path)


def _summary_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir))


# TRY NOT TO MODIFY: the command line (wired as `eat-policy train`)
app = typer.Typer(help="Train the EAT agent or an ablation in the simulator.", add_completion=False)


@app.command()
def main(
    scenario: Annotated[str, typer.Option(help="paper (choose-k, 4 nodes) or edge (8 nodes).")] = "paper",
    variant: Annotated[str, typer.Option(help="eat, d-sac (no attention) or sac (no diffusion).")] = "eat",
    seed: int = 1,
    total_timesteps: Annotated[int, typer.Option(help="Environment steps (decisions).")] = 30_000,
    max_minutes: Annotated[float, typer.Option(help="Wall-clock budget in minutes.")] = 25.0,
    nodes: Annotated[Optional[int], typer.Option(help="Cluster size (default 4 paper, 8 edge).")] = None,
    mode: Annotated[str, typer.Option(help="paper: choose-k, fixed-k or mixed (either, per episode).")] = "choose-k",
    points: Annotated[Optional[str], typer.Option(help="LO,HI: range of λ (paper) or ρ (edge) drawn per episode (default 0.01,0.11 paper, 0.5,1.0 edge).")] = None,
    gpu_keeps_model: Annotated[bool, typer.Option(help=scenarios.GPU_KEEPS_MODEL_HELP)] = True,
    learning_starts: int = 1_000,
    batch_size: int = 64,
    eval_every: int = 2_500,
    eval_seeds: int = 5,
    eval_nodes: Annotated[Optional[str], typer.Option(help="Comma-separated further cluster sizes the periodic evaluation covers (the best policy is chosen on the mean).")] = None,
    hint: Annotated[Optional[str], typer.Option(help="Heuristic whose proposal the policy sees at every decision (e.g. edf-cache-queue).")] = None,
    residual: Annotated[bool, typer.Option(help="Keep the hint's placement: the policy chooses only the steps and whether to wait.")] = False,
    bc_policy: Annotated[Optional[str], typer.Option(help="Heuristic to warm-start from (e.g. edf-cache), or rollout:<heuristic>, its one-step rollout improvement.")] = None,
    teacher_futures: Annotated[int, typer.Option(help="rollout: teacher: futures drawn from the present per decision (0: the episode's own, clairvoyant).")] = 0,
    teacher_horizon: Annotated[Optional[float], typer.Option(help="rollout: teacher: score play-outs on the jobs arriving within this many seconds (default: to the episode's end).")] = None,
    teacher_steps_factors: Annotated[Optional[str], typer.Option(help="rollout: teacher: comma-separated factors on the proposed steps to try too (default 0.75,1.25).")] = None,
    bc_episodes: int = 0,
    bc_updates: int = 0,
    bc_dagger: Annotated[int, typer.Option(help="DAgger rounds after the first clone (the clone acts, the teacher labels).")] = 0,
    bc_max_decisions: Annotated[Optional[int], typer.Option(
        help="Label at most this many decisions of each warm-start episode (default: all).")] = None,
    bc_weight: Annotated[float, typer.Option(help="Keep this weight x the clone loss in SAC's actor loss.")] = 0.0,
    target_entropy_frac: Annotated[float, typer.Option(
        help="SAC's target entropy as this fraction of the uniform entropy over the open options.")] = 0.2,
    actor_starts: Annotated[int, typer.Option(
        help="Global step before which only the critics are updated (the actor and α wait).")] = 0,
    kl_weight: Annotated[float, typer.Option(
        help="Weight of KL(actor as SAC begins || actor) in the actor loss (a trust region around the clone).")] = 0.0,
    quality_weight: Annotated[Optional[float], typer.Option(help="Reward per unit quality Q (paper default 8: 80 job-seconds).")] = None,
    step_bins: Annotated[int, typer.Option(help="Steps bins over each job's range (the checkpoint records it).")] = nets.STEP_BINS,
    threads: int = 1,
    workers: Annotated[int, typer.Option(help="Processes that play and label the warm start's episodes (1: in this process).")] = 1,
    out: Path = Path("runs"),
    resume: Annotated[Optional[Path], typer.Option(help="Run directory to resume.")] = None,
    init: Annotated[Optional[Path], typer.Option(
        help="Policy checkpoint to start the actor from, keeping the cluster size it trained on (SAC fine-tunes it; "
             "with --bc-policy, it acts in every warm-start round).")] = None,
    export: Annotated[Optional[Path], typer.Option(help="Copy the best policy checkpoint here.")] = None,
) -> None:
    """Train with SAC; writes log.csv, curve.png, state.pt (resume) and policy.pt (serving: the best
    policy evaluated), and with --bc-policy the labelled states (demos.npz) and each warm-start
    round's clone (clone-round-N.pt, evaluated too: SAC starts from the best of them)."""
    if scenario not in DEFAULTS:
        raise typer.BadParameter(f"scenario must be paper or edge, got {scenario!r}")
    if variant not in nets.VARIANTS:
        raise typer.BadParameter(f"variant must be one of {', '.join(nets.VARIANTS)}, got {variant!r}")
    if step_bins < 2:
        raise typer.BadParameter(f"step-bins must be at least 2, got {step_bins}")
    if kl_weight < 0:
        raise typer.BadParameter(f"kl-weight must be at least 0, got {kl_weight}")
    if workers < 1:
        raise typer.BadParameter(f"workers must be at least 1, got {workers}")
    if bc_max_decisions is not None and bc_max_decisions < 1:
        raise typer.BadParameter(f"bc-max-decisions must be at least 1, got {bc_max_decisions}")
    if not 0 < target_entropy_frac <= 1:
        raise typer.BadParameter(f"target-entropy-frac must be in (0, 1], got {target_entropy_frac}")
    if mode not in ("choose-k", "fixed-k", "mixed"):
        raise typer.BadParameter(f"mode must be choose-k, fixed-k or mixed, got {mode!r}")
    span = None
    if points is not None:
        try:
            span = tuple(float(x) for x in points.split(","))
        except ValueError:
            span = ()
        if len(span) != 2 or not 0 < span[0] <= span[1]:
            raise typer.BadParameter(f"points must be LO,HI with 0 < LO <= HI, got {points!r}")
    _check_cluster("nodes", nodes, scenario)
    sizes = _node_counts(eval_nodes, scenario)
    if resume is not None and bc_weight > 0 and not (resume / DEMOS_FILE).exists():
        raise typer.BadParameter(f"bc-weight: {resume / DEMOS_FILE} is missing (the run had no warm start), "
                                 "so there is no clone loss to keep")
    if init is not None and resume is not None:
        raise typer.BadParameter("init starts a new run from a trained policy: it takes no --resume")
    if bc_weight > 0 and bc_policy is None and resume is None:
        raise typer.BadParameter("bc-weight keeps a teacher's labels in SAC's actor loss: give --bc-policy "
                                 "(or, to hold SAC near an --init policy, --kl-weight)")
    if init is not None and not init.is_file():
        raise typer.BadParameter(f"init: {init} is not a file")
    if resume is not None and not (resume / "args.json").exists():
        raise typer.BadParameter(f"resume: {resume / 'args.json'} is missing: not a run directory")
    if (teacher_futures or teacher_horizon is not None or teacher_steps_factors is not None) and not (bc_policy or "").startswith(rollout.PREFIX):
        raise typer.BadParameter("teacher-futures, -horizon and -steps-factors shape a rollout: teacher; give --bc-policy rollout:<heuristic>")
    factors = rollout.STEPS_FACTORS if teacher_steps_factors is None else _positive_floats("teacher-steps-factors", teacher_steps_factors)
    if teacher_futures < 0 or (teacher_horizon is not None and teacher_horizon <= 0):
        raise typer.BadParameter(f"teacher-futures must be >= 0 and teacher-horizon > 0, got {teacher_futures} and {teacher_horizon}")
    for option, policy in (("hint", hint), ("bc-policy", bc_policy and bc_policy.removeprefix(rollout.PREFIX))):
        if policy is not None and not base.known(policy):
            raise typer.BadParameter(f"{option}: unknown policy {policy!r}; known: {', '.join(base.names())}")
    if residual and (hint is None or (bc_policy is not None and not teaches_around(bc_policy, hint))):
        raise typer.BadParameter("residual: give --hint <heuristic>, and a teacher (--bc-policy) of that heuristic, or "
                                 "of a residual policy over it, or rollout:<either>, whose labels are then among the options")
    args = Args(scenario=scenario, variant=variant, seed=seed, total_timesteps=total_timesteps,
                max_minutes=max_minutes, nodes=nodes, mode=mode, gpu_keeps_model=gpu_keeps_model, learning_starts=learning_starts, batch_size=batch_size,
                eval_every=eval_every, eval_seeds=eval_seeds, hint=hint, residual=residual, bc_policy=bc_policy, bc_episodes=bc_episodes,
                teacher_futures=teacher_futures, teacher_horizon_s=teacher_horizon, teacher_steps_factors=factors,
                bc_updates=bc_updates, bc_dagger=bc_dagger,
                bc_max_decisions=bc_max_decisions, bc_weight=bc_weight, step_bins=step_bins, threads=threads, workers=workers, out=out, resume=resume, init=init,
                export=export, quality_weight=quality_weight, points=span, eval_nodes=sizes,
                target_entropy_frac=target_entropy_frac, actor_starts=actor_starts, kl_weight=kl_weight)
    if init is not None:
        try:
            load_init(new_actor(args), init)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
    if resume is not None and (differ := resume_mismatches(resume, args)):
        raise typer.BadParameter("resume: give the run's own options, they shape its networks, task, reward "
                                 "or evaluation: " + "; ".join(differ))
    run_dir = train(args)
    typer.echo(f"run directory: {run_dir}")


RESUME_MUST_MATCH = ("scenario", "variant", "hint", "residual", "step_bins", "d_model", "diffusion_steps",
                     "nodes", "mode", "gpu_keeps_model", "points", "quality_weight", "env_reward_weight",
                     "time_scale_s", "gamma", "discount_time_s", "eval_points", "eval_seeds", "eval_nodes")
"""What a resumed run must share with the run: the networks' shapes and inputs, and the options
they choose among (a residual actor has a plain actor's weights, so a mismatch there loads
without an error and trains something else); and the task, reward and evaluation, since the
run's best return, which a resumed evaluation must beat to replace ``policy.pt``, was measured
with them (another quality weight alone moves a paper return from 18.3 to 26.6)."""


def resume_mismatches(run_dir: Path, args: Args) -> list[str]:
    """Each ``RESUME_MUST_MATCH`` option where ``args`` differs from the run's ``args.json``
    (options the run predates read as their defaults)."""
    saved = json.loads((run_dir / "args.json").read_text())
    given, defaults = (json.loads(json.dumps(dataclasses.asdict(a), default=str)) for a in (args, Args()))
    return [f"{key} is {saved.get(key, defaults[key])!r} in the run, {given[key]!r} here"
            for key in RESUME_MUST_MATCH if saved.get(key, defaults[key]) != given[key]]


def _positive_floats(option: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v > 0 for v in values):
        raise typer.BadParameter(f"{option} must be comma-separated numbers > 0, got {text!r}")
    return values


def _node_counts(text: str | None, scenario: str) -> tuple[int, ...]:
    if text is None:
        return ()
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"eval-nodes must be comma-separated node counts, got {text!r}") from None
    for n in sizes:
        _check_cluster("eval-nodes", n, scenario)
    return sizes


def _check_cluster(option: str, nodes: int | None, scenario: str) -> None:
    try:
        make_scenario(Args(scenario=scenario, nodes=nodes), DEFAULTS[scenario]["points"][0])
    except ValueError as e:
        raise typer.BadParameter(f"{option}: {e}") from None


if __name__ == "__main__":
    app()
