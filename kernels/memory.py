"""Host buffers for the CPU kernels.

A fresh multi-megabyte buffer is paid for in page faults on first touch: on the benchmark machine
torch's allocator (4 KiB pages) takes ~45 ms to fault in a 64 MiB weight, 3.7x the ~12 ms of the same
buffer from numpy, which advises transparent huge pages for blocks of 4 MiB and more. Big buffers
therefore come from numpy and are shared with torch without a copy; small ones stay with torch's
allocator, whose heap reuses them.

Even huge pages are zeroed by the kernel on first touch (~7 ms for 64 MiB here), and a training loop
asks for the same big buffers every step, so freed big buffers are kept, like torch's CUDA caching
allocator does, up to :data:`CACHE_BYTES` of free ones (trimmed whenever a new buffer is made;
:func:`empty_cache` releases them). A buffer is free once
no tensor, view or array refers to it any more, which CPython's reference count tells exactly.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import torch

# numpy's threshold for advising huge pages (``indicate_hugepages`` in its allocator).
HUGE_BYTES = 1 << 22


# Bytes of free big buffers kept for reuse (0: none kept).
CACHE_BYTES = 1 << 30

_LOCK = threading.Lock()
_BUFFERS: list[np.ndarray] = []  # every cached buffer, in use or free, oldest first


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork would never be released in the child.
    global _LOCK
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _refs(buffers: list[np.ndarray], i: int) -> int:
    return sys.getrefcount(buffers[i])


# What _refs counts for a buffer only the list holds, measured rather than assumed (it varies with
# the Python version).
_FREE_REFS = _refs([np.empty(0)], 0)


def _is_free(i: int) -> bool:
    """Whether ``_BUFFERS[i]`` is referred to by nothing but the cache (under ``_LOCK``)."""
    return _refs(_BUFFERS, i) <= _FREE_REFS


def _free_bytes() -> int:
    """Bytes of the cached buffers nothing else refers to (under ``_LOCK``)."""
    return sum(_BUFFERS[i].nbytes for i in range(len(_BUFFERS)) if _is_free(i))


def _fits(arr: np.ndarray, n: int, dtype: np.dtype) -> bool:
    return arr.size == n and arr.dtype == dtype


def _allocate(n: int, dtype: torch.dtype, fill: str) -> torch.Tensor:
    if n * dtype.itemsize < HUGE_BYTES:
        return getattr(torch, fill)(n, dtype=dtype)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    with _LOCK:
        # By index: a name bound to a buffer would count as a reference to it.
        hit = next((i for i in range(len(_BUFFERS)) if _fits(_BUFFERS[i], n, np_dtype) and _is_free(i)), None)
        if hit is not None:
            out = torch.from_numpy(_BUFFERS[hit])
        else:
            arr = np.empty(n, dtype=np_dtype)
            out = torch.from_numpy(arr)
            if arr.nbytes <= CACHE_BYTES:
                _BUFFERS.append(arr)
            del arr
            _trim()
    if fill == "zeros":
        out.zero_()
    return out


def _trim() -> None:
    """Drop the oldest free buffers until the free ones fit in :data:`CACHE_BYTES` (under ``_LOCK``)."""
    free = _free_bytes()
    i = 0
    while free > CACHE_BYTES and i < len(_BUFFERS):
        if _is_free(i):
            free -= _BUFFERS[i].nbytes
            del _BUFFERS[i]
        else:
            i += 1


def cached_bytes() -> tuple[int, int]:
    """``(in use, free)`` bytes of the big buffers this module keeps."""
    with _LOCK:
        free = _free_bytes()
        return sum(a.nbytes for a in _BUFFERS) - free, free


def empty_cache() -> None:
    """Release the free cached buffers (those still in use stay until they are freed)."""
    with _LOCK:
        _BUFFERS[:] = [_BUFFERS[i] for i in range(len(_BUFFERS)) if not _is_free(i)]


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
