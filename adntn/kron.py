"""The last segment of a generator as a Kronecker sum ``W = Σ_r A_r ⊗ B_r``, for streamed layers.

A linear last segment whose tensors split into two sides, one holding the leading output legs and
the leading input legs, the other the trailing ones, is such a sum over the bonds the split cuts:
each side contracted on its own (bonds left open) is one factor. The root of a TTN splits this way
with one cut bond, so ``x @ W.T`` runs through :func:`kernels.kronsum.kron_stream` without ``W``.

Tensors that hold a middle run of the output legs and no input legs (an aTTN's boundary
disentangler, bonded to both halves) may stay out of both sides as a *mixer*: the sides then also
leave open their bonds to it (``A``'s after its output legs, ``B``'s before), and the mixer maps
those bond pairs of the streamed output to its output legs, one small product per row. Kept inside
a side, the disentangler would multiply the cut by its legs (an aTTN at bond 9: rank 72 and more
flops than the dense product); as a mixer, the cut is the root bond (rank 9, 0.30 of them).

The split is found once, at construction, by trying every assignment of the segment's tensors and
keeping the cheapest to stream whose factors the fused kernels take (one factor at most 128 wide in
both extents; a MERA's root splits off one subtree with a bond of 2 but factors 8x8 and 512x512, or
two subtrees with a cut of 4 and 64x64 factors: the second streams with half the flops); the
factor networks and the mixer's are planned like every other network.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import tnplan
from kernels.kronsum import fits
from tnplan.contract import Program

if TYPE_CHECKING:
    from adntn.generator import Generator

MAX_TENSORS = 16  # bipartitions tried: 2^k; generator roots have a handful of tensors
MAX_MIXED = 8  # segments this small also try every mixer: 3^k assignments


@dataclass(frozen=True)
class KronSplit:
    """Where the last segment splits, with the programs that build its factors (and mixer).

    Attributes:
        left: Positions (in the segment's operands) of the tensors that form ``A``.
        right: Positions of the tensors that form ``B``.
        programs: The ``A`` and ``B`` contractions, writing ``(cut..., out legs..., mixer bonds..., in legs...)``
            and ``(cut..., mixer bonds..., out legs..., in legs...)``.
        rank: Size of the cut (``R``).
        shape: ``(M, P, N, Q)``: ``A_r`` is ``M x P`` (leading output legs and ``A``'s mixer bonds by
            leading input legs), ``B_r`` is ``N x Q``.
        flops: Planned flops of building both factors and the mixer.
        mixer: Positions of the mixer's tensors (empty: the streamed output is the layer's).
        mixer_program: The mixer's contraction, writing ``(A's bonds..., B's bonds..., its output legs...)``.
        mix_shape: ``(L, C, K, N')``: the streamed output of a row, read as ``(L, C, N')`` (``A``'s output
            legs, both sides' mixer bonds, ``B``'s output legs), becomes ``(L, K, N')``.
    """

    left: tuple[int, ...]
    right: tuple[int, ...]
    programs: tuple[Program, Program]
    rank: int
    shape: tuple[int, int, int, int]
    flops: int
    mixer: tuple[int, ...] = ()
    mixer_program: Program | None = None
    mix_shape: tuple[int, int, int, int] | None = None
    # (name, tensors, flops, cache status) of each network planned for it, for Generator.plan_report.
    planned: tuple[tuple[str, int, int, str], ...] = ()

    def stream_flops(self, rows: int) -> int:
        """Flops of ``Σ_r A_r X_b B_rᵀ`` over ``rows`` rows (two products per bond term), and of the mixer."""
        m, p, n, q = self.shape
        flops = 2 * rows * self.rank * (p * q * n + m * p * n)
        if self.mix_shape is not None:
            flops += 2 * rows * math.prod(self.mix_shape)
        return flops


def _extent(legs: list[str], sizes: dict[str, int]) -> int:
    """The extent of a group of legs (the product of their sizes)."""
    return math.prod(sizes[x] for x in legs)


Sides = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (left, right, mixer) positions


@dataclass(frozen=True)
class _Candidate:
    key: tuple[bool, int, int, int]
    sides: Sides
    legs: dict[str, list[str]]
    rank: int
    shape: tuple[int, int, int, int]
    mix_shape: tuple[int, int, int, int] | None


def _assignments(k: int, can_mix: list[bool]) -> Iterator[Sides]:
    """Every ``(left, right, mixer)`` partition of ``range(k)`` with non-empty sides, mixers drawn from
    ``can_mix`` (only when ``k <= MAX_MIXED``), in a fixed order."""
    pool = [i for i in range(k) if can_mix[i]] if k <= MAX_MIXED else []
    for n_mix in range(len(pool) + 1):
        for mixer in itertools.combinations(pool, n_mix):
            rest = [i for i in range(k) if i not in mixer]
            for size in range(1, len(rest)):
                for left in itertools.combinations(rest, size):
                    yield left, tuple(i for i in rest if i not in left), mixer


def _candidate(
    net: tnplan.Network, outs: list[str], ins: list[str], owner: dict[str, int], sides: Sides
) -> _Candidate | None:
    """The legs and cost key of one partition, or ``None`` when it is no Kronecker split."""
    mixer = sides[2]
    side_of = {i: s for s, members in enumerate(sides) for i in members}
    where = [side_of[owner[leg]] for leg in outs]
    runs = [(0, 2, 1)[s] for s in where]  # the left's run leads, the mixer's follows, the right's trails
    if runs != sorted(runs) or (2 in where) != bool(mixer):
        return None
    lo = [leg for leg, s in zip(outs, where, strict=True) if s == 0]
    mo = [leg for leg, s in zip(outs, where, strict=True) if s == 2]
    ro = [leg for leg, s in zip(outs, where, strict=True) if s == 1]
    li = [leg for leg in ins if side_of[owner[leg]] == 0]
    ri = [leg for leg in ins if side_of[owner[leg]] == 1]
    if not li or not ri or ins != li + ri:
        return None
    if not mixer and not (lo and ro):
        return None
    labels = [{label for i in members for label in net.inputs[i]} for members in sides]
    if labels[0] & labels[1] & labels[2]:
        return None  # a hyperedge through all three: no product of factors and mixer
    sizes = net.size_dict
    cut = sorted(labels[0] & labels[1])
    la = sorted(labels[0] & labels[2])
    rb = sorted(labels[1] & labels[2])
    rank = _extent(cut, sizes)
    m, p = _extent(lo + la, sizes), _extent(li, sizes)
    n, q = _extent(rb + ro, sizes), _extent(ri, sizes)
    flops = rank * (p * q * n + m * p * n)
    mix_shape = None
    if mixer:
        flops += _extent(lo + la + rb + ro + mo, sizes)
        mix_shape = (_extent(lo, sizes), _extent(la + rb, sizes), _extent(mo, sizes), _extent(ro, sizes))
    # Factors the fused kernels take first, then the fewest streamed flops per row, then smaller cuts.
    key = (not fits(m, p, n, q), flops, rank, len(mixer))
    legs = {"cut": cut, "lo": lo, "la": la, "li": li, "ro": ro, "rb": rb, "ri": ri, "mo": mo}
    return _Candidate(key, sides, legs, rank, (m, p, n, q), mix_shape)


def find_split(generator: Generator) -> KronSplit | None:
    """The best Kronecker split of ``generator``'s last segment, or ``None`` when it has none: among the
    splits whose factors the fused kernels take (if any), the one with the fewest streamed flops.

    A split needs a linear last segment with one member whose output and input legs each occur in
    exactly one tensor, and two non-empty sides that each own a non-empty leading (``A``) or
    trailing (``B``) run of the input legs and, without a mixer, of the output legs; a mixer owns
    the middle run of the output legs and no input leg.
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
    k = net.num_tensors
    if k > MAX_TENSORS:
        return None
    can_mix = [not any(label in ins for label in labels) for labels in net.inputs]
    found = [c for sides in _assignments(k, can_mix) if (c := _candidate(net, outs, ins, owner, sides)) is not None]
    if not found:
        return None
    # The first of equals, in the assignments' fixed order.
    return _build(generator, net, min(found, key=lambda c: c.key))


def _build(generator: Generator, net: tnplan.Network, best: _Candidate) -> KronSplit | None:
    """Plan the chosen partition's factor (and mixer) networks."""
    sizes = net.size_dict
    legs = best.legs
    left, right, mixer = best.sides
    wanted = [
        (left, (*legs["cut"], *legs["lo"], *legs["la"], *legs["li"])),
        (right, (*legs["cut"], *legs["rb"], *legs["ro"], *legs["ri"])),
    ]
    if mixer:
        wanted.append((mixer, (*legs["la"], *legs["rb"], *legs["mo"])))
    programs = []
    planned = []
    flops = 0
    for name, (side, output) in zip(("A", "B", "mixer"), wanted, strict=False):
        side_net = tnplan.Network([net.inputs[t] for t in side], output, sizes)
        try:
            plan = tnplan.plan(side_net, **generator._plan_kwargs)
        except tnplan.PlanError:
            # Only a cache miss under cache_only gets here (an export from before this split's
            # networks were planned); the split is optional, so the generator may lack it, but says so.
            warnings.warn(
                "the plan cache lacks this generator's Kronecker split (an export from before it was planned), "
                "so mode='kron' is unavailable and auto will not pick it; plan again where kahypar is installed "
                "(adntn plan ... --export) to have it",
                stacklevel=2,
            )
            return None
        programs.append(plan.compile())
        planned.append((f"kron:{name}", len(side), plan.flops, plan.cache_status))
        flops += plan.flops
    return KronSplit(
        left,
        right,
        (programs[0], programs[1]),
        best.rank,
        best.shape,
        flops,
        mixer,
        programs[2] if mixer else None,
        best.mix_shape,
        tuple(planned),
    )
