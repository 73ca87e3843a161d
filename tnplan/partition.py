"""Top-down contraction trees from recursive hypergraph partitioning with KaHyPar.

The tensors are the hypergraph's vertices and every index shared inside the current group is a
hyperedge weighted by (jittered) log2 of its size, so a minimum cut keeps the expensive bonds inside
parts. Groups are split into ``parts`` blocks until they have at most ``cutoff`` tensors; those
leaf groups, and the blocks under each split, are then ordered exactly by the DP when small (greedy
otherwise). The KaHyPar configuration presets are the ones cotengra ships.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from tnplan.errors import PlanError
from tnplan.greedy import greedy_ssa
from tnplan.optimal import solve_legs

EXACT_GROUP = 48


@dataclass(frozen=True)
class PartitionParams:
    """One point of the partitioner's parameter space."""

    parts: int = 2
    imbalance: float = 0.1
    mode: str = "recursive"
    objective: str = "cut"
    cutoff: int = 10
    jitter: float = 0.1
    parts_decay: float = 0.5
    exact_work: int = 2_000_000


@cache
def _profile_dir() -> Path:
    try:
        import cotengra.pathfinders as pf
    except ImportError as exc:  # pragma: no cover - dependency declared
        raise PlanError("the kahypar driver needs cotengra's KaHyPar presets; pip install cotengra") from exc
    return Path(pf.__file__).parent / "kahypar_profiles"


def kahypar_available() -> bool:
    """Whether the kahypar module can be imported."""
    try:
        import kahypar  # noqa: F401
    except ImportError:
        return False
    return True


class _Builder:
    def __init__(
        self,
        legs: Sequence[Sequence[int]],
        output: frozenset[int],
        sizes: Sequence[float],
        params: PartitionParams,
        seed: int,
        deadline: float = math.inf,
    ) -> None:
        self.deadline = deadline
        self.legs = [frozenset(t) for t in legs]
        self.output = output
        self.sizes = sizes
        self.params = params
        self.rng = np.random.default_rng(seed)
        self.idx_mask: dict[int, int] = {}
        for t, term in enumerate(self.legs):
            for i in term:
                self.idx_mask[i] = self.idx_mask.get(i, 0) | (1 << t)
        self.path: list[tuple[int, int]] = []
        self.next_id = len(self.legs)
        self.node_legs: dict[int, frozenset[int]] = dict(enumerate(self.legs))
        self.node_mask: dict[int, int] = {t: 1 << t for t in range(len(self.legs))}

    def open_legs(self, nodes: Sequence[int]) -> frozenset[int]:
        m = 0
        union: set[int] = set()
        for v in nodes:
            m |= self.node_mask[v]
            union |= self.node_legs[v]
        return frozenset(i for i in union if i in self.output or self.idx_mask[i] & ~m)

    def order(self, nodes: list[int]) -> int:
        """Contract ``nodes`` (tree node ids) to one, exactly when small, greedily otherwise."""
        if len(nodes) == 1:
            return nodes[0]
        legs = [tuple(sorted(self.node_legs[v])) for v in nodes]
        out = self.open_legs(nodes)
        path = None
        if len(nodes) <= EXACT_GROUP and time.perf_counter() < self.deadline:
            # Batch (open) hyperedges are not used to join groups here: that keeps the exact
            # search tractable on batched networks at a negligible loss of generality.
            path, _ = solve_legs(legs, out, self.sizes, "flops", max_work=self.params.exact_work, join_open=False)
        if path is None:
            path = greedy_ssa(legs, out, self.sizes)
        ids = list(nodes)
        for a, b in path:
            x, y = ids[a], ids[b]
            node = self.next_id
            self.next_id += 1
            self.node_mask[node] = self.node_mask[x] | self.node_mask[y]
            self.node_legs[node] = self.open_legs([x, y])
            self.path.append((x, y))
            ids.append(node)
        return ids[-1]

    def split(self, members: list[int], parts: int) -> list[list[int]]:
        import kahypar

        p = self.params
        local = {t: k for k, t in enumerate(members)}
        edges: list[list[int]] = []
        weights: list[int] = []
        touching: dict[int, list[int]] = {}
        for t in members:
            for i in self.legs[t]:
                touching.setdefault(i, []).append(local[t])
        for i in sorted(touching):
            nodes = touching[i]
            if len(nodes) < 2:
                continue
            w = (
                math.log2(max(self.sizes[i], 1.0)) * (1.0 + p.jitter * self.rng.random())
                if p.jitter
                else (math.log2(max(self.sizes[i], 1.0)))
            )
            edges.append(nodes)
            weights.append(max(1, round(8 * w)))
        if not edges:
            return [members[k::parts] for k in range(parts)]
        index_vector = [0]
        edge_vector: list[int] = []
        for e in edges:
            edge_vector.extend(e)
            index_vector.append(len(edge_vector))
        hg = kahypar.Hypergraph(len(members), len(edges), index_vector, edge_vector, parts, weights, [1] * len(members))
        ctx = kahypar.Context()
        profile = f"{p.objective}_{'k' if p.mode == 'direct' else 'r'}KaHyPar_sea20.ini"
        ctx.loadINIconfiguration(str(_profile_dir() / profile))
        ctx.setK(parts)
        ctx.setSeed(int(self.rng.integers(0, 2**31 - 1)))
        ctx.suppressOutput(True)
        ctx.setEpsilon(p.imbalance * parts)
        kahypar.partition(hg, ctx)
        groups: dict[int, list[int]] = {}
        for k, t in enumerate(members):
            groups.setdefault(hg.blockID(k), []).append(t)
        return [groups[b] for b in sorted(groups)]

    def build(self, members: list[int], depth: int = 0) -> int:
        p = self.params
        if len(members) <= p.cutoff or time.perf_counter() >= self.deadline:
            # Past the deadline the rest of the tree is finished greedily, so a trial never
            # holds the search far beyond its budget.
            return self.order(members)
        parts = max(2, min(len(members) // 2, round(p.parts * (p.parts_decay**depth)) or 2))
        groups = self.split(members, parts)
        groups = [g for g in groups if g]
        if len(groups) < 2:
            half = len(members) // 2
            groups = [members[:half], members[half:]]
        roots = [self.build(g, depth + 1) for g in groups]
        return self.order(roots)


def partition_ssa(
    legs: Sequence[Sequence[int]],
    output: frozenset[int],
    sizes: Sequence[float],
    params: PartitionParams,
    seed: int,
    deadline: float = math.inf,
) -> list[tuple[int, int]]:
    """A complete SSA path built by recursive KaHyPar partitioning with ``params``.

    After ``deadline`` no more partitioning or exact ordering happens; the tree is completed greedily.
    """
    builder = _Builder(legs, output, sizes, params, seed, deadline)
    builder.build(list(range(len(legs))))
    return builder.path
