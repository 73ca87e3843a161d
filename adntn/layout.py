"""Reshaping a generated weight into its matrix without torch's slow strided copy.

The last contraction of a generator writes its legs in the order the contraction produces them, and
the weight matrix wants another: the reshape to ``(out, in)`` is a permuting copy of the whole weight.
Torch's generic strided copy moves one 4-byte element at a time with the index arithmetic of every axis
per element: on an H200 it took 73-118 us for a 16.7M-entry float32 weight, most of a generator's
forward+backward (``benchmarks/results/kernels-gpu-profile.md``). Where the permutation keeps the last
axis, the copy moves contiguous runs; viewing them as 16-byte (or 8-byte) elements gives the same copy a
quarter (half) of the elements and full-width loads. The view reinterprets bits, so the result is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

WIDE = (torch.complex128, torch.float64)  # element types a run can be copied as, widest first
# Where ``reshape`` takes the wide copy: measured on CUDA only (the CPU's generators belong to the numba executor).
DEVICES = ("cuda",)


def _wide_dtype(x: torch.Tensor, perm: Sequence[int]) -> torch.dtype | None:
    """The widest dtype whose elements tile ``x``'s contiguous last-axis runs, or ``None``."""
    if x.dim() == 0 or perm[-1] != x.dim() - 1 or not x.is_contiguous():
        return None
    run = x.shape[-1] * x.element_size()
    for wide in WIDE:
        width = wide.itemsize
        if width > x.element_size() and run % width == 0 and x.data_ptr() % width == 0:
            return wide
    return None


def _inverse(perm: Sequence[int]) -> list[int]:
    """The permutation that undoes ``perm``: ``x.permute(perm).permute(_inverse(perm))`` is ``x``."""
    inverse = [0] * len(perm)
    for k, p in enumerate(perm):
        inverse[p] = k
    return inverse


def _permuted(x: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    wide = _wide_dtype(x, perm)
    if wide is None:
        return x.permute(*perm).contiguous()
    return x.view(wide).permute(*perm).contiguous().view(x.dtype)


class _BlockPermute(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:
        ctx.perm = perm
        return _permuted(x, perm)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _permuted(grad.contiguous(), _inverse(ctx.perm)), None


def permute_copy(x: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    """``x.permute(perm).contiguous()``, differentiable, moving last-axis runs as wide elements.

    Falls back to the plain copy where no wider element tiles the runs (the last axis moves, or its run is
    not a multiple of 8 bytes) and while ``torch.compile`` traces (inductor writes its own copy).

    Raises:
        ValueError: If ``perm`` is not a permutation of ``x``'s axes.
    """
    perm = tuple(int(p) for p in perm)
    if sorted(perm) != list(range(x.dim())):
        raise ValueError(f"permute_copy needs a permutation of 0..{x.dim() - 1}, got {perm}")
    if torch.compiler.is_compiling() or _wide_dtype(x, perm) is None:
        return x.permute(*perm).contiguous()
    return _BlockPermute.apply(x, perm)


def reshape(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``x.reshape(shape)``; where that copies a permuted CUDA tensor, the copy moves wide elements.

    ``x`` is typically a contraction's result seen through a permutation (a strided view of a dense
    tensor). A reshape that needs no copy, a CPU tensor, and anything but a permuted dense tensor take
    torch's own path.
    """
    if x.device.type not in DEVICES or torch.compiler.is_compiling():
        return x.reshape(shape)
    try:
        return x.view(shape)
    except RuntimeError:  # torch says a view is impossible only by raising
        pass
    # The physical axis order: strides from largest to smallest (size-1 axes do not matter).
    order = sorted(range(x.dim()), key=lambda d: (-x.stride(d), d))
    base = x.permute(*order)
    if not base.is_contiguous():
        return x.reshape(shape)
    return permute_copy(base, _inverse(order)).view(shape)
