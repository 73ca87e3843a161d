"""Step layouts for streamed programs: the copies torch's matrix-product lowering makes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from spec import assert_program_matches_einsum
from torch.utils._python_dispatch import TorchDispatchMode

import tnplan
from tnplan.matmul_layout import STRIDED, arrange, copied, options

SIZES = [2, 3, 4, 5, 6, 7]


def test_views_and_transposed_matrices_copy_nothing():
    # legs 0..3 contiguous; (rows, cols) = ((0, 1), (2, 3)) or its transpose are free views.
    assert copied([0, 1, 2, 3], ([], [0, 1], [2, 3]), SIZES) == 0
    assert copied([0, 1, 2, 3], ([], [2, 3], [0, 1]), SIZES) == 0
    assert copied([0, 1, 2, 3], ([0], [1], [2, 3]), SIZES) == 0


def test_copies_are_weighted_by_whether_they_keep_the_innermost_run():
    n = 2 * 3 * 4 * 5
    # Rows (0, 2) are not adjacent: a copy; columns end on leg 3 (5 elements, under RUN): strided.
    assert copied([0, 1, 2, 3], ([], [0, 2], [1, 3]), SIZES) == n * STRIDED
    big = [2, 3, 64, 5]  # leg 2 is a 64-element run
    assert copied([0, 1, 3, 2], ([], [1, 0], [3, 2]), big) == 2 * 3 * 64 * 5
    # Batch innermost: bmm gets no unit stride in its matrices and copies at a stride.
    assert copied([0, 1, 2], ([2], [0], [1]), SIZES) == 2 * 3 * 4 * STRIDED
    # Size-1 legs have no stride and never force a copy.
    assert copied([0, 1, 2], ([], [0, 1], [2]), [3, 1, 4]) == 0


# A streamed TTN root, as adntn builds it: x[b, i, j] through L[o, i, k] T[p, j, l] R[k, l] -> y[b, o, p],
# with a large batch b; the planner may return either of these equal-flop paths (linear form).
ROOT = "oik,pjl,kl,bij->bop"
ROOT_SHAPES = [(64, 64, 2), (64, 64, 2), (2, 2), (256, 64, 64)]
ROOT_PATHS = [[(1, 2), (2, 1), (0, 1)], [(2, 0), (2, 1), (1, 0)]]


@pytest.mark.parametrize("path", ROOT_PATHS)
def test_arrange_finds_the_cheapest_layout_of_a_streamed_tree_root(path):
    net = tnplan.Network.from_einsum(ROOT, *ROOT_SHAPES)
    ids = net.label_ids
    plan = tnplan.from_path(net, path)
    legs = [[ids[c] for c in t] for t in net.inputs]
    results = [s.legs_out for s in plan.costs.steps]
    steps = arrange(plan.ssa_path, legs, results, [ids[c] for c in "bop"], net.int_sizes)
    assert steps is not None
    x = 256 * 64 * 64
    assert all(s.copied < STRIDED * x for s in steps)  # batch tensors are at most copied in runs, never at a stride
    # Exhaustive over every step's operand order and summed-leg order: nothing copies less.
    assert sum(s.copied for s in steps) <= _brute_force(plan, legs, net.int_sizes)


def _brute_force(plan, legs, sizes) -> int:
    best = None
    n = len(plan.ssa_path)
    for picks in itertools.product(range(4), repeat=n):
        orders, cost = [tuple(lg) for lg in legs], 0
        for k, ((a, b), st) in enumerate(zip(plan.ssa_path, plan.costs.steps, strict=True)):
            opts = options(orders[a], orders[b], set(st.legs_out), sizes)
            opt = opts[picks[k] % len(opts)]
            cost += opt.copied
            orders.append(opt.result)
        best = cost if best is None else min(best, cost)
    return best


def test_a_step_summing_a_leg_of_one_operand_is_left_to_einsum():
    net = tnplan.Network.from_einsum("abx,bc->ac", (2, 3, 4), (3, 2))
    ids = net.label_ids
    legs = [[ids[c] for c in t] for t in net.inputs]
    assert arrange([(0, 1)], legs, [[ids["a"], ids["c"]]], [ids["a"], ids["c"]], net.int_sizes) is None


class _StridedCopies(TorchDispatchMode):
    """Elements copied with the innermost source axis moved (clones of tensors whose last stride is not 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ("clone", "contiguous"):
            src = args[0]
            dims = [(s, st) for s, st in zip(src.shape, src.stride(), strict=True) if s != 1]
            if dims and dims[-1][1] != 1:
                self.elements += src.numel()
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", ROOT_PATHS)
def test_streamed_tree_root_runs_forward_and_backward_without_strided_copies_of_the_batch(path):
    # Before the layouts, the first path's last step copied its 2 x 64 x 256 x 64 operand with the
    # innermost axis moved (CPU: 4x slower than a copy in runs), forward and backward.
    net = tnplan.Network.from_einsum(ROOT, *ROOT_SHAPES)
    prog = tnplan.from_path(net, path).compile(free="b")
    xs = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ROOT_SHAPES]
    with _StridedCopies() as mode:
        out = prog(*xs)
        out.backward(torch.randn_like(out))
    assert mode.elements < 256 * 64 * 2  # nothing batch-sized moves at a stride
    torch.testing.assert_close(out.detach(), torch.einsum(ROOT, *[x.detach() for x in xs]))


def test_streamed_programs_agree_with_einsum_for_every_planned_path():
    rng = np.random.default_rng(3)
    eq = "aic,cd,bjd,nij->nab"
    shapes = [(3, 4, 2), (2, 3), (5, 6, 3), (7, 4, 6)]
    net = tnplan.Network.from_einsum(eq, *shapes)
    xs = [rng.standard_normal(s) for s in shapes]
    for path in ([(0, 1), (0, 1), (0, 1)], [(2, 3), (0, 1), (0, 1)], [(1, 3), (0, 2), (0, 1)]):
        assert_program_matches_einsum(tnplan.from_path(net, path).compile(free="n"), eq, xs, rtol=1e-12)
