"""The executors' cost model, calibrated on this machine once and cached.

A step of ``flops`` multiply-adds with summed extent ``K`` costs ``flops * c(K)`` seconds, forward
plus backward, in the fused numba loop, ``flops * b(K)`` through BLAS with the scatter of its result
and the gather of the output adjoint, and ``flops * d(K)`` through BLAS reading and writing the output
in place (outputs with :attr:`kernels.steps.Step.z_strides`). ``c``, ``b`` and ``d`` are measured on
two synthetic steps (K = 8 and K = 64) and interpolated in ``log K``, and again (K = 4, 16 and 64) for
steps whose right operand outgrows the caches; the result is stored as JSON in
``$ADNTN_CACHE_DIR`` (default ``~/.cache/adntn``) and reused by every later process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# 9: big buffers are reused (kernels.memory), so the timed steps no longer fault pages in; K = 24 point.
# 10: BLAS steps as tiled numba kernels; float32 points; the out-of-cache point has 256 rows.
VERSION = 10
LARGE_Y = 1 << 18  # Yc elements beyond which the fused loop streams Yc from memory once per row
# Interpolating K = 24 between 8 and 64 picked the fused loop or BLAS by calibration noise (the 25088x4096
# TTN χ=24 root step, K = 24: fused 430 ms, BLAS 320 ms forward+backward), hence the middle point.
_POINTS = (8, 24, 64)
# With Yc out of cache both paths are bound by memory, and how much each moves per flop depends on K:
# at K = 3 (a MERA's 25088x4096 root step) the fused loop was 1.6x faster than BLAS plus its copies,
# at K = 64 BLAS is 4.7x faster, so a single large-Yc point chose BLAS for both. The crossover lies
# below K = 14 (MERA χ=14 and aTTN χ=24 root steps were faster through BLAS), hence the middle point.
_LARGE_POINTS = (4, 16, 64)
# The keys of each side's table in a calibration.
KEYS = tuple(str(k) for k in _POINTS) + tuple(f"large-{k}" for k in _LARGE_POINTS)


def cache_dir() -> Path:
    """Where adntn and the kernels keep what they measure: ``$ADNTN_CACHE_DIR``, default ``~/.cache/adntn``."""
    return Path(os.environ.get("ADNTN_CACHE_DIR") or Path.home() / ".cache" / "adntn").expanduser()


def cache_path(stem: str, version: int) -> Path:
    """The timing file ``stem`` for this format ``version``, machine architecture and thread counts.

    Each in a file of its own: processes of another version or architecture sharing the directory
    (two installs, an NFS home) would otherwise overwrite each other's measurements, and timings
    taken with the kernels on N numba threads do not price them on fewer.
    """
    import torch

    from kernels.numba_cpu import kernel_threads

    threads, kernel = torch.get_num_threads(), kernel_threads()
    tag = f"{threads}t" if kernel == threads else f"{kernel}k-{threads}t"
    return cache_dir() / f"{stem}-v{version}-{platform.machine()}-{tag}.json"


def cache_file() -> Path:
    """Where the calibration for the current thread counts is stored."""
    return cache_path("kernels-calibration", VERSION)


def best_seconds(fn: Callable[[], Any], reps: int = 5) -> float:
    """The fastest of ``reps`` timed calls of ``fn``, after one untimed call."""
    fn()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cache_header(version: int, threads: int) -> dict[str, Any]:
    """What a cached measurement holds and must match to be read: format version, thread count, machine."""
    return {"version": version, "threads": threads, "machine": platform.machine()}


def stored(path: Path, version: int, valid: Callable[[dict], bool], measure: Callable[[], dict]) -> dict[str, Any]:
    """The JSON calibration at ``path`` if it has this ``version``, torch's current thread count, this
    machine and ``valid`` accepts it; else ``measure()``, written there whole (a temporary file, renamed;
    a directory that cannot be written gets a warning, and the measurement is still returned)."""
    import torch

    header = cache_header(version, torch.get_num_threads())
    try:
        cal = json.loads(path.read_text())
        if all(cal[k] == v for k, v in header.items()) and valid(cal):
            return cal
    # RecursionError: a file nested past the parser's depth is damaged, like any other.
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        pass
    cal = measure()
    store(path, cal, stacklevel=4)
    return cal


def store(path: Path, data: dict[str, Any], stacklevel: int = 2) -> None:
    """Write ``data`` as JSON at ``path`` whole: a temporary file, renamed, so a reader or another
    writer never sees a mix. A directory that cannot be written gets a warning (the caller keeps
    its measurement; the next process measures again)."""
    # Per process and thread, so concurrent writers never share a temporary file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not store {path} ({exc}); set ADNTN_CACHE_DIR to a writable directory",
                      stacklevel=stacklevel)  # fmt: skip


def add_entry(
    path: Path,
    header: dict[str, Any],
    key: str,
    value: Any,
    read: Callable[[Path], dict[str, Any]],
    stacklevel: int = 2,
) -> dict[str, Any]:
    """Add ``key: value`` to the ``entries`` of the JSON cache at ``path`` (``read(path)``: its valid
    entries) and return them. The read and the write happen under an exclusive lock on a sidecar
    ``.lock`` file, so concurrent writers (DDP ranks, test workers) keep each other's entries."""
    import fcntl

    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # an unwritable directory: store() below says so
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        entries = {**read(path), key: value}
        store(path, {**header, "entries": entries}, stacklevel=stacklevel + 1)
        return entries
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def cached_entry(
    memo: dict[tuple[int, str], dict[str, float]],
    path: Path,
    version: int,
    key: str,
    fields: tuple[str, ...],
    measure: Callable[[], dict[str, float]] | None,
    stacklevel: int = 2,
) -> dict[str, float] | None:
    """Entry ``key`` of the JSON timing cache at ``path``: from ``memo`` (keyed by torch's thread
    count and ``key``), else from the file (same ``version``, thread count and machine; each of
    ``fields`` a positive finite float, or the entry is dropped and measured again), else
    ``measure()``, added under a lock (:func:`add_entry`). None when it is missing and ``measure`` is None."""
    import torch

    threads = torch.get_num_threads()
    if (threads, key) in memo:
        return memo[threads, key]
    header = cache_header(version, threads)

    def read(p: Path) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(p.read_text())
            if any(data[k] != v for k, v in header.items()) or not isinstance(data["entries"], dict):
                return {}
        except (OSError, ValueError, KeyError, TypeError, RecursionError):  # a damaged file: measure again
            return {}
        return {
            k: v for k, v in data["entries"].items()
            if isinstance(v, dict) and all(isinstance(v.get(f), float) and math.isfinite(v[f]) and v[f] > 0
                                           for f in fields)
        }  # fmt: skip

    entries = read(path)
    if key not in entries:
        if measure is None:
            return None
        entries = add_entry(path, header, key, measure(), read, stacklevel=stacklevel + 1)
    memo[threads, key] = entries[key]
    return entries[key]


def _time_point(k: int, m: int = 2048, n: int = 1024) -> tuple[float, float, float]:
    """Seconds per multiply-add, forward+backward, of ``X[m, k] ⊗ Y[k, n]`` in float32 (what layers
    train in): fused loop, BLAS with its scatter and gather passes, and BLAS reading and writing the
    output in place."""
    import torch

    from kernels import memory
    from kernels.executor import _CPU
    from kernels.numba_cpu import IDENTITY, run_backward, run_forward
    from kernels.steps import make_step

    rng = np.random.default_rng(0)
    st = make_step(0, 1, (0, 1), (1, 2), (0, 2), [m, k, n])  # index ids: 0 = m, 1 = k, 2 = n
    x = rng.standard_normal(m * k).astype(np.float32)
    y = rng.standard_normal(k * n).astype(np.float32)
    empty = np.empty(0, dtype=np.float32)
    xb, xm, xk = st.x_tables
    zb, zm, zn = st.z_tables
    xt, yt = torch.from_numpy(x.reshape(m, k)), torch.from_numpy(y.reshape(k, n))

    # Both paths allocate their outputs fresh, from the executor's allocator, as a real step does.
    def fused() -> None:
        z = memory.empty(m * n, torch.float32).numpy()
        run_forward(x, y, z, empty, xb, xm, xk, k, n, zb, zm, zn, st.run, IDENTITY, st.flops)
        zeros = memory.zeros(m * k, torch.float32).numpy(), memory.zeros(k * n, torch.float32).numpy()
        run_backward(x, y, z, z, empty, IDENTITY, *zeros, xb, xm, xk, k, n, zb, zm, zn, st.run, st.flops)

    # The executor's own BLAS step (tiled products, scatter and gather), so the price is what runs.
    scattered = dataclasses.replace(st, blas=True, z_strides=None)
    x_flat, y_flat = xt.reshape(-1), yt.reshape(-1)

    def blas() -> None:
        z, pre = _CPU.forward_step(scattered, x_flat, y_flat, IDENTITY, False)
        _CPU.backward_step(scattered, x_flat, y_flat, z, z, pre, IDENTITY)

    def direct() -> None:  # an output BLAS can write in place (Step.z_strides): no scatter, no gather
        z = memory.empty(m * n, torch.float32).reshape(m, n)
        torch.matmul(xt, yt, out=z)
        torch.matmul(z, yt.T), torch.matmul(xt.T, z)

    return best_seconds(fused) / st.flops, best_seconds(blas) / st.flops, best_seconds(direct) / st.flops


def measure() -> dict[str, Any]:
    """Time the fused loop and the BLAS path on two synthetic steps (a few seconds).

    The steps write 2M outputs, more than any cache holds, as the big steps of real generators do;
    both paths run at torch's current thread count, which is part of the cache key.
    """
    import torch

    # The first layer may be built under torch.device("meta") or inference mode: time real CPU data.
    with torch.device("cpu"), torch.inference_mode(False):
        return _measure()


def _measure() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {**cache_header(VERSION, torch.get_num_threads()), "numba": {}, "blas": {}, "direct": {}}
    for k in _POINTS:
        out["numba"][str(k)], out["blas"][str(k)], out["direct"][str(k)] = _time_point(k)
    # A right operand larger than any core's cache: the fused loop re-reads it per block of rows, and
    # BLAS copies it into column tiles once per step. 256 rows, as the root steps that meet such an
    # operand have hundreds: with 128 (split by single tiles at two threads) the point put BLAS behind
    # the fused loop (0.8x) while the 4096² aTTN χ=2 root step ran 1.8x faster on BLAS (24 vs 43 ms).
    for k in _LARGE_POINTS:
        key = f"large-{k}"
        out["numba"][key], out["blas"][key], out["direct"][key] = _time_point(k, m=256, n=(1 << 18) // k)
    return out


_MEMO: dict[int, Any] = {}


def calibration() -> dict[str, Any]:
    """The cached calibration for torch's current thread count, measured now if there is none."""
    import torch

    threads = torch.get_num_threads()
    if threads in _MEMO:
        return _MEMO[threads]

    def valid(cal: dict[str, Any]) -> bool:
        values = [cal[side][key] for side in ("numba", "blas", "direct") for key in KEYS]
        return all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values)

    cal = stored(cache_file(), VERSION, valid, measure)
    _MEMO[threads] = cal
    return cal


def _interp(table: dict[str, float], k: int, points: tuple[int, ...] = _POINTS, prefix: str = "") -> float:
    """Piecewise linear in ``log K`` through the measured points, constant beyond the ends."""
    k = min(max(k, points[0]), points[-1])
    j = next(j for j in range(1, len(points)) if k <= points[j])
    lo, hi = points[j - 1], points[j]
    t = (math.log(k) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return math.exp((1 - t) * math.log(table[f"{prefix}{lo}"]) + t * math.log(table[f"{prefix}{hi}"]))


def step_seconds(flops: int, k: int, *, blas: bool, y_size: int = 0, direct: bool = False) -> float:
    """Predicted forward+backward seconds of one step on this machine (``y_size``: elements of the
    canonical right operand, which decides whether it stays in cache; ``direct``: BLAS reads and
    writes the output in place, without the scatter and gather passes)."""
    cal = calibration()
    table = cal["numba" if not blas else "direct" if direct else "blas"]
    if y_size > LARGE_Y:
        return flops * _interp(table, k, _LARGE_POINTS, "large-")
    return flops * _interp(table, k)
