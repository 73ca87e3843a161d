"""Near-ties between the fused loop and BLAS, settled by timing the step itself.

The calibrated model (:mod:`kernels.calibrate`) prices a step from a few synthetic shapes per path.
Close to the crossover that is not enough: at two threads the tiled BLAS points' price varies by up
to 1.5x between processes (the fused loop's by under 10%), and one calibration priced the 25088x4096
MERA χ=3 root step (K = 3, 128 rows, 2.4M-element right operand) at fused 2.18e-10 against BLAS
2.24e-10 per multiply-add. It took the fused loop, and the generator ran in 163 ms where BLAS gives
97-100 ms. So a step whose two prices lie within :data:`TIE` of each other, and that is big enough
for the pick to matter, is timed both ways on data of its own shapes, once per machine and thread
count (the way cuBLAS and Triton autotune). The times are kept as JSON in ``$ADNTN_CACHE_DIR``
(default ``~/.cache/adntn``) and reused by every later process.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernels.calibrate import best_seconds, store
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
    root = os.environ.get("ADNTN_CACHE_DIR") or str(Path.home() / ".cache" / "adntn")
    return Path(root) / f"kernel-steps-{torch.get_num_threads()}t.json"


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
    from kernels.numba_cpu import threads

    n = threads()
    key = hashlib.sha256(repr((signature(replace(step, blas=False)), last, code, keep_pre, n)).encode()).hexdigest()
    memo = (torch.get_num_threads(), key[:24])
    if memo in _MEMO:
        return _MEMO[memo]
    path = cache_file()
    entries = _read(path)
    if memo[1] not in entries:
        if not measure:
            return None
        # Whatever the caller's context (a layer built under torch.device("meta") or inference mode):
        # time real CPU data.
        with torch.device("cpu"), torch.inference_mode(False), torch.no_grad():
            measured = {side: _time(step, last, code, keep_pre, side == "blas") for side in ("fused", "blas")}
        entries = {**_read(path), memo[1]: measured}  # re-read: another process may have added some
        data = {"version": VERSION, "threads": torch.get_num_threads(), "machine": platform.machine(),
                "entries": entries}  # fmt: skip
        store(path, data, stacklevel=4)
    _MEMO[memo] = entries[memo[1]]
    return entries[memo[1]]


def _read(path: Path) -> dict[str, dict[str, float]]:
    """The readable entries of the cache at ``path``; an unreadable entry is dropped (measured again)."""
    try:
        data = json.loads(path.read_text())
        if data["version"] != VERSION or data["threads"] != torch.get_num_threads():
            return {}
        entries = data["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {
        k: v for k, v in entries.items()
        if isinstance(v, dict) and all(isinstance(v.get(s), float) and v[s] > 0 for s in ("fused", "blas"))
    }  # fmt: skip


def _time(step: Step, last: bool, code: int, keep_pre: bool, blas: bool) -> float:
    """Best forward+backward seconds of ``step`` on one path, as the executor runs it."""
    from kernels.executor import _CPU, _canonical
    from kernels.numba_cpu import IDENTITY

    st = replace(step, blas=blas)
    rng = np.random.default_rng(0)

    def data(n: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(n, dtype=np.float32))

    x = data(int(np.prod(st.x_in_shape)))
    y = data(int(np.prod(st.y_in_shape)))
    g = data(st.out_size)
    code = code if last else IDENTITY
    keep_pre = keep_pre and last

    def run() -> Any:
        yc = _canonical(y, st)
        z, pre = _CPU.forward_step(st, x, yc, code, keep_pre)
        out, pre_k = (z, pre) if last else (g, pre[:0])
        return _CPU.backward_step(st, x, yc, g, out, pre_k, code)

    return best_seconds(run, reps=3)
