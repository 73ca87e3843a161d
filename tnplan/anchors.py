"""Anchor planners (opt_einsum, cotengra) behind one interface, re-scored by tnplan's cost model.

Used wherever tnplan is compared with the field: ``tnplan compare``, ``tnplan report`` and
``benchmarks/planner``. Every method returns a :class:`~tnplan.plan.Plan` built from the anchor's
path, so all numbers come from :func:`tnplan.cost.score_path`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tnplan.cost import itemsize
from tnplan.errors import PlanError
from tnplan.network import Network
from tnplan.plan import Plan, from_path

METHOD_NAMES = (
    "tnplan",
    "cotengra",
    "cotengra-optimal",
    "opt_einsum-greedy",
    "opt_einsum-auto",
    "opt_einsum-auto-hq",
    "opt_einsum-dp",
)
"""The methods by the names reports use (the issue's spellings)."""

ALIASES = {
    "oe-greedy": "opt_einsum-greedy",
    "oe-auto": "opt_einsum-auto",
    "oe-auto-hq": "opt_einsum-auto-hq",
    "oe-dp": "opt_einsum-dp",
    "ctg-default": "cotengra",
    "ctg-optimal": "cotengra-optimal",
}
"""Short names (those of ``benchmarks/planner``) accepted for :data:`METHOD_NAMES`."""

METHODS = METHOD_NAMES + tuple(ALIASES)
"""Every accepted method name: :data:`METHOD_NAMES` and the short names of :data:`ALIASES`."""

SLICING_METHODS = frozenset({"tnplan", "cotengra"})
"""Methods that honour a memory limit by slicing; the others return their unsliced plan."""

EXACT_METHODS = frozenset({"cotengra-optimal", "opt_einsum-dp"})
"""Exhaustive anchors: no time budget (``tnplan report`` runs them up to :data:`EXACT_MAX_TENSORS` tensors)."""

EXACT_MAX_TENSORS = 40
"""Past this many tensors both exhaustive anchors ran past 60 s on every benchmark network (2-core EPYC)."""


def skipped(method: str, network: Network) -> str | None:
    """Why ``method`` is not run on ``network`` by ``tnplan report`` / ``tnplan compare``, or None.

    The exhaustive anchors have no time limit: on a large network one could hold a whole report up
    for good.
    """
    if canonical_method(method) in EXACT_METHODS and network.num_tensors > EXACT_MAX_TENSORS:
        return f"skipped: exhaustive search with no time limit, run up to {EXACT_MAX_TENSORS} tensors"
    return None


def _oe_args(network: Network) -> tuple[list[set[int]], set[int], dict[int, int]]:
    inputs = [set(t) for t in network.int_inputs]
    return inputs, set(network.int_output), dict(enumerate(network.int_sizes))


def _oe_path(optimize: str) -> Callable[[Network, float, int], list]:
    def run(network: Network, max_time: float, seed: int) -> list:
        import opt_einsum as oe

        inputs, output, sizes = _oe_args(network)
        if optimize == "dp":
            return oe.paths.DynamicProgramming()(inputs, output, sizes)
        if optimize == "greedy":
            return oe.paths.greedy(inputs, output, sizes)
        fn = oe.paths.get_path_fn(optimize)
        return fn(inputs, output, sizes)

    return run


def _ctg_search(network: Network, max_time: float, target_size: int | None) -> tuple[list, tuple[int, ...], Any]:
    """cotengra's ``HyperOptimizer`` defaults at ``max_time`` (it has no seed).

    Returns:
        The linear path, the sliced index ids and the optimiser (whose worker pool may still be busy).
    """
    import cotengra as ctg

    if target_size is None:
        opt = ctg.HyperOptimizer(max_time=max_time)
    else:
        opt = ctg.HyperOptimizer(max_time=max_time, slicing_opts={"target_size": target_size})
    inputs = [list(t) for t in network.int_inputs]
    tree = opt.search(inputs, list(network.int_output), dict(enumerate(network.int_sizes)))
    return tree.get_path(), tuple(int(i) for i in tree.sliced_inds), opt


def _drain_cotengra(opt: Any, timeout_s: float = 600.0) -> None:
    """Wait until the trials cotengra left running in its worker pool are done.

    At ``max_time`` ``HyperOptimizer`` returns while the trials already in its workers go on; left
    alone they would take the cores from whatever is planned (and timed) next. Works for the
    ``concurrent.futures`` process pool it uses by default; other pools are left as they are.
    """
    pending = getattr(getattr(opt, "_pool", None), "_pending_work_items", None)
    deadline = time.perf_counter() + timeout_s
    while pending and time.perf_counter() < deadline:
        time.sleep(0.01)


def _ctg_optimal(network: Network, max_time: float, seed: int) -> list:
    from cotengra.pathfinders.path_basic import optimize_optimal

    inputs = [list(t) for t in network.int_inputs]
    return optimize_optimal(inputs, list(network.int_output), dict(enumerate(network.int_sizes)), minimize="flops")


# Keyed by METHOD_NAMES (cotengra's own search is run by run_method); each returns a linear path.
_RUNNERS: dict[str, Callable[[Network, float, int], list]] = {
    "opt_einsum-greedy": _oe_path("greedy"),
    "opt_einsum-auto": _oe_path("auto"),
    "opt_einsum-auto-hq": _oe_path("auto-hq"),
    "opt_einsum-dp": _oe_path("dp"),
    "cotengra-optimal": _ctg_optimal,
}


def canonical_method(name: str) -> str:
    """The :data:`METHOD_NAMES` spelling of a method name or alias.

    Raises:
        PlanError: On an unknown name.
    """
    if name in METHOD_NAMES:
        return name
    if name in ALIASES:
        return ALIASES[name]
    aliases = ", ".join(f"{k}={v}" for k, v in ALIASES.items())
    raise PlanError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)} (aliases: {aliases})")


def cotengra_target_size(network: Network, memory_limit: int, dtype: str = "float64") -> int:
    """The ``target_size`` (elements per intermediate) cotengra is asked to slice to for a memory limit.

    The limit counts every tensor alive at once, inputs included, while cotengra caps single
    intermediates; the same headroom rule as tnplan's planner (a third of what the inputs leave) makes
    both planners aim at the same intermediate size.

    Raises:
        PlanError: If the input tensors alone do not fit in ``memory_limit`` (no slicing can help).
    """
    from tnplan.planner import size_target

    return max(1, int(size_target(network, memory_limit, None, dtype) or 1))


def run_method(
    method: str,
    network: Network,
    *,
    max_time: float = 1.0,
    seed: int = 0,
    memory_limit: int | None = None,
    dtype: str = "float64",
) -> Plan:
    """Plan ``network`` with ``method`` (see :data:`METHODS`) and return a re-scored :class:`Plan`.

    Args:
        method: A name from :data:`METHOD_NAMES` or an alias from :data:`ALIASES`.
        network: The tensor network.
        max_time: Seconds for the budgeted methods (tnplan, cotengra); the others ignore it.
        seed: tnplan's seed; the anchors are deterministic or (cotengra) cannot be seeded.
        memory_limit: Bytes alive at once for ``dtype``. tnplan slices to fit it; cotengra slices
            intermediates to :func:`cotengra_target_size`; the other methods (see
            :data:`SLICING_METHODS`) cannot slice and return their unsliced plan.
        dtype: Element type of the memory figures (the returned plan's ``dtype``).

    Raises:
        PlanError: On an unknown method name or dtype, or (tnplan, cotengra) a memory limit that the
            inputs alone exceed.
    """
    name = canonical_method(method)
    if name == "tnplan":
        from tnplan.planner import plan

        # A comparison must search: a cached plan would make the timing meaningless.
        return plan(network, max_time=max_time, seed=seed, memory_limit=memory_limit, dtype=dtype, cache=False)
    itemsize(dtype)  # an unknown dtype fails here, before any search
    dtype = str(np.dtype(dtype))
    start = time.perf_counter()
    if name == "cotengra":
        target = None if memory_limit is None else cotengra_target_size(network, memory_limit, dtype)
        path, sliced_ids, opt = _ctg_search(network, max_time, target)
        elapsed = time.perf_counter() - start
        _drain_cotengra(opt)  # untimed: the leftover trials are not part of cotengra's answer
        sliced = tuple(network.labels[i] for i in sliced_ids)
    else:
        path, sliced = _RUNNERS[name](network, max_time, seed), ()
        elapsed = time.perf_counter() - start
    planned = from_path(network, [tuple(p) for p in path], sliced=sliced)
    return dataclasses.replace(planned, planning_time=elapsed, method=method, dtype=dtype)
