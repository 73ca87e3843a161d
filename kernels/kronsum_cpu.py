"""The Kronecker-sum stream ``Y_b = Σ_r A_r X_b B_rᵀ`` on the CPU, a block of rows at a time.

Through :func:`kernels.kronsum.reference` the bond-sized intermediate (``X_b B_rᵀ`` for every row and
bond, ``R`` times the input) is written to fresh memory once in the forward, saved for the backward,
and its gradient written once more; for a TTN χ=13 4096x4096 root at 256 rows those writes and the
copies autograd adds around the broadcast product took 40% of a training step, and the step ran no
faster than the dense layer's three GEMMs. Here the rows go through in blocks whose intermediate stays
in the core's L2 cache (:data:`BLOCK_BYTES`): each block's two products run back to back, and the
backward recomputes the block's intermediate (one more GEMM) instead of saving it, so only ``X``,
``A``, ``B`` and ``Y`` are whole-batch tensors.

Per block, with ``U = X B'ᵀ`` (``B'`` is ``B`` as ``(R N, Q)``; rows of ``U`` are ``(row, p)``, columns
``(r, n)``) and ``A'`` = ``A`` as ``(M, P R)``: ``Y_b = A' U_b`` (``U_b`` read as ``(P R, N)``); backward
``Ū_b = A'ᵀ Ȳ_b``, ``X̄ = Ū B'``, ``B̄' = Ūᵀ X`` and ``Ā' = Σ_b Ȳ_b U_bᵀ``. All but the last are single
products over the block (no copies); the last sums over rows and ``n``, which no stride of ``U`` folds
into one extent, so it is one small product per row into a shared accumulator. When starting from ``A X_b`` takes
fewer flops the mirror image runs (``V_b = A'' X_b`` with ``A''`` = ``A`` as ``(M R, P)``).

The backward is not itself differentiable through these blocks: with ``create_graph=True`` the
gradients come from the reference contraction, which autograd can differentiate again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from kernels.repeat import repeated
from kernels.transforms import batched_grad, transformed

BLOCK_BYTES = 1 << 20  # a block's intermediate, within a core's L2 (2 MiB here): the next product reads it there
MIN_SUM = 256  # terms summed per block into a factor's gradient that does not fit the cache
MAX_SUMMED = 256  # the first product's summed extent past which recomputing it costs more than writing it
PER_ROW_BELOW = 8  # blocks of fewer rows sum Ā' one row at a time (no copy); larger ones as one product on a copy
# A whole batch's intermediate at or below which the reference runs: as one block its intermediate is as
# cache-resident as a block's, so blocking would only recompute it in the backward. Measured in
# benchmarks/results/kernels-kron-blocks-cpu.md (1 thread, training steps, 29 cases): with this rule the
# faster route in 22, worst 1.10x its time; blocking every batch 13, worst 2.00x (narrow factors at 0.5 MiB).
MIN_BLOCKED_BYTES = BLOCK_BYTES


def block_rows(p: int, q: int, m: int, n: int, r: int, itemsize: int, backward: bool = False) -> int:
    """Rows per block for ``X`` rows ``(P, Q)``, ``A`` ``(R, M, P)`` and ``B`` ``(R, N, Q)`` (in the frame
    that starts from ``X_b B_rᵀ``): as many as keep the block's intermediate (``P R N`` elements a row)
    within :data:`BLOCK_BYTES`; in the ``backward``, when ``B̄`` is larger than that, at least as many as
    sum :data:`MIN_SUM` terms into it (each block reads and writes the whole accumulator)."""
    rows = max(1, BLOCK_BYTES // max(p * r * n * itemsize, 1))
    if backward and r * n * q * itemsize > BLOCK_BYTES:
        rows = max(rows, -(-MIN_SUM // max(p, 1)))
    return rows


def _blocks(rows: int, step: int, meta: bool) -> Iterator[tuple[int, int]]:
    """Each block's first row and how many identical blocks it stands for: every block of ``step`` rows
    on real data; on meta tensors (the CPU mode model's trace, which prices each operation that many
    times: :mod:`kernels.repeat`) one full block for all of them, then the ragged last one."""
    if not meta:
        yield from ((i, 1) for i in range(0, rows, step))
        return
    full, ragged = divmod(rows, step)
    if full:
        yield 0, full
    if ragged:
        yield full * step, 1


def plan_mirror(p: int, q: int, m: int, n: int, r: int, itemsize: int) -> bool | None:
    """How :func:`kron_rows` runs factors ``A`` ``(R, M, P)`` and ``B`` ``(R, N, Q)``: from ``X_b B_rᵀ``
    (``False``), from ``A X_b`` (``True``, the mirror image), or not in blocks at all (``None``).

    A start pays when the first product sums at most :data:`MAX_SUMMED` terms (the backward computes it
    again: worth it only while writing the intermediate costs more than computing it) and the factor
    every row multiplies by (``A`` as ``(M, P R)``, or ``B`` in the mirror) fits :data:`BLOCK_BYTES`.
    Where both pay, the one with fewer flops in a training step (first product four times, second
    three), on a tie the smaller intermediate, as :func:`kernels.kronsum.reference` picks.
    """
    direct = q <= MAX_SUMMED and m * p * r * itemsize <= BLOCK_BYTES
    mirror = p <= MAX_SUMMED and n * q * r * itemsize <= BLOCK_BYTES
    if direct and mirror:
        return (4 * m * p * q + 3 * m * q * n, m * q) < (4 * p * q * n + 3 * m * p * n, p * n)
    return mirror if direct or mirror else None


def batch_bytes(rows: int, p: int, q: int, m: int, n: int, r: int, itemsize: int, mirror: bool) -> int:
    """Bytes of the whole batch's intermediate in the frame the blocks start from (``X_b B_rᵀ``:
    ``P R N`` a row; the mirror's ``A X_b``: ``M R Q``)."""
    return rows * (m * q if mirror else p * n) * r * itemsize


def plan_blocks(rows: int, p: int, q: int, m: int, n: int, r: int, itemsize: int) -> bool | None:
    """:func:`plan_mirror` for a batch of ``rows``: ``None`` (no blocks) also where the whole batch's
    intermediate fits :data:`MIN_BLOCKED_BYTES`."""
    mirror = plan_mirror(p, q, m, n, r, itemsize)
    if mirror is None or batch_bytes(rows, p, q, m, n, r, itemsize, mirror) <= MIN_BLOCKED_BYTES:
        return None
    return mirror


def kron_rows(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Y_b = Σ_r A_r X_b B_rᵀ`` for every row, in cache-sized blocks of rows where that pays
    (:func:`plan_blocks`; float32 and float64) and the blocks' autograd node can run, otherwise
    :func:`kernels.kronsum.reference`; differentiable in all three.

    Args:
        x: ``(rows, P, Q)``.
        a: ``(R, M, P)``.
        b: ``(R, N, Q)``, all of one dtype on one device (checked by :func:`kernels.kronsum.kron_stream`).

    Returns:
        ``(rows, M, N)``.
    """
    (p, q), (r, m), n = x.shape[1:], a.shape[:2], b.shape[1]
    # The node has no vmap or jvp rule, and a trace would record its loop for one batch size
    # (torch.compile plans the reference's memory itself); under autocast the reference's products run
    # in its dtype, where the blocks write into buffers of the operands' own. Half precisions would sum
    # the factors' gradients over the blocks in their own precision; an empty extent leaves nothing to block.
    mirror = None
    if not (
        transformed(x, a, b)
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.is_autocast_enabled("cpu")
        or x.dtype not in (torch.float32, torch.float64)
        or 0 in (p, q, m, n, r)
    ):
        mirror = plan_blocks(x.shape[0], p, q, m, n, r, x.element_size())
    if mirror is None:
        from kernels.kronsum import reference

        return reference(x, a, b)
    return _KronRows.apply(x, a, b, mirror)


def _forward(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mirror: bool) -> torch.Tensor:
    rows, p, q = x.shape
    r, m, _ = a.shape
    n = b.shape[1]
    y = x.new_empty((rows, m, n))
    if mirror:
        step = block_rows(q, p, n, m, r, x.element_size())  # the mirror frame's
        a2 = a.transpose(0, 1).reshape(m * r, p)  # A'': (M R, P)
        b3 = b.transpose(1, 2).reshape(r * q, n)  # (R Q, N)
        for i, times in _blocks(rows, step, x.is_meta):
            with repeated(times):
                xb = x[i : i + step]
                k = xb.shape[0]
                v = torch.bmm(a2.expand(k, m * r, p), xb)  # (k, M R, Q) = (k M, R Q)
                torch.mm(v.view(k * m, r * q), b3, out=y[i : i + k].view(k * m, n))
        return y
    step = block_rows(p, q, m, n, r, x.element_size())
    a1 = a.permute(1, 2, 0).reshape(m, p * r)  # A': (M, P R)
    b1 = b.reshape(r * n, q)  # B': (R N, Q)
    for i, times in _blocks(rows, step, x.is_meta):
        with repeated(times):
            xb = x[i : i + step]
            k = xb.shape[0]
            u = torch.mm(xb.reshape(k * p, q), b1.T).view(k, p * r, n)
            torch.bmm(a1.expand(k, m, p * r), u, out=y[i : i + k])
    return y


def _backward(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, needed: tuple[bool, bool, bool], mirror: bool
) -> tuple[torch.Tensor | None, ...]:
    need_x, need_a, need_b = needed
    if mirror:
        # Y_bᵀ = Σ_r B_r X_bᵀ A_rᵀ: the same blocks with the roles of A and B (and of the axes) swapped.
        dxt, db, da = _backward_blocks(x.transpose(1, 2), b, a, dy.transpose(1, 2), (need_x, need_b, need_a))
        return (None if dxt is None else dxt.transpose(1, 2)), da, db
    return _backward_blocks(x, a, b, dy, needed)


def _backward_blocks(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, needed: tuple[bool, bool, bool]
) -> tuple[torch.Tensor | None, ...]:
    need_x, need_a, need_b = needed
    rows, p, q = x.shape
    r, m, _ = a.shape
    n = b.shape[1]
    step = block_rows(p, q, m, n, r, x.element_size(), backward=True)
    a1 = a.permute(1, 2, 0).reshape(m, p * r)
    b1 = b.reshape(r * n, q)
    dx = x.new_empty((rows, p, q)) if need_x else None
    da1 = a.new_zeros((m, p * r)) if need_a else None
    db1 = b.new_zeros((r * n, q)) if need_b else None
    for i, times in _blocks(rows, step, x.is_meta):
        with repeated(times):
            _backward_block(x[i : i + step], dy, i, (a1, b1), (dx, da1, db1))
    da = None if da1 is None else da1.view(m, p, r).permute(2, 0, 1)
    db = None if db1 is None else db1.view(r, n, q)
    return dx, da, db


def _backward_block(
    x: torch.Tensor,
    dy: torch.Tensor,
    start: int,
    factors: tuple[torch.Tensor, torch.Tensor],
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
) -> None:
    """One block's share of the gradients: rows ``x`` (``(k, P, Q)``) starting at row ``start``,
    ``factors`` ``A'`` ``(M, P R)`` and ``B'`` ``(R N, Q)``, and ``grads`` ``X̄`` (written), ``Ā'`` and
    ``B̄'`` (summed into), each ``None`` where not needed."""
    a1, b1 = factors
    dx, da1, db1 = grads
    k, p, q = x.shape
    m, pr = a1.shape
    n = b1.shape[0] // (pr // p)  # B' is (R N, Q), A' (M, P R)
    xb = x.reshape(k * p, q)  # a view of a contiguous x, else a block-sized copy
    dyb = dy[start : start + k]
    if da1 is not None:
        u = torch.mm(xb, b1.T).view(k, pr, n)  # recomputed, where the forward wrote it to no memory
        if k < PER_ROW_BELOW:
            for j in range(k):
                da1.addmm_(dyb[j], u[j].T)
        else:
            da1.addmm_(dyb.transpose(0, 1).reshape(m, k * n), u.transpose(1, 2).reshape(k * n, pr))
    if dx is None and db1 is None:
        return
    du = torch.bmm(a1.T.expand(k, pr, m), dyb).view(k * p, b1.shape[0])
    if dx is not None:
        torch.mm(du, b1, out=dx[start : start + k].view(k * p, q))
    if db1 is not None:
        db1.addmm_(du.T, xb)


class _KronRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mirror: bool) -> torch.Tensor:
        ctx.save_for_backward(x, a, b)
        ctx.mirror = mirror
        return _forward(x, a, b, mirror)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, a, b = ctx.saved_tensors
        needed = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled() or batched_grad(dy):
            # create_graph=True, or batched gradients (is_grads_batched, jacobian(vectorize=True)): the
            # blocks' in-place sums have no derivative and no batching rule of their own.
            from kernels.kronsum import reference_grads

            with torch.enable_grad():
                return (*reference_grads(x, a, b, dy, needed), None)
        # A backward called under autocast would run the blocks' products in its dtype, into buffers of ours.
        with torch.autocast("cpu", enabled=False):
            return (*_backward(x, a, b, dy.contiguous(), needed, ctx.mirror), None)
