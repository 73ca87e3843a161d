"""Triton kernels of :mod:`kernels.kronsum` (imported on first launch; see there for the maths).

Each program holds a block of ``BB`` input rows. Products fold the row block into one side of the
matrix (``(BB*P, Q)`` or ``(M, BB*N)``), and ``_swap_rows`` regroups the on-chip intermediate between
the two products of a bond term, so no intermediate reaches memory. Built for sm_90a (checked here,
offline: ``benchmarks/kernels/kron_compile.py``) both products compile to ``wgmma``; the obvious
alternative, one batched 3-D ``tl.dot`` per product with the factor broadcast over the row block,
compiled to Ampere's ``mma.sync`` with 1-1.8 KB of register spills at every setting tried.
"""

import triton
import triton.language as tl


@triton.jit
def _swap_rows(t, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr):
    # (D0*D1, D2) with rows (i, j) -> (D1, D0*D2) with columns (i, k): the row block's
    # intermediate regrouped for the next product, on chip.
    return tl.reshape(tl.permute(tl.reshape(t, (D0, D1, D2)), (1, 0, 2)), (D1, D0 * D2))


@triton.jit
def forward(
    x, a, b, y, rows,
    sx0, sx1, sx2, sa0, sa1, sa2, sb0, sb1, sb2, sy0, sy1, sy2,
    R: tl.constexpr, M: tl.constexpr, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr,
    BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BQ: tl.constexpr, BB: tl.constexpr,
    P_CHUNKS: tl.constexpr, PRECISION: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    # Program (row block, tile of BM output rows m); P is walked in P_CHUNKS chunks of BP, so a half
    # wider than one block (M or P) costs a reload of A and B per chunk, not registers.
    acc_t = tl.float64 if F64 else tl.float32
    row0 = tl.program_id(0) * BB
    mm = tl.program_id(1) * BM + tl.arange(0, BM)
    i = tl.arange(0, BB * BP)  # rows (row, p) of the X chunk as one (BB*BP, BQ) matrix
    xr = row0 + i // BP
    qq = tl.arange(0, BQ)
    nn = tl.arange(0, BN)
    bmask = (qq < Q)[:, None] & (nn < N)[None, :]
    acc = tl.zeros((BM, BB * BN), dtype=acc_t)  # columns (row, n)
    for c in range(P_CHUNKS):
        xp = c * BP + i % BP
        xmask = ((xr < rows) & (xp < P))[:, None] & (qq < Q)[None, :]
        xt = tl.load(x + xr[:, None] * sx0 + xp[:, None] * sx1 + qq[None, :] * sx2, mask=xmask, other=0.0)
        pp = c * BP + tl.arange(0, BP)
        amask = (mm < M)[:, None] & (pp < P)[None, :]
        for r in range(R):
            bt = tl.load(b + r * sb0 + qq[:, None] * sb2 + nn[None, :] * sb1, mask=bmask, other=0.0)
            u = tl.dot(xt, bt, input_precision=PRECISION, out_dtype=acc_t)  # X_b B_rᵀ, rows (row, p)
            u = _swap_rows(u, BB, BP, BN).to(xt.dtype)  # (BP, BB*BN)
            ar = tl.load(a + r * sa0 + mm[:, None] * sa1 + pp[None, :] * sa2, mask=amask, other=0.0)
            acc += tl.dot(ar, u, input_precision=PRECISION, out_dtype=acc_t)
    j = tl.arange(0, BB * BN)
    yr = row0 + j // BN
    yn = j % BN
    ymask = (mm < M)[:, None] & ((yr < rows) & (yn < N))[None, :]
    tl.store(y + yr[None, :] * sy0 + mm[:, None] * sy1 + yn[None, :] * sy2, acc.to(y.dtype.element_ty), mask=ymask)


@triton.jit
def reduce(
    x, dy, b, part, rows,
    sx0, sx1, sx2, sd0, sd1, sd2, sb0, sb1, sb2, so0, so1, so2, so3,
    PER_SLICE: tl.constexpr, M: tl.constexpr, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr,
    BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BQ: tl.constexpr, BB: tl.constexpr,
    PRECISION: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    # Ā_r += Σ_b (Ȳ_b B_r) X_bᵀ over this slice's rows (B̄ too, called on transposed rows).
    acc_t = tl.float64 if F64 else tl.float32
    r = tl.program_id(0)
    s = tl.program_id(1)
    nn = tl.arange(0, BN)
    qq = tl.arange(0, BQ)
    bmask = (nn < N)[:, None] & (qq < Q)[None, :]
    br = tl.load(b + r * sb0 + nn[:, None] * sb1 + qq[None, :] * sb2, mask=bmask, other=0.0)
    i = tl.arange(0, BB * BM)  # Ȳ rows (row, m)
    k = tl.arange(0, BB * BQ)  # Xᵀ rows (row, q)
    pp = tl.arange(0, BP)
    acc = tl.zeros((BM, BP), dtype=acc_t)
    for blk in range(PER_SLICE):
        row0 = (s * PER_SLICE + blk) * BB
        dr = row0 + i // BM
        dm = i % BM
        dmask = ((dr < rows) & (dm < M))[:, None] & (nn < N)[None, :]
        d = tl.load(dy + dr[:, None] * sd0 + dm[:, None] * sd1 + nn[None, :] * sd2, mask=dmask, other=0.0)
        z = tl.dot(d, br, input_precision=PRECISION, out_dtype=acc_t)  # rows (row, m), cols q
        z = _swap_rows(z, BB, BM, BQ).to(d.dtype)  # (BM, BB*BQ)
        xr = row0 + k // BQ
        xq = k % BQ
        xmask = ((xr < rows) & (xq < Q))[:, None] & (pp < P)[None, :]
        xt = tl.load(x + xr[:, None] * sx0 + pp[None, :] * sx1 + xq[:, None] * sx2, mask=xmask, other=0.0)
        acc += tl.dot(z, xt, input_precision=PRECISION, out_dtype=acc_t)
    mm = tl.arange(0, BM)
    omask = (mm < M)[:, None] & (pp < P)[None, :]
    tl.store(part + s * so0 + r * so1 + mm[:, None] * so2 + pp[None, :] * so3, acc, mask=omask)
