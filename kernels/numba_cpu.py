"""numba CPU kernels: one pass per pairwise step, with the output permutation and activation fused.

``pairwise`` runs the offset-table contraction of :mod:`kernels.steps` and applies the activation
on the way out; ``pairwise_grad`` first multiplies the incoming adjoint by the activation's
derivative (computed from the stored output or pre-activation). Both release the GIL. Where the
innermost summed offsets are contiguous on both operands the dot product runs on plain slices, which
LLVM vectorises.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Activation codes shared with the executors (derivatives from the output where it determines them).
IDENTITY, RELU, LEAKY_RELU, TANH, GELU = 0, 1, 2, 3, 4
CODES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "tanh": TANH, "gelu": GELU}
NEGATIVE_SLOPE = 0.01
_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def activation(z: float, code: int) -> float:
    """``σ(z)`` by activation code; compiled for the CPU here and for the GPU in :mod:`kernels.cuda`."""
    if code == RELU:
        return z if z > 0.0 else 0.0
    if code == LEAKY_RELU:
        return z if z > 0.0 else NEGATIVE_SLOPE * z
    if code == TANH:
        return math.tanh(z)
    if code == GELU:
        return 0.5 * z * (1.0 + math.erf(z * _SQRT_HALF))
    return z


def derivative(z: float, y: float, code: int) -> float:
    """``σ'(z)``; ``y = σ(z)`` suffices for all but GELU."""
    if code == RELU:
        return 1.0 if y > 0.0 else 0.0
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
        for r in range(run):
            v = src[bo + r]
            if keep:
                Zpre[base + r] = v
            Z[base + r] = _act(v, code)


@numba.njit(cache=True, inline="always")
def _take_row(G, OUT, PRE, code, zo, zn, run, dst, do):
    """Read one output-adjoint row through ``Z``'s offsets into ``dst[do:do+N]``, times ``σ'``."""
    keep = PRE.size > 0
    for no in range(zn.size):
        base = zo + zn[no]
        bo = do + no * run
        for r in range(run):
            g = G[base + r]
            if code != IDENTITY:
                z = PRE[base + r] if keep else 0.0
                g *= _dact(z, OUT[base + r], code)
            dst[bo + r] = g


@numba.njit(cache=True, nogil=True, fastmath=True)
def forward_step(X, Yc, Z, Zpre, xb, xm, xk, K, N, zb, zm, zn, run, code):
    """``Z = act(X ⊗ Yc)`` for one step; ``Zpre`` (when non-empty) receives the pre-activation.

    Per output row ``(b, m)`` the row is accumulated in a buffer by contiguous AXPYs over ``Yc``,
    then written through ``Z``'s offsets in runs, with the activation applied on the way out.
    """
    buf = np.empty(N, dtype=Z.dtype)
    for b in range(xb.size):
        for m in range(xm.size):
            buf[:] = 0.0
            xo = xb[b] + xm[m]
            for k in range(K):
                a = X[xo + xk[k]]
                yo = (b * K + k) * N
                for n in range(N):
                    buf[n] += a * Yc[yo + n]
            _put_row(buf, 0, Z, Zpre, zb[b] + zm[m], zn, run, code)
    return Z


@numba.njit(cache=True, nogil=True, fastmath=True)
def backward_step(X, Yc, G, OUT, PRE, code, Xbar, Ycbar, xb, xm, xk, K, N, zb, zm, zn, run):
    """Both adjoints of one step in one pass over its output adjoint ``G``.

    ``G`` is first multiplied by ``σ'`` (from the step's output ``OUT`` or pre-activation ``PRE``)
    when ``code`` is not the identity. Then ``X̄ += Ḡ ⊗ Yc`` (dot products) and ``Ȳc += X ⊗ Ḡ``
    (AXPYs); an empty ``Xbar`` or ``Ycbar`` skips that adjoint.
    """
    need_x = Xbar.size > 0
    need_y = Ycbar.size > 0
    buf = np.empty(N, dtype=G.dtype)
    for b in range(xb.size):
        for m in range(xm.size):
            _take_row(G, OUT, PRE, code, zb[b] + zm[m], zn, run, buf, 0)
            xo = xb[b] + xm[m]
            for k in range(K):
                yo = (b * K + k) * N
                if need_x:
                    s = 0.0
                    for n in range(N):
                        s += buf[n] * Yc[yo + n]
                    Xbar[xo + xk[k]] += s
                if need_y:
                    a = X[xo + xk[k]]
                    for n in range(N):
                        Ycbar[yo + n] += a * buf[n]


@numba.njit(cache=True, nogil=True)
def scatter_rows(C, Z, Zpre, zb, zm, zn, run, code):
    """Write a canonical ``C[b, m, n]`` (from a BLAS product) into ``Z``'s layout with the activation."""
    nm, nn = zm.size, zn.size * run
    for b in range(zb.size):
        for m in range(nm):
            _put_row(C, (b * nm + m) * nn, Z, Zpre, zb[b] + zm[m], zn, run, code)
    return Z


@numba.njit(cache=True, nogil=True)
def gather_rows(G, OUT, PRE, code, zb, zm, zn, run):
    """``Ḡ ⊙ σ'`` gathered from ``Z``'s layout into a canonical ``(b, m, n)`` array."""
    nm, nn = zm.size, zn.size * run
    C = np.empty(zb.size * nm * nn, dtype=G.dtype)
    for b in range(zb.size):
        for m in range(nm):
            _take_row(G, OUT, PRE, code, zb[b] + zm[m], zn, run, C, (b * nm + m) * nn)
    return C
