"""numba CPU kernels: one pass per pairwise step, with the output permutation and activation fused.

``forward_step`` runs the offset-table contraction of :mod:`kernels.steps` and applies the activation
on the way out; ``backward_step`` first multiplies the incoming adjoint by the activation's
derivative (computed from the stored output or pre-activation), then forms both operand adjoints in
the same pass. Both release the GIL, and their inner loops run over contiguous memory, which LLVM
vectorises. When torch runs several threads, big steps split their output rows over numba's threads
(``*_parallel``, chosen by :func:`run_forward` / :func:`run_backward`); the right operand's adjoint is
then summed per block of rows and the blocks are added in order.

Steps with a long summed extent go to BLAS instead: ``blas_forward`` / ``blas_backward`` cut the product
into tiles, multiply each with ``np.dot`` (scipy's BLAS, held at one thread) and scatter it into the
output (or gather the adjoint) while it is in cache, all in one call, and in one parallel region when
torch allows several threads.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np

# Activation codes shared with the executors (derivatives from the output where it determines them).
IDENTITY, RELU, LEAKY_RELU, TANH, GELU = 0, 1, 2, 3, 4
CODES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "tanh": TANH, "gelu": GELU}
NEGATIVE_SLOPE = 0.01
# fastmath without "nnan"/"ninf": the activations are inlined into these loops, and LLVM may fold a
# comparison it assumes NaN-free (ReLU would map NaN to 0, where torch's propagates it).
FAST = {"reassoc", "contract", "arcp", "nsz", "afn"}
_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def activation(z: float, code: int) -> float:
    """``σ(z)`` by activation code; compiled for the CPU here and for the GPU in :mod:`kernels.cuda`."""
    # Written so that NaN (which compares false) propagates, as it does through torch's activations.
    if code == RELU:
        return 0.0 if z <= 0.0 else z
    if code == LEAKY_RELU:
        return z if z > 0.0 else NEGATIVE_SLOPE * z
    if code == TANH:
        return math.tanh(z)
    if code == GELU:
        return 0.5 * z * (1.0 + math.erf(z * _SQRT_HALF))
    return z


def derivative(z: float, y: float, code: int) -> float:
    """``σ'(z)``; ``y = σ(z)`` suffices for all but GELU."""
    # At NaN: 1 for ReLU, the slope for leaky ReLU, as torch's threshold_backward / leaky_relu_backward.
    if code == RELU:
        return 0.0 if y <= 0.0 else 1.0
    if code == LEAKY_RELU:
        return 1.0 if y > 0.0 else NEGATIVE_SLOPE
    if code == TANH:
        return 1.0 - y * y
    if code == GELU:
        return 0.5 * (1.0 + math.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * math.exp(-0.5 * z * z)
    return 1.0


_act = numba.njit(cache=True, inline="always")(activation)
_dact = numba.njit(cache=True, inline="always")(derivative)


@numba.njit(cache=True, inline="always")
def _put_row(src, so, Z, Zpre, zo, zn, run, code):
    """Write one output row ``src[so:so+N]`` through ``Z``'s offsets, activated (pre-activation kept
    in ``Zpre`` when it is non-empty)."""
    keep = Zpre.size > 0
    for no in range(zn.size):
        base = zo + zn[no]
        bo = so + no * run
        out = Z[base : base + run]
        row = src[bo : bo + run]
        if code == IDENTITY and not keep:
            # The common case (a linear root writing the weight) is a plain copy, which vectorises.
            for r in range(run):
                out[r] = row[r]
            continue
        for r in range(run):
            v = row[r]
            if keep:
                Zpre[base + r] = v
            out[r] = _act(v, code)


@numba.njit(cache=True, inline="always")
def _take_row(G, OUT, PRE, code, zo, zn, run, dst, do):
    """Read one output-adjoint row through ``Z``'s offsets into ``dst[do:do+N]``, times ``σ'``."""
    keep = PRE.size > 0
    for no in range(zn.size):
        base = zo + zn[no]
        bo = do + no * run
        row = dst[bo : bo + run]
        g = G[base : base + run]
        if code == IDENTITY:
            for r in range(run):
                row[r] = g[r]
            continue
        y = OUT[base : base + run]
        for r in range(run):
            z = PRE[base + r] if keep else 0.0
            row[r] = g[r] * _dact(z, y[r], code)


# Output rows handled together when they share ``b`` and their buffers fit in cache.
BLOCK_ROWS = 4
BLOCK_MAX_N = 8192


@numba.njit(cache=True, inline="always", fastmath=FAST)
def _forward_one(X, Yc, xo, xk, K, N, b, buf):
    """One output row (offset ``xo`` into ``X``) accumulated into ``buf``."""
    buf[:] = 0.0
    k = 0
    # Four rows of Yc per pass over the buffer: a quarter of the buffer traffic (~30% faster).
    while k + 4 <= K:
        a0, a1, a2, a3 = X[xo + xk[k]], X[xo + xk[k + 1]], X[xo + xk[k + 2]], X[xo + xk[k + 3]]
        y = Yc[(b * K + k) * N : (b * K + k + 4) * N]
        y0, y1, y2, y3 = y[:N], y[N : 2 * N], y[2 * N : 3 * N], y[3 * N :]
        for n in range(N):
            buf[n] += a0 * y0[n] + a1 * y1[n] + a2 * y2[n] + a3 * y3[n]
        k += 4
    while k < K:
        a = X[xo + xk[k]]
        y = Yc[(b * K + k) * N : (b * K + k + 1) * N]
        for n in range(N):
            buf[n] += a * y[n]
        k += 1


@numba.njit(cache=True, inline="always", fastmath=FAST)
def _forward_four(X, Yc, xb, xm, xk, K, N, b, m, bufs):
    """Rows ``m..m+3`` (same ``b``) together: each pair of ``Yc`` rows is read once for four output
    rows, so ``Yc`` (often larger than L1) is streamed a quarter as often as row by row."""
    g0, g1, g2, g3 = bufs[:N], bufs[N : 2 * N], bufs[2 * N : 3 * N], bufs[3 * N :]
    x0, x1, x2, x3 = xb[b] + xm[m], xb[b] + xm[m + 1], xb[b] + xm[m + 2], xb[b] + xm[m + 3]
    bufs[:] = 0.0
    k = 0
    while k + 2 <= K:
        p, q = xk[k], xk[k + 1]
        a0, b0, a1, b1 = X[x0 + p], X[x0 + q], X[x1 + p], X[x1 + q]
        a2, b2, a3, b3 = X[x2 + p], X[x2 + q], X[x3 + p], X[x3 + q]
        y = Yc[(b * K + k) * N : (b * K + k + 2) * N]
        y0, y1 = y[:N], y[N:]
        for n in range(N):
            u, v = y0[n], y1[n]
            g0[n] += a0 * u + b0 * v
            g1[n] += a1 * u + b1 * v
            g2[n] += a2 * u + b2 * v
            g3[n] += a3 * u + b3 * v
        k += 2
    if k < K:
        p = xk[k]
        a0, a1, a2, a3 = X[x0 + p], X[x1 + p], X[x2 + p], X[x3 + p]
        y0 = Yc[(b * K + k) * N : (b * K + k + 1) * N]
        for n in range(N):
            u = y0[n]
            g0[n] += a0 * u
            g1[n] += a1 * u
            g2[n] += a2 * u
            g3[n] += a3 * u


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def _forward_rows(X, Yc, Z, Zpre, xb, xm, xk, K, N, zb, zm, zn, run, code, lo, hi):
    """Output rows ``lo..hi`` (flattened ``(b, m)``) of one forward step."""
    # A local buffer (LLVM then knows it aliases nothing) and row views rather than computed
    # indices (offsets LLVM can see are non-negative): both are needed for the loops to vectorise.
    bufs = np.empty(BLOCK_ROWS * N, dtype=Z.dtype)
    nm = xm.size
    blocked = N <= BLOCK_MAX_N
    row = lo
    while row < hi:
        b = row // nm
        m = row - b * nm
        if blocked and row + BLOCK_ROWS <= hi and m + BLOCK_ROWS <= nm:
            _forward_four(X, Yc, xb, xm, xk, K, N, b, m, bufs)
            for j in range(BLOCK_ROWS):
                _put_row(bufs, j * N, Z, Zpre, zb[b] + zm[m + j], zn, run, code)
            row += BLOCK_ROWS
        else:
            _forward_one(X, Yc, xb[b] + xm[m], xk, K, N, b, bufs)
            _put_row(bufs, 0, Z, Zpre, zb[b] + zm[m], zn, run, code)
            row += 1


@numba.njit(cache=True, inline="always", fastmath=FAST)
def _backward_one(X, Yc, Xbar, Ycbar, xo, xk, K, N, b, buf, need_x, need_y):
    """One row's adjoint contributions from its (activated) output adjoint ``buf``."""
    k = 0
    # Four rows of Yc (and of Ȳc) per pass over the buffer, as in the forward.
    while need_x and k + 4 <= K:
        y = Yc[(b * K + k) * N : (b * K + k + 4) * N]
        y0, y1, y2, y3 = y[:N], y[N : 2 * N], y[2 * N : 3 * N], y[3 * N :]
        s0 = s1 = s2 = s3 = 0.0
        for n in range(N):
            g = buf[n]
            s0 += g * y0[n]
            s1 += g * y1[n]
            s2 += g * y2[n]
            s3 += g * y3[n]
        Xbar[xo + xk[k]] += s0
        Xbar[xo + xk[k + 1]] += s1
        Xbar[xo + xk[k + 2]] += s2
        Xbar[xo + xk[k + 3]] += s3
        k += 4
    while need_x and k < K:
        y = Yc[(b * K + k) * N : (b * K + k + 1) * N]
        s = 0.0
        for n in range(N):
            s += buf[n] * y[n]
        Xbar[xo + xk[k]] += s
        k += 1
    k = 0
    while need_y and k + 4 <= K:
        a0, a1, a2, a3 = X[xo + xk[k]], X[xo + xk[k + 1]], X[xo + xk[k + 2]], X[xo + xk[k + 3]]
        ybar = Ycbar[(b * K + k) * N : (b * K + k + 4) * N]
        v0, v1, v2, v3 = ybar[:N], ybar[N : 2 * N], ybar[2 * N : 3 * N], ybar[3 * N :]
        for n in range(N):
            g = buf[n]
            v0[n] += a0 * g
            v1[n] += a1 * g
            v2[n] += a2 * g
            v3[n] += a3 * g
        k += 4
    while need_y and k < K:
        a = X[xo + xk[k]]
        ybar = Ycbar[(b * K + k) * N : (b * K + k + 1) * N]
        for n in range(N):
            ybar[n] += a * buf[n]
        k += 1


@numba.njit(cache=True, inline="always", fastmath=FAST)
def _backward_four(X, Yc, Xbar, Ycbar, xb, xm, xk, K, N, b, m, bufs, need_x, need_y):
    """Rows ``m..m+3`` (same ``b``) together: each ``Yc`` row is read once for four dot products and
    each ``Ȳc`` row is loaded and stored once for four rows' updates (a quarter of the stores)."""
    g0, g1, g2, g3 = bufs[:N], bufs[N : 2 * N], bufs[2 * N : 3 * N], bufs[3 * N :]
    x0, x1, x2, x3 = xb[b] + xm[m], xb[b] + xm[m + 1], xb[b] + xm[m + 2], xb[b] + xm[m + 3]
    for k in range(K):
        xk_k = xk[k]
        if need_x:
            y = Yc[(b * K + k) * N : (b * K + k + 1) * N]
            s0 = s1 = s2 = s3 = 0.0
            for n in range(N):
                v = y[n]
                s0 += g0[n] * v
                s1 += g1[n] * v
                s2 += g2[n] * v
                s3 += g3[n] * v
            Xbar[x0 + xk_k] += s0
            Xbar[x1 + xk_k] += s1
            Xbar[x2 + xk_k] += s2
            Xbar[x3 + xk_k] += s3
        if need_y:
            a0, a1, a2, a3 = X[x0 + xk_k], X[x1 + xk_k], X[x2 + xk_k], X[x3 + xk_k]
            ybar = Ycbar[(b * K + k) * N : (b * K + k + 1) * N]
            for n in range(N):
                ybar[n] += a0 * g0[n] + a1 * g1[n] + a2 * g2[n] + a3 * g3[n]


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def _backward_rows(X, Yc, G, OUT, PRE, code, Xbar, Ycbar, xb, xm, xk, K, N, zb, zm, zn, run, lo, hi):
    """Adjoint contributions of output rows ``lo..hi``: ``X̄`` rows are written (each row owns its
    ``X̄`` entries), ``Ȳc`` is accumulated into the given array."""
    bufs = np.empty(BLOCK_ROWS * N, dtype=G.dtype)
    need_x = Xbar.size > 0
    need_y = Ycbar.size > 0
    nm = xm.size
    blocked = N <= BLOCK_MAX_N
    row = lo
    while row < hi:
        b = row // nm
        m = row - b * nm
        if blocked and row + BLOCK_ROWS <= hi and m + BLOCK_ROWS <= nm:
            for j in range(BLOCK_ROWS):
                _take_row(G, OUT, PRE, code, zb[b] + zm[m + j], zn, run, bufs, j * N)
            _backward_four(X, Yc, Xbar, Ycbar, xb, xm, xk, K, N, b, m, bufs, need_x, need_y)
            row += BLOCK_ROWS
        else:
            _take_row(G, OUT, PRE, code, zb[b] + zm[m], zn, run, bufs, 0)
            _backward_one(X, Yc, Xbar, Ycbar, xb[b] + xm[m], xk, K, N, b, bufs, need_x, need_y)
            row += 1


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def forward_step(X, Yc, Z, Zpre, xb, xm, xk, K, N, zb, zm, zn, run, code):
    """``Z = act(X ⊗ Yc)`` for one step; ``Zpre`` (when non-empty) receives the pre-activation.

    Per output row ``(b, m)`` the row is accumulated in a buffer by contiguous AXPYs over ``Yc``,
    then written through ``Z``'s offsets in runs, with the activation applied on the way out.
    """
    _forward_rows(X, Yc, Z, Zpre, xb, xm, xk, K, N, zb, zm, zn, run, code, 0, xb.size * xm.size)
    return Z


@numba.njit(cache=True, nogil=True, fastmath=FAST, parallel=True)
def forward_step_parallel(X, Yc, Z, Zpre, xb, xm, xk, K, N, zb, zm, zn, run, code, chunks):
    """:func:`forward_step` over ``chunks`` contiguous blocks of output rows on numba's threads
    (rows write disjoint parts of ``Z``)."""
    rows = xb.size * xm.size
    per = (rows + chunks - 1) // chunks
    for c in numba.prange(chunks):
        _forward_rows(X, Yc, Z, Zpre, xb, xm, xk, K, N, zb, zm, zn, run, code, c * per, min(rows, (c + 1) * per))
    return Z


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def backward_step(X, Yc, G, OUT, PRE, code, Xbar, Ycbar, xb, xm, xk, K, N, zb, zm, zn, run):
    """Both adjoints of one step in one pass over its output adjoint ``G``.

    ``G`` is first multiplied by ``σ'`` (from the step's output ``OUT`` or pre-activation ``PRE``)
    when ``code`` is not the identity. Then ``X̄ += Ḡ ⊗ Yc`` (dot products) and ``Ȳc += X ⊗ Ḡ``
    (AXPYs); an empty ``Xbar`` or ``Ycbar`` skips that adjoint.
    """
    rows = xb.size * xm.size
    _backward_rows(X, Yc, G, OUT, PRE, code, Xbar, Ycbar, xb, xm, xk, K, N, zb, zm, zn, run, 0, rows)


@numba.njit(cache=True, nogil=True, fastmath=FAST, parallel=True)
def backward_step_parallel(X, Yc, G, OUT, PRE, code, Xbar, Ycbar, xb, xm, xk, K, N, zb, zm, zn, run, chunks):
    """:func:`backward_step` over ``chunks`` blocks of rows on numba's threads. ``X̄`` entries belong
    to one row each; ``Ȳc`` is summed by every row, so each block accumulates its own copy and the
    copies are added in block order (the same result for the same ``chunks``)."""
    rows = xb.size * xm.size
    per = (rows + chunks - 1) // chunks
    width = Ycbar.size
    parts = np.zeros((chunks, width), dtype=Ycbar.dtype)
    for c in numba.prange(chunks):
        lo, hi = c * per, min(rows, (c + 1) * per)
        _backward_rows(X, Yc, G, OUT, PRE, code, Xbar, parts[c], xb, xm, xk, K, N, zb, zm, zn, run, lo, hi)
    for i in numba.prange(width):
        s = Ycbar[i]
        for c in range(chunks):
            s += parts[c, i]
        Ycbar[i] = s


@numba.njit(cache=True, inline="always")
def _scatter_rows(C, Z, Zpre, zb, zm, zn, run, code, row):
    nm, nn = zm.size, zn.size * run
    b = row // nm
    _put_row(C, row * nn, Z, Zpre, zb[b] + zm[row - b * nm], zn, run, code)


@numba.njit(cache=True, inline="always")
def _gather_rows(G, OUT, PRE, code, zb, zm, zn, run, C, row):
    nm, nn = zm.size, zn.size * run
    b = row // nm
    _take_row(G, OUT, PRE, code, zb[b] + zm[row - b * nm], zn, run, C, row * nn)


@numba.njit(cache=True, nogil=True)
def scatter_rows(C, Z, Zpre, zb, zm, zn, run, code):
    """Write a canonical ``C[b, m, n]`` (from a BLAS product) into ``Z``'s layout with the activation."""
    for row in range(zb.size * zm.size):
        _scatter_rows(C, Z, Zpre, zb, zm, zn, run, code, row)
    return Z


@numba.njit(cache=True, nogil=True, parallel=True)
def scatter_rows_parallel(C, Z, Zpre, zb, zm, zn, run, code):
    """:func:`scatter_rows` with the rows spread over numba's threads."""
    for row in numba.prange(zb.size * zm.size):
        _scatter_rows(C, Z, Zpre, zb, zm, zn, run, code, row)
    return Z


@numba.njit(cache=True, nogil=True)
def gather_rows(G, OUT, PRE, code, zb, zm, zn, run, C):
    """``Ḡ ⊙ σ'`` gathered from ``Z``'s layout into ``C``, a canonical ``(b, m, n)`` array."""
    for row in range(zb.size * zm.size):
        _gather_rows(G, OUT, PRE, code, zb, zm, zn, run, C, row)
    return C


@numba.njit(cache=True, nogil=True, parallel=True)
def gather_rows_parallel(G, OUT, PRE, code, zb, zm, zn, run, C):
    """:func:`gather_rows` with the rows spread over numba's threads."""
    for row in numba.prange(zb.size * zm.size):
        _gather_rows(G, OUT, PRE, code, zb, zm, zn, run, C, row)
    return C


# One column tile of a BLAS step (a row of the ``tiles`` table built by ``kernels.executor``): the
# slice ``zn[lo:hi]`` of the outer output offsets, the offset ``r0`` into each run and the tile's run
# length, and the tile's first canonical column and width. Tiles cover the columns in order, so a
# tile's ``(K, width)`` block of the packed ``Yc`` starts at ``K * c0``.
T_LO, T_HI, T_R0, T_RUN, T_C0, T_WIDTH = range(6)


@numba.njit(cache=True, inline="always")
def _pack(Yc, tiles):
    """``Yc`` (B, K, N) with each tile's columns made one contiguous ``(K, width)`` block, so a tile's
    GEMM reads a dense operand."""
    B, K, N = Yc.shape
    packed = np.empty((B, K * N), dtype=Yc.dtype)
    for b in range(B):
        for t in range(tiles.shape[0]):
            c0, w = tiles[t, T_C0], tiles[t, T_WIDTH]
            at = K * c0
            for k in range(K):
                packed[b, at + k * w : at + (k + 1) * w] = Yc[b, k, c0 : c0 + w]
    return packed


@numba.njit(cache=True, inline="always")
def _units(p, parts, B, per_b, T, by_tile):
    """Part ``p`` of ``parts`` of a tiled step's work: a range of units, each ``(b, row block)`` with all
    its tiles, or ``by_tile`` each ``(b, tile)`` with all its row blocks (steps with too few row blocks
    to go round). Returns the range, the units per batch and the items per unit."""
    per = T if by_tile else per_b
    units = B * per
    share = (units + parts - 1) // parts
    return p * share, min(units, (p + 1) * share), per, per_b if by_tile else T


@numba.njit(cache=True, inline="always")
def _item(u, v, per, by_tile, block, M):
    """Item ``v`` of unit ``u`` (see :func:`_units`): its batch, tile, first row and rows."""
    b = u // per
    t, blk = (u - b * per, v) if by_tile else (v, u - b * per)
    r0 = blk * block
    return b, t, r0, min(M, r0 + block) - r0


@numba.njit(cache=True, inline="always")
def _blas_forward_part(p, parts, by_tile, Xc, Yp, Z, Zpre, zb, zm, zn, code, tiles, block, buf):
    B, M, K = Xc.shape
    lo, hi, per, inner = _units(p, parts, B, (M + block - 1) // block, tiles.shape[0], by_tile)
    for u in range(lo, hi):
        for v in range(inner):
            b, t, r0, rows = _item(u, v, per, by_tile, block, M)
            w, at, run = tiles[t, T_WIDTH], K * tiles[t, T_C0], tiles[t, T_RUN]
            outer = zn[tiles[t, T_LO] : tiles[t, T_HI]]
            np.dot(Xc[b][r0 : r0 + rows], Yp[b, at : at + K * w].reshape(K, w), buf[: rows * w].reshape(rows, w))
            for i in range(rows):
                _put_row(buf, i * w, Z, Zpre, zb[b] + zm[r0 + i] + tiles[t, T_R0], outer, run, code)


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def blas_forward(Xc, Yc, Z, Zpre, zb, zm, zn, code, tiles, block):
    """``Z = act(Xc @ Yc)`` by BLAS GEMMs on tiles of ``block`` rows and one column tile, each written
    through ``Z``'s offsets while it is in cache. ``Xc`` is the canonical ``(B, M, K)`` left operand."""
    Yp = _pack(Yc, tiles)
    buf = np.empty(block * np.max(tiles[:, T_WIDTH]), dtype=Z.dtype)
    _blas_forward_part(0, 1, False, Xc, Yp, Z, Zpre, zb, zm, zn, code, tiles, block, buf)
    return Z


@numba.njit(cache=True, nogil=True, fastmath=FAST, parallel=True)
def blas_forward_parallel(Xc, Yc, Z, Zpre, zb, zm, zn, code, tiles, block, parts, by_tile):
    """:func:`blas_forward` with the tiles split over ``parts`` of numba's threads, each running its
    own single-threaded GEMMs (one parallel region for the whole step)."""
    Yp = _pack(Yc, tiles)
    width = np.max(tiles[:, T_WIDTH])
    for p in numba.prange(parts):
        buf = np.empty(block * width, dtype=Z.dtype)
        _blas_forward_part(p, parts, by_tile, Xc, Yp, Z, Zpre, zb, zm, zn, code, tiles, block, buf)
    return Z


@numba.njit(cache=True, inline="always")
def _blas_backward_part(
    p, parts, by_tile, Xc, Yp, G, OUT, PRE, code, Xbar, Ybar, zb, zm, zn, tiles, block, buf, tx, ty
):
    """Part ``p``'s share of a tiled step's adjoints. Split by row blocks, the part owns those rows of
    ``X̄c`` (a block's first tile writes them) and adds into its own ``Ȳc``; split by tiles, it owns
    those columns of ``Ȳc`` (a tile's first block writes them) and adds into its own ``X̄c``."""
    B, M, K = Xc.shape
    lo, hi, per, inner = _units(p, parts, B, (M + block - 1) // block, tiles.shape[0], by_tile)
    for u in range(lo, hi):
        for v in range(inner):
            b, t, r0, rows = _item(u, v, per, by_tile, block, M)
            w, at, c0, run = tiles[t, T_WIDTH], K * tiles[t, T_C0], tiles[t, T_C0], tiles[t, T_RUN]
            outer = zn[tiles[t, T_LO] : tiles[t, T_HI]]
            for i in range(rows):
                _take_row(G, OUT, PRE, code, zb[b] + zm[r0 + i] + tiles[t, T_R0], outer, run, buf, i * w)
            g = buf[: rows * w].reshape(rows, w)
            yt = Yp[b, at : at + K * w].reshape(K, w)
            xbar = Xbar[b][r0 : r0 + rows]
            if not by_tile and t == 0:
                np.dot(g, yt.T, xbar)
            else:
                part = tx[: rows * K].reshape(rows, K)
                np.dot(g, yt.T, part)
                xbar += part
            gy = ty[: K * w].reshape(K, w)
            np.dot(Xc[b][r0 : r0 + rows].T, g, gy)
            for k in range(K):
                dst = Ybar[b, k, c0 : c0 + w]
                if by_tile and r0 == 0:  # a tile's first row block writes its columns
                    dst[:] = gy[k]
                else:
                    dst += gy[k]


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def blas_backward(Xc, Yc, G, OUT, PRE, code, Xcb, Ycb, zb, zm, zn, tiles, block):
    """Both canonical adjoints of a :func:`blas_forward` step: per tile, ``Ḡ ⊙ σ'`` gathered through
    ``Z``'s offsets, then ``X̄c = Ḡ Ycᵀ`` and ``Ȳc += Xcᵀ Ḡ`` by BLAS. ``Xcb`` and ``Ycb`` are written."""
    K = Xc.shape[2]
    Yp = _pack(Yc, tiles)
    width = np.max(tiles[:, T_WIDTH])
    buf = np.empty(block * width, dtype=G.dtype)
    tx, ty = np.empty(block * K, dtype=G.dtype), np.empty(K * width, dtype=G.dtype)
    Ycb[:] = 0.0
    _blas_backward_part(0, 1, False, Xc, Yp, G, OUT, PRE, code, Xcb, Ycb, zb, zm, zn, tiles, block, buf, tx, ty)


@numba.njit(cache=True, nogil=True, fastmath=FAST, parallel=True)
def blas_backward_parallel(Xc, Yc, G, OUT, PRE, code, Xcb, Ycb, zb, zm, zn, tiles, block, parts, by_tile):
    """:func:`blas_backward` split over ``parts`` threads by row blocks, or ``by_tile``. The adjoint
    every part adds to (``Ȳc``, or ``X̄c`` by tile) gets one copy per part, summed in part order, so the
    same ``parts`` give the same result."""
    B, M, K = Xc.shape
    Yp = _pack(Yc, tiles)
    width = np.max(tiles[:, T_WIDTH])
    Xacc = np.zeros((parts if by_tile else 0, B, M, K), dtype=G.dtype)
    Yacc = np.zeros((0 if by_tile else parts, B, K, Yc.shape[2]), dtype=G.dtype)
    for p in numba.prange(parts):
        buf = np.empty(block * width, dtype=G.dtype)
        tx, ty = np.empty(block * K, dtype=G.dtype), np.empty(K * width, dtype=G.dtype)
        xbar = Xacc[p] if by_tile else Xcb
        ybar = Ycb if by_tile else Yacc[p]
        _blas_backward_part(
            p, parts, by_tile, Xc, Yp, G, OUT, PRE, code, xbar, ybar, zb, zm, zn, tiles, block, buf, tx, ty
        )
    acc, dst = (Xacc, Xcb) if by_tile else (Yacc, Ycb)
    dst[:] = acc[0]
    for q in range(1, parts):
        dst += acc[q]


# Below this many multiply-adds plus outputs a step runs serially: a parallel launch costs ~10 us.
PARALLEL_MIN_WORK = 1 << 16


def kernel_threads() -> int:
    """Threads the CPU kernels will use (torch's count, within numba's pool), without touching
    numba's pool: starting it changes the thread count torch reads back (see :func:`threads`)."""
    import torch

    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def threads() -> int:
    """Threads the CPU kernels may use: torch's count (within numba's pool), applied to numba.

    numba's OpenMP layer runs its own pool (the system libgomp; torch ships another); launching at
    torch's count keeps each pool at the number of threads the user set.
    """
    import torch

    want = torch.get_num_threads()
    n = kernel_threads()
    # One thread runs only the serial kernels: numba's thread pool is then never started.
    if n > 1:
        if numba.get_num_threads() != n:
            numba.set_num_threads(n)
        # Starting numba's pool sets the OpenMP thread count to NUMBA_NUM_THREADS, and torch reads
        # its own count from the same libgomp: torch's 2 threads became 4 with NUMBA_NUM_THREADS=4.
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
    return n


def _parallel(rows: int, work: int) -> int:
    """Threads for a parallel launch over ``rows`` output rows doing ``work`` (multiply-adds plus
    elements), or 0 when the serial kernel should run: one thread, too few rows, or too little work."""
    n = threads()
    return n if n > 1 and rows >= 2 * n and work >= PARALLEL_MIN_WORK else 0


def run_forward(X, Yc, Z, Zpre, xb, xm, xk, K, N, zb, zm, zn, run, code, flops):
    """:func:`forward_step`, or its parallel form when torch allows several threads and the step is big."""
    n = _parallel(xb.size * xm.size, flops + Z.size)
    if n:
        return forward_step_parallel(X, Yc, Z, Zpre, xb, xm, xk, K, N, zb, zm, zn, run, code, n)
    return forward_step(X, Yc, Z, Zpre, xb, xm, xk, K, N, zb, zm, zn, run, code)


def run_backward(X, Yc, G, OUT, PRE, code, Xbar, Ycbar, xb, xm, xk, K, N, zb, zm, zn, run, flops):
    """:func:`backward_step`, or its parallel form when torch allows several threads and the step is big."""
    n = _parallel(xb.size * xm.size, flops + G.size)
    if n:
        return backward_step_parallel(X, Yc, G, OUT, PRE, code, Xbar, Ycbar, xb, xm, xk, K, N, zb, zm, zn, run, n)
    return backward_step(X, Yc, G, OUT, PRE, code, Xbar, Ycbar, xb, xm, xk, K, N, zb, zm, zn, run)


def run_scatter(C, Z, Zpre, zb, zm, zn, run, code):
    """:func:`scatter_rows`, in parallel when torch allows several threads and the step is big."""
    if _parallel(zb.size * zm.size, Z.size):
        return scatter_rows_parallel(C, Z, Zpre, zb, zm, zn, run, code)
    return scatter_rows(C, Z, Zpre, zb, zm, zn, run, code)


def run_gather(G, OUT, PRE, code, zb, zm, zn, run, C):
    """:func:`gather_rows` into ``C``, in parallel when torch allows several threads and the step is big."""
    if _parallel(zb.size * zm.size, G.size):
        return gather_rows_parallel(G, OUT, PRE, code, zb, zm, zn, run, C)
    return gather_rows(G, OUT, PRE, code, zb, zm, zn, run, C)


def _blas_split(Xc, tiles, block: int, work: int) -> tuple[int, bool]:
    """Threads for a tiled BLAS step (0: the serial kernel), and whether they split it by single
    tiles (too few row blocks for two each) rather than by whole row blocks."""
    batches, rows = Xc.shape[0], Xc.shape[1]
    blocks = batches * -(-rows // block)
    n = _parallel(blocks * tiles.shape[0], work)
    return n, bool(n) and blocks < 2 * n


def run_blas_forward(Xc, Yc, Z, Zpre, zb, zm, zn, code, tiles, block, flops):
    """:func:`blas_forward`, or its parallel form when torch allows several threads and the step is big."""
    n, by_tile = _blas_split(Xc, tiles, block, flops + Z.size)
    with _one_blas_thread():
        if n:
            return blas_forward_parallel(Xc, Yc, Z, Zpre, zb, zm, zn, code, tiles, block, n, by_tile)
        return blas_forward(Xc, Yc, Z, Zpre, zb, zm, zn, code, tiles, block)


def run_blas_backward(Xc, Yc, G, OUT, PRE, code, Xcb, Ycb, zb, zm, zn, tiles, block, flops):
    """:func:`blas_backward`, or its parallel form when torch allows several threads and the step is big."""
    n, by_tile = _blas_split(Xc, tiles, block, flops + G.size)
    with _one_blas_thread():
        if n:
            return blas_backward_parallel(Xc, Yc, G, OUT, PRE, code, Xcb, Ycb, zb, zm, zn, tiles, block, n, by_tile)
        return blas_backward(Xc, Yc, G, OUT, PRE, code, Xcb, Ycb, zb, zm, zn, tiles, block)


@functools.cache
def _blas_libraries() -> Any:  # a threadpoolctl ThreadpoolController
    # numba's np.dot calls scipy's BLAS: load it first so the controller finds it.
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


_BLAS_LOCK = threading.Lock()
_blas_users = 0
_blas_limit = None
_forks = 0  # forks this process descends from: a user counted before the last one is not counted here


def _after_fork_in_child() -> None:
    # The forking thread alone survives: a lock another thread held would never be released, and the
    # users counted would never leave (nor lift the limit they set).
    global _BLAS_LOCK, _blas_users, _blas_limit, _forks
    _forks += 1
    if _blas_limit is not None:
        with contextlib.suppress(Exception):  # the child keeps one BLAS thread rather than failing
            _blas_limit.restore_original_limits()
    _BLAS_LOCK, _blas_users, _blas_limit = threading.Lock(), 0, None


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Hold the BLAS behind numba's ``np.dot`` at one thread while kernels run: numba's threads split
    the step, and a multi-threaded OpenBLAS inside them would oversubscribe the cores (OpenBLAS warns
    that it may hang). The first of concurrent callers sets the limit and the last restores it."""
    global _blas_users, _blas_limit
    with _BLAS_LOCK:
        if _blas_users == 0:
            _blas_limit = _blas_libraries().limit(limits=1)
        _blas_users += 1
        generation = _forks
    try:
        yield
    finally:
        with _BLAS_LOCK:
            # Unless this thread forked inside: the child's count was reset without it.
            if generation == _forks:
                _blas_users -= 1
                if _blas_users == 0:
                    _blas_limit.restore_original_limits()
                    _blas_limit = None
