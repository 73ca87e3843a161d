"""CUDA kernels (numba-cuda) for the same step form as the CPU kernels, launched on torch tensors.

Each pairwise step is one launch: one thread per output element, the summed loop over contiguous
``Yc`` rows, the output written in its final layout with the activation fused. The backward is three
launches per step: the output adjoint times ``σ'`` gathered into canonical rows, then ``X̄`` (one
thread per ``X`` element, a dot product over ``n``) and ``Ȳc`` (one thread per ``Yc`` element, a
sum over ``m``). A GEMM-shaped step (long summed extent) runs its products through cuBLAS
(``torch.matmul``) instead, with the scatter and gather kernels around it.

Tensors reach the kernels through ``__cuda_array_interface__`` without host copies, and every launch
goes to torch's current stream. Under numba's
simulator (``NUMBA_ENABLE_CUDASIM=1``, how CI checks these kernels without a GPU) CPU tensors are
passed as numpy arrays instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

if not hasattr(np, "row_stack"):
    # numba-cuda registers an overload of np.row_stack when its target first compiles, and NumPy 2.5
    # removed that alias of np.vstack; upstream will not follow newer NumPy (NVIDIA/numba-cuda#907),
    # so every launch failed on the H200 image (numpy 2.5.2) until the alias was put back.
    np.row_stack = np.vstack

from numba import cuda

from kernels.numba_cpu import IDENTITY, activation, derivative

_THREADS = 256
BLAS_MIN_K = 32  # summed extent from which a step goes to cuBLAS (not yet calibrated on a GPU)
# The fused adjoint kernels give each thread one output and a serial sum: over the output's columns
# (X̄) or rows (Ȳc). From this many terms a backward step goes to cuBLAS instead: on an H200 the
# last steps of MERA and 25088x4096 generators, with sums of tens of thousands of terms over a few
# thousand threads, took 45-75 ms graphed against ~1 ms for torch's matmuls (not yet re-measured).
REDUCE_BLAS_MIN = 1024


_act = cuda.jit(device=True, inline=True)(activation)
_dact = cuda.jit(device=True, inline=True)(derivative)


@cuda.jit(device=True, inline=True)
def _split(i, inner, middle):
    """Thread index -> (outer, middle, inner) coordinates of a row-major ``(*, middle, inner)`` grid."""
    j = i // inner
    return j // middle, j % middle, i % inner


@cuda.jit(device=True, inline=True)
def _z_offset(b, m, n, zb, zm, zn, run):
    """Where output element ``(b, m, n)`` sits in ``Z``'s final layout."""
    return zb[b] + zm[m] + zn[n // run] + n % run


@cuda.jit
def _forward(X, Yc, Z, Zpre, keep, xb, xm, xk, K, N, zb, zm, zn, run, code):
    i = cuda.grid(1)
    nm = xm.size
    if i >= xb.size * nm * N:
        return
    b, m, n = _split(i, N, nm)
    xo = xb[b] + xm[m]
    s = 0.0
    for k in range(K):
        s += X[xo + xk[k]] * Yc[(b * K + k) * N + n]
    at = _z_offset(b, m, n, zb, zm, zn, run)
    if keep:
        Zpre[at] = s
    Z[at] = _act(s, code)


@cuda.jit
def _gather(G, OUT, PRE, keep, code, C, zb, zm, zn, run, N):
    i = cuda.grid(1)
    nm = zm.size
    if i >= zb.size * nm * N:
        return
    b, m, n = _split(i, N, nm)
    at = _z_offset(b, m, n, zb, zm, zn, run)
    g = G[at]
    if code != IDENTITY:
        z = PRE[at] if keep else 0.0
        g *= _dact(z, OUT[at], code)
    C[i] = g


@cuda.jit
def _scatter(C, Z, Zpre, keep, zb, zm, zn, run, N, code):
    i = cuda.grid(1)
    nm = zm.size
    if i >= zb.size * nm * N:
        return
    b, m, n = _split(i, N, nm)
    at = _z_offset(b, m, n, zb, zm, zn, run)
    if keep:
        Zpre[at] = C[i]
    Z[at] = _act(C[i], code)


@cuda.jit
def _x_adjoint(C, Yc, Xbar, xb, xm, xk, K, N):
    i = cuda.grid(1)
    nm = xm.size
    if i >= xb.size * nm * K:
        return
    b, m, k = _split(i, K, nm)
    s = 0.0
    row = (b * nm + m) * N
    yo = (b * K + k) * N
    for n in range(N):
        s += C[row + n] * Yc[yo + n]
    Xbar[xb[b] + xm[m] + xk[k]] += s


@cuda.jit
def _y_adjoint(X, C, Ycbar, xb, xm, xk, K, N):
    i = cuda.grid(1)
    if i >= xb.size * K * N:
        return
    b, k, n = _split(i, N, K)
    nm = xm.size
    s = 0.0
    for m in range(nm):
        s += X[xb[b] + xm[m] + xk[k]] * C[(b * nm + m) * N + n]
    Ycbar[i] += s


def _blocks(total: int) -> int:
    return max(1, (total + _THREADS - 1) // _THREADS)


_STREAMS: dict[int, Any] = {}


def _stream() -> Any:
    """torch's current stream as a numba stream: launches then order with torch's own work on that
    stream (not numba's default stream), which is also what lets a CUDA graph capture them."""
    from numba import config

    if config.ENABLE_CUDASIM:
        return 0
    handle = torch.cuda.current_stream().cuda_stream
    stream = _STREAMS.get(handle)
    if stream is None:
        stream = _STREAMS[handle] = cuda.external_stream(handle)
    return stream


def device_view(t: torch.Tensor) -> Any:
    """A kernel argument for a contiguous tensor: a CUDA array view, or numpy under the simulator."""
    from numba import config

    if config.ENABLE_CUDASIM:
        return t.detach().numpy()
    return cuda.as_cuda_array(t.detach())


_TABLES: dict[tuple[int, str], tuple[np.ndarray, torch.Tensor]] = {}


def _table(t: np.ndarray, device: torch.device) -> Any:
    """An offset table on the device, copied there once (steps are built once and kept)."""
    key = (id(t), str(device))
    hit = _TABLES.get(key)
    if hit is None or hit[0] is not t:
        hit = _TABLES[key] = (t, torch.from_numpy(t).to(device))
    return device_view(hit[1])


def forward_step(st: Any, x: torch.Tensor, yc: torch.Tensor, code: int, keep_pre: bool) -> tuple:
    """``(Z, Zpre)`` of one step on the device (``Zpre`` empty unless kept)."""
    dev = x.device
    bb, kk, nn = st.bkn
    z = torch.empty(st.out_size, dtype=x.dtype, device=dev)
    pre = torch.empty(st.out_size if keep_pre else 0, dtype=x.dtype, device=dev)
    xb, xm, xk = (_table(t, dev) for t in st.x_tables)
    zb, zm, zn = (_table(t, dev) for t in st.z_tables)
    total = bb * st.x_tables[1].size * nn
    if kk >= BLAS_MIN_K:
        xc = x.reshape(st.x_in_shape).permute(*st.x_axes).reshape(bb, -1, kk)
        c = torch.matmul(xc, yc.reshape(bb, kk, nn)).reshape(-1).contiguous()
        _scatter[_blocks(total), _THREADS, _stream()](
            device_view(c), device_view(z), device_view(pre), keep_pre, zb, zm, zn, st.run, nn, code
        )
    else:
        _forward[_blocks(total), _THREADS, _stream()](
            device_view(x), device_view(yc), device_view(z), device_view(pre), keep_pre, xb, xm, xk, kk, nn, zb, zm, zn,
            st.run, code,
        )  # fmt: skip
    return z, pre


def backward_step(
    st: Any, x: torch.Tensor, yc: torch.Tensor, g: torch.Tensor, out: torch.Tensor, pre: torch.Tensor, code: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X̄, Ȳc)`` of one step from its output adjoint ``g`` (times ``σ'`` when ``code`` is not identity)."""
    dev = x.device
    bb, kk, nn = st.bkn
    nm = st.x_tables[1].size
    xb, xm, xk = (_table(t, dev) for t in st.x_tables)
    zb, zm, zn = (_table(t, dev) for t in st.z_tables)
    c = torch.empty(bb * nm * nn, dtype=g.dtype, device=dev)
    _gather[_blocks(c.numel()), _THREADS, _stream()](
        device_view(g),
        device_view(out),
        device_view(pre),
        pre.numel() > 0,
        code,
        device_view(c),
        zb,
        zm,
        zn,
        st.run,
        nn,
    )
    x_bar = torch.zeros(x.numel(), dtype=g.dtype, device=dev)
    if kk >= BLAS_MIN_K or max(nm, nn) >= REDUCE_BLAS_MIN:
        cm = c.reshape(bb, nm, nn)
        xc_bar = torch.matmul(cm, yc.reshape(bb, kk, nn).transpose(1, 2))
        inverse = tuple(int(a) for a in np.argsort(st.x_axes))
        x_bar = xc_bar.reshape(st.x_shape).permute(*inverse).reshape(-1).contiguous()
        xc = x.reshape(st.x_in_shape).permute(*st.x_axes).reshape(bb, nm, kk)
        yc_bar = torch.matmul(xc.transpose(1, 2), cm).reshape(-1).contiguous()
    else:
        yc_bar = torch.zeros(yc.numel(), dtype=g.dtype, device=dev)
        _x_adjoint[_blocks(bb * nm * kk), _THREADS, _stream()](
            device_view(c), device_view(yc), device_view(x_bar), xb, xm, xk, kk, nn
        )
        _y_adjoint[_blocks(bb * kk * nn), _THREADS, _stream()](
            device_view(x), device_view(c), device_view(yc_bar), xb, xm, xk, kk, nn
        )
    return x_bar, yc_bar
