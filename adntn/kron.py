"""The last segment of a generator as a Kronecker sum ``W = Σ_r A_r ⊗ B_r``, for streamed layers.

A linear last segment whose tensors split into two sides, one holding the leading output legs and
the leading input legs, the other the trailing ones, is such a sum over the bonds the split cuts:
each side contracted on its own (bonds left open) is one factor. The root of a TTN splits this way
with one cut bond, so ``x @ W.T`` runs through :func:`kernels.kronsum.kron_stream` without ``W``.
The split is found once, at construction, by trying every bipartition of the segment's tensors and
keeping the cheapest to stream whose factors the fused kernels take (one factor at most 128 wide in
both extents; a MERA's root splits off one subtree with a bond of 2 but factors 8x8 and 512x512, or
two subtrees with a cut of 4 and 64x64 factors: the second streams with half the flops);
both factor networks are planned like every other network.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import tnplan
from kernels.kronsum import fits
from tnplan.contract import Program

if TYPE_CHECKING:
    from adntn.generator import Generator

MAX_TENSORS = 16  # bipartitions tried: 2^k; generator roots have a handful of tensors


@dataclass(frozen=True)
class KronSplit:
    """Where the last segment splits, with the programs that build its two factors.

    Attributes:
        left: Positions (in the segment's operands) of the tensors that form ``A``.
        right: Positions of the tensors that form ``B``.
        programs: The ``A`` and ``B`` contractions, each writing ``(cut..., out legs..., in legs...)``.
        rank: Size of the cut (``R``).
        shape: ``(M, P, N, Q)``: ``A_r`` is ``M x P`` (leading output by leading input legs), ``B_r`` is ``N x Q``.
        flops: Planned flops of building both factors.
    """

    left: tuple[int, ...]
    right: tuple[int, ...]
    programs: tuple[Program, Program]
    rank: int
    shape: tuple[int, int, int, int]
    flops: int

    def stream_flops(self, rows: int) -> int:
        """Flops of ``Σ_r A_r X_b B_rᵀ`` over ``rows`` rows (two products per bond term)."""
        m, p, n, q = self.shape
        return 2 * rows * self.rank * (p * q * n + m * p * n)


def _extent(legs: list[str], sizes: dict[str, int]) -> int:
    """The extent of a group of legs (the product of their sizes)."""
    return math.prod(sizes[x] for x in legs)


def find_split(generator: Generator) -> KronSplit | None:
    """The best Kronecker split of ``generator``'s last segment, or ``None`` when it has none: among the
    splits whose factors the fused kernels take (if any), the one with the fewest streamed flops.

    A split needs a linear last segment with one member whose output and input legs each occur in
    exactly one tensor, and two non-empty sides that each own a non-empty leading (``A``) or
    trailing (``B``) run of both the output legs and the input legs.
    """
    if not generator.streamable:
        return None
    last = generator.groups[-1]
    net = last.network
    ids = dict(zip(last.labels[-1], net.output, strict=True))
    outs = [ids[leg] for leg in generator.out_legs]
    ins = [ids[leg] for leg in generator.in_legs]
    owner: dict[str, int] = {}
    for pos, labels in enumerate(net.inputs):
        for label in labels:
            if label in outs or label in ins:
                if label in owner or labels.count(label) > 1:
                    return None
                owner[label] = pos
    sizes = net.size_dict
    best: tuple[tuple[bool, int, int], tuple[int, ...], tuple[int, ...], list[str], list[str], list[str]] | None = None
    k = net.num_tensors
    if k > MAX_TENSORS:
        return None
    for size in range(1, k):
        for left in itertools.combinations(range(k), size):
            right = tuple(i for i in range(k) if i not in left)
            lo = [leg for leg in outs if owner[leg] in left]
            li = [leg for leg in ins if owner[leg] in left]
            if not (0 < len(lo) < len(outs) and 0 < len(li) < len(ins)):
                continue
            if lo != outs[: len(lo)] or li != ins[: len(li)]:
                continue
            left_labels = {label for i in left for label in net.inputs[i]}
            right_labels = {label for i in right for label in net.inputs[i]}
            cut = sorted(left_labels & right_labels)
            rank = math.prod(sizes[c] for c in cut)
            m, p = _extent(lo, sizes), _extent(li, sizes)
            n, q = _extent(outs[len(lo) :], sizes), _extent(ins[len(li) :], sizes)
            # Factors the fused kernels take first, then the fewest streamed flops per row.
            key = (not fits(m, p, n, q), rank * (p * q * n + m * p * n), rank)
            if best is None or key < best[0]:
                best = (key, left, right, cut, lo, li)
    if best is None:
        return None
    (_, _, rank), left, right, cut, lo, li = best
    ro, ri = outs[len(lo) :], ins[len(li) :]
    programs = []
    flops = 0
    for side, o, i in ((left, lo, li), (right, ro, ri)):
        side_net = tnplan.Network([net.inputs[t] for t in side], (*cut, *o, *i), sizes)
        try:
            plan = tnplan.plan(side_net, **generator._plan_kwargs)
        except tnplan.PlanError:
            # Only a cache miss under cache_only gets here (an export from before factors were
            # planned); the split is optional, so the generator just lacks it.
            return None
        programs.append(plan.compile())
        flops += plan.flops
    shape = tuple(_extent(legs, sizes) for legs in (lo, li, ro, ri))
    return KronSplit(left, right, (programs[0], programs[1]), rank, shape, flops)  # type: ignore[arg-type]
