"""Executors: run a generator's planned groups forward and backward.

``torch`` runs each group's compiled einsum program (the reference). ``numba`` runs every pairwise
step as one fused CPU kernel (:mod:`kernels.numba_cpu`) inside a ``torch.autograd.Function`` whose
backward is the adjoint of each step (the environment contractions of ``docs/generators.md``
evaluated along the same plan). ``auto`` picks by a calibrated cost model
(:mod:`kernels.calibrate`). Per CPU step the model chooses the fused loop or BLAS; a near tie is
timed on the step itself (:mod:`kernels.tune`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kernels import memory, tune
from kernels.calibrate import step_seconds
from kernels.errors import KernelsError
from kernels.steps import Step, make_step
from kernels.transforms import batched_grad, transformed

if TYPE_CHECKING:
    from adntn.generator import Generator

EXECUTORS = ("torch", "numba", "cuda", "auto")


@dataclass(frozen=True)
class GroupSteps:
    """A group's pairwise steps as offset tables.

    Attributes:
        n_inputs: Operands of the group network.
        input_sizes: Elements of each operand.
        steps: The steps in order; the last writes the output in the network's output order.
        code: The activation code (:data:`kernels.numba_cpu.CODES`).
        keep_pre: Whether the pre-activation must be kept for the backward (GELU).
    """

    n_inputs: int
    input_sizes: tuple[int, ...]
    steps: tuple[Step, ...]
    code: int
    keep_pre: bool


# An intermediate is written in its consumer's layout only if its own output runs stay this long.
RUN_KEEP = 32
# Elements of one tile of a BLAS step's product (rows x columns): a tile is computed by one GEMM and
# scattered into (or gathered from) the output while it is still in the core's L2, and no
# output-sized temporary is faulted in (MERA χ=14's 411 MB root step).
TILE_ELEMENTS = 1 << 15
# Widest column tile: wider output rows leave too few rows per tile for the GEMM.
TILE_MAX_WIDTH = 512
# Yc elements past a last-level cache (32 MiB of float32: this machine's L3). The fused loop reads Yc
# once per output row, so past this it streams rows x |Yc| elements from memory, where BLAS reads Yc
# once; the calibrated points (Yc of 2^18 elements, in L3) cannot see that. The 25088x4096 aTTN χ=24
# root step (16 rows, |Yc| = 103M) took ~860 ms fused at two threads against 163 ms through BLAS, and a
# calibration that priced the fused loop cheaper at K = 16 sent it there (generator 996 against 282 ms).
HUGE_Y = 1 << 23


def _best_form(a: int, b: int, legs: dict, out: tuple[int, ...], sizes: Any) -> Step:
    """Either operand may be the one read in place: the form with the longest contiguous output
    runs, then the longest inner loops."""
    forms = [make_step(a, b, legs[a], legs[b], out, sizes), make_step(b, a, legs[b], legs[a], out, sizes)]
    return max(forms, key=lambda s: (s.run, s.bkn[2], -s.bkn[1]))


def _wanted_layouts(
    n_inputs: int, path: list, costs: Any, legs: dict, final: tuple[int, ...], sizes: Any
) -> dict[int, tuple[int, ...]]:
    """The layout each intermediate's consumer reads without a copy: ``(b, k, n)`` for the operand
    it transposes, ``(b, m, k)`` for the one it reads in place. Walks the path from the output back,
    so a consumer's own layout is known before its operands' are chosen."""
    default = dict(legs)
    for st in costs:
        default[st.result] = tuple(st.legs_out)
    want: dict[int, tuple[int, ...]] = {}
    for k in range(len(costs) - 1, -1, -1):
        (a, b), st = path[k], costs[k]
        out = final if k == len(costs) - 1 else want.get(st.result, default[st.result])
        step = _best_form(a, b, default, out, sizes)
        # The step's canonical axis orders are exactly those layouts.
        if step.right >= n_inputs:
            want[step.right] = tuple(default[step.right][i] for i in step.y_axes)
        if step.left >= n_inputs:
            want[step.left] = tuple(default[step.left][i] for i in step.x_axes)
    return want


def group_steps(group: Any, blas: bool | None = None) -> GroupSteps:
    """Offset-table steps for one generator group.

    ``blas`` forces every step onto BLAS (``True``) or the fused loop (``False``); ``None`` lets
    the calibrated cost model choose per step.

    Raises:
        KernelsError: If the group cannot run in these kernels (a callable activation, a diagonal,
            or a single operand).
    """
    from kernels.numba_cpu import CODES, GELU
    from tnplan.cost import leaf_legs, score_path

    act = group.activation
    if not isinstance(act, str) or act not in CODES:
        raise KernelsError(f"activation {act!r} has no fused kernel; use executor='torch'")
    net = group.network
    if [tuple(t) for t in leaf_legs(net)] != [tuple(t) for t in net.int_inputs]:
        raise KernelsError("a group with repeated or dangling indices needs executor='torch'")
    if net.num_tensors < 2:
        raise KernelsError("a single-operand group needs executor='torch'")
    sizes = net.int_sizes
    legs: dict[int, tuple[int, ...]] = {k: tuple(t) for k, t in enumerate(net.int_inputs)}
    final = tuple(net.label_ids[lab] for lab in net.output)  # int_output is a set: take the order here
    costs = score_path(net, list(group.ssa_path))
    want = _wanted_layouts(net.num_tensors, list(group.ssa_path), costs.steps, legs, final, sizes)
    steps = []
    for k, ((a, b), st) in enumerate(zip(group.ssa_path, costs.steps, strict=True)):
        last = k == len(costs.steps) - 1
        out = final if last else tuple(st.legs_out)
        step = _best_form(a, b, legs, out, sizes)
        if not last and st.result in want:
            # Writing the layout the consumer reads saves it a transposing copy (and its adjoint
            # one), unless it costs this step its contiguous output runs.
            other = _best_form(a, b, legs, want[st.result], sizes)
            if other.run >= min(step.run, RUN_KEEP):
                out, step = want[st.result], other
        # A GEMM-shaped step (long summed extent) belongs to BLAS; the calibrated model decides.
        use = blas
        if use is None:
            y_size = math.prod(step.bkn)
            # flops > |Yc|: more than one output row per Yc batch, each streaming Yc through the fused loop.
            streams_y = y_size > HUGE_Y and step.flops > y_size
            prices = (step_cost(step, last, CODES[act], True), step_cost(step, last, CODES[act], False))
            if streams_y:
                use = True
            elif tune.is_tie(prices):  # within the model's noise: time the step itself (kernels.tune)
                use = tune.blas_is_faster(step, last, CODES[act], CODES[act] == GELU)
            else:
                use = prices[0] < prices[1]
        if use:
            step = replace(step, blas=True)
        steps.append(step)
        legs[st.result] = out
    input_sizes = tuple(int(np.prod([sizes[i] for i in t])) for t in net.int_inputs)
    return GroupSteps(net.num_tensors, input_sizes, tuple(steps), CODES[act], CODES[act] == GELU)


def step_cost(step: Step, last: bool, code: int, blas: bool) -> float:
    """Predicted forward+backward seconds of ``step`` (its group's ``last`` step or not, activation
    ``code``) through BLAS or the fused loop, by the calibrated model (:func:`kernels.calibrate.step_seconds`)."""
    from kernels.numba_cpu import GELU, IDENTITY

    _, kk, _ = step.bkn
    # BLAS works on the output in place when it is strided blocks and no σ' must be fused.
    direct = blas and step.z_strides is not None and (not last or code in (IDENTITY, GELU))
    return step_seconds(step.flops, kk, blas=blas, y_size=math.prod(step.bkn), direct=direct)


def compiled_steps(generator: Generator, blas: bool | None = None) -> list[GroupSteps]:
    """The generator's groups as offset-table steps, built once per ``blas`` mode and kept on the generator."""
    memo = generator.__dict__.setdefault("_kernel_steps", {})
    if blas not in memo:
        memo[blas] = [group_steps(g, blas) for g in generator.groups]
    return memo[blas]


def _gather(src: torch.Tensor, op: Any, size: int) -> torch.Tensor:
    if size == 1:
        return src
    if isinstance(op.index, tuple):
        return src[list(op.index)]
    return src[op.index]


def _scatter(dst: torch.Tensor, op: Any, size: int, value: torch.Tensor, out_shape: tuple[int, ...]) -> None:
    """Add an operand's adjoint back into its source group's output adjoint."""
    if size == 1:
        dst += value.reshape(out_shape)
    elif isinstance(op.index, tuple):
        value = value.reshape(-1, *out_shape)
        for k, i in enumerate(op.index):
            dst[i] += value[k]
    elif isinstance(op.index, slice):
        dst[op.index] += value.reshape(-1, *out_shape)
    else:
        dst[op.index] += value.reshape(out_shape)


def _canonical(y: torch.Tensor, st: Step) -> torch.Tensor:
    return memory.permuted(y, st.y_in_shape, st.y_axes)


class _CPU:
    """Steps on the CPU: the fused numba loops, or BLAS (torch's, honouring its thread count)."""

    @staticmethod
    def forward_step(st: Step, x: torch.Tensor, yc: torch.Tensor, code: int, keep_pre: bool) -> tuple:
        from kernels.numba_cpu import GELU, IDENTITY, TANH, run_blas_forward, run_forward

        # tanh and GELU are libm calls per element in numba (~30 ns each, 7x torch's vectorised
        # tanh): the kernel writes the pre-activation and torch applies them in one pass.
        after, code = (code, IDENTITY) if code in (TANH, GELU) else (IDENTITY, code)
        z = memory.empty(st.out_size, x.dtype)
        pre = memory.empty(st.out_size if keep_pre and after == IDENTITY else 0, x.dtype)
        bb, kk, nn = st.bkn
        if st.blas and st.z_strides is not None and code == IDENTITY and not pre.numel():
            # Z is a strided (q, M, run) array: BLAS writes it in place, with no scatter pass.
            xc = _x_canonical(st, x)[0]
            zv = _z_blocks(st, z)
            torch.bmm(xc.expand(zv.shape[0], -1, -1), _y_blocks(st, yc), out=zv)
        elif st.blas:
            # One numba kernel per step: per tile a GEMM (single-threaded BLAS on each of numba's
            # threads) and the scatter, so torch's and numba's thread pools never take turns within it.
            tiles, block = _step_tiles(st)
            run_blas_forward(
                _x_canonical(st, x).contiguous().numpy(), yc.reshape(bb, kk, nn).numpy(), z.numpy(), pre.numpy(),
                *st.z_tables, code, tiles, block, st.flops,
            )  # fmt: skip
        else:
            run_forward(
                x.numpy(), yc.numpy(), z.numpy(), pre.numpy(), *st.x_tables, kk, nn, *st.z_tables, st.run, code,
                st.flops,
            )  # fmt: skip
        if after == TANH:
            torch.tanh_(z)
        elif after == GELU:
            pre, z = z, memory.empty(st.out_size, x.dtype)
            torch.ops.aten.gelu.out(pre, out=z)
        return z, pre

    @staticmethod
    def backward_step(
        st: Step, x: torch.Tensor, yc: torch.Tensor, g: torch.Tensor, out: torch.Tensor, pre: torch.Tensor, code: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from kernels.numba_cpu import GELU, IDENTITY, run_backward, run_blas_backward

        if code == GELU:  # σ' by torch, as in the forward
            g_act = memory.empty(g.numel(), g.dtype)
            torch.ops.aten.gelu_backward.grad_input(g, pre, grad_input=g_act)
            g, code = g_act, IDENTITY
        bb, kk, nn = st.bkn
        if st.blas:
            inverse = tuple(int(a) for a in np.argsort(st.x_axes))
        if st.blas and st.z_strides is not None and code == IDENTITY:
            # Ḡ read in place as (q, M, run) blocks: X̄c = Σ_o Ḡ_o Yc_oᵀ, Ȳc_o = Xcᵀ Ḡ_o.
            gv = _z_blocks(st, g)
            xc_bar = torch.bmm(gv, _y_blocks(st, yc).transpose(1, 2)).sum(0)
            xc = _x_canonical(st, x)[0]
            yc_bar = memory.empty(yc.numel(), g.dtype)
            torch.bmm(xc.t().expand(gv.shape[0], -1, -1), gv, out=_y_blocks(st, yc_bar))
            return memory.permuted(xc_bar, st.x_shape, inverse), yc_bar
        if st.blas:
            xc = _x_canonical(st, x).contiguous()
            xc_bar = memory.empty(x.numel(), g.dtype).reshape(xc.shape)  # every row is written
            yc_bar = memory.empty(yc.numel(), g.dtype)
            tiles, block = _step_tiles(st)
            run_blas_backward(
                xc.numpy(), yc.reshape(bb, kk, nn).numpy(), g.numpy(), out.numpy(), pre.numpy(), code,
                xc_bar.numpy(), yc_bar.reshape(bb, kk, nn).numpy(), *st.z_tables, tiles, block, st.flops,
            )  # fmt: skip
            return memory.permuted(xc_bar, st.x_shape, inverse), yc_bar
        x_bar = memory.zeros(x.numel(), g.dtype)
        yc_bar = memory.zeros(yc.numel(), g.dtype)
        run_backward(
            x.numpy(), yc.numpy(), g.numpy(), out.numpy(), pre.numpy(), code, x_bar.numpy(), yc_bar.numpy(),
            *st.x_tables, kk, nn, *st.z_tables, st.run, st.flops,
        )  # fmt: skip
        return x_bar, yc_bar


@functools.cache
def _tiles(nn: int, run: int, outer: int, rows: int) -> tuple[np.ndarray, int]:
    """The column tiles (one row of fields :data:`kernels.numba_cpu.T_LO`... each) and rows per tile of a BLAS
    step whose ``rows x nn`` outputs (per batch) are written as ``outer`` runs of ``run`` per row.

    Columns come in whole runs, or pieces of one long run, up to :data:`TILE_MAX_WIDTH` wide; rows
    fill the rest of :data:`TILE_ELEMENTS`.
    """
    width = min(nn, TILE_MAX_WIDTH)
    if width >= run:  # whole runs per tile
        per = width // run
        spans = [(o, min(outer, o + per), 0, run) for o in range(0, outer, per)]
    else:  # one run is too long: split it
        spans = [(o, o + 1, r, min(width, run - r)) for o in range(outer) for r in range(0, run, width)]
    table = np.array([(lo, hi, r0, n, lo * run + r0, (hi - lo) * n) for lo, hi, r0, n in spans], dtype=np.int64)
    table.flags.writeable = False  # shared by every call
    widest = int(table[:, 5].max())
    return table, max(1, min(rows, TILE_ELEMENTS // widest))


def _step_tiles(st: Step) -> tuple[np.ndarray, int]:
    """:func:`_tiles` of a BLAS step."""
    _, zm, zn = st.z_tables
    return _tiles(st.bkn[2], st.run, zn.size, zm.size)


def _x_canonical(st: Step, x: torch.Tensor) -> torch.Tensor:
    """``X`` as the canonical ``(B, M, K)`` view BLAS reads (a copy only when the axes demand one)."""
    bb, kk, _ = st.bkn
    return x.reshape(st.x_in_shape).permute(*st.x_axes).reshape(bb, -1, kk)


def _z_blocks(st: Step, z: torch.Tensor) -> torch.Tensor:
    """``Z`` (or its adjoint) as the strided ``(q, M, run)`` view of :attr:`Step.z_strides`."""
    sn, sm = st.z_strides  # type: ignore[misc]
    return z.as_strided((st.bkn[2] // st.run, st.x_tables[1].size, st.run), (sn, sm, 1))


def _y_blocks(st: Step, yc: torch.Tensor) -> torch.Tensor:
    """``Yc`` (or its adjoint) as the ``(q, K, run)`` view matching :func:`_z_blocks`: ``Yc[k, o * run + r]``."""
    _, kk, nn = st.bkn
    return yc.view(kk, nn // st.run, st.run).permute(1, 0, 2)


def _backend(device: torch.device) -> Any:
    if device.type == "cpu":
        from numba import config

        if not config.ENABLE_CUDASIM:
            return _CPU
    from kernels import cuda as cuda_backend

    return cuda_backend


def _forward(generator: Generator, params: dict[str, torch.Tensor], backend: Any, blas: bool | None) -> tuple:
    """Run every group; returns the outputs and, per group, what the backward needs."""
    from kernels.numba_cpu import IDENTITY

    plans = compiled_steps(generator, blas)
    outputs: list[torch.Tensor] = []
    saved: list[tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = []
    for g, gs in zip(generator.groups, plans, strict=True):
        flat = []
        for op in g.operands:
            if op.kind == "core":
                flat.append(params[op.key].reshape(-1))
            else:
                src = _gather(outputs[op.key], op, generator.groups[op.key].size)
                flat.append(src.contiguous().reshape(-1))
        canon = []
        pre = flat[0][:0]
        for k, st in enumerate(gs.steps):
            last = k == len(gs.steps) - 1
            yc = _canonical(flat[st.right], st)
            z, p = backend.forward_step(st, flat[st.left], yc, gs.code if last else IDENTITY, last and gs.keep_pre)
            if last:
                pre = p
            canon.append(yc)
            flat.append(z)
        shape = (g.size, *g.out_shape) if g.size > 1 else g.out_shape
        outputs.append(flat[-1].reshape(shape))
        saved.append((flat, canon, pre))
    if plans[-1].code == IDENTITY:
        # The weight itself is not needed by the backward of a linear last step, and not holding it
        # leaves the caller free to change it in place (autograd would refuse a saved tensor changed).
        flat = saved[-1][0]
        flat[-1] = flat[-1].new_empty(0)
    return outputs, saved


def _backward(
    generator: Generator, saved: list, grad_out: torch.Tensor, params: dict, backend: Any, blas: bool | None
) -> dict[str, torch.Tensor]:
    from kernels.numba_cpu import IDENTITY

    plans = compiled_steps(generator, blas)
    groups = generator.groups
    adj_out: list[torch.Tensor | None] = [None] * len(groups)
    adj_out[-1] = grad_out.contiguous().reshape(-1)
    grads = {k: torch.zeros_like(p).reshape(-1) for k, p in params.items()}
    for gi in range(len(groups) - 1, -1, -1):
        g, gs = groups[gi], plans[gi]
        if adj_out[gi] is None:
            continue
        flat, canon, pre = saved[gi]
        adj: dict[int, torch.Tensor] = {len(flat) - 1: adj_out[gi].contiguous().reshape(-1)}
        for k in range(len(gs.steps) - 1, -1, -1):
            st = gs.steps[k]
            last = k == len(gs.steps) - 1
            z_bar = adj.pop(gs.n_inputs + k)
            out, pre_k = (flat[-1] if flat[-1].numel() else z_bar, pre) if last else (z_bar, pre[:0])
            x_bar, yc_bar = backend.backward_step(
                st, flat[st.left], canon[k], z_bar, out, pre_k, gs.code if last else IDENTITY
            )
            inverse = tuple(int(a) for a in np.argsort(st.y_axes))
            y_bar = memory.permuted(yc_bar, st.y_shape, inverse)
            for side, value in ((st.left, x_bar), (st.right, y_bar)):
                # Every adjoint held here was made by this backward, so it can be summed in place.
                adj[side] = adj[side].add_(value) if side in adj else value.contiguous()
        for j, op in enumerate(g.operands):
            if j not in adj:
                continue
            if op.kind == "core":
                grads[op.key] += adj[j]
            else:
                src = groups[op.key]
                if adj_out[op.key] is None:
                    shape = (src.size, *src.out_shape) if src.size > 1 else src.out_shape
                    adj_out[op.key] = torch.zeros(shape, dtype=adj[j].dtype, device=adj[j].device)
                _scatter(adj_out[op.key], op, src.size, adj[j], src.out_shape)
    return grads


class _KernelGenerator(torch.autograd.Function):
    """The whole generator as one autograd node: fused kernels forward, step adjoints backward."""

    @staticmethod
    def forward(ctx: Any, generator: Generator, blas: bool | None, *params: torch.Tensor) -> torch.Tensor:
        keys = list(generator.cores.keys())
        # Inference tensors (cores made under inference_mode) have no version counter, so autograd cannot
        # tell whether they changed before the backward: those are copied (cores are small).
        inference = any(p.is_inference() for p in params)
        tensors = {
            k: p.detach().clone() if inference else p.detach().contiguous() for k, p in zip(keys, params, strict=True)
        }
        backend = _backend(params[0].device)
        if backend is not _CPU:
            blas = False  # the CUDA backend picks cuBLAS by summed extent; the CPU calibration is not needed
        # The kernels compute in the cores' dtype: an enclosing autocast must not turn their BLAS steps
        # into bfloat16 ones (the numba steps cannot read those).
        with torch.autocast(params[0].device.type, enabled=False):
            outputs, saved = _forward(generator, tensors, backend, blas)
        ctx.generator, ctx.tensors, ctx.keys, ctx.blas, ctx.backend = generator, tensors, keys, blas, backend
        # Through save_for_backward, so that autograd frees the intermediates after the backward, refuses
        # a second backward without retain_graph and refuses one after an in-place change to a core or to
        # the returned weight (which the backward reads). save_for_backward refuses inference tensors.
        # The cores themselves too: a non-contiguous core's contiguous copy has a version counter of
        # its own, so an in-place change to the core (an optimizer step) before the backward would go
        # unnoticed, and a graph-building backward (_reference_grads) would read the changed values.
        if inference:
            ctx.saved, ctx.params = saved, params
        else:
            held, ctx.layout = _pack(saved)
            ctx.save_for_backward(*held, *params)
        # detach: an output that is a view made inside a Function cannot be changed in place by the caller.
        return outputs[-1].reshape(generator.out_padded, generator.in_padded).detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        if hasattr(ctx, "saved"):
            saved, params = ctx.saved, ctx.params
        else:
            stored = ctx.saved_tensors
            n_params = len(ctx.keys)
            saved, params = _unpack(stored[:-n_params], ctx.layout), stored[-n_params:]
        with torch.autocast(grad.device.type, enabled=False):
            if torch.is_grad_enabled() or batched_grad(grad):
                # create_graph=True (the gradients will be differentiated again), or batched gradients
                # (is_grads_batched, jacobian(vectorize=True)): the kernels have neither a derivative
                # nor a batching rule of their own.
                with torch.enable_grad():
                    return (None, None, *_reference_grads(ctx, params, grad))
            grads = _backward(ctx.generator, saved, grad.detach(), ctx.tensors, ctx.backend, ctx.blas)
        return (None, None, *(grads[k].reshape(ctx.tensors[k].shape) for k in ctx.keys))


def _pack(saved: list) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """The forward's per-group ``(flat, canon, pre)`` as one tensor list and the list lengths to rebuild it."""
    held: list[torch.Tensor] = []
    layout = []
    for flat, canon, pre in saved:
        held += [*flat, *canon, pre]
        layout.append((len(flat), len(canon)))
    return held, layout


def _unpack(held: tuple[torch.Tensor, ...], layout: list[tuple[int, int]]) -> list:
    """Inverse of :func:`_pack`."""
    saved, at = [], 0
    for n_flat, n_canon in layout:
        flat = list(held[at : at + n_flat])
        canon = list(held[at + n_flat : at + n_flat + n_canon])
        saved.append((flat, canon, held[at + n_flat + n_canon]))
        at += n_flat + n_canon + 1
    return saved


def _reference_grads(ctx: Any, params: Sequence[torch.Tensor], grad: torch.Tensor) -> list[torch.Tensor | None]:
    """The cores' gradients through the generator's torch programs, with their graph.

    The kernels' adjoints are computed outside autograd, so a gradient built from them has no
    derivative of its own: double backward, Hessian-vector products and ``autograd.functional.jvp``
    would silently lose every second-order term. Re-running the reference programs on the saved
    cores under autograd keeps them (at the torch executor's speed, for these rare backwards only).
    """
    wanted = [k for k, need in enumerate(ctx.needs_input_grad[2:]) if need]
    # Through a view of each core: one tensor passed for two cores (tied weights) would otherwise get
    # its whole gradient in both places, and autograd would sum the two.
    views = [p.view_as(p) for p in params]
    with torch.enable_grad():
        w = ctx.generator.padded_weight(dict(zip(ctx.keys, views, strict=True)))
        found = torch.autograd.grad(w, [views[k] for k in wanted], grad, create_graph=True, allow_unused=True)
    grads: list[torch.Tensor | None] = [None] * len(params)
    for k, value in zip(wanted, found, strict=True):
        grads[k] = value
    return grads


def numba_weight(
    generator: Generator, blas: bool | None = None, cores: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """The padded weight ``(out_padded, in_padded)`` computed by the kernels (differentiable).

    CPU parameters run the numba CPU kernels, CUDA parameters the CUDA kernels. ``blas`` forces
    BLAS (``True``) or the fused loops (``False``) for every CPU step; by default the calibrated
    cost model chooses per step. ``cores``: tensors to use in place of the generator's cores (same
    order and shapes), as the layers' timing model does to time the kernels on float32 copies.
    """
    tensors = list(generator.cores.values()) if cores is None else list(cores)
    _check_cores(generator, tensors)
    return _KernelGenerator.apply(generator, blas, *tensors)


def core_shapes(generator: Generator) -> dict[str, tuple[int, ...]]:
    """The shape of each core as the generator's group networks (and so the kernels' step tables) have it."""
    shapes = generator.__dict__.get("_core_shapes")
    if shapes is None:  # the groups never change: computed once, off the per-call path
        shapes = {}
        for g in generator.groups:
            sizes = g.network.size_dict
            for op, labels in zip(g.operands, g.network.inputs, strict=True):
                if op.kind == "core":
                    shapes[str(op.key)] = tuple(sizes[x] for x in labels)
        generator.__dict__["_core_shapes"] = shapes
    return shapes


def common_device(tensors: list[torch.Tensor]) -> torch.device | None:
    """The one CPU or CUDA device of ``tensors`` when they also share one dtype the kernels take
    (float32 or float64); None otherwise."""
    first = tensors[0]
    if first.dtype not in (torch.float32, torch.float64) or first.device.type not in ("cpu", "cuda"):
        return None
    if any(t.dtype != first.dtype or t.device != first.device for t in tensors):
        return None
    return first.device


def _check_cores(generator: Generator, tensors: list[torch.Tensor]) -> None:
    """Refuse tensors the kernels cannot take: the kernels index the cores' memory through offset tables
    without bounds checks, so a wrong shape would read (or write) past the end instead of failing.

    Raises:
        KernelsError: On a wrong number of cores, a wrong shape, a dtype other than one of
            float32/float64 for all, cores on several devices or on one the kernels do not run on,
            or a running ``torch.func`` transform.
    """
    keys = list(generator.cores.keys())
    if len(tensors) != len(keys):
        raise KernelsError(f"{len(tensors)} cores given; the generator has {len(keys)}")
    if common_device(tensors) is None:
        dtypes = sorted({str(t.dtype) for t in tensors})
        if dtypes not in (["torch.float32"], ["torch.float64"]):
            raise KernelsError(f"the kernels need cores of one dtype, float32 or float64; got {', '.join(dtypes)}")
        devices = ", ".join(sorted({str(t.device) for t in tensors}))
        raise KernelsError(f"the kernels need every core on one CPU or CUDA device; got {devices}")
    if transformed(*tensors):
        raise KernelsError(
            "the kernels cannot run under torch.func transforms or forward-mode AD; use generator.padded_weight()"
        )
    shapes = core_shapes(generator)
    for key, t in zip(keys, tensors, strict=True):
        if tuple(t.shape) != shapes[key]:
            raise KernelsError(f"core {key!r} has shape {tuple(t.shape)}; the generator's steps expect {shapes[key]}")


def get_executor(name: str) -> str:
    """Validate an executor name (``torch``, ``numba``, ``cuda`` or ``auto``).

    Raises:
        KernelsError: On an unknown name, or an executor this machine cannot run.
    """
    if name not in EXECUTORS:
        raise KernelsError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise KernelsError("executor='cuda' needs a CUDA device; use 'numba' or 'torch' on this machine")
    return name
