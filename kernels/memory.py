"""Host buffers for the CPU kernels.

A fresh multi-megabyte buffer is paid for in page faults on first touch: on the benchmark machine
torch's allocator (4 KiB pages) takes ~45 ms to fault in a 64 MiB weight, 3.7x the ~12 ms of the same
buffer from numpy, which advises transparent huge pages for blocks of 4 MiB and more. Big buffers
therefore come from numpy and are shared with torch without a copy; small ones stay with torch's
allocator, whose heap reuses them.
"""

from __future__ import annotations

import numpy as np
import torch

# numpy's threshold for advising huge pages (``indicate_hugepages`` in its allocator).
HUGE_BYTES = 1 << 22


def _allocate(n: int, dtype: torch.dtype, fill: str) -> torch.Tensor:
    if n * dtype.itemsize >= HUGE_BYTES:
        return torch.from_numpy(getattr(np, fill)(n, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    return getattr(torch, fill)(n, dtype=dtype)


def empty(n: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised 1-D CPU tensor of ``n`` elements."""
    return _allocate(n, dtype, "empty")


def zeros(n: int, dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled 1-D CPU tensor of ``n`` elements."""
    return _allocate(n, dtype, "zeros")


def permuted(t: torch.Tensor, shape: tuple[int, ...], axes: tuple[int, ...]) -> torch.Tensor:
    """``t`` viewed as ``shape``, its axes permuted to ``axes``, as a contiguous 1-D tensor (``t``
    itself, flattened, when the permutation keeps the order; a CUDA tensor copies through torch)."""
    if axes == tuple(sorted(axes)):
        return t.reshape(-1)
    view = t.reshape(shape).permute(*axes)
    if t.device.type != "cpu":
        return view.contiguous().reshape(-1)
    out = empty(t.numel(), t.dtype)
    out.view(view.shape).copy_(view)
    return out
