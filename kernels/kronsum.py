"""A streamed layer through a Kronecker sum, ``Y_b = Σ_r A_r X_b B_rᵀ``, fused in Triton kernels.

When the last segment of a generator splits into two halves joined by one bond of size ``R`` (the
root of a TTN: the left subtree holds the high output and input legs, the right subtree the low
ones), the weight is ``W = Σ_r A_r ⊗ B_r`` and ``x @ W.T`` needs no ``W``: with each input row
``x_b`` read as a ``(P, Q)`` matrix ``X_b``, the output row is the ``(M, N)`` matrix
``Σ_r A_r X_b B_rᵀ``. That is ``2 R (P Q N + M P N)`` flops per row against ``2 M N P Q`` for the
dense product, half of it at ``R = 16`` on 64×64 halves, but the intermediate ``X_b B_rᵀ`` of every
row and bond is ``R`` times the input: written to memory by separate matmuls (the planned torch
stream) it costs far more than it saves. Here each program keeps it on chip: a block of rows stays
in registers while the kernel walks the bond, and only ``X`` and ``Y`` touch memory.

Why Triton and not numba-cuda: the products only pay on the tensor cores (TF32, like the dense
layer they replace), and numba-cuda reaches no matrix instructions; Triton is on the GPU image and
its interpreter (``TRITON_INTERPRET=1``) runs these kernels on CPU tensors, which is how CI checks
them without a GPU.

Operands are float16 (tensor-core products with float32 accumulators; the on-chip intermediate is
rounded to float16 between the two products, as a chain of two float16 GEMMs would round, and
overflow, it; the reductions sum in float32 slots and round once), float32 (TF32 where torch allows
it) or float64. bfloat16 goes to the torch route: Triton's interpreter returns
garbage for it, so no test here could check the kernels in it.

Backward: ``X̄_b = Σ_r A_rᵀ Ȳ_b B_r`` is the forward kernel on transposed factors; ``Ā_r = Σ_b Ȳ_b
B_r X_bᵀ`` and ``B̄_r = Σ_b Ȳ_bᵀ A_r X_b`` reduce over rows (one kernel: ``B̄`` is ``Ā``'s sum on
transposed rows), each program summing one bond's share of a slice of rows into its own slot of a
workspace that torch then sums (no atomics, so the result is deterministic).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from kernels.errors import KernelsError
from kernels.transforms import transformed

BACKENDS = ("auto", "triton", "torch")
DTYPES = (torch.float16, torch.float32, torch.float64)  # what the kernels take (float32 accumulators below float64)
MIN_BLOCK = 16  # tl.dot needs every extent >= 16
MAX_BLOCK = 128  # widest extent held whole in a program's registers with the row block
# A wider factor is tiled in blocks of this: built for sm_90a, 128-wide tiles of a 256x512 factor
# spilled at every row block above one, 64-wide ones at none up to four rows with 8 warps.
TILE = 64
DEFAULT_PROGRAMS = 528  # reduction programs to launch (4 per H100/H200 multiprocessor) without a device query
MAX_ELEMENTS = 2**31 - 1  # offsets are int32 in the kernels (cheaper address arithmetic than int64)
KNOBS = ("rows_per_program", "num_warps", "num_stages")
KERNELS = ("forward", "grad_a", "grad_b")
BACKWARDS = ("fused", "gemm")  # the factors' gradients: fused row reductions, or through the dense dW GEMM
# Launch settings used when kron_stream gets no config (what TNLinear(mode="kron") runs): the shared
# KNOBS and per-kernel dicts under KERNELS. Benchmarks set it to a tuned choice.
DEFAULT_CONFIG: dict = {}


def _block(n: int) -> int:
    return max(MIN_BLOCK, 1 << (n - 1).bit_length())


def _narrow(*extents: int) -> bool:
    return all(_block(e) <= MAX_BLOCK for e in extents)


def fits(m: int, p: int, n: int, q: int) -> bool:
    """Whether the kernels take factors with ``A_r`` ``M x P`` and ``B_r`` ``N x Q``: one factor's
    extents at most 128 (each padded to a power of two >= 16); the other's are tiled."""
    return _narrow(n, q) or _narrow(m, p)


def reduces(m: int, p: int, n: int, q: int) -> bool:
    """Whether the fused reductions take these factors (all four extents at most 128); otherwise the
    factors' gradients go through the dense ``dW`` GEMM."""
    return _narrow(m, p, n, q)


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(x: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on ``x``'s device here (CUDA, or any device while interpreting)."""
    if not (x.is_cuda or (interpreting() and x.device.type == "cpu")):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def reference(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_r A_r X_b B_rᵀ`` with an einsum and a matmul (any device; the bond-sized intermediate is
    materialised: ``X_b B_rᵀ`` or ``A_r X_b``, whichever is smaller, and the bond summed inside the
    second product)."""
    p, q = x.shape[1:]
    m, n = a.shape[1], b.shape[1]
    r = a.shape[0]
    # The first product as an einsum (one GEMM over all rows and bonds; a broadcasting matmul copies the
    # factor once per row: rows x R x Q x N elements, 34 GB for a MERA χ=8 root at 4096 rows), the
    # second as a matmul whose factor side is 2-D, laid out so no copy of the intermediate is made.
    if p * n <= m * q:
        u = torch.einsum("bpq,rnq->bprn", x, b).reshape(x.shape[0], p * r, n)
        return torch.matmul(a.permute(1, 2, 0).reshape(m, p * r), u)
    v = torch.einsum("bpq,rmp->bmrq", x, a).reshape(x.shape[0], m, r * q)
    return torch.matmul(v, b.permute(0, 2, 1).reshape(r * q, n))


def kron_stream(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, backend: str = "auto", config: dict | None = None
) -> torch.Tensor:
    """``Y_b = Σ_r A_r X_b B_rᵀ`` for every row ``b``, differentiable in all three.

    Args:
        x: ``(rows, P, Q)``.
        a: ``(R, M, P)``.
        b: ``(R, N, Q)``.
        backend: ``"triton"`` (the fused kernels; CUDA tensors, or CPU tensors under
            ``TRITON_INTERPRET=1``), ``"torch"`` (torch products: on the CPU in cache-sized blocks of
            rows, :func:`kernels.kronsum_cpu.kron_rows`; elsewhere :func:`reference`) or ``"auto"``
            (Triton where it runs: see :func:`unsupported`).
        config: Launch settings for the Triton kernels (:data:`DEFAULT_CONFIG` when ``None``): the
            :data:`KNOBS` for all kernels, a dict of them under a kernel's name (:data:`KERNELS`;
            ``forward`` also computes ``X̄``) for that kernel, ``programs`` for the reductions, and
            ``backward``: ``"fused"`` (the reduction kernels) or ``"gemm"`` (``Ā`` and ``B̄`` from the
            dense weight gradient ``Ȳᵀ X``, one GEMM, then two small contractions).

    Returns:
        ``(rows, M, N)``.

    Raises:
        KernelsError: On mismatched shapes or dtypes, an unknown backend, or ``"triton"`` where it
            cannot run.
    """
    if backend not in BACKENDS:
        raise KernelsError(f"unknown kron_stream backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    _check(x, a, b)
    reason = unsupported(x, a, b)
    if backend == "torch" or (backend == "auto" and reason is not None):
        return _torch_route(x, a, b)
    if reason is not None:
        raise KernelsError(f"{reason}; use backend='torch' (or 'auto', which falls back to it)")
    config = dict(DEFAULT_CONFIG if config is None else config)
    _check_config(config)
    text = _encode(config)
    per_launch = MAX_ELEMENTS // max(x.shape[1] * x.shape[2], a.shape[1] * b.shape[1])
    if x.shape[0] > per_launch:
        # The kernels' offsets are 32-bit: a batch that makes a larger input or output goes through
        # in slices of rows (still differentiable; each slice its own launches).
        return torch.cat([_launch(part, a, b, text) for part in x.split(per_launch)])
    return _launch(x, a, b, text)


def _torch_route(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The torch route: on the CPU (and on meta tensors, which the CPU mode model traces)
    :func:`kernels.kronsum_cpu.kron_rows`, in cache-sized blocks of rows where they pay and can run;
    elsewhere :func:`reference`."""
    if x.device.type not in ("cpu", "meta"):
        return reference(x, a, b)
    from kernels.kronsum_cpu import kron_rows

    return kron_rows(x, a, b)


def _launch(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, text: str) -> torch.Tensor:
    if _narrow(*b.shape[1:]):
        return _forward_op(x, a, b, text)
    # B is the wide factor: Y_bᵀ = Σ_r B_r X_bᵀ A_rᵀ puts it in A's place, which the kernels tile.
    return _forward_op(x.transpose(1, 2), b, a, text).transpose(1, 2)


def unsupported(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run ``kron_stream(x, a, b)`` here, or ``None`` when they can
    (operands already of valid shapes and one dtype; a batch past the kernels' 32-bit offsets runs in
    slices of rows, so only a single row that large is refused)."""
    if not available(x):
        return "backend='triton' needs CUDA tensors and the triton package (or TRITON_INTERPRET=1 for CPU tensors)"
    if transformed(x, a, b):
        return "torch.func transforms and forward-mode AD cannot see into kron_stream's Triton kernels"
    if x.dtype not in DTYPES:
        # bfloat16 is left out: Triton's CPU interpreter, which is how CI checks the kernels, returns
        # garbage for it, so it could not be tested.
        return f"kron_stream's Triton kernels take float16, float32 or float64, got {x.dtype}"
    if not fits(*a.shape[1:], *b.shape[1:]):
        return (
            f"kron_stream's Triton kernels need one factor with both extents at most {MAX_BLOCK}; got A "
            f"{tuple(a.shape)}, B {tuple(b.shape)}"
        )
    largest = max(x.shape[1] * x.shape[2], a.shape[1] * b.shape[1])
    if largest > MAX_ELEMENTS:
        return (
            f"kron_stream's Triton kernels index with 32-bit offsets, so a row holds at most {MAX_ELEMENTS:,} "
            f"elements; this one has {largest:,}"
        )
    return None


def _check(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    for name, t in (("x", x), ("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise KernelsError(f"kron_stream needs torch tensors; {name} is a {type(t).__name__}")
    if x.dim() != 3 or a.dim() != 3 or b.dim() != 3:
        raise KernelsError(
            f"kron_stream needs x (rows, P, Q), a (R, M, P) and b (R, N, Q); got {tuple(x.shape)}, "
            f"{tuple(a.shape)}, {tuple(b.shape)}"
        )
    if a.shape[0] != b.shape[0] or a.shape[2] != x.shape[1] or b.shape[2] != x.shape[2]:
        raise KernelsError(
            f"kron_stream shapes disagree: x {tuple(x.shape)} needs a (R, M, {x.shape[1]}) and "
            f"b (R, N, {x.shape[2]}) with one R; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not (x.dtype == a.dtype == b.dtype) or x.dtype not in (*DTYPES, torch.bfloat16):
        raise KernelsError(
            f"kron_stream needs one dtype of float16, bfloat16, float32 or float64; got {x.dtype}, {a.dtype}, {b.dtype}"
        )
    if not (x.device == a.device == b.device):
        raise KernelsError(f"kron_stream needs one device; got {x.device}, {a.device}, {b.device}")


@torch.compiler.assume_constant_result
def _encode(config: dict) -> str:
    # The operators take the config as a string; under torch.compile it is a constant of the graph.
    return json.dumps(config, sort_keys=True)


def _check_config(config: dict) -> None:
    allowed = (*KNOBS, *KERNELS, "programs", "backward")
    if config.get("backward", "fused") not in BACKWARDS:
        raise KernelsError(f"kron_stream backward must be one of {', '.join(BACKWARDS)}, got {config['backward']!r}")
    unknown = set(config) - set(allowed)
    for kernel in KERNELS:
        unknown |= set(config.get(kernel, {})) - set(KNOBS)
    if unknown:
        raise KernelsError(
            f"unknown kron_stream config keys {sorted(unknown)}; use {', '.join(allowed)}, with the first "
            f"{len(KNOBS)} also inside a kernel's dict"
        )


# The kernels run inside custom operators, so torch.compile and torch.export see one opaque call with a
# known output shape (and keep the kernels) instead of tracing into Triton's launcher.
@torch.library.custom_op("adntn::kron_forward", mutates_args=())
def _forward_op(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, config: str) -> torch.Tensor:
    return _forward(x, a, b, json.loads(config))


@_forward_op.register_fake
def _(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, config: str) -> torch.Tensor:
    return x.new_empty((x.shape[0], a.shape[1], b.shape[1]))


@torch.library.custom_op("adntn::kron_reduce", mutates_args=())
def _reduce_op(
    which: str, x: torch.Tensor, dy: torch.Tensor, other: torch.Tensor, shape: list[int], config: str
) -> torch.Tensor:
    return _reduce(which, x, dy, other, torch.Size(shape), json.loads(config))


@_reduce_op.register_fake
def _(
    which: str, x: torch.Tensor, dy: torch.Tensor, other: torch.Tensor, shape: list[int], config: str
) -> torch.Tensor:
    return x.new_empty(shape)


def _save(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, a, b, config = inputs
    ctx.save_for_backward(x, a, b)
    ctx.config = config


def _backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, a, b = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True (Hessian-vector products, gradient penalties): the reduction kernels have no
        # derivative of their own, so these gradients come from the reference contraction, differentiably.
        return (*reference_grads(x, a, b, dy, ctx.needs_input_grad[:3]), None)
    config = json.loads(ctx.config)
    dy = dy.contiguous()
    need_x, need_a, need_b, _ = ctx.needs_input_grad
    # The factors transposed into contiguous copies (R x M x P elements each), so the dx kernel's
    # programs read their tiles row by row, as the forward's do.
    dx = None
    if need_x:
        dx = _forward_op(dy, a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous(), ctx.config)
    fused = config.get("backward", "fused") == "fused" and reduces(*a.shape[1:], *b.shape[1:])
    if not fused and (need_a or need_b):
        # The dense layer's weight gradient, then the factors' from it: at R = 16 on 64-wide halves
        # the fused reductions do as many flops as this one GEMM, which cuBLAS may run faster; and
        # the reductions hold all four extents whole, so a wide factor always comes this way.
        rows, p, q = x.shape
        m, n = dy.shape[1:]
        dw = torch.mm(dy.reshape(rows, m * n).T, x.reshape(rows, p * q)).reshape(m, n, p, q)
        # Float16 operands: the two contractions in float32, rounding once at the end.
        wide = torch.float32 if dw.dtype == torch.float16 else dw.dtype
        dw = dw.to(wide)
        da = torch.einsum("mnpq,rnq->rmp", dw, b.to(wide)).to(a.dtype) if need_a else None
        db = torch.einsum("mnpq,rmp->rnq", dw, a.to(wide)).to(b.dtype) if need_b else None
        return dx, da, db, None
    da = _reduce_op("a", x, dy, b, list(a.shape), ctx.config) if need_a else None
    db = _reduce_op("b", x, dy, a, list(b.shape), ctx.config) if need_b else None
    return dx, da, db, None


_forward_op.register_autograd(_backward, setup_context=_save)


def reference_grads(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, needed: tuple[bool, ...]
) -> list[torch.Tensor | None]:
    """The gradients of :func:`reference` in the operands ``needed``, with their own graph (for a
    backward under ``create_graph=True``, which the fused routes cannot differentiate again)."""
    # Through a view of each operand: one tensor passed twice (kron_stream(x, a, a)) would otherwise
    # get its whole gradient in both places, and autograd would sum the two.
    x, a, b = (t.view_as(t) for t in (x, a, b))
    operands = [t for t, need in zip((x, a, b), needed, strict=True) if need]
    found = iter(torch.autograd.grad(reference(x, a, b), operands, dy, create_graph=True, allow_unused=True))
    return [next(found) if need else None for need in needed]


def _precision(dtype: torch.dtype) -> str:
    # Follow torch's own switch, so the fused layer is exactly as exact as the dense one it replaces.
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _settings(config: dict, kernel: str, blocks: tuple[int, int, int, int]) -> tuple[int, dict]:
    """Rows per program and launch options of one kernel: its own entry in ``config`` over the shared keys.

    ``blocks`` are the kernel's ``(BM, BP, BN, BQ)``. By default a program takes as many rows as keep its
    largest on-chip tile at the size checked offline with Triton's sm_90a compiler and ptxas (no spills
    with 8 warps), at most 8 in the forward and 4 in the reductions: 2 and 1 rows of 64-wide halves; 8
    and 4 for a mixer's 64x64 by 8-wide product.
    """
    merged = {k: config[k] for k in KNOBS if k in config}
    merged.update(config.get(kernel, {}))
    bm, bp, bn, bq = blocks
    if kernel == "forward":  # per row: X (BP, BQ), X B_rᵀ (BP, BN), output (BM, BN)
        budget, tile, most = 2 * 64 * 64, max(bp * bq, bp * bn, bm * bn), 8
    else:  # per row: Ȳ (BM, BN), Ȳ B_r (BM, BQ), Xᵀ (BQ, BP)
        budget, tile, most = 64 * 64, max(bm * bn, bm * bq, bq * bp), 4
    # At most the mixer's rows: more would leave few programs per wave at narrow extents.
    rows = merged.get("rows_per_program", min(most, 1 << max(0, (budget // tile).bit_length() - 1)))
    if rows < 1 or rows & (rows - 1):
        raise KernelsError(f"rows_per_program must be a power of two >= 1, got {rows}")
    return rows, {"num_warps": merged.get("num_warps", 8), "num_stages": merged.get("num_stages", 2)}


def _forward(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, config: dict) -> torch.Tensor:
    rows, p, q = x.shape
    r, m, _ = a.shape
    n = b.shape[1]
    y = torch.empty((rows, m, n), dtype=x.dtype, device=x.device)
    wide = not _narrow(m, p)
    bm, bp = (min(_block(m), TILE), min(_block(p), TILE)) if wide else (_block(m), _block(p))
    bb, options = _settings(config, "forward", (bm, bp, _block(n), _block(q)))
    grid = (max(1, math.ceil(rows / bb)), math.ceil(m / bm))
    _kernels().forward[grid](
        x, a, b, y, rows,
        *x.stride(), *a.stride(), *b.stride(), *y.stride(),
        R=r, M=m, P=p, N=n, Q=q, BM=bm, BP=bp, BN=_block(n), BQ=_block(q), BB=bb, P_CHUNKS=math.ceil(p / bp),
        PRECISION=_precision(x.dtype), F64=x.dtype == torch.float64, **options,
    )  # fmt: skip
    return y


def _reduce(
    which: str, x: torch.Tensor, dy: torch.Tensor, other: torch.Tensor, shape: torch.Size, config: dict
) -> torch.Tensor:
    """``Ā`` (``which="a"``, ``other`` is ``B``) or ``B̄`` (``"b"``, ``other`` is ``A``).

    One kernel does both: ``B̄_r = Σ_b Ȳ_bᵀ A_r X_b`` is ``Ā``'s sum for the transposed rows ``X_bᵀ`` and
    ``Ȳ_bᵀ`` with ``A`` in ``B``'s place, and a transposed row is only other strides.
    """
    kernel_name = f"grad_{which}"
    if which == "b":
        x, dy = x.transpose(1, 2), dy.transpose(1, 2)
    rows, p, q = x.shape
    m, n = dy.shape[1:]
    r = shape[0]
    bm, bp, bn, bq = (_block(e) for e in (m, p, n, q))
    bb, options = _settings(config, kernel_name, (bm, bp, bn, bq))
    blocks = max(1, math.ceil(rows / bb))
    programs = config.get("programs", DEFAULT_PROGRAMS)
    slices = max(1, min(blocks, programs // max(r, 1)))
    per_slice = math.ceil(blocks / slices)
    slices = math.ceil(blocks / per_slice)
    # Float32 slots for float16 inputs: the sum over slices stays as exact as the kernel's accumulators.
    slot = torch.float64 if x.dtype == torch.float64 else torch.float32
    partial = torch.empty((slices, *shape), dtype=slot, device=x.device)
    _kernels().reduce[(r, slices)](
        x, dy, other, partial, rows,
        *x.stride(), *dy.stride(), *other.stride(), *partial.stride(),
        PER_SLICE=per_slice, M=m, P=p, N=n, Q=q, BM=bm, BP=bp, BN=bn, BQ=bq, BB=bb,
        PRECISION=_precision(x.dtype), F64=x.dtype == torch.float64, **options,
    )  # fmt: skip
    return partial.sum(0).to(x.dtype)


def _kernels() -> Any:
    """The jitted kernels, imported on first use so ``TRITON_INTERPRET`` is read when a launch needs them."""
    try:
        from kernels import kronsum_triton
    except ImportError as exc:  # pragma: no cover - available() checks first
        raise KernelsError("the fused Kronecker-sum kernels need the triton package") from exc
    return kronsum_triton
