"""A materialised linear layer whose generator backward overlaps the input-gradient GEMM on a GPU.

``y = x @ W.T + b`` with ``W = generator()`` has a backward of two big GEMMs (``dW = dyᵀ x`` and
``dx = dy W``) and the generator's backward, which needs only ``dW``. Autograd computes both GEMMs in
one node and hands ``dW`` on only after ``dx`` is done, so the generator's (launch-bound) backward runs
after both. Here the weight gradient is its own node, evaluated first, and the generator runs on a side
stream; autograd runs each backward op on its forward op's stream, so the generator's backward proceeds
on the side stream while the main stream computes ``dx``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.nn import functional

_SIDE_STREAMS: dict[torch.device, Any] = {}
# SMs held back from cuBLAS while it computes dx, so the generator's kernels have somewhere to run (a big
# TF32 GEMM fills every SM). 0: none. On an H200, 8-32 SMs gained nothing consistent over 0 and cost up to
# 0.14 ms (benchmarks/results/kernels-gpu-overlap.md), so it stays a knob for other GPUs.
SM_CARVEOUT = 0


def side_stream(device: torch.device) -> Any:
    """The side stream of ``device`` that overlapped layers run their generators on (one per device).

    High priority: its small kernels are scheduled ahead of the GEMM's next blocks as SMs come free
    (up to 0.09 ms per step on an H200 over a normal-priority stream).
    """
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device, priority=-1)
    return _SIDE_STREAMS[device]


@contextlib.contextmanager
def _carveout(sms: int) -> Any:
    if sms <= 0:
        yield
        return
    kept = torch._C._get_sm_carveout_experimental()
    torch._C._set_sm_carveout_experimental(sms)
    try:
        yield
    finally:
        torch._C._set_sm_carveout_experimental(kept)


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    """The forward's autocast state, for the backward to run under (as ``torch.amp.custom_bwd`` does)."""
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _autocast(state: tuple[str, bool, torch.dtype]) -> Any:
    device_type, enabled, dtype = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


class _InputGrad(torch.autograd.Function):
    """A stride-0 stand-in of the output (its shape and dtype) whose backward turns ``dy`` into ``dx = dy w``.

    The layer's output node hands ``dy`` to it after computing the weight's gradient, so ``dx`` is
    launched in a node of its own, after ``dW``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # w with its graph: under create_graph, dx = dy w must stay differentiable in W (a gradient
        # penalty's second-order terms); its own gradient here is None, dW comes from _Linear.
        ctx.save_for_backward(w)
        ctx.amp = _autocast_state(x.device.type)
        return x.new_zeros((), dtype=dtype).expand(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:  # reached through w alone: x needs no gradient, skip the GEMM
            return None, None, None
        (w,) = ctx.saved_tensors
        with _autocast(ctx.amp), _carveout(SM_CARVEOUT if gy.is_cuda else 0):
            return gy @ w, None, None


class _Linear(torch.autograd.Function):
    """``x @ w.T + b``; its backward gives ``dW`` and ``db`` and passes ``dy`` to the ``dx`` node."""

    @staticmethod
    def forward(
        ctx: Any, dx_node: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, side: Any
    ) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.side = side
        ctx.w_dtype = w.dtype
        ctx.amp = _autocast_state(x.device.type)
        return functional.linear(x, w, bias)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor | None, Any, None]:
        (x,) = ctx.saved_tensors
        gw = gb = None
        rows = gy.reshape(-1, gy.shape[-1])
        if ctx.needs_input_grad[2]:
            with _autocast(ctx.amp):  # as autocast's linear: the product in the autocast type
                gw = rows.t() @ x.reshape(-1, x.shape[-1])
            # In the weight's type here, so the tensor the side stream reads is the one guarded below.
            gw = gw.to(ctx.w_dtype)
            if ctx.side is not None:  # read on the side stream: not to be reused before that is done
                gw.record_stream(ctx.side)
        if ctx.needs_input_grad[3]:
            gb = rows.sum(0)
        return gy, None, gw, gb, None


def overlapped_linear(x: torch.Tensor, generator: torch.nn.Module, bias: torch.Tensor | None) -> torch.Tensor:
    """``functional.linear(x, generator(), bias)`` with the generator's backward overlapping ``dx``.

    On a CUDA device the generator runs on :func:`side_stream`; elsewhere the same two nodes run in
    order (the numbers are the plain layer's either way). Autocast applies as it does to ``linear``.
    """
    from kernels.transforms import transformed

    if transformed(x, bias):  # torch.func / forward-mode AD: these nodes have no setup_context or jvp
        return functional.linear(x, generator(), bias)
    side = side_stream(x.device) if x.is_cuda else None
    if side is None:
        w = generator()
    else:
        main = torch.cuda.current_stream(x.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            w = generator()
        main.wait_stream(side)
        w.record_stream(main)  # made on the side stream, read on this one until dx is done
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        out_dtype = torch.get_autocast_dtype(device_type)
    else:
        out_dtype = torch.promote_types(x.dtype, w.dtype)
    if transformed(w):
        return functional.linear(x, w, bias)
    return _Linear.apply(_InputGrad.apply(x, w, out_dtype), x, w, bias, side)
