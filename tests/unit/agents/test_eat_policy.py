"""The EAT agent and its ablations: shapes for any N and J, masking, seeds, checkpoints."""

import dataclasses

import numpy as np
import pytest
import torch

from eat_policy import nets
from eat_policy.agents import base
from eat_policy.agents import eat as eat_agent
from eat_policy.sim import engine, scenarios
from eat_policy.train import save_policy

from tests.unit.agents.conftest import make_actor

VARIANTS = [pytest.param(v, id=v) for v in nets.VARIANTS]


def _snapshot(scenario: scenarios.Scenario, seed: int = 0, warm_steps: int = 3):
    sim = engine.Simulator(scenario)
    sim.reset(seed)
    first_fit = base.make("first-fit")
    for _ in range(warm_steps):  # some busy GPUs, some warm groups
        if sim.done:
            break
        sim.step(first_fit.decide(sim.snapshot()))
    return sim.snapshot()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scenario", [
    pytest.param(scenarios.paper(rate=0.05), id="paper-4-nodes"),
    pytest.param(scenarios.edge(n_nodes=3, initial_queue=20, n_jobs=40), id="edge-3-nodes"),
    pytest.param(scenarios.edge(n_nodes=17, initial_queue=40, n_jobs=60), id="edge-17-nodes"),
])
def test_one_network_serves_any_cluster_and_queue_size(variant: str, scenario: scenarios.Scenario) -> None:
    snap = _snapshot(scenario)
    o = nets.to_tensors(nets.observe(snap))
    u, v, w = make_actor(variant)(o)
    j, n = snap.n_jobs, snap.n_nodes
    assert u.shape == (1, j, nets.N_K, nets.STEP_BINS) and v.shape == (1, j, n, nets.N_K) and w.shape == (1,)
    logp = nets.joint_log_probs(u, v, w, nets.option_mask(o))
    assert logp.shape == (1, 1 + j * n * nets.N_K * nets.STEP_BINS)
    assert torch.isclose(logp.exp().sum(), torch.tensor(1.0))
    q = nets.Critic(variant, d=32, dp=16)(o)
    assert q.shape == logp.shape


def test_infeasible_options_get_exactly_zero_probability() -> None:
    snap = _snapshot(scenarios.edge(n_nodes=6, initial_queue=30, n_jobs=40), warm_steps=6)
    o = nets.to_tensors(nets.observe(snap))
    mask = nets.option_mask(o)
    assert (~mask).any() and mask.any()
    p = nets.joint_log_probs(*make_actor()(o), mask).exp()[0, 1:].view(*mask.shape[1:], nets.STEP_BINS)
    assert p[~mask[0]].max().item() == 0.0
    # the mask is the featurisation's: busy or too-small nodes and disallowed k are out
    obs = nets.observe(snap)
    for j in range(snap.n_jobs):
        for ki in range(nets.N_K):
            for n in range(snap.n_nodes):
                assert bool(mask[0, j, n, ki]) == bool(obs["job_mask"][j] and obs["k_mask"][j, ki] and obs["free"][j, n])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scenario", [
    pytest.param(scenarios.paper(rate=0.11), id="paper-choose-k"),
    pytest.param(scenarios.paper(rate=0.11, mode="fixed-k"), id="paper-fixed-k"),
    pytest.param(scenarios.edge(n_nodes=5, load=0.9, n_jobs=40), id="edge"),
])
def test_sampled_decisions_are_always_valid(variant: str, scenario: scenarios.Scenario) -> None:
    """Sampling (not just argmax) from an untrained actor: the simulator never rejects a decision."""
    actor, sim = make_actor(variant), engine.Simulator(scenario)
    gen = torch.Generator().manual_seed(0)
    sim.reset(3)
    dispatched = 0
    while not sim.done:
        decision, _, _, _ = eat_agent.act(actor, sim.snapshot(), gen, greedy=False)
        sim.step(decision)  # raises engine.InvalidDecision on anything infeasible
        dispatched += decision is not None
    assert dispatched > 0


def test_same_seed_same_episode_different_seed_different_chain_noise(small_edge: scenarios.Scenario) -> None:
    actor = make_actor()
    sim = engine.Simulator(small_edge)

    def run(seed: int) -> list:
        policy = eat_agent.LearnedPolicy("eat", actor=actor)
        sim.reset(0)
        policy.reset(seed)
        out = []
        while not sim.done:
            d = policy.decide(sim.snapshot())
            out.append(d)
            sim.step(d)
        return out

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_checkpoint_round_trip_with_weights_only(tmp_path) -> None:
    actor = make_actor("eat", seed=4)
    save_policy(actor, tmp_path / "p.pt")
    loaded = eat_agent.load_actor(tmp_path / "p.pt")  # torch.load(weights_only=True) inside
    o = nets.to_tensors(nets.observe(_snapshot(scenarios.paper(rate=0.05))))
    a = actor(o, torch.Generator().manual_seed(7))
    b = loaded(o, torch.Generator().manual_seed(7))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_a_checkpoint_carries_its_steps_bins_and_decisions_use_them(tmp_path) -> None:
    torch.manual_seed(0)
    actor = nets.Actor("eat", d=32, dp=16, step_bins=16).eval()
    save_policy(actor, tmp_path / "p16.pt")
    loaded = eat_agent.load_actor(tmp_path / "p16.pt")
    assert loaded.step_bins == 16 and nets.config_of(loaded)["step_bins"] == 16
    snap = _snapshot(scenarios.paper(rate=0.05), warm_steps=0)
    u, _, _ = loaded(nets.to_tensors(nets.observe(snap)))
    assert u.shape[-1] == 16
    policy = eat_agent.LearnedPolicy("eat", actor=loaded)
    seen = set()
    for seed in range(3):
        sim = engine.Simulator(scenarios.paper(rate=0.11))
        sim.reset(seed)
        policy.reset(seed)
        while not sim.done:
            d = policy.decide(sim.snapshot())
            if d is not None:
                seen.add(d.steps)
            sim.step(d)
    assert seen <= {nets.steps_of_bin(1, 32, b, 16) for b in range(16)}
    assert seen - {nets.steps_of_bin(1, 32, b, 8) for b in range(8)}, "some decision used a bin 8 do not have"


def test_checkpoints_from_before_the_setting_load_with_8_bins(tmp_path) -> None:
    blob = {"config": {"variant": "eat", "d": 32, "dp": 16, "diffusion_steps": 5},
            "actor": nets.Actor("eat", d=32, dp=16).state_dict()}
    torch.save(blob, tmp_path / "old.pt")
    assert eat_agent.load_actor(tmp_path / "old.pt").step_bins == 8


@pytest.mark.parametrize("bins", [8, 16, 32])
def test_steps_bins_round_trip(bins: int) -> None:
    values = [nets.steps_of_bin(1, 32, b, bins) for b in range(bins)]
    assert values[0] == 1 and values[-1] == 32 and values == sorted(set(values))
    assert all(nets.bin_of_steps(1, 32, s, bins) == b for b, s in enumerate(values))
    assert (30 in values) == (bins != 8)  # Q peaks at 30 steps; 8 bins jump from 28 to 32
    for index in range(1, 1 + 3 * 4 * nets.N_K * bins, 37):
        assert nets.encode(*nets.decode(index, 3, 4, bins), 4, bins) == index


@pytest.mark.parametrize("name", ["eat-paper", "eat-paper-fixed-k", "eat-edge", "eat-edge-pods", "d-sac-paper", "sac-paper"])
def test_shipped_checkpoints_are_small_and_load_safely(name: str) -> None:
    path = eat_agent.CHECKPOINTS / f"{name}.pt"
    assert path.stat().st_size < 2 * 1024 * 1024
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"config", "actor"}
    assert (path.with_suffix(".json")).exists(), "each checkpoint has a card with its training command"


@pytest.mark.parametrize(("mode", "key"), [("choose-k", "paper"), ("fixed-k", "paper-fixed-k")])
def test_the_paper_modes_are_served_by_their_own_checkpoints(mode: str, key: str) -> None:
    snap = _snapshot(scenarios.paper(rate=0.05, mode=mode), warm_steps=0)
    assert eat_agent.checkpoint_key(snap) == key
    policy = base.make("eat")
    policy.decide(snap)
    assert policy._actor(snap) is eat_agent._shipped("eat", key)  # type: ignore[attr-defined]

    def same(a: nets.Actor, b: nets.Actor) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    assert not same(eat_agent._shipped("eat", "paper-fixed-k"), eat_agent._shipped("eat", "paper"))
    # a variant without a fixed-k checkpoint falls back to its paper one
    assert same(eat_agent._shipped("sac", "paper-fixed-k"), eat_agent._shipped("sac", "paper"))


def test_registered_names_make_policies() -> None:
    for name in ("eat", "d-sac", "sac", "eat-shuffled", "eat-1step"):
        assert base.make(name).name == name


def test_the_action_distribution_depends_on_the_state_and_on_the_chain() -> None:
    actor = make_actor()
    o1 = nets.to_tensors(nets.observe(_snapshot(scenarios.edge(n_nodes=4, initial_queue=20, n_jobs=40), warm_steps=0), 20))
    o2 = nets.to_tensors(nets.observe(_snapshot(scenarios.edge(n_nodes=4, initial_queue=20, n_jobs=40), warm_steps=2), 20))

    def probs(o, **kw):
        return nets.joint_log_probs(*actor(o, torch.Generator().manual_seed(0), **kw), nets.option_mask(o)).exp()

    assert not torch.allclose(probs(o1), probs(o2))
    assert not torch.allclose(probs(o1), probs(o1, shuffle_state=True))
    full = probs(o1)
    actor.T = 1
    assert not torch.allclose(full, probs(o1))


def test_warm_group_features_mark_ready_gangs() -> None:
    sim = engine.Simulator(scenarios.paper(rate=0.05))
    sim.reset(0)
    snap = sim.snapshot()
    assert not nets.warm_group_features(snap).any()
    sim.step(eat_agent.to_decision(snap, (0, 0, 1, 4), np.zeros(4), np.ones(4), 8))  # k=2 on nodes 0, 1
    extra = nets.warm_group_features(sim.snapshot())
    assert extra[[0, 1], nets.N_K].all() and not extra[[2, 3], nets.N_K].any()
    assert not extra[:, 1].any()  # the pair is busy, so not ready yet


class _CountingActor(torch.nn.Module):
    """Wraps an actor and counts its forward passes (the encoder is reached through it)."""

    def __init__(self, actor: nets.Actor) -> None:
        super().__init__()
        self.inner, self.encoder, self.hint, self.residual, self.calls = actor, actor.encoder, actor.hint, actor.residual, 0

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner(*args, **kwargs)


def _episode(policy: eat_agent.LearnedPolicy, scenario: scenarios.Scenario, seed: int = 0) -> list:
    sim = engine.Simulator(scenario)
    sim.reset(seed)
    policy.reset(seed)
    out = []
    while not sim.done:
        d = policy.decide(sim.snapshot())
        sim.step(d)  # raises on anything infeasible
        out.append(d)
    return out


def test_reuse_1_is_one_actor_pass_per_decision_and_matches_act(small_edge: scenarios.Scenario) -> None:
    actor = _CountingActor(make_actor())
    policy = eat_agent.LearnedPolicy("eat", actor=actor)  # type: ignore[arg-type]
    decisions = _episode(policy, small_edge)
    assert actor.calls == len(decisions)
    sim = engine.Simulator(small_edge)
    sim.reset(0)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([0, 0xEA7]).generate_state(1)[0]))
    for d in decisions:
        expected, _, _, _ = eat_agent.act(actor.inner, sim.snapshot(), gen)
        assert expected == d
        sim.step(d)


def test_jobs_without_an_open_option_are_left_out_of_the_ranking_not_out_of_place() -> None:
    scenario = scenarios.edge(n_nodes=4, load=0.9, n_jobs=40, initial_queue=12)
    actor = make_actor()
    moved = 0
    for seed in range(6):
        snap = _snapshot(scenario, seed)
        closed = np.arange(snap.n_jobs) % 3 == 0  # these ask for 3 patches: no k is allowed
        snap = dataclasses.replace(snap, job_k=np.where(closed, 3, snap.job_k))
        assert not nets.features.masks(snap)[0][closed].any()
        policy = eat_agent.LearnedPolicy("eat", actor=actor)
        policy.reset(seed)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0xEA7]).generate_state(1)[0]))
        expected = eat_agent.act(actor, snap, gen)[0]
        assert policy.decide(snap) == expected  # the full joint's greedy choice
        moved += expected is not None and bool(closed[: expected.job].any())
    assert moved  # some choices sit behind closed jobs: their rows map back


def test_reuse_takes_several_dispatches_of_one_instant_from_one_pass() -> None:
    scenario = scenarios.edge(n_nodes=12, load=0.9, n_jobs=80, initial_queue=40)
    snap = _snapshot(scenario, warm_steps=0)
    actor = _CountingActor(make_actor())
    policy = eat_agent.LearnedPolicy("eat", actor=actor, reuse=1000)  # type: ignore[arg-type]
    policy.reset(0)
    from eat_policy.service import planning  # applies each dispatch to the snapshot, as the service does

    plan = planning.plan_snapshot(snap, policy, strict=True)
    assert len(plan.dispatches) >= 3 and actor.calls == 1
    gpus = [g for d in plan.dispatches for g in d.decision.gpus]
    assert len(gpus) == len(set(gpus))  # the re-masking never hands a GPU out twice
    # a new instant (or a job the pass never saw) runs the actor again
    policy.decide(dataclasses.replace(snap, now=snap.now + 1.0))
    assert actor.calls == 2
    bounded = eat_agent.LearnedPolicy("eat", actor=actor, reuse=2)  # type: ignore[arg-type]
    actor.calls = 0
    plan = planning.plan_snapshot(snap, bounded, strict=True)
    asked = len(plan.dispatches) + (plan.after.n_jobs > 0)  # the last ask answered "wait"
    assert actor.calls == (asked + 1) // 2


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_weights_of_a_decision(variant: str) -> None:
    snap = _snapshot(scenarios.edge(n_nodes=6, initial_queue=10, n_jobs=20))
    policy = eat_agent.LearnedPolicy(variant, actor=make_actor(variant))
    policy.reset(0)
    d = policy.decide(snap)
    assert d is not None
    att = policy.attention(int(snap.job_id[d.job]))
    if variant == "d-sac":  # no attention layers, nothing to explain with
        assert att is None
        return
    assert att is not None
    over_nodes, over_jobs = att
    assert over_nodes.shape == (snap.n_nodes,) and np.isclose(over_nodes.sum(), 1.0, atol=1e-5)
    assert set(over_jobs) == {int(i) for i in snap.job_id} - {int(snap.job_id[d.job])}
    assert all(w >= 0 for w in over_jobs.values()) and sum(over_jobs.values()) <= 1.0 + 1e-5
    assert policy.attention(10**9) is None  # a job the policy never saw


def test_greedy_decides_wait_or_dispatch_first_then_the_best_dispatch() -> None:
    # wait (0.4) beats every single dispatch option, but dispatching (0.6) is more likely
    logp = torch.tensor([0.4, 0.1, 0.25, 0.15, 0.1]).log()
    assert nets.greedy_index(logp) == 2
    assert nets.greedy_index(torch.tensor([0.6, 0.1, 0.2, 0.1]).log()) == 0
    assert nets.greedy_index(torch.tensor([0.0])) == 0  # nothing to dispatch


@pytest.mark.parametrize("case", range(48))
def test_greedy_option_is_the_greedy_index_of_the_joint(case: int) -> None:
    g = torch.Generator().manual_seed(case)
    j, n, bins = 1 + case % 5, 1 + case % 7, 2 + case % 3
    u, v = torch.randn(j, nets.N_K, bins, generator=g) * 3, torch.randn(j, n, nets.N_K, generator=g) * 3
    mask = torch.rand(j, n, nets.N_K, generator=g) < (0.0 if case % 10 == 0 else 0.4)
    # wait just below or above the dispatches' total mass or their best option's, or far off;
    # sometimes not allowed
    options = (u[:, None, :, :] + v[..., None])[mask]
    dispatch_mass = float(options.logsumexp((0, 1))) if mask.any() else 0.0
    best_option = float(options.max()) if mask.any() else 0.0
    w = torch.tensor([(dispatch_mass - 5.0, dispatch_mass - 0.05, dispatch_mass + 0.05, dispatch_mass + 5.0,
                       best_option - 1e-3, best_option + 1e-3)[case % 6]])
    may_wait = (case // 6) % 4 != 0
    joint = nets.joint_log_probs(u[None], v[None], w, mask[None], torch.tensor([may_wait]))[0]
    assert nets.greedy_option(u.numpy(), v.numpy(), w.numpy(), mask.numpy(), may_wait) == nets.greedy_index(joint)
    if case % 6 == 5:  # wait always allowed (None): as allowed
        always = nets.joint_log_probs(u[None], v[None], w, mask[None])[0]
        assert nets.greedy_option(u.numpy(), v.numpy(), w.numpy(), mask.numpy()) == nets.greedy_index(always)


# --- hinted actors: a heuristic's proposal as input (a residual policy) ---------------------------


def test_hint_features_encode_the_heuristics_proposal() -> None:
    snap = _snapshot(scenarios.edge(n_nodes=6, initial_queue=30, n_jobs=40), warm_steps=2)
    proposal = base.make("edf-cache-queue").decide(snap)
    assert proposal is not None
    h = nets.observe(snap, hint=lambda s: proposal)
    j = proposal.job
    assert h["hint_jobs"][:, 0].nonzero()[0].tolist() == [j]
    assert h["hint_jobs"][j, 1 + nets.features.K_VALUES.index(proposal.k)] == 1.0
    assert h["hint_jobs"][j, 1:1 + nets.N_K].sum() == 1.0
    lo, hi = snap.job_steps_min[j], snap.job_steps_max[j]
    assert h["hint_jobs"][j, -1] == pytest.approx((proposal.steps - lo) / (hi - lo))
    most_gpus = np.bincount(snap.gpu_node[list(proposal.gpus)], minlength=snap.n_nodes).argmax()
    assert h["hint_pairs"][j, :, 0].nonzero()[0].tolist() == [most_gpus]
    assert h["hint_pairs"][j, :, 1].sum() == pytest.approx(1.0)
    assert not h["hint_pairs"][np.arange(snap.n_jobs) != j].any() and h["hint_wait"][0] == 0.0
    waiting = nets.observe(snap, window=40, hint=lambda s: None)
    assert waiting["hint_wait"][0] == 1.0 and not waiting["hint_jobs"].any() and not waiting["hint_pairs"].any()
    assert waiting["hint_jobs"].shape == (40, nets.HINT_JOB_DIM)
    assert "hint_jobs" not in nets.observe(snap)


def test_a_hinted_actor_responds_to_the_proposal_and_its_checkpoint_names_the_heuristic(tmp_path) -> None:
    torch.manual_seed(0)
    actor = nets.Actor("eat", d=32, dp=16, hint="edf-cache-queue").eval()
    save_policy(actor, tmp_path / "hinted.pt")
    loaded = eat_agent.load_actor(tmp_path / "hinted.pt")
    assert loaded.hint == "edf-cache-queue" and nets.config_of(loaded)["hint"] == "edf-cache-queue"
    snap = _snapshot(scenarios.edge(n_nodes=6, initial_queue=30, n_jobs=40), warm_steps=2)
    proposal = base.make("edf-cache-queue").decide(snap)

    def probs(hint):
        o = nets.to_tensors(nets.observe(snap, hint=hint))
        return nets.joint_log_probs(*loaded(o, torch.Generator().manual_seed(0)), nets.option_mask(o)).exp()

    assert not torch.allclose(probs(lambda s: proposal), probs(lambda s: None))
    critic = nets.Critic("eat", d=32, dp=16, hint=True)
    assert critic(nets.to_tensors(nets.observe(snap, hint=lambda s: proposal))).shape == probs(lambda s: None).shape
    assert eat_agent.load_actor(eat_agent.CHECKPOINTS / "eat-paper.pt").hint is None  # written before hints: none


def test_a_hinted_policy_asks_its_heuristic_at_every_actor_pass(small_edge: scenarios.Scenario) -> None:
    torch.manual_seed(0)
    actor = _CountingActor(nets.Actor("eat", d=32, dp=16, hint="edf-cache-queue").eval())
    policy = eat_agent.LearnedPolicy("eat", actor=actor)  # type: ignore[arg-type]
    asked = []
    policy.reset(0)
    policy.hinters["edf-cache-queue"] = lambda snap: asked.append(snap.now) or base.make("edf-cache-queue").decide(snap)
    sim = engine.Simulator(small_edge)
    sim.reset(0)
    decisions = 0
    while not sim.done:
        sim.step(policy.decide(sim.snapshot()))  # every decision valid
        decisions += 1
    assert actor.calls == len(asked) == decisions


# --- robustness on clusters the network was not trained on ------------------------------------


def _waiting_actor() -> nets.Actor:
    """An actor that wants to wait at every state (its wait logit is huge)."""
    actor = make_actor()
    with torch.no_grad():
        actor.wait_head[-1].bias.fill_(1e3)
    return actor


def test_waiting_is_masked_when_every_gpu_is_idle() -> None:
    snap = _snapshot(scenarios.edge(n_nodes=4, initial_queue=6, n_jobs=10), warm_steps=0)
    assert not (snap.gpu_free_at > snap.now).any()
    obs = nets.observe(snap)
    assert obs["job_mask"].any() and not obs["may_wait"][0]
    policy = eat_agent.LearnedPolicy("eat", actor=_waiting_actor())
    assert policy.decide(snap) is not None  # the actor's best dispatch instead of a wait
    busy = _snapshot(scenarios.edge(n_nodes=4, initial_queue=6, n_jobs=10), warm_steps=1)
    assert nets.observe(busy)["may_wait"][0]
    policy.reset(0)
    assert policy.decide(busy) is None  # with a completion coming, waiting is the actor's call


@pytest.mark.parametrize("reuse", [1, 32])
def test_a_policy_that_always_wants_to_wait_still_serves_every_job(reuse: int) -> None:
    sim = engine.Simulator(scenarios.edge(n_nodes=4, load=0.5, n_jobs=15))
    sim.reset(0)
    policy = eat_agent.LearnedPolicy("eat", actor=_waiting_actor(), reuse=reuse)
    policy.reset(0)
    while not sim.done:
        sim.step(policy.decide(sim.snapshot()))
    assert sim.metrics().unfinished == 0


def _replicated(o: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """The same cluster with every node copied ``times`` times (the node axis of each input)."""
    node_axis = {"nodes": 1, "pairs": 2, "free": 2, "hint_pairs": 2}
    return {k: v.repeat_interleave(times, dim=node_axis[k]) if k in node_axis else v for k, v in o.items()}


def test_train_nodes_keeps_a_larger_cluster_of_the_same_nodes_encoded_alike() -> None:
    snap = _snapshot(scenarios.edge(n_nodes=4, initial_queue=8, n_jobs=12))
    o = nets.to_tensors(nets.observe(snap))
    big = _replicated(o, 4)  # 16 nodes: four copies of each
    torch.manual_seed(0)
    corrected = nets.Encoder(d=32, dp=16, train_nodes=4)
    plain = nets.Encoder(d=32, dp=16)
    plain.load_state_dict(corrected.state_dict())
    small_c, big_c = corrected(o), corrected(big)
    assert torch.allclose(small_c.glob, big_c.glob, atol=1e-5) and torch.allclose(small_c.jobs, big_c.jobs, atol=1e-5)
    assert torch.allclose(big_c.pairs, small_c.pairs.repeat_interleave(4, dim=2), atol=1e-5)
    small_p, big_p = plain(o), plain(big)
    assert torch.equal(small_p.glob, small_c.glob)  # at the training size the correction is zero
    assert not torch.allclose(small_p.glob, big_p.glob, atol=1e-3)  # without it the tokens drift


def test_train_nodes_is_recorded_by_training_and_by_every_shipped_checkpoint(tmp_path) -> None:
    actor = nets.Actor("eat", d=32, dp=16, train_nodes=8)
    save_policy(actor, tmp_path / "p.pt")
    assert nets.config_of(eat_agent.load_actor(tmp_path / "p.pt"))["train_nodes"] == 8
    trained_on = {"eat-edge": 8, "eat-edge-pods": 8, "eat-paper": 4, "eat-paper-fixed-k": 4, "d-sac-paper": 4, "sac-paper": 4}
    for name, n in trained_on.items():
        assert torch.load(eat_agent.CHECKPOINTS / f"{name}.pt", weights_only=True)["config"]["train_nodes"] == n


# --- residual actors: the hint's placement, the policy's steps and waits ----------------------------


def test_a_residual_observation_opens_only_the_proposals_options_or_wait() -> None:
    snap = _snapshot(scenarios.edge(n_nodes=6, initial_queue=30, n_jobs=40), warm_steps=2)
    proposal = base.make("edf-cache-queue").decide(snap)
    assert proposal is not None
    full, only = nets.observe(snap), nets.observe(snap, hint=lambda s: proposal, residual=True)
    mask = nets.option_mask(nets.to_tensors(only))[0]
    j, ki = proposal.job, nets.features.K_VALUES.index(proposal.k)
    gang_nodes = set(snap.gpu_node[list(proposal.gpus)].tolist())
    assert {(int(a), int(n), int(k)) for a, n, k in mask.nonzero()} == {(j, n, ki) for n in gang_nodes}
    assert full["job_mask"].sum() > 1, "other jobs were feasible"
    assert only["may_wait"][0] == full["may_wait"][0]
    for key in ("nodes", "jobs", "pairs", "hint_jobs"):
        assert np.array_equal(only[key], nets.observe(snap, hint=lambda s: proposal)[key])
    waiting = nets.observe(snap, hint=lambda s: None, residual=True)
    assert not nets.option_mask(nets.to_tensors(waiting)).any() and waiting["may_wait"][0]
    with pytest.raises(ValueError, match="needs a hint"):
        nets.observe(snap, residual=True)


def test_a_residual_policy_keeps_its_hints_job_k_and_nodes_whatever_its_weights(tmp_path) -> None:
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="needs a hint"):
        nets.Actor("eat", d=32, dp=16, residual=True)
    save_policy(nets.Actor("eat", d=32, dp=16, hint="edf-cache-queue-fit", residual=True).eval(), tmp_path / "r.pt")
    actor = eat_agent.load_actor(tmp_path / "r.pt")
    assert actor.residual and nets.config_of(actor)["residual"]
    assert not nets.actor_from_config({k: v for k, v in nets.config_of(actor).items() if k != "residual"}).residual
    hint = base.make("edf-cache-queue-fit")
    policy = eat_agent.LearnedPolicy(actor=actor, name="residual", reuse=8)
    sim = engine.Simulator(scenarios.edge(n_nodes=5, load=0.9, n_jobs=60, gpu_keeps_model=False))
    sim.reset(0)
    other_steps = waits = reused = 0
    while not sim.done:
        snap = sim.snapshot()
        proposal, d = hint.decide(snap), policy.decide(snap)
        assert policy.instant is not None
        reused += policy.instant.uses > 1
        if proposal is None:
            assert d is None
        elif d is None:
            waits += 1
        else:
            assert (d.job, d.k) == (proposal.job, proposal.k)
            assert set(snap.gpu_node[list(d.gpus)]) <= set(snap.gpu_node[list(proposal.gpus)])
            other_steps += d.steps != proposal.steps
        sim.step(d)
    assert other_steps > 0, "the policy chooses the steps"
    assert reused > 0, "reused passes keep to the new proposal too"
    assert sim.metrics().finished == 60


def _full_joint_choice(instant: eat_agent.Instant, snap, proposal):  # type: ignore[no-untyped-def]
    """What a reused residual pass must choose: the full joint's greedy option over every job's
    masks narrowed to ``proposal`` (the reference the decision's shortcuts must equal)."""
    job_mask, k_mask, free = nets.features.masks(snap)
    may_wait = nets.features.may_wait(snap, bool(job_mask.any()))
    job_mask, k_mask, free, may_wait = nets.narrow_to_proposal(snap, job_mask, k_mask, free, may_wait, proposal)
    rows = [instant.row_of[int(i)] for i in snap.job_id]
    u, v = torch.from_numpy(instant.u[rows]), torch.from_numpy(instant.v[rows])
    mask = torch.from_numpy(job_mask[:, None, None] & k_mask[:, None, :] & (free > 0)[:, :, None])
    joint = nets.joint_log_probs(u[None], v[None], torch.from_numpy(instant.w), mask[None], torch.tensor([may_wait]))
    option = nets.decode(nets.greedy_index(joint[0]), snap.n_jobs, snap.n_nodes, instant.u.shape[-1])
    if option is None:
        return None
    pointer = instant.v[rows[option[0]], :, option[2]]
    return eat_agent.to_decision(snap, option, pointer, free[option[0]] > 0, instant.u.shape[-1])


@pytest.mark.parametrize("proposals", ["the hint's", "infeasible"])
def test_a_reused_residual_pass_chooses_as_the_full_joint_over_the_new_proposal(proposals: str) -> None:
    from eat_policy.service import planning

    torch.manual_seed(3)
    actor = nets.Actor("eat", d=32, dp=16, hint="edf-cache-queue-fit", residual=True).eval()
    hint = base.make("edf-cache-queue-fit")

    def busy_gpus(snap):  # type: ignore[no-untyped-def]  # a proposal no feasible option matches
        d = hint.decide(snap)
        busy = np.flatnonzero(snap.gpu_free_at > snap.now)
        return None if d is None or not len(busy) else dataclasses.replace(d, gpus=(int(busy[0]),))

    checked = dispatched = off_the_hint = 0
    for seed in range(4):
        snap = _snapshot(scenarios.edge(n_nodes=8, load=0.9, n_jobs=60, initial_queue=30, gpu_keeps_model=False),
                         seed, warm_steps=4)
        policy = eat_agent.LearnedPolicy(actor=actor, reuse=1000)
        policy.reset(seed)
        d = policy.decide(snap)
        instant = policy.instant
        assert instant is not None
        if proposals == "infeasible":
            instant.residual_hint = busy_gpus
        while d is not None and len(snap.idle_gpus()) and snap.n_jobs > 1:
            snap = planning._apply(snap, d, planning._physics.estimate(snap, d.job, d.gpus), False)
            expected = _full_joint_choice(instant, snap, instant.residual_hint(snap))
            d = policy.decide(snap)
            assert policy.instant is instant and d == expected
            checked += 1
            if d is not None:
                dispatched += 1
                off_the_hint += d.job != hint.decide(snap).job
    assert checked >= 12 and dispatched >= 8
    # the hint's proposals keep its job; with no feasible proposal every option stays open
    assert (off_the_hint > 0) == (proposals == "infeasible")


def test_the_pods_policy_is_a_residual_actor_over_its_fit_heuristic() -> None:
    policy = base.make("eat-pods")
    assert isinstance(policy, eat_agent.LearnedPolicy) and policy.actor is not None
    assert policy.actor.residual and policy.actor.hint == "edf-cache-queue-fit"
    snap = _snapshot(scenarios.edge(n_nodes=6, initial_queue=30, n_jobs=40, gpu_keeps_model=False), warm_steps=2)
    proposal, d = base.make("edf-cache-queue-fit").decide(snap), policy.decide(snap)
    assert proposal is not None and d is not None and (d.job, d.k) == (proposal.job, proposal.k)


def _simulators_midway(scenario: scenarios.Scenario, n: int) -> list[engine.Simulator]:
    """``n`` episodes of one cluster, each a few more first-fit dispatches in (queues differ)."""
    sims = []
    for i in range(n):
        sim = engine.Simulator(scenario)
        sim.reset(i)
        first_fit = base.make("first-fit")
        for _ in range(3 * i):
            sim.step(first_fit.decide(sim.snapshot()))
        sims.append(sim)
    return sims


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_one_batched_pass_decides_several_simulators_as_one_pass_each(residual: bool) -> None:
    """``decide_all`` (a rollout teacher's play-outs) pads the queues to one batch; an actor
    without a chain (SAC: no noise) decides each state exactly as ``decide`` does alone."""
    torch.manual_seed(2)
    hint = "edf-cache-queue-fit" if residual else None
    actor = nets.Actor("sac", d=32, dp=16, hint=hint, residual=residual).eval()
    sims = _simulators_midway(scenarios.edge(n_nodes=5, load=0.9, n_jobs=60, initial_queue=8, gpu_keeps_model=False), 4)
    snaps = [sim.snapshot() for sim in sims]
    assert len({s.n_jobs for s in snaps}) > 1
    batched = eat_agent.LearnedPolicy("sac", actor=actor).decide_all(snaps)
    assert batched == [eat_agent.LearnedPolicy("sac", actor=actor).decide(s) for s in snaps]
    assert any(d is not None for d in batched)


def test_a_batched_pass_through_the_chain_decides_feasibly_for_each_simulator() -> None:
    sims = _simulators_midway(scenarios.edge(n_nodes=5, load=0.9, n_jobs=60, initial_queue=8), 4)
    policy = eat_agent.LearnedPolicy("eat", actor=make_actor())
    decisions = policy.decide_all([sim.snapshot() for sim in sims])
    assert len(decisions) == 4 and any(d is not None for d in decisions)
    for sim, d in zip(sims, decisions):
        sim.step(d)  # raises engine.InvalidDecision on anything infeasible
