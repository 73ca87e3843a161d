"""Pairwise steps of a plan in the form the numba and CUDA kernels run.

A pairwise contraction over contiguous arrays is ``Z[b, m, n] = sum_k X[b, m, k] * Y[b, k, n]`` for
index roles ``b`` (kept, on both operands), ``m`` (kept, left only), ``n`` (kept, right only) and
``k`` (summed). ``X`` is read in place through offset tables (the flat offsets of each role's index
combinations); ``Y`` is transposed to a canonical ``(b, k, n)`` layout; ``Z`` is written through
offset tables in contiguous runs, so a group's last step writes the weight directly in its final
layout (no transpose copy) with the activation applied on the way out. The two adjoints of a step
read the same tables: ``X̄ = Z̄ ⊗ Y`` (summing ``n``) and ``Ȳ = X ⊗ Z̄`` (summing ``m``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kernels.errors import KernelsError


def offsets(legs: Sequence[int], sizes: Sequence[int], role: Sequence[int]) -> np.ndarray:
    """Flat offsets, in a contiguous array with axes ``legs``, of every combination of the ``role``
    indices (row-major over ``role``); a single zero when ``role`` is empty."""
    strides: dict[int, int] = {}
    step = 1
    for i in reversed(legs):
        strides[i] = step
        step *= sizes[i]
    out = np.zeros(1, dtype=np.int64)
    for i in role:
        out = (out[:, None] + np.arange(sizes[i], dtype=np.int64)[None, :] * strides[i]).reshape(-1)
    return out


@dataclass(frozen=True)
class Step:
    """One pairwise contraction ``Z[b, m, n] = sum_k X[b, m, k] * Y[b, k, n]`` in kernel form.

    ``X`` is read through offset tables. ``Y`` is first transposed (it is the smaller operand or an
    input core) to the canonical contiguous layout ``Yc[b, k, n]``, with ``n`` in ``Z``'s order, so
    every inner loop runs over contiguous memory. ``Z`` is written through offsets with contiguous
    runs: its trailing axes that belong to ``n`` form runs of ``run`` elements.

    Attributes:
        left: SSA id of ``X``.
        right: SSA id of ``Y``.
        out_legs: Index ids of ``Z`` in memory order.
        out_size: Elements of ``Z``.
        x_tables: ``(xb, xm, xk)`` offsets into ``X``.
        y_axes: Axes of ``Y`` (as stored) in canonical ``(b, k, n)`` order.
        y_in_shape: Shape of ``Y`` as stored.
        y_shape: Shape of ``Yc`` before flattening, for transposing adjoints back.
        bkn: ``(B, K, N)`` extents.
        z_tables: ``(zb, zm, zn_outer)`` offsets into ``Z``.
        run: Length of ``Z``'s contiguous ``n`` runs (``N = len(zn_outer) * run``).
        flops: Multiply-adds of the step.
        x_axes: Axes of ``X`` (as stored) in canonical ``(b, m, k)`` order, for the BLAS path.
        x_in_shape: Shape of ``X`` as stored.
        x_shape: Shape of the canonical ``Xc``.
        blas: Run the product by BLAS (``Xc @ Yc``) instead of the fused loop.
        z_strides: ``(sn, sm)`` when ``Z`` is a strided ``(q, M, run)`` array (no ``b``, arithmetic
            ``m`` and outer ``n`` offsets), element ``(o, m, r)`` at ``o * sn + m * sm + r``: BLAS
            then reads and writes ``Z`` in place; None otherwise.
    """

    left: int
    right: int
    out_legs: tuple[int, ...]
    out_size: int
    x_tables: tuple[np.ndarray, np.ndarray, np.ndarray]
    y_axes: tuple[int, ...]
    y_in_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    bkn: tuple[int, int, int]
    z_tables: tuple[np.ndarray, np.ndarray, np.ndarray]
    run: int
    flops: int
    x_axes: tuple[int, ...] = ()
    x_in_shape: tuple[int, ...] = ()
    x_shape: tuple[int, ...] = ()
    blas: bool = False
    z_strides: tuple[int, int] | None = None


def make_step(
    left: int,
    right: int,
    legs_left: Sequence[int],
    legs_right: Sequence[int],
    out_legs: Sequence[int],
    sizes: Sequence[int],
) -> Step:
    """The kernel form of ``Z[out_legs] = X[legs_left] ⊗ Y[legs_right]``.

    Raises:
        KernelsError: If an index sits on one operand only and is not kept (it must be summed
            before the pairwise steps, as tnplan's plans do).
    """
    sl, sr, so = set(legs_left), set(legs_right), set(out_legs)
    lone = (sl ^ sr) - so
    if lone:
        raise KernelsError(f"indices {sorted(lone)} sit on one operand only and are not kept")
    b = [i for i in out_legs if i in sl and i in sr]
    m = [i for i in out_legs if i in sl and i not in sr]
    n = [i for i in out_legs if i in sr and i not in sl]
    k = [i for i in legs_left if i in sr and i not in so]
    tail: list[int] = []
    for i in reversed(out_legs):  # trailing output axes that are all n: contiguous runs
        if i not in n:
            break
        tail.append(i)
    tail.reverse()
    outer = n[: len(n) - len(tail)]
    if n[len(n) - len(tail) :] != tail:
        outer, tail = n, []
    run = math.prod(sizes[i] for i in tail)
    z_outer = offsets(out_legs, sizes, outer)
    position = {i: a for a, i in enumerate(legs_right)}
    y_axes = tuple(position[i] for i in (*b, *k, *n))
    extent = (math.prod(sizes[i] for i in b), math.prod(sizes[i] for i in k), math.prod(sizes[i] for i in n))
    return Step(
        left=left,
        right=right,
        out_legs=tuple(out_legs),
        out_size=math.prod(sizes[i] for i in out_legs),
        x_tables=(offsets(legs_left, sizes, b), offsets(legs_left, sizes, m), offsets(legs_left, sizes, k)),
        y_axes=y_axes,
        y_in_shape=tuple(sizes[i] for i in legs_right),
        y_shape=tuple(sizes[i] for i in (*b, *k, *n)),
        bkn=extent,  # type: ignore[arg-type]
        z_tables=(offsets(out_legs, sizes, b), offsets(out_legs, sizes, m), z_outer),
        run=run,
        flops=math.prod(extent) * math.prod(sizes[i] for i in m),
        x_axes=tuple({i: a for a, i in enumerate(legs_left)}[i] for i in (*b, *m, *k)),
        x_in_shape=tuple(sizes[i] for i in legs_left),
        x_shape=tuple(sizes[i] for i in (*b, *m, *k)),
        z_strides=_blocks(offsets(out_legs, sizes, m), z_outer) if not b else None,
    )


def _stride(table: np.ndarray) -> int | None:
    """The common difference of an arithmetic offset table starting at 0 (0 for one entry), else None."""
    if table.size == 1:
        return 0
    d = int(table[1] - table[0])
    return d if table[0] == 0 and bool(np.all(np.diff(table) == d)) else None


def _blocks(zm: np.ndarray, zn: np.ndarray) -> tuple[int, int] | None:
    sm, sn = _stride(zm), _stride(zn)
    return None if sm is None or sn is None else (sn, sm)


def signature(step: Step) -> tuple:
    """What a step's running time depends on (its shapes, layouts, offset tables and path, not the
    operands' SSA ids), for cache keys."""
    tables = hashlib.sha256(b"".join(t.tobytes() for t in (*step.x_tables, *step.z_tables))).hexdigest()[:16]
    return (step.bkn, step.flops, step.out_size, step.run, step.blas, step.z_strides, step.y_axes,
            step.y_in_shape, step.x_axes, step.x_in_shape, tables)  # fmt: skip
