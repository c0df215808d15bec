"""How the cache-aware policies (``cache-lct``, ``edf-cache``) plan one decision.

``plan_simply`` is the definition: place the policy's first LOOKAHEAD jobs in turn, each at
its earliest-finishing candidate after the reservations of the jobs before it; dispatch the
first that can start now, or backfill a younger job onto reserved GPUs if it finishes first.
``Planner`` reaches the same decisions on edge by carrying each job's last candidate search
across decisions (the section below explains how); tests/unit/policy/test_planner.py pins it
to ``plan_simply`` decision by decision.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from eat_policy.snapshot import Decision, Snapshot
from eat_policy.sim import catalog, physics

INF = float("inf")
DEFAULT_STEPS = 20
"""Steps for jobs without a deadline: Q(20) = 0.248 of the paper's 0.284 maximum, at 2/3 the cost."""
LOOKAHEAD = 16
"""How many jobs the cache-aware policies place (reserving GPUs) per decision. Measured on
edge at ρ = 1 (10 seeds): 4 → 69% deadlines met, 8 → 89%, 16 → 93%, 32 → 92%."""


def plan_simply(snap: Snapshot, jobs: list[int], phys: physics.Physics) -> Decision | None:
    """The cache-aware policies' decision, written plainly: place ``jobs`` in turn, reserving.

    This is the definition; ``Planner`` reaches the same decisions on edge by reusing work.
    """
    plans = _Plans(snap, phys)
    for j in jobs:
        steps = reference_steps(snap, j)
        options = plans.candidates(j, steps, idle_only=False)
        best = _earliest(options, steps)
        if best is not None and best.start_s <= snap.now:
            return _dispatch(snap, j, best)
        backfill = plans.backfill(j, steps)
        if backfill is not None:
            return _dispatch(snap, j, backfill)
        if best is not None and not best.cold:
            plans.reserve(best)  # a cold plan is not worth idling GPUs for
    return None


def _earliest(options: list[physics.Placement], steps: int) -> physics.Placement | None:
    """The option that finishes first (fewer patches on a tie, then the first listed)."""
    return min(options, key=lambda p: (p.finish_s(steps), p.k)) if options else None


def _warm_fit(
    options: list[physics.Placement], steps: int, claimed: Callable[[tuple[int, ...]], float],
) -> physics.Placement | None:
    """The earliest warm option that finishes before ``claimed`` (its GPUs' first reservation)."""
    return _earliest([p for p in options if not p.cold and p.finish_s(steps) <= claimed(p.gpus)], steps)


def _dispatch(snap: Snapshot, j: int, p: physics.Placement) -> Decision:
    return Decision(j, p.gpus, physics.steps_within_deadline(snap, j, p, DEFAULT_STEPS))


class _Plans:
    """Candidate placements for one decision, memoised by what they depend on.

    Jobs with the same model, resolution, steps and k demand get the same candidates, so a
    window of 32 jobs costs a handful of physics calls; reservations invalidate the memo.
    """

    def __init__(self, snap: Snapshot, phys: physics.Physics) -> None:
        self.snap, self.phys = snap, phys
        self.reserved_from = np.full(snap.n_gpus, np.inf)  # when a waiting older job claims each GPU
        self.version = 0
        self.memo: dict[tuple[object, ...], list[physics.Placement]] = {}

    def candidates(self, j: int, steps: int, idle_only: bool) -> list[physics.Placement]:
        s = self.snap
        key = (int(s.job_model[j]), float(s.job_pixels[j]), steps, int(s.job_k[j]), idle_only,
               None if idle_only else self.version)
        if key not in self.memo:
            exclude = None if idle_only else np.isfinite(self.reserved_from)
            self.memo[key] = self.phys.candidates(s, j, steps, idle_only=idle_only, exclude=exclude)
        return self.memo[key]

    def reserve(self, p: physics.Placement) -> None:
        gpus = list(p.gpus)
        self.reserved_from[gpus] = np.minimum(self.reserved_from[gpus], p.start_s)
        self.version += 1

    def backfill(self, j: int, steps: int) -> physics.Placement | None:
        """An idle placement that finishes before any reservation it borrows starts.

        Reservations count on warm state, so only warm placements may borrow reserved GPUs.
        """
        if self.version == 0:
            return None
        options = self.candidates(j, steps, idle_only=True)
        return _warm_fit(options, steps, lambda gpus: self.reserved_from[list(gpus)].min())


# --- the same decisions on edge, reusing work across decisions (issue 2) ------------------
#
# A decision places up to LOOKAHEAD jobs in turn, each after the reservations of the ones
# before it, and searching candidates for each is what costs. Consecutive decisions see nearly
# the same cluster (a dispatch, a completion, time passing over idle GPUs) and the reservations
# before a job mostly repeat. So each job keeps its last search and a proof that the search's
# best option (or one that has since become better in its place) is still what a search now
# would find best; each decision carries the proof over what changed since the last one
# (``Planner._carry``) and searches afresh only where it breaks. Decisions follow from the best
# options alone, so they are ``plan_simply``'s: tests/unit/policy/test_planner.py checks it.

Kappa = tuple[int, float, int, tuple[int, ...]]
"""What a job's candidates depend on besides the cluster: model, pixels, steps, allowed k."""

Pick = tuple[tuple[int, ...], float, bool]
"""A cross-node pick: the k GPUs that begin first (sorted), the latest of their begins, and
whether every other GPU begins strictly later (if not, np.argpartition broke the tie)."""

MARGIN = 1e-9
"""Relative margin of the lower bounds in ``Planner._carry``: a bound must clear the best option
by this much, far above the few ulps by which sums of the same terms in another order differ."""


class _Search:
    """What the proofs need of one ``EdgePhysics.search``, for a kind of job at one state."""

    __slots__ = ("kappa", "usable", "single", "cross", "best", "clear")

    def __init__(self, kappa: Kappa, found: physics.Search, kind: "_Kind") -> None:
        self.kappa, self.usable, self.cross = kappa, found.usable, found.cross
        steps = kappa[2]
        self.best = _earliest(found.options, steps)
        self.single = {k: (n, float(finish[n]), option) for k, (finish, n, option) in found.single.items()}
        """Per single-node k: the winning node, its search finish and its option."""
        self.clear: dict[int, bool] = {}
        """Per single-node k other than the best's: whether every node's gang of k, whichever
        won, would finish after the best by the margin."""
        if self.best is not None:
            limit = _limit(self.best.finish_s(steps))
            for k, (finish, _, option) in found.single.items():
                self.clear[k] = option is not self.best and bool((finish + kind.extra_arrays[k]).min() > limit)


class _Job:
    """A job's last search, and the state and reservations at which its best still holds."""

    __slots__ = ("search", "state", "excluded", "picks", "best", "own")

    def __init__(
        self, search: _Search, state: "_State", excluded: int, picks: dict[int, Pick | float],
        best: physics.Placement | None, own: tuple[int, int, float] | None,
    ) -> None:
        self.search, self.state, self.excluded = search, state, excluded
        """The search, and where its proof last held: the state and the GPUs reserved before the job."""
        self.picks = picks
        """Per cross-node k: the pick then, or a lower bound (above the best's finish, by the
        margin) on the finish of any cross-node gang of k."""
        self.best = best
        """The best option: the search's, or one that has since become better in its place."""
        self.own = own
        """If the best is a single-node gang: its k, its node and that node's search finish."""

    @classmethod
    def of(cls, search: _Search, state: "_State", excluded: int, picks: dict[int, Pick | float]) -> "_Job":
        best, own = search.best, None
        for k, (won, finish, option) in search.single.items():
            if best is not None and option is best:
                own = (k, won, finish)
        return cls(search, state, excluded, picks, best, own)


class _Cluster:
    """What a cluster's layout fixes: GPUs per node, memory fits, per-node times per job kind."""

    def __init__(self, snap: Snapshot, phys: physics.EdgePhysics) -> None:
        self.layout = (snap.slots, snap.gpu_node, snap.gpu_speed, snap.node_speed, snap.node_link, snap.node_gpu_mem_gb)
        g = snap.n_gpus
        self.n_gpus = g
        self.slots = snap.slots
        self.gpu_node: list[int] = snap.gpu_node.tolist()
        self.gpu_node_array = snap.gpu_node
        self.gpu_speed: list[float] = snap.gpu_speed.tolist()
        self.node_speed: list[float] = snap.node_speed.tolist()
        self.node_gpus = [[x for x in row if x < g] for row in snap.slots.tolist()]
        self.node_bits = [sum(1 << x for x in gpus) for gpus in self.node_gpus]
        self.fits = [snap.node_gpu_mem_gb[snap.gpu_node] >= spec.vram_gb for spec in phys.models]
        self.fits_all = np.stack(self.fits)
        """(M, G) whether each model fits in each GPU's memory."""
        self.fit_bits = [_bits(f) for f in self.fits]
        self.load_s = [(0.0, float(phys.load_s[m]), float(phys.fetch_s[m])) for m in range(len(phys.models))]
        self.load_table = np.array(self.load_s)
        """(M, 3) each model's load time from each tier, as ``EdgePhysics.readiness`` adds it."""
        self.kinds: dict[Kappa, _Kind] = {}

    def matches(self, snap: Snapshot) -> bool:
        now = (snap.slots, snap.gpu_node, snap.gpu_speed, snap.node_speed, snap.node_link, snap.node_gpu_mem_gb)
        if all(a is b for a, b in zip(now, self.layout)):
            return True
        return all(
            a.shape == b.shape and bool(np.all(a == b)) if isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
            else a == b
            for a, b in zip(now, self.layout)
        )

    def kind(self, snap: Snapshot, kappa: Kappa, phys: physics.EdgePhysics) -> "_Kind":
        out = self.kinds.get(kappa)
        if out is None:
            out = self.kinds[kappa] = _Kind(snap, kappa, phys)
        return out


class _Kind:
    """Per-node and per-GPU times of one kind of job, fixed by the layout."""

    def __init__(self, snap: Snapshot, kappa: Kappa, phys: physics.EdgePhysics) -> None:
        m, px, steps, ks = kappa
        self.step_arrays = phys.step_s(snap, m, px, steps, ks)
        """Per single-node k: each node's time for the steps (``EdgePhysics.step_s``)."""
        self.step_s = {k: a.tolist() for k, a in self.step_arrays.items()}
        rendezvous = {k: catalog.GANG_RENDEZVOUS_S if k > 1 else 0.0 for k in ks}
        self.extra_s = {
            k: [phys.placement(m, px, (0,) * k, 0.0, 0, speed, link).fixed_s + rendezvous[k]
                for speed, link in zip(snap.node_speed.tolist(), snap.node_link)]
            for k in self.step_s
        }
        """Per single-node k: what a node's gang adds to its search finish (fixed time, rendezvous)."""
        self.extra_arrays = {k: np.array(v) for k, v in self.extra_s.items()}
        self.cross_s: dict[int, np.ndarray] = {}
        """Per k > 1 and GPU: the least a cross-node gang with that GPU takes once all its
        members could begin (a gang is as slow as its slowest member)."""
        speeds = snap.gpu_speed.tolist()
        for k in ks:
            if k > 1:
                least = {}
                for speed in set(speeds):
                    p = phys.placement(m, px, (0,) * k, 0.0, 0, speed, "network")
                    least[speed] = rendezvous[k] + p.fixed_s + steps * p.per_step_s
                self.cross_s[k] = np.array([least[speed] for speed in speeds])
        self.cross_lists = {k: a.tolist() for k, a in self.cross_s.items()}


class _State:
    """What one decision saw of the cluster, kept for comparing the next decisions against."""

    def __init__(self, snap: Snapshot, cl: _Cluster) -> None:
        self.now = float(snap.now)
        self.ready = np.where(snap.node_up[snap.gpu_node], np.maximum(snap.gpu_free_at, snap.now), INF)
        """(G,) when each GPU is free to launch, inf on nodes that are down."""
        self.tier = np.where(snap.gpu_resident, 0, np.where(snap.node_disk[snap.gpu_node], 1, 2)).T
        """(M, G) each model's cache tier on each GPU."""
        self.cl = cl
        self._begin_all: np.ndarray | None = None
        self._model: dict[int, tuple[list[float], list[float], list[int], int, int]] = {}
        self._deltas: dict[tuple[_State, int], _Delta] = {}
        self._rows: dict[tuple[int, int, int], tuple[list[int], list[float], list[int], list[float]]] = {}
        self._order: dict[int, list[int]] = {}
        self._begin: dict[tuple[int, int], np.ndarray] = {}
        self._warm_idle: dict[int, bool] = {}
        self.readiness: dict[tuple[int, int], physics.Readiness] = {}

    @property
    def ready_pad(self) -> np.ndarray:
        """(G + 1,) ``ready`` padded with inf, for indexing by ``Snapshot.slots``."""
        return np.append(self.ready, INF)

    @property
    def tier_pad(self) -> np.ndarray:
        """(M, G + 1) ``tier`` padded with 0, for indexing by ``Snapshot.slots``."""
        return np.pad(self.tier, ((0, 0), (0, 1)))

    @property
    def begin_all(self) -> np.ndarray:
        """(M, G + 1) when each GPU could begin computing each model (inf where it cannot), padded
        with inf: ``physics.Readiness.begin`` with nothing excluded."""
        if self._begin_all is None:
            cl = self.cl
            out = np.full((len(cl.fits), cl.n_gpus + 1), INF)
            models = np.arange(len(cl.fits))[:, None]
            out[:, :-1] = np.where(cl.fits_all, self.ready + cl.load_table[models, self.tier], INF)
            self._begin_all = out
        return self._begin_all

    def model(self, m: int) -> tuple[list[float], list[float], list[int], int, int]:
        """Per GPU for model m: begin, ready and tier, and bitmasks of the usable and idle GPUs."""
        out = self._model.get(m)
        if out is None:
            begin = self.begin_all[:, :-1]
            usable = np.isfinite(begin)
            idle = usable & (self.ready == self.now)
            ready = self.ready.tolist()
            columns = zip(begin.tolist(), self.tier.tolist(), _rows_bits(usable), _rows_bits(idle))
            for x, (b, t, u, i) in enumerate(columns):
                self._model[x] = (b, ready, t, u, i)
            out = self._model[m]
        return out

    def delta(self, old: "_State", m: int) -> "_Delta":
        out = self._deltas.get((old, m))
        if out is None:
            out = self._deltas[(old, m)] = _Delta(old, self, m)
        return out

    def row(self, n: int, m: int, excluded: int) -> tuple[list[int], list[float], list[int], list[float]]:
        """Node n's gangs for model m, as physics.Readiness has them for one node: its usable
        GPUs by begin and, per k, when the first k are all free, their worst tier and when they
        start computing."""
        key = (n, m, excluded & self.cl.node_bits[n])
        out = self._rows.get(key)
        if out is None:
            begin, ready, tier, _, _ = self.model(m)
            gpus = [g for g in self.cl.node_gpus[n] if begin[g] < INF and not excluded >> g & 1]
            if len(gpus) > 1:
                gpus.sort(key=begin.__getitem__)
            load = self.cl.load_s[m]
            launches, worsts, starts, launch, worst = [], [], [], -INF, 0
            for g in gpus:
                if ready[g] > launch:
                    launch = ready[g]
                if tier[g] > worst:
                    worst = tier[g]
                launches.append(launch)
                worsts.append(worst)
                starts.append(launch + load[worst])
            out = self._rows[key] = (gpus, launches, worsts, starts)
        return out

    def order(self, m: int) -> list[int]:
        """The GPUs model m can use, by begin (ties by index)."""
        out = self._order.get(m)
        if out is None:
            begin = self.model(m)[0]
            out = self._order[m] = sorted((g for g in range(self.cl.n_gpus) if begin[g] < INF), key=begin.__getitem__)
        return out

    def begin(self, m: int, excluded: int) -> np.ndarray:
        """Model m's begin times with the excluded GPUs at inf: physics.Readiness.begin."""
        key = (m, excluded)
        out = self._begin.get(key)
        if out is None:
            out = self.begin_all[m, :-1].copy()
            if excluded:
                out[_mask(excluded, len(out))] = INF
            self._begin[key] = out
        return out

    def settle(self) -> None:
        """Forget what only this decision needs: later ones compare against ready, tier and
        the per-model lists alone, and older states must not stay reachable from here."""
        self._deltas, self._rows, self._order, self._begin, self._warm_idle, self.readiness = {}, {}, {}, {}, {}, {}

    def warm_idle(self, m: int) -> bool:
        """Whether some idle GPU holds model m (else no idle placement of m is warm)."""
        out = self._warm_idle.get(m)
        if out is None:
            out = self._warm_idle[m] = bool(np.any((self.ready == self.now) & self.cl.fits[m] & (self.tier[m] == 0)))
        return out


class _Delta:
    """What changed for model m between two states, shared by every job carried across them."""

    VECTORISE = 8
    """Compare nodes with numpy when more than this many changed, one by one otherwise."""

    def __init__(self, old: _State, new: _State, m: int) -> None:
        cl = new.cl
        changed = np.flatnonzero(((old.ready != new.ready) | (old.tier[m] != new.tier[m])) & cl.fits[m])
        self.gpus = set(changed.tolist())
        """GPUs whose readiness or tier changed."""
        self.nodes = {cl.gpu_node[g] for g in self.gpus}
        # A node's search finishes can only have grown if its GPUs are ready no earlier, with the
        # same tiers and the same ones usable, and are still in the same order by begin: then
        # each gang of its first k GPUs is the same gang, launching no earlier.
        begin, ready, tier = new.model(m)[:3]
        if len(self.nodes) <= self.VECTORISE:
            old_begin, old_ready, old_tier = old.model(m)[:3]
            self.rough = []
            """Changed nodes whose search finishes may have dropped."""
            for n in sorted(self.nodes):
                gpus = cl.node_gpus[n]
                if not all((begin[g] < INF) == (old_begin[g] < INF) and tier[g] == old_tier[g]
                           and ready[g] >= old_ready[g] for g in gpus) \
                        or sorted(gpus, key=begin.__getitem__) != sorted(gpus, key=old_begin.__getitem__):
                    self.rough.append(n)
        else:
            nodes = np.array(sorted(self.nodes))
            rows = cl.slots[nodes]
            before, after = old.begin_all[m][rows], new.begin_all[m][rows]
            later = (
                (np.isfinite(before) == np.isfinite(after)).all(axis=1)
                & (old.tier_pad[m][rows] == new.tier_pad[m][rows]).all(axis=1)
                & (new.ready_pad[rows] >= old.ready_pad[rows]).all(axis=1)
                & (np.argsort(before, axis=1, kind="stable") == np.argsort(after, axis=1, kind="stable")).all(axis=1)
            )
            self.rough = nodes[~later].tolist()
        self.first = min((begin[g] for g in self.gpus), default=INF)
        """The earliest begin of a changed GPU."""
        self._begin = begin
        self._cross: dict[tuple[_Kind, int], float] = {}

    def cross_low(self, kind: _Kind, k: int) -> float:
        """The least finish a cross-node gang of k with a changed GPU could have, from below."""
        out = self._cross.get((kind, k))
        if out is None:
            begin, least = self._begin, kind.cross_lists[k]
            out = self._cross[(kind, k)] = min((begin[g] + least[g] for g in self.gpus), default=INF)
        return out


class Planner:
    """``plan_simply`` on edge, searching only where a job's last search no longer holds."""

    ROUGH_NODES = 6
    """Search afresh, vectorised, rather than price more changed nodes than this one by one."""

    def __init__(self) -> None:
        self.phys = physics.EdgePhysics()
        self.cluster: _Cluster | None = None
        self.jobs: dict[int, _Job] = {}
        self.latest: dict[Kappa, _Job] = {}

    def decide(self, snap: Snapshot, jobs: list[int]) -> Decision | None:
        cl = self.cluster
        if cl is None or not cl.matches(snap):
            cl = self.cluster = _Cluster(snap, self.phys)
            self.jobs, self.latest = {}, {}
        known, latest = self.jobs, self.latest
        if len(known) > 4 * LOOKAHEAD:
            window = set(snap.job_id.tolist())
            known = self.jobs = {i: r for i, r in known.items() if i in window}
        st = _State(snap, cl)
        try:
            return self._plan(snap, jobs, st, known, latest)
        finally:
            st.settle()

    def _plan(
        self, snap: Snapshot, jobs: list[int], st: "_State", known: dict[int, _Job], latest: dict[Kappa, _Job],
    ) -> Decision | None:
        now = st.now
        excluded = 0
        reserved_from: dict[int, float] = {}
        idle: dict[Kappa, list[physics.Placement]] = {}
        ids, kinds = snap.job_id.tolist(), _kinds(snap)
        for j in jobs:
            kappa = kinds[j]
            job = known.get(ids[j])
            if job is None or job.search.kappa != kappa:
                job = latest.get(kappa)
            if job is not None:
                job = self._carry(job, excluded, st, snap)
            if job is None:
                job = self._search(snap, j, kappa, excluded, st)
            known[ids[j]] = latest[kappa] = job
            best = job.best
            if best is not None and best.start_s <= now:
                return _dispatch(snap, j, best)
            if excluded and st.warm_idle(kappa[0]):
                backfill = self._backfill(snap, j, kappa, reserved_from, idle)
                if backfill is not None:
                    return _dispatch(snap, j, backfill)
            if best is not None and not best.cold:
                for g in best.gpus:
                    excluded |= 1 << g
                    reserved_from[g] = min(reserved_from.get(g, INF), best.start_s)
        return None

    def _search(self, snap: Snapshot, j: int, kappa: Kappa, excluded: int, st: _State) -> _Job:
        m = kappa[0]
        r = st.readiness.get((m, excluded))
        if r is None:
            exclude = _mask(excluded, snap.n_gpus) if excluded else None
            r = st.readiness[(m, excluded)] = self.phys.readiness(snap, m, False, exclude)
        kind = st.cl.kind(snap, kappa, self.phys)
        search = _Search(kappa, self.phys.search(snap, j, kappa[2], r, kind.step_arrays), kind)
        picks: dict[int, Pick | float] = {}
        for k, (pick, last, strict, option) in search.cross.items():
            picks[k] = (pick, last, strict)
            if search.best is not None and option is not search.best:
                low = float(np.partition(r.begin + kind.cross_s[k], k - 1)[k - 1])
                if low > _limit(search.best.finish_s(kappa[2])):
                    picks[k] = low
        return _Job.of(search, st, excluded, picks)

    def _carry(self, job: _Job, excluded: int, st: _State, snap: Snapshot) -> _Job | None:
        """The job's search, if its best is still what a search here would find best, else None.

        Every other option either is still the search's, exactly, or is shown from below to
        finish after the best by the margin: a node's gang of k finishes no earlier than the
        node's search finish plus the gang's fixed time and rendezvous; a cross-node gang no
        earlier than, for each member, its begin plus the least a gang that slow takes, so no
        earlier than the k-th least of those over all GPUs. The proof is carried from where it
        last held, so only what changed since is looked at; a node whose search finishes can
        only have grown (``_Delta.rough``) cannot overtake anything it was behind.
        """
        search = job.search
        m, px, steps, ks = search.kappa
        cl = st.cl
        delta = st.delta(job.state, m) if job.state is not st else None
        reserved = (excluded ^ job.excluded) & cl.fit_bits[m]
        if (delta is None or not delta.gpus) and not reserved:
            return job if job.state is st and excluded == job.excluded else \
                _Job(search, st, excluded, job.picks, job.best, job.own)
        best = job.best
        if best is None:
            return None
        begin, _, _, usable, _ = st.model(m)
        count = (usable & ~excluded).bit_count()
        if count != search.usable and any((k <= count) != (k <= search.usable) for k in ks):
            return None  # a different set of k would be searched
        gpus: set[int] = set() if delta is None else delta.gpus
        nodes: set[int] = set() if delta is None else delta.nodes
        rough: list[int] = [] if delta is None else delta.rough
        swapped = []  # GPUs reserved before the job then and not now, or the other way round
        if reserved:
            swapped = [g for g in range(cl.n_gpus) if reserved >> g & 1]
            swapped_nodes = {cl.gpu_node[g] for g in swapped}
            gpus, nodes = gpus | set(swapped), nodes | swapped_nodes
            rough = rough + [n for n in swapped_nodes if n not in rough]
        if len(rough) > self.ROUGH_NODES:
            return None  # pricing them one by one costs more than a search
        kind = cl.kind(snap, search.kappa, self.phys)
        rows = [(n, st.row(n, m, excluded)) for n in rough]
        own = job.own
        if own is not None:  # the best's own k: still its node's gang, or a better one there
            k, won, finish = own
            times = kind.step_s[k]
            win, f_win = won, finish
            if won in nodes:
                start = st.row(won, m, excluded)[3]
                f_win = start[k - 1] + times[won] if k <= len(start) else INF
                if f_win > finish:
                    return None  # it fell back: any node may win k now
            for n, (_, _, _, start) in rows:
                if n != won and k <= len(start):
                    f = start[k - 1] + times[n]
                    if f < f_win or (f == f_win and n < win):
                        win, f_win = n, f
            if win != won or won in nodes:
                ranked, launch, worst, _ = st.row(win, m, excluded)
                there = self.phys.placement(m, px, tuple(ranked[:k]), launch[k - 1], worst[k - 1],
                                            cl.node_speed[win], snap.node_link[win])
                if there != best:
                    if not there.finish_s(steps) < best.finish_s(steps):
                        return None
                    best = there  # earlier than every other option, as the old best was
                own = (k, win, f_win)
        limit = _limit(best.finish_s(steps))
        for k, (won, finish, option) in search.single.items():
            if own is not None and k == own[0]:
                continue
            times = kind.step_s[k]
            if search.clear[k]:  # whichever node wins k, its gang finishes after the best
                extra = kind.extra_s[k]
                for n, (_, _, _, start) in rows:
                    if k <= len(start) and start[k - 1] + times[n] + extra[n] <= limit:
                        return None
                continue
            if won in nodes:  # k's option is still the search's: its node's gang is the same
                if option is None:
                    return None
                ranked, launch, _, start = st.row(won, m, excluded)
                if k > len(ranked) or tuple(ranked[:k]) != option.gpus or launch[k - 1] != option.start_s \
                        or start[k - 1] + times[won] != finish:
                    return None
            for n, (_, _, _, start) in rows:  # and every changed node is still behind it
                if n != won:
                    f = start[k - 1] + times[n] if k <= len(start) else INF
                    if f < finish or (f == finish and n < won):
                        return None
        picks = job.picks
        first = INF if delta is None else delta.first
        for g in swapped:
            if begin[g] < first and not excluded >> g & 1:
                first = begin[g]
        for k, (pick, last, strict, option) in search.cross.items():
            held = picks[k]
            if isinstance(held, tuple):  # the pick itself: it stands if no changed GPU is in or before it
                if held[2] and first > held[1] and not any(g in gpus for g in held[0]):
                    continue
            else:  # a bound on the finish of any cross-node gang of k
                low = held if delta is None else min(held, delta.cross_low(kind, k))
                least = kind.cross_lists[k]
                for g in swapped:
                    if not excluded >> g & 1 and begin[g] + least[g] < low:
                        low = begin[g] + least[g]
                if low > limit:
                    if low != held:
                        if picks is job.picks:
                            picks = dict(picks)
                        picks[k] = low
                    continue
            new, option_now = self._pick(m, px, k, excluded, st)
            if option is search.best and own is None:
                if new[0] != pick or any(g in gpus for g in pick):
                    return None
            elif option_now is not None and option_now.finish_s(steps) <= limit:
                return None
            if picks is job.picks:
                picks = dict(picks)
            picks[k] = new
        return _Job(search, st, excluded, picks, best, own)

    def _pick(self, m: int, px: float, k: int, excluded: int, st: _State) -> tuple[Pick, physics.Placement | None]:
        """``EdgePhysics.search``'s cross-node pick for k, and its option."""
        begin, ready, tier, _, _ = st.model(m)
        chosen: list[int] = []
        after = INF
        for g in st.order(m):
            if not excluded >> g & 1:
                if len(chosen) == k:
                    after = begin[g]
                    break
                chosen.append(g)
        last = begin[chosen[-1]]
        strict = after > last
        if not strict:  # np.argpartition breaks the tie: ask it, on the array a search builds
            chosen = np.argpartition(st.begin(m, excluded), k - 1)[:k].tolist()
        pick = tuple(sorted(chosen))
        cl = st.cl
        option = None
        if len({cl.gpu_node[g] for g in pick}) > 1:
            option = self.phys.placement(m, px, pick, max(ready[g] for g in pick), max(tier[g] for g in pick),
                                         min(cl.gpu_speed[g] for g in pick), "network")
        return (pick, last, strict), option

    def _backfill(
        self, snap: Snapshot, j: int, kappa: Kappa, reserved_from: dict[int, float],
        idle: dict[Kappa, list[physics.Placement]],
    ) -> physics.Placement | None:
        """``_Plans.backfill``, once some idle GPU holds the model (else nothing idle is warm)."""
        options = idle.get(kappa)
        if options is None:
            options = idle[kappa] = self.phys.candidates(snap, j, kappa[2], idle_only=True)
        return _warm_fit(options, kappa[2], lambda gpus: min(reserved_from.get(g, INF) for g in gpus))


def _limit(finish: float) -> float:
    """What a lower bound must exceed to show an option finishes after one finishing at ``finish``."""
    return finish + MARGIN * max(1.0, abs(finish))


def _kinds(snap: Snapshot) -> list[Kappa]:
    """Each window job's kind, read once (``reference_steps`` and ``Snapshot.allowed_k``)."""
    ks: dict[tuple[int, int], tuple[int, ...]] = {}
    out = []
    for m, px, k, k_max, low, high, due in zip(
        snap.job_model.tolist(), snap.job_pixels.tolist(), snap.job_k.tolist(), snap.job_k_max.tolist(),
        snap.job_steps_min.tolist(), snap.job_steps_max.tolist(), snap.job_deadline_s.tolist(),
    ):
        steps = min(max(DEFAULT_STEPS, low), high) if math.isinf(due) else high
        allowed = ks.get((k, k_max))
        if allowed is None:
            allowed = ks[(k, k_max)] = (k,) if k else tuple(c for c in snap.k_choices if c <= k_max)
        out.append((m, float(px), steps, allowed))
    return out


def _rows_bits(mask: np.ndarray) -> list[int]:
    """Each row of a boolean matrix as an integer bitmask."""
    width = (mask.shape[1] + 7) // 8
    raw = np.packbits(mask, axis=1, bitorder="little").tobytes()
    return [int.from_bytes(raw[i * width:(i + 1) * width], "little") for i in range(mask.shape[0])]


def _bits(mask: np.ndarray) -> int:
    """A boolean array as an integer bitmask (bit g set where mask[g])."""
    return int.from_bytes(np.packbits(mask, bitorder="little").tobytes(), "little")


def _mask(bits: int, n: int) -> np.ndarray:
    """An integer bitmask as a boolean array of length n."""
    raw = np.frombuffer(bits.to_bytes((n + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, count=n, bitorder="little").astype(bool)


def reference_steps(snap: Snapshot, j: int) -> int:
    """Steps at which placements are compared: the most the job allows if it has a deadline."""
    if np.isinf(snap.job_deadline_s[j]):
        return min(max(DEFAULT_STEPS, int(snap.job_steps_min[j])), int(snap.job_steps_max[j]))
    return int(snap.job_steps_max[j])
