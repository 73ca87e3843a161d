"""The ``Plan`` value: a scored contraction tree (with slicing) that is built once and reused.

A plan is immutable; it serialises to JSON with its network and is re-verified on load (the path
must be valid and re-score to the stored cost), so a stale or tampered file can never silently
yield a wrong contraction.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tnplan.cost import OBJECTIVES, Costs, finite_or_inf, itemsize, position, score_path, ssa_to_linear
from tnplan.errors import NetworkError, PlanError
from tnplan.network import Label, Network

if TYPE_CHECKING:
    from tnplan.contract import Program

FORMAT = "tnplan.plan/1"


@dataclass(frozen=True, eq=False)
class Plan:
    """A contraction plan for one network.

    Attributes:
        network: The network it contracts.
        ssa_path: Pairwise steps in SSA form (inputs are ``0..n-1``, step ``k`` creates ``n+k``).
        sliced: Integer ids of the sliced indices (see :attr:`sliced_indices` for labels).
        costs: The full cost breakdown from :func:`tnplan.cost.score_path`.
        minimize: The objective it was optimised for.
        optimal: Whether the tree is proven optimal for that objective (unsliced plans only): over
            every contraction tree for networks of up to 14 tensors, otherwise over the trees that
            never take an outer product inside a connected component (the search space of
            opt_einsum's ``dp`` and cotengra's ``optimal``).
        planning_time: Seconds spent planning.
        method: Which search stage produced the tree.
        dtype: Element type used for memory figures.
        unsliced_flops: Flops of the best unsliced tree found (the baseline of slicing_overhead).
        cache_status: ``"hit"`` (loaded from the plan cache), ``"miss"`` (searched, then stored) or
            ``"off"`` (no cache involved).
    """

    network: Network
    ssa_path: tuple[tuple[int, int], ...]
    sliced: tuple[int, ...]
    costs: Costs
    minimize: str = "flops"
    optimal: bool = False
    planning_time: float = 0.0
    method: str = ""
    dtype: str = "float64"
    unsliced_flops: int | None = None
    cache_status: str = "off"

    # ------------------------------------------------------------------ paths and costs

    @property
    def path(self) -> list[tuple[int, ...]]:
        """The path in opt_einsum's linear format.

        A single tensor gets opt_einsum's one-operand step ``[(0,)]``: an empty path would leave
        its traces and summed indices unreduced in ``opt_einsum.contract(..., optimize=path)``.
        """
        if self.network.num_tensors == 1:
            return [(0,)]
        return ssa_to_linear(self.ssa_path, self.network.num_tensors)

    @property
    def sliced_indices(self) -> tuple[Label, ...]:
        """Labels of the sliced indices."""
        return tuple(self.network.labels[i] for i in self.sliced)

    @property
    def n_slices(self) -> int:
        return self.costs.n_slices

    @property
    def contraction_cost(self) -> int:
        return self.costs.contraction_cost

    @property
    def flops(self) -> int:
        return self.costs.flops

    @property
    def log10_flops(self) -> float:
        return self.costs.log10_flops

    @property
    def peak_size(self) -> int:
        return self.costs.peak_size

    @property
    def log2_size(self) -> float:
        return self.costs.log2_size

    @property
    def write(self) -> int:
        return self.costs.write

    @property
    def combo(self) -> int:
        return self.costs.combo

    def peak_memory(self, dtype: str | None = None) -> int:
        """Bytes alive at once while executing in order, inputs included (plan's dtype by default)."""
        return self.costs.peak_memory(dtype or self.dtype)

    @property
    def slicing_overhead(self) -> float:
        """Sliced flops over the flops of the best unsliced tree found (1.0 when not sliced).

        The baseline is the tree the search found before slicing; a plan built from a given path
        compares with that same tree unsliced.
        """
        if not self.sliced:
            return 1.0
        base = self.unsliced_flops or score_path(self.network, self.ssa_path).flops
        return finite_or_inf(Fraction(self.flops, base)) if base else 1.0

    # ------------------------------------------------------------------ presentation

    def describe(self) -> str:
        """A readable per-step table (indices, scaling, flops, size) under a summary."""
        from tnplan.describe import describe_plan

        return describe_plan(self)

    def summary(self) -> dict[str, Any]:
        """The plan's headline numbers as a JSON-ready dict (the ``tnplan plan --json`` object)."""
        return {
            "path": [list(p) for p in self.path],
            "ssa_path": [list(p) for p in self.ssa_path],
            "flops": self.flops,
            "log10_flops": round(self.log10_flops, 6),
            "contraction_cost": self.contraction_cost,
            "peak_size": self.peak_size,
            "log2_size": round(self.log2_size, 6),
            "write": self.write,
            "combo": self.combo,
            "peak_memory": self.peak_memory(),
            "dtype": self.dtype,
            "sliced_indices": list(self.sliced_indices),
            "n_slices": self.n_slices,
            "slicing_overhead": round(self.slicing_overhead, 6),
            "minimize": self.minimize,
            "optimal": self.optimal,
            "method": self.method,
            "planning_time_s": round(self.planning_time, 6),
            "cache": self.cache_status,
        }

    def __repr__(self) -> str:
        return (
            f"Plan(tensors={self.network.num_tensors}, log10_flops={self.log10_flops:.4f}, "
            f"log2_size={self.log2_size:.2f}, n_slices={self.n_slices}, optimal={self.optimal})"
        )

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "network": self.network.to_dict(),
            "ssa_path": [list(p) for p in self.ssa_path],
            "sliced_indices": [self.network.labels[i] for i in self.sliced],
            "minimize": self.minimize,
            "optimal": self.optimal,
            "planning_time": self.planning_time,
            "method": self.method,
            "dtype": self.dtype,
            "flops": self.flops,
            "unsliced_flops": self.unsliced_flops,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise the plan (with its network); also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> Plan:
        """Load a plan from a JSON string or file and verify it against its network.

        Raises:
            PlanError: If the text is not a plan, the path is invalid, or it no longer scores to the
                stored flops.
        """
        if not isinstance(source, str | os.PathLike):
            raise PlanError(f"Plan.from_json takes JSON text or a file path, got {type(source).__name__}")
        text = source if isinstance(source, str) else ""
        if isinstance(source, str) and not source.strip():
            raise PlanError("plan JSON is empty")
        if not isinstance(source, str) or not source.lstrip().startswith(("{", "[")):
            try:
                text = Path(source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PlanError(f"{source}: cannot read plan ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan JSON is malformed at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise PlanError("plan JSON nests too deeply to be a plan") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PlanError(f"not a tnplan plan: expected an object with format {FORMAT!r}")
        try:
            network = Network.from_dict(data["network"])
            ssa = tuple((position(a, "ssa_path entries"), position(b, "ssa_path entries")) for a, b in data["ssa_path"])
            ids = network.label_ids
            sliced = tuple(sorted(ids[lab] for lab in data.get("sliced_indices", [])))
            costs = score_path(network, ssa, sliced)
            stored = int(data["flops"]) if "flops" in data else costs.flops
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise PlanError(f"plan does not match its network: {exc}") from None
        if stored != costs.flops:
            raise PlanError(
                f"plan re-scores to {costs.flops} flops but records {data['flops']}; it is stale or corrupt"
            )
        minimize = data.get("minimize", "flops")
        if minimize not in OBJECTIVES:
            raise PlanError(f"plan field 'minimize' is {minimize!r}; expected one of {', '.join(OBJECTIVES)}")
        dtype = data.get("dtype", "float64")
        if not isinstance(dtype, str):
            raise PlanError(f"plan field 'dtype' is {dtype!r}; expected a numpy dtype name such as 'float32'")
        itemsize(dtype)
        return cls(
            network=network,
            ssa_path=ssa,
            sliced=sliced,
            costs=costs,
            minimize=minimize,
            optimal=_field(data, "optimal", bool, False),
            planning_time=_field(data, "planning_time", float, 0.0),
            method=_field(data, "method", str, ""),
            dtype=str(np.dtype(dtype)),
            unsliced_flops=_positive(_field(data, "unsliced_flops", int, None), "unsliced_flops"),
        )

    # ------------------------------------------------------------------ execution

    def contract(self, *arrays: Any) -> Any:
        """Contract numpy arrays or torch tensors along this plan (slices summed or stitched).

        Torch autograd flows through the result. Arrays must be given in the network's tensor
        order with the network's shapes.

        Raises:
            PlanError: On a wrong number of arrays or a shape mismatch.
        """
        from tnplan.contract import contract_plan

        return contract_plan(self, arrays)

    def compile(self, free: Label | None = None) -> Program:
        """This (unsliced) plan as a :class:`~tnplan.contract.Program` of einsum equations, the
        form layers hold: picklable and traceable by ``torch.compile``.

        Args:
            free: An index whose size may differ at call time (a batch axis); the path stays the
                one planned for the network's size.

        Raises:
            PlanError: If the plan is sliced or ``free`` is not an index of the network.
        """
        from tnplan.contract import compile_plan

        return compile_plan(self, free)


def _positive(value: int | None, name: str) -> int | None:
    if value is not None and value < 1:
        raise PlanError(f"plan field {name!r} is {value}; expected flops >= 1")
    return value


def _field(data: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """A plan JSON's metadata field, which must hold a JSON value of ``kind`` (or be absent/null)."""
    value = data.get(name)
    if value is None:
        return default
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:  # a duration: any finite JSON number >= 0
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise PlanError(f"plan field {name!r} is {value!r}; expected a JSON {kind.__name__}")
    return kind(value)


def from_path(
    network: Network, path: list[tuple[int, int]] | list[list[int]], *, sliced: tuple[Label, ...] = ()
) -> Plan:
    """Wrap an existing linear path (e.g. from opt_einsum or cotengra) as a scored :class:`Plan`."""
    from tnplan.cost import complete_ssa_path, linear_to_ssa

    try:
        ssa = complete_ssa_path(network, linear_to_ssa(path, network.num_tensors))
        ids = tuple(sorted(network.label_ids[lab] for lab in sliced))
    except KeyError as exc:
        raise NetworkError(f"sliced index {exc.args[0]!r} is not in the network") from None
    return Plan(network=network, ssa_path=tuple(ssa), sliced=ids, costs=score_path(network, ssa, ids), method="given")
