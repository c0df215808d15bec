"""Networks of the EAT agent: attention state encoder, diffusion actor, twin-critic heads.

They live here, not in ``train.py``, only because the policy service imports them too (the
diffusers exception for models). Everything consumes ``features.featurize(snapshot)`` plus the
few extra per-node inputs of ``observe`` (computed from the same ``Snapshot``), so training and
serving see identical tensors, for any number of nodes N and queued jobs J.

The action is factored into a small discrete option set (paper-notes.md: the prototype only
chose "dispatch-or-wait, steps, queue slot"; ours also chooses k and the nodes):

    wait  |  (job j, anchor node n, patch count k, steps bin b)

with logits  L[j, n, k, b] = u[j, k, b] + v[j, n, k]  (u from job tokens, v from job×node pair
tokens = pointer scores over node tokens) and a wait logit from the global token. The gang is
the anchor node's idle GPUs first, then the anchor's warm group-mates, then the other nodes by
pointer score (``node_scores``), repaired by ``sim.env.fill_gpus``. Infeasible options (job not
dispatchable, k not allowed or larger than the idle GPUs, anchor without a usable idle GPU) are
masked out before the softmax, so they get probability exactly 0.

A hinted network (``hint="edf-cache-queue"``) also takes that heuristic's proposal for the
state (``hint_features``) into its job, global and pair tokens: a residual policy, which can
start from the heuristic and learn where to differ. A ``residual`` actor goes further: its only
options are the proposal's job, k and gang nodes at each steps bin, or wait (``only_the_proposal``),
so it keeps the heuristic's placement and learns how many steps to spend and when to hold back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eat_policy import features
from eat_policy.sim import env as sim_env
from eat_policy.snapshot import Decision, Snapshot

N_K = len(features.K_VALUES)
STEP_BINS = sim_env.STEP_BINS
"""Default steps bins of the actor (a checkpoint records its own; ``steps_of_bin``)."""
steps_of_bin, bin_of_steps = sim_env.steps_of_bin, sim_env.bin_of_steps
EXTRA_NODE_DIM = N_K + 1
"""Per node: for each k, "this node's live warm group has exactly k members, all idle"; and
"this node belongs to a live group". The service computes them from ``Snapshot.node_group``."""
NODE_IN = features.NODE_DIM + EXTRA_NODE_DIM
HINT_JOB_DIM, HINT_PAIR_DIM = 1 + N_K + 1, 2
"""Hint inputs (``hint_features``): per job "proposed", the proposed k (one-hot) and steps (share
of the job's range); per job×node "anchor of the proposed gang" and the gang's GPU share there."""
VARIANTS = ("eat", "d-sac", "sac")
"""eat: attention + diffusion; d-sac: diffusion without attention; sac: attention, no diffusion."""


# --- observation ----------------------------------------------------------------------------


def warm_group_features(snap: Snapshot) -> np.ndarray:
    """(N, EXTRA_NODE_DIM) extra node inputs: which nodes anchor a ready warm gang of each k."""
    group = snap.node_group
    idle = (snap.gpu_free_at <= snap.now) & snap.node_up[snap.gpu_node]
    node_idle = np.bincount(snap.gpu_node, weights=idle, minlength=snap.n_nodes) >= snap.node_gpus
    out = np.zeros((snap.n_nodes, EXTRA_NODE_DIM), dtype=np.float32)
    for g in set(group[group >= 0].tolist()):
        members = group == g
        size = int(members.sum())
        out[members, N_K] = 1.0
        if size in features.K_VALUES and node_idle[members].all():
            out[members, features.K_VALUES.index(size)] = 1.0
    return out


Hinter = Callable[[Snapshot], "Decision | None"]
"""A heuristic's ``decide``: what a hinted actor is shown as a proposal (``hint_features``)."""


def gpus_per_node(snap: Snapshot, gpus: tuple[int, ...]) -> np.ndarray:
    return np.bincount(snap.gpu_node[list(gpus)], minlength=snap.n_nodes)


def anchor_of(snap: Snapshot, gpus: tuple[int, ...]) -> int:
    """The anchor option of a gang: the node holding most of its GPUs (the lowest on a tie)."""
    return int(gpus_per_node(snap, gpus).argmax())


def hint_features(snap: Snapshot, proposal: Decision | None) -> dict[str, np.ndarray]:
    """A heuristic's proposal as inputs: ``hint_jobs`` (J, HINT_JOB_DIM), ``hint_pairs``
    (J, N, HINT_PAIR_DIM) and ``hint_wait`` (1,), 1 when the heuristic would wait."""
    jobs = np.zeros((snap.n_jobs, HINT_JOB_DIM), np.float32)
    pairs = np.zeros((snap.n_jobs, snap.n_nodes, HINT_PAIR_DIM), np.float32)
    if proposal is None:
        return {"hint_jobs": jobs, "hint_pairs": pairs, "hint_wait": np.ones(1, np.float32)}
    j = proposal.job
    nodes = gpus_per_node(snap, proposal.gpus)
    anchor = int(nodes.argmax())  # anchor_of, from the counts already here
    lo, hi = int(snap.job_steps_min[j]), int(snap.job_steps_max[j])
    jobs[j, 0] = 1.0
    jobs[j, 1 + features.K_VALUES.index(proposal.k)] = 1.0
    jobs[j, -1] = 0.0 if hi == lo else (proposal.steps - lo) / (hi - lo)
    pairs[j, anchor, 0] = 1.0
    pairs[j, :, 1] = nodes / proposal.k
    return {"hint_jobs": jobs, "hint_pairs": pairs, "hint_wait": np.zeros(1, np.float32)}


def observe(snap: Snapshot, window: int | None = None, hint: Hinter | None = None,
            residual: bool = False) -> dict[str, np.ndarray]:
    """Featurise a snapshot into the arrays the networks take (job rows padded to ``window``);
    with ``hint``, also that heuristic's proposal for the snapshot (``hint_features``), and with
    ``residual`` only the proposal stays feasible (``only_the_proposal``)."""
    obs = features.featurize(snap)
    proposal = hint(snap) if hint is not None else None
    if residual:
        if hint is None:
            raise ValueError("a residual observation needs a hint")
        obs = only_the_proposal(snap, obs, proposal)
    w = obs.jobs.shape[0] if window is None else window

    def rows(a: np.ndarray) -> np.ndarray:
        return _rows(a, w)

    out = {
        "nodes": np.concatenate([obs.nodes, warm_group_features(snap)], axis=1),
        "jobs": rows(obs.jobs),
        "pairs": rows(obs.pairs),
        "global": obs.global_,
        "job_mask": rows(obs.job_mask),
        "k_mask": rows(obs.k_mask),
        "free": rows(obs.free > 0),
        "may_wait": np.array([obs.may_wait]),
    }
    if hint is not None:
        h = hint_features(snap, proposal)
        out.update(hint_jobs=rows(h["hint_jobs"]), hint_pairs=rows(h["hint_pairs"]), hint_wait=h["hint_wait"])
    return out


def only_the_proposal(snap: Snapshot, obs: features.Observation, proposal: Decision | None) -> features.Observation:
    """A residual actor's options: the proposal's job and k, anchored on the nodes of its gang
    (at every steps bin), or wait; only wait where the heuristic waits. The policy so keeps the
    heuristic's placement and chooses how many steps to spend and when to hold back. Where the
    proposal is not among the feasible options (it always is for the cache-aware heuristics),
    every feasible option stays open."""
    job_mask, k_mask, free, may_wait = narrow_to_proposal(snap, obs.job_mask, obs.k_mask, obs.free, obs.may_wait, proposal)
    return dataclasses.replace(obs, job_mask=job_mask, k_mask=k_mask, free=free, may_wait=may_wait)


def narrow_to_proposal(
    snap: Snapshot, job_mask: np.ndarray, k_mask: np.ndarray, free: np.ndarray, may_wait: bool, proposal: Decision | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """``only_the_proposal`` on the masks alone (``features.masks``, ``features.may_wait``), for
    the decisions a residual actor takes from a pass it reuses, which need no features."""
    if proposal is None:
        return np.zeros_like(job_mask), np.zeros_like(k_mask), np.zeros_like(free), True
    j, ki = proposal.job, features.K_VALUES.index(proposal.k)
    nodes = proposal_nodes(snap, proposal, bool(job_mask[j]), k_mask[j], free[j])
    if nodes is None:
        return job_mask, k_mask, free, may_wait
    only_job, only_k, only_free = np.zeros_like(job_mask), np.zeros_like(k_mask), np.zeros_like(free)
    only_job[j], only_k[j, ki], only_free[j, nodes] = True, True, free[j, nodes]
    return only_job, only_k, only_free, may_wait


def proposal_nodes(snap: Snapshot, proposal: Decision, job_open: bool, k_open: np.ndarray,
                   free: np.ndarray) -> np.ndarray | None:
    """The nodes of the proposal's gang (N,) bool, if the proposal is among its job's feasible
    options (the job's row of ``features.masks``: dispatchable, its k allowed, usable idle GPUs on
    each of those nodes); else None."""
    nodes = gpus_per_node(snap, proposal.gpus) > 0
    if job_open and k_open[features.K_VALUES.index(proposal.k)] and (free > 0)[nodes].all():
        return nodes
    return None


def to_tensors(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """One observation as a batch of one."""
    return {k: torch.from_numpy(np.asarray(v))[None] for k, v in obs.items()}


JOB_ROWS = ("jobs", "pairs", "job_mask", "k_mask", "free", "hint_jobs", "hint_pairs")
"""The arrays of an observation with one row per queued job (``observe``)."""


def stack(observations: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Observations of one cluster as one batch, job rows zero-padded to the longest queue (the
    encoder masks all-zero job rows, as it does ``observe``'s window padding)."""
    rows = max(len(obs["jobs"]) for obs in observations)
    return {k: torch.from_numpy(np.stack([_rows(obs[k], rows) if k in JOB_ROWS else obs[k] for obs in observations]))
            for k in observations[0]}


def _rows(a: np.ndarray, n: int) -> np.ndarray:
    """``a``'s first ``n`` rows, zero rows added where it has fewer."""
    if len(a) >= n:
        return a[:n]
    return np.concatenate([a, np.zeros((n - len(a),) + a.shape[1:], a.dtype)])


def option_mask(o: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, J, N, K) bool: job dispatchable, k allowed, anchor node has a usable idle GPU."""
    jm = o["job_mask"].bool()[:, :, None, None]
    km = o["k_mask"].bool()[:, :, None, :]
    fm = o["free"].bool()[:, :, :, None]
    return jm & km & fm


# --- encoder ----------------------------------------------------------------------------------


def mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, o))


class Block(nn.Module):
    """Pre-norm multi-head attention block; ``bias`` is added to the attention logits.
    ``last_attention`` keeps the latest weights (B, heads, Lq, Lk), detached, for explanations."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.last_attention: torch.Tensor | None = None
        self.nq, self.nkv = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.kv, self.o = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.nf, self.ff = nn.LayerNorm(d), mlp(d, 2 * d, d)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, key_pad: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, lq, d = x.shape
        lk, h = ctx.shape[1], self.heads
        q = self.q(self.nq(x)).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(self.nkv(ctx)).view(b, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        att = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        if bias is not None:
            att = att + bias
        att = att.masked_fill(key_pad[:, None, None, :], -1e9).softmax(-1)
        self.last_attention = att.detach()
        y = (att @ v).transpose(1, 2).reshape(b, lq, d)
        x = x + self.o(y)
        return x + self.ff(self.nf(x))


@dataclasses.dataclass
class Encoded:
    glob: torch.Tensor  # (B, d)
    jobs: torch.Tensor  # (B, J, d)
    pairs: torch.Tensor  # (B, J, N, dp)


class Encoder(nn.Module):
    """Tokens for nodes, jobs and the global state; self-attention over all of them, then
    cross-attention from each job to the nodes biased by the job×node pair features (cache
    state, load cost, fit). ``attention=False`` (D-SAC) replaces both by per-token MLPs with
    mean-pooled context (DeepSets), so the same heads work on any N and J. ``hint=True`` adds a
    heuristic's proposal (``hint_features``) to the job, global and pair tokens and to the
    cross-attention bias: the policy learns when to follow it and when to do better.

    ``train_nodes``, the cluster size the network was trained on, keeps the node tokens' share of
    the self-attention what it was there: each node key's logit gets log(train_nodes / N), so N
    nodes weigh as much in total as train_nodes nodes of the same kind. Without it a 32-node
    cluster quadruples the nodes' share and drowns the job and global tokens (measured on the
    8-node edge checkpoint at 32 nodes: it waited where its hint dispatched at 15% of decisions,
    and met 87% of deadlines against 96% with the correction). At N = train_nodes it is zero.
    """

    def __init__(self, d: int = 64, dp: int = 32, heads: int = 4, layers: int = 2, attention: bool = True,
                 hint: bool = False, train_nodes: int | None = None) -> None:
        super().__init__()
        self.attention, self.hint, self.train_nodes = attention, hint, train_nodes
        if hint:
            self.hint_job, self.hint_glob = nn.Linear(HINT_JOB_DIM, d), nn.Linear(1, d)
            self.hint_pair, self.hint_bias = nn.Linear(HINT_PAIR_DIM, dp), nn.Linear(HINT_PAIR_DIM, heads)
        self.node_in = mlp(NODE_IN, d, d)
        self.job_in = mlp(features.JOB_DIM, d, d)
        self.glob_in = mlp(features.GLOBAL_DIM, d, d)
        if attention:
            self.self_blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
            self.cross = Block(d, heads)
            self.pair_bias = nn.Linear(features.PAIR_DIM, heads)
        else:
            self.mix = nn.ModuleList(mlp(3 * d, d, d) for _ in range(layers))
        self.pj, self.pn = nn.Linear(d, dp), nn.Linear(d, dp)
        self.pf = nn.Linear(features.PAIR_DIM, dp)
        self.pout = nn.Sequential(nn.SiLU(), nn.Linear(dp, dp), nn.SiLU())

    def forward(self, o: dict[str, torch.Tensor]) -> Encoded:
        nodes, jobs, pairs = o["nodes"].float(), o["jobs"].float(), o["pairs"].float()
        b, j, n = jobs.shape[0], jobs.shape[1], nodes.shape[1]
        hn, hj, hg = self.node_in(nodes), self.job_in(jobs), self.glob_in(o["global"].float())[:, None]
        real_job = jobs.abs().sum(-1) > 0  # padded rows are all zero
        pair_in = self.pf(pairs)
        if self.hint:
            hint_pairs = o["hint_pairs"].float()
            hj = hj + self.hint_job(o["hint_jobs"].float())
            hg = hg + self.hint_glob(o["hint_wait"].float())[:, None]
            pair_in = pair_in + self.hint_pair(hint_pairs)
        if self.attention:
            x = torch.cat([hg, hj, hn], 1)
            pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool), ~real_job, torch.zeros(b, n, dtype=torch.bool)], 1)
            node_share = self._node_share(x.shape[1], n, x.device)
            for blk in self.self_blocks:
                x = blk(x, x, pad, node_share)
            hg, hj, hn = x[:, :1], x[:, 1 : 1 + j], x[:, 1 + j :]
            bias = self.pair_bias(pairs)
            if self.hint:
                bias = bias + self.hint_bias(hint_pairs)
            bias = bias.permute(0, 3, 1, 2)  # (B, heads, J, N)
            hj = self.cross(hj, hn, torch.zeros(b, n, dtype=torch.bool), bias)
        else:
            w = real_job.float()[..., None]
            for f in self.mix:
                ctx_j = (hj * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)
                ctx = torch.cat([hg, ctx_j, hn.mean(1, keepdim=True)], -1)
                hg = hg + f(ctx)
                hj = hj + f(torch.cat([hj, ctx_j.expand(-1, j, -1), hg.expand(-1, j, -1)], -1))
                hn = hn + f(torch.cat([hn, hn.mean(1, keepdim=True).expand(-1, n, -1), hg.expand(-1, n, -1)], -1))
        hp = self.pout(self.pj(hj)[:, :, None] + self.pn(hn)[:, None] + pair_in)
        return Encoded(hg[:, 0], hj, hp)

    def _node_share(self, length: int, n: int, device: torch.device) -> torch.Tensor | None:
        """(1, 1, 1, length) self-attention logit bias: log(train_nodes / n) on the n node keys."""
        if not self.train_nodes or self.train_nodes == n:
            return None
        bias = torch.zeros(1, 1, 1, length, device=device)
        bias[..., length - n :] = math.log(self.train_nodes / n)
        return bias

    def attention_weights(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Of the latest forward, head-averaged: (job→node cross-attention (B, J, N), job→job
        weights of the last self-attention layer (B, J, J)); None without attention (D-SAC)."""
        if not self.attention:
            return None
        cross = self.cross.last_attention
        last = self.self_blocks[-1].last_attention
        assert cross is not None and last is not None, "no forward pass yet"
        j = cross.shape[2]
        return cross.mean(1), last.mean(1)[:, 1 : 1 + j, 1 : 1 + j]


# --- actor: conditional diffusion over the option logits ---------------------------------------


def vp_schedule(steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """Variance-preserving β schedule (as in D2SAC / Diffusion-QL): β_i for i = 1..T."""
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    alpha = torch.exp(-beta_min / steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / steps**2)
    return (1 - alpha).float()


def time_embedding(i: int, dim: int = 16) -> torch.Tensor:
    freqs = torch.exp(torch.arange(dim // 2) * (-math.log(100.0) / (dim // 2 - 1)))
    return torch.cat([torch.sin(i * freqs), torch.cos(i * freqs)])


class Actor(nn.Module):
    """π(option | state). With ``diffusion_steps`` > 0 the logits are the end x_0 of a reverse
    denoising chain x_T ~ N(0, I) → x_0 conditioned on the encoded tokens (D2SAC, Du et al.:
    the diffusion model *generates the action distribution*, softmax(x_0)); gradients flow
    through the whole chain. With 0 (plain SAC) the heads emit logits directly.
    """

    def __init__(self, variant: str = "eat", d: int = 64, dp: int = 32, diffusion_steps: int = 5,
                 step_bins: int = STEP_BINS, hint: str | None = None, train_nodes: int | None = None,
                 residual: bool = False) -> None:
        super().__init__()
        if residual and hint is None:
            raise ValueError("a residual actor needs a hint: it chooses among that heuristic's proposal's options")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if step_bins < 2:
            raise ValueError(f"step_bins must be at least 2, got {step_bins}")
        self.variant, self.step_bins = variant, step_bins
        self.hint = hint  # the heuristic whose proposals the actor is shown (observe(hint=...)), or None
        self.residual = residual  # options only around the hint's proposal (observe(residual=True))
        S = step_bins
        self.encoder = Encoder(d, dp, attention=variant != "d-sac", hint=hint is not None, train_nodes=train_nodes)
        self.T = 0 if variant == "sac" else diffusion_steps
        te = 16 if self.T else 0
        self.job_head = mlp(d + N_K * S * (self.T > 0) + te, d, N_K * S)
        self.pair_head = mlp(dp + N_K * (self.T > 0) + te, dp, N_K)
        self.wait_head = mlp(d + (self.T > 0) + te, d, 1)
        if self.T:
            betas = vp_schedule(self.T)
            alphas = 1 - betas
            self.register_buffer("betas", betas)
            self.register_buffer("alphas", alphas)
            self.register_buffer("alpha_bar", torch.cumprod(alphas, 0))
            self.register_buffer("temb", torch.stack([time_embedding(i) for i in range(self.T)]))
            prev = torch.cat([torch.ones(1), self.alpha_bar[:-1]])
            c0 = betas * prev.sqrt() / (1 - self.alpha_bar)
            c1 = (1 - prev) * alphas.sqrt() / (1 - self.alpha_bar)
            sigma = (betas * (1 - prev) / (1 - self.alpha_bar)).sqrt()
            self.register_buffer("post", torch.stack([c0, c1, sigma], 1))

    def forward(
        self, o: dict[str, torch.Tensor], generator: torch.Generator | None = None, shuffle_state: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (u (B,J,K,S), v (B,J,N,K), w (B,)) unmasked logits."""
        e = self.encoder(o)
        if shuffle_state:  # ablation: each job's and each (job, node) pair's chain reads its neighbour's token
            e = Encoded(e.glob, e.jobs.roll(1, 1), e.pairs.roll(1, 2))
        b, j, n = e.pairs.shape[:3]
        if not self.T:
            return (self.job_head(e.jobs).view(b, j, N_K, self.step_bins), self.pair_head(e.pairs),
                    self.wait_head(e.glob)[:, 0])
        # Reverse process, as a numbered loop (DDPM, Ho et al. eqs. 6-7, in the x_0-prediction
        # form of Diffusion-QL's ``predict_epsilon=False``: the ε form amplifies an untrained
        # denoiser ~12× over 5 VP steps, which makes the initial policy deterministic).
        # 1. start from pure noise in the space of option logits
        def noise(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, device=e.glob.device)

        xu, xv, xw = noise(b, j, N_K * self.step_bins), noise(b, j, n, N_K), noise(b, 1)
        # The state part of each denoiser's first layer is the same at every step: project once.
        heads = [_Split(h, z.shape[-1], x.shape[-1])
                 for h, z, x in ((self.job_head, e.jobs, xu), (self.pair_head, e.pairs, xv), (self.wait_head, e.glob, xw))]
        su, sv, sw = heads[0].state(e.jobs), heads[1].state(e.pairs), heads[2].state(e.glob)
        for i in reversed(range(self.T)):
            # 2. predict the clean logits x̂_0 from x_i, the step embedding and the state tokens
            t = self.temb[i]
            x0u, x0v, x0w = heads[0](su, xu, t), heads[1](sv, xv, t), heads[2](sw, xw, t)
            if i == 0:
                # 4. the last posterior mean is x̂_0 itself: the logits of the action distribution
                xu, xv, xw = x0u, x0v, x0w
                break
            # 3. posterior q(x_{i-1} | x_i, x̂_0): mean c0·x̂_0 + c1·x_i, std σ_i
            c0, c1, sigma = self.post[i]
            xu = c0 * x0u + c1 * xu + sigma * noise(*xu.shape)
            xv = c0 * x0v + c1 * xv + sigma * noise(*xv.shape)
            xw = c0 * x0w + c1 * xw + sigma * noise(*xw.shape)
        return xu.view(b, j, N_K, self.step_bins), xv, xw[:, 0]


class _Split:
    """``head(cat([state, x, t]))`` computed as W_s·state (once per chain) + W_x·x + W_t·t."""

    def __init__(self, head: nn.Sequential, state_dim: int, x_dim: int) -> None:
        self.head, self.ds = head, state_dim
        self.first = head[0]
        w = self.first.weight
        self.w_x, self.w_t = w[:, state_dim : state_dim + x_dim].contiguous(), w[:, state_dim + x_dim :].contiguous()

    def state(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.first.weight[:, : self.ds], self.first.bias)

    def __call__(self, s: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pre = s + F.linear(x, self.w_x) + self.w_t @ t
        return self.head[2](self.head[1](pre))


def joint_log_probs(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor, mask: torch.Tensor,
                    may_wait: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1 + J·N·K·S) log-probabilities; index 0 is wait, masked options get ≈ −1e9: the
    dispatches outside ``mask`` (``option_mask``) and wait where ``may_wait`` (B,) is false
    (``features.may_wait``; None: always allowed)."""
    b = u.shape[0]
    logits = u[:, :, None] + v[..., None]  # (B, J, N, K, S)
    logits = logits.masked_fill(~mask[..., None], -1e9).reshape(b, -1)
    if may_wait is not None:
        w = w.masked_fill(~may_wait.reshape(b).bool(), -1e9)
    return torch.cat([w[:, None], logits], 1).log_softmax(-1)


def masked_log_probs(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor, o: dict[str, torch.Tensor]) -> torch.Tensor:
    """``joint_log_probs`` with the feasibility of the observation batch ``o`` (``observe``)."""
    return joint_log_probs(u, v, w, option_mask(o), o.get("may_wait"))


def greedy_index(logp: torch.Tensor) -> int:
    """The most probable option of a (1 + J·N·K·S,) log-probability vector, decided top-down:
    wait if P(wait) > P(dispatch anything), else the most probable dispatch. A flat argmax
    would wait whenever waiting beats every single one of the thousands of dispatch options,
    even when dispatching is far more probable overall (measured: a clone of edf-cache, which
    waits at 49% of its decision points, starved its queue: 674 s mean response vs 5.7 s)."""
    if logp.numel() == 1 or logp[0].exp() > 0.5:
        return 0
    return 1 + int(logp[1:].argmax())


def greedy_option(u: np.ndarray, v: np.ndarray, w: np.ndarray, mask: np.ndarray, may_wait: bool | None = None) -> int:
    """``greedy_index(joint_log_probs(...)[0])`` of one state (u (J, K, S), v (J, N, K), w (1,),
    float32, mask (J, N, K) bool; ``may_wait`` None: wait allowed) without building its J·N·K·S
    joint: the steps bin only adds u[j, k, s] to every node's score, so the best dispatch takes
    each (j, k)'s best bin, and the dispatches' total mass is logsumexp over (j, n, k) of
    v + logsumexp_s u. Same choice. On numpy arrays, because a reused pass decides on a few rows,
    where each torch call's overhead (~10 µs) is most of the work; the float32 sums and maxima
    are the same numbers either way, and the logsumexp is still torch's."""
    if not mask.any():
        allowed = None if may_wait is None else torch.tensor([may_wait])
        joint = joint_log_probs(torch.from_numpy(u)[None], torch.from_numpy(v)[None], torch.from_numpy(w),
                                torch.from_numpy(mask)[None], allowed)
        return greedy_index(joint[0])
    scores = np.where(mask, v, np.float32(-np.inf))
    best_bin = u.argmax(-1)
    best = (scores + u.max(-1)[:, None, :]).reshape(-1)
    flat = int(best.argmax())
    wait = float(w.reshape(()))
    # The dispatches' mass is at least their best option's, so a wait below it (by more than
    # rounding) loses without the logsumexp: about two thirds of a served plan's decisions.
    surely_dispatch = wait < float(best[flat]) - 1e-6 * (1 + abs(float(best[flat])))
    if (may_wait is None or may_wait) and not surely_dispatch and wait > _dispatch_mass(u, scores):
        return 0
    j, rest = divmod(flat, v.shape[1] * N_K)
    ki = rest % N_K
    return encode(j, rest // N_K, ki, int(best_bin[j, ki]), v.shape[1], u.shape[-1])


def _dispatch_mass(u: np.ndarray, scores: np.ndarray) -> float:
    """logsumexp over every open (j, n, k, s) of u + v, ``scores`` being v with −inf where closed."""
    tu, ts = torch.from_numpy(u), torch.from_numpy(scores)
    return float((ts + tu.logsumexp(-1)[:, None, :]).logsumexp((0, 1, 2)))


def decode(index: int, j: int, n: int, bins: int = STEP_BINS) -> tuple[int, int, int, int] | None:
    """Flat option index → (job, anchor node, k index, steps bin), or None for wait."""
    if index == 0:
        return None
    job, rest = divmod(index - 1, n * N_K * bins)
    node, rest = divmod(rest, N_K * bins)
    ki, bin_ = divmod(rest, bins)
    return job, node, ki, bin_


def encode(job: int, node: int, ki: int, bin_: int, n: int, bins: int = STEP_BINS) -> int:
    return 1 + ((job * n + node) * N_K + ki) * bins + bin_


# --- critic ---------------------------------------------------------------------------------


class Critic(nn.Module):
    """Q(s, ·) for every option at once: Q[j,n,k,b] = Qu[j,k,b] + Qv[j,n,k]; Q[wait] from the
    global token. Exact expectations over the (masked) policy, as discrete SAC needs."""

    def __init__(self, variant: str = "eat", d: int = 64, dp: int = 32, step_bins: int = STEP_BINS,
                 hint: bool = False, train_nodes: int | None = None) -> None:
        super().__init__()
        self.encoder = Encoder(d, dp, attention=variant != "d-sac", hint=hint, train_nodes=train_nodes)
        self.step_bins = step_bins
        self.qu, self.qv, self.qw = mlp(d, d, N_K * step_bins), mlp(dp, dp, N_K), mlp(d, d, 1)

    def forward(self, o: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.encoder(o)
        b, j = e.jobs.shape[:2]
        q = self.qu(e.jobs).view(b, j, 1, N_K, self.step_bins) + self.qv(e.pairs)[..., None]
        return torch.cat([self.qw(e.glob), q.reshape(b, -1)], 1)


def actor_from_config(cfg: dict[str, Any]) -> Actor:
    """An untrained Actor of a checkpoint's config; those written before ``step_bins`` used 8
    bins, before ``hint`` had none, before ``train_nodes`` no node-share correction, and before
    ``residual`` were not residual."""
    return Actor(cfg["variant"], cfg["d"], cfg["dp"], cfg["diffusion_steps"], int(cfg.get("step_bins", 8)),
                 cfg.get("hint"), cfg.get("train_nodes"), bool(cfg.get("residual", False)))


def config_of(actor: Actor) -> dict[str, Any]:
    enc = actor.encoder
    return {"variant": actor.variant, "d": enc.node_in[0].out_features, "dp": enc.pj.out_features,
            "diffusion_steps": actor.T or 5, "step_bins": actor.step_bins, "hint": actor.hint,
            "train_nodes": enc.train_nodes, "residual": actor.residual}
