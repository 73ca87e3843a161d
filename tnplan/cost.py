"""The one cost model: every score in the project comes from :func:`score_path`.

Conventions (see ``shared/bench/README.md``):

* ``contraction_cost`` — sum over pairwise contractions of the product of the sizes of every index
  involved (cotengra's ``contraction_cost()``).
* ``flops`` — the einsum-benchmark convention: the same product, times 2 when at least one index is
  summed in that contraction (times 1 for Hadamard and outer products).
* ``peak_size`` — the largest intermediate, in elements.
* ``write`` — the sum of the sizes of all intermediates (the final result included).
* ``peak_memory(dtype)`` — bytes of everything alive at once when the steps run in order: the inputs,
  the live intermediates and, when sliced, the full-size result being accumulated.
* ``combo`` — ``flops + 64 * write``.

With sliced indices every tensor sees those indices with size 1, per-slice work is multiplied by the
number of slices, and ``peak_size`` is per slice.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, MutableMapping, Sequence, Set
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tnplan.errors import NetworkError, PlanError
from tnplan.network import Network

COMBO_FACTOR = 64
OBJECTIVES = ("flops", "size", "write", "combo")


@dataclass(frozen=True)
class Step:
    """One pairwise contraction of a scored path (integer index ids, per slice)."""

    left: int
    right: int
    result: int
    legs_left: tuple[int, ...]
    legs_right: tuple[int, ...]
    legs_out: tuple[int, ...]
    summed: tuple[int, ...]
    cost: int
    flops: int
    size: int


@dataclass(frozen=True)
class Costs:
    """Every cost of one contraction path; all values are for the whole contraction (all slices)."""

    contraction_cost: int
    flops: int
    peak_size: int
    write: int
    peak_elements: int
    n_slices: int
    source: tuple = field(default=(), repr=False, compare=False)

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        """Per-step breakdown (per slice), computed on first use."""
        return _steps(*self.source) if self.source else ()

    def peak_memory(self, dtype: str | np.dtype | type = "float64") -> int:
        """Bytes of all tensors alive at once while executing in order (inputs included)."""
        return self.peak_elements * itemsize(dtype)

    @property
    def combo(self) -> int:
        return self.flops + COMBO_FACTOR * self.write

    @property
    def log10_flops(self) -> float:
        return math.log10(self.flops) if self.flops > 0 else 0.0

    @property
    def log2_size(self) -> float:
        return math.log2(self.peak_size) if self.peak_size > 0 else 0.0

    def objective(self, minimize: str) -> float:
        """The scalar to minimise for an objective name in :data:`OBJECTIVES`."""
        if minimize == "flops":
            return finite_or_inf(self.flops)
        if minimize == "size":
            return finite_or_inf(self.peak_size)
        if minimize == "write":
            return finite_or_inf(self.write)
        if minimize == "combo":
            return finite_or_inf(self.combo)
        raise NetworkError(f"unknown objective {minimize!r}; choose one of {', '.join(OBJECTIVES)}")


def finite_or_inf(count: float) -> float:
    """``count`` as a float; an exact count past the largest float (10^308 flops) is ``inf``, as the
    planner's float arithmetic has it."""
    try:
        return float(count)
    except OverflowError:
        return math.inf


def itemsize(dtype: str | np.dtype | type) -> int:
    """Bytes per element of ``dtype``.

    Raises:
        PlanError: On a name numpy does not know.
    """
    try:
        found = np.dtype(dtype)
    except Exception:  # numpy raises TypeError, ValueError or even SyntaxError on malformed strings
        raise PlanError(f"unknown dtype {dtype!r}; use a numpy dtype name such as 'float32'") from None
    if found.kind not in "biufc" or found.fields is not None or found.subdtype is not None:
        raise PlanError(f"dtype {dtype!r} is not a numeric scalar type; use one such as 'float32' or 'complex64'")
    return found.itemsize


def position(value: object, what: str) -> int:
    """``value`` as an integer position or id; a float, a string or a bool is refused, not truncated.

    Raises:
        NetworkError: Naming ``what`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise NetworkError(f"{what} must be integers, got {value!r}")
    return int(value)


def linear_to_ssa(path: Sequence[Sequence[int]], num_tensors: int) -> list[tuple[int, int]]:
    """Convert an opt_einsum linear path to SSA form, validating it.

    Raises:
        NetworkError: If a step names a position that does not exist or repeats a position.
    """
    ids = list(range(num_tensors))
    nxt = num_tensors
    ssa: list[tuple[int, int]] = []
    try:
        steps = [tuple(step) for step in path]
    except TypeError:
        raise NetworkError(f"a path is a list of steps, each a tuple of positions; got {path!r:.80}") from None
    for k, step in enumerate(steps):
        step = tuple(position(x, "path positions") for x in step)
        if len(set(step)) != len(step) or any(not 0 <= x < len(ids) for x in step):
            raise NetworkError(f"path step {k} {step} is invalid with {len(ids)} tensor(s) left")
        if len(step) == 1:
            # A single-operand step reduces a tensor and appends the result: it moves to the end.
            ids.append(ids.pop(step[0]))
            continue
        if len(step) != 2:
            raise NetworkError(f"path step {k} {step} contracts {len(step)} tensors; only pairwise steps are supported")
        a, b = (ids[x] for x in step)
        for x in sorted(step, reverse=True):
            ids.pop(x)
        ssa.append((a, b))
        ids.append(nxt)
        nxt += 1
    return ssa


def ssa_to_linear(ssa_path: Sequence[Sequence[int]], num_tensors: int) -> list[tuple[int, int]]:
    """Convert an SSA path to opt_einsum's linear format."""
    ids = list(range(num_tensors))
    nxt = num_tensors
    out: list[tuple[int, int]] = []
    for a, b in ssa_path:
        i, j = ids.index(a), ids.index(b)
        out.append((min(i, j), max(i, j)))
        for x in sorted((i, j), reverse=True):
            ids.pop(x)
        ids.append(nxt)
        nxt += 1
    return out


def complete_ssa_path(network: Network, ssa_path: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Validate an SSA path and append outer products so that it ends in a single tensor.

    Raises:
        NetworkError: If a step uses an unknown or already-consumed tensor.
    """
    n = network.num_tensors
    alive = set(range(n))
    nxt = n
    out: list[tuple[int, int]] = []
    for k, (a, b) in enumerate(ssa_path):
        a, b = int(a), int(b)
        if a == b or a not in alive or b not in alive:
            raise NetworkError(f"SSA path step {k} ({a}, {b}) uses a tensor that is unknown or already contracted")
        alive -= {a, b}
        alive.add(nxt)
        out.append((a, b))
        nxt += 1
    rest = sorted(alive)
    while len(rest) > 1:
        a, b = rest.pop(0), rest.pop(0)
        out.append((a, b))
        rest.append(nxt)
        nxt += 1
    return out


def leaf_legs(network: Network) -> list[tuple[int, ...]]:
    """Each tensor's indices as the pairwise steps see them.

    An index that sits on one tensor only and is not open is summed inside that tensor before any
    pairwise step (as cotengra does), so it is not part of any pairwise contraction's cost.
    """
    counts: dict[int, int] = {}
    for term in network.int_inputs:
        for i in term:
            counts[i] = counts.get(i, 0) + 1
    out = network.int_output
    return [tuple(i for i in term if counts[i] > 1 or i in out) for term in network.int_inputs]


def _merge(
    involved: Iterable[int],
    la: Set[int],
    lb: Set[int],
    counts: MutableMapping[int, int] | list[int],
    output: Set[int],
) -> tuple[list[int], list[int]]:
    """Split a step's indices into (kept, summed) and update how many live tensors carry each index.

    An index survives when it is open or another live tensor still carries it; this is the one
    place that rule lives, so hyperedges are handled the same everywhere.
    """
    keep: list[int] = []
    summed: list[int] = []
    for i in involved:
        c = counts[i] - (i in la) - (i in lb)
        if i in output or c > 0:
            keep.append(i)
            counts[i] = c + 1
        else:
            summed.append(i)
            counts[i] = 0
    return keep, summed


def score_path(
    network: Network,
    ssa_path: Sequence[Sequence[int]],
    sliced: Iterable[int] = (),
) -> Costs:
    """Score a complete SSA path on ``network`` (integer index ids in ``sliced``).

    The totals come from a lean pass over index bitmasks (it is on the plan cache's hit path);
    the per-step breakdown :attr:`Costs.steps` is computed on first use.

    Raises:
        NetworkError: If the path is invalid or does not contract the network to one tensor.
    """
    n = network.num_tensors
    given = tuple(position(i, "sliced index ids (not labels)") for i in sliced)
    sliced = tuple(sorted(set(given)))
    if any(not 0 <= i < len(network.int_sizes) for i in sliced):
        raise NetworkError(f"sliced index ids {sliced} are not all in 0..{len(network.int_sizes) - 1}")
    sizes = list(network.int_sizes)
    n_slices = 1
    for i in sliced:
        n_slices *= sizes[i]
        sizes[i] = 1
    if len(ssa_path) != n - 1:
        raise NetworkError(f"path has {len(ssa_path)} pairwise steps; {n} tensors need exactly {n - 1}")
    leaf_masks, leaf_sizes, leaf_counts, out_mask, inputs_full, result_full = _prepared(network)
    if sliced:
        _check_sliced(network, given, leaf_masks)
    # Lists indexed by SSA id (None once consumed): cheaper than dicts on this hot path.
    masks: list[int | None] = [*leaf_masks, *([None] * max(n - 1, 0))]
    counts = list(leaf_counts)
    leaves = [math.prod(sizes[i] for i in term) for term in leaf_legs(network)] if sliced else leaf_sizes
    tensor_size = [*leaves, *([0] * max(n - 1, 0))]
    live = peak_live = cost = flops = write = peak = 0
    nxt = n
    try:
        for k, (a, b) in enumerate(ssa_path):
            if not (0 <= a < nxt and 0 <= b < nxt) or a == b:
                raise NetworkError(f"path step {k} ({a}, {b}) uses a tensor that is unknown or already contracted")
            ma, mb = masks[a], masks[b]
            if ma is None or mb is None:
                raise NetworkError(f"path step {k} ({a}, {b}) uses a tensor that is unknown or already contracted")
            masks[a] = masks[b] = None
            sa, sb = tensor_size[a], tensor_size[b]
            shared = ma & mb
            s_shared = 1
            s_summed = 1
            summed = 0
            bits = shared
            while bits:
                low = bits & -bits
                i = low.bit_length() - 1
                bits ^= low
                s_shared *= sizes[i]
                # Rule of _merge: an index shared by both operands survives when open or still carried.
                c = counts[i] - 2
                if low & out_mask or c > 0:
                    counts[i] = c + 1
                else:
                    counts[i] = 0
                    summed |= low
                    s_summed *= sizes[i]
            c_step = sa * sb // s_shared
            s_out = c_step // s_summed
            cost += c_step
            flops += c_step * 2 if summed else c_step
            write += s_out
            if s_out > peak:
                peak = s_out
            live += s_out
            if live > peak_live:
                peak_live = live
            if a >= n:
                live -= sa
            if b >= n:
                live -= sb
            masks[nxt] = (ma | mb) & ~summed
            tensor_size[nxt] = s_out
            nxt += 1
    except (TypeError, ValueError, IndexError) as exc:  # a step that is not a pair of integer ids
        raise NetworkError(f"path steps must be pairs of integer tensor ids: {exc}") from None
    accumulate = result_full if n_slices > 1 else 0
    return Costs(
        contraction_cost=cost * n_slices,
        flops=flops * n_slices,
        peak_size=peak,
        write=write * n_slices,
        peak_elements=inputs_full + peak_live + accumulate,
        n_slices=n_slices,
        source=(network, ssa_path if isinstance(ssa_path, tuple) else tuple(map(tuple, ssa_path)), sliced),
    )


# Leaf masks, leaf sizes, leg counts, open-index mask, summed input sizes, result size.
_Prep = tuple[list[int], list[int], list[int], int, int, int]


def _prepared(network: Network) -> _Prep:
    """Per-network inputs of the scorer (leaf bitmasks and sizes, leg counts, totals), cached on the network.

    The network is immutable, so they are computed once; a plan-cache hit then scores a path in
    one pass over its steps.
    """
    cached = network.__dict__.get("_score_prep")
    if cached is not None:
        return cached
    deduplicated = network.__dict__.get("int_inputs")
    if deduplicated is None:
        # A plan-cache hit in a fresh process has no int_inputs cached yet: map the labels on the way.
        get = network.label_ids.__getitem__
        prep = _prepare(network, (tuple(map(get, term)) for term in network.inputs))  # None on a trace
    else:
        prep = _prepare(network, deduplicated)
        if prep is not None and sum(map(len, network.inputs)) != sum(map(len, deduplicated)):
            prep = None  # a trace: deduplicated legs undercount what the inputs hold
    if prep is None:
        # A label repeated on one tensor (a trace) is a single leg: int_inputs deduplicates them.
        prep = _prepare(network, network.int_inputs)
        assert prep is not None
        masks, leaf_sizes, counts, out_mask, _, result_full = prep
        prep = (masks, leaf_sizes, counts, out_mask, _held_with_traces(network), result_full)
    network.__dict__["_score_prep"] = prep
    return prep


def input_elements(network: Network) -> int:
    """Elements held before the first pairwise step: the inputs as given (a repeated index counts
    for each of its legs), plus the copy :func:`tnplan.contract.contract_plan` makes of every input
    with a trace or a leg summed inside it, reduced to the legs the pairwise steps see.
    """
    return _prepared(network)[4]


def _held_with_traces(network: Network) -> int:
    """:func:`input_elements` of a network whose inputs repeat indices."""
    sizes = network.int_sizes
    total = sum(math.prod(shape) for shape in network.shapes)
    for raw, legs in zip(network.inputs, leaf_legs(network), strict=True):
        if len(raw) != len(legs):  # a trace, or a leg summed inside: contract() reduces a copy
            total += math.prod(sizes[i] for i in legs)
    return total


def _prepare(network: Network, terms: Iterable[tuple[int, ...]]) -> _Prep | None:
    """:func:`_prepared`'s tuple from integer terms; None when a term repeats an index."""
    sizes = network.int_sizes
    output = network.int_output
    counts = [0] * len(sizes)
    # One pass over every leg: counts, and each tensor's mask and size over all its legs.
    full_masks: list[int] = []
    fulls: list[int] = []
    legs = 0
    for t in terms:
        m = 0
        full = 1
        for i in t:
            counts[i] += 1
            m |= 1 << i
            full *= sizes[i]
        full_masks.append(m)
        fulls.append(full)
        legs += len(t)
    if legs != sum(m.bit_count() for m in full_masks):
        return None
    # Legs on one tensor only (and not open) are summed inside it: they leave its mask and size.
    single = 0
    for i, c in enumerate(counts):
        if c == 1 and i not in output:
            single |= 1 << i
    masks, leaf_sizes = full_masks, fulls
    held = sum(fulls)
    if single:
        masks = [m & ~single for m in full_masks]
        leaf_sizes = [f // _mask_product(m & single, sizes) for f, m in zip(fulls, full_masks, strict=True)]
        # contract() reduces a copy of every input with a leg summed inside it.
        held += sum(leaf for leaf, m in zip(leaf_sizes, full_masks, strict=True) if m & single)
    counts = [c if c > 1 or i in output else 0 for i, c in enumerate(counts)]
    out_mask = 0
    for i in output:
        out_mask |= 1 << i
    result_full = math.prod(sizes[i] for i in output)
    return masks, leaf_sizes, counts, out_mask, held, result_full


def _check_sliced(network: Network, given: tuple[int, ...], leaf_masks: Sequence[int]) -> None:
    """Refuse sliced indices that slicing would count twice: a repeat, or one no pairwise step sees.

    An index summed inside one tensor (a trace or a dangling leg) is reduced before slicing, so
    every slice would contract the whole network and the sum would be a multiple of the answer.
    """
    labels = network.labels
    seen: set[int] = set()
    legs = 0
    for m in leaf_masks:
        legs |= m
    for i in given:
        if not 0 <= i < len(labels):
            raise NetworkError(f"sliced index id {i} is not an index of the network")
        if i in seen:
            raise NetworkError(f"sliced index {labels[i]!r} is listed twice; list each sliced index once")
        seen.add(i)
        if not legs >> i & 1:
            raise NetworkError(
                f"sliced index {labels[i]!r} is summed within one tensor, so slicing it would repeat the whole "
                "contraction; slice an index that two tensors share or that is open"
            )


def _mask_product(mask: int, sizes: Sequence[int]) -> int:
    """Product of ``sizes`` over the set bits of ``mask``."""
    p = 1
    while mask:
        low = mask & -mask
        p *= sizes[low.bit_length() - 1]
        mask ^= low
    return p


def _steps(network: Network, ssa_path: Sequence[Sequence[int]], sliced: tuple[int, ...]) -> tuple[Step, ...]:
    """The per-step breakdown of a path already validated by :func:`score_path`."""
    sizes = list(network.int_sizes)
    for i in sliced:
        sizes[i] = 1
    output = network.int_output
    legs = dict(enumerate(leaf_legs(network)))
    counts = [0] * len(sizes)
    for term in legs.values():
        for i in term:
            counts[i] += 1

    def size_of(ls: Iterable[int]) -> int:
        p = 1
        for i in ls:
            p *= sizes[i]
        return p

    steps: list[Step] = []
    nxt = network.num_tensors
    for a, b in ssa_path:
        la, lb = legs.pop(a), legs.pop(b)
        involved = la + tuple(i for i in lb if i not in set(la))
        out_legs, summed = _merge(involved, set(la), set(lb), counts, output)
        c_step = size_of(involved)
        s_out = size_of(out_legs)
        legs[nxt] = tuple(out_legs)
        f_step = c_step * (2 if summed else 1)
        steps.append(Step(a, b, nxt, la, lb, tuple(out_legs), tuple(summed), c_step, f_step, s_out))
        nxt += 1
    return tuple(steps)


def score_linear_path(network: Network, path: Sequence[Sequence[int]], sliced: Iterable[int] = ()) -> Costs:
    """Score an opt_einsum linear path; outer products are appended if the path stops early."""
    ssa = complete_ssa_path(network, linear_to_ssa(path, network.num_tensors))
    return score_path(network, ssa, sliced)


def over_slices(per_slice: float, n_slices: float, minimize: str, flops: float = 0.0) -> float:
    """The objective of a sliced contraction from one slice's: flops, writes and combo add up over the
    slices; the peak size (``"size"``) is every slice's own, so it is not multiplied.

    Under a size cap most sliced trees end with the same peak (the cap), so for ``"size"`` the total
    ``flops`` (over all slices) break ties: they add :func:`size_tie`, less than half an element.
    """
    if minimize == "size":
        return per_slice + size_tie(flops)
    return per_slice * n_slices


def size_tie(flops: float) -> float:
    """A tie-break in ``[0, 0.5)`` that grows with ``flops``: added to a peak size (a whole number of
    elements) it never reorders different peaks, and orders equal ones by flops while a float
    resolves the difference (peaks up to about 2^40 elements)."""
    return 0.5 * (1.0 - 1.0 / (1.0 + math.log2(1.0 + max(flops, 0.0)) / 128.0))


def rank_key(value: float, flops: float, minimize: str) -> tuple[float, float]:
    """How plans of one network rank for ``minimize``: by the objective's ``value``, and for ``"size"``
    then by ``flops`` (most trees under a cap share its peak; without the flops one may run 46x them)."""
    return (finite_or_inf(value), finite_or_inf(flops) if minimize == "size" else 0.0)


def legs_path_cost(
    legs: Sequence[Sequence[int]],
    output: frozenset[int] | set[int],
    sizes: Sequence[float],
    path: Sequence[tuple[int, int]],
    minimize: str,
) -> float:
    """Objective value of an SSA ``path`` over tensors given as index-id legs (float arithmetic)."""
    where: dict[int, int] = {}
    for term in legs:
        for i in term:
            where[i] = where.get(i, 0) + 1
    cur = [frozenset(t) for t in legs]
    total = 0.0
    for a, b in path:
        la, lb = cur[a], cur[b]
        involved = la | lb
        keep, _ = _merge(involved, la, lb, where, output)
        p = math.prod(float(sizes[i]) for i in involved)
        size = math.prod(float(sizes[i]) for i in keep)
        flops = p * 2.0 if len(keep) < len(involved) else p
        cur.append(frozenset(keep))
        if minimize == "size":
            total = max(total, size)
        elif minimize == "flops":
            total += flops
        elif minimize == "write":
            total += size
        else:
            total += flops + 64.0 * size
    return total
