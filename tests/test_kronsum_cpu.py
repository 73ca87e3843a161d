"""The Kronecker-sum stream on the CPU in cache-sized blocks of rows (kernels.kronsum_cpu)."""

from __future__ import annotations

import math

import pytest
import torch

import kernels.kronsum_cpu as kc
from kernels.kronsum import kron_stream, reference

torch.set_num_threads(1)
MIN_BLOCKED_BYTES = kc.MIN_BLOCKED_BYTES


@pytest.fixture(autouse=True)
def _blocks_at_any_batch(monkeypatch):
    # These tests check the blocks on batches small enough to read; at the real threshold a batch whose
    # intermediate fits one block takes the reference (see test_a_batch_of_one_block_takes_the_reference).
    monkeypatch.setattr(kc, "MIN_BLOCKED_BYTES", -1)


def _operands(rows, r, m, p, n, q, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
        for shape in ((rows, p, q), (r, m, p), (r, n, q))
    ]


def _rel(u: torch.Tensor, v: torch.Tensor) -> float:
    return float((u - v).detach().norm() / v.detach().norm())


def _blocked(y: torch.Tensor) -> bool:
    return type(y.grad_fn).__name__ == "_KronRowsBackward"


@pytest.mark.parametrize(
    ("rows", "r", "m", "p", "n", "q", "block_bytes"),
    [
        (37, 3, 6, 3, 4, 5, 3 * 3 * 4 * 8 * 3),  # from X Bᵀ, blocks of 3 rows (dA a row at a time), a ragged end
        (53, 2, 6, 3, 4, 5, 3 * 2 * 4 * 8 * 9),  # blocks of 9 rows: dA one product a block
        (29, 3, 3, 9, 8, 4, 3 * 4 * 3 * 8 * 4),  # from A X (fewer flops), blocks of 4 rows
        (40, 2, 3, 5, 40, 6, 3 * 5 * 2 * 8),  # B larger than a block: backward blocks of 4 rows sum >= MIN_SUM into dB
        (0, 2, 3, 3, 3, 3, 1 << 20),  # no rows
    ],
)
def test_blocks_match_the_reference_forward_and_gradients(monkeypatch, rows, r, m, p, n, q, block_bytes):
    monkeypatch.setattr(kc, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(kc, "MIN_SUM", 16)
    x, a, b = _operands(rows, r, m, p, n, q, seed=rows)
    y = kron_stream(x, a, b, backend="torch")
    assert _blocked(y) and y.shape == (rows, m, n)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, a, b), dy)
    want_y = reference(x, a, b)
    want = torch.autograd.grad(want_y, (x, a, b), dy)
    if rows:
        assert _rel(y, want_y) < 1e-12
        for g, w in zip(got, want, strict=True):
            assert _rel(g, w) < 1e-12
    else:
        assert all(torch.count_nonzero(g) == 0 for g in got)


@pytest.mark.parametrize(
    ("r", "m", "p", "n", "q", "dtype", "one_block"),
    [
        (2, 64, 64, 64, 64, torch.float32, 32),  # TTN χ=2 halves: X Bᵀ writes 32 KiB a row
        (2, 8, 3, 16, 4, torch.float64, 2048),  # from A X (the mirror): 512 bytes a row
    ],
)
def test_a_batch_of_one_block_takes_the_reference(monkeypatch, r, m, p, n, q, dtype, one_block):
    monkeypatch.setattr(kc, "MIN_BLOCKED_BYTES", MIN_BLOCKED_BYTES)
    assert kc.plan_mirror(p, q, m, n, r, dtype.itemsize) is (m * q < p * n)
    for rows, blocked in ((1, False), (one_block, False), (one_block + 1, True)):
        x, a, b = _operands(rows, r, m, p, n, q, seed=rows, dtype=dtype)
        y = kron_stream(x, a, b, backend="torch")
        assert _blocked(y) is blocked, rows
        assert _rel(y, reference(x, a, b)) < 1e-5


def test_block_sizes_follow_the_cache_and_the_gradient_sums(monkeypatch):
    # 64-wide halves at bond 13 (TTN χ=13, 4096x4096): 53,248 floats a row, 4 rows to a MiB.
    assert kc.block_rows(64, 64, 64, 64, 13, 4) == 4
    assert kc.block_rows(64, 64, 64, 64, 13, 8) == 2
    # A row larger than a block still makes a block of one.
    assert kc.block_rows(512, 64, 64, 512, 16, 4) == 1
    # B (R N x Q) of 8 MB: the backward sums MIN_SUM rows of P = 8 terms into it per block.
    assert kc.block_rows(8, 512, 8, 512, 8, 4) == 8
    assert kc.block_rows(8, 512, 8, 512, 8, 4, backward=True) == kc.MIN_SUM // 8


@pytest.mark.parametrize(
    ("shape", "want"),
    [
        ((64, 64, 64, 64, 13), False),  # TTN root of 64-wide halves: either start, the same flops
        ((8, 512, 8, 512, 8), None),  # MERA χ=8 root, 8x8 and 512x512 factors: a 512-term start, or B every row
        ((224, 112, 64, 64, 9), True),  # MERA χ=3 25088x4096: from A X, fewer flops
        ((512, 49, 256, 16, 24), None),  # TTN χ=24 25088x4096: A (12 MB) re-read by every row: no blocks
        ((16, 1568, 8, 512, 14), None),  # MERA χ=14 25088x4096: a 1568-term start, or B (45 MB) every row
    ],
)
def test_plan_mirror_picks_the_start_or_no_blocks(shape, want):
    p, q, m, n, r = shape
    assert kc.plan_mirror(p, q, m, n, r, 4) is want


def test_factors_with_no_paying_start_take_the_reference():
    x, a, b = _operands(3, 2, 4, 300, 5, 300, seed=1)  # both first products sum 300 terms
    y = kron_stream(x, a, b, backend="torch")
    assert not _blocked(y)
    assert torch.equal(y, reference(x, a, b))


@pytest.mark.parametrize("needed", [(True, False, False), (False, True, True), (False, False, True)])
def test_only_the_needed_gradients_are_computed(needed):
    ops = _operands(11, 2, 6, 5, 4, 7, seed=2)
    for t, need in zip(ops, needed, strict=True):
        t.requires_grad_(need)
    wanted = [t for t in ops if t.requires_grad]
    y = kron_stream(*ops, backend="torch")
    got = torch.autograd.grad(y.square().sum(), wanted)
    want = torch.autograd.grad(reference(*ops).square().sum(), wanted)
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < 1e-12


def test_the_node_keeps_only_its_operands():
    # The bond-sized intermediate (R times the input) is recomputed in the backward, never saved.
    x, a, b = _operands(9, 4, 6, 5, 6, 5, seed=3)
    y = kron_stream(x, a, b, backend="torch")
    saved = y.grad_fn.saved_tensors
    assert [t.shape for t in saved] == [x.shape, a.shape, b.shape]


def test_create_graph_gives_the_references_second_derivatives():
    x, a, b = _operands(6, 2, 5, 4, 3, 6, seed=4)
    v = [torch.randn_like(t) for t in (x, a, b)]

    def hvp(fn):
        grads = torch.autograd.grad(fn(x, a, b).square().sum(), (x, a, b), create_graph=True)
        dot = sum((g * w).sum() for g, w in zip(grads, v, strict=True))
        return torch.autograd.grad(dot, (x, a, b))

    for g, w in zip(hvp(lambda *t: kron_stream(*t, backend="torch")), hvp(reference), strict=True):
        assert _rel(g, w) < 1e-12


def test_an_input_changed_in_place_before_backward_is_refused():
    x, a, b = _operands(5, 2, 4, 3, 4, 3, seed=5)
    y = kron_stream(x, a * 1, b, backend="torch")
    with torch.no_grad():
        x.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_same_inputs_give_identical_bits():
    x, a, b = _operands(33, 3, 8, 6, 8, 6, seed=6, dtype=torch.float32)
    runs = []
    for _ in range(2):
        y = kron_stream(x, a, b, backend="torch")
        runs.append([y, *torch.autograd.grad(y.square().sum(), (x, a, b))])
    for u, v in zip(*runs, strict=True):
        assert torch.equal(u, v)


def test_a_non_contiguous_input_and_output_gradient():
    x, a, b = _operands(7, 2, 5, 4, 6, 3, seed=7)
    xt = x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    assert not xt.is_contiguous()
    y = kron_stream(xt, a, b, backend="torch")
    dy = torch.randn(6, 7, 5, dtype=torch.float64).permute(1, 2, 0)
    got = torch.autograd.grad(y, (xt, a, b), dy)
    want = torch.autograd.grad(reference(x, a, b), (x, a, b), dy)
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < 1e-12


def test_torch_func_transforms_take_the_reference():
    x, a, b = (t.detach() for t in _operands(4, 2, 3, 5, 3, 4, seed=8))
    got = torch.func.grad(lambda a_: kron_stream(x, a_, b, backend="torch").square().sum())(a)
    want = torch.func.grad(lambda a_: reference(x, a_, b).square().sum())(a)
    assert _rel(got, want) < 1e-12


def test_meta_tensors_trace_the_blocks_forward_and_backward():
    # The CPU mode model (adntn/timing.py) traces the torch route on meta tensors.
    x, a, b = (torch.empty(s, device="meta", requires_grad=True) for s in ((10, 64, 64), (13, 64, 64), (13, 64, 64)))
    y = kron_stream(x, a, b, backend="torch")
    assert _blocked(y) and y.shape == (10, 64, 64)
    y.backward(torch.empty_like(y))
    assert x.grad.shape == x.shape and a.grad.shape == a.shape and b.grad.shape == b.shape


def test_one_tensor_passed_twice_gets_its_gradient_once_with_create_graph():
    t = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    for ops in ((t, t, t), (torch.randn(2, 3, 3, dtype=torch.float64), t, t)):
        plain = torch.autograd.grad(kron_stream(*ops, backend="torch").square().sum(), t)[0]
        graph = torch.autograd.grad(kron_stream(*ops, backend="torch").square().sum(), t, create_graph=True)[0]
        want = torch.autograd.grad(reference(*ops).square().sum(), t)[0]
        assert _rel(plain, want) < 1e-12 and _rel(graph, want) < 1e-12


def test_cpu_autocast_takes_the_reference_forward_and_a_float_backward():
    x, a, b = _operands(6, 2, 3, 4, 5, 6, seed=9, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kron_stream(x, a, b, backend="torch")
        want = reference(x, a, b)
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)
    # A layer streams with autocast off inside, then its backward runs under the caller's autocast.
    import adntn

    layer = adntn.TNLinear(64, 64, arch="ttn", bond_dim=3, mode="kron")
    xs = torch.randn(5, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(xs).float().sum().backward()
    assert xs.grad.dtype == torch.float32 and torch.isfinite(xs.grad).all()


def test_batched_gradients_match_one_at_a_time():
    x, a, b = _operands(4, 2, 3, 4, 5, 6, seed=10)
    y = kron_stream(x, a, b, backend="torch")
    dys = torch.randn(3, *y.shape, dtype=torch.float64)
    batched = torch.autograd.grad(y, (x, a, b), dys, is_grads_batched=True, retain_graph=True)
    for i in range(3):
        single = torch.autograd.grad(y, (x, a, b), dys[i], retain_graph=True)
        for g, s in zip(batched, single, strict=True):
            assert _rel(g[i], s) < 1e-12


@pytest.mark.parametrize("empty", ["p", "q", "r"])
def test_an_empty_extent_gives_zeros_not_an_error(empty):
    dims = {"rows": 3, "r": 2, "m": 3, "p": 4, "n": 5, "q": 6} | {empty: 0}
    x, a, b = _operands(*dims.values(), seed=11)
    y = kron_stream(x, a, b, backend="torch")
    y.sum().backward()
    assert torch.count_nonzero(y) == 0 and y.shape == (3, 3, 5)
    assert all(t.grad is not None and t.grad.shape == t.shape for t in (x, a, b))


def test_equal_flops_start_from_the_smaller_intermediate():
    # (P, Q, M, N, R) = (4, 3, 16, 8, 2): 1,920 flops a row either way; X Bᵀ writes P R N = 64 a row,
    # A X writes M R Q = 96.
    assert kc.plan_mirror(4, 3, 16, 8, 2, 8) is False
    assert kc.plan_mirror(3, 4, 8, 16, 2, 8) is True


def test_the_mode_model_prices_the_blocks_products_as_products():
    from adntn.timing import trace

    rows, (r, m, p, n, q) = 12, (3, 8, 8, 8, 8)
    ops = [torch.empty(s, device="meta", requires_grad=True) for s in ((rows, p, q), (r, m, p), (r, n, q))]

    def step():
        y = kron_stream(*ops, backend="torch")
        y.backward(torch.empty_like(y))

    flops = sum(2 * math.prod(op.dims) for op in trace(step) if op.kind == "mm")
    first, second = 2 * p * q * r * n, 2 * m * p * r * n  # a row's X Bᵀ and A' U
    # Forward: both; backward: the first again, then Ā', Ū, X̄ and B̄.
    assert flops == rows * (4 * first + 3 * second)


@pytest.mark.parametrize(
    ("rows", "shape", "needs"),
    [
        (1001, (13, 64, 64, 64, 64), (True, True, True)),  # TTN χ=13 root: 4-row blocks, a ragged last one
        (1000, (13, 64, 64, 64, 64), (False, True, True)),  # no ragged block; x needs no gradient
        (777, (9, 64, 224, 64, 112), (True, True, True)),  # the mirror frame (MERA χ=3 25088x4096)
    ],
)
def test_a_meta_trace_counts_one_block_for_all_and_prices_like_the_full_loop(monkeypatch, rows, shape, needs):
    from collections import Counter

    from adntn.timing import trace

    r, m, p, n, q = shape
    assert kc.plan_mirror(p, q, m, n, r, 4) is (rows == 777)

    def step():
        ops = [
            torch.empty(s, device="meta", requires_grad=need)
            for s, need in zip(((rows, p, q), (r, m, p), (r, n, q)), needs, strict=True)
        ]
        y = kron_stream(*ops, backend="torch")
        assert _blocked(y)
        y.backward(torch.empty_like(y))

    def weighted(ops):
        counts = Counter()
        for op in ops:
            counts[op.kind, op.dims] += op.count
        return counts

    collapsed = trace(step)
    every_block = kc._blocks
    monkeypatch.setattr(kc, "_blocks", lambda rows, step, meta: every_block(rows, step, False))
    full = trace(step)
    assert all(op.count == 1 for op in full) and len(collapsed) < len(full) / 10
    assert weighted(collapsed) == weighted(full)
