"""Near-ties between the fused loop and BLAS, settled by timing the step itself.

The calibrated model (:mod:`kernels.calibrate`) prices a step from a few synthetic shapes per path.
Close to the crossover that is not enough: at two threads the tiled BLAS points' price varies by up
to 1.5x between processes (the fused loop's by under 10%), and one calibration priced the 25088x4096
MERA χ=3 root step (K = 3, 128 rows, 2.4M-element right operand) at fused 2.18e-10 against BLAS
2.24e-10 per multiply-add. It took the fused loop, and the generator ran in 163 ms where BLAS gives
97-100 ms. So a step whose two prices lie within :data:`TIE` of each other, and that is big enough
for the pick to matter, is timed both ways on data of its own shapes, once per machine and thread
count (autotuning, kept across processes). The times are kept as JSON in ``$ADNTN_CACHE_DIR``
(default ``~/.cache/adntn``) and reused by every later process.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernels.calibrate import cache_path, cached_entry
from kernels.steps import Step, signature

VERSION = 1
# Prices this close are within the calibration's noise at two threads (see the module docstring).
TIE = 1.5
# Predicted seconds (forward+backward) below which a near-tie is left to the model: a wrong pick
# costs at most TIE - 1 of that, and timing both paths costs about ten times it.
MIN_SECONDS = 1e-3

_MEMO: dict[tuple[int, str], dict[str, float]] = {}


def cache_file() -> Path:
    """Where the step timings for torch's current thread count are stored."""
    return cache_path("kernel-steps", VERSION)


def is_tie(prices: tuple[float, float]) -> bool:
    """Whether BLAS and fused-loop prices (seconds) are too close, and too large, to trust the model."""
    lo, hi = sorted(prices)
    return lo >= MIN_SECONDS and hi <= TIE * lo


def blas_is_faster(step: Step, last: bool, code: int, keep_pre: bool) -> bool:
    """Whether ``step`` (its group's ``last`` step or not, activation ``code``, keeping the
    pre-activation when ``keep_pre``) runs forward+backward faster through BLAS than through the
    fused loop on this machine, timed on random float32 data once and cached."""
    times = step_times(step, last, code, keep_pre)
    assert times is not None  # measured when not cached
    return times["blas"] < times["fused"]


def step_times(step: Step, last: bool, code: int, keep_pre: bool, measure: bool = True) -> dict[str, float] | None:
    """Forward+backward seconds of ``step`` through each path (``"fused"``, ``"blas"``), from the
    cache or measured now (``measure=False``: None when not cached)."""
    from kernels.numba_cpu import IDENTITY, kernel_threads

    # Only a group's last step applies the activation: inner steps share one entry whatever it is.
    code, keep_pre = (code, keep_pre) if last else (IDENTITY, False)
    text = repr((signature(replace(step, blas=False)), last, code, keep_pre, kernel_threads()))
    key = hashlib.sha256(text.encode()).hexdigest()[:24]

    def timed() -> dict[str, float]:
        # Whatever the caller's context (a layer built under torch.device("meta") or inference mode):
        # time real CPU data.
        with torch.device("cpu"), torch.inference_mode(False), torch.no_grad():
            return _time(step, last, code, keep_pre)

    return cached_entry(_MEMO, cache_file(), VERSION, key, ("fused", "blas"), timed if measure else None, 3)


def _time(step: Step, last: bool, code: int, keep_pre: bool, reps: int = 3) -> dict[str, float]:
    """Best forward+backward seconds of ``step`` on each path, as the executor runs it. The paths take
    turns, so a change in the machine's load during the timing reaches both."""
    from kernels.executor import _CPU, _canonical

    rng = np.random.default_rng(0)

    def data(n: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(n, dtype=np.float32))

    x = data(int(np.prod(step.x_in_shape)))
    y = data(int(np.prod(step.y_in_shape)))
    g = data(step.out_size)

    def run(st: Step) -> Any:
        yc = _canonical(y, st)
        z, pre = _CPU.forward_step(st, x, yc, code, keep_pre)
        out, pre_k = (z, pre) if last else (g, pre[:0])
        return _CPU.backward_step(st, x, yc, g, out, pre_k, code)

    paths = {"fused": replace(step, blas=False), "blas": replace(step, blas=True)}
    best = dict.fromkeys(paths, math.inf)
    for st in paths.values():  # warm: compile, fault the buffers in
        run(st)
    for _ in range(reps):
        for name, st in paths.items():
            t = time.perf_counter()
            run(st)
            best[name] = min(best[name], time.perf_counter() - t)
    return best
