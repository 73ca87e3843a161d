"""Operand and leg orders for a program's pairwise einsum steps, chosen so that their matrix products copy least.

``torch.einsum`` runs a two-operand step as one batched matrix product: it permutes the left operand to
(kept shared legs, left-only legs, summed legs) and the right one to (kept shared, summed, right-only),
reshapes each to three axes and calls ``bmm``. Kept and one-sided legs follow the step's output order,
summed legs the order of their letters in the equation. An operand whose memory already holds each of
those groups as one contiguous run is a free view (``bmm`` takes either matrix transposed); any other
operand is copied first, and a copy that moves the innermost axis reads memory at a stride, several
times slower. In a streamed generator layer the operands are ``batch x 4096 x bond`` tensors, so these
copies decide the step's time while the path's flops stay the same.

Each step writes its result in the order ``bmm`` produces it, so every intermediate is contiguous in its
own leg order and the next step sees exactly the memory this model assumes. Which operand goes left and
how the summed legs are ordered changes the copies of this step and the layout the next steps receive,
so :func:`arrange` searches the choices of all steps together (a copy in the forward pass has its
inverse in the backward pass, so the forward copies rank both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Copy cost per element: a copy keeping a contiguous innermost run of at least RUN elements costs 1,
# one that reads at a stride STRIDED (CPU, 33.5M floats: 290 ms strided vs 74 ms with runs of 64).
STRIDED = 4
RUN = 16
# Steps searched exhaustively (4 choices each, pruned); longer programs choose step by step.
SEARCH_STEPS = 8


@dataclass(frozen=True)
class Arrangement:
    """One step's orders: operands swapped or not, the legs of each, and the summed and kept groups."""

    swapped: bool
    left: tuple[int, ...]
    right: tuple[int, ...]
    summed: tuple[int, ...]
    kept: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # batch, left-only, right-only
    copied: int

    @property
    def result(self) -> tuple[int, ...]:
        """The result's legs in ``bmm``'s order (its memory order)."""
        return tuple(i for group in self.kept for i in group)


def copied(legs: Sequence[int], groups: Sequence[Sequence[int]], sizes: Sequence[int]) -> int:
    """Weighted elements copied to view a tensor contiguous in ``legs`` as the matrices ``groups``.

    Args:
        legs: The tensor's legs, outermost first; its memory is contiguous in this order.
        groups: Batch, rows and columns of the matrix product, each an ordered list of legs.
        sizes: Size of every leg id.
    """
    real = [i for i in legs if sizes[i] != 1]  # size-1 axes have no stride to keep
    wanted = [[i for i in g if sizes[i] != 1] for g in groups]
    if not real:
        return 0
    pos = {leg: k for k, leg in enumerate(real)}
    views = all(pos[g[j + 1]] == pos[g[j]] + 1 for g in wanted for j in range(len(g) - 1))
    if views and any(g and g[-1] == real[-1] for g in wanted[1:]):
        return 0
    flat = [i for g in wanted for i in g]
    run = 1
    for a, b in zip(reversed(flat), reversed(real), strict=False):
        if a != b:
            break
        run *= sizes[a]
    n = math.prod(sizes[i] for i in real)
    return n if run >= RUN else n * STRIDED


def options(left: Sequence[int], right: Sequence[int], keep: set[int], sizes: Sequence[int]) -> list[Arrangement]:
    """The distinct orders for one step (plan's operand order first), each with its copy cost."""
    found: dict[tuple, Arrangement] = {}
    for swapped in (False, True):
        a, b = (right, left) if swapped else (left, right)
        for source in (a, b):
            shared = [i for i in source if i in a and i in b]
            batch = [i for i in shared if i in keep]
            summed = [i for i in shared if i not in keep]
            only_a = [i for i in a if i in keep and i not in b]
            only_b = [i for i in b if i in keep and i not in a]
            cost = copied(a, (batch, only_a, summed), sizes) + copied(b, (batch, summed, only_b), sizes)
            kept = (tuple(batch), tuple(only_a), tuple(only_b))
            found.setdefault(
                (swapped, tuple(summed), kept), Arrangement(swapped, tuple(a), tuple(b), tuple(summed), kept, cost)
            )
    return list(found.values())


def arrange(
    path: Sequence[tuple[int, int]],
    legs: Sequence[Sequence[int]],
    results: Sequence[Sequence[int]],
    out: Sequence[int],
    sizes: Sequence[int],
) -> list[Arrangement] | None:
    """The orders of every step of an SSA ``path`` with the fewest copied elements.

    Args:
        path: Pairs of SSA positions, one per step.
        legs: The inputs' legs, each input contiguous in its order.
        results: The legs each step keeps (any order).
        out: The program's output legs; a last result whose matrices cannot be viewed in this order
            costs its copy too (the output's gradient arrives in it).
        sizes: Size of every leg id.

    Returns:
        One :class:`Arrangement` per step, or ``None`` when some step sums a leg that only one operand
        holds (einsum reduces it on its own; this model does not cover that).
    """
    held = [set(lg) for lg in legs] + [set(r) for r in results]
    if any((i in held[a]) != (i in held[b]) and i not in held[n + len(legs)]
           for n, (a, b) in enumerate(path) for i in held[a] | held[b]):  # fmt: skip
        return None
    best: tuple[int, list[Arrangement]] | None = None
    exhaustive = len(path) <= SEARCH_STEPS

    def visit(k: int, orders: list[tuple[int, ...]], chosen: list[Arrangement], cost: int) -> None:
        nonlocal best
        if best is not None and cost >= best[0]:
            return
        if k == len(path):
            if chosen:
                cost += copied(out, chosen[-1].kept, sizes)
            if best is None or cost < best[0]:
                best = (cost, list(chosen))
            return
        a, b = path[k]
        opts = options(orders[a], orders[b], held[k + len(legs)], sizes)
        for opt in opts if exhaustive else [min(opts, key=lambda o: o.copied)]:
            chosen.append(opt)
            visit(k + 1, [*orders, opt.result], chosen, cost + opt.copied)
            chosen.pop()

    visit(0, [tuple(lg) for lg in legs], [], 0)
    assert best is not None
    return best[1]
