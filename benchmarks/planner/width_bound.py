"""Proofs that no contraction tree of a network is narrower than a given width, by integer programming.

The width of a tree is log2 of its largest intermediate. A subtree holding the tensors ``X`` leaves an
intermediate carrying every index with tensors both in and out of ``X`` (open indices aside), so a
tree of width ``<= K`` is a hierarchy of nested tensor sets, each with a boundary of ``<= K`` bits.

* :func:`balanced_cut_bits`: every tree has a node holding more than ``n/3`` and at most ``2n/3`` of
  the ``n`` tensors (walk down from the root into the larger child until the subtree holds at most
  ``2n/3``: it then holds at least half of its parent's, which held more than ``2n/3``), so the
  cheapest such bipartition bounds every tree's width from below.
* :func:`narrow_tree_possible`: the same node ``V``, its parent ``P`` and the splits below ``P`` down to
  ``depth`` levels must all exist with boundaries ``<= K``; when no such nesting exists (the program
  is infeasible), no tree of width ``<= K`` exists. This is much stronger than the balanced cut: on
  the 32-site closed MERA at bond 4 the balanced cut allows 16 bits, the nesting of depth 3 does not.

With ``free_cuts=k`` the program may also slice any ``k`` indices of its choice (a sliced index
weighs nothing in any boundary), so an infeasible program proves that every plan of that width slices
more than ``k`` indices.

Open indices are left out of every boundary, which only weakens the bounds. The programs are solved
exactly by scipy's HiGHS. Used by ``single_cuts.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

import tnplan


def _edges(network: tnplan.Network, cut: Iterable = ()) -> list[tuple[float, list[int]]]:
    """(bits, tensors holding it) of every closed index of size > 1 that two or more tensors share."""
    skip = set(network.output) | set(cut)
    holders: dict = {}
    for t, ix in enumerate(network.inputs):
        for label in dict.fromkeys(ix):
            holders.setdefault(label, []).append(t)
    sizes = network.size_dict
    return [(math.log2(sizes[i]), h) for i, h in holders.items() if i not in skip and sizes[i] > 1 and len(h) > 1]


class _Program:
    """Rows of a 0/1 program over tensor-set membership variables, built one constraint at a time."""

    def __init__(self) -> None:
        self.n_vars = 0
        self.integer: list[int] = []
        self.rows: list[dict[int, float]] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def new(self, count: int, *, integer: bool) -> list[int]:
        ids = list(range(self.n_vars, self.n_vars + count))
        self.n_vars += count
        if integer:
            self.integer += ids
        return ids

    def add(self, coefs: dict[int, float], lower: float, upper: float) -> None:
        self.rows.append(coefs)
        self.lower.append(lower)
        self.upper.append(upper)

    def boundary_at_most(
        self,
        x: list[int],
        edges: list[tuple[float, list[int]]],
        bits: float,
        unless: tuple[int, float] | None = None,
        sliced: list[int] | None = None,
    ) -> list[int]:
        """The indices crossing the set ``x`` (membership variables) weigh at most ``bits``; with
        ``unless=(v, slack)``, at most ``bits + slack`` where the 0/1 variable ``v`` is 0; with
        ``sliced`` (one 0/1 variable per edge), a sliced index weighs nothing. Returns the crossing
        indicators, one per edge."""
        y = self.new(len(edges), integer=False)
        for e, (_, holders) in enumerate(edges):
            first = holders[0]
            for other in holders[1:]:  # y_e >= |x_first - x_other|: 1 when the index crosses
                self.add({y[e]: 1.0, x[first]: -1.0, x[other]: 1.0}, 0.0, math.inf)
                self.add({y[e]: 1.0, x[other]: -1.0, x[first]: 1.0}, 0.0, math.inf)
        weighed = y
        if sliced is not None:  # d_e >= y_e - s_e: an index counts when it crosses and is not sliced
            weighed = self.new(len(edges), integer=False)
            for e in range(len(edges)):
                self.add({weighed[e]: 1.0, y[e]: -1.0, sliced[e]: 1.0}, 0.0, math.inf)
        row = {weighed[e]: w for e, (w, _) in enumerate(edges)}
        if unless is None:
            self.add(row, -math.inf, bits + 1e-6)
        else:  # sum w y <= bits + slack (1 - v)
            v, slack = unless
            self.add({**row, v: slack}, -math.inf, bits + slack + 1e-6)
        return y

    def solve(self, objective: dict[int, float], time_limit: float):
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_matrix

        r, c, v = [], [], []
        for i, coefs in enumerate(self.rows):
            for j, a in coefs.items():
                r.append(i)
                c.append(j)
                v.append(a)
        matrix = coo_matrix((v, (r, c)), shape=(len(self.rows), self.n_vars)).tocsr()
        cost = np.zeros(self.n_vars)
        for j, a in objective.items():
            cost[j] = a
        integrality = np.zeros(self.n_vars)
        integrality[self.integer] = 1
        return milp(
            cost,
            constraints=LinearConstraint(matrix, self.lower, self.upper),
            integrality=integrality,
            bounds=Bounds(0, 1),
            options={"time_limit": time_limit},
        )


def _size_between(prog: _Program, x: list[int], lower: float, upper: float) -> None:
    prog.add(dict.fromkeys(x, 1.0), lower, upper)


def balanced_cut_bits(network: tnplan.Network, *, cut: Iterable = (), time_limit: float = 120.0) -> float:
    """Smallest boundary, in bits, of a set of more than ``n/3`` and at most ``2n/3`` tensors.

    Every contraction tree of ``network`` (with the labels in ``cut`` sliced) has width >= it.

    Raises:
        RuntimeError: If the solver does not prove the optimum within ``time_limit`` seconds.
    """
    n = network.num_tensors
    if n < 3:
        return 0.0  # the balanced node may be an input tensor, which is no intermediate
    edges = _edges(network, cut)
    prog = _Program()
    x = prog.new(n, integer=True)
    crossing = prog.boundary_at_most(x, edges, math.inf)
    _size_between(prog, x, math.floor(n / 3) + 1, math.floor(2 * n / 3))
    res = prog.solve({y: w for y, (w, _) in zip(crossing, edges, strict=True)}, time_limit)
    if res.status != 0:
        raise RuntimeError(f"balanced cut not solved to optimality in {time_limit:g} s ({res.message})")
    return float(res.fun)


def narrow_tree_possible(
    network: tnplan.Network,
    bits: float,
    *,
    depth: int = 3,
    cut: Iterable = (),
    free_cuts: int = 0,
    time_limit: float = 900.0,
) -> bool | None:
    """Whether a contraction tree of width ``<= bits`` may exist: ``False`` is a proof that none does.

    Sets a template of nested tensor sets: ``P`` (more than ``2n/3`` tensors), split into ``V`` (the
    larger part, more than ``n/3`` and at most ``2n/3``) and its sibling, and every template set
    split again into two, larger first, down to ``depth`` levels below ``P``; a set of two or more
    tensors must split into two nonempty ones, and every set of two or more tensors has a boundary
    of at most ``bits`` (an input tensor may be wider: width counts intermediates). Every tree of
    width ``<= bits`` fills the template with its own subtrees, so an infeasible template rules all
    of them out. ``cut`` names indices already sliced; with ``free_cuts=k`` the program also picks up
    to ``k`` more to slice, so ``False`` then rules out every plan of that width slicing ``k`` or fewer.

    Returns:
        ``False`` when the template is infeasible (no such tree), ``True`` when it is feasible (no
        verdict: the template is only a necessary condition), ``None`` when the solver ran out of time.
    """
    n = network.num_tensors
    if n < 3:
        return True
    edges = _edges(network, cut)
    widest = max((sum(w for w, h in edges if t in h) for t in range(n)), default=0.0)
    prog = _Program()
    sliced = None
    if free_cuts:
        sliced = prog.new(len(edges), integer=True)
        prog.add(dict.fromkeys(sliced, 1.0), 0.0, float(free_cuts))
    sets = {k: prog.new(n, integer=True) for k in range(1, 2 ** (depth + 1))}  # heap order: 1 = P, 2 = V
    for k, x in sets.items():
        # ``split`` is 1 exactly when the set holds two or more tensors (an intermediate).
        (split,) = prog.new(1, integer=True)
        prog.add({**dict.fromkeys(x, 1.0), split: -float(n)}, -math.inf, 1.0)
        prog.add({**dict.fromkeys(x, 1.0), split: -2.0}, 0.0, math.inf)
        prog.boundary_at_most(x, edges, bits, unless=(split, widest), sliced=sliced)
        if 2 * k not in sets:
            continue
        left, right = sets[2 * k], sets[2 * k + 1]
        for t in range(n):
            prog.add({x[t]: 1.0, left[t]: -1.0, right[t]: -1.0}, 0.0, 0.0)  # the children partition x
        for child in (left, right):
            prog.add({**dict.fromkeys(child, 1.0), split: -1.0}, 0.0, math.inf)  # nonempty when split
        prog.add({**dict.fromkeys(left, 1.0), **dict.fromkeys(right, -1.0)}, 0.0, math.inf)  # larger first
    _size_between(prog, sets[2], math.floor(n / 3) + 1, math.floor(2 * n / 3))
    _size_between(prog, sets[1], math.floor(2 * n / 3) + 1, n)
    res = prog.solve({}, time_limit)
    if res.status == 2:
        return False
    if res.status == 0:
        return True
    return None
