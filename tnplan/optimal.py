"""Exact search: dynamic programming over connected sub-networks with an iterated cost cap.

The search space is every contraction tree without outer products inside a connected component
(the convention of opt_einsum's ``dp`` and cotengra's ``optimal``); components are joined at the end
by outer products, smallest first. Small networks (:data:`ALL_TREES_MAX_TENSORS`) are searched over
every tree instead (:func:`solve_all_trees`), outer products included. A sub-network is a bitmask
of tensors (so at most 64 tensors); for each one the DP keeps the cheapest way found to contract
it. The cap bounds the *cumulative* cost of a sub-solution, so when a full solution is found under
a cap it is provably optimal (Pfeifer, Haegeman & Verstraete 2014). Work is counted in pair checks,
which makes the search deterministic and lets the caller turn a time budget into a work budget.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from tnplan.cost import leaf_legs, legs_path_cost
from tnplan.network import Network

MAX_TENSORS = 64
_OBJECTIVE_CODES = {"flops": 0, "size": 1, "write": 2, "combo": 3}
# Pair checks per second of the compiled kernel on a slow core; converts time budgets to work.
PAIRS_PER_SECOND = 5.0e7


@dataclass(frozen=True)
class OptimalResult:
    """An exact search outcome: the SSA path and whether optimality was proven within the budget."""

    ssa_path: list[tuple[int, int]] | None
    optimal: bool
    work: int


@numba.njit(cache=True, inline="always")
def _combined(objective, pa, pb, qa, qb, step, out_size):  # pragma: no cover - jitted
    """(primary, secondary) cost of joining two parts: flops, size (then flops), write or combo."""
    if objective == 0:
        return pa + pb + step, 0.0
    if objective == 1:
        return max(pa, pb, out_size), qa + qb + step
    if objective == 2:
        return pa + pb + out_size, 0.0
    return pa + pb + step + 64.0 * out_size, 0.0


@numba.njit(cache=True, nogil=True)
def _dp_kernel(
    n, tensor_legs, idx_tensors, sizes, is_out, adjacent, objective, cap, max_work, max_size
):  # pragma: no cover - jitted
    W = tensor_legs.shape[1]
    capacity = 1024
    masks = np.empty(capacity, np.uint64)
    prim = np.empty(capacity, np.float64)
    sec = np.empty(capacity, np.float64)
    left = np.empty(capacity, np.int64)
    right = np.empty(capacity, np.int64)
    legs = np.empty((capacity, W), np.uint64)
    lsize = np.empty(capacity, np.float64)
    hkeys = np.zeros(4096, np.uint64)
    hvals = np.empty(4096, np.int64)
    one = np.uint64(1)
    for t in range(n):
        masks[t] = one << np.uint64(t)
        prim[t] = 0.0
        sec[t] = 0.0
        left[t] = -1
        right[t] = -1
        legs[t, :] = tensor_legs[t, :]
        lsize[t] = 1.0
        for w in range(W):
            bits = tensor_legs[t, w]
            while bits:
                low = bits & (~bits + one)
                lsize[t] *= sizes[w * 64 + trailing_zeros(low)]
                bits ^= low
        _hput(hkeys, hvals, masks[t], t)
    count = n
    full = np.uint64(0)
    for t in range(n):
        full |= one << np.uint64(t)
    final_out = 1.0
    for k in range(is_out.shape[0]):
        if is_out[k]:
            final_out *= sizes[k]
    level_lo = np.zeros(n + 1, np.int64)
    level_hi = np.zeros(n + 1, np.int64)
    level_lo[1] = 0
    level_hi[1] = n
    work = 0
    shared = np.empty(W, np.uint64)
    nbr = np.zeros(n, np.uint64)
    for t in range(n):
        for w in range(W):
            bits = tensor_legs[t, w]
            b = 0
            while bits:
                if bits & one and adjacent[w * 64 + b]:
                    nbr[t] |= idx_tensors[w * 64 + b]
                bits >>= one
                b += 1
        nbr[t] &= ~(one << np.uint64(t))
    # Per level and per tensor, the stored sub-networks containing that tensor (CSR), so a
    # sub-network's partners are found through its neighbours instead of by scanning a level.
    csr_ids = np.empty(1024, np.int64)
    csr_n = 0
    csr_lo = np.zeros((n + 1, n), np.int64)
    csr_hi = np.zeros((n + 1, n), np.int64)
    for t in range(n):
        csr_lo[1, t] = csr_n
        csr_ids[csr_n] = t
        csr_n += 1
        csr_hi[1, t] = csr_n
    for m in range(2, n + 1):
        level_lo[m] = count
        for k in range(1, m // 2 + 1):
            # Walk the larger side and find partners on the smaller side through its neighbours:
            # for k = 1 that visits each adjacent (tensor, sub-network) pair exactly once.
            a0, a1 = level_lo[m - k], level_hi[m - k]
            for i in range(a0, a1):
                # Every visit and every stored sub-network counts as work, so the budget bounds
                # wall time whatever the network's shape.
                work += m
                if work > max_work:
                    return -2, masks[:count], left[:count], right[:count], prim[:count], work
                s1 = masks[i]
                nb = _neighbours(s1, nbr) & ~s1
                base = prim[i] if objective != 1 else 0.0
                nbits = nb
                t = 0
                while nbits:
                    if not nbits & one:
                        nbits >>= one
                        t += 1
                        continue
                    tb = one << np.uint64(t)
                    nbits >>= one
                    t += 1
                    for r in range(csr_lo[k, t - 1], csr_hi[k, t - 1]):
                        j = csr_ids[r]
                        work += 1
                        # Lists are sorted by cost, so no later partner fits under the cap either.
                        if prim[j] + base > cap:
                            break
                        if k == m - k and j >= i:
                            continue
                        s2 = masks[j]
                        if s1 & s2:
                            continue
                        x = s2 & nb
                        if (x & (~x + one)) != tb:
                            continue
                        s = s1 | s2
                        # Only shared indices can be summed: walk their set bits; every other
                        # factor of the step comes from the stored sizes of both sides.
                        shared_size = 1.0
                        removed = 1.0
                        summed = False
                        for w in range(W):
                            bits = legs[i, w] & legs[j, w]
                            shared[w] = bits
                            while bits:
                                low = bits & (~bits + one)
                                idx = w * 64 + trailing_zeros(low)
                                bits ^= low
                                work += 1
                                shared_size *= sizes[idx]
                                if not is_out[idx] and (idx_tensors[idx] & ~s) == 0:
                                    removed *= sizes[idx]
                                    summed = True
                        involved = lsize[i] * lsize[j] / shared_size
                        out_size = involved / removed
                        if out_size > max_size:
                            continue
                        # The cost model doubles a step that sums any index, even one of size 1.
                        step = involved * 2.0 if summed else involved
                        p, qq = _combined(objective, prim[i], prim[j], sec[i], sec[j], step, out_size)
                        if p > cap:
                            continue
                        if s != full and objective != 1:
                            # A partial result is consumed by at least one more step costing at
                            # least its own size and the final result's size: prune on that too.
                            rest = out_size if out_size > final_out else final_out
                            if objective == 2:
                                rest = final_out
                            elif objective == 3:
                                rest += 64.0 * final_out
                            if p + rest > cap:
                                continue
                        pos = _hget(hkeys, hvals, s)
                        if pos == -1:
                            if count == capacity:
                                capacity *= 2
                                masks = _grown(masks, capacity)
                                prim = _grown(prim, capacity)
                                sec = _grown(sec, capacity)
                                lsize = _grown(lsize, capacity)
                                left = _grown(left, capacity)
                                right = _grown(right, capacity)
                                nl = np.empty((capacity, W), np.uint64)
                                nl[:count, :] = legs[:count, :]
                                legs = nl
                            pos = count
                            count += 1
                            work += 64
                            if 2 * count > hkeys.shape[0]:
                                hkeys, hvals = _hgrow(hkeys, hvals)
                            _hput(hkeys, hvals, s, pos)
                            masks[pos] = s
                        elif p > prim[pos] or (p == prim[pos] and qq >= sec[pos]):
                            continue
                        prim[pos] = p
                        sec[pos] = qq
                        left[pos] = i
                        right[pos] = j
                        lsize[pos] = out_size
                        for w in range(W):
                            lw = legs[i, w] | legs[j, w]
                            bits = shared[w]
                            while bits:
                                low = bits & (~bits + one)
                                idx = w * 64 + trailing_zeros(low)
                                bits ^= low
                                if not is_out[idx] and (idx_tensors[idx] & ~s) == 0:
                                    lw &= ~low
                            legs[pos, w] = lw
            if work > max_work:
                return -2, masks[:count], left[:count], right[:count], prim[:count], work
        level_hi[m] = count
        stored = level_hi[m] - level_lo[m]
        # Building and sorting this level's per-tensor lists costs about n passes plus a sort.
        work += 4 * n * stored + 8 * stored * int(np.log2(stored + 1))
        if work > max_work:
            return -2, masks[:count], left[:count], right[:count], prim[:count], work
        for t in range(n):
            csr_lo[m, t] = csr_n
            tb = one << np.uint64(t)
            for e in range(level_lo[m], level_hi[m]):
                if masks[e] & tb:
                    if csr_n == csr_ids.shape[0]:
                        csr_ids = _grown(csr_ids, 2 * csr_n)
                    csr_ids[csr_n] = e
                    csr_n += 1
            csr_hi[m, t] = csr_n
            lo = csr_lo[m, t]
            order = np.argsort(prim[csr_ids[lo:csr_n]], kind="mergesort")
            csr_ids[lo:csr_n] = csr_ids[lo:csr_n][order]
    root = _hget(hkeys, hvals, full)
    return root, masks[:count], left[:count], right[:count], prim[:count], work


@numba.njit(cache=True, inline="always")
def _hslot(hkeys, key):  # pragma: no cover - jitted
    mask = np.uint64(hkeys.shape[0] - 1)
    h = (key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(17)
    h &= mask
    while hkeys[h] != 0 and hkeys[h] != key:
        h = (h + np.uint64(1)) & mask
    return h


@numba.njit(cache=True)
def _hget(hkeys, hvals, key):  # pragma: no cover - jitted
    h = _hslot(hkeys, key)
    if hkeys[h] == 0:
        return -1
    return hvals[h]


@numba.njit(cache=True)
def _hput(hkeys, hvals, key, val):  # pragma: no cover - jitted
    h = _hslot(hkeys, key)
    hkeys[h] = key
    hvals[h] = val


@numba.njit(cache=True)
def _hgrow(hkeys, hvals):  # pragma: no cover - jitted
    nk = np.zeros(hkeys.shape[0] * 2, np.uint64)
    nv = np.empty(hkeys.shape[0] * 2, np.int64)
    for h in range(hkeys.shape[0]):
        if hkeys[h] != 0:
            _hput(nk, nv, hkeys[h], hvals[h])
    return nk, nv


@numba.njit(cache=True)
def _grown(a, capacity):  # pragma: no cover - jitted
    """A copy of the 1-D array ``a`` with room for ``capacity`` entries."""
    b = np.empty(capacity, a.dtype)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True, nogil=True)
def _neighbours(s, nbr):  # pragma: no cover - jitted
    """Union of the neighbour masks ``nbr[t]`` over the tensors ``t`` of the sub-network ``s``."""
    one = np.uint64(1)
    out = np.uint64(0)
    t = 0
    while s:
        if s & one:
            out |= nbr[t]
        s >>= one
        t += 1
    return out


# Up to this many tensors (and 64 indices) every contraction tree is searched, outer products included.
ALL_TREES_MAX_TENSORS = 14


@numba.njit(cache=True, nogil=True)
def _all_trees_kernel(n, tensor_legs, sizes, out_mask, objective, max_size):  # pragma: no cover - jitted
    """DP over every subset of tensors and every split of it: the optimum over all trees.

    ``tensor_legs`` holds one uint64 leg mask per tensor. Returns the chosen left part of every
    subset (0 where none fits ``max_size``) and the best primary cost of each subset.
    """
    one = np.uint64(1)
    count = 1 << n
    full = np.uint64(count - 1)
    present = np.zeros(count, np.uint64)
    for s in range(1, count):
        low = s & -s
        present[s] = present[s ^ low] | tensor_legs[trailing_zeros(np.uint64(low))]
    legs = np.zeros(count, np.uint64)
    size = np.ones(count, np.float64)
    for s in range(1, count):
        # An index leaves a subset's result once no tensor outside it carries it and it is not open.
        lg = present[s] & (out_mask | present[np.int64(full ^ np.uint64(s))])
        legs[s] = lg
        v = 1.0
        bits = lg
        while bits:
            low = bits & (~bits + one)
            v *= sizes[trailing_zeros(low)]
            bits ^= low
        size[s] = v
    prim = np.full(count, np.inf)
    sec = np.full(count, np.inf)
    split = np.zeros(count, np.int64)
    for t in range(n):
        prim[1 << t] = 0.0
        sec[1 << t] = 0.0
    for s in range(1, count):
        low = s & -s
        rest = s ^ low
        if rest == 0 or size[s] > max_size:
            continue
        sub = rest
        while True:
            sub = (sub - 1) & rest
            a = low | sub
            b = s ^ a
            if prim[a] < np.inf and prim[b] < np.inf:
                shared = legs[a] & legs[b]
                shared_size = 1.0
                bits = shared
                while bits:
                    lo = bits & (~bits + one)
                    shared_size *= sizes[trailing_zeros(lo)]
                    bits ^= lo
                involved = size[a] * size[b] / shared_size
                out_size = size[s]
                # The cost model doubles a step that sums any index, even one of size 1.
                summed = (legs[a] | legs[b]) & ~legs[s]
                step = involved * 2.0 if summed else involved
                p, q = _combined(objective, prim[a], prim[b], sec[a], sec[b], step, out_size)
                if p < prim[s] or (p == prim[s] and q < sec[s]):
                    prim[s] = p
                    sec[s] = q
                    split[s] = a
            if sub == 0:
                break
    return split, prim


def solve_all_trees(
    legs: Sequence[Sequence[int]],
    output: frozenset[int] | set[int],
    sizes: Sequence[float],
    minimize: str = "flops",
    *,
    max_size: float = math.inf,
) -> list[tuple[int, int]] | None:
    """The optimal SSA path over every contraction tree, outer products included.

    The connected-only DP (:func:`solve_legs`) can miss a cheaper tree that joins two pieces
    sharing no index (two vectors on a large tensor: their outer product first costs their sizes'
    product instead of a pass over the large tensor each). Searching every split of every subset
    costs 3^n, so this runs for up to :data:`ALL_TREES_MAX_TENSORS` tensors and 64 indices;
    otherwise (or when no tree keeps every intermediate within ``max_size``) it returns None.
    """
    n = len(legs)
    if n == 1:
        return []
    ids = sorted({i for term in legs for i in term})
    if n > ALL_TREES_MAX_TENSORS or len(ids) > 64:
        return None
    pos = {i: k for k, i in enumerate(ids)}
    tensor_legs = np.zeros(n, np.uint64)
    for t, term in enumerate(legs):
        for i in term:
            tensor_legs[t] |= np.uint64(1) << np.uint64(pos[i])
    out_mask = np.uint64(0)
    for i in ids:
        if i in output:
            out_mask |= np.uint64(1) << np.uint64(pos[i])
    size_arr = np.array([float(sizes[i]) for i in ids] or [1.0])
    split, prim = _all_trees_kernel(n, tensor_legs, size_arr, out_mask, _OBJECTIVE_CODES[minimize], float(max_size))
    full = (1 << n) - 1
    if not prim[full] < math.inf:
        return None
    path: list[tuple[int, int]] = []

    def emit(s: int) -> int:
        if s & (s - 1) == 0:
            return s.bit_length() - 1
        a = int(split[s])
        left, right = emit(a), emit(s ^ a)
        path.append((left, right))
        return n + len(path) - 1

    emit(full)
    return path


_compiler: subprocess.Popen | None = None


def _cached_on_disk() -> bool:
    from tnplan import topdown

    try:
        dp = bool(_dp_kernel._cache._cache_file._load_index())  # type: ignore[attr-defined]
        dp = dp and bool(_all_trees_kernel._cache._cache_file._load_index())  # type: ignore[attr-defined]
    except Exception:  # numba internals moved: assume nothing is cached
        return False
    return dp and topdown.cached_on_disk()


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the exact-search kernels in this process."""
    from tnplan import topdown

    solve_legs([(0, 1), (1, 2), (2, 0), (0,)], frozenset(), [2.0, 2.0, 2.0], _force=True)
    solve_all_trees([(0, 1), (1, 2), (2, 0), (0,)], frozenset(), [2.0, 2.0, 2.0])
    topdown.warm_up()


_ready = False  # set once every kernel is compiled or loaded in this process


def compiling() -> bool:
    """Whether a background compilation started by :func:`kernel_ready` is still running."""
    return _compiler is not None and _compiler.poll() is None


def kernel_ready(block: bool = False) -> bool:
    """Whether the compiled DP kernel can be used now without paying for a compilation.

    The first compilation takes tens of seconds, which would break any time budget. When the
    kernel is neither loaded nor cached on disk, it is compiled in a background process (which
    fills numba's cache) and the searches fall back to their heuristics until it is ready. With
    ``block=True`` this process compiles it instead and waits.
    """
    global _compiler, _ready
    if _ready:  # asked once per exact sub-solve (tens of thousands per search): numba's checks are slow
        return True
    from tnplan import topdown

    if _dp_kernel.signatures and _all_trees_kernel.signatures and topdown.compiled():
        _ready = True
        return True
    if block or _cached_on_disk():
        warm_up()
        return True
    if _compiler is None:
        code = "from tnplan.optimal import warm_up; warm_up()"
        try:
            _compiler = subprocess.Popen(
                [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError:
            warm_up()
            return True
    if _compiler.poll() is not None and _cached_on_disk():
        warm_up()
        return True
    return False


def components(network: Network) -> list[list[int]]:
    """Connected components of the tensors (sharing any index), each sorted, ordered by first tensor."""
    legs = leaf_legs(network)
    parent = list(range(network.num_tensors))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[int, int] = {}
    for t, term in enumerate(legs):
        for i in term:
            if i in first:
                ra, rb = find(first[i]), find(t)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            else:
                first[i] = t
    groups: dict[int, list[int]] = {}
    for t in range(network.num_tensors):
        groups.setdefault(find(t), []).append(t)
    return sorted(groups.values(), key=lambda g: g[0])


def solve_legs(
    legs: Sequence[Sequence[int]],
    output: frozenset[int] | set[int],
    sizes: Sequence[float],
    minimize: str = "flops",
    **options: Any,
) -> tuple[list[tuple[int, int]] | None, int]:
    """Exact DP on one connected network; returns (SSA path or None, work). Options as :func:`solve_legs_cost`."""
    path, _cost, work = solve_legs_cost(legs, output, sizes, minimize, **options)
    return path, work


def solve_legs_cost(
    legs: Sequence[Sequence[int]],
    output: frozenset[int] | set[int],
    sizes: Sequence[float],
    minimize: str = "flops",
    *,
    upper: float | None = None,
    max_work: int = 10**9,
    max_size: float = math.inf,
    join_open: bool = True,
    first_cap: float = 1.0 / 64.0,
    _force: bool = False,
) -> tuple[list[tuple[int, int]] | None, float, int]:
    """Exact DP on one connected network given as index-id legs; returns (SSA path or None, its cost, work).

    ``None`` (cost inf) means the work budget ran out, the network is disconnected, or no path keeps
    every intermediate within ``max_size``. With ``join_open=False`` two sub-networks that share only
    open indices are not joined (batched outer products are skipped): a smaller search space that
    tames batch hyperedges, used by the heuristics; the proof of optimality uses the full space.
    The cost cap starts at ``first_cap`` times ``upper`` and doubles up to ``upper``; a first cap
    of 1 runs one round, which is fastest when the optimum is known to be close to ``upper``.
    """
    n = len(legs)
    if n == 1:
        return [], 0.0, 0
    if not _force and not kernel_ready():
        return None, math.inf, 0
    skip = frozenset() if join_open else frozenset(output)
    if n > MAX_TENSORS or not _connected(legs, skip):
        return None, math.inf, 0
    if upper is None:
        from tnplan.greedy import greedy_ssa

        greedy = greedy_ssa(legs, frozenset(output), sizes)
        upper = legs_path_cost(legs, output, sizes, greedy, minimize)
    ids = sorted({i for term in legs for i in term})
    pos = {i: k for k, i in enumerate(ids)}
    nidx = len(ids)
    W = max(1, (nidx + 63) // 64)
    tensor_legs = np.zeros((n, W), np.uint64)
    idx_tensors = np.zeros(max(nidx, 1), np.uint64)
    for t, term in enumerate(legs):
        for i in term:
            k = pos[i]
            tensor_legs[t, k >> 6] |= np.uint64(1) << np.uint64(k & 63)
            idx_tensors[k] |= np.uint64(1) << np.uint64(t)
    size_arr = np.array([float(sizes[i]) for i in ids] or [1.0])
    is_out = np.array([i in output for i in ids] or [False], dtype=np.bool_)
    adjacent = np.array([i not in skip for i in ids] or [True], dtype=np.bool_)
    objective = _OBJECTIVE_CODES[minimize]
    # Cap schedule: start at the largest input and double; the last cap is the caller's upper
    # bound (a known path's cost), so the DP never misses a path at least that good. Doubling
    # keeps every failed round cheap next to the successful one.
    lower = max(math.prod(float(sizes[i]) for i in term) for term in legs)
    caps: list[float] = []
    # Starting far below the bound only adds rounds that fail: begin at 1/64 of it.
    cap = max(float(lower), upper * first_cap)
    hi = upper if upper is not None else math.inf
    while cap < hi and len(caps) < 200:
        caps.append(cap)
        cap *= 2.0
    caps.append(upper * (1 + 1e-9) if upper is not None else math.inf)
    total_work = 0
    for cap in caps:
        root, _masks, left, right, prim, work = _dp_kernel(
            n, tensor_legs, idx_tensors, size_arr, is_out, adjacent, objective, cap, max_work - total_work, max_size
        )
        total_work += work
        if root == -2:
            return None, math.inf, total_work
        if root >= 0:
            return _emit_path(n, int(root), left, right), float(prim[root]), total_work
        if total_work >= max_work:
            break
    return None, math.inf, total_work


def _connected(legs: Sequence[Sequence[int]], skip: frozenset[int] = frozenset()) -> bool:
    seen = {0}
    frontier = [0]
    by_index: dict[int, list[int]] = {}
    for t, term in enumerate(legs):
        for i in term:
            if i not in skip:
                by_index.setdefault(i, []).append(t)
    while frontier:
        t = frontier.pop()
        for i in legs[t]:
            for u in by_index.get(i, ()):
                if u not in seen:
                    seen.add(u)
                    frontier.append(u)
    return len(seen) == len(legs)


def _emit_path(n: int, root: int, left: np.ndarray, right: np.ndarray) -> list[tuple[int, int]]:
    path: list[tuple[int, int]] = []
    stack: list[tuple[int, bool]] = [(root, False)]
    ssa_of: dict[int, int] = {}
    while stack:
        node, ready = stack.pop()
        if node < n:
            ssa_of[node] = node
            continue
        if ready:
            path.append((ssa_of[int(left[node])], ssa_of[int(right[node])]))
            ssa_of[node] = n + len(path) - 1
        else:
            stack.append((node, True))
            stack.append((int(right[node]), False))
            stack.append((int(left[node]), False))
    return path


def _solve_component(
    network: Network, members: list[int], minimize: str, upper: float | None, max_work: int
) -> tuple[list[tuple[int, int]] | None, bool, int]:
    legs_all = leaf_legs(network)
    path, work = solve_legs(
        [legs_all[t] for t in members], network.int_output, network.int_sizes, minimize, upper=upper, max_work=max_work
    )
    return path, path is not None, work


def optimal_path(
    network: Network,
    minimize: str = "flops",
    *,
    upper: float | None = None,
    max_work: int = 10**9,
) -> OptimalResult:
    """Find the provably optimal SSA path of ``network`` for ``minimize``, within ``max_work`` pair checks.

    Args:
        network: At most 64 tensors per connected component.
        minimize: ``"flops"``, ``"size"``, ``"write"`` or ``"combo"``.
        upper: Objective value of a known path; used as the final cost cap (the DP never misses a
            path at least that good).
        max_work: Budget in candidate pair checks; the search gives up (``ssa_path=None``) beyond it.
    """
    if network.num_tensors <= ALL_TREES_MAX_TENSORS:
        path = solve_all_trees(leaf_legs(network), network.int_output, network.int_sizes, minimize)
        if path is not None:  # None past 64 indices: the connected-only search below still runs
            return OptimalResult(path, True, 0)
    comps = components(network)
    if max(len(c) for c in comps) > MAX_TENSORS:
        return OptimalResult(None, False, 0)
    total_work = 0
    pieces: list[tuple[list[tuple[int, int]], list[int]]] = []
    for members in comps:
        sub_upper = upper if len(comps) == 1 else None
        path, ok, work = _solve_component(network, members, minimize, sub_upper, max_work - total_work)
        total_work += work
        if path is None or not ok:
            return OptimalResult(None, False, total_work)
        pieces.append((path, members))
    # Stitch the components: map local SSA ids to global ones, then outer-product the results,
    # smallest first (outer products cost the product of their sizes, so small ones go first).
    ssa: list[tuple[int, int]] = []
    nxt = network.num_tensors
    roots: list[tuple[float, int]] = []
    for path, members in pieces:
        local_to_global = {k: t for k, t in enumerate(members)}
        k = len(members)
        for a, b in path:
            ssa.append((local_to_global[a], local_to_global[b]))
            local_to_global[k] = nxt
            k += 1
            nxt += 1
        root = local_to_global[k - 1] if path else members[0]
        roots.append((_component_result_size(network, members), root))
    roots.sort()
    while len(roots) > 1:
        (sa, a), (sb, b) = roots.pop(0), roots.pop(0)
        ssa.append((a, b))
        roots.append((sa * sb, nxt))
        roots.sort()
        nxt += 1
    # Joining components by outer products is forced but not proven optimal when several exist.
    return OptimalResult(ssa, len(comps) == 1, total_work)


def _component_result_size(network: Network, members: list[int]) -> float:
    legs = leaf_legs(network)
    open_ = {i for t in members for i in legs[t] if i in network.int_output}
    return float(math.prod(network.int_sizes[i] for i in open_))
