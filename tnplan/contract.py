"""Execute a :class:`~tnplan.plan.Plan` on numpy arrays or torch tensors, pairwise and sliced.

Each pairwise step is one two-operand einsum over local letters (torch accepts only 52 symbols, so
symbols are assigned per step). Sliced indices are kept as size-1 axes so that every step's
equation is the same for all slices; slices over open indices are written into place, the others
are summed. Torch autograd differentiates through the whole loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tnplan.cost import leaf_legs
from tnplan.errors import PlanError

if TYPE_CHECKING:
    from tnplan.plan import Plan

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _equation(terms: Sequence[Sequence[int]], out: Sequence[int]) -> str:
    local: dict[int, str] = {}
    for i in itertools.chain(*terms, out):
        if i not in local:
            if len(local) == len(_LETTERS):
                raise PlanError("a single contraction step involves more than 52 indices; it cannot be run by einsum")
            local[i] = _LETTERS[len(local)]
    return ",".join("".join(local[i] for i in t) for t in terms) + "->" + "".join(local[i] for i in out)


def _einsum(eq: str, *ops: Any) -> Any:
    if _is_torch(ops[0]):
        import torch

        return torch.einsum(eq, *ops)
    return np.einsum(eq, *ops, optimize=len(ops) > 1)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def contract_plan(plan: Plan, arrays: Sequence[Any]) -> Any:
    """Contract ``arrays`` along ``plan``; see :meth:`tnplan.plan.Plan.contract`."""
    net = plan.network
    if len(arrays) != net.num_tensors:
        raise PlanError(f"plan contracts {net.num_tensors} tensor(s) but {len(arrays)} array(s) were given")
    for k, (arr, shape) in enumerate(zip(arrays, net.shapes, strict=True)):
        got = tuple(getattr(arr, "shape", ()))
        if got != shape:
            raise PlanError(f"array {k} has shape {got} but the network expects {shape}")
    ids = net.label_ids
    full_terms = [[ids[lab] for lab in term] for term in net.inputs]
    legs = leaf_legs(net)
    out = [ids[lab] for lab in net.output]
    # Reduce every input to the legs the pairwise steps see: take diagonals of repeated indices
    # and sum indices that no other tensor carries.
    reduced = [
        a if list(term) == list(lg) else _einsum(_equation([term], lg), a)
        for a, term, lg in zip(arrays, full_terms, legs, strict=True)
    ]
    steps = [(plan.ssa_path[k], st) for k, st in enumerate(plan.costs.steps)]
    if net.num_tensors == 1:
        final_legs: Sequence[int] = legs[0]
    else:
        final_legs = steps[-1][1].legs_out if steps else legs[0]
    finish = _equation([final_legs], out)

    if not plan.sliced:
        return _einsum(finish, _run_steps(reduced, steps, net.num_tensors))

    sliced = list(plan.sliced)
    sizes = net.int_sizes
    result = None
    open_sliced = [i for i in sliced if i in net.int_output]
    for values in itertools.product(*(range(sizes[i]) for i in sliced)):
        assign = dict(zip(sliced, values, strict=True))
        parts = [_take(a, lg, assign) for a, lg in zip(reduced, legs, strict=True)]
        piece = _einsum(finish, _run_steps(parts, steps, net.num_tensors))
        if open_sliced:
            if result is None:
                result = _zeros_like_output(piece, [sizes[i] for i in out])
            index = tuple(slice(assign[i], assign[i] + 1) if i in assign else slice(None) for i in out)
            result = _place(result, index, piece)
        else:
            result = piece if result is None else result + piece
    return result


def _run_steps(tensors: list[Any], steps: Sequence[Any], n: int) -> Any:
    live: dict[int, Any] = dict(enumerate(tensors))
    last = live[0]
    for (a, b), st in steps:
        eq = _equation([st.legs_left, st.legs_right], st.legs_out)
        last = _einsum(eq, live.pop(a), live.pop(b))
        live[st.result] = last
    return last


def _take(array: Any, legs: Sequence[int], assign: dict[int, int]) -> Any:
    index = tuple(slice(assign[i], assign[i] + 1) if i in assign else slice(None) for i in legs)
    return array[index]


def _zeros_like_output(piece: Any, shape: list[int]) -> Any:
    if _is_torch(piece):
        import torch

        return torch.zeros(shape, dtype=piece.dtype, device=piece.device)
    return np.zeros(shape, dtype=np.result_type(piece))


def _place(result: Any, index: tuple, piece: Any) -> Any:
    """Add one slice's piece into its block of the output (other sliced indices also add there)."""
    if _is_torch(result):
        # Out of place, so autograd records every slice's contribution.
        out = result.clone()
        out[index] = out[index] + piece
        return out
    result[index] += piece
    return result
