"""The best contraction tree whose subtrees are contiguous runs of a given tensor order.

Subtree re-solving (:mod:`tnplan.tree`) only changes a tree locally. Some improvements are global:
on a chain, a ladder or an MPS inner product, moving the point where a left-to-right and a
right-to-left sweep meet rewrites the whole tree, yet keeps its left-to-right order of leaves.
Fixing that order, the best tree over it is a matrix-chain-style interval DP in O(n^3) steps: the
open indices of the run ``[i, j]`` are the indices touching it minus those lying entirely inside it,
and both of these are O(n^2) tables built with 2-D prefix sums. Every tree's own leaf order contains
that tree, so re-bracketing a tree's order never makes it worse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np

# The DP takes n^3 / 6 inner steps: past this many tensors it costs more than it is worth per call.
MAX_TENSORS = 1024
# Inner DP steps per second on a slow core (measured 1.5e8-2.5e8 on a busy 2-core VM); converts the O(n^3) work to time.
STEPS_PER_SECOND = 1.5e8
_OBJECTIVES = {"flops": 0, "write": 1, "combo": 2}


def interval_ssa(
    legs: Sequence[Sequence[int]],
    output: frozenset[int],
    sizes: Sequence[float],
    order: Sequence[int],
    minimize: str = "flops",
) -> list[tuple[int, int]] | None:
    """The cheapest SSA path whose every intermediate is a contiguous run of ``order``.

    Args:
        legs: Each input tensor's index ids.
        output: Open index ids.
        sizes: Size of every index id.
        order: A permutation of ``range(len(legs))`` (for example a tree's leaves left to right).
        minimize: ``"flops"``, ``"write"`` or ``"combo"`` (sums of per-step costs). ``"size"`` (a
            maximum, not a sum) returns None; :meth:`tnplan.tree.Tree.rebracket` handles it by
            minimising flops and refusing a larger peak.

    Returns:
        The SSA path over the original tensor numbering, or None (objective ``"size"``, or more than
        :data:`MAX_TENSORS` tensors).
    """
    n = len(legs)
    if minimize not in _OBJECTIVES or n > MAX_TENSORS or n < 2:
        return None if n >= 2 else []
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of range({n}), got {list(order)[:8]}...")
    positions: dict[int, list[int]] = {}
    for p, t in enumerate(order):
        for i in legs[t]:
            positions.setdefault(i, []).append(p)
    starts, flat, logw, is_out = [0], [], [], []
    for i, ps in positions.items():
        flat.extend(sorted(set(ps)))
        starts.append(len(flat))
        logw.append(math.log2(max(float(sizes[i]), 1e-300)))
        is_out.append(i in output)
    split = _interval_kernel(
        n,
        np.array(starts, np.int64),
        np.array(flat, np.int64),
        np.array(logw, np.float64),
        np.array(is_out, np.bool_),
        _OBJECTIVES[minimize],
    )
    path: list[tuple[int, int]] = []
    ids = list(order)

    # Iterative post-order over the split table: recursion depth would reach n on a chain.
    result: dict[tuple[int, int], int] = {(p, p): ids[p] for p in range(n)}
    stack: list[tuple[int, int, bool]] = [(0, n - 1, False)]
    next_id = n
    while stack:
        i, j, ready = stack.pop()
        if i == j or (i, j) in result:
            continue
        k = int(split[i, j])
        if not ready:
            stack.extend(((i, j, True), (k + 1, j, False), (i, k, False)))
            continue
        path.append((result[(i, k)], result[(k + 1, j)]))
        result[(i, j)] = next_id
        next_id += 1
    return path


@numba.njit(cache=True, nogil=True)
def _interval_kernel(n, starts, flat, logw, is_out, objective):  # pragma: no cover - jitted
    m = starts.shape[0] - 1
    # inside[a, b] (a < b): log-size of the non-open indices with every tensor in [a, b]; a single
    # tensor keeps all its indices, so inside[a, a] stays 0. absent[i, j]: log-size of the indices
    # with no tensor in [i, j]. Both are filled as point updates and summed as 2-D prefix sums.
    inside = np.zeros((n, n))
    inside_n = np.zeros((n, n))
    absent = np.zeros((n, n))
    total = 0.0
    for e in range(m):
        lo = flat[starts[e]]
        hi = flat[starts[e + 1] - 1]
        total += logw[e]
        if not is_out[e]:
            inside[lo, hi] += logw[e]  # counted for every run [a, b] with a <= lo and hi <= b
            inside_n[lo, hi] += 1.0
        prev = -1
        for q in range(starts[e], starts[e + 1] + 1):
            nxt = flat[q] if q < starts[e + 1] else n
            if nxt - prev >= 2:  # runs [i, j] with prev < i <= j < nxt miss this index
                absent[prev + 1, nxt - 1] += logw[e]
            prev = nxt
    # inside[a, b] = sum over lo >= a, hi <= b; absent[i, j] = sum over points (a, b) with a <= i, b >= j.
    for a in range(n - 1, -1, -1):
        for b in range(n):
            if a + 1 < n:
                inside[a, b] += inside[a + 1, b]
                inside_n[a, b] += inside_n[a + 1, b]
            if b > 0:
                inside[a, b] += inside[a, b - 1]
                inside_n[a, b] += inside_n[a, b - 1]
            if a + 1 < n and b > 0:
                inside[a, b] -= inside[a + 1, b - 1]
                inside_n[a, b] -= inside_n[a + 1, b - 1]
    for i in range(n):
        for j in range(n - 1, -1, -1):
            if i > 0:
                absent[i, j] += absent[i - 1, j]
            if j + 1 < n:
                absent[i, j] += absent[i, j + 1]
            if i > 0 and j + 1 < n:
                absent[i, j] -= absent[i - 1, j + 1]
    for a in range(n):
        inside[a, a] = 0.0
        inside_n[a, a] = 0.0
    cost = np.zeros((n, n))
    split = np.zeros((n, n), np.int64)
    for span in range(1, n):
        for i in range(n - span):
            j = i + span
            # Sizes stay logarithms until needed: a long run's indices together overflow a float.
            touching = total - absent[i, j]
            out_size = 2.0 ** (touching - inside[i, j])
            best = np.inf
            best_log = np.inf
            arg = i
            for k in range(i, j):
                if objective == 1:
                    step = out_size
                else:
                    involved = touching - inside[i, k] - inside[k + 1, j]
                    if involved >= best_log:
                        continue  # this step alone costs more than the best split found
                    step = 2.0**involved
                    if inside_n[i, j] - inside_n[i, k] - inside_n[k + 1, j] > 0.5:
                        step *= 2.0
                    if objective == 2:
                        step += 64.0 * out_size
                c = cost[i, k] + cost[k + 1, j] + step
                if c < best:
                    best = c
                    best_log = np.log2(c)
                    arg = k
            cost[i, j] = best
            split[i, j] = arg
    return split
