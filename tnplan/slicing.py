"""Slicing under a memory cap, with the tree re-optimised under the cap after every cut.

Slicing index ``c`` (size ``d``) runs the contraction ``d`` times with ``c`` fixed. A step that
involves ``c`` costs the same in total; every other step is repeated ``d`` times. So for a tree with
total flops ``T`` and ``S_c`` the flops of steps that involve ``c``, slicing ``c`` costs
``S_c + d * (T - S_c)``. Candidates are the indices of the intermediates that break the cap; the
cheapest is cut, then subtrees are re-solved exactly with every intermediate kept under the cap,
which recovers most of the overhead a fixed tree would pay. A few randomised tie-breaks are tried
while time allows and the cheapest sliced tree wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from tnplan.cost import input_elements, leaf_legs, score_path
from tnplan.errors import PlanError
from tnplan.network import Network
from tnplan.tree import Tree


def _involved(tree: Tree, node: int) -> frozenset[int]:
    a, b = tree.children[node]
    return tree.legs[a] | tree.legs[b]


def _choose(
    tree: Tree, target: float, sliced: set[int], rng: np.random.Generator | None, original: Sequence[float]
) -> int | None:
    nodes = tree.internal_nodes()
    over = [v for v in nodes if tree.size[v] > target]
    if not over:
        return None
    # Indices on the largest offending intermediate must be among the cut candidates; any
    # index on an offending intermediate is considered.
    biggest = max(over, key=lambda v: (tree.size[v], v))
    cands = sorted(i for i in tree.legs[biggest] if i not in sliced and original[i] > 1)
    if not cands:
        return None
    # Prefer cutting big intermediates fast: the log of the size reduction breaks ties. (An index
    # not cut yet still has its original size in the tree.)
    scores = sorted((new_total / math.log2(original[c] + 1), c) for new_total, c in cut_costs(tree, cands))
    if rng is not None and len(scores) > 1 and rng.random() < 0.5:
        k = int(rng.integers(0, min(3, len(scores))))
        return scores[k][1]
    return scores[0][1]


def cut_costs(tree: Tree, candidates: Sequence[int]) -> list[tuple[float, int]]:
    """``(S_c + d_c (T - S_c), c)`` for each candidate index: the flops of ``tree`` with ``c`` cut alone."""
    nodes = tree.internal_nodes()
    total = math.fsum(tree.flops[v] for v in nodes)
    # One pass over the nodes for all candidates (fsum: the same sums whatever the order).
    parts: dict[int, list[float]] = {c: [] for c in candidates}
    wanted = frozenset(parts)
    for v in nodes:
        f = tree.flops[v]
        for c in _involved(tree, v) & wanted:
            parts[c].append(f)
    scored = []
    for c in candidates:
        s_c = math.fsum(parts[c])
        scored.append((s_c + tree.sizes[c] * (total - s_c), c))
    return scored


def cheapest_cuts(tree: Tree, target: float, k: int) -> list[int]:
    """The ``k`` indices of over-cap intermediates whose single cut costs ``tree`` the least."""
    over = [v for v in tree.internal_nodes() if tree.size[v] > target]
    cands = sorted({i for v in over for i in tree.legs[v] if tree.sizes[i] > 1})
    return [c for _, c in sorted(cut_costs(tree, cands))[:k]]


def slice_legs(
    legs: Sequence[Sequence[int]],
    output: frozenset[int],
    sizes: Sequence[float],
    ssa: list[tuple[int, int]],
    target: float,
    minimize: str = "flops",
    *,
    rng: np.random.Generator | None = None,
    deadline: float = math.inf,
    passes: int = 2,
) -> tuple[list[tuple[int, int]], tuple[int, ...], float]:
    """Slice one tree until every intermediate has at most ``target`` elements, re-optimising it
    under the cap after each cut.

    Returns:
        The new SSA path, the sliced index ids, and the objective ``minimize`` over all slices
        (:func:`tnplan.cost.over_slices`).
    """
    original = [float(x) for x in sizes]
    cur = list(original)
    sliced: set[int] = set()
    tree = Tree(legs, output, cur, ssa)
    local = "flops" if minimize == "size" else minimize
    # Whether the tree's nodes are numbered in post-order, as a tree rebuilt from its own path is (ties
    # between equal nodes break by number): then a cut only resizes the nodes it touches.
    numbered = False
    while True:
        c = _choose(tree, target, sliced, rng, original)
        if c is None:
            break
        sliced.add(c)
        cur[c] = 1.0
        if numbered:
            tree.resize(c, 1.0)
        else:
            tree = Tree(legs, output, cur, tree.ssa_path())
            numbered = True
        if passes and time.perf_counter() < deadline:
            # Re-solve subtrees under the cap: intermediates may grow up to the target again.
            tree.reconfigure(local, subtree_size=8, deadline=deadline, max_size=target, max_passes=passes)
            numbered = False
    # Drop cuts that later re-optimisation made unnecessary (cheapest first).
    for c in sorted(sliced, key=lambda i: (original[i], i)):
        tree.resize(c, original[c])
        if tree.peak_size() <= target:
            sliced.discard(c)
            cur[c] = original[c]
        else:
            tree.resize(c, 1.0)
    n_slices = math.prod(original[i] for i in sliced)
    # Re-optimised for flops under the cap, but scored in the caller's objective, as every other
    # candidate it is ranked against.
    return tree.ssa_path(), tuple(sorted(sliced)), tree.sliced_total(minimize, n_slices)


def fits(
    network: Network,
    ssa: Sequence[tuple[int, int]],
    sliced: tuple[int, ...],
    *,
    memory_limit: int | None = None,
    max_size: int | None = None,
) -> bool:
    """Whether a sliced tree keeps intermediates within ``max_size`` and execution within ``memory_limit`` elements."""
    c = score_path(network, ssa, sliced)
    return (max_size is None or c.peak_size <= max_size) and (memory_limit is None or c.peak_elements <= memory_limit)


def slice_tree(
    network: Network,
    ssa: list[tuple[int, int]],
    *,
    minimize: str = "flops",
    memory_limit: int | None = None,
    max_size: int | None = None,
    deadline: float = math.inf,
    seed: int = 0,
    attempts: int = 64,
) -> tuple[list[tuple[int, int]], tuple[int, ...]]:
    """Slice (and re-optimise) a tree so every intermediate fits ``max_size`` elements and the
    whole execution fits ``memory_limit`` elements.

    Returns:
        The new SSA path and the sliced integer index ids.

    Raises:
        PlanError: If the limit cannot be met even with every index sliced.
    """
    inputs = input_elements(network)
    if memory_limit is not None and inputs >= memory_limit:
        raise PlanError(
            f"memory_limit allows {memory_limit} elements but the input tensors alone hold {inputs}; "
            "raise the limit (slicing only shrinks intermediates)"
        )

    if fits(network, ssa, (), memory_limit=memory_limit, max_size=max_size):
        return ssa, ()
    base = score_path(network, ssa)
    target = float(max_size) if max_size is not None else float(base.peak_size)
    if memory_limit is not None:
        target = min(target, max(1.0, (memory_limit - inputs) / 3.0))
    rng = np.random.default_rng([seed, 0x511CE])
    best: tuple[int, list[tuple[int, int]], tuple[int, ...]] | None = None
    legs = leaf_legs(network)
    sizes = [float(x) for x in network.int_sizes]
    for attempt in range(attempts):
        path, sl, _ = slice_legs(
            legs, network.int_output, sizes, ssa, target, minimize, rng=rng if attempt else None, deadline=deadline
        )
        if fits(network, path, sl, memory_limit=memory_limit, max_size=max_size):
            flops = score_path(network, path, sl).flops
            if best is None or flops < best[0]:
                best = (flops, path, sl)
        elif best is None and memory_limit is not None:
            target = max(1.0, target / 2.0)  # live intermediates overlap: aim lower and retry
            continue
        if time.perf_counter() > deadline:
            break  # with nothing that fits yet too: max_time holds for a cap that is hard to meet
        if best is None and target <= 1.0:
            break
    if best is None:
        if time.perf_counter() > deadline:
            raise PlanError(
                "no slicing that fits the memory limit was found in the time allowed; "
                "raise max_time, memory_limit or max_size"
            )
        raise PlanError("no slicing fits the memory limit; raise memory_limit or max_size")
    return best[1], best[2]
