"""The learned schedulers: EAT (attention + diffusion actor) and its ablations D-SAC and SAC.

Each is a ``base.Policy`` that featurises the snapshot (``nets.observe``), runs the actor and
takes the most probable feasible option (the chain's noise comes from a generator seeded in
``reset``, so an episode is reproducible). Weights come from the shipped checkpoints in
``eat_policy/checkpoints/<variant>-<scenario>.pt``, chosen by ``Snapshot.scenario``, loaded
lazily with ``torch.load(weights_only=True)``. Thread count is the caller's (the latency bench
and our evaluations use ``torch.set_num_threads(1)``).

Registers ``eat``, ``d-sac`` and ``sac``, plus the chain-ablation evaluations ``eat-shuffled``
(the chain conditioned on another state's tokens) and ``eat-1step`` (one denoising step).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eat_policy import nets
from eat_policy.agents import base
from eat_policy.snapshot import Decision, Snapshot
from eat_policy.sim import env as sim_env

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
ANCHOR_BONUS, GROUP_BONUS = 1e6, 1e3
"""Gang decoding: the anchor node's GPUs first, then its warm group-mates, then pointer order."""


def load_actor(path: Path) -> nets.Actor:
    """A policy checkpoint ({"config": ..., "actor": state_dict}) as an eval-mode Actor."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = blob["config"]
    actor = nets.Actor(cfg["variant"], cfg["d"], cfg["dp"], cfg["diffusion_steps"])
    actor.load_state_dict(blob["actor"])
    return actor.eval()


@functools.lru_cache(maxsize=16)
def _shipped(variant: str, scenario: str) -> nets.Actor:
    path = CHECKPOINTS / f"{variant}-{scenario}.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path.name} in {CHECKPOINTS}; train one with `eat-policy train`")
    return load_actor(path)


def to_decision(snap: Snapshot, option: tuple[int, int, int, int], pointer: np.ndarray, free: np.ndarray) -> Decision:
    """(job, anchor node, k index, steps bin) → Decision; ``pointer`` are the job's node scores."""
    j, anchor, ki, b = option
    k = nets.features.K_VALUES[ki]
    scores = pointer.astype(np.float64).copy()
    group = int(snap.node_group[anchor])
    if group >= 0:
        scores[snap.node_group == group] += GROUP_BONUS
    scores[anchor] += ANCHOR_BONUS
    gpus = sim_env.fill_gpus(snap, j, scores, k, free.astype(np.int64))
    lo, hi = int(snap.job_steps_min[j]), int(snap.job_steps_max[j])
    return Decision(j, gpus, lo + round(b / (nets.STEP_BINS - 1) * (hi - lo)))


def act(
    actor: nets.Actor, snap: Snapshot, generator: torch.Generator | None = None, greedy: bool = True,
    shuffle_state: bool = False,
) -> tuple[Decision | None, dict[str, np.ndarray], int, np.ndarray | None]:
    """One decision: (Decision or None to wait, the observation, the flat option index, the
    chosen job's pointer scores over nodes for the chosen k)."""
    obs = nets.observe(snap)
    o = nets.to_tensors(obs)
    with torch.no_grad():
        u, v, w = actor(o, generator, shuffle_state=shuffle_state)
        logp = nets.joint_log_probs(u, v, w, nets.option_mask(o))[0]
        if greedy:
            index = int(logp.argmax())
        else:
            index = int(torch.multinomial(logp.exp(), 1, generator=generator))
    option = nets.decode(index, snap.n_jobs, snap.n_nodes)
    if option is None:
        return None, obs, index, None
    pointer = v[0, option[0], :, option[2]].numpy()
    return to_decision(snap, option, pointer, obs["free"][option[0]]), obs, index, pointer


class LearnedPolicy:
    def __init__(self, variant: str = "eat", actor: nets.Actor | None = None, shuffle_state: bool = False,
                 diffusion_steps: int | None = None, name: str | None = None) -> None:
        self.variant, self.actor, self.shuffle_state = variant, actor, shuffle_state
        self.diffusion_steps = diffusion_steps
        self.name = name or variant
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0xEA7]).generate_state(1)[0]))

    def _actor(self, scenario: str) -> nets.Actor:
        if self.actor is not None:
            return self.actor
        actor = _shipped(self.variant, scenario)
        if self.diffusion_steps is not None:
            actor = _truncated(self.variant, scenario, self.diffusion_steps)
        return actor

    def decide(self, snap: Snapshot) -> Decision | None:
        decision, _, _, _ = act(self._actor(snap.scenario), snap, self.generator, shuffle_state=self.shuffle_state)
        return decision


@functools.lru_cache(maxsize=16)
def _truncated(variant: str, scenario: str, steps: int) -> nets.Actor:
    """The shipped actor run with a shorter chain (its first ``steps`` noise levels)."""
    full = _shipped(variant, scenario)
    cfg: dict[str, Any] = nets.config_of(full)
    actor = nets.Actor(cfg["variant"], cfg["d"], cfg["dp"], cfg["diffusion_steps"])
    actor.load_state_dict(full.state_dict())
    actor.T = steps
    return actor.eval()


base.register("eat", lambda: LearnedPolicy("eat"))
base.register("d-sac", lambda: LearnedPolicy("d-sac"))
base.register("sac", lambda: LearnedPolicy("sac"))
base.register("eat-shuffled", lambda: LearnedPolicy("eat", shuffle_state=True, name="eat-shuffled"))
base.register("eat-1step", lambda: LearnedPolicy("eat", diffusion_steps=1, name="eat-1step"))
