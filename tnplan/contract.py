"""Execute a :class:`~tnplan.plan.Plan` on numpy arrays or torch tensors, pairwise and sliced.

Each pairwise step is one two-operand einsum over local letters (torch accepts only 52 symbols, so
symbols are assigned per step). Sliced indices are kept as size-1 axes so that every step's
equation is the same for all slices; slices over open indices are written into place, the others
are summed. Torch autograd differentiates through the whole loop.
"""

from __future__ import annotations

import itertools
import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tnplan.cost import leaf_legs
from tnplan.errors import PlanError
from tnplan.matmul_layout import arrange

if TYPE_CHECKING:
    from tnplan.network import Label
    from tnplan.plan import Plan

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _equation(terms: Sequence[Sequence[int]], out: Sequence[int], first: Sequence[int] = ()) -> str:
    # torch.einsum orders summed legs by their letters: ``first`` (those in the terms) get the first ones.
    local: dict[int, str] = {}
    present = set(itertools.chain(*terms))
    for i in itertools.chain((i for i in first if i in present), *terms, out):
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
    # torch is never imported here: if the caller passes tensors, it is already loaded.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass(frozen=True)
class Program:
    """An unsliced plan compiled to plain einsum equations, for calling again and again.

    Holding only strings and integers, it pickles, and ``torch.compile`` / ``torch.export`` trace
    it as a fixed sequence of reshapes and pairwise einsums. Within each step, legs that sit next
    to each other in the same order on every operand and the result are fused into one (a free
    reshape), so einsum permutes a few large axes instead of many small ones: a 16.7M-entry weight
    built from two 4-leg halves is then a 4-d transpose, not an 8-d one.

    Attributes:
        shapes: The input shapes it expects, in order.
        prepare: Per input, the equation reducing it to the legs the steps see, or ``None``.
        steps: ``(left, right, equation, left_shape, right_shape, result_shape)`` per pairwise
            step: positions in SSA numbering, the fused equation, the fused operand shapes and the
            unfused result shape.
        finish: ``(equation, fused input shape, output shape)`` putting the last intermediate into
            output order.
        product: ``(left, right, left_perm, left_shape, right_perm, right_shape)`` when the last step
            is a broadcast matrix product that writes the output order directly (then ``finish`` is
            the identity): each operand is permuted and reshaped to (outer legs, or 1 where it lacks
            one; rows or summed; summed or columns), and ``matmul`` broadcasts the outer legs.
    """

    shapes: tuple[tuple[int, ...], ...]
    prepare: tuple[str | None, ...]
    steps: tuple[tuple[int, int, str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    finish: tuple[str, tuple[int, ...], tuple[int, ...]]
    product: tuple[int, int, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    def __call__(self, *arrays: Any) -> Any:
        """Contract ``arrays`` (numpy or torch; autograd flows through)."""
        if len(arrays) != len(self.shapes):
            raise PlanError(f"program contracts {len(self.shapes)} tensor(s) but {len(arrays)} were given")
        arrays = tuple(_checked(k, a, want) for k, (a, want) in enumerate(zip(arrays, self.shapes, strict=True)))
        tensor = next((a for a in arrays if _is_torch(a)), None)
        if tensor is not None:
            # A Python number among tensors: a tensor too (numpy and torch operands do not mix).
            arrays = tuple(a if _is_torch(a) else _as_tensor(a, tensor) for a in arrays)
        live = [a if eq is None else _einsum(eq, a) for a, eq in zip(arrays, self.prepare, strict=True)]
        for a, b, eq, sa, sb, out in self.steps:
            live.append(_einsum(eq, live[a].reshape(sa), live[b].reshape(sb)).reshape(out))
        eq, shape, out = self.finish
        if self.product is not None:
            a, b, pa, sa, pb, sb = self.product
            return (_permute(live[a], pa).reshape(sa) @ _permute(live[b], pb).reshape(sb)).reshape(out)
        return _einsum(eq, live[-1].reshape(shape)).reshape(out)


def _checked(k: int, a: Any, want: tuple[int, ...]) -> Any:
    """Operand ``k``, a Python number made an array, after checking its shape (``-1``: the free axis,
    any size). The steps reshape their operands, so a wrong shape of the right size would otherwise
    give a wrong answer, not an error."""
    if not hasattr(a, "shape"):
        if not isinstance(a, numbers.Number) or isinstance(a, bool):
            raise PlanError(f"operand {k} is a {type(a).__name__}; pass a numpy array or torch tensor")
        a = np.asarray(a)
    got = tuple(a.shape)
    # -1 first: a free axis's size may be symbolic (torch.export), and is never compared.
    if len(got) != len(want) or any(w != -1 and g != w for g, w in zip(got, want, strict=True)):
        expected = "(" + ", ".join("any" if w == -1 else str(w) for w in want) + ("," if len(want) == 1 else "") + ")"
        raise PlanError(f"operand {k} has shape {got} but the program expects {expected}")
    return a


def _as_tensor(a: Any, like: Any) -> Any:
    if isinstance(a, np.ndarray) and a.ndim == 0:  # a Python number _checked made an array
        return like.new_tensor(a.item())
    raise PlanError(f"a {type(a).__name__} among torch tensors; pass every operand as a tensor")


def _permute(x: Any, perm: Sequence[int]) -> Any:
    return x.permute(*perm) if _is_torch(x) else x.transpose(perm)


# A last step becomes a broadcast product only with matrices at least this wide (tiny batched
# matrices run far below a GEMM's speed) and only when its expanded operands are smaller than the output.
PRODUCT_MIN = 32


def _broadcast_product(
    a: int, b: int, left: Sequence[int], right: Sequence[int], out: Sequence[int], sizes: Sequence[int]
) -> tuple[int, int, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """The last step as ``matmul`` writing ``out``'s order directly, or ``None`` where that does not pay.

    ``out`` is split into outer legs, then rows (a run of legs only one operand holds), then columns (a
    run only the other holds, up to the end); ``matmul`` broadcasts the outer legs, so each operand is
    expanded over the outer legs it lacks. A generator's root (W[o01, o23, i01, i23] from A[o01, i01, k]
    and B[k, o23, i23]) then needs no permuting copy of the weight, only of its two far smaller halves.
    """
    held = {"l": set(left), "r": set(right)}

    def side(i: int) -> str | None:
        if (i in held["l"]) == (i in held["r"]):
            return None
        return "l" if i in held["l"] else "r"

    if any(side(i) is not None and i not in out for i in (*left, *right)) or not out or side(out[-1]) is None:
        return None  # a leg summed inside one operand, or a scalar / shared last leg
    cols_side = side(out[-1])
    k = len(out)
    while k > 0 and side(out[k - 1]) == cols_side:
        k -= 1
    j = k
    while j > 0 and side(out[j - 1]) not in (None, cols_side):
        j -= 1
    outer, rows, cols = list(out[:j]), list(out[j:k]), list(out[k:])
    if not rows:
        return None
    summed = [i for i in left if i in held["r"] and i not in out]
    if cols_side == "l":
        a, b, left, right = b, a, right, left

    def size(legs: Sequence[int]) -> int:
        return math.prod(sizes[i] for i in legs)

    def expanded(legs: Sequence[int]) -> int:  # an operand broadcast over the outer legs it lacks
        return size(set(outer) | set(legs))

    if min(size(rows), size(cols)) < PRODUCT_MIN or expanded(left) + expanded(right) > size(out):
        return None
    pa = tuple(left.index(i) for i in (*[o for o in outer if o in left], *rows, *summed))
    pb = tuple(right.index(i) for i in (*[o for o in outer if o in right], *summed, *cols))
    sa = (*(sizes[o] if o in left else 1 for o in outer), size(rows), size(summed))
    sb = (*(sizes[o] if o in right else 1 for o in outer), size(summed), size(cols))
    return a, b, pa, sa, pb, sb


def _run(sizes: Sequence[int], order: Sequence[int], out: Sequence[int]) -> int:
    """Elements in the contiguous runs that permuting ``order`` into ``out`` keeps (their common suffix)."""
    run = 1
    for a, b in zip(reversed(order), reversed(out), strict=False):
        if a != b:
            break
        run *= sizes[a]
    return run


def _fused(
    terms: Sequence[Sequence[int]],
    out: Sequence[int],
    sizes: Sequence[int],
    free: int | None = None,
    first: Sequence[int] = (),
) -> tuple[str, list[tuple[int, ...]]]:
    """The einsum equation over fused legs, and the fused shape of every term (output last).

    Leg ``y`` joins the run of the leg ``x`` before it when every term holding either holds both,
    with ``y`` right after ``x``. A fused axis holding the ``free`` leg gets size ``-1``.
    """
    all_terms = [tuple(t) for t in terms] + [tuple(out)]
    holders: dict[int, set[int]] = {}
    for k, t in enumerate(all_terms):
        for i in t:
            holders.setdefault(i, set()).add(k)
    joins: set[int] = set()  # legs fused onto their predecessor
    for i, ks in holders.items():
        prev = {all_terms[k][all_terms[k].index(i) - 1] if all_terms[k].index(i) > 0 else None for k in ks}
        if len(prev) == 1:
            (p,) = prev
            if p is not None and holders[p] == ks:
                joins.add(i)
    fused_terms, shapes = [], []
    for t in all_terms:
        heads = [i for i in t if i not in joins]
        dims: list[int] = []
        for i in t:
            size = -(10**18) if i == free else sizes[i]  # any free axis product is negative
            if i in joins:
                dims[-1] *= size
            else:
                dims.append(size)
        fused_terms.append(heads)
        shapes.append(tuple(-1 if d < 0 else d for d in dims))
    return _equation(fused_terms[:-1], fused_terms[-1], first), shapes


def compile_plan(plan: Plan, free: Label | None = None) -> Program:
    """Compile an unsliced plan to a :class:`Program`; see :meth:`tnplan.plan.Plan.compile`."""
    if plan.sliced:
        raise PlanError("a sliced plan cannot be compiled to one einsum sequence; use plan.contract instead")
    net = plan.network
    ids = net.label_ids
    if free is not None and free not in ids:
        raise PlanError(f"free index {free!r} is not in the network")
    fid = None if free is None else ids[free]
    sizes = net.int_sizes

    def shape(legs: Sequence[int]) -> tuple[int, ...]:
        return tuple(-1 if i == fid else sizes[i] for i in legs)

    full_terms = [[ids[lab] for lab in term] for term in net.inputs]
    legs = leaf_legs(net)
    prepare = tuple(None if list(t) == list(lg) else _equation([t], lg) for t, lg in zip(full_terms, legs, strict=True))
    out = [ids[lab] for lab in net.output]
    steps = []
    final = legs[0]
    layouts = None
    product = None
    if fid is not None:
        # A streamed program's operands carry the batch: lay its steps out so that torch's
        # matrix-product lowering copies least (tnplan.matmul_layout).
        layouts = arrange(plan.ssa_path, legs, [st.legs_out for st in plan.costs.steps], out, sizes)
    for k, ((a, b), st) in enumerate(zip(plan.ssa_path, plan.costs.steps, strict=True)):
        left, right, result = st.legs_left, st.legs_right, st.legs_out
        summed: Sequence[int] = ()
        if fid is None and k == len(plan.ssa_path) - 1 and list(result) != list(out):
            # The einsum would leave the output to a permuting copy: a broadcast product may write it.
            product = _broadcast_product(a, b, left, right, out, sizes)
            if product is not None:
                final = out
                break
        if layouts is not None:
            layout = layouts[k]
            if layout.swapped:
                a, b = b, a
            left, right, summed, result = layout.left, layout.right, layout.summed, layout.result
        elif fid is None and k == len(plan.ssa_path) - 1 and not set(left) & set(right) & set(result):
            # The last step of a plain matrix product writes left legs, then right legs; the other
            # operand order can leave longer contiguous runs for the final permutation (a generator's
            # weight: kernels-gpu-profile.md). Streamed programs are laid out by matmul_layout instead
            # (or keep the plan's order where it does not apply).
            swapped = [i for i in right if i in result] + [i for i in left if i in result]
            if _run(sizes, swapped, out) > _run(sizes, result, out):
                a, b, left, right, result = b, a, right, left, tuple(swapped)
        eq, (sa, sb, _) = _fused([left, right], result, sizes, fid, summed)
        steps.append((a, b, eq, sa, sb, shape(result)))
        final = result
    eq, (fused, _) = _fused([final], out, sizes, fid)
    finish = (eq, fused, shape(out))
    return Program(
        shapes=tuple(shape(t) for t in full_terms), prepare=prepare, steps=tuple(steps), finish=finish, product=product
    )


def contract_plan(plan: Plan, arrays: Sequence[Any]) -> Any:
    """Contract ``arrays`` along ``plan``; see :meth:`tnplan.plan.Plan.contract`."""
    net = plan.network
    if len(arrays) != net.num_tensors:
        raise PlanError(f"plan contracts {net.num_tensors} tensor(s) but {len(arrays)} array(s) were given")
    for k, (arr, shape) in enumerate(zip(arrays, net.shapes, strict=True)):
        got = tuple(getattr(arr, "shape", ()))
        if got != shape:
            raise PlanError(f"array {k} has shape {got} but the network expects {shape}")
    arrays = _torch_operands(arrays)
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


def _torch_operands(arrays: Sequence[Any]) -> Sequence[Any]:
    """Torch operands in one promoted dtype (as numpy's einsum promotes; torch's matmul-based steps do
    not); a numpy array among tensors is an error torch would give from inside a step."""
    tensors = [a for a in arrays if _is_torch(a)]
    if not tensors:
        return arrays
    if len(tensors) != len(arrays):
        k = next(k for k, a in enumerate(arrays) if not _is_torch(a))
        kind = type(arrays[k]).__name__
        raise PlanError(f"array {k} is a {kind} among torch tensors; pass every operand as a tensor")
    import torch  # already loaded: the caller passed tensors

    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return [a if a.dtype == dtype else a.to(dtype) for a in arrays]


def _run_steps(tensors: list[Any], steps: Sequence[Any], n: int) -> Any:
    live: dict[int, Any] = dict(enumerate(tensors))
    last = live[0]
    for (a, b), st in steps:
        eq = _equation([st.legs_left, st.legs_right], st.legs_out)
        last = _einsum(eq, live.pop(a), live.pop(b))
        live[st.result] = last
    return last


def _take(array: Any, legs: Sequence[int], assign: dict[int, int]) -> Any:
    if not legs:
        return array  # a scalar operand (possibly a Python number) has nothing to slice
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
