"""Exact search from the top down: branch and bound over connected bipartitions (flops and combo).

The bottom-up DP of :mod:`tnplan.optimal` must build every sub-network whose own cost fits under
the cap before it can prove anything. Where a network's cost sits in its last few contractions
(many open indices: open MERA and TTN), almost every sub-network is cheap, and that DP drowns in
them. Searched from the whole network down, the same problem is small: splitting a sub-network S
into connected halves A | B costs ``size(S) * r * 2``, where ``size(S)`` is fixed by S and ``r`` is
the product of the sizes of the indices cut, so a large S admits only a few small cuts within the
best known cost. Each sub-network is solved once under a budget (its exact cost is memoised) or
proven to cost more than that budget (a lower bound is memoised), which is branch and bound with
memoisation over the same search space as the DP: every tree whose nodes are connected.

The kernels enumerate a sub-network's bipartitions either as connected sets grown from its lowest
tensor or, on networks whose indices each join two tensors, as sets of cut edges whose size product
fits the budget, whichever is smaller. Work is counted in enumeration steps, so a run is
deterministic and a time budget converts to a work budget as for the DP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from tnplan.optimal import MAX_TENSORS, _grown, _neighbours

OBJECTIVES = ("flops", "combo")
# Try the top-down search when at most this many edge sets fit the bound at the top split.
TOP_SPLITS_LIMIT = 100_000
_COMBO = 64.0
# Enumeration steps per second of the compiled kernels on a slow core (converts time to work).
STEPS_PER_SECOND = 2.0e7
# Work charged for each sub-network solve on top of its enumeration (Python-side bookkeeping).
_VISIT_WORK = 2000


class _OutOfWorkError(Exception):
    """The work budget ran out (caught inside :func:`solve_topdown`)."""


@numba.njit(cache=True, nogil=True)
def _legs_size(s, idx_tensors, sizes, is_out):  # pragma: no cover - jitted
    """Size of the tensor that contracting the sub-network ``s`` leaves (open or outward indices)."""
    p = 1.0
    for k in range(idx_tensors.shape[0]):
        m = idx_tensors[k]
        if m & s and (is_out[k] or m & ~s):
            p *= sizes[k]
    return p


@numba.njit(cache=True, nogil=True)
def _reach(start, within, adj):  # pragma: no cover - jitted
    """The tensors of ``within`` reachable from the tensors ``start`` through the masks ``adj``."""
    seen = start
    frontier = start
    while frontier:
        low = frontier & (~frontier + np.uint64(1))
        frontier ^= low
        new = adj[trailing_zeros(low)] & within & ~seen
        seen |= new
        frontier |= new
    return seen


@numba.njit(cache=True, nogil=True)
def _is_connected(s, adj):  # pragma: no cover - jitted
    return _reach(s & (~s + np.uint64(1)), s, adj) == s


@numba.njit(cache=True, nogil=True)
def _append(out, n, value):  # pragma: no cover - jitted
    """``out`` with ``value`` at position ``n``, grown when full."""
    if n == out.shape[0]:
        out = _grown(out, 2 * n)
    out[n] = value
    return out


@numba.njit(cache=True, nogil=True)
def _cut_product(a, b, idx_tensors, sizes, is_out):  # pragma: no cover - jitted
    """(Product of the sizes of the indices summed when ``a`` and ``b`` are contracted, whether any is)."""
    s = a | b
    r = 1.0
    summed = False
    for k in range(idx_tensors.shape[0]):
        m = idx_tensors[k]
        if m & a and m & b and not is_out[k] and (m & ~s) == 0:
            r *= sizes[k]
            summed = True
    return r, summed


@numba.njit(cache=True, nogil=True)
def _lower_bound(s, idx_tensors, sizes, is_out, lb_factor, combo):  # pragma: no cover - jitted
    """Least cost of contracting sub-network ``s``: its last step costs at least ``lb_factor * size(s)``."""
    if not s & (s - np.uint64(1)):
        return 0.0
    gs = _legs_size(s, idx_tensors, sizes, is_out)
    return gs * lb_factor + (_COMBO * gs if combo else 0.0)


@numba.njit(cache=True, nogil=True)
def _splits_by_growth(s, nbr, max_work):  # pragma: no cover - jitted
    """Every connected A holding the lowest tensor of ``s`` whose complement in ``s`` is connected.

    Connected sets are grown as in DPccp's csg enumeration: from (A, X), every non-empty subset of
    A's unexplored neighbours extends A, and the neighbours join X, so each set appears once.
    """
    one = np.uint64(1)
    v0 = s & (~s + one)
    out = np.empty(64, np.uint64)
    n_out = 0
    st_a = np.empty(64, np.uint64)
    st_x = np.empty(64, np.uint64)
    st_a[0] = v0
    st_x[0] = v0
    top = 1
    work = 0
    if s != v0 and _is_connected(s & ~v0, nbr):
        out[0] = v0
        n_out = 1
    while top:
        top -= 1
        a = st_a[top]
        x = st_x[top]
        nb = _neighbours(a, nbr) & s & ~x
        sub = nb
        while sub:
            a2 = a | sub
            work += 1
            if work > max_work:
                return out[:n_out], work
            if a2 != s:
                if _is_connected(s & ~a2, nbr):
                    out = _append(out, n_out, a2)
                    n_out += 1
                st_a = _append(st_a, top, a2)
                st_x = _append(st_x, top, x | nb)
                top += 1
            sub = (sub - one) & nb
    return out[:n_out], work


@numba.njit(cache=True, nogil=True)
def _splits_by_cuts(s, rmax, edge_u, edge_v, edge_size, nbr, nbr_count, max_work):  # pragma: no cover - jitted
    """Every bipartition of ``s`` whose cut edges' size product is at most ``rmax`` (two-tensor indices).

    Edge sets are enumerated as combinations in edge order with a running product; a set counts
    when removing it leaves exactly two connected parts and every removed edge joins them.
    """
    one = np.uint64(1)
    inner = np.empty(edge_u.shape[0], np.int64)
    n_inner = 0
    for e in range(edge_u.shape[0]):
        if (s >> np.uint64(edge_u[e])) & one and (s >> np.uint64(edge_v[e])) & one:
            inner[n_inner] = e
            n_inner += 1
    out = np.empty(64, np.uint64)
    n_out = 0
    work = 0
    chosen = np.empty(n_inner + 1, np.int64)
    prods = np.ones(n_inner + 2, np.float64)
    # Parallel edges: a neighbour bit goes only when its last edge is removed.
    count = nbr_count.copy()
    adj = nbr.copy()
    v0 = s & (~s + one)
    depth = 0
    nxt = 0
    # Depth-first over combinations: chosen[:depth] is the current edge set, nxt the next candidate.
    while True:
        if nxt < n_inner and prods[depth] * edge_size[inner[nxt]] <= rmax:
            chosen[depth] = nxt
            prods[depth + 1] = prods[depth] * edge_size[inner[nxt]]
            depth += 1
            nxt += 1
            work += 1
            if work > max_work:
                return out[:n_out], work
            _remove_edges(inner, chosen, depth, edge_u, edge_v, count, adj, -1)
            # Test this edge set: grow the part holding the lowest tensor; every removed edge must
            # join it to the rest, and the rest must be connected (else three or more parts).
            seen = _reach(v0, s, adj)
            bits = seen
            while bits:  # one unit of work per tensor reached
                bits &= bits - one
                work += 1
            rest = s & ~seen
            ok = rest != 0
            for d in range(depth):
                e = inner[chosen[d]]
                if not ok:
                    break
                ok = ((seen >> np.uint64(edge_u[e])) & one) != ((seen >> np.uint64(edge_v[e])) & one)
            if ok:
                ok = _is_connected(rest, adj)
            _remove_edges(inner, chosen, depth, edge_u, edge_v, count, adj, 1)
            if ok:
                out = _append(out, n_out, seen)
                n_out += 1
        else:
            if depth == 0:
                break
            depth -= 1
            nxt = chosen[depth] + 1
    return out[:n_out], work


@numba.njit(cache=True, nogil=True)
def _remove_edges(inner, chosen, depth, edge_u, edge_v, count, adj, delta):  # pragma: no cover - jitted
    """Take the chosen edges out of (``delta = -1``) or back into (``+1``) the adjacency masks."""
    one = np.uint64(1)
    for d in range(depth):
        e = inner[chosen[d]]
        u, v = edge_u[e], edge_v[e]
        count[u, v] += delta
        count[v, u] += delta
        if count[u, v] == 0:
            adj[u] &= ~(one << np.uint64(v))
            adj[v] &= ~(one << np.uint64(u))
        else:
            adj[u] |= one << np.uint64(v)
            adj[v] |= one << np.uint64(u)


@numba.njit(cache=True, nogil=True)
def _score_splits(s, cands, bound, idx_tensors, sizes, is_out, lb_factor, combo):  # pragma: no cover - jitted
    """(A, step cost, static lower bound of A, of B) for each split whose lower bound fits ``bound``."""
    gs = _legs_size(s, idx_tensors, sizes, is_out)
    m = cands.shape[0]
    keep_a = np.empty(m, np.uint64)
    step_o = np.empty(m, np.float64)
    lba_o = np.empty(m, np.float64)
    lbb_o = np.empty(m, np.float64)
    kept = 0
    for c in range(m):
        a = cands[c]
        b = s & ~a
        r, summed = _cut_product(a, b, idx_tensors, sizes, is_out)
        # The cost model doubles a step that sums any index, whatever its size.
        step = gs * r * 2.0 if summed else gs * r
        if combo:
            step += _COMBO * gs
        lba = _lower_bound(a, idx_tensors, sizes, is_out, lb_factor, combo)
        lbb = _lower_bound(b, idx_tensors, sizes, is_out, lb_factor, combo)
        if step + lba + lbb <= bound:
            keep_a[kept] = a
            step_o[kept] = step
            lba_o[kept] = lba
            lbb_o[kept] = lbb
            kept += 1
    return keep_a[:kept], step_o[:kept], lba_o[:kept], lbb_o[:kept]


class _Search:
    """Branch and bound over one connected network given as index-id legs (at most 64 tensors)."""

    def __init__(
        self,
        legs: Sequence[Sequence[int]],
        output: frozenset[int] | set[int],
        sizes: Sequence[float],
        minimize: str = "flops",
        max_work: int = 10**8,
    ) -> None:
        if minimize not in OBJECTIVES:
            raise ValueError(f"top-down search supports minimize in {OBJECTIVES}, not {minimize!r}")
        n = len(legs)
        if n > MAX_TENSORS:
            raise ValueError(f"top-down search takes at most {MAX_TENSORS} tensors, got {n}")
        self.n = n
        self.combo = minimize == "combo"
        ids = sorted({i for term in legs for i in term})
        self.idx_tensors = np.zeros(max(len(ids), 1), np.uint64)
        self.sizes = np.ones(max(len(ids), 1), np.float64)
        self.is_out = np.zeros(max(len(ids), 1), np.bool_)
        for k, i in enumerate(ids):
            self.sizes[k] = float(sizes[i])
            self.is_out[k] = i in output
        pos = {i: k for k, i in enumerate(ids)}
        for t, term in enumerate(legs):
            for i in term:
                self.idx_tensors[pos[i]] |= np.uint64(1) << np.uint64(t)
        self.nbr = np.zeros(n, np.uint64)
        for m in self.idx_tensors:
            for t in range(n):
                if int(m) >> t & 1:
                    self.nbr[t] |= m & ~(np.uint64(1) << np.uint64(t))
        edges = _plain_edges(legs, output, sizes)
        self.edges_ok = edges is not None
        edges = edges or []
        self.edge_pairs = [(u, v) for _, u, v in edges]
        self.edge_u = np.array([u for _, u, _ in edges], np.int64)
        self.edge_v = np.array([v for _, _, v in edges], np.int64)
        self.edge_size = np.array([float(sizes[i]) for i, _, _ in edges], np.float64)
        self.nbr_count = np.zeros((n, n), np.int64)
        for u, v in self.edge_pairs:
            self.nbr_count[u, v] += 1
            self.nbr_count[v, u] += 1
        self.min_edge = float(min(self.edge_size)) if self.edges_ok else 1.0
        # Every split of a sub-network S sums at least one index when all joins are edges of size
        # >= 2, so its top step costs at least 2 * min_edge * size(S); otherwise size(S).
        self.lb_factor = 2.0 * self.min_edge if self.edges_ok and self.min_edge >= 2 else 1.0
        self.max_work = max_work
        self.work = 0
        self.exact: dict[int, tuple[float, int]] = {}
        self.lower: dict[int, float] = {}

    def _lbound(self, s: int) -> float:
        static = _lower_bound(np.uint64(s), self.idx_tensors, self.sizes, self.is_out, self.lb_factor, self.combo)
        return max(float(static), self.lower.get(s, 0.0))

    def _charge(self, work: int) -> None:
        self.work += work
        if self.work > self.max_work:
            raise _OutOfWorkError

    def _splits(self, s: int, bound: float) -> np.ndarray:
        size_s = bin(s).count("1")
        left = self.max_work - self.work
        use_cuts = False
        gs = float(_legs_size(np.uint64(s), self.idx_tensors, self.sizes, self.is_out))
        rmax = bound / (2.0 * gs)
        if self.edges_ok and math.isfinite(rmax):
            # Combinations of at most log(rmax)/log(min edge) edges, against 2^(|S|-1) grown sets.
            depth = int(math.log(max(rmax, 1.0)) / math.log(self.min_edge) + 1e-9)
            inner = sum(1 for u, v in self.edge_pairs if s >> u & 1 and s >> v & 1)
            by_cuts = sum(math.comb(inner, j) for j in range(1, min(depth, inner) + 1)) * max(4, size_s // 4)
            use_cuts = by_cuts < 2 ** (size_s - 1)
        if use_cuts:
            cands, work = _splits_by_cuts(
                np.uint64(s), rmax, self.edge_u, self.edge_v, self.edge_size, self.nbr, self.nbr_count, left
            )
        else:
            cands, work = _splits_by_growth(np.uint64(s), self.nbr, left)
        self._charge(work + _VISIT_WORK)
        return cands

    def solve(self, s: int, bound: float) -> float | None:
        """Exact cost of sub-network ``s`` if at most ``bound``, else ``None`` (and remember the bound)."""
        if s & (s - 1) == 0:
            return 0.0
        known = self.exact.get(s)
        if known is not None:
            return known[0] if known[0] <= bound else None
        if self._lbound(s) > bound:
            return None
        cands = self._splits(s, bound)
        a_arr, step_arr, lba_arr, lbb_arr = _score_splits(
            np.uint64(s), cands, bound, self.idx_tensors, self.sizes, self.is_out, self.lb_factor, self.combo
        )
        static = step_arr + lba_arr + lbb_arr
        order = np.lexsort((a_arr, static))
        best: float | None = None
        best_a = 0
        for k in order:
            step = float(step_arr[k])
            if static[k] > bound:
                break
            a = int(a_arr[k])
            b = s & ~a
            lb_b = self._lbound(b)
            if step + self._lbound(a) + lb_b > bound:
                continue
            ca = self.solve(a, bound - step - lb_b)
            if ca is None:
                continue
            cb = self.solve(b, bound - step - ca)
            if cb is None:
                continue
            c = step + ca + cb
            if best is None or c < best:
                best, best_a = c, a
                bound = c
        if best is None:
            self.lower[s] = max(self.lower.get(s, 0.0), bound)
            return None
        self.exact[s] = (best, best_a)
        return best

    def ssa_path(self, root: int) -> list[tuple[int, int]]:
        """The SSA path of the memoised optimum of ``root`` (solved before)."""
        path: list[tuple[int, int]] = []
        ids: dict[int, int] = {}
        stack: list[tuple[int, bool]] = [(root, False)]
        while stack:
            s, ready = stack.pop()
            if s & (s - 1) == 0:
                ids[s] = s.bit_length() - 1
                continue
            a = self.exact[s][1]
            b = s & ~a
            if ready:
                path.append((ids[a], ids[b]))
                ids[s] = self.n + len(path) - 1
            else:
                stack.extend(((s, True), (b, False), (a, False)))
        return path


def top_heavy(
    legs: Sequence[Sequence[int]], output: frozenset[int] | set[int], sizes: Sequence[float], upper: float
) -> bool:
    """Whether the top-down search suits a network whose best known cost is ``upper``.

    The last contraction costs ``2 * size(result) * r``, with ``r`` the size product of the edges it
    cuts, so ``upper`` allows only cuts with ``r <= upper / (2 * size(result))``. When few edge sets
    fit under that (on networks whose indices each join two tensors), the search from the top is
    narrow; with hyperedges only a bound within 64 times the result's size counts as narrow.
    """
    result = math.prod(float(sizes[i]) for i in output)
    edges = _plain_edges(legs, output, sizes)
    if edges is None:
        return upper <= 64.0 * result
    groups: dict[float, int] = {}
    for i, _, _ in edges:
        groups[float(sizes[i])] = groups.get(float(sizes[i]), 0) + 1
    return _count_edge_sets(sorted(groups.items()), upper / (2.0 * result), TOP_SPLITS_LIMIT) <= TOP_SPLITS_LIMIT


def _plain_edges(
    legs: Sequence[Sequence[int]], output: frozenset[int] | set[int], sizes: Sequence[float]
) -> list[tuple[int, int, int]] | None:
    """(index, tensor, tensor) for each index joining tensors, in index order, when every such index
    joins exactly two and is summed with size >= 2, so that a bipartition is exactly the set of
    edges it cuts (and cuts at least one); otherwise None."""
    where: dict[int, list[int]] = {}
    for t, term in enumerate(legs):
        for i in dict.fromkeys(term):
            where.setdefault(i, []).append(t)
    joins = sorted((i, ts) for i, ts in where.items() if len(ts) >= 2)
    if not joins or any(len(ts) != 2 or i in output or sizes[i] < 2 for i, ts in joins):
        return None
    return [(i, ts[0], ts[1]) for i, ts in joins]


def _count_edge_sets(groups: list[tuple[float, int]], rmax: float, limit: int) -> int:
    """Number of non-empty edge sets with size product <= ``rmax`` (stops counting past ``limit``).

    ``groups`` holds (edge size, how many edges have it); choosing k edges of a group multiplies
    the product by size**k in C(count, k) ways.
    """

    def count(g: int, budget: float) -> int:
        if g == len(groups):
            return 1
        size, many = groups[g]
        total = 0
        for k in range(many + 1):
            if size**k > budget:
                break
            total += math.comb(many, k) * count(g + 1, budget / size**k)
            if total > limit + 1:
                break
        return total

    return count(0, rmax) - 1


def compiled() -> bool:
    """Whether every kernel is loaded in this process."""
    return all(k.signatures for k in _KERNELS)


def cached_on_disk() -> bool:
    """Whether numba's on-disk cache holds every kernel."""
    try:
        return all(bool(k._cache._cache_file._load_index()) for k in _KERNELS)  # type: ignore[attr-defined]
    except Exception:  # numba internals moved: assume nothing is cached
        return False


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the kernels, through both enumerations."""
    ring = [(k, (k + 1) % 12) for k in range(12)]
    solve_topdown(ring, frozenset(), [2.0] * 12, "combo", math.inf, 10**6)  # grown sets
    solve_topdown(ring, frozenset(), [2.0] * 12, "flops", 20.0, 10**6)  # cut edge sets


def solve_topdown(
    legs: Sequence[Sequence[int]],
    output: frozenset[int] | set[int],
    sizes: Sequence[float],
    minimize: str,
    upper: float,
    max_work: int,
) -> tuple[list[tuple[int, int]] | None, float, int]:
    """Optimal SSA path of a connected network costing at most ``upper``: (path or None, cost, work).

    ``None`` means the work budget ran out or no tree costs at most ``upper`` (pass the cost of a
    known path, slightly rounded up, so that the search cannot miss it).
    """
    n = len(legs)
    if n == 1:
        return [], 0.0, 0
    search = _Search(legs, output, sizes, minimize, max_work)
    full = (1 << n) - 1
    try:
        cost = search.solve(full, upper)
    except _OutOfWorkError:
        return None, math.inf, search.work
    if cost is None:
        return None, math.inf, search.work
    return search.ssa_path(full), cost, search.work


# The kernels called from Python; the others are compiled into them.
_KERNELS = (_lower_bound, _splits_by_growth, _splits_by_cuts, _score_splits)
