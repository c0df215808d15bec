"""The learned schedulers: EAT (attention + diffusion actor) and its ablations D-SAC and SAC.

Each is a ``base.Policy`` that featurises the snapshot (``nets.observe``), runs the actor and
takes the most probable feasible option (the chain's noise comes from a generator seeded in
``reset``, so an episode is reproducible). Weights come from the shipped checkpoints in
``eat_policy/checkpoints/<variant>-<key>.pt``, the key being the snapshot's scenario or
``paper-fixed-k`` (``checkpoint_key``), loaded lazily with ``torch.load(weights_only=True)``;
``checkpoint:PATH`` names any other policy file. Thread count is the caller's (the latency bench
and our evaluations use ``torch.set_num_threads(1)``).

Registers ``eat``, ``d-sac`` and ``sac``, plus the chain-ablation evaluations ``eat-shuffled``
(the chain of each job reads the next job's token, the chain of each (job, node) pair the next
node's: the state is there, but no longer where its options are) and ``eat-1step`` (one
denoising step), and
``eat-reuse8``/``eat-reuse32`` (several dispatches of one instant from one actor pass, as the
policy service does); ``eat-pods`` is the edge policy for clusters whose GPUs do not keep models
between jobs (the operator's pods: ``--no-gpu-keeps-model``), ``eat-edge-pods.pt``, a residual
actor over ``edf-cache-queue-fit``. A checkpoint whose config names a ``hint`` heuristic
(``eat-edge``) is shown that heuristic's proposal with every pass (``nets.hint_features``).
"""

from __future__ import annotations

import dataclasses
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


def load_actor(path: Path, device: str = "cpu") -> nets.Actor:
    """A policy checkpoint ({"config": ..., "actor": state_dict}) as an eval-mode Actor."""
    blob = torch.load(path, map_location=device, weights_only=True)
    actor = nets.actor_from_config(blob["config"])
    actor.load_state_dict(blob["actor"])
    return actor.to(device).eval()


def checkpoint_key(snap: Snapshot) -> str:
    """Which shipped checkpoint serves a snapshot: its scenario, ``paper-fixed-k`` when the
    prototype's jobs bring their own k (a separately trained policy, where one is shipped)."""
    if snap.scenario == "paper" and snap.n_jobs and (snap.job_k > 0).any():
        return "paper-fixed-k"
    return snap.scenario


@functools.lru_cache(maxsize=16)
def _loaded(path: str) -> nets.Actor:
    return load_actor(Path(path))


def _shipped(variant: str, key: str) -> nets.Actor:
    path = CHECKPOINTS / f"{variant}-{key}.pt"
    if not path.exists() and key.endswith("-fixed-k"):
        path = CHECKPOINTS / f"{variant}-{key.removesuffix('-fixed-k')}.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path.name} in {CHECKPOINTS}; train one with `eat-policy train`")
    return _loaded(str(path))


def to_decision(snap: Snapshot, option: tuple[int, int, int, int], pointer: np.ndarray, free: np.ndarray,
                bins: int) -> Decision:
    """(job, anchor node, k index, steps bin of ``bins``) → Decision; ``pointer`` are the job's
    node scores."""
    j, anchor, ki, b = option
    k = nets.features.K_VALUES[ki]
    scores = pointer.astype(np.float64).copy()
    group = int(snap.node_group[anchor])
    if group >= 0:
        scores[snap.node_group == group] += GROUP_BONUS
    scores[anchor] += ANCHOR_BONUS
    gpus = sim_env.fill_gpus(snap, j, scores, k, free.astype(np.int64))
    lo, hi = int(snap.job_steps_min[j]), int(snap.job_steps_max[j])
    return Decision(j, gpus, nets.steps_of_bin(lo, hi, b, bins))


def hinter_of(actor: nets.Actor) -> nets.Hinter | None:
    """What a hinted actor is shown: a fresh instance of its heuristic's ``decide``."""
    return base.make(actor.hint).decide if actor.hint else None


def act(
    actor: nets.Actor, snap: Snapshot, generator: torch.Generator | None = None, greedy: bool = True,
    shuffle_state: bool = False, hint: nets.Hinter | None = None,
) -> tuple[Decision | None, dict[str, np.ndarray], int, np.ndarray | None]:
    """One decision: (Decision or None to wait, the observation, the flat option index, the
    chosen job's pointer scores over nodes for the chosen k). A hinted actor needs ``hint``
    (``hinter_of``)."""
    obs = nets.observe(snap, hint=hint, residual=actor.residual)
    o = nets.to_tensors(obs)
    with torch.no_grad():
        u, v, w = actor(o, generator, shuffle_state=shuffle_state)
        logp = nets.masked_log_probs(u, v, w, o)[0]
        if greedy:
            index = nets.greedy_index(logp)
        else:
            index = int(torch.multinomial(logp.exp(), 1, generator=generator))
    option = nets.decode(index, snap.n_jobs, snap.n_nodes, actor.step_bins)
    if option is None:
        return None, obs, index, None
    pointer = v[0, option[0], :, option[2]].numpy()
    return to_decision(snap, option, pointer, obs["free"][option[0]], actor.step_bins), obs, index, pointer


@dataclasses.dataclass
class Instant:
    """The actor's output at one instant, reused for the next dispatches at the same time.

    After a dispatch only feasibility changed (its GPUs are busy, its job left), so the
    remaining options are re-masked from the new snapshot and ranked by the same logits.
    """

    now: float
    node_names: tuple[str, ...]
    row_of: dict[int, int]
    """Job id → row of the logits below."""
    u: np.ndarray  # (J, K, S) float32
    v: np.ndarray  # (J, N, K)
    w: np.ndarray  # (1,)
    node_attention: np.ndarray | None
    """(J, N) job→node cross-attention, head-averaged; None for D-SAC."""
    job_attention: np.ndarray | None
    """(J, J) job→job weights of the last self-attention layer."""
    residual_hint: nets.Hinter | None = None
    """A residual actor's hint: each reused decision's options are around its new proposal."""
    uses: int = 1

    def covers(self, snap: Snapshot) -> bool:
        return (snap.now == self.now and snap.node_names == self.node_names
                and all(int(i) in self.row_of for i in snap.job_id))

    def decide(self, snap: Snapshot, obs: dict[str, np.ndarray] | None = None) -> Decision | None:
        """The best option open in ``snap``: those of ``obs`` (``nets.observe``, unpadded) for the
        snapshot the pass encoded, else re-masked from the snapshot."""
        if obs is not None:
            return self._best(snap, obs["job_mask"], obs["k_mask"], obs["free"], bool(obs["may_wait"][0]))
        if self.residual_hint is None:
            job_mask, k_mask, free = nets.features.masks(snap)
            return self._best(snap, job_mask, k_mask, free, nets.features.may_wait(snap, bool(job_mask.any())))
        proposal = self.residual_hint(snap)
        if proposal is not None:
            # Only the proposal's job can be open: its row of the masks decides, unless the
            # proposal is not among its feasible options (then every option stays open).
            j = proposal.job
            job_open, k_open, free = nets.features.masks(snap, np.array([j]))
            nodes = nets.proposal_nodes(snap, proposal, bool(job_open[0]), k_open[0], free[0])
            if nodes is not None:
                mask = np.zeros((1, snap.n_nodes, nets.N_K), dtype=bool)
                mask[0, nodes, nets.features.K_VALUES.index(proposal.k)] = True
                return self._best_of(snap, np.array([j]), mask, nets.features.may_wait(snap, True), nodes[None])
        job_mask, k_mask, free = nets.features.masks(snap)
        may_wait = nets.features.may_wait(snap, bool(job_mask.any()))
        return self._best(snap, *nets.narrow_to_proposal(snap, job_mask, k_mask, free, may_wait, proposal))

    def _best(self, snap: Snapshot, job_mask: np.ndarray, k_mask: np.ndarray, free: np.ndarray,
              may_wait: bool) -> Decision | None:
        mask = job_mask[:, None, None] & k_mask[:, None, :] & (free > 0)[:, :, None]
        # Only jobs with an open option can be chosen (a residual actor's: the proposal's job);
        # ranking those rows alone picks the same option, in order, at a fraction of the cost.
        open_jobs = np.flatnonzero(mask.any(axis=(1, 2)))
        if len(open_jobs) == 0:
            open_jobs = np.arange(snap.n_jobs)
        return self._best_of(snap, open_jobs, mask[open_jobs], may_wait, free[open_jobs] > 0)

    def _best_of(self, snap: Snapshot, jobs: np.ndarray, mask: np.ndarray, may_wait: bool,
                 usable: np.ndarray) -> Decision | None:
        """The greedy option among the rows ``jobs`` of ``snap`` with their options ``mask``; the
        chosen job's gang is filled from its row of ``usable`` (len(jobs), N) nodes."""
        rows = np.array([self.row_of[int(i)] for i in snap.job_id[jobs]])
        bins = self.u.shape[-1]
        index = nets.greedy_option(self.u[rows], self.v[rows], self.w, mask, may_wait)
        option = nets.decode(index, len(jobs), snap.n_nodes, bins)
        if option is None:
            return None
        j = int(jobs[option[0]])
        pointer = self.v[rows[option[0]], :, option[2]]
        return to_decision(snap, (j, *option[1:]), pointer, usable[option[0]], bins)


class LearnedPolicy:
    """Greedy decisions of an actor. ``reuse``: decisions taken from one actor pass at the same
    instant before it runs again (1: a fresh pass per decision, as in training). A hinted actor's
    reused pass saw the heuristic's proposal for the first of those dispatches only; a residual
    actor's reused pass is re-masked around each new proposal."""

    def __init__(self, variant: str = "eat", actor: nets.Actor | None = None, shuffle_state: bool = False,
                 diffusion_steps: int | None = None, name: str | None = None, reuse: int = 1) -> None:
        self.variant, self.actor, self.shuffle_state = variant, actor, shuffle_state
        self.diffusion_steps, self.reuse = diffusion_steps, reuse
        self.name = name or variant
        self.device = next(actor.parameters()).device if actor is not None else torch.device("cpu")
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.generator = torch.Generator(self.device).manual_seed(
            int(np.random.SeedSequence([seed, 0xEA7]).generate_state(1)[0]))
        self.instant: Instant | None = None
        self.hinters: dict[str, nets.Hinter] = {}

    def _actor(self, snap: Snapshot) -> nets.Actor:
        if self.actor is not None:
            return self.actor
        if self.diffusion_steps is not None:
            return _truncated(self.variant, checkpoint_key(snap), self.diffusion_steps)
        return _shipped(self.variant, checkpoint_key(snap))

    def decide(self, snap: Snapshot) -> Decision | None:
        instant = self.instant
        if instant is not None and instant.uses < self.reuse and instant.covers(snap):
            instant.uses += 1
            return instant.decide(snap)
        self.instant, obs = self._encode(snap)
        return self.instant.decide(snap, obs)

    def attention(self, job_id: int) -> tuple[np.ndarray, dict[int, float]] | None:
        """For a job of the latest actor pass: its attention over nodes (N,) and over the other
        queued jobs (job id → weight); None if the actor has no attention or never saw the job."""
        instant = self.instant
        if instant is None or instant.node_attention is None or job_id not in instant.row_of:
            return None
        row = instant.row_of[job_id]
        assert instant.job_attention is not None
        others = {i: float(instant.job_attention[row, r]) for i, r in instant.row_of.items() if i != job_id}
        return instant.node_attention[row], others

    def decide_all(self, snaps: list[Snapshot]) -> list[Decision | None]:
        """``decide`` for snapshots of one cluster in several simulators (a rollout teacher's
        play-outs), from one batched actor pass. Each state's chain draws its own noise, so a
        decision may differ from ``decide``'s where that noise tips it; none is reused."""
        if self.reuse != 1 or len(snaps) < 2:
            return [self.decide(s) for s in snaps]
        actor = self._actor(snaps[0])
        hint = self._hint(actor)
        observations = [nets.observe(s, hint=hint, residual=actor.residual) for s in snaps]
        o = {k: t.to(self.device) for k, t in nets.stack(observations).items()}
        with torch.inference_mode():
            u, v, w = (x.cpu().numpy() for x in actor(o, self.generator, shuffle_state=self.shuffle_state))
        return [self._instant(snap, actor, hint, u[i, :snap.n_jobs], v[i, :snap.n_jobs], w[i : i + 1]).decide(snap, obs)
                for i, (snap, obs) in enumerate(zip(snaps, observations))]

    def _hint(self, actor: nets.Actor) -> nets.Hinter | None:
        if actor.hint and actor.hint not in self.hinters:
            self.hinters[actor.hint] = hinter_of(actor)
        return self.hinters.get(actor.hint) if actor.hint else None

    def _encode(self, snap: Snapshot) -> tuple[Instant, dict[str, np.ndarray]]:
        actor = self._actor(snap)
        hint = self._hint(actor)
        obs = nets.observe(snap, hint=hint, residual=actor.residual)
        o = {k: t.to(self.device) for k, t in nets.to_tensors(obs).items()}
        with torch.inference_mode():
            u, v, w = actor(o, self.generator, shuffle_state=self.shuffle_state)
        weights = actor.encoder.attention_weights()
        node_att, job_att = (None, None) if weights is None else (weights[0][0].cpu().numpy(), weights[1][0].cpu().numpy())
        return self._instant(snap, actor, hint, u[0].cpu().numpy(), v[0].cpu().numpy(), w.cpu().numpy(),
                             node_att, job_att), obs

    @staticmethod
    def _instant(snap: Snapshot, actor: nets.Actor, hint: nets.Hinter | None, u: np.ndarray, v: np.ndarray,
                 w: np.ndarray, node_att: np.ndarray | None = None, job_att: np.ndarray | None = None) -> Instant:
        return Instant(snap.now, snap.node_names, {int(i): r for r, i in enumerate(snap.job_id)}, u, v, w,
                       node_att, job_att, hint if actor.residual else None)


@functools.lru_cache(maxsize=16)
def _truncated(variant: str, key: str, steps: int) -> nets.Actor:
    """The shipped actor run with a shorter chain (its first ``steps`` noise levels)."""
    full = _shipped(variant, key)
    actor = nets.actor_from_config(nets.config_of(full))
    actor.load_state_dict(full.state_dict())
    actor.T = steps
    return actor.eval()


base.register("eat", lambda: LearnedPolicy("eat"))
base.register("d-sac", lambda: LearnedPolicy("d-sac"))
base.register("sac", lambda: LearnedPolicy("sac"))
base.register("eat-shuffled", lambda: LearnedPolicy("eat", shuffle_state=True, name="eat-shuffled"))
base.register("eat-1step", lambda: LearnedPolicy("eat", diffusion_steps=1, name="eat-1step"))
base.register("eat-pods", lambda: LearnedPolicy("eat", actor=_shipped("eat", "edge-pods"), name="eat-pods"))
def from_checkpoint(path: str) -> LearnedPolicy:
    """``checkpoint:PATH``: any trained policy file, e.g. a run's ``policy.pt``, by its path
    (loaded once: the CLI makes each policy to check it, then the harness makes it again)."""
    actor = _loaded(path)
    return LearnedPolicy(actor.variant, actor=actor, name=f"checkpoint:{path}")


base.register_family("checkpoint", from_checkpoint, "PATH")
for _reuse in (8, 32):
    base.register(f"eat-reuse{_reuse}", lambda r=_reuse: LearnedPolicy("eat", reuse=r, name=f"eat-reuse{r}"))
