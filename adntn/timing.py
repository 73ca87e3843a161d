"""Predicted CPU seconds of a ``TNLinear`` training step in each mode, for ``mode="auto"``.

Planned flops alone mislead on the CPU: a streamed TTN χ=16 at 4096 rows does half the dense layer's
flops but ran 2.3x slower than materialising the weight (benchmarks/results/kernels-kron-cpu.md),
because its products have a narrow summed extent and write large intermediates. So each candidate mode
is traced once on meta tensors (shapes, no data): its forward (and backward, in the training regimes)
at a batch size, under a dispatch mode that records every matrix product and every operation that
writes memory. Their seconds come from a model of this machine fitted to timings of a fixed set of
shapes, measured once (a few seconds) and cached as JSON in ``$ADNTN_CACHE_DIR`` (default ``~/.cache/adntn``).

A matrix product ``(b, m, k, n)`` costs ``2bmkn · per_flop · (1 + dm/m)(1 + dk/k)(1 + dn/n)`` (BLAS
runs narrow operands below its peak) plus a price per element read and per element written, the
latter higher for outputs larger than the caches (fresh pages); any other operation that writes
memory costs a price per element read and written (higher past 2^20 elements written); views cost
nothing; every operation pays a dispatch overhead.

A weight the numba kernels build (``Generator.cpu_kernels``, the CPU default) is not traced: its
price is the kernels' own time, forward and forward plus backward, measured once per kernel program
on float32 copies of the cores and cached beside the model. The kernels' step model ranks the fused
loop against BLAS at one step's shape; the whole weight took 0.95-5.9x the time it sums to over the 12
generators of benchmarks/results/kernels-weight-model.md (memory-bound steps with a summed extent of 2
take longer than the K = 8 point it clamps to), too far to weigh it against streaming.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adntn.errors import AdntnError
from kernels.calibrate import best_seconds, cache_header, cache_path, cached_entry, stored
from kernels.repeat import repeat

VERSION = 3
LARGE = 1 << 22  # output elements past which a write streams to fresh memory (16 MiB in float32)
# (b, m, k, n): products like those generators' streams and weights run (narrow summed extents,
# one narrow output side, outputs in and out of cache, batched small products), and square ones.
GEMM_SHAPES = (
    (1, 262144, 2, 64), (1, 4096, 8, 64), (1, 131072, 8, 16), (1, 64, 8, 131072), (1, 262144, 8, 64),
    (1, 2097152, 8, 16), (1, 8, 16, 262144), (1, 1048576, 16, 8), (1, 4096, 64, 8), (4096, 2, 64, 64),
    (1, 131072, 64, 8), (1, 8, 64, 524288), (4096, 16, 64, 64), (1, 576, 64, 16384), (1, 65536, 64, 256),
    (1, 64, 128, 16384), (1, 262144, 128, 64), (1, 1024, 512, 8), (1, 64, 576, 65536), (1, 64, 1024, 16384),
    (1, 9, 4096, 4096), (1, 64, 16384, 128), (1, 8, 32768, 64), (1, 64, 65536, 1024), (1, 16, 262144, 8),
    (1, 64, 262144, 256), (1, 16, 1048576, 8), (1, 4, 16777216, 4), (1, 1024, 1024, 1024), (1, 512, 2048, 2048),
)  # fmt: skip
COPY_SIZES = (1 << 16, 1 << 24)  # elements of a permuting copy: in cache, and to fresh memory
_GRID = (0.0, 0.5, 2.0, 8.0, 32.0)  # candidate dm, dk, dn
# Each product's overload -> where its two factors start in args (the out= and in-place forms the
# Kronecker sum's blocked CPU route runs are products too, not memory operations).
_MM = {
    torch.ops.aten.mm.default: 0,
    torch.ops.aten.mm.out: 0,
    torch.ops.aten.bmm.default: 0,
    torch.ops.aten.bmm.out: 0,
    torch.ops.aten.addmm.default: 1,
    torch.ops.aten.addmm.out: 1,
    torch.ops.aten.addmm_.default: 1,
    torch.ops.aten.baddbmm.default: 1,
    torch.ops.aten.baddbmm.out: 1,
    torch.ops.aten.baddbmm_.default: 1,
}
# Operations that allocate without writing, or only describe memory (_unsafe_view shares its input's
# storage, though its schema does not say it is a view).
_FREE = {
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::_unsafe_view",
}  # fmt: skip


def cache_file() -> Path:
    """Where the model for torch's current thread count is stored."""
    return cache_path("layer-timing", VERSION)


@dataclass(frozen=True)
class Op:
    """One recorded operation: a matrix product ``(b, m, k, n)``, or ``(read, written)`` elements,
    standing for ``count`` identical ones (a loop traced once for all its iterations: :mod:`kernels.repeat`)."""

    kind: str  # "mm" or "mem"
    dims: tuple[int, ...]
    count: int = 1


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _MM:
            a, b = args[_MM[func]], args[_MM[func] + 1]
            if a.dim() == 2:
                self.ops.append(Op("mm", (1, a.shape[0], a.shape[1], b.shape[1]), repeat()))
            else:
                self.ops.append(Op("mm", (a.shape[0], a.shape[1], a.shape[2], b.shape[2]), repeat()))
        elif not func.is_view and func._schema.name not in _FREE:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            written = sum(o.numel() for o in outs if isinstance(o, torch.Tensor))
            read = sum(a.numel() for a in args if isinstance(a, torch.Tensor))
            if written:
                self.ops.append(Op("mem", (read, written), repeat()))
        return out


def trace(fn: Callable[[], Any]) -> list[Op]:
    """The matrix products and memory-writing operations ``fn`` dispatches (run it on meta tensors)."""
    with _Recorder() as rec:
        fn()
    return rec.ops


# ---------------------------------------------------------------- the model


def gemm_seconds(params: dict[str, float], b: int, m: int, k: int, n: int) -> float:
    """Predicted seconds of one ``(b, m, k)`` by ``(b, k, n)`` product."""
    p = params
    flops = 2 * b * m * k * n
    compute = flops * p["per_flop"] * (1 + p["dm"] / m) * (1 + p["dk"] / k) * (1 + p["dn"] / n)
    out = b * m * n
    write = p["write_large"] if out > LARGE else p["write"]
    return compute + out * write + b * (m * k + k * n) * p["read"]


def mem_seconds(params: dict[str, float], read: int, written: int) -> float:
    """Predicted seconds of an operation reading and writing that many elements."""
    return (read + written) * (params["move_large"] if written > LARGE // 4 else params["move"])


def seconds(ops: Sequence[Op], params: dict[str, float]) -> float:
    """Predicted seconds of a recorded operation list (each operation also pays torch's dispatch)."""
    work = sum(
        op.count * (gemm_seconds(params, *op.dims) if op.kind == "mm" else mem_seconds(params, *op.dims)) for op in ops
    )
    return work + sum(op.count for op in ops) * params["per_op"]


def fit(gemms: Sequence[tuple[int, int, int, int, float]], copies: Sequence[tuple[int, float]]) -> dict[str, float]:
    """Model parameters from timed products ``(b, m, k, n, seconds)`` and permuting copies ``(elements, seconds)``.

    The narrowness constants come from a small grid; for each choice the linear prices are a
    least-squares fit in relative error (kept positive), and the choice with the smallest log error wins.
    """
    dims = np.array([g[:4] for g in gemms], dtype=float)
    t = np.array([g[4] for g in gemms], dtype=float)
    b, m, k, n = dims.T
    large = b * m * n > LARGE
    best: tuple[float, dict[str, float]] | None = None
    for dm, dk, dn in itertools.product(_GRID, repeat=3):
        cols = np.stack(
            [
                2 * b * m * k * n * (1 + dm / m) * (1 + dk / k) * (1 + dn / n),
                np.where(large, 0.0, b * m * n),
                np.where(large, b * m * n, 0.0),
                b * (m * k + k * n),
            ],
            axis=1,
        )
        coef = _positive_lstsq(cols / t[:, None], np.ones_like(t))
        err = float(np.sum(np.log((cols @ coef) / t) ** 2))
        if best is None or err < best[0]:
            names = ("per_flop", "write", "write_large", "read")
            best = (err, {"dm": dm, "dk": dk, "dn": dn, **dict(zip(names, map(float, coef), strict=True))})
    assert best is not None
    params = best[1]
    (small, t_small), (big, t_big) = sorted(copies)
    params["move"] = t_small / (2 * small)
    params["move_large"] = t_big / (2 * big)
    return params


def _positive_lstsq(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient at least a tiny positive floor (drop, refit, repeat)."""
    active = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
        if (sol > 0).all():
            coef[active] = sol
            break
        active = [j for j, s in zip(active, sol, strict=True) if s > 0]
    return np.maximum(coef, 1e-18)


# ---------------------------------------------------------------- calibration


def measure() -> dict[str, Any]:
    """Time the fixed shapes in float32 at torch's current thread count and fit the model (seconds)."""
    with torch.inference_mode(False), torch.enable_grad():  # whatever mode the first layer is built in
        return _measure()


def _measure() -> dict[str, Any]:
    # Explicit device and dtype: a model built under torch.device("meta") or another default dtype
    # must not time (and cache) something else.
    cpu = {"device": "cpu", "dtype": torch.float32}
    gen = torch.Generator().manual_seed(0)
    gemms = []
    for b, m, k, n in GEMM_SHAPES:
        x, y = torch.randn(b, m, k, generator=gen, **cpu), torch.randn(b, k, n, generator=gen, **cpu)
        gemms.append((b, m, k, n, best_seconds(functools.partial(torch.bmm, x, y), reps=2)))
    # Dispatch, autograd and Python bookkeeping, which decide at a few rows: a training step of tiny
    # einsums (as the plans' programs run), its time over the operations it dispatches.
    tiny = [torch.ones(2, 2, 2, requires_grad=True, **cpu) for _ in range(8)]

    def chain() -> None:
        z = tiny[0]
        for t in tiny[1:]:
            z = torch.tanh(torch.einsum("abc,cbd->adb", z, t)).reshape(2, 2, 2)
        z.sum().backward()

    def chains() -> None:
        for _ in range(50):
            chain()

    per_op = best_seconds(chains, reps=2) / 50 / len(trace(chain))
    copies = []
    for size in COPY_SIZES:
        side = math.isqrt(size)
        x = torch.randn(side, side, generator=gen, **cpu)
        copies.append((size, best_seconds(x.t().contiguous, reps=2)))
    return {
        **cache_header(VERSION, torch.get_num_threads()),
        "params": {**fit(gemms, copies), "per_op": per_op}, "gemms": gemms, "copies": copies,
    }  # fmt: skip


_MEMO: dict[int, dict[str, float]] = {}


def calibration() -> dict[str, float]:
    """The cached model parameters for torch's current thread count, measured now if there are none."""
    threads = torch.get_num_threads()
    if threads in _MEMO:
        return _MEMO[threads]

    def valid(cal: dict[str, Any]) -> bool:
        keys = ("per_flop", "dm", "dk", "dn", "write", "write_large", "read", "move", "move_large", "per_op")
        values = [cal["params"][key] for key in keys]
        # A CPU core does well under 10^14 flops a second: a smaller price was not timed on real data.
        return all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in values) and values[0] > 1e-14

    cal = stored(cache_file(), VERSION, valid, measure)
    _MEMO[threads] = cal["params"]
    return cal["params"]


# ---------------------------------------------------------------- weights the kernels build

# 2: steps keyed by kernels.steps.signature (their offset tables included).
WEIGHT_VERSION = 2


def weight_cache_file() -> Path:
    """Where the kernels' measured weight times for torch's current thread count are stored."""
    return cache_path("kernel-weights", WEIGHT_VERSION)


def _program_key(generator: Any) -> str:
    """What the kernels' time depends on: every step's shapes, layouts and path (fused or BLAS), the
    activations, and the threads they may use."""
    from kernels.executor import compiled_steps
    from kernels.numba_cpu import kernel_threads
    from kernels.steps import signature

    groups = [(g.code, g.input_sizes, [(s.left, s.right, signature(s)) for s in g.steps])
              for g in compiled_steps(generator)]  # fmt: skip
    text = repr((generator.out_padded, generator.in_padded, kernel_threads(), groups))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _measure_weight(generator: Any) -> dict[str, float]:
    from kernels.executor import numba_weight

    # The cores' values where they have data (the magnitudes training sees), else seeded normals; in
    # float32 on the CPU whatever the layer's dtype and device, as the rest of the model prices.
    gen = torch.Generator().manual_seed(0)
    cores = [
        (p.detach().to("cpu", torch.float32, copy=True) if p.device.type == "cpu" and p.is_floating_point()
         else torch.randn(p.shape, generator=gen, dtype=torch.float32)).requires_grad_()
        for p in generator.cores.values()
    ]  # fmt: skip
    grad = torch.ones(generator.out_padded, generator.in_padded, dtype=torch.float32)

    def forward() -> None:
        with torch.no_grad():
            numba_weight(generator, None, cores)

    def backward() -> None:
        numba_weight(generator, None, cores).backward(grad)
        for c in cores:
            c.grad = None

    return {"forward": best_seconds(forward, reps=3), "backward": best_seconds(backward, reps=3)}


_WEIGHTS: dict[tuple[int, str], dict[str, float]] = {}


def kernel_weight_seconds(generator: Any) -> dict[str, float]:
    """Seconds the numba kernels take to build ``generator``'s weight on this machine at torch's
    current thread count: ``"forward"`` (no backward) and ``"backward"`` (forward, then backward to
    the cores), float32. Measured once per kernel program (a few calls), then cached in
    :func:`weight_cache_file`, one entry per program (entries that cannot be read are measured again).
    """

    def measure() -> dict[str, float]:
        # Whatever the caller's context (a layer built under torch.device("meta"), no_grad or
        # inference_mode): time real CPU data with autograd on.
        with torch.device("cpu"), torch.inference_mode(False), torch.enable_grad():
            return _measure_weight(generator)

    fields = ("forward", "backward")
    times = cached_entry(_WEIGHTS, weight_cache_file(), WEIGHT_VERSION, _program_key(generator), fields, measure, 3)
    assert times is not None  # measured when not cached
    return times


# ---------------------------------------------------------------- layers


REGIMES = ("forward", "weights", "input")  # no backward; backward to the cores; to the cores and x


def _step(generator: Any, mode: str, rows: int, regime: str) -> Callable[[], Any]:
    """One step of ``mode`` in ``regime`` on meta copies of ``generator``'s cores, in their dtype
    (the bias left out: every mode adds it). A weight the kernels build is a meta leaf here: its
    own time is :func:`kernel_weight_seconds`."""
    from torch.func import functional_call

    if regime not in REGIMES:
        raise AdntnError(f"unknown regime {regime!r}; choose one of {', '.join(REGIMES)}")
    backward = regime != "forward"
    dtype = next(generator.parameters()).dtype

    def run() -> None:
        # Whatever the caller's grad mode (a model built under no_grad or inference_mode), the step
        # records what it runs in training or, forward only, in inference.
        with torch.inference_mode(False), torch.set_grad_enabled(backward):
            params = {
                f"generator.{name}": torch.empty_like(p, device="meta").requires_grad_(backward)
                for name, p in generator.named_parameters()
            }
            x = torch.empty(rows, generator.in_features, device="meta", dtype=dtype, requires_grad=regime == "input")
            if mode == "materialize" and generator.cpu_kernels():
                w = torch.empty(generator.out_features, generator.in_features, device="meta", dtype=dtype)
                y = torch.nn.functional.linear(x, w.requires_grad_(backward))
            else:
                y = functional_call(_Probe(generator, mode), params, (x,))
            if backward:
                y.backward(torch.empty_like(y))

    return run


class _Probe(torch.nn.Module):
    """One mode's product, as a module, so ``functional_call`` swaps the generator's cores for meta ones."""

    def __init__(self, generator: Any, mode: str) -> None:
        super().__init__()
        self.generator = generator
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gen = self.generator
        if self.mode == "stream":
            return gen.stream(x)
        if self.mode == "kron":
            return gen.stream_kron(x, backend="torch")
        # The torch programs (a weight the kernels build is priced apart, by kernel_weight_seconds).
        w = gen.padded_weight()[: gen.out_features, : gen.in_features]
        return torch.nn.functional.linear(x, w)


def mode_seconds(
    generator: Any, mode: str, rows: int, regime: str = "input", params: dict[str, float] | None = None
) -> float:
    """Predicted CPU seconds of one step of ``rows`` samples in ``mode`` (``"materialize"``, ``"stream"`` or
    ``"kron"``) and ``regime``: ``"forward"`` (no backward), ``"weights"`` (backward to the cores, as
    an input layer's) or ``"input"`` (to the cores and the input, as a hidden layer's)."""
    traced = seconds(trace(_step(generator, mode, rows, regime)), params or calibration())
    if mode == "materialize" and generator.cpu_kernels():
        built = kernel_weight_seconds(generator)
        return traced + built["forward" if regime == "forward" else "backward"]
    return traced
