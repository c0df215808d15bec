"""``cache_aware.plan_simply`` on edge, compiled with numba: the same decisions, ~24× faster.

One call plans one decision over the policy's window of jobs, exactly as ``plan_simply`` does
with ``EdgePhysics``: per job, the model's readiness after the reservations so far (each
node's GPUs ranked by when they could begin, the gang of its first k), the earliest-finishing
option over the allowed k (the best node's gang, or the k GPUs that begin first across
nodes), dispatch if it can start now, else backfill or reserve. Each operation is the same
IEEE operation in the same order as the numpy code, so finish times and ties come out
bit-identical; tests/unit/policy/test_planner.py checks it decision by decision.

What depends on the job's kind and the cluster's layout only (per-step and fixed seconds of a
gang, from ``EdgePhysics``) comes in as tables, computed in Python once per kind.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # the operator image plans with plan_simply instead
    numba = None

INF = np.inf

NO_KIND = -2
"""``plan``'s status when a window job's kind has no table row yet (the caller adds it)."""


def _jit(fn):
    if numba is None:
        return fn
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # nowhere writable to cache (set NUMBA_CACHE_DIR): compile per process
        return numba.njit(nogil=True)(fn)


@_jit
def _readiness(m, now, free_at, node_up, resident, disk, disk_ready, gpu_node, slots, fits, load, excluded, idle_only,
               ready, tier, begin, order, ranked, launch, worst, setup):
    """``EdgePhysics.readiness`` into the buffers, and all GPUs by begin (ties by index) in
    ``order``; returns how many GPUs are usable (they lead ``order``)."""
    n_gpus = free_at.shape[0]
    usable = 0
    for g in range(n_gpus):
        r = max(free_at[g], now)
        node = gpu_node[g]
        if not node_up[node] or not fits[m, g] or excluded[g] or (idle_only and free_at[g] > now):
            r = INF
        t = 0 if resident[g, m] else (1 if disk[node, m] else 2)
        if t == 1:
            r = max(r, disk_ready[node, m])
        ready[g], tier[g], begin[g] = r, t, r + load[m, t]
        if begin[g] < INF:
            usable += 1
    ready[n_gpus], tier[n_gpus], begin[n_gpus] = INF, 0, INF
    order[:] = np.argsort(begin[:n_gpus], kind="mergesort")
    for n in range(slots.shape[0]):
        _rank_node(n, m, slots, load, ready, tier, begin, ranked, launch, worst, setup)
    return usable


@_jit
def _exclude(m, gpus, usable, gpu_node, slots, load, ready, tier, begin, order, ranked, launch, worst, setup):
    """``_readiness`` after ``gpus`` are excluded too, re-ranking only their nodes."""
    for g in gpus:
        if begin[g] < INF:
            ready[g], begin[g] = INF, INF
            i = 0
            while order[i] != g:
                i += 1
            for h in range(i, usable - 1):
                order[h] = order[h + 1]
            usable -= 1
    for g in gpus:
        _rank_node(gpu_node[g], m, slots, load, ready, tier, begin, ranked, launch, worst, setup)
    return usable


@_jit
def _rank_node(n, m, slots, load, ready, tier, begin, ranked, launch, worst, setup):
    """Node n's GPUs by begin (a stable insertion sort of its slots) and its gangs of the first k."""
    width = slots.shape[1]
    for w in range(width):
        x = slots[n, w]
        i = w - 1
        while i >= 0 and begin[ranked[n, i]] > begin[x]:
            ranked[n, i + 1] = ranked[n, i]
            i -= 1
        ranked[n, i + 1] = x
    last, most = -INF, 0
    for w in range(width):
        x = ranked[n, w]
        last, most = max(last, ready[x]), max(most, tier[x])
        launch[n, w], worst[n, w], setup[n, w] = last, most, last + load[m, most]


@_jit
def _best(c, m, steps, usable, ready, tier, order, ranked, launch, worst, setup, gpu_node, gpu_speed, speed_id,
          load, kind_ks, single_step, single_per_step, single_fixed, cross_per_step, cross_fixed, rendezvous,
          reserved_from, warm_only, picked, out):
    """The option ``_earliest`` picks among ``EdgePhysics.search``'s for a job of kind c, or
    with ``warm_only`` the one ``_warm_fit`` picks. Returns (found, k, node or -1 for a
    cross-node gang, launch, worst tier) and its GPUs in ``out``."""
    n_nodes, width = ranked.shape
    best_finish, best_k, best_node, best_launch, best_worst = INF, 0, -2, 0.0, 0
    for ki in range(kind_ks.shape[1]):
        k = kind_ks[c, ki]
        if k == 0 or k > usable:
            continue
        if k <= width:  # the node whose first k GPUs finish computing first
            node, earliest = 0, INF
            for n in range(n_nodes):
                f = setup[n, k - 1] + single_step[c, ki, n]
                if f < earliest:
                    node, earliest = n, f
            if earliest < INF:
                start, most = launch[node, k - 1], worst[node, k - 1]
                startup = load[m, most] + (rendezvous if k > 1 else 0.0)
                finish = start + ((startup + single_fixed[c, ki, node]) + steps * single_per_step[c, ki, node])
                if _better(finish, k, best_finish, best_k, most, warm_only, reserved_from, ranked[node, :k]):
                    best_finish, best_k, best_node, best_launch, best_worst = finish, k, node, start, most
                    out[:k] = ranked[node, :k]
        if k > 1:  # the k GPUs that begin first anywhere (ties by index), if on several nodes
            picked[:k] = order[:k]
            for i in range(1, k):  # sorted, as the placement lists them
                x, h = picked[i], i - 1
                while h >= 0 and picked[h] > x:
                    picked[h + 1] = picked[h]
                    h -= 1
                picked[h + 1] = x
            spans, start, most, slowest = False, -INF, 0, picked[0]
            for i in range(k):
                g = picked[i]
                spans |= gpu_node[g] != gpu_node[picked[0]]
                start, most = max(start, ready[g]), max(most, tier[g])
                if gpu_speed[g] < gpu_speed[slowest]:
                    slowest = g
            if spans:
                s = speed_id[slowest]
                startup = load[m, most] + rendezvous
                finish = start + ((startup + cross_fixed[c, ki, s]) + steps * cross_per_step[c, ki, s])
                if _better(finish, k, best_finish, best_k, most, warm_only, reserved_from, picked[:k]):
                    best_finish, best_k, best_node, best_launch, best_worst = finish, k, -1, start, most
                    out[:k] = picked[:k]
    return best_k > 0, best_k, best_node, best_launch, best_worst


@_jit
def _better(finish, k, best_finish, best_k, most, warm_only, reserved_from, gpus):
    """Whether an option beats the best so far (earlier, then fewer patches; the first listed on
    a tie); with ``warm_only``, only warm options that end before their GPUs' first reservation."""
    if warm_only:
        if most != 0:
            return False
        for g in gpus:
            if finish > reserved_from[g]:
                return False
    return finish < best_finish or (finish == best_finish and k < best_k)


@_jit
def plan(now, free_at, node_up, resident, disk, disk_ready, window, job_model, job_pixels, job_deadline, job_steps_min,
         job_steps_max, job_k, job_k_max, default_steps, gpu_node, gpu_speed, speed_id, slots, fits, load,
         kind_key, kind_ks, single_step, single_per_step, single_fixed, cross_per_step, cross_fixed, rendezvous,
         out):
    """One decision of ``plan_simply`` for the window jobs (indices into the job arrays, in the
    policy's order). Returns (window position or -1 to wait, k, node or -1 for a cross-node
    gang, launch, worst tier), the GPUs in ``out``; or (``NO_KIND``, position, ...) when that
    window job's kind needs a table row first.

    ``kind_key`` rows are (model, pixels, steps, demanded k, most k) of the tabled kinds;
    ``out`` must hold the largest k."""
    n_gpus = free_at.shape[0]
    n_models = load.shape[0]
    n_nodes, width = slots.shape
    kinds = np.empty(window.shape[0], np.int64)
    for p in range(window.shape[0]):
        j = window[p]
        steps = job_steps_max[j]
        if job_deadline[j] == INF:  # physics.default_steps_of
            steps = min(max(default_steps, job_steps_min[j]), job_steps_max[j])
        kinds[p] = -1
        for c in range(kind_key.shape[0]):
            row = kind_key[c]
            if row[0] == job_model[j] and row[1] == job_pixels[j] and row[2] == steps and row[3] == job_k[j] \
                    and row[4] == job_k_max[j]:
                kinds[p] = c
                break
        if kinds[p] < 0:
            return NO_KIND, p, 0, 0.0, 0

    # Per model: readiness after the reservations so far (recomputed when they change), and
    # idle-only readiness for backfilling (computed once).
    shape = (2, n_models)
    ready = np.empty(shape + (n_gpus + 1,))
    tier = np.empty(shape + (n_gpus + 1,), np.int64)
    begin = np.empty(shape + (n_gpus + 1,))
    order = np.empty(shape + (n_gpus,), np.int64)
    ranked = np.empty(shape + (n_nodes, width), np.int64)
    launch = np.empty(shape + (n_nodes, width))
    worst = np.empty(shape + (n_nodes, width), np.int64)
    setup = np.empty(shape + (n_nodes, width))
    usable = np.empty(shape, np.int64)
    seen = np.full(shape, -1)  # how many reserved GPUs each has excluded
    excluded = np.zeros(n_gpus, np.bool_)
    none_excluded = np.zeros(n_gpus, np.bool_)
    reserved_from = np.full(n_gpus, INF)
    reserved = np.empty(n_gpus, np.int64)  # the GPUs reserved so far, in order
    reservations = 0
    warm_idle = np.zeros(n_models, np.bool_)  # some idle GPU holds the model (else no backfill is warm)
    picked = np.empty(out.shape[0], np.int64)
    found = np.empty(out.shape[0], np.int64)
    passed = np.full(kind_key.shape[0], -1)  # the reservation count a job of each kind was passed over at
    for p in range(window.shape[0]):
        c = kinds[p]
        if passed[c] == reservations:
            continue  # a job of its kind saw this very state and neither ran nor reserved
        passed[c] = reservations
        m = job_model[window[p]]
        steps = kind_key[c, 2]
        if seen[0, m] < 0:
            usable[0, m] = _readiness(m, now, free_at, node_up, resident, disk, disk_ready, gpu_node, slots, fits, load, excluded,
                                      False, ready[0, m], tier[0, m], begin[0, m], order[0, m], ranked[0, m], launch[0, m],
                                      worst[0, m], setup[0, m])
        elif seen[0, m] < reservations:
            usable[0, m] = _exclude(m, reserved[seen[0, m]:reservations], usable[0, m], gpu_node, slots, load,
                                    ready[0, m], tier[0, m], begin[0, m], order[0, m], ranked[0, m], launch[0, m], worst[0, m],
                                    setup[0, m])
        seen[0, m] = reservations
        ok, k, node, start, most = _best(
            c, m, steps, usable[0, m], ready[0, m], tier[0, m], order[0, m], ranked[0, m], launch[0, m],
            worst[0, m], setup[0, m], gpu_node, gpu_speed, speed_id, load, kind_ks, single_step, single_per_step,
            single_fixed, cross_per_step, cross_fixed, rendezvous, reserved_from, False, picked, found)
        if ok and start <= now:
            out[:k] = found[:k]
            return p, k, node, start, most
        if reservations and seen[1, m] < 0:  # idle GPUs, for backfilling
            usable[1, m] = _readiness(m, now, free_at, node_up, resident, disk, disk_ready, gpu_node, slots, fits, load,
                                      none_excluded, True, ready[1, m], tier[1, m], begin[1, m], order[1, m],
                                      ranked[1, m], launch[1, m], worst[1, m], setup[1, m])
            seen[1, m] = 0
            for g in range(n_gpus):
                warm_idle[m] |= tier[1, m, g] == 0 and ready[1, m, g] < INF
        if reservations and warm_idle[m]:  # a warm idle option that ends before the reservations it borrows
            fits_in, k2, node2, start2, most2 = _best(
                c, m, steps, usable[1, m], ready[1, m], tier[1, m], order[1, m], ranked[1, m], launch[1, m],
                worst[1, m], setup[1, m], gpu_node, gpu_speed, speed_id, load, kind_ks, single_step,
                single_per_step, single_fixed, cross_per_step, cross_fixed, rendezvous, reserved_from, True,
                picked, out)
            if fits_in:
                return p, k2, node2, start2, most2
        if ok and most == 0:  # reserve a warm plan's GPUs (a cold plan is not worth idling them for)
            for i in range(k):
                g = found[i]
                excluded[g] = True
                reserved_from[g] = min(reserved_from[g], start)
                reserved[reservations] = g
                reservations += 1
    return -1, 0, 0, 0.0, 0
